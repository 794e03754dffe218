"""Migrations: applied once, idempotent on restart, safe when replicas race, and an
edited migration stops the service instead of silently diverging."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

from services.common import migrations

# Not idempotent on purpose: applied twice, the CREATE TABLE or the INSERT would fail or
# leave two rows, so a race that slipped through would show.
FIRST = """
CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO widgets (name) VALUES ('first');
SELECT pg_sleep(0.3);
"""
SECOND = "ALTER TABLE widgets ADD COLUMN size integer NOT NULL DEFAULT 1;"


@pytest.fixture
def migdir(tmp_path: Path) -> Path:
    (tmp_path / "0001_widgets.sql").write_text(FIRST)
    (tmp_path / "0002_size.sql").write_text(SECOND)
    return tmp_path


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_applies_in_order_and_is_idempotent(database_url: str, migdir: Path) -> None:
    assert await migrations.migrate(database_url, "mig_a", migdir) == [1, 2]
    assert await migrations.migrate(database_url, "mig_a", migdir) == []
    assert await _count(database_url, "SELECT count(*) FROM mig_a.widgets") == 1
    assert await _count(database_url, "SELECT count(*) FROM mig_a.schema_migrations") == 2


async def test_two_processes_racing_apply_each_migration_once(
    database_url: str, migdir: Path
) -> None:
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from services.common import migrations; "
        "print(asyncio.run(migrations.migrate(sys.argv[1], 'mig_race', Path(sys.argv[2]))))"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            database_url,
            str(migdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    applied = sorted(out.decode().strip() for out, _ in outputs)
    assert applied == ["[1, 2]", "[]", "[]"]
    assert await _count(database_url, "SELECT count(*) FROM mig_race.widgets") == 1


async def test_edited_migration_is_refused(database_url: str, migdir: Path) -> None:
    await migrations.migrate(database_url, "mig_edit", migdir)
    (migdir / "0002_size.sql").write_text(SECOND + "\n-- edited later")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        await migrations.migrate(database_url, "mig_edit", migdir)


async def test_a_failing_migration_leaves_nothing_half_applied(
    database_url: str, migdir: Path
) -> None:
    (migdir / "0003_broken.sql").write_text(
        "ALTER TABLE widgets ADD COLUMN colour text; SELECT no_such_function();"
    )
    with pytest.raises(asyncpg.PostgresError):
        await migrations.migrate(database_url, "mig_fail", migdir)
    cols = await _count(
        database_url,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = 'mig_fail' AND table_name = 'widgets' AND column_name = 'colour'",
    )
    assert cols == 0
    assert await _count(database_url, "SELECT max(version) FROM mig_fail.schema_migrations") == 2


def test_bad_file_names_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError):
        migrations.load(tmp_path)
