"""Wiring of the rag service: ``build`` makes every part from the App once — the store
(on the App's pool), the Qdrant index, the embedder, the storage client (the App's, with
its deadlines), the ingest pipeline, the searcher — and hands them to the servicer.

Start-up (``on_ready``, after migrations): the embedding model is loaded in a worker
thread *before* the service turns SERVING. Loading MiniLM takes a second or two and a
few hundred MB; doing it lazily would put that on the first user's ingest or search (and
hide a missing model until then), so readiness waits for it instead (RAG_EMBEDDER_PRELOAD=0
loads it on first use, e.g. for tooling). The chunk index (``open_index``: a Qdrant server
at QDRANT_URL, else the embedded engine of RAG_INDEX under QDRANT_PATH / DATA_DIR/qdrant —
Qdrant Edge by default, see services.rag.edge_index) is made in ``build`` and its
collection ensured in ``on_ready``; when a Qdrant server is down at start-up the service
still starts and the dependency check (bounded by the App's lookup deadline) keeps health
NOT_SERVING until the collection can be ensured.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aivera.rag.v1 import rag_pb2
from services.common.errors import Unavailable
from services.common.server import App, Servicers, ServiceSpec
from services.rag.config import RagSettings
from services.rag.edge_index import EdgeIndex
from services.rag.embedder import Embedder, MiniLmEmbedder
from services.rag.index import Index, QdrantIndex
from services.rag.ingest import Ingestor, Limits
from services.rag.search import Searcher
from services.rag.servicer import RagServiceServicer
from services.rag.store import Store

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger("aivera.rag")


@dataclass(frozen=True, slots=True)
class Rag:
    """The service's parts, built once from the App."""

    store: Store
    index: Index
    embedder: Embedder
    ingestor: Ingestor
    searcher: Searcher


@dataclass
class RagSpec(ServiceSpec):
    """The rag service's spec; ``rag`` is its parts once built (tests and tools use it)."""

    rag: Rag | None = None


def open_index(settings: RagSettings, dim: int) -> Index:
    """The production Qdrant server when QDRANT_URL is set, else the embedded engine that
    RAG_INDEX names (Qdrant Edge by default, qdrant-client's local mode on request)."""
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantIndex.open(
            dim=dim,
            url=settings.qdrant_url,
            api_key=api_key,
            collection=settings.qdrant_collection,
        )
    if settings.rag_index == "qdrant-local":
        return QdrantIndex.open(
            dim=dim, path=settings.qdrant_local_path(), collection=settings.qdrant_collection
        )
    return EdgeIndex.open(
        dim=dim, path=settings.edge_index_path(), collection=settings.qdrant_collection
    )


def build_rag(app: App, settings: RagSettings, embedder: Embedder) -> Rag:
    store = Store(app)
    index = open_index(settings, embedder.dim)
    ingestor = Ingestor(
        store=store,
        index=index,
        embedder=embedder,
        storage=app.storage(),
        spawn=lambda coro: app.spawn(coro, name="rag-ingest"),
        limits=Limits(
            max_pages=settings.rag_max_pages,
            max_blocks=settings.rag_max_blocks,
            embed_batch=settings.rag_embed_batch,
            stale_seconds=settings.rag_ingest_stale_seconds,
            max_page_pixels=settings.rag_max_page_pixels,
            max_document_pixels=settings.rag_max_document_pixels,
            max_text_bytes=settings.rag_max_text_bytes,
            max_json_depth=settings.rag_max_json_depth,
            max_image_pixels=settings.rag_max_image_pixels,
        ),
        identity=app.identity,
    )
    searcher = Searcher(store=store, index=index, embedder=embedder)
    return Rag(store, index, embedder, ingestor, searcher)


def make_spec(settings: RagSettings, *, embedder: Embedder | None = None) -> RagSpec:
    model = embedder or MiniLmEmbedder(batch_size=settings.rag_embed_batch)

    def parts() -> Rag:
        if spec.rag is None:
            raise Unavailable("the rag service is not built yet")
        return spec.rag

    async def build(app: App) -> Servicers:
        spec.rag = rag = build_rag(app, settings, model)
        servicer = RagServiceServicer(
            settings=settings, store=rag.store, ingestor=rag.ingestor, searcher=rag.searcher
        )
        return [(rag_pb2.DESCRIPTOR.services_by_name["RagService"], servicer)]

    async def on_ready(app: App) -> None:
        rag = parts()
        if settings.rag_embedder_preload:
            load = getattr(rag.embedder, "load", None)
            if callable(load):
                await asyncio.to_thread(load)
        try:
            await rag.index.ensure_collection()
        except Unavailable as exc:
            log.warning("Qdrant is not reachable yet (%s); the health check retries", exc)

    async def on_stop(app: App) -> None:
        if spec.rag is not None:
            await spec.rag.index.close()

    async def qdrant_check(app: App) -> bool:
        try:
            await asyncio.wait_for(parts().index.ping(), app.deadlines.lookup)
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
    return spec
