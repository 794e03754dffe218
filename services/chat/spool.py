"""The local spool of finished turns the database could not take.

A turn that finishes while Postgres is unreachable (its final write failed for
TURN_FINISH_RETRY_SECONDS) is written here as one JSON file: the outcome and the rest of
its event log. The files are written to the database when it answers again — by a
background loop, before a new turn starts, and at start-up (so a restart in between
loses nothing). Writing a file is atomic (temporary file, fsync, rename) and writing it to
the database is idempotent (`Store.finish_turn`), so a crash at any point stores the turn
once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

from services.chat.store import ImageRow, SearchRow, StoredError, StoredEvent, TurnOutcome

log = logging.getLogger("aivera.chat.spool")


class FinishStore(Protocol):
    async def finish_turn(
        self, message_id: uuid.UUID, outcome: TurnOutcome, events: Any = ()
    ) -> Any: ...


def _encode(message_id: uuid.UUID, outcome: TurnOutcome, events: list[StoredEvent]) -> bytes:
    body = {
        "message_id": str(message_id),
        "outcome": dataclasses.asdict(outcome),
        "events": [[e.seq, base64.b64encode(e.event).decode(), e.terminal] for e in events],
    }
    return json.dumps(body, ensure_ascii=False).encode()


def _decode(data: bytes) -> tuple[uuid.UUID, TurnOutcome, list[StoredEvent]]:
    body = json.loads(data)
    o = body["outcome"]
    outcome = TurnOutcome(
        status=o["status"],
        content=o["content"],
        models_used=list(o["models_used"]),
        input_tokens=o["input_tokens"],
        output_tokens=o["output_tokens"],
        total_tokens=o["total_tokens"],
        error=None if o["error"] is None else StoredError(**o["error"]),
        images=[ImageRow(**i) for i in o["images"]],
        search_results=[SearchRow(**r) for r in o["search_results"]],
    )
    events = [
        StoredEvent(seq, base64.b64decode(ev), terminal) for seq, ev, terminal in body["events"]
    ]
    return uuid.UUID(body["message_id"]), outcome, events


class Spool:
    """One folder of spooled turns, `<message id>.json` each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = asyncio.Lock()

    def put(self, message_id: uuid.UUID, outcome: TurnOutcome, events: list[StoredEvent]) -> Path:
        """Writes the turn to disk (durably) before anyone is told it ended."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{message_id}.json"
        tmp = self.folder / f".{message_id}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(_encode(message_id, outcome, events))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dirfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        log.warning("turn %s spooled to %s (database unreachable)", message_id, path)
        return path

    def pending(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))

    async def drain(self, store: FinishStore) -> int:
        """Writes every spooled turn to the database; returns how many were written.
        Stops at the first failure (the database is still down): the rest stay."""
        if not self.pending():
            return 0
        written = 0
        async with self._lock:
            for path in self.pending():
                try:
                    message_id, outcome, events = _decode(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("spooled turn %s unreadable (%s); set aside", path.name, exc)
                    with contextlib.suppress(OSError):
                        path.rename(path.with_suffix(".bad"))
                    continue
                try:
                    await asyncio.wait_for(store.finish_turn(message_id, outcome, events), 10)
                except Exception as exc:
                    log.info("spooled turns wait for the database: %s", exc)
                    break
                path.unlink(missing_ok=True)
                written += 1
                log.info("spooled turn %s written to the database", message_id)
        return written
