"""Markdown, HTML, JSON annotation and plain text parse into blocks; the registry detects
formats and refuses what it cannot read."""

from __future__ import annotations

import json

import grpc
import pytest

from services.rag.model import (
    BlockKind,
    DocumentFormat,
    DocumentTooLargeError,
    FormatMismatchError,
    UnsupportedFormatError,
)
from services.rag.parsers import ParseOptions, detect_format, parse_document

MARKDOWN = """# Общие данные

Первый абзац о системе вентиляции
на двух строках.

Раздел АР
---------

| Шифр | Название |
|---|:--:|
| ПВ-1 | Приточная установка |
| АР-12 | Фасады |

```
code | not a table
```

***

- пункт 1
- пункт 2
"""

HTML = """<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style></head>
<body><h1>Отчёт об обследовании</h1>
<p>Параграф с <b>жирным</b> текстом.<br>Вторая строка</p>
<table>
  <tr><th>Шифр</th><th colspan="2">Описание</th></tr>
  <tr><td>ПВ-1<td>Приточная<td>1200 м3/ч</tr>
  <tr><td>A|B</td><td><table><tr><td>вложенная</td></tr></table></td><td></td></tr>
</table>
<div>После таблицы</div><script>var hidden = 1;</script>
</body></html>"""


def test_markdown_headings_paragraphs_tables() -> None:
    doc = parse_document(MARKDOWN.encode(), filename="notes.md")
    assert doc.format is DocumentFormat.MARKDOWN
    kinds = [(b.kind, b.text) for b in doc.blocks]
    assert kinds[0] == (BlockKind.HEADING, "Общие данные")
    assert kinds[1] == (BlockKind.TEXT, "Первый абзац о системе вентиляции\nна двух строках.")
    assert kinds[2] == (BlockKind.HEADING, "Раздел АР")
    assert kinds[3][0] is BlockKind.TABLE
    assert kinds[3][1].splitlines() == [
        "| Шифр | Название |",
        "|---|---|",
        "| ПВ-1 | Приточная установка |",
        "| АР-12 | Фасады |",
    ]
    assert (BlockKind.TEXT, "code | not a table") in kinds
    assert kinds[-1] == (BlockKind.TEXT, "- пункт 1\n- пункт 2")
    assert all(b.page == 1 and b.box is None for b in doc.blocks)
    assert [p.number for p in doc.pages] == [1] and doc.pages[0].png is None
    assert [b.id for b in doc.blocks] == [f"p1-b{i}" for i in range(1, len(doc.blocks) + 1)]


def test_html_keeps_tables_as_tables() -> None:
    doc = parse_document(HTML.encode(), content_type="text/html; charset=utf-8")
    assert doc.format is DocumentFormat.HTML
    texts = [(b.kind, b.text) for b in doc.blocks]
    assert texts[0] == (BlockKind.HEADING, "Отчёт об обследовании")
    assert texts[1] == (BlockKind.TEXT, "Параграф с жирным текстом.\nВторая строка")
    kind, table = texts[2]
    assert kind is BlockKind.TABLE
    assert table.splitlines() == [
        "| Шифр | Описание | Описание |",
        "|---|---|---|",
        "| ПВ-1 | Приточная | 1200 м3/ч |",
        "| A\\|B | вложенная |  |",
    ]
    assert texts[3] == (BlockKind.TEXT, "После таблицы")
    assert all("hidden" not in t and "color" not in t for _, t in texts)
    assert all(b.box is None for b in doc.blocks)


def test_html_with_unclosed_nested_tables_ends() -> None:
    """Tables opened inside an unclosed cell and never closed: the document still ends
    (it used to loop forever closing them), the outer table kept as one table block."""
    doc = parse_document(b"<html><body><table><tr><td>cell" * 200, filename="t.html")
    assert [b.kind for b in doc.blocks] == [BlockKind.TABLE]
    assert "cell" in doc.blocks[0].text


def test_plain_text_paragraphs_and_cp1251() -> None:
    doc = parse_document("Первый абзац.\r\n\r\nВторой\r\nабзац.".encode(), filename="a.txt")
    assert doc.format is DocumentFormat.TEXT
    assert [b.text for b in doc.blocks] == ["Первый абзац.", "Второй\nабзац."]
    legacy = parse_document("Старый файл в кодировке Windows-1251.".encode("cp1251"))
    assert legacy.blocks[0].text == "Старый файл в кодировке Windows-1251."
    assert legacy.warnings


def _annotation() -> dict[str, object]:
    return {
        "pages": [{"number": 1, "width": 1000, "height": 2000}, {"number": 2}],
        "blocks": [
            {
                "id": "block_1",
                "page": 1,
                "kind": "heading",
                "text": "Система вентиляции",
                "coords_norm": [0.1, 0.2, 0.8, 0.25],
            },
            {
                "id": "block_2",
                "page_number": 1,
                "block_text": "Состоит из ПВ-1",
                "coords_px": [100, 600, 900, 700],
            },
            {
                "id": "t3",
                "page": 2,
                "type": "table",
                "text": "| a | b |",
                "coords_norm": [0.0, 0.0, 1.0, 0.5],
                "coords_px": [0, 0, 600, 400],
                "page_width": 600,
                "page_height": 800,
            },
            {"id": 4, "page": 2, "text": "без координат"},
        ],
    }


def test_json_annotation_keeps_ids_pages_and_boxes() -> None:
    doc = parse_document(json.dumps(_annotation()).encode(), filename="annot.json")
    assert doc.format is DocumentFormat.JSON_ANNOTATION
    b1, b2, b3, b4 = doc.blocks
    assert (b1.id, b1.page, b1.kind) == ("block_1", 1, BlockKind.HEADING)
    assert b1.box is not None and b1.box.as_tuple() == (0.1, 0.2, 0.8, 0.25)
    assert b1.box.pixels is not None
    assert (b1.box.pixels.left, b1.box.pixels.top, b1.box.pixels.right) == (100, 400, 800)
    assert (b2.id, b2.text) == ("block_2", "Состоит из ПВ-1")
    assert b2.box is not None and b2.box.as_tuple() == (0.1, 0.3, 0.9, 0.35)
    assert (b3.kind, b3.page) == (BlockKind.TABLE, 2)
    assert b3.box is not None and b3.box.pixels is not None
    assert (b3.box.page_width, b3.box.pixels.bottom) == (600, 400)
    assert (b4.id, b4.box) == ("4", None)
    assert [(p.number, p.width_px) for p in doc.pages] == [(1, 1000), (2, 0)]
    # A bare list of blocks is accepted too, and detected without a name.
    bare = json.dumps([{"id": "x", "page": 3, "text": "t"}]).encode()
    assert detect_format(bare) is DocumentFormat.JSON_ANNOTATION
    assert parse_document(bare).page_count == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a["blocks"].append({"id": "block_1", "page": 1, "text": "x"}), "unique"),
        (lambda a: a["blocks"][0].pop("page"), "page"),
        (lambda a: a["blocks"][0].update(coords_norm=[0.5, 0.2, 0.1, 0.3]), "right < left"),
        (lambda a: a["blocks"][0].update(coords_norm=[0, 0, 2, 1]), "0–1"),
        (lambda a: a["blocks"][3].update(coords_px=[1, 2, 3, 4]), "image size"),
        (lambda a: a["blocks"][0].update(kind="chart"), "kind"),
        (lambda a: a.update(blocks={"a": 1}), "list"),
        # json reads 1e400 as infinity and NaN as NaN: neither is a page number.
        (lambda a: a["blocks"][0].update(page=float("inf")), "integer"),
        (lambda a: a["blocks"][0].update(page=float("nan")), "integer"),
    ],
)
def test_json_annotation_schema_errors(mutate: object, message: str) -> None:
    data = _annotation()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(FormatMismatchError) as info:
        parse_document(json.dumps(data).encode(), filename="a.json")
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_detection_by_content_name_and_type() -> None:
    assert detect_format(b"%PDF-1.7 ...") is DocumentFormat.PDF
    assert detect_format(b"<html><body>x</body></html>") is DocumentFormat.HTML
    assert detect_format(b"  <!doctype html><p>x") is DocumentFormat.HTML
    assert detect_format(b"# Title\n\ntext") is DocumentFormat.MARKDOWN
    assert detect_format(b"just words") is DocumentFormat.TEXT
    assert detect_format(b"# not markdown", filename="a.txt") is DocumentFormat.TEXT
    assert detect_format(b"plain", content_type="text/markdown") is DocumentFormat.MARKDOWN
    assert detect_format(b'{"a": 1}', filename="data.json") is DocumentFormat.JSON_ANNOTATION


@pytest.mark.parametrize(
    ("data", "filename", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "scan.png", "image/png"),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00", "report.docx", ""),
        (b"plain words", "", "application/vnd.ms-excel"),
    ],
)
def test_unsupported_types_are_invalid_argument(
    data: bytes, filename: str, content_type: str
) -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        parse_document(data, filename=filename, content_type=content_type)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_forced_format_must_match() -> None:
    with pytest.raises(FormatMismatchError):
        parse_document(b"# markdown", format=DocumentFormat.PDF)
    with pytest.raises(FormatMismatchError):
        parse_document(b"%PDF-1.7 x", format=DocumentFormat.TEXT)
    with pytest.raises(FormatMismatchError):
        parse_document(b'{"blocks": 1}', format=DocumentFormat.JSON_ANNOTATION)
    forced = parse_document(b"# not a heading here", format=DocumentFormat.TEXT)
    assert forced.blocks[0].kind is BlockKind.TEXT


def test_empty_documents_parse_to_no_blocks() -> None:
    for data, name in ((b"", "a.txt"), (b"\n\n  \n", "a.md"), (b"<html></html>", "a.html")):
        doc = parse_document(data, filename=name)
        assert doc.blocks == [] and not doc.has_text and doc.page_count == 1


def test_block_limit() -> None:
    text = "\n\n".join(f"абзац {i}" for i in range(20)).encode()
    with pytest.raises(DocumentTooLargeError) as info:
        parse_document(text, filename="a.txt", options=ParseOptions(max_blocks=10))
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
