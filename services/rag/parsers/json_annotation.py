"""The JSON block-annotation format: blocks with id, page, text and box, kept as given.

Accepted schema (UTF-8 JSON)::

    {
      "pages": [                                  # optional
        {"number": 1, "width": 1240, "height": 1754}   # page image size in pixels
      ],
      "blocks": [                                 # required (or the top level is this list)
        {
          "id": "block_123",                      # required, string (or int), unique
          "page": 5,                              # required, int ≥ 1 (alias "page_number")
          "text": "Система вентиляции ...",       # required, string (alias "block_text")
          "kind": "text",                         # optional: text|heading|table|image
                                                  #   (alias "type"); default text
          "coords_norm": [0.1, 0.2, 0.8, 0.5],    # optional: left, top, right, bottom in
                                                  #   0–1 of the page (alias "bbox")
          "coords_px": [100, 200, 800, 500],      # optional: the same in pixels of the
                                                  #   page image (right/bottom exclusive)
          "page_width": 1240, "page_height": 1754 # optional: that image's size, else
                                                  #   taken from "pages"
        }
      ]
    }

Rules: ``coords_px`` needs the page image size (on the block or in ``pages``); given only
``coords_norm`` the pixel box is computed when the size is known; given only
``coords_px`` the normalised box is computed from it; given both, both are kept as given
(clamped to the page); given neither, the block has no box. Values outside 0–1 in
``coords_norm`` or a box with right < left are rejected. Blocks keep the file's order.
Any violation raises FormatMismatchError (INVALID_ARGUMENT) naming the block.
"""

from __future__ import annotations

import json
import math
from typing import Any

from services.rag.model import (
    Block,
    BlockKind,
    Box,
    DocumentFormat,
    FormatMismatchError,
    InputLimitError,
    Page,
    ParsedDocument,
)
from services.rag.parsers.base import DEFAULT_MAX_JSON_DEPTH, check_json_depth, decode_text

_KINDS = {k.value: k for k in BlockKind} | {"paragraph": BlockKind.TEXT, "title": BlockKind.HEADING}


MAX_PAGE = 100_000


def _bad(msg: str) -> FormatMismatchError:
    return FormatMismatchError(f"invalid JSON annotation: {msg}")


def _int(value: Any, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))  # 1e400, NaN: no int
        or value != int(value)
    ):
        raise _bad(f"{what} must be an integer")
    return int(value)


def _four(value: Any, what: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise _bad(f"{what} must be a list of 4 numbers [left, top, right, bottom]")
    left, top, right, bottom = (float(v) for v in value)
    if right < left or bottom < top:
        raise _bad(f"{what} has right < left or bottom < top")
    return [left, top, right, bottom]


def looks_like_annotation(obj: Any) -> bool:
    """True for a dict with a "blocks" list or a list of dicts with text and page."""
    if isinstance(obj, dict):
        return isinstance(obj.get("blocks"), list)
    if isinstance(obj, list) and obj:
        first = obj[0]
        return isinstance(first, dict) and (
            ("text" in first or "block_text" in first)
            and ("page" in first or "page_number" in first)
        )
    return False


def parse_json_annotation(data: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> ParsedDocument:
    """Parse the annotation. The nesting depth is checked before parsing (InputLimitError
    over ``max_depth``, 0 = none); the caller bounds the size."""
    text, warnings = decode_text(data)
    check_json_depth(text, max_depth)
    try:
        root = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    except RecursionError as exc:  # only without a depth budget
        raise InputLimitError(
            "the JSON nests too deep to parse", limit="json_depth", maximum=max_depth
        ) from exc
    if isinstance(root, list):
        raw_blocks: Any = root
        raw_pages: Any = []
    elif isinstance(root, dict):
        raw_blocks = root.get("blocks")
        raw_pages = root.get("pages", [])
    else:
        raise _bad("the top level must be an object or a list of blocks")
    if not isinstance(raw_blocks, list):
        raise _bad('"blocks" must be a list')
    if not isinstance(raw_pages, list):
        raise _bad('"pages" must be a list')

    sizes: dict[int, tuple[int, int]] = {}
    for i, p in enumerate(raw_pages):
        if not isinstance(p, dict):
            raise _bad(f"pages[{i}] must be an object")
        number = _int(p.get("number"), f"pages[{i}].number")
        width = _int(p.get("width", 0), f"pages[{i}].width")
        height = _int(p.get("height", 0), f"pages[{i}].height")
        if not 1 <= number <= MAX_PAGE or width < 0 or height < 0:
            raise _bad(f"pages[{i}] has a page number < 1 or a negative size")
        sizes[number] = (width, height)

    blocks: list[Block] = []
    seen: set[str] = set()
    for i, b in enumerate(raw_blocks):
        where = f"blocks[{i}]"
        if not isinstance(b, dict):
            raise _bad(f"{where} must be an object")
        bid = b.get("id", b.get("block_id"))
        if isinstance(bid, int) and not isinstance(bid, bool):
            bid = str(bid)
        if not isinstance(bid, str) or not bid.strip() or len(bid) > 200:
            raise _bad(f"{where}.id must be a non-empty string of at most 200 characters")
        if bid in seen:
            raise _bad(f"{where}.id {bid!r} is not unique")
        seen.add(bid)
        where = f"block {bid!r}"
        page = _int(b.get("page", b.get("page_number")), f"{where}: page")
        if not 1 <= page <= MAX_PAGE:
            raise _bad(f"{where}: page must be within 1–{MAX_PAGE}")
        body = b.get("text", b.get("block_text", ""))
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise _bad(f"{where}: text must be a string")
        kind_name = b.get("kind", b.get("type", "text"))
        if not isinstance(kind_name, str) or kind_name.lower() not in _KINDS:
            raise _bad(f"{where}: kind must be one of text, heading, table, image")
        kind = _KINDS[kind_name.lower()]

        width, height = sizes.get(page, (0, 0))
        if "page_width" in b or "page_height" in b:
            width = _int(b.get("page_width", 0), f"{where}: page_width")
            height = _int(b.get("page_height", 0), f"{where}: page_height")
        norm_raw = b.get("coords_norm", b.get("bbox"))
        px_raw = b.get("coords_px")
        box: Box | None = None
        if norm_raw is not None:
            norm = _four(norm_raw, f"{where}: coords_norm")
            if min(norm) < 0.0 or max(norm) > 1.0:
                raise _bad(f"{where}: coords_norm values must be within 0–1")
            box = Box.from_normalized(norm[0], norm[1], norm[2], norm[3], width, height)
            if px_raw is not None:
                if width <= 0 or height <= 0:
                    raise _bad(f"{where}: coords_px needs the page image size")
                px = [round(v) for v in _four(px_raw, f"{where}: coords_px")]
                exact = Box.from_pixels(px[0], px[1], px[2], px[3], width, height).pixels
                box = Box(box.left, box.top, box.right, box.bottom, exact, width, height)
        elif px_raw is not None:
            if width <= 0 or height <= 0:
                raise _bad(f"{where}: coords_px needs the page image size")
            px = [round(v) for v in _four(px_raw, f"{where}: coords_px")]
            box = Box.from_pixels(px[0], px[1], px[2], px[3], width, height)
        blocks.append(Block(bid, page, kind, body.strip(), box))

    last_page = max([b.page for b in blocks] + list(sizes) + [1])
    pages = [Page(n, *sizes.get(n, (0, 0))) for n in range(1, last_page + 1)]
    return ParsedDocument(DocumentFormat.JSON_ANNOTATION, pages, blocks, warnings)
