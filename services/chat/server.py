"""Wiring of the chat service: `make_deps` builds the store, the clients of the other
services and the local models from the App; `build` makes the domain objects
(`Attachments`, `Turns`) and the servicers from them; `on_ready` writes turns spooled while the
database was down and starts the sweep that closes turns whose replica died; `on_stop`
drains the running turns before the pool closes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from aivera.chat.v1 import chat_pb2, projects_pb2
from services.chat.attachments import Attachments
from services.chat.clients import GrpcClones, GrpcDocuments, GrpcFiles, GrpcKeys
from services.chat.config import ChatSettings
from services.chat.deps import Deps
from services.chat.pipeline.runner import Turns
from services.chat.projects import ProjectServiceServicer
from services.chat.providers.base import Provider
from services.chat.providers.gemini import GeminiProvider
from services.chat.providers.local import LocalModels
from services.chat.servicer import ChatServiceServicer, PromptAdminServiceServicer
from services.chat.spool import Spool
from services.chat.store import Store
from services.common.localmodels import default_models_dir, resolve_model
from services.common.server import App, Servicers, ServiceSpec

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("aivera.chat")


class ChatSpec(ServiceSpec):
    # Set by `build` (or beforehand, by a benchmark that swaps parts); tests read it.
    deps: Deps | None = None


def gemini_factory(settings: ChatSettings) -> Callable[[str], Provider]:
    """The user's key → a Gemini provider with the settings' endpoint, timeout, retries."""

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


def make_deps(app: App, settings: ChatSettings) -> Deps:
    models_dir = settings.chat_models_dir or default_models_dir()
    return Deps(
        settings=settings,
        store=Store(app),
        keys=GrpcKeys(app.channel(settings.auth_addr), app.deadlines),
        documents=GrpcDocuments(app.channel(settings.rag_addr), app.deadlines),
        files=GrpcFiles(app.storage()),
        clones=GrpcClones(app.channel(settings.training_addr), app.deadlines),
        local=LocalModels(
            functools.partial(resolve_model, settings.local_model, models_dir),
            name=Path(settings.local_model).name,
            max_new_tokens=settings.local_max_new_tokens,
            cache_size=settings.local_adapter_cache_size,
            resolve=functools.partial(resolve_model, models_dir=models_dir),
            max_bases=settings.local_max_base_models,
            memory_budget_bytes=settings.local_memory_budget_bytes,
            device=settings.local_device,
            batch_size=settings.local_batch_size,
            queue_limit=settings.local_queue_limit,
            default_id=settings.local_model,
        ),
        adapters_dir=settings.chat_adapters_dir or models_dir / "adapters",
        spawn=app.spawn,
        gemini=gemini_factory(settings),
    )


async def sweep_stale_turns(store: Store, settings: ChatSettings) -> None:
    """At start-up and then periodically: answers whose turn lost its replica (no
    heartbeat for turn_stale_seconds: its lease expired) are marked INCOMPLETE."""
    while True:
        try:
            closed = await store.close_stale_turns(settings.turn_stale_seconds)
            if closed:
                log.info("marked %d interrupted turn(s) INCOMPLETE", closed)
        except Exception as exc:
            log.warning("stale turn sweep failed: %s", exc)
        await asyncio.sleep(max(1.0, settings.turn_stale_seconds / 2))


async def drain_spool(spool: Spool, store: Store, interval: float = 1.0) -> None:
    """Writes turns spooled while the database was down, as soon as it answers."""
    while True:
        with contextlib.suppress(Exception):
            await spool.drain(store)
        await asyncio.sleep(interval)


def make_spec(settings: ChatSettings) -> ChatSpec:
    spool = Spool(settings.spool_dir)
    turns: Turns | None = None

    async def build(app: App) -> Servicers:
        nonlocal turns
        deps = spec.deps = spec.deps or make_deps(app, settings)
        attachments = Attachments(deps.store, deps.documents, deps.files, deps.spawn)
        turns = Turns(
            store=deps.store,
            keys=deps.keys,
            documents=deps.documents,
            files=deps.files,
            clones=deps.clones,
            attachments=attachments,
            local=deps.local,
            gemini=deps.gemini,
            settings=settings,
            adapters_dir=deps.adapters_dir,
            spawn=deps.spawn,
            spool=spool,
        )
        services = chat_pb2.DESCRIPTOR.services_by_name
        return [
            (
                services["ChatService"],
                ChatServiceServicer(deps.store, turns, attachments, deps.documents, deps.clones),
            ),
            (services["PromptAdminService"], PromptAdminServiceServicer(deps.store)),
            (
                projects_pb2.DESCRIPTOR.services_by_name["ProjectService"],
                ProjectServiceServicer(deps.store, deps.documents),
            ),
        ]

    async def on_ready(app: App) -> None:
        assert spec.deps is not None
        # Turns spooled before a restart are written before the service takes new ones.
        written = await spool.drain(spec.deps.store)
        if written:
            log.info("wrote %d spooled turn(s) to the database", written)
        app.spawn(drain_spool(spool, spec.deps.store), name="chat-spool")
        app.spawn(sweep_stale_turns(spec.deps.store, settings), name="chat-stale-turns")

    async def on_stop(app: App) -> None:
        # Runs after the server stopped taking calls and before the pool closes: turns
        # get what is left of the grace period, then are checkpointed (reason SHUTDOWN).
        if turns is not None:
            loop = asyncio.get_running_loop()
            deadline = app.drain_deadline or loop.time()
            await turns.drain(deadline)

    spec = ChatSpec(
        name="chat",
        port=settings.chat_port,
        http_port=settings.chat_http_port,
        build=build,
        schema="chat",
        migrations=MIGRATIONS,
        on_ready=on_ready,
        on_stop=on_stop,
    )
    return spec
