"""From parsed blocks to indexable chunks with vectors, in batches (for progress events).

The servicer's ingest calls ``make_chunks`` (chunking + fitting to the embedder's window),
then iterates ``vectorize`` (async; each batch runs in a worker thread, so the event loop
stays free and a cancelled ingest stops between batches), reporting ``done``/``total``
as the EMBEDDING stage, then hands the vectors to Index.replace_document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from services.rag.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    Chunk,
    chunk_blocks,
    fit_chunks,
)
from services.rag.embedder import Embedder
from services.rag.model import Block
from services.rag.sparse import Bm25Encoder, SparseVector

DEFAULT_BATCH = 64
# [CLS] and [SEP] take two places of a BERT-style window.
SPECIAL_TOKENS = 2


def make_chunks(
    document_id: str,
    blocks: Iterable[Block],
    embedder: Embedder | None = None,
    *,
    size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Chunk]:
    """Chunks of a document, split further to fit ``embedder``'s window when given."""
    chunks = chunk_blocks(document_id, blocks, size=size, overlap=overlap)
    if embedder is None or not chunks:
        return chunks
    limit = embedder.max_input_tokens - SPECIAL_TOKENS
    return fit_chunks(chunks, embedder.count_tokens, limit, overlap=overlap)


@dataclass(frozen=True, slots=True)
class VectorBatch:
    """Vectors of ``chunks[start:start + len(dense)]``; ``done`` of ``total`` so far."""

    start: int
    done: int
    total: int
    dense: list[list[float]]
    sparse: list[SparseVector]


def _encode(
    embedder: Embedder, encoder: Bm25Encoder, chunks: Sequence[Chunk]
) -> tuple[list[list[float]], list[SparseVector]]:
    dense = embedder.embed_documents([c.embed_text for c in chunks])
    sparse = encoder.encode_documents([c.embed_text for c in chunks])
    return dense, sparse


async def vectorize(
    chunks: Sequence[Chunk],
    embedder: Embedder,
    encoder: Bm25Encoder | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
) -> AsyncIterator[VectorBatch]:
    """Dense and sparse vectors of the chunks, batch by batch, each batch computed in a
    worker thread. The sparse side indexes ``embed_text`` too, so a section heading
    carried into a chunk is also found lexically."""
    enc = encoder or Bm25Encoder()
    total = len(chunks)
    for start in range(0, total, batch_size):
        batch = chunks[start : start + batch_size]
        dense, sparse = await asyncio.to_thread(_encode, embedder, enc, batch)
        yield VectorBatch(start, start + len(batch), total, dense, sparse)
