"""Wiring of the chat service: its dependencies, servicers, schema and migrations."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aivera.chat.v1 import chat_pb2
from services.chat.clients import GrpcClones, GrpcDocuments, GrpcFiles, GrpcKeys
from services.chat.config import ChatSettings
from services.chat.deps import Deps, gemini_factory
from services.chat.providers.local import LocalModels
from services.chat.servicer import ChatServiceServicer, PromptAdminServiceServicer
from services.chat.store import Store
from services.common.localmodels import default_models_dir, resolve_model
from services.common.server import App, Servicers, ServiceSpec

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("aivera.chat")


class ChatSpec(ServiceSpec):
    deps: Deps | None = None


def make_deps(app: App, settings: ChatSettings) -> Deps:
    models_dir = settings.chat_models_dir or default_models_dir()
    local = LocalModels(
        None,
        name=Path(settings.local_model).name,
        max_new_tokens=settings.local_max_new_tokens,
        cache_size=settings.local_adapter_cache_size,
    )
    local.resolve = lambda: resolve_model(settings.local_model, models_dir)
    return Deps(
        settings=settings,
        store=Store(None),
        keys=GrpcKeys(app),
        documents=GrpcDocuments(app),
        files=GrpcFiles(app),
        clones=GrpcClones(app),
        local=local,
        adapters_dir=settings.chat_adapters_dir or models_dir / "adapters",
        spawn=app.spawn,
        gemini=gemini_factory(settings),
    )


async def sweep_stale_turns(store: Store, settings: ChatSettings) -> None:
    """At start-up and then periodically: answers whose turn lost its replica (no
    heartbeat for turn_stale_seconds) are marked INCOMPLETE."""
    while True:
        try:
            closed = await store.close_stale_turns(settings.turn_stale_seconds)
            if closed:
                log.info("marked %d interrupted turn(s) INCOMPLETE", closed)
        except Exception as exc:
            log.warning("stale turn sweep failed: %s", exc)
        await asyncio.sleep(max(1.0, settings.turn_stale_seconds / 2))


def make_spec(settings: ChatSettings) -> ChatSpec:
    async def build(app: App) -> Servicers:
        deps = spec.deps = spec.deps or make_deps(app, settings)
        deps.spawn = app.spawn
        services = chat_pb2.DESCRIPTOR.services_by_name
        return [
            (services["ChatService"], ChatServiceServicer(deps)),
            (services["PromptAdminService"], PromptAdminServiceServicer(deps)),
        ]

    async def on_ready(app: App) -> None:
        assert spec.deps is not None
        spec.deps.store.pool = app.pool
        app.spawn(sweep_stale_turns(spec.deps.store, settings), name="chat-stale-turns")

    spec = ChatSpec(
        name="chat",
        port=settings.chat_port,
        http_port=settings.chat_http_port,
        build=build,
        schema="chat",
        migrations=MIGRATIONS,
        on_ready=on_ready,
    )
    return spec
