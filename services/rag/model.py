"""What a parsed document is: pages, blocks with boxes, warnings; and the parse errors.

Coordinates follow aivera.common.v1.BoundingBox: origin at the top-left corner of the
page, a normalised box in fractions of the page (0–1) and, where the page has an image, a
pixel box in that image's pixels (right/bottom exclusive) with the image's size.
Formats without layout (Markdown, HTML, plain text) put every block on page 1 with no box
(``box is None``), as the contract says ("unset for formats without layout").

The errors subclass the shared service errors with the contract's reason a program
branches on (UNSUPPORTED_FORMAT, RESOURCE_EXHAUSTED with the limit in the metadata), so
the RPC wrapper maps them to status codes and ErrorInfo without the servicer repeating it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted


class DocumentFormat(enum.StrEnum):
    """Parser formats; the servicer maps them to rag.v1.DocumentFormat."""

    PDF = "pdf"
    MARKDOWN = "markdown"
    HTML = "html"
    JSON_ANNOTATION = "json_annotation"
    TEXT = "text"


class BlockKind(enum.StrEnum):
    """Block kinds; the servicer maps them to rag.v1.BlockKind."""

    TEXT = "text"
    HEADING = "heading"
    TABLE = "table"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class PixelBox:
    """A rectangle in pixels of a page image; right and bottom are exclusive."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True, slots=True)
class Box:
    """Where something sits on a page.

    ``left/top/right/bottom`` are fractions of the page (0–1, top-left origin). ``pixels``
    is the same rectangle in the page image of ``page_width`` x ``page_height`` pixels, or
    None (and sizes 0) when the page has no image size.
    """

    left: float
    top: float
    right: float
    bottom: float
    pixels: PixelBox | None = None
    page_width: int = 0
    page_height: int = 0

    @staticmethod
    def from_normalized(
        left: float, top: float, right: float, bottom: float, page_width: int, page_height: int
    ) -> Box:
        """A box from fractions, clamped to the page, with pixels when the size is known."""
        lf, tp = _clamp01(min(left, right)), _clamp01(min(top, bottom))
        rt, bt = _clamp01(max(left, right)), _clamp01(max(top, bottom))
        pixels = None
        if page_width > 0 and page_height > 0:
            pixels = PixelBox(
                left=math.floor(lf * page_width),
                top=math.floor(tp * page_height),
                right=min(page_width, math.ceil(rt * page_width)),
                bottom=min(page_height, math.ceil(bt * page_height)),
            )
        else:
            page_width = page_height = 0
        return Box(lf, tp, rt, bt, pixels, page_width, page_height)

    @staticmethod
    def from_pixels(
        left: int, top: int, right: int, bottom: int, page_width: int, page_height: int
    ) -> Box:
        """A box from pixels of a page image of the given size (which must be > 0)."""
        if page_width <= 0 or page_height <= 0:
            raise ValueError("a pixel box needs the page image size")
        lf, rt = sorted((max(0, min(left, page_width)), max(0, min(right, page_width))))
        tp, bt = sorted((max(0, min(top, page_height)), max(0, min(bottom, page_height))))
        return Box(
            lf / page_width,
            tp / page_height,
            rt / page_width,
            bt / page_height,
            PixelBox(lf, tp, rt, bt),
            page_width,
            page_height,
        )

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.right, self.bottom)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (used as the Qdrant payload and in the database)."""
        return {
            "normalized": [self.left, self.top, self.right, self.bottom],
            "pixels": None
            if self.pixels is None
            else [self.pixels.left, self.pixels.top, self.pixels.right, self.pixels.bottom],
            "page_width": self.page_width,
            "page_height": self.page_height,
        }

    @staticmethod
    def from_dict(data: dict[str, object]) -> Box:
        """The inverse of ``to_dict``."""
        norm = data["normalized"]
        pix = data.get("pixels")
        if not isinstance(norm, list) or len(norm) != 4:
            raise ValueError("box.normalized must be a list of 4 numbers")
        pw, ph = data.get("page_width", 0), data.get("page_height", 0)
        pixels = None
        if isinstance(pix, list) and len(pix) == 4:
            pixels = PixelBox(int(pix[0]), int(pix[1]), int(pix[2]), int(pix[3]))
        return Box(
            float(norm[0]),
            float(norm[1]),
            float(norm[2]),
            float(norm[3]),
            pixels,
            int(pw) if isinstance(pw, int | float) else 0,
            int(ph) if isinstance(ph, int | float) else 0,
        )


def _clamp01(v: float) -> float:
    return 0.0 if v < 0.0 else 1.0 if v > 1.0 else float(v)


def union_boxes(boxes: Iterable[Box | None]) -> Box | None:
    """The smallest box around all given boxes (None entries are skipped; None if none).

    Boxes are expected to be on one page with one image size; pixel boxes are united
    only when all boxes have them with the same image size.
    """
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    first = real[0]
    same_size = all(
        b.pixels is not None
        and (b.page_width, b.page_height) == (first.page_width, first.page_height)
        for b in real
    )
    pixels = None
    if same_size:
        px = [b.pixels for b in real if b.pixels is not None]
        pixels = PixelBox(
            min(p.left for p in px),
            min(p.top for p in px),
            max(p.right for p in px),
            max(p.bottom for p in px),
        )
    return Box(
        min(b.left for b in real),
        min(b.top for b in real),
        max(b.right for b in real),
        max(b.bottom for b in real),
        pixels,
        first.page_width if pixels else 0,
        first.page_height if pixels else 0,
    )


@dataclass(frozen=True, slots=True)
class Block:
    """A parsed block: the unit boxes and citations refer to.

    ``id`` is unique within the document and stable for the same file content
    (``p{page}-b{n}`` for generated ids; the annotation's own id for JSON annotations).
    """

    id: str
    page: int
    kind: BlockKind
    text: str
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page. ``png`` is the rendered page image (PDF only), else None and sizes 0."""

    number: int
    width_px: int = 0
    height_px: int = 0
    png: bytes | None = None


@dataclass(frozen=True, slots=True)
class ParseWarning:
    """A non-fatal problem found while parsing (page 0 = whole document)."""

    message: str
    page: int = 0


@dataclass(slots=True)
class ParsedDocument:
    """Pages (1 for formats without pages) and blocks in reading order."""

    format: DocumentFormat
    pages: list[Page]
    blocks: list[Block]
    warnings: list[ParseWarning] = field(default_factory=list)

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def has_text(self) -> bool:
        return any(b.text.strip() for b in self.blocks)


# --- errors ---------------------------------------------------------------------------


class UnsupportedFormatError(InvalidArgument):
    """The file is none of the supported formats (INVALID_ARGUMENT, UNSUPPORTED_FORMAT)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.UNSUPPORTED_FORMAT)


class FormatMismatchError(InvalidArgument):
    """A format was forced but the file is not of it, or is malformed for it
    (e.g. a JSON annotation that breaks the schema) (INVALID_ARGUMENT,
    UNSUPPORTED_FORMAT: the file cannot be read as that format)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.UNSUPPORTED_FORMAT)


class InputLimitError(InvalidArgument):
    """The input is over one of the parsers' budgets (page or document pixels, text size,
    JSON depth, image size) (INVALID_ARGUMENT; the metadata names the ``limit`` —
    "page_pixels", "document_pixels", "image_pixels", "text_bytes" or "json_depth" — and
    its ``maximum``)."""

    def __init__(self, message: str, *, limit: str, maximum: int) -> None:
        super().__init__(message, metadata={"limit": limit, "maximum": str(maximum)})


class EncryptedPdfError(FailedPrecondition):
    """The PDF needs a password (FAILED_PRECONDITION; the message says so)."""


class CorruptPdfError(InvalidArgument):
    """The PDF cannot be read (INVALID_ARGUMENT, UNSUPPORTED_FORMAT: the bytes are not a
    readable PDF, the caller's input is at fault; the message says why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.UNSUPPORTED_FORMAT)


class DocumentTooLargeError(ResourceExhausted):
    """The document exceeds the configured page or block limit (RESOURCE_EXHAUSTED; the
    metadata names the ``limit`` — "pages" or "blocks" — and its ``maximum``)."""

    def __init__(self, message: str, *, limit: str, maximum: int) -> None:
        super().__init__(
            message,
            reason=Reason.RESOURCE_EXHAUSTED,
            metadata={"limit": limit, "maximum": str(maximum)},
        )
