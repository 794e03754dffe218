"""The embedded chunk index: Qdrant Edge (``qdrant-edge-py``) in process, exact search.

Decision (issue 23). The previous embedded default, qdrant-client's local mode, scores
points one by one in Python: hybrid search at 100k chunks took p50 1.75 s, p99 4.8 s.
Measured on this 2-core machine (shared, so figures move by ~2x between runs) with 100k
chunks of 384-dim vectors and BM25 vectors of 40-word texts, one user, hybrid = dense and
sparse top 50 fused by RRF, top 10:

- qdrant-client local mode (the old default): p50 1750 ms, p99 4800 ms;
- Qdrant Edge 0.9.0, exact (plain) search: p50 11-29 ms, p99 16-52 ms over several runs
  (``BENCH_RAG_100K=1 make bench``, load average ~6 on 2 cores: hybrid p50 28.7 ms, p99
  43.9 ms, dense p50 28.2 ms, p99 40.7 ms; at 10k hybrid p50 1.7 ms, p99 5.5 ms against
  local mode's 107 / 256 ms in the same run); the same Rust engine as the server
  (filters, IDF, RRF, WAL);
- Qdrant Edge with an HNSW graph (m = 16): p50 2.5 ms, p99 4 ms, but recall@10 0.14 on
  random vectors and a 148 s index build;
- a prototype numpy index (one float32 matrix-vector product for dense, BM25 postings
  sorted by term with ``np.bincount`` for sparse): p50 11 ms, p99 29 ms, with its
  persistence, deletes and compaction still to write.

Chosen: Qdrant Edge with exact search. It meets the goal (p99 ≤ 100 ms at 100k) with
recall@10 = 1.0 by construction (every candidate of the filter is scored: no HNSW graph is
built, ``m = 0``, and each query asks ``exact=True``), and it is Qdrant's own engine, so
the embedded default and the production server (``QdrantIndex`` at ``QDRANT_URL``) agree
on filters, IDF (``ln(1 + (N - n + 0.5) / (n + 0.5))`` over the whole collection), RRF
(k = 2) and payloads, with no scoring code of ours to keep in step. Persistence, its WAL,
deletes by filter and crash safety are the engine's. A numpy index was as fast but would
have been several hundred lines of storage code of our own. Exact search grows linearly:
past a few hundred thousand chunks per process, use a Qdrant server (HNSW).
``bench/bench_rag.py`` prints the current figures next to local mode in the same run.

Layout: one shard (a folder: ``segments/``, ``wal/``, ``edge_config.json``) per
collection under ``QDRANT_PATH/edge/<collection>`` (``RagSettings.edge_index_path``), the
same single collection and payload as ``QdrantIndex``, payload indexes on ``user_id``
(tenant), ``knowledge_base_id``, ``document_id`` and ``page``. A shard is opened by one
process at a time (the engine locks its WAL; a second open fails). Every call runs in a
worker thread (the engine releases the GIL), writes one at a time; an update is in the
WAL and visible to searches when it returns. Opening replays the WAL and runs the
optimiser once (merges small segments, drops deleted points).

IDF, as on the server: the statistics come from the segments, where a deleted point
still counts until its segment is rebuilt (by the optimiser or on the next open), so
after deletes BM25 scores of the other chunks shift slightly until then.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import qdrant_edge as qe

from services.rag.chunking import Chunk
from services.rag.index import (
    DEFAULT_COLLECTION,
    DENSE,
    SPARSE,
    UPSERT_BATCH,
    Hit,
    Index,
    IndexUnavailableError,
    SearchMode,
    check_chunks,
    check_query,
    check_scope,
    chunk_payload,
    hit_from,
    prefetch_size,
)
from services.rag.sparse import SparseVector

T = TypeVar("T")

RRF_K = 2  # Qdrant's default for FusionQuery(RRF): the server path uses the same
_PLAIN = qe.SearchParams(exact=True)


def _filter(
    user_id: str,
    knowledge_base_ids: Sequence[str],
    document_ids: Sequence[str] | None = None,
    pages: Sequence[int] | None = None,
) -> qe.Filter:
    check_scope(user_id, knowledge_base_ids)
    must: list[Any] = [
        qe.FieldCondition("user_id", match=qe.MatchValue(user_id)),
        qe.FieldCondition("knowledge_base_id", match=qe.MatchAny(list(knowledge_base_ids))),
    ]
    if document_ids:
        must.append(qe.FieldCondition("document_id", match=qe.MatchAny(list(document_ids))))
    if pages:
        must.append(qe.FieldCondition("page", match=qe.MatchAny([int(p) for p in pages])))
    return qe.Filter(must=must)


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(indices=list(vector.indices), values=list(vector.values))


class EdgeIndex(Index):
    """Chunks of all users in one Qdrant Edge shard on disk (see the module docstring)."""

    def __init__(self, path: str | Path, *, dim: int, collection: str = DEFAULT_COLLECTION):
        self.root = Path(path)
        self.path = self.root / collection
        self.dim = dim
        self.collection = collection
        self._shard: qe.EdgeShard | None = None
        self._open_lock = asyncio.Lock()
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, *, dim: int, path: str | Path, collection: str = DEFAULT_COLLECTION) -> EdgeIndex:
        """An index at ``path/collection``; the shard is created or loaded on first use."""
        return cls(path, dim=dim, collection=collection)

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            # No HNSW graph: every search is exact (recall 1.0), see the docstring.
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        )

    def _load(self) -> qe.EdgeShard:
        if (self.path / "edge_config.json").exists():
            try:
                shard = qe.EdgeShard.load(str(self.path), self._config())
            except Exception as exc:
                if "incompatible" in str(exc).lower():
                    raise ValueError(
                        f"index {str(self.path)!r} has another dense size than {self.dim}: {exc}"
                    ) from exc
                raise
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(self.path), self._config())
        schema: list[tuple[str, Any]] = [
            ("user_id", qe.KeywordIndexParams(is_tenant=True)),
            ("knowledge_base_id", qe.PayloadSchemaType.Keyword),
            ("document_id", qe.PayloadSchemaType.Keyword),
            ("page", qe.PayloadSchemaType.Integer),
        ]
        existing = shard.info().payload_schema
        for name, field_schema in schema:
            if name not in existing:
                shard.update(qe.UpdateOperation.create_field_index(name, field_schema))
        shard.optimize()
        return shard

    async def ensure_collection(self) -> None:
        """Create or load the shard (idempotent); ValueError when it has another dense
        dimension, IndexUnavailableError when its folder cannot be used."""
        if self._shard is not None:
            return
        async with self._open_lock:
            if self._shard is None:
                try:
                    self._shard = await asyncio.to_thread(self._load)
                except ValueError:
                    raise
                except Exception as exc:
                    raise IndexUnavailableError(
                        f"the vector index at {self.path} cannot be opened: {exc}"
                    ) from exc

    async def ping(self) -> None:
        await self.ensure_collection()

    async def close(self) -> None:
        async with self._open_lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                await asyncio.to_thread(self._close, shard)

    def _close(self, shard: qe.EdgeShard) -> None:
        with self._write_lock:
            shard.flush()
            shard.close()

    async def _call(self, fn: Callable[[qe.EdgeShard], T], *, write: bool = False) -> T:
        await self.ensure_collection()
        shard = self._shard
        if shard is None:
            raise IndexUnavailableError("the vector index is closed")

        def run() -> T:
            if not write:
                return fn(shard)
            with self._write_lock:
                return fn(shard)

        try:
            return await asyncio.to_thread(run)
        except OSError as exc:
            raise IndexUnavailableError(
                f"the vector index is unavailable: {type(exc).__name__}"
            ) from exc

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
        points = [
            qe.Point(
                c.id,
                {DENSE: [float(x) for x in d], SPARSE: _sparse(s)},
                chunk_payload(
                    user_id=user_id,
                    knowledge_base_id=knowledge_base_id,
                    document_id=document_id,
                    filename=filename,
                    chunk=c,
                ),
            )
            for c, d, s in zip(chunks, dense, sparse, strict=True)
        ]

        def write(shard: qe.EdgeShard) -> None:
            for start in range(0, len(points), batch_size):
                shard.update(qe.UpdateOperation.upsert_points(points[start : start + batch_size]))

        await self._call(write, write=True)
        return len(points)

    async def _delete(self, key: str, value: str, user_id: str) -> None:
        flt = qe.Filter(
            must=[
                qe.FieldCondition("user_id", match=qe.MatchValue(user_id)),
                qe.FieldCondition(key, match=qe.MatchValue(value)),
            ]
        )
        await self._call(
            lambda shard: shard.update(qe.UpdateOperation.delete_points_by_filter(flt)),
            write=True,
        )

    async def delete_document(self, *, user_id: str, document_id: str) -> None:
        """Remove every chunk of a document; done when it returns."""
        if not user_id or not document_id:
            raise ValueError("user_id and document_id are required")
        await self._delete("document_id", document_id, user_id)

    async def delete_knowledge_base(self, *, user_id: str, knowledge_base_id: str) -> None:
        """Remove every chunk of a knowledge base; done when it returns."""
        if not user_id or not knowledge_base_id:
            raise ValueError("user_id and knowledge_base_id are required")
        await self._delete("knowledge_base_id", knowledge_base_id, user_id)

    # --- reads -----------------------------------------------------------------------

    async def count(
        self,
        *,
        user_id: str,
        knowledge_base_ids: Sequence[str],
        document_ids: Sequence[str] | None = None,
    ) -> int:
        """Exact number of chunks of the given knowledge bases (and documents)."""
        request = qe.CountRequest(
            exact=True, filter=_filter(user_id, knowledge_base_ids, document_ids)
        )
        return int(await self._call(lambda shard: shard.count(request)))

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
        """The best ``top_k`` chunks of the user's given knowledge bases; the same
        contract as ``QdrantIndex.search`` (modes, empty sparse queries, RRF)."""
        if top_k <= 0:
            return []
        flt = _filter(user_id, knowledge_base_ids, document_ids, pages)
        has_sparse = check_query(mode, dense, sparse)
        dense_q = [float(x) for x in dense] if dense is not None else None
        sparse_q = _sparse(sparse) if sparse is not None and has_sparse else None
        request: qe.QueryRequest
        if mode is SearchMode.SPARSE:
            if sparse_q is None:
                return []
            request = qe.QueryRequest(
                limit=top_k,
                query=qe.Query.Nearest(sparse_q, using=SPARSE),
                filter=flt,
                params=_PLAIN,
                with_payload=True,
            )
        elif mode is SearchMode.DENSE or sparse_q is None:
            assert dense_q is not None  # check_query
            request = qe.QueryRequest(
                limit=top_k,
                query=qe.Query.Nearest(dense_q, using=DENSE),
                filter=flt,
                params=_PLAIN,
                with_payload=True,
            )
        else:
            assert dense_q is not None
            limit = prefetch_size(top_k, prefetch_limit)
            request = qe.QueryRequest(
                limit=top_k,
                prefetches=[
                    qe.Prefetch(
                        limit=limit,
                        query=qe.Query.Nearest(dense_q, using=DENSE),
                        filter=flt,
                        params=_PLAIN,
                    ),
                    qe.Prefetch(
                        limit=limit,
                        query=qe.Query.Nearest(sparse_q, using=SPARSE),
                        filter=flt,
                        params=_PLAIN,
                    ),
                ],
                # The stub's union names Fusion, not its variant Fusion.Rrf.
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]
                with_payload=True,
            )
        points = await self._call(lambda shard: shard.query(request))
        return [hit_from(p.id, p.score, p.payload) for p in points]
