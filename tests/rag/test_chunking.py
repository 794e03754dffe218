"""Chunking invariants: sizes, pages, headings, overlap, block ids and union boxes."""

from __future__ import annotations

import itertools
import random

import pytest

from services.rag.chunking import Chunk, chunk_blocks, chunk_id, fit_chunks, split_text
from services.rag.embedder import MiniLmEmbedder
from services.rag.model import Block, BlockKind, Box
from services.rag.vectorize import make_chunks, vectorize

WORDS = [
    "система",
    "вентиляции",
    "приточная",
    "установка",
    "воздуховод",
    "фасад",
    "план",
    "разрез",
    "узел",
]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def _box(page_top: float) -> Box:
    return Box.from_normalized(0.1, page_top, 0.9, page_top + 0.05, 1000, 1400)


def _doc(rng: random.Random, pages: int = 3) -> list[Block]:
    blocks: list[Block] = []
    for page in range(1, pages + 1):
        n = 0
        for section in range(3):
            n += 1
            blocks.append(
                Block(f"p{page}-b{n}", page, BlockKind.HEADING, f"Раздел {page}.{section}",
                      _box(0.02 + 0.3 * section))
            )  # fmt: skip
            for _ in range(rng.randint(1, 6)):
                n += 1
                size = rng.choice([5, 20, 60, 200])  # the last one exceeds small chunk sizes
                blocks.append(
                    Block(f"p{page}-b{n}", page, BlockKind.TEXT, _text(rng, size),
                          _box(min(0.9, 0.05 + 0.3 * section + 0.01 * n)))
                )  # fmt: skip
        blocks.append(Block(f"p{page}-img", page, BlockKind.IMAGE, "", _box(0.5)))
    return blocks


@pytest.mark.parametrize(("size", "overlap"), [(100, 0), (300, 50), (1000, 150), (2000, 999)])
def test_invariants(size: int, overlap: int) -> None:
    rng = random.Random(size)
    blocks = _doc(rng)
    by_id = {b.id: b for b in blocks}
    chunks = chunk_blocks("doc-1", blocks, size=size, overlap=overlap)
    assert chunks
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len({c.id for c in chunks}) == len(chunks)
    covered: set[str] = set()
    for c in chunks:
        assert c.document_id == "doc-1"
        assert 0 < len(c.text) <= size
        assert c.block_ids and all(by_id[i].page == c.page for i in c.block_ids)  # one page
        order = [list(by_id).index(i) for i in c.block_ids]
        assert order == sorted(order)  # reading order
        # The box is the union of the blocks' boxes.
        boxes = [by_id[i].box for i in c.block_ids]
        assert c.box is not None
        assert c.box.top == min(b.top for b in boxes if b)
        assert c.box.bottom == max(b.bottom for b in boxes if b)
        assert c.box.pixels is not None and c.box.page_width == 1000
        covered.update(c.block_ids)
        # A heading only ever starts a chunk.
        for i in c.block_ids[1:]:
            assert by_id[i].kind is not BlockKind.HEADING
    # Every block with text lands in some chunk, and its text is in the chunks' text.
    assert covered == {b.id for b in blocks if b.text}
    joined = "\n".join(c.text for c in chunks)
    for b in blocks:
        for word_run in b.text.split(". ")[:1]:
            assert word_run[:40] in joined


def test_small_blocks_pack_and_headings_start_chunks() -> None:
    blocks = [
        Block("h1", 1, BlockKind.HEADING, "Введение"),
        Block("a", 1, BlockKind.TEXT, "Первый абзац."),
        Block("b", 1, BlockKind.TEXT, "Второй абзац."),
        Block("h2", 1, BlockKind.HEADING, "Система ПВ-1"),
        Block("c", 1, BlockKind.TEXT, "Состав системы."),
        Block("d", 2, BlockKind.TEXT, "Продолжение на второй странице."),
    ]
    chunks = chunk_blocks("d", blocks, size=200, overlap=20)
    assert [(c.page, c.block_ids) for c in chunks] == [
        (1, ("h1", "a", "b")),
        (1, ("h2", "c")),
        (2, ("d",)),
    ]
    assert chunks[0].text == "Введение\n\nПервый абзац.\n\nВторой абзац."
    assert chunks[0].box is None  # blocks without layout
    # The section heading rides along into the next page's chunk for embedding.
    assert chunks[2].heading == "Система ПВ-1"
    assert chunks[2].embed_text.startswith("Система ПВ-1\n")
    assert chunks[1].embed_text == chunks[1].text


def test_overlap_carries_the_tail_of_the_previous_chunk() -> None:
    blocks = [
        Block(f"b{i}", 1, BlockKind.TEXT, f"Абзац номер {i} " + "слово " * 25) for i in range(6)
    ]
    chunks = chunk_blocks("d", blocks, size=400, overlap=60)
    assert len(chunks) >= 2
    for prev, nxt in itertools.pairwise(chunks):
        tail_words = prev.text.split()[-3:]
        assert " ".join(tail_words) in nxt.text
        assert prev.block_ids[-1] == nxt.block_ids[0]  # the carried block is named


def test_long_block_is_split_with_overlap() -> None:
    sentences = [f"Предложение {i} о вентиляции здания." for i in range(80)]
    block = Block("long", 3, BlockKind.TEXT, " ".join(sentences), _box(0.1))
    chunks = chunk_blocks("d", [block], size=300, overlap=60)
    assert len(chunks) > 5
    assert all(c.block_ids == ("long",) and c.page == 3 and len(c.text) <= 300 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)  # cut at sentence ends
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.text[-20:] in nxt.text  # overlap
    assert "Предложение 79" in chunks[-1].text


def test_split_text_without_breaks() -> None:
    pieces = split_text("x" * 1050, 100, 10)
    assert all(len(p) <= 100 for p in pieces)
    assert "".join(p[:90] for p in pieces[:-1]).startswith("x" * 500)


def test_empty_and_bad_sizes() -> None:
    assert chunk_blocks("d", []) == []
    assert chunk_blocks("d", [Block("i", 1, BlockKind.IMAGE, "")]) == []
    with pytest.raises(ValueError):
        chunk_blocks("d", [], size=50)
    with pytest.raises(ValueError):
        chunk_blocks("d", [], size=1000, overlap=500)


def test_chunk_ids_are_stable() -> None:
    blocks = [Block("a", 1, BlockKind.TEXT, "текст")]
    first: Chunk = chunk_blocks("doc-x", blocks)[0]
    assert first.id == chunk_id("doc-x", 0) == chunk_blocks("doc-x", blocks)[0].id
    assert first.id != chunk_id("doc-y", 0)


def _tokens(text: str) -> int:
    """A stand-in tokeniser: one token per two characters."""
    return (len(text) + 1) // 2


def test_fit_chunks_splits_to_the_window_and_keeps_blocks() -> None:
    boxes = [_box(0.1), _box(0.4), _box(0.7)]
    blocks = [
        Block("h", 1, BlockKind.HEADING, "Раздел ПВ", boxes[0]),
        Block("a", 1, BlockKind.TEXT, "Первый блок. " * 20, boxes[1]),
        Block("b", 1, BlockKind.TEXT, "Второй блок. " * 20, boxes[2]),
        Block("c", 2, BlockKind.TEXT, "Короткий.", boxes[0]),
    ]
    chunks = chunk_blocks("d", blocks, size=1000, overlap=50)
    assert [c.block_ids for c in chunks] == [("h", "a", "b"), ("c",)]
    fitted = fit_chunks(chunks, _tokens, 100, overlap=50)
    assert len(fitted) > 3
    assert [c.index for c in fitted] == list(range(len(fitted)))
    assert fitted[-1].text == "Короткий." and fitted[-1].block_ids == ("c",)
    for c in fitted:
        assert _tokens(c.embed_text) <= 100
        if "Первый" in c.text and "Второй" not in c.text and "Раздел" not in c.text:
            assert c.block_ids == ("a",)
            assert c.box is not None and c.box.top == boxes[1].top
        if "Второй" in c.text and "Первый" not in c.text and "Раздел" not in c.text:
            assert c.block_ids == ("b",)
            assert c.box is not None and c.box.top == boxes[2].top
    # Every piece of the first chunk is still in reading order and covers its text.
    firsts = [c for c in fitted if c.page == 1]
    assert firsts[0].text.startswith("Раздел ПВ")
    assert "Второй блок." in firsts[-1].text
    assert all(c.heading == "Раздел ПВ" for c in firsts)


def test_fit_chunks_with_the_real_tokenizer(embedder: MiniLmEmbedder) -> None:
    russian = "Система вентиляции ПВ-1 состоит из приточной установки и воздуховодов. " * 14
    chunks = make_chunks("d", [Block("a", 1, BlockKind.TEXT, russian)], embedder, size=1000)
    limit = embedder.max_input_tokens - 2
    assert len(chunks) >= 3
    assert all(embedder.count_tokens(c.embed_text) <= limit for c in chunks)
    english = "The supply unit serves the office floors. " * 20
    same = make_chunks("d", [Block("a", 1, BlockKind.TEXT, english)], embedder, size=1000)
    assert len(same) == 1  # English of 1000 characters fits the window as is


async def test_vectorize_batches(embedder: MiniLmEmbedder) -> None:
    blocks = [Block(f"b{i}", 1, BlockKind.TEXT, f"Абзац {i} " * 30) for i in range(10)]
    chunks = make_chunks("d", blocks, embedder, size=300, overlap=0)
    batches = [b async for b in vectorize(chunks, embedder, batch_size=4)]
    assert [b.done for b in batches][-1] == len(chunks) == batches[0].total
    assert all(len(b.dense) == len(b.sparse) <= 4 for b in batches)
    assert len(batches[0].dense[0]) == embedder.dim
