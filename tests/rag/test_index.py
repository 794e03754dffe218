"""The chunk index, both embedded engines (Qdrant Edge and qdrant-client's local mode), with
real MiniLM vectors and BM25 sparse vectors: hybrid search finds exact codes that dense
search misses, deletes stick, users and knowledge bases stay apart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.rag.chunking import chunk_blocks
from services.rag.embedder import MiniLmEmbedder
from services.rag.index import Hit, Index, QdrantIndex, SearchMode
from services.rag.model import Block, BlockKind, Box
from services.rag.sparse import Bm25Encoder

ENC = Bm25Encoder()

# A register of short lines whose codes look alike, and two paragraphs that mention a
# code once among other words. To the dense model the bare code «АР-12» is closest to
# «Раздел АР-13.» (it cannot read codes); only the lexical side finds the paragraphs.
CORPUS = {
    "ar1": "Раздел АР-1.",
    "ar2": "Раздел АР-2.",
    "ar13": "Раздел АР-13.",
    "ar21": "Раздел АР-21.",
    "ar120": "Раздел АР-120.",
    "pv2": "Установка ПВ-2.",
    "pv3": "Установка ПВ-3.",
    "pv10": "Установка ПВ-10.",
    "pv11": "Установка ПВ-11.",
    "p1": "Установка П-1.",
    "ar12": "Комплект чертежей выпущен повторно после замечаний экспертизы; изменения "
    "согласованы с заказчиком, см. АР-12, лист 4.",
    "pv1": "Оборудование смонтировано в подвале рядом с насосной, щит автоматики и датчики "
    "подключены; система ПВ-1 испытана.",
    "en1": "The supply air handling unit serves the office floors.",
}


async def _ingest(
    index: Index,
    embedder: MiniLmEmbedder,
    *,
    user: str,
    kb: str,
    doc: str,
    blocks: list[Block],
    filename: str = "file.pdf",
) -> int:
    chunks = chunk_blocks(doc, blocks, size=300, overlap=50)
    dense = embedder.embed_documents([c.embed_text for c in chunks])
    sparse = ENC.encode_documents([c.text for c in chunks])
    return await index.replace_document(
        user_id=user,
        knowledge_base_id=kb,
        document_id=doc,
        filename=filename,
        chunks=chunks,
        dense=dense,
        sparse=sparse,
    )


async def _search(
    index: Index,
    embedder: MiniLmEmbedder,
    query: str,
    *,
    user: str = "alice",
    kbs: tuple[str, ...] = ("kb-a",),
    mode: SearchMode = SearchMode.HYBRID,
    top_k: int = 5,
    document_ids: list[str] | None = None,
    pages: list[int] | None = None,
) -> list[Hit]:
    return await index.search(
        user_id=user,
        knowledge_base_ids=list(kbs),
        dense=embedder.embed_query(query),
        sparse=ENC.encode_query(query),
        top_k=top_k,
        mode=mode,
        document_ids=document_ids,
        pages=pages,
    )


@pytest.fixture
async def corpus(index: Index, embedder: MiniLmEmbedder) -> Index:
    for doc, text in CORPUS.items():
        block = Block("p1-b1", 1, BlockKind.TEXT, text)
        await _ingest(index, embedder, user="alice", kb="kb-a", doc=doc, blocks=[block])
    return index


@pytest.mark.parametrize(("query", "target"), [("ПВ-1", "pv1"), ("АР-12", "ar12")])
async def test_hybrid_finds_exact_codes_where_dense_misses(
    corpus: Index, embedder: MiniLmEmbedder, query: str, target: str
) -> None:
    dense = await _search(corpus, embedder, query, mode=SearchMode.DENSE, top_k=3)
    assert target not in [h.document_id for h in dense], [h.document_id for h in dense]
    sparse = await _search(corpus, embedder, query, mode=SearchMode.SPARSE)
    assert [h.document_id for h in sparse] == [target]  # no other chunk has that code
    hybrid = await _search(corpus, embedder, query, mode=SearchMode.HYBRID)
    assert hybrid[0].document_id == target
    assert len(hybrid) == 5  # the dense side still contributes neighbours
    assert hybrid[0].score > hybrid[1].score


async def test_hits_carry_chunk_fields(index: Index, embedder: MiniLmEmbedder) -> None:
    box1 = Box.from_normalized(0.1, 0.1, 0.5, 0.2, 1000, 1400)
    box2 = Box.from_normalized(0.2, 0.15, 0.9, 0.3, 1000, 1400)
    blocks = [
        Block("p2-b1", 2, BlockKind.HEADING, "Спецификация ПВ-1", box1),
        Block("p2-b2", 2, BlockKind.TEXT, "Вентилятор радиальный, 1200 м3/ч.", box2),
    ]
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1", blocks=blocks,
                  filename="ov.pdf")  # fmt: skip
    (hit,) = await _search(index, embedder, "вентилятор ПВ-1", top_k=3)
    assert (hit.document_id, hit.knowledge_base_id, hit.filename) == ("d1", "kb-a", "ov.pdf")
    assert (hit.page, hit.block_ids, hit.chunk_index) == (2, ("p2-b1", "p2-b2"), 0)
    assert hit.text.startswith("Спецификация ПВ-1\n\nВентилятор")
    assert hit.box is not None and hit.box.as_tuple() == (0.1, 0.1, 0.9, 0.3)
    assert hit.box.pixels is not None and hit.box.pixels.right == 900
    assert hit.box.page_width == 1000


async def test_delete_document_then_search_returns_nothing_of_it(
    corpus: Index, embedder: MiniLmEmbedder
) -> None:
    assert await corpus.count(user_id="alice", knowledge_base_ids=["kb-a"]) == len(CORPUS)
    await corpus.delete_document(user_id="alice", document_id="ar12")
    for mode in SearchMode:
        hits = await _search(corpus, embedder, "АР-12", mode=mode, top_k=50)
        assert "ar12" not in {h.document_id for h in hits}
    assert await corpus.count(user_id="alice", knowledge_base_ids=["kb-a"]) == len(CORPUS) - 1
    assert (
        await corpus.count(user_id="alice", knowledge_base_ids=["kb-a"], document_ids=["ar12"]) == 0
    )


async def test_delete_knowledge_base(index: Index, embedder: MiniLmEmbedder) -> None:
    block = [Block("b", 1, BlockKind.TEXT, "Приточная установка ПВ-1")]
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1", blocks=block)
    await _ingest(index, embedder, user="alice", kb="kb-b", doc="d2", blocks=block)
    await index.delete_knowledge_base(user_id="alice", knowledge_base_id="kb-a")
    hits = await _search(index, embedder, "ПВ-1", kbs=("kb-a", "kb-b"))
    assert [h.document_id for h in hits] == ["d2"]


async def test_users_are_isolated(index: Index, embedder: MiniLmEmbedder) -> None:
    block = [Block("b", 1, BlockKind.TEXT, "Секретный отчёт АР-12 пользователя")]
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1", blocks=block)
    # Bob names Alice's knowledge base and document: nothing comes back.
    for mode in SearchMode:
        assert await _search(index, embedder, "АР-12", user="bob", mode=mode) == []
    assert await _search(index, embedder, "АР-12", user="bob", document_ids=["d1"]) == []
    # Bob's deletes do not touch Alice's chunks.
    await index.delete_document(user_id="bob", document_id="d1")
    await index.delete_knowledge_base(user_id="bob", knowledge_base_id="kb-a")
    assert [h.document_id for h in await _search(index, embedder, "АР-12")] == ["d1"]
    assert await index.count(user_id="bob", knowledge_base_ids=["kb-a"]) == 0


async def test_document_and_page_filters(index: Index, embedder: MiniLmEmbedder) -> None:
    blocks = [
        Block(f"p{p}-b1", p, BlockKind.TEXT, f"Страница {p}: установка ПВ-1") for p in (1, 2, 3)
    ]
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1", blocks=blocks)
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d2", blocks=blocks[:1])
    hits = await _search(index, embedder, "ПВ-1", top_k=10, pages=[2, 3])
    assert sorted((h.document_id, h.page) for h in hits) == [("d1", 2), ("d1", 3)]
    hits = await _search(index, embedder, "ПВ-1", top_k=10, document_ids=["d2"])
    assert [(h.document_id, h.page) for h in hits] == [("d2", 1)]
    assert await _search(index, embedder, "ПВ-1", document_ids=["elsewhere"]) == []


async def test_reingest_replaces_chunks(index: Index, embedder: MiniLmEmbedder) -> None:
    many = [Block(f"p{p}-b1", p, BlockKind.TEXT, f"Старая версия, лист {p}") for p in range(1, 5)]
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1", blocks=many)
    assert await index.count(user_id="alice", knowledge_base_ids=["kb-a"]) == 4
    await _ingest(index, embedder, user="alice", kb="kb-a", doc="d1",
                  blocks=[Block("p1-b1", 1, BlockKind.TEXT, "Новая версия")])  # fmt: skip
    assert await index.count(user_id="alice", knowledge_base_ids=["kb-a"]) == 1
    hits = await _search(index, embedder, "версия", top_k=10)
    assert [h.text for h in hits] == ["Новая версия"]


async def test_queries_without_terms_and_bad_arguments(
    corpus: Index, embedder: MiniLmEmbedder
) -> None:
    assert await _search(corpus, embedder, "?!", mode=SearchMode.SPARSE) == []
    assert len(await _search(corpus, embedder, "?!", mode=SearchMode.HYBRID)) == 5
    assert await _search(corpus, embedder, "ПВ-1", top_k=0) == []
    with pytest.raises(ValueError):
        await _search(corpus, embedder, "ПВ-1", kbs=())
    with pytest.raises(ValueError):
        await _search(corpus, embedder, "ПВ-1", user="")


async def test_qdrant_local_mode_persists_on_disk(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    path = tmp_path / "q"
    first = QdrantIndex.open(dim=embedder.dim, path=path)
    block = [Block("b", 1, BlockKind.TEXT, "Долговечные данные АР-12")]
    await _ingest(first, embedder, user="alice", kb="kb-a", doc="d1", blocks=block)
    await first.close()
    # Local storage was switched to WAL (per-point commits without a full fsync each).
    (sqlite_file,) = path.rglob("storage.sqlite")
    with sqlite3.connect(sqlite_file) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second = QdrantIndex.open(dim=embedder.dim, path=path)
    try:
        assert await second.count(user_id="alice", knowledge_base_ids=["kb-a"]) == 1
    finally:
        await second.close()
    wrong = QdrantIndex.open(dim=8, path=path)
    try:
        with pytest.raises(ValueError, match="dense size"):
            await wrong.ensure_collection()
    finally:
        await wrong.close()
