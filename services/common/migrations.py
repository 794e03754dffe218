"""Per-service SQL migrations, applied at start-up under a Postgres advisory lock.

Files are `migrations/NNNN_name.sql` in the service folder, applied in order, each in its
own transaction with the service schema first on the search path. The lock (one per
schema) makes replicas that start together apply each file exactly once; the checksum
stops a service whose already-applied migration was edited afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("aivera.migrations")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration folder or an applied migration is not what it must be."""


def load(directory: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def _lock_key(schema: str) -> int:
    # A stable signed 64-bit key per schema for pg_advisory_lock.
    digest = hashlib.sha256(f"aivera.migrations.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def apply(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> list[int]:
    """Apply what is missing; returns the versions applied by this call."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise MigrationError(f"bad schema name {schema!r}")
    key = _lock_key(schema)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch(f"SELECT version, checksum FROM {schema}.schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[int] = []
        for mig in migrations:
            if mig.version in applied:
                if applied[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"{schema} migration {mig.version:04d}_{mig.name} changed after it "
                        "was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                await conn.execute(mig.sql)
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            log.info("applied migration %s %04d_%s", schema, mig.version, mig.name)
            done.append(mig.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def migrate(dsn: str, schema: str, directory: Path) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply(conn, schema, load(directory))
    finally:
        await conn.close()
