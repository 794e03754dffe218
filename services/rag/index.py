"""The chunk index: one ``Index`` protocol, two engines (dense + sparse vectors, per-user
filtering, hybrid search).

- ``services.rag.edge_index.EdgeIndex``: the embedded default (no ``QDRANT_URL``), Qdrant
  Edge in process — why, and the figures, in that module's docstring.
- ``QdrantIndex`` (here): a Qdrant server or cluster at ``QDRANT_URL``, the production
  path; also qdrant-client's local mode (``RAG_INDEX=qdrant-local``), the previous
  embedded default, kept as the baseline of ``bench/bench_rag.py``.

``services.rag.server.open_index`` chooses from the settings. Both store the same points
(id, vectors, payload) and answer the same queries, so hits, scores and filters agree.

Collection layout: ONE collection for every user and knowledge base, with ``user_id``
(a tenant index) and ``knowledge_base_id`` as indexed payload fields that every query
filters on. Why not a collection per knowledge base: users have many small knowledge
bases (one per chat or clone), and every Qdrant collection carries its own segments,
HNSW graphs, WAL and optimiser threads, so thousands of collections waste memory and slow
the cluster (Qdrant's own guidance is few collections plus payload-based multitenancy).
A filtered query on an indexed keyword field is planned efficiently (a small tenant is
scanned through the payload index, a large one uses HNSW with the filter applied during
the graph walk), searching several knowledge bases at once is one query with
``MatchAny``, and deleting a knowledge base is one delete-by-filter. Isolation does not
depend on the caller remembering it: every read and delete here requires ``user_id``.

Vectors per point: ``dense`` (cosine, the embedder's dimension) and ``sparse`` (BM25 term
weights from services.rag.sparse, with ``Modifier.IDF`` so Qdrant applies IDF). Hybrid
search is one Query API call: a dense and a sparse prefetch under the same filter, fused
with reciprocal rank fusion (``FusionQuery(RRF)``, k = 2: a hit at rank r of one side
adds 1 / (r + 2), r from 0).

Point id: the chunk id, uuid5 of (document id, chunk index) (services.rag.chunking), so a
re-ingest overwrites in place; ``replace_document`` also deletes what the new version no
longer has. Every write uses ``wait=True``: when a call returns, searches see its effect
(a deleted document is never returned afterwards).

Local mode (``path=``) is qdrant-client's embedded engine; it ignores payload indexes
(they are created against a server only), scans points with numpy (hybrid search at 100k
chunks: p50 1.75 s, p99 4.8 s), allows one client per folder per process, and gets its
SQLite file switched to WAL (see ``_tune_local_storage``). ``url=`` talks to a server.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import Reason, Unavailable
from services.rag.chunking import Chunk
from services.rag.model import Box
from services.rag.sparse import SparseVector

DEFAULT_COLLECTION = "aivera_chunks"
DENSE = "dense"
SPARSE = "sparse"
UPSERT_BATCH = 256


def _simple_conditions(flt: Any) -> list[tuple[str, frozenset[Any]]] | None:
    """``[(key, accepted values)]`` when the filter is only ``must`` conditions matching
    top-level keys by value or by any of values (what this module builds), else None."""
    if not isinstance(flt, models.Filter) or flt.should or flt.must_not or flt.min_should:
        return None
    must = flt.must if isinstance(flt.must, list) else [flt.must] if flt.must else []
    out: list[tuple[str, frozenset[Any]]] = []
    for cond in must:
        if not isinstance(cond, models.FieldCondition) or "." in cond.key or "[" in cond.key:
            return None
        if isinstance(cond.match, models.MatchValue):
            out.append((cond.key, frozenset([cond.match.value])))
        elif isinstance(cond.match, models.MatchAny):
            out.append((cond.key, frozenset(cond.match.any)))
        else:
            return None
    return out


def _matches(value: Any, accepted: frozenset[Any]) -> bool:
    if isinstance(value, list):
        return any(_matches(v, accepted) for v in value)
    return isinstance(value, str | int) and not isinstance(value, bool) and value in accepted


_FAST_FILTERS_INSTALLED = False


def _install_fast_local_filters() -> None:
    """Local mode evaluates a payload filter point by point through a generic JSON-path
    matcher (~40 µs a point: 400 ms per search at 10k chunks, over 97% of the search
    time). Every filter this index sends is a conjunction of exact matches on top-level
    keys, which a plain dict lookup answers with the same result ~50x faster; other
    filters go to the original. Like ``_tune_local_storage`` this replaces a function of
    qdrant-client's local engine (pinned 1.20.0) and is skipped when it is not there."""
    global _FAST_FILTERS_INSTALLED
    if _FAST_FILTERS_INSTALLED:
        return
    try:
        import numpy as np
        from qdrant_client.local import local_collection
    except ImportError:
        return
    original = getattr(local_collection, "calculate_payload_mask", None)
    if original is None:
        return

    def calculate_payload_mask(
        payloads: list[dict[str, Any]],
        payload_filter: Any,
        ids_inv: Any,
        deleted_per_vector: Any,
    ) -> Any:
        simple = _simple_conditions(payload_filter)
        if simple is None:
            return original(payloads, payload_filter, ids_inv, deleted_per_vector)
        mask = np.ones(len(payloads), dtype=bool)
        for key, accepted in simple:
            values = (p.get(key) for p in payloads)
            mask &= np.fromiter(
                (
                    v in accepted if type(v) is str or type(v) is int else _matches(v, accepted)
                    for v in values
                ),
                dtype=bool,
                count=len(payloads),
            )
        return mask

    local_collection.calculate_payload_mask = calculate_payload_mask  # type: ignore[attr-defined]
    _FAST_FILTERS_INSTALLED = True


class SearchMode(enum.StrEnum):
    HYBRID = "hybrid"
    DENSE = "dense"
    SPARSE = "sparse"


@dataclass(frozen=True, slots=True)
class Hit:
    """One chunk found by a search."""

    chunk_id: str
    score: float
    text: str
    document_id: str
    knowledge_base_id: str
    filename: str
    page: int
    block_ids: tuple[str, ...]
    box: Box | None
    chunk_index: int


class IndexUnavailableError(Unavailable):
    """Qdrant did not answer (UNAVAILABLE, reason DEPENDENCY_UNAVAILABLE, retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            reason=Reason.DEPENDENCY_UNAVAILABLE,
            metadata={"dependency": "vector index"},
        )


def _unavailable(exc: Exception) -> IndexUnavailableError:
    return IndexUnavailableError(f"the vector index is unavailable: {type(exc).__name__}")


def _is_outage(exc: Exception) -> bool:
    if isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500
    # The gRPC transport's errors (only with prefer_grpc=True).
    return type(exc).__name__ in ("AioRpcError", "_InactiveRpcError")


def check_scope(user_id: str, knowledge_base_ids: Sequence[str]) -> None:
    """Every read names its user and at least one knowledge base (ValueError if not)."""
    if not user_id:
        raise ValueError("user_id is required")
    if not knowledge_base_ids:
        raise ValueError("at least one knowledge base id is required")


def check_chunks(
    document_id: str,
    chunks: Sequence[Chunk],
    dense: Sequence[Sequence[float]],
    sparse: Sequence[SparseVector],
) -> None:
    if not (len(chunks) == len(dense) == len(sparse)):
        raise ValueError("chunks, dense and sparse must have the same length")
    for c in chunks:
        if c.document_id != document_id:
            raise ValueError("every chunk must belong to document_id")


def check_query(
    mode: SearchMode, dense: Sequence[float] | None, sparse: SparseVector | None
) -> bool:
    """Validate a search's vectors for its mode; True when the sparse query has terms."""
    if mode in (SearchMode.HYBRID, SearchMode.DENSE) and dense is None:
        raise ValueError(f"{mode.value} search needs a dense query vector")
    if mode is SearchMode.SPARSE and sparse is None:
        raise ValueError("sparse search needs a sparse query vector")
    return sparse is not None and len(sparse.indices) > 0


def prefetch_size(top_k: int, prefetch_limit: int | None) -> int:
    """Candidates taken from each side of a hybrid search before fusion."""
    return prefetch_limit or max(50, 4 * top_k)


def chunk_payload(
    *, user_id: str, knowledge_base_id: str, document_id: str, filename: str, chunk: Chunk
) -> dict[str, Any]:
    """A point's payload: the filter fields and what a hit carries back."""
    return {
        "user_id": user_id,
        "knowledge_base_id": knowledge_base_id,
        "document_id": document_id,
        "filename": filename,
        "chunk_index": chunk.index,
        "page": chunk.page,
        "block_ids": list(chunk.block_ids),
        "box": chunk.box.to_dict() if chunk.box is not None else None,
        "heading": chunk.heading,
        "text": chunk.text,
    }


def hit_from(point_id: Any, score: float, payload: dict[str, Any] | None) -> Hit:
    p: dict[str, Any] = payload or {}
    box = p.get("box")
    return Hit(
        chunk_id=str(point_id),
        score=float(score),
        text=str(p.get("text", "")),
        document_id=str(p.get("document_id", "")),
        knowledge_base_id=str(p.get("knowledge_base_id", "")),
        filename=str(p.get("filename", "")),
        page=int(p.get("page", 0)),
        block_ids=tuple(str(b) for b in p.get("block_ids", [])),
        box=Box.from_dict(box) if isinstance(box, dict) else None,
        chunk_index=int(p.get("chunk_index", 0)),
    )


class Index(Protocol):
    """What the service needs of a chunk index (both engines; see the module docstring).

    Every read and delete names the user; writes are visible to searches when they
    return; an engine that cannot be reached raises IndexUnavailableError."""

    async def ensure_collection(self) -> None:
        """Create or open the collection (idempotent); ValueError on another dimension."""

    async def ping(self) -> None:
        """The dependency check: IndexUnavailableError unless the engine answers."""

    async def close(self) -> None: ...

    async def upsert_chunks(
        self,
        *,
        user_id: str,
        knowledge_base_id: str,
        document_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        dense: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector],
        batch_size: int = UPSERT_BATCH,
    ) -> int:
        """Write the chunks of one document with their vectors; the number written."""
        ...

    async def replace_document(
        self,
        *,
        user_id: str,
        knowledge_base_id: str,
        document_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        dense: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector],
    ) -> int:
        """Delete a document's chunks, then write the new ones (a re-ingest). Shared by
        both engines, which subclass this protocol for it."""
        await self.delete_document(user_id=user_id, document_id=document_id)
        return await self.upsert_chunks(
            user_id=user_id,
            knowledge_base_id=knowledge_base_id,
            document_id=document_id,
            filename=filename,
            chunks=chunks,
            dense=dense,
            sparse=sparse,
        )

    async def delete_document(self, *, user_id: str, document_id: str) -> None: ...

    async def delete_knowledge_base(self, *, user_id: str, knowledge_base_id: str) -> None: ...

    async def count(
        self,
        *,
        user_id: str,
        knowledge_base_ids: Sequence[str],
        document_ids: Sequence[str] | None = None,
    ) -> int:
        """Exact number of chunks of the given knowledge bases (and documents)."""
        ...

    async def search(
        self,
        *,
        user_id: str,
        knowledge_base_ids: Sequence[str],
        dense: Sequence[float] | None,
        sparse: SparseVector | None,
        top_k: int = 10,
        document_ids: Sequence[str] | None = None,
        pages: Sequence[int] | None = None,
        mode: SearchMode = SearchMode.HYBRID,
        prefetch_limit: int | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` chunks of the user's given knowledge bases (see
        QdrantIndex.search for the modes)."""
        ...


def _filter(
    user_id: str,
    knowledge_base_ids: Sequence[str],
    document_ids: Sequence[str] | None = None,
    pages: Sequence[int] | None = None,
) -> models.Filter:
    check_scope(user_id, knowledge_base_ids)
    must: list[models.Condition] = [
        models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id)),
        models.FieldCondition(
            key="knowledge_base_id", match=models.MatchAny(any=list(knowledge_base_ids))
        ),
    ]
    if document_ids:
        must.append(
            models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids)))
        )
    if pages:
        must.append(models.FieldCondition(key="page", match=models.MatchAny(any=list(pages))))
    return models.Filter(must=must)


class QdrantIndex(Index):
    """Chunks of all users in one collection of a Qdrant server, or of qdrant-client's
    local mode (see the module docstring)."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        dim: int,
        collection: str = DEFAULT_COLLECTION,
        local: bool = False,
    ) -> None:
        self.client = client
        self.dim = dim
        self.collection = collection
        self.local = local
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @classmethod
    def open(
        cls,
        *,
        dim: int,
        url: str | None = None,
        path: str | Path | None = None,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
    ) -> QdrantIndex:
        """A server index when ``url`` is given (QDRANT_URL), else local mode at ``path``."""
        if url:
            return cls(
                AsyncQdrantClient(url=url, api_key=api_key),
                dim=dim,
                collection=collection,
            )
        if path is None:
            raise ValueError("either url or path is required")
        Path(path).mkdir(parents=True, exist_ok=True)
        _install_fast_local_filters()
        return cls(AsyncQdrantClient(path=str(path)), dim=dim, collection=collection, local=True)

    async def close(self) -> None:
        await self.client.close()

    async def ensure_collection(self) -> None:
        """Create the collection and its payload indexes if missing (idempotent); a
        ValueError when an existing one has another dense dimension."""
        try:
            if await self.client.collection_exists(self.collection):
                info = await self.client.get_collection(self.collection)
                vectors = info.config.params.vectors
                size = vectors[DENSE].size if isinstance(vectors, dict) else None
                if size != self.dim:
                    raise ValueError(
                        f"collection {self.collection!r} has dense size {size}, not {self.dim}"
                    )
            else:
                await self.client.create_collection(
                    self.collection,
                    vectors_config={
                        DENSE: models.VectorParams(size=self.dim, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config={
                        SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                )
            if self.local:
                self._tune_local_storage()
            else:
                await self._payload_indexes()
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        self._ready = True

    async def ping(self) -> None:
        """The dependency check: IndexUnavailableError unless Qdrant answers; creates the
        collection when it is missing (first start against a fresh server)."""
        try:
            exists = await self.client.collection_exists(self.collection)
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        if not exists:
            self._ready = False
        await self._ensure()

    def _tune_local_storage(self) -> None:
        """Local mode commits every point to SQLite with a full fsync (~15 ms a point,
        ~60 points/s, slower than embedding). WAL with synchronous=NORMAL stays crash-safe
        (a power cut may lose the last commits, never corrupt the file) and writes ~50x
        faster. This reaches into qdrant-client's private local storage (pinned 1.20.0),
        so it is best effort: skipped when the internals differ."""
        inner = getattr(self.client, "_client", None)
        collections = getattr(inner, "collections", None)
        if not isinstance(collections, dict):
            return
        storage = getattr(collections.get(self.collection), "storage", None)
        connection = getattr(storage, "storage", None)
        if isinstance(connection, sqlite3.Connection):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                return

    async def _payload_indexes(self) -> None:
        schema: list[tuple[str, models.PayloadSchemaType | models.KeywordIndexParams]] = [
            (
                "user_id",
                models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            ),
            ("knowledge_base_id", models.PayloadSchemaType.KEYWORD),
            ("document_id", models.PayloadSchemaType.KEYWORD),
            ("page", models.PayloadSchemaType.INTEGER),
        ]
        for name, field_schema in schema:
            await self.client.create_payload_index(
                self.collection, name, field_schema=field_schema, wait=True
            )

    async def _ensure(self) -> None:
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    await self.ensure_collection()

    # --- writes ----------------------------------------------------------------------

    async def upsert_chunks(
        self,
        *,
        user_id: str,
        knowledge_base_id: str,
        document_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        dense: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector],
        batch_size: int = UPSERT_BATCH,
    ) -> int:
        """Write the chunks of one document with their vectors (same order); returns the
        number written. Visible to searches when it returns."""
        check_chunks(document_id, chunks, dense, sparse)
        await self._ensure()
        points = [
            models.PointStruct(
                id=c.id,
                vector={
                    DENSE: [float(x) for x in d],
                    SPARSE: models.SparseVector(indices=s.indices, values=s.values),
                },
                payload=chunk_payload(
                    user_id=user_id,
                    knowledge_base_id=knowledge_base_id,
                    document_id=document_id,
                    filename=filename,
                    chunk=c,
                ),
            )
            for c, d, s in zip(chunks, dense, sparse, strict=True)
        ]
        try:
            for start in range(0, len(points), batch_size):
                await self.client.upsert(
                    self.collection, points=points[start : start + batch_size], wait=True
                )
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        return len(points)

    async def _delete(self, conditions: list[models.Condition]) -> None:
        await self._ensure()
        try:
            await self.client.delete(
                self.collection,
                points_selector=models.FilterSelector(filter=models.Filter(must=conditions)),
                wait=True,
            )
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise

    async def delete_document(self, *, user_id: str, document_id: str) -> None:
        """Remove every chunk of a document; done when it returns."""
        if not user_id or not document_id:
            raise ValueError("user_id and document_id are required")
        await self._delete(
            [
                models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id)),
                models.FieldCondition(
                    key="document_id", match=models.MatchValue(value=document_id)
                ),
            ]
        )

    async def delete_knowledge_base(self, *, user_id: str, knowledge_base_id: str) -> None:
        """Remove every chunk of a knowledge base; done when it returns."""
        if not user_id or not knowledge_base_id:
            raise ValueError("user_id and knowledge_base_id are required")
        await self._delete(
            [
                models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id)),
                models.FieldCondition(
                    key="knowledge_base_id", match=models.MatchValue(value=knowledge_base_id)
                ),
            ]
        )

    # --- reads -----------------------------------------------------------------------

    async def count(
        self,
        *,
        user_id: str,
        knowledge_base_ids: Sequence[str],
        document_ids: Sequence[str] | None = None,
    ) -> int:
        """Exact number of chunks of the given knowledge bases (and documents)."""
        await self._ensure()
        try:
            result = await self.client.count(
                self.collection,
                count_filter=_filter(user_id, knowledge_base_ids, document_ids),
                exact=True,
            )
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        return int(result.count)

    async def search(
        self,
        *,
        user_id: str,
        knowledge_base_ids: Sequence[str],
        dense: Sequence[float] | None,
        sparse: SparseVector | None,
        top_k: int = 10,
        document_ids: Sequence[str] | None = None,
        pages: Sequence[int] | None = None,
        mode: SearchMode = SearchMode.HYBRID,
        prefetch_limit: int | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` chunks of the user's given knowledge bases.

        ``dense`` is needed for HYBRID and DENSE, ``sparse`` for HYBRID and SPARSE. A
        sparse query without terms contributes nothing (HYBRID falls back to dense only,
        SPARSE returns no hits). Hybrid prefetches ``prefetch_limit`` candidates from each
        side (default max(50, 4 x top_k)) and fuses them with RRF.
        """
        if top_k <= 0:
            return []
        flt = _filter(user_id, knowledge_base_ids, document_ids, pages)
        has_sparse = check_query(mode, dense, sparse)
        await self._ensure()
        dense_q = [float(x) for x in dense] if dense is not None else None
        sparse_q = (
            models.SparseVector(indices=sparse.indices, values=sparse.values)
            if sparse is not None and has_sparse
            else None
        )
        try:
            if mode is SearchMode.SPARSE:
                if sparse_q is None:
                    return []
                resp = await self.client.query_points(
                    self.collection, query=sparse_q, using=SPARSE, query_filter=flt, limit=top_k
                )
            elif mode is SearchMode.DENSE or sparse_q is None:
                resp = await self.client.query_points(
                    self.collection, query=dense_q, using=DENSE, query_filter=flt, limit=top_k
                )
            else:
                limit = prefetch_size(top_k, prefetch_limit)
                resp = await self.client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(query=dense_q, using=DENSE, filter=flt, limit=limit),
                        models.Prefetch(query=sparse_q, using=SPARSE, filter=flt, limit=limit),
                    ],
                    # The filter sits on both prefetches; fusion only sees their candidates.
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=top_k,
                )
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        return [hit_from(p.id, p.score, p.payload) for p in resp.points]
