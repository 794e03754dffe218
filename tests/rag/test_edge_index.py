"""The embedded engines against exact search: on a random corpus (no score ties) every
dense, sparse and hybrid search of Qdrant Edge — and of qdrant-client's local mode, the
QdrantIndex path — returns what a brute-force numpy search over the same points returns
(cosine, BM25 dot product with Qdrant's IDF over the whole collection, RRF k = 2 over the
prefetched candidates), under user, knowledge base, document and page filters, after
deletes, and for Qdrant Edge after re-opening the shard, even after a process that wrote
it was killed.

One difference between the engines, modelled here: Qdrant (Edge and server) takes its IDF
statistics from the index, where a deleted point still counts until its segment is
rebuilt (by the optimiser, or when the shard is re-opened); local mode counts live points
only."""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import Unavailable
from services.rag.chunking import Chunk
from services.rag.edge_index import EdgeIndex
from services.rag.index import Hit, Index, QdrantIndex, SearchMode
from services.rag.sparse import SparseVector
from tests.rag.conftest import ENGINES, open_engine

DIM = 16
VOCAB = 40
USERS = ("alice", "bob", "carol")
KBS = ("kb1", "kb2")
DOCS = 3
CHUNKS = 12  # per document, on pages 1..3
TOL = 1e-4
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Point:
    id: str
    user: str
    kb: str
    doc: str
    page: int
    dense: np.ndarray
    sparse: dict[int, float]


def _kb(user: str, kb: str) -> str:
    return f"{user}-{kb}"


def _doc(user: str, kb: str, n: int) -> str:
    return f"{user}-{kb}-d{n}"


def _sparse_vec(rng: random.Random, terms: int) -> SparseVector:
    chosen = sorted(rng.sample(range(1, VOCAB + 1), terms))
    return SparseVector(chosen, [round(rng.uniform(0.1, 2.0), 6) for _ in chosen])


class Corpus:
    """The points as written, and exact search over them."""

    def __init__(self, index: Index) -> None:
        self.points: dict[str, Point] = {}
        self.written: dict[str, Point] = {}  # deleted points too
        self.idf_counts_deleted = isinstance(index, EdgeIndex)

    async def fill(self, index: Index, seed: int = 1) -> None:
        rng = random.Random(seed)
        nprng = np.random.default_rng(seed)
        for user in USERS:
            for kb in KBS:
                for n in range(DOCS):
                    doc = _doc(user, kb, n)
                    chunks = [
                        Chunk(doc, i, 1 + i % 3, (f"b{i}",), f"text {doc} {i}", None)
                        for i in range(CHUNKS)
                    ]
                    dense = nprng.standard_normal((CHUNKS, DIM)).astype(np.float32)
                    sparse = [_sparse_vec(rng, rng.randint(2, 6)) for _ in chunks]
                    await index.upsert_chunks(
                        user_id=user,
                        knowledge_base_id=_kb(user, kb),
                        document_id=doc,
                        filename=f"{doc}.pdf",
                        chunks=chunks,
                        dense=dense.tolist(),
                        sparse=sparse,
                    )
                    for c, d, s in zip(chunks, dense, sparse, strict=True):
                        self.points[c.id] = self.written[c.id] = Point(
                            c.id,
                            user,
                            _kb(user, kb),
                            doc,
                            c.page,
                            d,
                            dict(zip(s.indices, s.values, strict=True)),
                        )

    def rebuilt(self) -> None:
        """The shard was re-opened: deleted points no longer count for IDF."""
        self.written = dict(self.points)

    def drop(self, *, user: str, doc: str | None = None, kb: str | None = None) -> None:
        self.points = {
            k: p
            for k, p in self.points.items()
            if not (p.user == user and (p.doc == doc or p.kb == kb))
        }

    def _allowed(
        self, user: str, kbs: list[str], docs: list[str] | None, pages: list[int] | None
    ) -> list[Point]:
        return [
            p
            for p in self.points.values()
            if p.user == user
            and p.kb in kbs
            and (not docs or p.doc in docs)
            and (not pages or p.page in pages)
        ]

    def dense_scores(self, points: list[Point], q: np.ndarray) -> dict[str, float]:
        qn = q / np.linalg.norm(q)
        return {p.id: float(p.dense @ qn / np.linalg.norm(p.dense)) for p in points}

    def sparse_scores(self, points: list[Point], q: SparseVector) -> dict[str, float]:
        # IDF over the whole collection, every user.
        population = self.written if self.idf_counts_deleted else self.points
        n = len(population)
        idf = {}
        for t in q.indices:
            df = sum(1 for p in population.values() if t in p.sparse)
            idf[t] = math.log(1 + (n - df + 0.5) / (df + 0.5))
        out = {}
        for p in points:
            shared = [t for t in q.indices if t in p.sparse]
            if shared:
                w = dict(zip(q.indices, q.values, strict=True))
                out[p.id] = sum(w[t] * idf[t] * p.sparse[t] for t in shared)
        return out

    def exact(
        self,
        mode: SearchMode,
        user: str,
        kbs: list[str],
        q: np.ndarray,
        s: SparseVector,
        *,
        docs: list[str] | None = None,
        pages: list[int] | None = None,
        limit: int = 50,
    ) -> dict[str, float]:
        """Every candidate's exact score (hybrid: RRF of the top ``limit`` of each side)."""
        allowed = self._allowed(user, kbs, docs, pages)
        if mode is SearchMode.DENSE:
            return self.dense_scores(allowed, q)
        if mode is SearchMode.SPARSE:
            return self.sparse_scores(allowed, s)
        fused: dict[str, float] = {}
        for side in (self.dense_scores(allowed, q), self.sparse_scores(allowed, s)):
            ranked = sorted(side, key=lambda k: -side[k])[:limit]
            for rank, key in enumerate(ranked):
                fused[key] = fused.get(key, 0.0) + 1.0 / (rank + 2)
        return fused


def assert_exact(hits: list[Hit], want: dict[str, float], top_k: int) -> None:
    """``hits`` is a top ``top_k`` of ``want`` (ties in any order) with the exact scores."""
    best = sorted(want.values(), reverse=True)[:top_k]
    assert len(hits) == len(best), (len(hits), len(best))
    assert len({h.chunk_id for h in hits}) == len(hits)
    for hit, score in zip(hits, best, strict=True):
        assert hit.chunk_id in want, hit
        assert abs(want[hit.chunk_id] - hit.score) < TOL, (hit.score, want[hit.chunk_id])
        assert abs(hit.score - score) < TOL, (hit.score, score)


async def _check_queries(index: Index, corpus: Corpus, seed: int, rounds: int = 6) -> None:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    for r in range(rounds):
        user = USERS[r % len(USERS)]
        kbs = [_kb(user, k) for k in (KBS if r % 2 else KBS[:1])]
        docs = [_doc(user, KBS[0], 0), _doc(user, KBS[1], 1)] if r % 3 == 2 else None
        pages = [1, 3] if r % 4 == 3 else None
        q = nprng.standard_normal(DIM).astype(np.float32)
        s = SparseVector(sorted(rng.sample(range(1, VOCAB + 1), 3)), [1.0, 1.0, 1.0])
        for mode in SearchMode:
            for top_k in (1, 10):
                hits = await index.search(
                    user_id=user,
                    knowledge_base_ids=kbs,
                    dense=q.tolist(),
                    sparse=s,
                    top_k=top_k,
                    document_ids=docs,
                    pages=pages,
                    mode=mode,
                    prefetch_limit=20,
                )
                want = corpus.exact(mode, user, kbs, q, s, docs=docs, pages=pages, limit=20)
                assert want, "the query should find something"
                assert_exact(hits, want, top_k)
                owned = {p.id for p in corpus.points.values() if p.user == user}
                assert {h.chunk_id for h in hits} <= owned  # never another user's


@pytest.fixture(params=ENGINES)
async def engine_index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Index]:
    idx = open_engine(request.param, tmp_path / "index", DIM)
    await idx.ensure_collection()
    yield idx
    await idx.close()


async def test_search_equals_exact_search(engine_index: Index) -> None:
    corpus = Corpus(engine_index)
    await corpus.fill(engine_index)
    await _check_queries(engine_index, corpus, seed=3, rounds=12)
    # Another user's knowledge base id finds nothing, in every mode.
    for mode in SearchMode:
        hits = await engine_index.search(
            user_id="bob",
            knowledge_base_ids=[_kb("alice", "kb1")],
            dense=[1.0] * DIM,
            sparse=SparseVector([1, 2, 3], [1.0, 1.0, 1.0]),
            mode=mode,
        )
        assert hits == []


async def test_deletes_by_document_and_knowledge_base(engine_index: Index) -> None:
    corpus = Corpus(engine_index)
    await corpus.fill(engine_index)
    await engine_index.delete_document(user_id="alice", document_id=_doc("alice", "kb1", 0))
    corpus.drop(user="alice", doc=_doc("alice", "kb1", 0))
    await engine_index.delete_knowledge_base(user_id="bob", knowledge_base_id=_kb("bob", "kb2"))
    corpus.drop(user="bob", kb=_kb("bob", "kb2"))
    # Deletes naming another user's document or knowledge base change nothing.
    await engine_index.delete_document(user_id="carol", document_id=_doc("alice", "kb2", 0))
    await engine_index.delete_knowledge_base(user_id="carol", knowledge_base_id=_kb("bob", "kb1"))
    for user in USERS:
        kbs = [_kb(user, k) for k in KBS]
        want = sum(1 for p in corpus.points.values() if p.user == user)
        assert await engine_index.count(user_id=user, knowledge_base_ids=kbs) == want
    assert await engine_index.count(user_id="bob", knowledge_base_ids=[_kb("bob", "kb2")]) == 0
    await _check_queries(engine_index, corpus, seed=5)


async def test_edge_shard_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    first = EdgeIndex.open(dim=DIM, path=path)
    corpus = Corpus(first)
    await corpus.fill(first)
    await first.delete_document(user_id="carol", document_id=_doc("carol", "kb1", 1))
    corpus.drop(user="carol", doc=_doc("carol", "kb1", 1))
    await first.close()
    second = EdgeIndex.open(dim=DIM, path=path)
    corpus.rebuilt()
    try:
        await _check_queries(second, corpus, seed=7)
        # Writes after a re-open land next to what was there.
        await second.delete_knowledge_base(user_id="alice", knowledge_base_id=_kb("alice", "kb2"))
        corpus.drop(user="alice", kb=_kb("alice", "kb2"))
        await _check_queries(second, corpus, seed=8, rounds=3)
    finally:
        await second.close()
    wrong = EdgeIndex.open(dim=DIM * 2, path=path)
    with pytest.raises(ValueError, match="dense size"):
        await wrong.ensure_collection()


async def test_edge_shard_survives_a_killed_writer(tmp_path: Path) -> None:
    """A process that wrote and died without closing (no flush): the next open replays
    the write-ahead log."""
    path = tmp_path / "edge"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from services.rag.chunking import Chunk
        from services.rag.edge_index import EdgeIndex
        from services.rag.sparse import SparseVector

        async def main():
            index = EdgeIndex.open(dim={DIM}, path={str(path)!r})
            for doc, n in (("d1", 5), ("d2", 3)):
                await index.upsert_chunks(
                    user_id="alice", knowledge_base_id="kb", document_id=doc, filename="f",
                    chunks=[Chunk(doc, i, 1, ("b",), f"t{{i}}", None) for i in range(n)],
                    dense=[[float(i + 1)] * {DIM} for i in range(n)],
                    sparse=[SparseVector([1], [1.0])] * n,
                )
            await index.delete_document(user_id="alice", document_id="d2")
            os._exit(0)  # no close, no flush

        asyncio.run(main())
        """
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    index = EdgeIndex.open(dim=DIM, path=path)
    try:
        assert await index.count(user_id="alice", knowledge_base_ids=["kb"]) == 5
        hits = await index.search(
            user_id="alice",
            knowledge_base_ids=["kb"],
            dense=None,
            sparse=SparseVector([1], [1.0]),
            mode=SearchMode.SPARSE,
        )
        assert sorted((h.document_id, h.chunk_index) for h in hits) == [("d1", i) for i in range(5)]
    finally:
        await index.close()


async def test_edge_shard_is_opened_by_one_index_at_a_time(tmp_path: Path) -> None:
    first = EdgeIndex.open(dim=DIM, path=tmp_path)
    await first.ensure_collection()
    second = EdgeIndex.open(dim=DIM, path=tmp_path)
    try:
        with pytest.raises(Unavailable, match="cannot be opened"):
            await second.ensure_collection()
    finally:
        await first.close()
    await second.ensure_collection()  # free again
    await second.close()


async def test_edge_searches_while_writing(tmp_path: Path) -> None:
    """Searches run in worker threads next to writes (deletes of another knowledge base)
    without errors, and the end state is exact."""
    index = EdgeIndex.open(dim=DIM, path=tmp_path)
    corpus = Corpus(index)
    try:
        await corpus.fill(index, seed=2)
        nprng = np.random.default_rng(4)

        async def searches() -> None:
            for _ in range(30):
                hits = await index.search(
                    user_id="alice",
                    knowledge_base_ids=[_kb("alice", "kb1")],
                    dense=nprng.standard_normal(DIM).tolist(),
                    sparse=SparseVector([1, 2], [1.0, 1.0]),
                    top_k=5,
                )
                assert len(hits) == 5

        async def writes() -> None:
            for n in range(DOCS):
                doc = _doc("alice", "kb2", n)
                await index.delete_document(user_id="alice", document_id=doc)
                corpus.drop(user="alice", doc=doc)

        await asyncio.gather(searches(), searches(), writes())
        await _check_queries(index, corpus, seed=9, rounds=3)
    finally:
        await index.close()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
async def test_server_chooses_the_engine_from_settings(tmp_path: Path) -> None:
    from services.rag.config import RagSettings
    from services.rag.server import open_index

    base = {"aivera_env": "test", "data_dir": tmp_path}
    edge = open_index(RagSettings(**base), DIM)  # type: ignore[arg-type]
    assert (
        isinstance(edge, EdgeIndex) and edge.path == tmp_path / "qdrant" / "edge" / "aivera_chunks"
    )
    local = open_index(RagSettings(**base, rag_index="qdrant-local"), DIM)  # type: ignore[arg-type]
    assert isinstance(local, QdrantIndex) and local.local
    await local.close()
    server = open_index(
        RagSettings(**base, rag_index="qdrant-local", qdrant_url="http://127.0.0.1:1"),  # type: ignore[arg-type]
        DIM,
    )
    assert isinstance(server, QdrantIndex) and not server.local
    await server.close()
