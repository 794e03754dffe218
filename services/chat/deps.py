"""What the chat domain depends on: the store, the other services, the local models and
the Gemini provider factory. `server.make_deps` builds it from the App; tests and the
benchmark may swap a part (e.g. the Gemini factory or the keys) before `build` turns it
into the domain objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.chat.attachments import Spawn
from services.chat.clients import Clones, Documents, Files, Keys
from services.chat.config import ChatSettings
from services.chat.providers.base import Provider
from services.chat.providers.local import LocalModels
from services.chat.store import Store


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
    spawn: Spawn  # background tasks that stop with the service (App.spawn)
    # The user's key → a Gemini provider (the benchmark swaps in a synthetic one).
    gemini: Callable[[str], Provider]
