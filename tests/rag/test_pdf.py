"""PDF parsing: blocks come back where fpdf2 drew them, pages render at the asked DPI,
encrypted and corrupt PDFs are refused with the reason."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from fpdf import FPDF
from PIL import Image

from services.common.errors import Reason
from services.rag.model import (
    Block,
    BlockKind,
    CorruptPdfError,
    DocumentTooLargeError,
    EncryptedPdfError,
    ParsedDocument,
)
from services.rag.parsers import ParseOptions, parse_document
from services.rag.parsers.pdf import PdfRenderer, parse_pdf

A4_W, A4_H = 595.28, 841.89
TOL_PT = 4.0  # font ascent/descent around the drawn line box


@dataclass(frozen=True)
class Drawn:
    page: int
    text: str
    x: float
    y: float
    w: float
    lines: int
    line_h: float


HEADING = Drawn(1, "Общие данные проекта", 72, 60, 400, 1, 28)
RU = Drawn(
    1,
    "Система вентиляции ПВ-1 состоит из приточной установки, воздуховодов и "
    "воздухораспределителей. Расход воздуха составляет 1200 кубометров в час.",
    72,
    140,
    300,
    0,
    14,
)
EN = Drawn(
    1,
    "The architectural drawings AR-12 show the facades and the finishing schedule.",
    330,
    420,
    200,
    0,
    14,
)
COLUMN = Drawn(1, "Правая колонка: ведомость рабочих чертежей и узлов.", 400, 140, 150, 0, 14)
PAGE2 = Drawn(2, "Вторая страница: спецификация оборудования.", 100, 500, 380, 0, 14)
IMAGE_AT = (72.0, 600.0, 150.0, 100.0)  # x, y, w, h on page 1


def _make_pdf(font: Path, *, encrypt: bool = False) -> bytes:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_auto_page_break(False)
    pdf.c_margin = 0
    pdf.add_font("DejaVu", "", str(font))
    pdf.add_page()
    pdf.set_font("DejaVu", size=22)
    pdf.set_xy(HEADING.x, HEADING.y)
    pdf.cell(HEADING.w, HEADING.line_h, HEADING.text)
    pdf.set_font("DejaVu", size=11)
    for d in (RU, COLUMN, EN):
        pdf.set_xy(d.x, d.y)
        pdf.multi_cell(d.w, d.line_h, d.text)
    img = Image.new("RGB", (60, 40), (200, 30, 30))
    pdf.image(img, x=IMAGE_AT[0], y=IMAGE_AT[1], w=IMAGE_AT[2], h=IMAGE_AT[3])
    pdf.add_page()
    pdf.set_xy(PAGE2.x, PAGE2.y)
    pdf.multi_cell(PAGE2.w, PAGE2.line_h, PAGE2.text)
    if encrypt:
        pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def pdf_bytes(cyrillic_font: Path) -> bytes:
    return _make_pdf(cyrillic_font)


@pytest.fixture(scope="module")
def parsed(pdf_bytes: bytes) -> ParsedDocument:
    return parse_document(pdf_bytes, filename="drawing.pdf", options=ParseOptions(dpi=100))


def _find(doc: ParsedDocument, needle: str) -> Block:
    found = [b for b in doc.blocks if needle in b.text.replace("\n", " ")]
    assert len(found) == 1, f"{needle!r} in {[b.text for b in doc.blocks]}"
    return found[0]


def _darkest(gray: Image.Image) -> float:
    """The darkest value of a one-band ("L") image: getextrema() gives (min, max) there;
    Pillow types it for multi-band images too."""
    return cast(tuple[float, float], gray.getextrema())[0]


def _assert_where(block: Block, d: Drawn) -> None:
    assert block.page == d.page
    assert block.box is not None
    box = block.box
    left, top = box.left * A4_W, box.top * A4_H
    right, bottom = box.right * A4_W, box.bottom * A4_H
    assert abs(left - d.x) <= TOL_PT, (left, d.x)
    assert abs(top - d.y) <= TOL_PT + (d.line_h - 11) / 2 + 2, (top, d.y)
    assert right <= d.x + d.w + TOL_PT
    n_lines = d.lines or block.text.count("\n") + 1
    assert abs(bottom - (d.y + n_lines * d.line_h)) <= TOL_PT, (bottom, n_lines)


def test_text_blocks_come_back_where_drawn(parsed: ParsedDocument) -> None:
    assert parsed.page_count == 2
    heading = _find(parsed, "Общие данные")
    assert heading.kind is BlockKind.HEADING
    assert heading.box is not None
    assert abs(heading.box.left * A4_W - HEADING.x) <= TOL_PT
    assert HEADING.y - 2 <= heading.box.top * A4_H <= HEADING.y + HEADING.line_h
    ru = _find(parsed, "Система вентиляции ПВ-1")
    assert ru.kind is BlockKind.TEXT
    assert "1200 кубометров в час." in ru.text.replace("\n", " ")
    assert ru.text.count("\n") >= 2  # wrapped lines of one paragraph stay one block
    _assert_where(ru, RU)
    # A column beside the paragraph, at the same height, stays its own block.
    column = _find(parsed, "Правая колонка")
    assert column.text.count("\n") >= 1
    _assert_where(column, COLUMN)
    en = _find(parsed, "architectural drawings AR-12")
    _assert_where(en, EN)
    p2 = _find(parsed, "Вторая страница")
    _assert_where(p2, PAGE2)
    assert next(b.id for b in parsed.blocks if b.page == 1) == "p1-b1"
    assert len({b.id for b in parsed.blocks}) == len(parsed.blocks)


def test_image_region_is_a_block(parsed: ParsedDocument) -> None:
    images = [b for b in parsed.blocks if b.kind is BlockKind.IMAGE]
    assert len(images) == 1
    box = images[0].box
    assert box is not None and images[0].page == 1
    x, y, w, h = IMAGE_AT
    assert abs(box.left * A4_W - x) < 1 and abs(box.top * A4_H - y) < 1
    assert abs(box.right * A4_W - (x + w)) < 1 and abs(box.bottom * A4_H - (y + h)) < 1


def test_pages_render_at_the_dpi_and_pixel_boxes_match_the_image(
    parsed: ParsedDocument,
) -> None:
    for page in parsed.pages:
        assert page.width_px == math.ceil(A4_W * 100 / 72)
        assert page.height_px == math.ceil(A4_H * 100 / 72)
        assert page.png is not None and page.png.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(page.png)).size == (page.width_px, page.height_px)
    page1 = parsed.pages[0]
    assert page1.png is not None
    image = Image.open(io.BytesIO(page1.png)).convert("L")
    for needle in ("Система вентиляции", "architectural drawings"):
        box = _find(parsed, needle).box
        assert box is not None and box.pixels is not None
        assert (box.page_width, box.page_height) == (page1.width_px, page1.height_px)
        px = box.pixels
        assert abs(px.left - box.left * page1.width_px) <= 1
        assert abs(px.bottom - box.bottom * page1.height_px) <= 1
        # The text is drawn inside its pixel box: dark pixels there ...
        inside = image.crop((px.left, px.top, px.right, px.bottom))
        assert _darkest(inside) < 100
        # ... and the strip just below it is blank paper.
        below = image.crop((px.left, px.bottom + 3, px.right, px.bottom + 12))
        assert _darkest(below) > 230
    red = next(b for b in parsed.blocks if b.kind is BlockKind.IMAGE).box
    assert red is not None and red.pixels is not None
    rgb = Image.open(io.BytesIO(page1.png)).convert("RGB")
    cx = (red.pixels.left + red.pixels.right) // 2
    cy = (red.pixels.top + red.pixels.bottom) // 2
    r, g, b = rgb.getpixel((cx, cy))  # type: ignore[misc]
    assert r > 150 and g < 80 and b < 80


def test_dpi_changes_pixels_not_fractions(pdf_bytes: bytes, parsed: ParsedDocument) -> None:
    hi = parse_pdf(pdf_bytes, ParseOptions(dpi=200, render=True))
    assert hi.pages[0].width_px == math.ceil(A4_W * 200 / 72)
    for a, b in zip(parsed.blocks, hi.blocks, strict=True):
        assert a.id == b.id and a.text == b.text
        assert a.box is not None and b.box is not None
        assert abs(a.box.left - b.box.left) < 1e-6
        assert b.box.pixels is not None and a.box.pixels is not None
        assert abs(b.box.pixels.left - 2 * a.box.pixels.left) <= 2


def test_parse_without_rendering_then_render_page_by_page(
    pdf_bytes: bytes, parsed: ParsedDocument
) -> None:
    doc = parse_pdf(pdf_bytes, ParseOptions(dpi=100, render=False))
    assert all(p.png is None for p in doc.pages)
    assert doc.blocks == parsed.blocks  # same boxes, pixels included
    with PdfRenderer(pdf_bytes) as renderer:
        assert renderer.page_count == 2
        for page in doc.pages:
            rendered = renderer.render(page.number, 100)
            assert rendered.png is not None
            assert (rendered.width_px, rendered.height_px) == (page.width_px, page.height_px)
            assert Image.open(io.BytesIO(rendered.png)).size == (page.width_px, page.height_px)
        with pytest.raises(ValueError):
            renderer.render(3, 100)


def test_encrypted_pdf_is_refused_with_the_reason(cyrillic_font: Path) -> None:
    data = _make_pdf(cyrillic_font, encrypt=True)
    with pytest.raises(EncryptedPdfError) as info:
        parse_document(data, filename="secret.pdf")
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "encrypted" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage \x00\x01\x02",
        b"%PDF-1.4\n",
    ],
)
def test_corrupt_pdf_is_refused_with_the_reason(data: bytes) -> None:
    with pytest.raises(CorruptPdfError) as info:
        parse_document(data, filename="broken.pdf")
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == Reason.UNSUPPORTED_FORMAT
    assert "corrupt" in info.value.message


def test_truncated_pdf_is_corrupt_or_readable(pdf_bytes: bytes) -> None:
    """PDFium repairs what it can; a cut file either parses or is reported corrupt."""
    try:
        doc = parse_pdf(pdf_bytes[: len(pdf_bytes) // 3], ParseOptions(render=False))
    except CorruptPdfError:
        return
    assert doc.page_count >= 1


def test_page_limit(pdf_bytes: bytes) -> None:
    with pytest.raises(DocumentTooLargeError) as info:
        parse_pdf(pdf_bytes, ParseOptions(max_pages=1))
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_page_without_text_warns(cyrillic_font: Path) -> None:
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_page()
    doc = parse_pdf(bytes(pdf.output()), ParseOptions(dpi=72))
    assert doc.blocks == []
    assert doc.warnings and doc.warnings[0].page == 1


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_page_boxes_match_the_rendered_image(pdf_bytes: bytes, rotation: int) -> None:
    import pypdfium2 as pdfium

    src = pdfium.PdfDocument(pdf_bytes)
    src[1].set_rotation(rotation)
    buf = io.BytesIO()
    src.save(buf)
    src.close()
    doc = parse_pdf(buf.getvalue(), ParseOptions(dpi=100))
    page2 = doc.pages[1]
    unrendered = parse_pdf(buf.getvalue(), ParseOptions(dpi=100, render=False))
    assert unrendered.blocks == doc.blocks
    assert (page2.width_px, page2.height_px) == (
        (math.ceil(A4_H * 100 / 72), math.ceil(A4_W * 100 / 72))
        if rotation in (90, 270)
        else (math.ceil(A4_W * 100 / 72), math.ceil(A4_H * 100 / 72))
    )
    block = _find(doc, "Вторая страница")
    assert block.box is not None and block.box.pixels is not None and page2.png is not None
    px = block.box.pixels
    image = Image.open(io.BytesIO(page2.png)).convert("L")
    assert _darkest(image.crop((px.left, px.top, px.right, px.bottom))) < 100
    # Everything dark on the page lies within the box (the page has only this text).
    dark = image.point(lambda v: 255 if v < 128 else 0).getbbox()
    assert dark is not None
    assert dark[0] >= px.left - 2 and dark[1] >= px.top - 2
    assert dark[2] <= px.right + 2 and dark[3] <= px.bottom + 2
