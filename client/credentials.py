"""The session on disk: `credentials.json` in the user's config directory, mode 0600.

It holds the server address, the access token and its expiry, the refresh token and its
expiry, who is signed in, and the active chat. Never the static token: `login` exchanges
it and forgets it.

Writes are atomic (a 0600 temporary file renamed over the old one). Refreshes take an
exclusive `flock` on `credentials.lock` and re-read the file under it, so two CLI
processes never spend the same single-use refresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass
class Credentials:
    server: str | None = None
    access_token: str = ""
    access_expires_at: float = 0.0  # unix seconds
    access_ttl: float = 0.0  # seconds the server gave the last access token
    refresh_token: str = ""
    refresh_expires_at: float = 0.0
    user_id: str = ""
    username: str = ""
    role: str = ""
    active_chat_id: str = ""

    @property
    def signed_in(self) -> bool:
        return bool(self.refresh_token or self.access_token)

    def access_valid(self, skew: float = 30.0, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return bool(self.access_token) and self.access_expires_at - skew > now

    def end_session(self) -> None:
        """Forget the tokens and who was signed in; keep the server address."""
        self.access_token = self.refresh_token = ""
        self.access_expires_at = self.refresh_expires_at = self.access_ttl = 0.0
        self.user_id = self.username = self.role = self.active_chat_id = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credentials:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CredentialStore:
    """Reads and writes one credentials file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".lock")

    def load(self) -> Credentials:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Credentials()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return Credentials()
        return Credentials.from_json(data) if isinstance(data, dict) else Credentials()

    def save(self, creds: Credentials) -> None:
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(creds.to_json(), f, ensure_ascii=False, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """An exclusive lock between processes sharing this file; waits in a thread."""
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
