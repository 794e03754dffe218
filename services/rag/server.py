"""Wiring of the rag service: the index, the embedder, the ingest pipeline, servicers.

Start-up (``on_ready``, after migrations): the embedding model is loaded in a worker
thread *before* the service turns SERVING. Loading MiniLM takes a second or two and a
few hundred MB; doing it lazily would put that on the first user's ingest or search (and
hide a missing model until then), so readiness waits for it instead (RAG_EMBEDDER_PRELOAD=0
loads it on first use, e.g. for tooling). The Qdrant index is opened (server at
QDRANT_URL, else local mode under QDRANT_PATH / DATA_DIR/qdrant) and its collection
ensured; when a Qdrant server is down at start-up the service still starts and the
dependency check keeps health NOT_SERVING until the collection can be ensured.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aivera.rag.v1 import rag_pb2
from services.common.errors import Unavailable
from services.common.server import App, Servicers, ServiceSpec
from services.rag.config import RagSettings
from services.rag.embedder import Embedder, MiniLmEmbedder
from services.rag.index import ChunkIndex
from services.rag.ingest import Ingestor, Limits, StorageClient
from services.rag.servicer import RagServiceServicer, document_proto
from services.rag.store import Store

MIGRATIONS = Path(__file__).parent / "migrations"
CHECK_TIMEOUT = 5.0

log = logging.getLogger("aivera.rag")


@dataclass
class RagState:
    """What the handlers share: settings, the app (pool, channels), index, embedder."""

    settings: RagSettings
    embedder: Embedder
    app: App | None = None
    index: ChunkIndex | None = None
    ingestor: Ingestor = field(init=False)

    def store(self) -> Store:
        assert self.app is not None
        return Store(self.app.pool)

    def get_index(self) -> ChunkIndex:
        if self.index is None:
            raise Unavailable("the vector index is not open yet")
        return self.index

    def get_embedder(self) -> Embedder:
        return self.embedder

    def storage(self) -> StorageClient:
        assert self.app is not None
        return StorageClient(
            self.app.channel(self.settings.storage_addr), self.settings.internal_token()
        )


@dataclass
class RagSpec(ServiceSpec):
    """The rag service's spec; ``state`` is reachable for tests and the bench."""

    state: RagState | None = None


def make_spec(settings: RagSettings, *, embedder: Embedder | None = None) -> RagSpec:
    state = RagState(settings, embedder or MiniLmEmbedder(batch_size=settings.rag_embed_batch))

    async def build(app: App) -> Servicers:
        state.app = app
        state.ingestor = Ingestor(
            store=state.store,
            index=state.get_index,
            embedder=state.get_embedder,
            storage=state.storage,
            spawn=lambda coro: app.spawn(coro, name="rag-ingest"),
            limits=Limits(
                max_pages=settings.rag_max_pages,
                max_blocks=settings.rag_max_blocks,
                embed_batch=settings.rag_embed_batch,
                stale_seconds=settings.rag_ingest_stale_seconds,
            ),
            document_proto=document_proto,
            internal=bool(settings.internal_token()),
        )
        services = rag_pb2.DESCRIPTOR.services_by_name
        return [(services["RagService"], RagServiceServicer(state))]

    async def on_ready(app: App) -> None:
        if settings.rag_embedder_preload:
            load = getattr(state.embedder, "load", None)
            if callable(load):
                await asyncio.to_thread(load)
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        state.index = ChunkIndex.open(
            dim=state.embedder.dim,
            url=settings.qdrant_url,
            path=None if settings.qdrant_url else settings.qdrant_local_path(),
            api_key=api_key,
            collection=settings.qdrant_collection,
        )
        try:
            await state.index.ensure_collection()
        except Unavailable as exc:
            log.warning("Qdrant is not reachable yet (%s); the health check retries", exc)

    async def on_stop(app: App) -> None:
        if state.index is not None:
            await state.index.close()
            state.index = None

    async def qdrant_check(app: App) -> bool:
        index = state.index
        if index is None:
            return False
        try:
            await asyncio.wait_for(index.ping(), CHECK_TIMEOUT)
        except Exception as exc:
            log.warning("Qdrant check failed: %s", exc)
            return False
        return True

    spec = RagSpec(
        name="rag",
        port=settings.rag_port,
        http_port=settings.rag_http_port,
        build=build,
        schema="rag",
        migrations=MIGRATIONS,
        on_ready=on_ready,
        on_stop=on_stop,
        checks=[qdrant_check],
    )
    spec.state = state
    return spec
