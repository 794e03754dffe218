"""Blocks → chunks: the units that are embedded, indexed and returned by Search.

Rules (sizes in characters):

- Chunks follow blocks: consecutive blocks of one page are packed into a chunk (joined
  with a blank line) while it stays within ``size``; a block never straddles two chunks
  unless it alone is longer than ``size``, in which case it is cut into pieces of at most
  ``size`` at paragraph, sentence or word boundaries, overlapping by ``overlap``.
- A heading starts a new chunk (and is its first text), and its text is remembered as the
  chunk's ``heading`` for the following chunks of its section (``embed_text`` prefixes it,
  so a chunk cut from the middle of a section still carries its title into the vector).
- A new chunk started because the previous one was full begins with the previous chunk's
  last ``overlap`` characters (cut forward to a word boundary); its block ids then include
  the block(s) that tail came from. No overlap is carried across a heading or a page.
- A chunk never spans pages: a page change always ends the chunk.
- Each chunk keeps the document id, its 0-based index, the page, the ids of its blocks in
  reading order and the union of their boxes (None for formats without layout).
- Blocks without text (image regions) add nothing.
- Every chunk's text is at most ``size`` characters and never empty.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from services.rag.model import Block, BlockKind, Box, union_boxes

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150
MIN_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 8000

_SEP = "\n\n"
# Fixed namespace of chunk point ids: uuid5(namespace, f"{document_id}:{index}").
CHUNK_NAMESPACE = uuid.UUID("6f1c1d8e-3b5a-4f0e-9a57-2a3f3c9b7e10")


def chunk_id(document_id: str, index: int) -> str:
    """The stable id of a document's index-th chunk (also its Qdrant point id)."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{document_id}:{index}"))


@dataclass(frozen=True, slots=True)
class Span:
    """Where a block's text sits in a chunk's text: [start, end) character offsets."""

    block_id: str
    start: int
    end: int
    box: Box | None


def _ids(spans: Iterable[Span]) -> tuple[str, ...]:
    ids: list[str] = []
    for s in spans:
        if not ids or ids[-1] != s.block_id:
            ids.append(s.block_id)
    return tuple(ids)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A searchable piece of a document on one page. ``spans`` maps the text back to its
    blocks (used to split a chunk further without losing which blocks a piece shows)."""

    document_id: str
    index: int
    page: int
    block_ids: tuple[str, ...]
    text: str
    box: Box | None
    heading: str = ""
    spans: tuple[Span, ...] = field(default=(), repr=False)

    @property
    def id(self) -> str:
        return chunk_id(self.document_id, self.index)

    @property
    def embed_text(self) -> str:
        """What is embedded: the section heading (when the chunk does not start with it)
        followed by the text."""
        if self.heading and not self.text.startswith(self.heading):
            return f"{self.heading}\n{self.text}"
        return self.text


def validate_sizes(size: int, overlap: int) -> None:
    """ValueError unless MIN_CHUNK_SIZE ≤ size ≤ MAX_CHUNK_SIZE and 0 ≤ overlap < size/2."""
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be within {MIN_CHUNK_SIZE}–{MAX_CHUNK_SIZE}")
    if overlap < 0 or 2 * overlap >= size:
        raise ValueError("chunk overlap must be ≥ 0 and less than half the chunk size")


_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?;:…](?=\s)"))


def _cut_point(text: str, start: int, limit: int) -> int:
    """Where to end a piece that starts at ``start`` and may reach ``limit`` (exclusive):
    the last paragraph, line, sentence or word break in its second half, else ``limit``."""
    lo = start + (limit - start) // 2
    window = text[lo:limit]
    for pattern in _BREAKS:
        ends = [m.end() for m in pattern.finditer(window)]
        if ends:
            return lo + ends[-1]
    space = window.rfind(" ")
    if space > 0:
        return lo + space + 1
    return limit


def _word_start(text: str, pos: int, limit: int) -> int:
    """``pos`` moved forward to the start of a word (not past ``limit``)."""
    if pos <= 0 or text[pos - 1].isspace():
        return pos
    nxt = pos
    while nxt < limit and not text[nxt].isspace():
        nxt += 1
    while nxt < limit and text[nxt].isspace():
        nxt += 1
    return nxt if nxt < limit else pos


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Cut ``text`` into stripped pieces of at most ``size`` characters at natural breaks,
    consecutive pieces sharing about ``overlap`` characters."""
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    pieces: list[str] = []
    start = 0
    while start < len(text):
        limit = min(start + size, len(text))
        end = limit if limit == len(text) else _cut_point(text, start, limit)
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= len(text):
            break
        nxt = _word_start(text, max(end - overlap, start + 1), end)
        while nxt < end and text[nxt].isspace():
            nxt += 1
        start = nxt if nxt > start else end
    return pieces


def _tail(text: str, n: int) -> str:
    """The last ≤ n characters of ``text``, starting at a word boundary ('' if none)."""
    if n <= 0:
        return ""
    if len(text) <= n:
        return text
    start = _word_start(text, len(text) - n, len(text))
    return text[start:].strip()


@dataclass(slots=True)
class _Part:
    block_id: str
    text: str
    box: Box | None


class _Builder:
    def __init__(self, document_id: str, size: int, overlap: int) -> None:
        self.document_id = document_id
        self.size = size
        self.overlap = overlap
        self.chunks: list[Chunk] = []
        self.parts: list[_Part] = []
        self.page = 0
        self.heading = ""
        # True while the open chunk holds only a tail carried from a split block.
        self.carried_only = False

    @property
    def length(self) -> int:
        return sum(len(p.text) for p in self.parts) + len(_SEP) * max(0, len(self.parts) - 1)

    def emit(self, parts: Sequence[_Part], page: int) -> None:
        parts = [p for p in parts if p.text]
        if not parts:
            return
        text = _SEP.join(p.text for p in parts)
        spans: list[Span] = []
        pos = 0
        for p in parts:
            spans.append(Span(p.block_id, pos, pos + len(p.text), p.box))
            pos += len(p.text) + len(_SEP)
        self.chunks.append(
            Chunk(
                document_id=self.document_id,
                index=len(self.chunks),
                page=page,
                block_ids=_ids(spans),
                text=text,
                box=union_boxes(p.box for p in parts),
                heading=self.heading,
                spans=tuple(spans),
            )
        )

    def flush(self, *, carry: int = 0) -> list[_Part]:
        """Emit the open chunk; return up to ``carry`` characters of its tail as parts."""
        parts, self.parts = self.parts, []
        if not self.carried_only:
            self.emit(parts, self.page)
        self.carried_only = False
        tail: list[_Part] = []
        left = carry
        for p in reversed(parts):
            if left <= 0:
                break
            piece = _tail(p.text, left)
            if not piece:
                break
            tail.insert(0, _Part(p.block_id, piece, p.box))
            left -= len(piece) + len(_SEP)
            if piece != p.text:
                break
        return tail

    def add(self, block: Block) -> None:
        text = block.text.strip()
        if not text:
            return
        if block.page != self.page:
            self.flush()
            self.page = block.page
        if block.kind is BlockKind.HEADING:
            self.flush()
            self.heading = text if len(text) <= self.size // 2 else ""
        part = _Part(block.id, text, block.box)
        fits = not self.parts or self.length + len(_SEP) + len(text) <= self.size
        if fits and len(text) <= self.size:
            self.parts.append(part)
            self.carried_only = False
            return
        carry = self.flush(carry=self.overlap)
        if len(text) > self.size:
            pieces = split_text(text, self.size, self.overlap)
            for piece in pieces:
                self.emit([_Part(block.id, piece, block.box)], self.page)
            tail = _tail(pieces[-1], self.overlap)
            self.parts = [_Part(block.id, tail, block.box)] if tail else []
            self.carried_only = bool(tail)
            return
        # Keep only as much carried tail as fits in front of the new block.
        room = self.size - len(text) - len(_SEP)
        while carry and sum(len(p.text) + len(_SEP) for p in carry) > room:
            first = carry[0]
            excess = sum(len(p.text) + len(_SEP) for p in carry) - room
            shorter = _tail(first.text, len(first.text) - excess)
            if shorter and len(shorter) < len(first.text):
                carry[0] = _Part(first.block_id, shorter, first.box)
            else:
                carry.pop(0)
        self.parts = [*carry, part]


def chunk_blocks(
    document_id: str,
    blocks: Iterable[Block],
    *,
    size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Chunk]:
    """Chunks of a document's blocks (in reading order); see the module docstring."""
    validate_sizes(size, overlap)
    builder = _Builder(document_id, size, overlap)
    for block in blocks:
        builder.add(block)
    builder.flush()
    return builder.chunks


def fit_chunks(
    chunks: Sequence[Chunk],
    count_tokens: Callable[[str], int],
    max_tokens: int,
    *,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Chunk]:
    """Split chunks whose ``embed_text`` exceeds the embedder's input window into pieces
    that fit, then renumber all chunks 0..n-1 (so their ids follow).

    A piece keeps the page and heading; its block ids and box are those of the blocks its
    text overlaps (from the chunk's spans). The character budget of a piece is scaled from
    the chunk's measured characters per token and shrunk until every piece fits.
    ``overlap`` (characters) is capped at a quarter of the budget.
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    out: list[Chunk] = []
    for chunk in chunks:
        if count_tokens(chunk.embed_text) <= max_tokens:
            out.append(chunk)
            continue
        prefix = chunk.embed_text[: len(chunk.embed_text) - len(chunk.text)]
        room = max(1, max_tokens - (count_tokens(prefix) if prefix else 0))
        budget = max(20, int(len(chunk.text) * room / max(1, count_tokens(chunk.text)) * 0.95))
        while True:
            pieces = split_text(chunk.text, budget, min(overlap, budget // 4))
            if budget <= 20 or all(count_tokens(prefix + p) <= max_tokens for p in pieces):
                break
            budget = int(budget * 0.85)
        cursor, step_back = 0, min(overlap, budget // 4) + 1
        for piece in pieces:
            start = chunk.text.find(piece, max(0, cursor - step_back))
            if start < 0:
                start = cursor
            end = start + len(piece)
            cursor = end
            spans = [s for s in chunk.spans if s.start < end and s.end > start]
            out.append(
                replace(
                    chunk,
                    text=piece,
                    block_ids=_ids(spans) if spans else chunk.block_ids,
                    box=union_boxes(s.box for s in spans) if spans else chunk.box,
                    spans=tuple(
                        Span(s.block_id, max(s.start, start) - start, min(s.end, end) - start,
                             s.box)
                        for s in spans
                    ),
                )
            )  # fmt: skip
    return [replace(c, index=i) for i, c in enumerate(out)]
