"""Input budgets of the parsers: page and document pixels are checked from the page size
before anything renders, JSON depth before parsing, text size before any parser runs;
over a budget → InputLimitError (INVALID_ARGUMENT naming the limit), never a
RecursionError or a huge bitmap."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from fpdf import FPDF
from PIL import Image

from services.rag.model import DocumentFormat, InputLimitError
from services.rag.parsers import ParseOptions, detect_format, parse_document
from services.rag.parsers import pdf as pdf_mod
from services.rag.parsers.base import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_PAGE_PIXELS,
    DEFAULT_MAX_TEXT_BYTES,
    json_depth,
)
from services.rag.parsers.json_annotation import parse_json_annotation
from services.rag.parsers.pdf import PdfRenderer, page_dpi, parse_pdf, pixel_size


def giant_page_pdf(size_pt: int = 14400, pages: int = 1) -> bytes:
    """A hand-written PDF (~550 bytes) whose pages have a size_pt x size_pt MediaBox."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    objects += [
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {size_pt} {size_pt}] >>".encode()
    ] * pages
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def a4_pdf(font: Path, pages: int = 1) -> bytes:
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_font("DejaVu", fname=str(font))
    pdf.set_font("DejaVu", size=12)
    for n in range(pages):
        pdf.add_page()
        pdf.text(72, 100, f"Страница {n + 1}: спецификация оборудования.")
    return bytes(pdf.output())


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The dpi of every page render (the real renderer still runs)."""
    calls: list[int] = []
    real = pdf_mod._render

    def spy(page: Any, dpi: int) -> tuple[bytes, int, int]:
        calls.append(dpi)
        return real(page, dpi)

    monkeypatch.setattr(pdf_mod, "_render", spy)
    return calls


def limit_of(exc: InputLimitError) -> tuple[str, str]:
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    return exc.metadata["limit"], exc.metadata["maximum"]


# --- PDF pixels ---------------------------------------------------------------------------


def test_giant_page_is_refused_before_any_render(renders: list[int]) -> None:
    data = giant_page_pdf()
    assert len(data) < 600
    # At the default 150 dpi the page would be 30000 x 30000 pixels; even 72 dpi is over.
    w, h = pixel_size(14400, 14400, 150)
    assert w * h >= 900_000_000 > DEFAULT_MAX_PAGE_PIXELS
    for render in (True, False):
        with pytest.raises(InputLimitError) as info:
            parse_document(data, options=ParseOptions(render=render))
        assert limit_of(info.value) == ("page_pixels", str(DEFAULT_MAX_PAGE_PIXELS))
        assert "14400x14400 pt" in info.value.message
    assert renders == []
    # The page-by-page renderer (ingest's path) refuses it the same way, without rendering.
    with PdfRenderer(data) as renderer, pytest.raises(InputLimitError):
        renderer.render(1, 150)
    assert renders == []


def test_page_dpi_rule() -> None:
    assert page_dpi(595.28, 841.89, 150, DEFAULT_MAX_PAGE_PIXELS) == 150  # A4
    assert page_dpi(14400, 14400, 150, 0) == 150  # no budget
    # A0 at 300 dpi (9934 x 14043 px) renders lower, within the budget.
    dpi = page_dpi(2383.94, 3370.39, 300, DEFAULT_MAX_PAGE_PIXELS)
    assert 72 <= dpi < 300
    w, h = pixel_size(2383.94, 3370.39, dpi)
    assert w * h <= DEFAULT_MAX_PAGE_PIXELS
    w, h = pixel_size(2383.94, 3370.39, dpi + 1)
    assert w * h > DEFAULT_MAX_PAGE_PIXELS
    with pytest.raises(InputLimitError):
        page_dpi(14400, 14400, 150, DEFAULT_MAX_PAGE_PIXELS)


def test_large_page_renders_at_a_lower_dpi(cyrillic_font: Path, renders: list[int]) -> None:
    data = a4_pdf(cyrillic_font)
    budget = 1_000_000  # A4 at 150 dpi is 2.2 Mpx
    doc = parse_pdf(data, ParseOptions(dpi=150, max_page_pixels=budget))
    page = doc.pages[0]
    assert renders and renders[0] < 150
    assert page.width_px * page.height_px <= budget
    assert page.png is not None
    assert Image.open(io.BytesIO(page.png)).size == (page.width_px, page.height_px)
    assert any("dpi" in w.message and w.page == 1 for w in doc.warnings)
    assert doc.blocks and doc.blocks[0].box is not None
    # Parsing without rendering and rendering later agree on the size.
    sized = parse_pdf(data, ParseOptions(dpi=150, render=False, max_page_pixels=budget))
    assert (sized.pages[0].width_px, sized.pages[0].height_px) == (page.width_px, page.height_px)
    with PdfRenderer(data) as renderer:
        later = renderer.render(1, 150, budget)
    assert (later.width_px, later.height_px) == (page.width_px, page.height_px)


def test_document_pixel_budget(cyrillic_font: Path, renders: list[int]) -> None:
    data = a4_pdf(cyrillic_font, pages=3)
    w, h = pixel_size(595.28, 841.89, 72)
    with pytest.raises(InputLimitError) as info:
        parse_pdf(data, ParseOptions(dpi=72, max_document_pixels=2 * w * h + 1))
    assert limit_of(info.value) == ("document_pixels", str(2 * w * h + 1))
    assert renders == []
    assert len(parse_pdf(data, ParseOptions(dpi=72, max_document_pixels=3 * w * h)).pages) == 3


def image_bomb_pdf(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small page drawing one image that declares width x height pixels (its data is a
    few bytes: decoding it would allocate the full size)."""
    content = b"q 100 0 0 100 0 0 cm /Im1 Do Q"
    image = (
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
        "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode /Length 8 >>"
    ).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
        b"/Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
        image + b"\nstream\n" + b"x\x9c\x03\x00\x00\x00\x00\x01" + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def test_image_declaring_huge_size_is_refused_before_decoding(renders: list[int]) -> None:
    data = image_bomb_pdf()
    for render in (True, False):
        with pytest.raises(InputLimitError) as info:
            parse_pdf(data, ParseOptions(render=render))
        assert limit_of(info.value) == ("image_pixels", str(DEFAULT_MAX_IMAGE_PIXELS))
        assert "100000x100000" in info.value.message
    with PdfRenderer(data) as renderer, pytest.raises(InputLimitError):
        renderer.render(1, 150)
    assert renders == []
    # An ordinary image passes; a budget below its size refuses it.
    small = image_bomb_pdf(200, 100)
    with PdfRenderer(small) as renderer:
        renderer.render(1, 72)
    with pytest.raises(InputLimitError):
        parse_pdf(small, ParseOptions(render=False, max_image_pixels=19_999))


# --- JSON ---------------------------------------------------------------------------------


def test_json_depth_scan() -> None:
    assert json_depth("") == 0
    assert json_depth('{"blocks": [{"id": "a", "bbox": [0, 0, 1, 1]}]}') == 4
    assert json_depth('["[[[[", "\\"[[", {"a": "}}}"}]') == 2
    assert json_depth("[" * 100_000) == 100_000  # unclosed counts
    assert json_depth('["unterminated [[[') == 1


def test_deep_json_is_invalid_argument_not_recursion() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    unclosed = b"[" * 100_000
    for data in (deep, unclosed, b'{"blocks": ' + deep + b"}"):
        for kwargs in (
            {"filename": "a.json"},
            {"content_type": "application/json"},
            {"format": DocumentFormat.JSON_ANNOTATION},
        ):
            with pytest.raises(InputLimitError) as info:
                parse_document(data, **kwargs)
            assert limit_of(info.value) == ("json_depth", "64")
    # Without a name it is not sniffed as JSON (never parsed): plain text.
    assert detect_format(deep) is DocumentFormat.TEXT
    # Without a depth budget the parser's own recursion limit still answers the same way.
    with pytest.raises(InputLimitError):
        parse_json_annotation(unclosed, max_depth=0)


def test_valid_annotation_within_budgets() -> None:
    data = json.dumps(
        {"blocks": [{"id": "b1", "page": 1, "text": "Текст [[не]] JSON", "bbox": [0, 0, 1, 1]}]}
    ).encode()
    assert detect_format(data) is DocumentFormat.JSON_ANNOTATION
    doc = parse_document(data, filename="a.json", options=ParseOptions(max_json_depth=4))
    assert doc.format is DocumentFormat.JSON_ANNOTATION and [b.id for b in doc.blocks] == ["b1"]
    with pytest.raises(InputLimitError):
        parse_document(data, filename="a.json", options=ParseOptions(max_json_depth=3))


# --- text size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("page.html", b"<html><body>" + b"<p>x</p>" * 200 + b"</body></html>"),
        ("notes.md", b"# Heading\n\n" + b"text " * 400),
        ("notes.txt", b"text " * 400),
        (
            "a.json",
            json.dumps([{"id": str(i), "page": 1, "text": "t"} for i in range(60)]).encode(),
        ),
    ],
)
def test_oversized_text_formats(name: str, body: bytes) -> None:
    assert len(body) > 1000
    with pytest.raises(InputLimitError) as info:
        parse_document(body, filename=name, options=ParseOptions(max_text_bytes=1000))
    assert limit_of(info.value) == ("text_bytes", "1000")
    parse_document(body, filename=name, options=ParseOptions(max_text_bytes=len(body)))


def test_default_text_budget() -> None:
    body = b"# Big\n\n" + b"a" * DEFAULT_MAX_TEXT_BYTES
    with pytest.raises(InputLimitError) as info:
        parse_document(body, filename="big.md")
    assert limit_of(info.value) == ("text_bytes", str(DEFAULT_MAX_TEXT_BYTES))


_RSS_PROBE = """
import resource
import pypdfium2
from services.rag.model import InputLimitError
from services.rag.parsers import parse_document
from tests.rag.test_budgets import giant_page_pdf
data = giant_page_pdf()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    parse_document(data)
    refused = "accepted"
except InputLimitError as exc:
    refused = exc.metadata["limit"]
print(refused)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_giant_page_does_not_grow_memory() -> None:
    """In a fresh process (the peak RSS is not already high): refusing the giant page
    costs next to nothing (it was 5.8 GB when the page was rendered)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    refused, growth = out.stdout.strip().splitlines()[-2:]
    assert refused == "page_pixels"  # refused by the budget, not parsed
    assert int(growth) < 50 * 1024
