"""What the chat domain depends on, built once by server.py (tests and the benchmark may
swap a part, e.g. the Gemini provider factory)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.chat.clients import Clones, Documents, Files, Keys
from services.chat.config import ChatSettings
from services.chat.providers.base import Provider
from services.chat.providers.gemini import GeminiProvider
from services.chat.providers.local import LocalModels
from services.chat.store import Store
from services.chat.turns import Turn


@dataclass
class Deps:
    settings: ChatSettings
    store: Store
    keys: Keys
    documents: Documents
    files: Files
    clones: Clones
    local: LocalModels
    adapters_dir: Path
    spawn: Callable[..., asyncio.Task[Any]]
    # The user's key → a Gemini provider (the benchmark swaps in a synthetic one).
    gemini: Callable[[str], Provider] = field(default=lambda key: _unset(key))
    # Running turns of this replica by chat id (DeleteChat cancels them).
    running: dict[str, Turn] = field(default_factory=dict)


def _unset(key: str) -> Provider:
    raise RuntimeError("no Gemini provider factory")


def gemini_factory(settings: ChatSettings) -> Callable[[str], Provider]:
    def make(key: str) -> Provider:
        return GeminiProvider(
            key,
            base_url=settings.gemini_base_url,
            timeout_seconds=settings.gemini_timeout_seconds,
            retry_attempts=settings.provider_retry_attempts,
            retry_initial_delay=settings.provider_retry_initial_delay_seconds,
            retry_max_delay=settings.provider_retry_max_delay_seconds,
        )

    return make
