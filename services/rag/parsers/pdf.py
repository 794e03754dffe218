"""PDF through pypdfium2: text blocks with boxes, image regions, pages rendered to PNG.

Block grouping. PDFium gives each character of a page's text layer in content order with
a "loose" box (the font's ascent to descent, so the boxes of one line share a height).
Geometry is taken in page points with a top-left origin, unrotated; on a page with
/Rotate both the unrotated and the displayed orientation are tried and the one giving
fewer (longer) lines is used, so text reads horizontally either way. Boxes are reported
as displayed (crop box, /Rotate applied), like the rendered image. Then:

1. Lines: characters are appended to the current line until PDFium reports a line break
   (its generated CR/LF), or the next character does not overlap the line vertically by
   half its height, or it jumps back left of the line's end (a new line or column), or
   it lies over 1.5 x the line height to the right in another PDF text object (a column
   gutter; inside one show operator such gaps are justified word spacing). Generated
   spaces are kept as text, whitespace adds no geometry.
2. Blocks: a line joins the previous block when it starts below the block's last line
   within 0.8 x the line height (ordinary line spacing; more is a paragraph gap), has a
   similar height (±25 %, so a larger heading does not merge into its paragraph), and
   overlaps the block horizontally (so columns stay apart); the last three blocks are
   candidates, so columns written line by line still form one block each. Lines of a
   block are joined with "\\n".
3. Kinds: a block is a heading when it has at most 3 lines, at most 200 characters and
   its line height is ≥ 1.2 x the document's body height (the most common one, weighted
   by characters), or it is one short bold line (≤ 120 chars, weight ≥ 600) while body
   text is not bold. Image objects larger than 1 % of the page become image blocks with
   empty text, placed in reading order by their top edge.

Pixel boxes are in the coordinates of the page image, computed from the normalised box;
the image size is the rendered PNG's, or without rendering the size pypdfium2's renderer
will produce (ceil(points x dpi / 72)), so boxes match images rendered later by
PdfRenderer. For long documents parse with ``render=False`` and render page by page with
PdfRenderer (bounded memory, a progress event per page). PDFium is not thread-safe: every
call into it here holds one module lock (run parse and render in worker threads).

Pixel budgets, checked from the page size in points before anything is rendered: a page
whose image at the requested dpi would exceed ``max_page_pixels`` is rendered at the
highest lower dpi that fits (a warning names it; crops stay useful down to 72 dpi, the
PDF's own unit); when even 72 dpi does not fit (a poster-sized or hostile page) the
document is refused with InputLimitError (limit "page_pixels"). The page images together
may not exceed ``max_document_pixels`` (limit "document_pixels"). ``page_dpi`` is the one
rule, so parse and PdfRenderer agree on each page's size. An image object whose declared
size (its /Width x /Height, read without decoding) exceeds ``max_image_pixels`` refuses
the document too (limit "image_pixels"): rendering would decode it at full size. The
parsers decode no image themselves.
"""

from __future__ import annotations

import ctypes
import io
import math
import threading
from collections import Counter
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from services.rag.model import (
    Block,
    BlockKind,
    Box,
    CorruptPdfError,
    DocumentFormat,
    DocumentTooLargeError,
    EncryptedPdfError,
    InputLimitError,
    Page,
    ParsedDocument,
    ParseWarning,
)
from services.rag.parsers.base import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_PAGE_PIXELS,
    MIN_DPI,
    ParseOptions,
    block_id,
)

_LOCK = threading.Lock()

PDF_MAGIC = b"%PDF-"


def looks_like_pdf(data: bytes) -> bool:
    """True when the PDF header is within the first KiB (as readers allow)."""
    return PDF_MAGIC in data[:1024]


_Rect = tuple[float, float, float, float]


@dataclass(slots=True)
class _Char:
    text: str
    left: float
    top: float
    right: float
    bottom: float
    weight: int
    obj: int = 0  # the PDF text object (show operator) the character belongs to


@dataclass(slots=True)
class _Line:
    text: list[str] = field(default_factory=list)
    left: float = float("inf")
    top: float = float("inf")
    right: float = float("-inf")
    bottom: float = float("-inf")
    weights: list[int] = field(default_factory=list)
    n_chars: int = 0
    last_obj: int = 0

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def has_geometry(self) -> bool:
        return self.n_chars > 0

    def add(self, c: _Char) -> None:
        self.text.append(c.text)
        if c.text.isspace():
            return
        self.left = min(self.left, c.left)
        self.top = min(self.top, c.top)
        self.right = max(self.right, c.right)
        self.bottom = max(self.bottom, c.bottom)
        self.weights.append(c.weight)
        self.n_chars += 1
        self.last_obj = c.obj

    def add_space(self) -> None:
        if self.text and not self.text[-1].isspace():
            self.text.append(" ")

    def string(self) -> str:
        return "".join(self.text).strip()


@dataclass(slots=True)
class _RawBlock:
    lines: list[_Line]
    kind: BlockKind = BlockKind.TEXT

    @property
    def left(self) -> float:
        return min(ln.left for ln in self.lines)

    @property
    def top(self) -> float:
        return min(ln.top for ln in self.lines)

    @property
    def right(self) -> float:
        return max(ln.right for ln in self.lines)

    @property
    def bottom(self) -> float:
        return max(ln.bottom for ln in self.lines)

    def text(self) -> str:
        return "\n".join(s for s in (ln.string() for ln in self.lines) if s)


class _Mapper:
    """PDF user space → the page in points with a top-left origin, either unrotated
    ("text space", where most text layers run horizontally) or as displayed (crop box and
    /Rotate applied, clockwise, as the renderer draws it)."""

    def __init__(self, bbox: tuple[float, float, float, float], rotation: int) -> None:
        self.l, self.b, self.r, self.t = bbox
        self.w = max(self.r - self.l, 1e-6)
        self.h = max(self.t - self.b, 1e-6)
        self.rotation = rotation % 360
        if self.rotation in (90, 270):
            self.disp_w, self.disp_h = self.h, self.w
        else:
            self.disp_w, self.disp_h = self.w, self.h

    def unrotated(self, left: float, bottom: float, right: float, top: float) -> _Rect:
        """A PDF rectangle in unrotated page points (left, top, right, bottom)."""
        return (left - self.l, self.t - top, right - self.l, self.t - bottom)

    def _point(self, x: float, y: float) -> tuple[float, float]:
        """Unrotated points → displayed fractions (clockwise rotation)."""
        xf, yf = x / self.w, y / self.h
        if self.rotation == 90:
            return 1.0 - yf, xf
        if self.rotation == 180:
            return 1.0 - xf, 1.0 - yf
        if self.rotation == 270:
            return yf, 1.0 - xf
        return xf, yf

    def display(self, rect: _Rect) -> _Rect:
        """An unrotated rectangle (points) as displayed (points)."""
        u1, v1 = self._point(rect[0], rect[1])
        u2, v2 = self._point(rect[2], rect[3])
        return (
            min(u1, u2) * self.disp_w,
            min(v1, v2) * self.disp_h,
            max(u1, u2) * self.disp_w,
            max(v1, v2) * self.disp_h,
        )


def _open(data: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = exc.err_code
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            raise EncryptedPdfError("the PDF is encrypted and needs a password") from exc
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise EncryptedPdfError(
                "the PDF is encrypted with an unsupported security handler"
            ) from exc
        reason = {
            pdfium_c.FPDF_ERR_FORMAT: "it is not a valid PDF (damaged or truncated)",
            pdfium_c.FPDF_ERR_FILE: "the file cannot be read as a PDF",
            pdfium_c.FPDF_ERR_PAGE: "a page is missing or damaged",
        }.get(code or -1, "PDFium could not load it")
        raise CorruptPdfError(f"the PDF is corrupt: {reason}") from exc


def _chars(textpage: pdfium.PdfTextPage, mapper: _Mapper) -> list[_Char | None]:
    """The page's characters in content order; None marks a line break."""
    out: list[_Char | None] = []
    n = textpage.count_chars()
    for i in range(n):
        code = pdfium_c.FPDFText_GetUnicode(textpage, i)
        if code in (0x0D, 0x0A):
            if not out or out[-1] is not None:
                out.append(None)
            continue
        if code == 0x02:  # PDFium's soft hyphen at a line end
            code = ord("-")
        if (code < 0x20 and code != 0x09) or code in (0xFFFE, 0xFFFF):
            continue
        ch = " " if code == 0x09 else chr(code)
        if pdfium_c.FPDFText_IsGenerated(textpage, i) == 1 or ch.isspace():
            out.append(_Char(" ", 0, 0, 0, 0, 0))
            continue
        try:
            left, bottom, right, top = textpage.get_charbox(i, loose=True)
        except pdfium.PdfiumError:
            left, bottom, right, top = textpage.get_charbox(i)
        l_, t_, r_, b_ = mapper.unrotated(left, bottom, right, top)
        weight = pdfium_c.FPDFText_GetFontWeight(textpage, i)
        obj = ctypes.cast(pdfium_c.FPDFText_GetTextObject(textpage, i), ctypes.c_void_p).value
        out.append(_Char(ch, l_, t_, r_, b_, weight, obj or 0))
    return out


def _displayed(c: _Char, mapper: _Mapper) -> _Char:
    left, top, right, bottom = mapper.display((c.left, c.top, c.right, c.bottom))
    return _Char(c.text, left, top, right, bottom, c.weight, c.obj)


def _lines(chars: list[_Char | None]) -> list[_Line]:
    lines: list[_Line] = []
    cur = _Line()

    def flush() -> None:
        nonlocal cur
        if cur.has_geometry and cur.string():
            lines.append(cur)
        cur = _Line()

    for c in chars:
        if c is None:
            flush()
            continue
        if c.text == " ":
            cur.add_space()
            continue
        if cur.has_geometry:
            h = min(cur.height, c.bottom - c.top) or 1.0
            overlap = min(cur.bottom, c.bottom) - max(cur.top, c.top)
            big = max(cur.height, c.bottom - c.top)
            back = c.left < cur.right - 0.5 * big
            # A wide gap into another text object is a column gutter; within one show
            # operator it is the word spacing of justified text.
            far = c.left > cur.right + 1.5 * big and c.obj != cur.last_obj
            if overlap < 0.5 * h or back or far:
                flush()
        cur.add(c)
    flush()
    return lines


def _blocks(lines: list[_Line]) -> list[_RawBlock]:
    blocks: list[_RawBlock] = []
    for ln in lines:
        # The last few blocks are candidates: side-by-side columns written line by line
        # alternate between two open blocks.
        for blk in reversed(blocks[-3:]):
            prev = blk.lines[-1]
            h = max(prev.height, ln.height)
            gap = ln.top - prev.bottom
            similar = min(prev.height, ln.height) >= 0.75 * h
            overlaps = ln.left < blk.right and ln.right > blk.left
            if -0.3 * h <= gap <= 0.8 * h and similar and overlaps:
                blk.lines.append(ln)
                break
        else:
            blocks.append(_RawBlock([ln]))
    return blocks


def _body_stats(all_blocks: list[list[_RawBlock]]) -> tuple[float, bool]:
    """The most common line height (weighted by characters) and whether body text is bold."""
    heights: Counter[float] = Counter()
    bold: Counter[bool] = Counter()
    for blocks in all_blocks:
        for b in blocks:
            for ln in b.lines:
                heights[round(ln.height, 1)] += ln.n_chars
                for w in ln.weights:
                    bold[w >= 600] += 1
    body = heights.most_common(1)[0][0] if heights else 0.0
    return body, bool(bold) and bold.most_common(1)[0][0]


def _classify(blocks: list[_RawBlock], body_height: float, body_bold: bool) -> None:
    for b in blocks:
        text = b.text()
        if len(b.lines) > 3 or len(text) > 200 or body_height <= 0:
            continue
        height = max(ln.height for ln in b.lines)
        weights = [w for ln in b.lines for w in ln.weights]
        all_bold = bool(weights) and min(weights) >= 600
        if height >= 1.2 * body_height or (
            all_bold and not body_bold and len(b.lines) == 1 and len(text) <= 120
        ):
            b.kind = BlockKind.HEADING


def _image_regions(page: pdfium.PdfPage, mapper: _Mapper) -> list[_Rect]:
    """Image objects covering ≥ 1 % of the page, in displayed points."""
    regions: list[_Rect] = []
    area = mapper.disp_w * mapper.disp_h
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3):
        try:
            left, bottom, right, top = obj.get_bounds()
        except pdfium.PdfiumError:
            continue
        rect = mapper.display(mapper.unrotated(left, bottom, right, top))
        l_, t_, r_, b_ = (
            max(rect[0], 0.0),
            max(rect[1], 0.0),
            min(rect[2], mapper.disp_w),
            min(rect[3], mapper.disp_h),
        )
        if r_ > l_ and b_ > t_ and (r_ - l_) * (b_ - t_) >= 0.01 * area:
            regions.append((l_, t_, r_, b_))
    return regions


def pixel_size(width_pt: float, height_pt: float, dpi: int) -> tuple[int, int]:
    """The size PdfPage.render(scale=dpi/72) gives for a page of that size (its formula)."""
    scale = dpi / 72.0
    return math.ceil(max(width_pt, 0.0) * scale), math.ceil(max(height_pt, 0.0) * scale)


def page_dpi(width_pt: float, height_pt: float, dpi: int, max_pixels: int, number: int = 1) -> int:
    """The dpi to render a page at: ``dpi``, or the highest lower one whose image has at
    most ``max_pixels`` pixels (0 = no budget). InputLimitError when even MIN_DPI is over."""
    if not max_pixels:
        return dpi
    w, h = pixel_size(width_pt, height_pt, dpi)
    if w * h <= max_pixels:
        return dpi
    area = max(width_pt, 1e-6) * max(height_pt, 1e-6)
    fit = min(dpi, int(72.0 * math.sqrt(max_pixels / area)))
    while fit >= MIN_DPI:
        w, h = pixel_size(width_pt, height_pt, fit)
        if w * h <= max_pixels:
            return fit
        fit -= 1
    w, h = pixel_size(width_pt, height_pt, MIN_DPI)
    raise InputLimitError(
        f"page {number} is {width_pt:.0f}x{height_pt:.0f} pt: even at {MIN_DPI} dpi its image "
        f"would have {w * h} pixels; at most {max_pixels} are allowed",
        limit="page_pixels",
        maximum=max_pixels,
    )


def check_images(page: pdfium.PdfPage, max_pixels: int, number: int) -> None:
    """InputLimitError when an image object of the page declares over ``max_pixels``
    pixels (0 = none); the size comes from the image's dictionary, nothing is decoded."""
    if not max_pixels:
        return
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=8):
        w, h = ctypes.c_uint(), ctypes.c_uint()
        if not pdfium_c.FPDFImageObj_GetImagePixelSize(obj, w, h):
            continue
        if w.value * h.value > max_pixels:
            raise InputLimitError(
                f"page {number} has an image of {w.value}x{h.value} pixels; at most "
                f"{max_pixels} pixels per image are allowed",
                limit="image_pixels",
                maximum=max_pixels,
            )


def _page_dpi(page: pdfium.PdfPage, dpi: int, max_pixels: int, number: int) -> int:
    return page_dpi(page.get_width(), page.get_height(), dpi, max_pixels, number)


def _render(page: pdfium.PdfPage, dpi: int) -> tuple[bytes, int, int]:
    bitmap = page.render(scale=dpi / 72.0, may_draw_forms=False)
    try:
        image = bitmap.to_pil()
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=4)
        width, height = image.size
    finally:
        bitmap.close()
    return buf.getvalue(), int(width), int(height)


def parse_pdf(data: bytes, options: ParseOptions | None = None) -> ParsedDocument:
    """Parse a PDF into pages (rendered to PNG when ``options.render``) and blocks.

    Raises EncryptedPdfError for a password-protected PDF, CorruptPdfError for one PDFium
    cannot read, DocumentTooLargeError over ``options.max_pages``.
    """
    opts = options or ParseOptions()
    with _LOCK:
        return _parse_locked(data, opts)


def _check_pixels(
    doc: pdfium.PdfDocument, n_pages: int, opts: ParseOptions, warnings: list[ParseWarning]
) -> list[int]:
    """Each page's dpi under the page budget, and the document budget, from the page sizes
    alone (before any text extraction or render)."""
    dpis: list[int] = []
    total = 0
    for index in range(n_pages):
        number = index + 1
        try:
            width_pt, height_pt = doc.get_page_size(index)
        except pdfium.PdfiumError as exc:
            raise CorruptPdfError(f"the PDF is corrupt: page {number} cannot be read") from exc
        dpi = page_dpi(width_pt, height_pt, opts.dpi, opts.max_page_pixels, number)
        if dpi < opts.dpi:
            warnings.append(
                ParseWarning(
                    f"the page is too large to render at {opts.dpi} dpi; rendered at {dpi} dpi",
                    number,
                )
            )
        w, h = pixel_size(width_pt, height_pt, dpi)
        total += w * h
        if opts.max_document_pixels and total > opts.max_document_pixels:
            raise InputLimitError(
                f"the page images of the PDF would have over {opts.max_document_pixels} "
                f"pixels in all (at page {number}); at most {opts.max_document_pixels} "
                "are allowed",
                limit="document_pixels",
                maximum=opts.max_document_pixels,
            )
        dpis.append(dpi)
    return dpis


def _parse_locked(data: bytes, opts: ParseOptions) -> ParsedDocument:
    doc = _open(data)
    try:
        n_pages = len(doc)
        if n_pages == 0:
            raise CorruptPdfError("the PDF is corrupt: it has no pages")
        if opts.max_pages and n_pages > opts.max_pages:
            raise DocumentTooLargeError(
                f"the PDF has {n_pages} pages; at most {opts.max_pages} are allowed",
                limit="pages",
                maximum=opts.max_pages,
            )
        per_page: list[tuple[_Mapper, bool, list[_RawBlock], list[_Rect]]] = []
        pages: list[Page] = []
        warnings: list[ParseWarning] = []
        dpis = _check_pixels(doc, n_pages, opts, warnings)
        for index in range(n_pages):
            number = index + 1
            try:
                page = doc[index]
            except pdfium.PdfiumError as exc:
                raise CorruptPdfError(f"the PDF is corrupt: page {number} cannot be read") from exc
            try:
                check_images(page, opts.max_image_pixels, number)
                mapper = _Mapper(page.get_bbox(), page.get_rotation())
                textpage = page.get_textpage()
                try:
                    chars = _chars(textpage, mapper)
                finally:
                    textpage.close()
                lines, displayed = _lines(chars), False
                if mapper.rotation:
                    # Text drawn to read upright on the rotated page runs vertically in
                    # unrotated space: group where the lines come out fewer (longer).
                    shown = [None if c is None else _displayed(c, mapper) for c in chars]
                    shown_lines = _lines(shown)
                    if len(shown_lines) < len(lines):
                        lines, displayed = shown_lines, True
                raw_blocks = _blocks(lines)
                images = _image_regions(page, mapper)
                if opts.render:
                    png, width, height = _render(page, dpis[index])
                    pages.append(Page(number, width, height, png))
                else:
                    width, height = pixel_size(page.get_width(), page.get_height(), dpis[index])
                    pages.append(Page(number, width, height, None))
            except pdfium.PdfiumError as exc:
                raise CorruptPdfError(f"the PDF is corrupt: page {number}: {exc}") from exc
            finally:
                page.close()
            if not raw_blocks:
                warnings.append(
                    ParseWarning(
                        "the page has no text layer (a scan?); only its image is kept",
                        number,
                    )
                )
            per_page.append((mapper, displayed, raw_blocks, images))
    finally:
        doc.close()

    body_height, body_bold = _body_stats([b for _, _, b, _ in per_page])
    blocks: list[Block] = []
    for (mapper, displayed, raw_blocks, images), page_info in zip(per_page, pages, strict=True):
        _classify(raw_blocks, body_height, body_bold)
        items: list[tuple[BlockKind, str, _Rect]] = []
        for b in raw_blocks:
            rect = (b.left, b.top, b.right, b.bottom)
            items.append((b.kind, b.text(), rect if displayed else mapper.display(rect)))
        for region in sorted(images, key=lambda r: r[1]):
            pos = next((i for i, it in enumerate(items) if it[2][1] > region[1]), len(items))
            items.insert(pos, (BlockKind.IMAGE, "", region))
        for n, (kind, text, rect) in enumerate(items, start=1):
            box = Box.from_normalized(
                rect[0] / mapper.disp_w,
                rect[1] / mapper.disp_h,
                rect[2] / mapper.disp_w,
                rect[3] / mapper.disp_h,
                page_info.width_px,
                page_info.height_px,
            )
            blocks.append(Block(block_id(page_info.number, n), page_info.number, kind, text, box))
    return ParsedDocument(DocumentFormat.PDF, pages, blocks, warnings)


class PdfRenderer:
    """Renders the pages of one PDF to PNG one at a time (bounded memory).

    ``with PdfRenderer(data) as r: png = r.render(1, dpi)`` — each call takes the module
    lock, so call it from a worker thread. Opening raises the same errors as parse_pdf.
    """

    def __init__(self, data: bytes) -> None:
        with _LOCK:
            self._doc = _open(data)
            self.page_count = len(self._doc)

    def __enter__(self) -> PdfRenderer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with _LOCK:
            self._doc.close()

    def render(
        self,
        number: int,
        dpi: int,
        max_pixels: int = DEFAULT_MAX_PAGE_PIXELS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> Page:
        """Page ``number`` (1-based) as a PNG at ``dpi``, or at the lower dpi that keeps it
        within ``max_pixels`` (``page_dpi``: the size parse_pdf reported with the same
        budget; InputLimitError when even 72 dpi is over, or an image of the page declares
        over ``max_image_pixels``)."""
        if not 1 <= number <= self.page_count:
            raise ValueError(f"page {number} is outside 1–{self.page_count}")
        with _LOCK:
            try:
                page = self._doc[number - 1]
                try:
                    fit = _page_dpi(page, dpi, max_pixels, number)
                    check_images(page, max_image_pixels, number)
                    png, width, height = _render(page, fit)
                finally:
                    page.close()
            except pdfium.PdfiumError as exc:
                raise CorruptPdfError(f"the PDF is corrupt: page {number}: {exc}") from exc
        return Page(number, width, height, png)
