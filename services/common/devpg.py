"""A local PostgreSQL cluster from the system binaries, for `make run` and the tests.

Production uses DATABASE_URL; this exists so that a bare machine runs the whole mesh.
As root (CI, containers) the server runs as the `postgres` system user, since Postgres
refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class PostgresNotFound(RuntimeError):
    """No PostgreSQL binaries on this machine."""


def find_bindir() -> Path:
    """Newest /usr/lib/postgresql/*/bin, or wherever pg_ctl is on PATH."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    if candidates:
        return Path(candidates[-1])
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise PostgresNotFound(
        "no PostgreSQL binaries found (install postgresql, set PG_BINDIR, or set DATABASE_URL)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    def __init__(self, datadir: Path, port: int, *, bindir: Path | None = None) -> None:
        self.datadir = datadir.resolve()
        self.port = port
        self.bindir = bindir or find_bindir()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")
        return result

    def _chown(self, path: Path) -> None:
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._chown(self.datadir)
        self.datadir.chmod(0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )

    def start(self, *, fast: bool = False) -> None:
        """Start the server (no-op if it already runs). `fast` turns off durability, for tests."""
        self.init()
        if self.running():
            return
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
        opts += " -c max_connections=300"
        if fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.datadir / "server.log"
        result = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(log),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"postgres failed to start: {result.stderr}\n{tail}")
        self._wait_accepting()

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections")

    def running(self) -> bool:
        if not self.initialized:
            return False
        return (
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status", check=False
            ).returncode
            == 0
        )

    def stop(self) -> None:
        if self.running():
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                "fast",
                "-w",
                "stop",
                check=False,
            )

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        exists = self._run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
        ).stdout.strip()
        if not exists:
            self._run(
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            )
        return self.dsn(name)


@contextlib.contextmanager
def temporary_cluster(prefix: str = "aivera-pg-") -> Iterator[LocalPostgres]:
    """A throw-away cluster with durability off (tests, benchmarks), removed afterwards.

    The folder is world-traversable because the server runs as `postgres` under root.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)
    cluster = LocalPostgres(root / "data", free_port())
    cluster.start(fast=True)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
