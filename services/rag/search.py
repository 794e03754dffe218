"""Search over a user's knowledge bases, answered in one round trip.

``Searcher.search`` checks that every knowledge base is the caller's (NOT_FOUND naming
the first that is not, as for an unknown one), embeds the query (dense, in a worker
thread) and/or encodes it (BM25 sparse) by mode, asks the index for the best ``top_k``
chunks, then fetches the blocks and the page of every hit in ONE store query
(``Store.hit_context``). Each ``Found`` carries the hit with its blocks (text, kind,
normalised and pixel boxes, in reading order) and its page (number, image file id, size),
so a caller that shows, cites or crops them needs no GetDocument per hit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.common import tracing
from services.common.errors import Reason, Unavailable, not_found
from services.rag.embedder import Embedder
from services.rag.index import Hit, Index, SearchMode
from services.rag.model import Block
from services.rag.sparse import Bm25Encoder
from services.rag.store import HitKey, PageRow, Store


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A validated Search request; ``knowledge_bases`` pairs each id as sent with its
    parsed value (the message of NOT_FOUND repeats what the caller sent)."""

    knowledge_bases: Sequence[tuple[str, uuid.UUID]]
    query: str
    top_k: int
    mode: SearchMode
    document_ids: Sequence[str] = ()
    pages: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class Found:
    """A hit with its blocks (reading order) and its page (None if it is gone)."""

    hit: Hit
    blocks: Sequence[Block]
    page: PageRow | None


def _hit_key(hit: Hit) -> HitKey | None:
    try:
        document_id = uuid.UUID(hit.document_id)
    except ValueError:  # not written by the ingest: nothing in the database
        return None
    return HitKey(document_id, hit.page, hit.block_ids)


class Searcher:
    def __init__(self, *, store: Store, index: Index, embedder: Embedder) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder

    async def search(self, user_id: str, request: SearchRequest) -> list[Found]:
        owned = await self.store.owned_kbs(user_id, [k for _, k in request.knowledge_bases])
        for raw, kb_id in request.knowledge_bases:
            if kb_id not in owned:
                raise not_found("knowledge base", raw)
        dense = None
        if request.mode is not SearchMode.SPARSE:
            dense = await tracing.within("rag.embed_query", self._embed(request.query))
        sparse = (
            Bm25Encoder().encode_query(request.query)
            if request.mode is not SearchMode.DENSE
            else None
        )
        searched = self.index.search(
            user_id=user_id,
            knowledge_base_ids=[str(k) for _, k in request.knowledge_bases],
            dense=dense,
            sparse=sparse,
            top_k=request.top_k,
            document_ids=list(request.document_ids) or None,
            pages=list(request.pages) or None,
            mode=request.mode,
        )
        attrs = {"rag.mode": request.mode.name.lower(), "rag.top_k": request.top_k}
        hits = await tracing.within("rag.index_search", searched, attrs)
        keys = [_hit_key(h) for h in hits]
        context = await tracing.within(
            "rag.hit_context",
            self.store.hit_context(user_id, [k for k in keys if k is not None]),
            {"rag.hits": len(hits)},
        )
        return [
            Found(h, context.blocks_of(k), context.page(k)) if k is not None else Found(h, (), None)
            for h, k in zip(hits, keys, strict=True)
        ]

    async def _embed(self, query: str) -> list[float]:
        try:
            return await asyncio.to_thread(self.embedder.embed_query, query)
        except (OSError, RuntimeError) as exc:
            raise Unavailable(
                f"the embedder is unavailable: {type(exc).__name__}",
                reason=Reason.DEPENDENCY_UNAVAILABLE,
                metadata={"dependency": "embedder"},
            ) from exc
