"""The model's tools: `request_images(block_ids)` crops blocks out of their page images;
`zoom(page, box, scale)` renders a page region at a higher resolution (from the source
PDF when there is one, else by resampling the page image). Crops are real images: stored
in the storage service (bucket `images`), streamed as ImageProduced with a signed URL, and
given back to the model as inline images.

Blocks and page images come with the turn's search hits (`ToolRunner.add_hits`), so
cropping a found block costs no RAG call. `GetDocument` (one call, cached per document
page for the turn) remains for two things a hit does not carry: a page no hit of the turn
sits on, and the document's source file and format, which a zoom renders from."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2
from PIL import Image

from aivera.chat.v1 import chat_pb2
from aivera.rag.v1 import rag_pb2
from services.chat.clients import Block, DocumentInfo, Documents, Files, Hit, PageInfo
from services.chat.providers.base import FunctionCall, Part
from services.chat.store import ImageRow
from services.chat.turns import Turn
from services.common.errors import ServiceError

log = logging.getLogger("aivera.chat.tools")

IMAGE_VIEWPORT = chat_pb2.IMAGE_KIND_VIEWPORT
IMAGE_ZOOM = chat_pb2.IMAGE_KIND_ZOOM
MAX_SCALE = 4.0
MAX_SIDE = 3000  # longest side of a produced image, in pixels
PAD = 0.01  # margin around a cropped block, as a fraction of the page


# -- pure image work ------------------------------------------------------------------------
def _norm(box: dict[str, Any]) -> tuple[float, float, float, float]:
    left, top = float(box.get("left", 0.0)), float(box.get("top", 0.0))
    right, bottom = float(box.get("right", 1.0)), float(box.get("bottom", 1.0))
    left, right = sorted((max(0.0, min(1.0, left)), max(0.0, min(1.0, right))))
    top, bottom = sorted((max(0.0, min(1.0, top)), max(0.0, min(1.0, bottom))))
    if right - left < 1e-3 or bottom - top < 1e-3:
        raise ValueError("the box is empty")
    return left, top, right, bottom


def crop(image: Image.Image, box: dict[str, Any], *, pad: float = 0.0) -> Image.Image:
    """The normalized box (plus `pad`) of an image, at the image's resolution."""
    left, top, right, bottom = _norm(box)
    w, h = image.size
    return image.crop(
        (
            max(0, int((left - pad) * w)),
            max(0, int((top - pad) * h)),
            min(w, round((right + pad) * w)),
            min(h, round((bottom + pad) * h)),
        )
    )


def _fit(image: Image.Image) -> Image.Image:
    w, h = image.size
    if max(w, h) <= MAX_SIDE:
        return image
    ratio = MAX_SIDE / max(w, h)
    return image.resize((max(1, int(w * ratio)), max(1, int(h * ratio))), Image.Resampling.LANCZOS)


def zoom_image(page_image: Image.Image, box: dict[str, Any], scale: float) -> Image.Image:
    """A region of the page image resampled `scale` times."""
    region = crop(page_image, box)
    w, h = region.size
    return _fit(
        region.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.LANCZOS)
    )


def render_pdf_region(
    pdf: bytes, page_number: int, box: dict[str, Any], pixels_per_point: float
) -> Image.Image:
    """A region of a PDF page rendered at `pixels_per_point` (a real higher resolution)."""
    import pypdfium2 as pdfium

    left, top, right, bottom = _norm(box)
    doc = pdfium.PdfDocument(pdf)
    try:
        page = doc[page_number - 1]
        width, height = page.get_size()
        longest = max((right - left) * width, (bottom - top) * height) * pixels_per_point
        if longest > MAX_SIDE:
            pixels_per_point *= MAX_SIDE / longest
        bitmap = page.render(
            scale=pixels_per_point,
            crop=(left * width, (1 - bottom) * height, (1 - right) * width, top * height),
        )
        image: Image.Image = bitmap.to_pil().convert("RGB")
        return image
    finally:
        doc.close()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _box_proto_dict(page: PageInfo, norm: tuple[float, float, float, float]) -> dict[str, Any]:
    left, top, right, bottom = norm
    return {
        "page": page.number,
        "normalized": {"left": left, "top": top, "right": right, "bottom": bottom},
        "pixels": {
            "left": int(left * page.width),
            "top": int(top * page.height),
            "right": round(right * page.width),
            "bottom": round(bottom * page.height),
        },
        "pageWidth": page.width,
        "pageHeight": page.height,
    }


# -- the tools ----------------------------------------------------------------------------
@dataclass
class ToolResult:
    response: dict[str, Any]
    images: list[Part]


class ToolRunner:
    """Runs the tool calls of one turn, with the turn's caches and limits."""

    def __init__(
        self,
        turn: Turn,
        documents: Documents,
        files: Files,
        *,
        max_zooms: int,
        url_ttl: int,
        user_labels: dict[str, str] | None = None,
    ) -> None:
        self.turn = turn
        self.documents = documents
        self.files = files
        self.max_zooms = max_zooms
        self.url_ttl = url_ttl
        self.labels = user_labels or {}
        self.blocks: dict[str, Block] = {}  # every block the turn knows, by its handle
        # Pages the hits carried, by (document id, page number), and documents' names.
        self.pages: dict[tuple[str, int], PageInfo] = {}
        self.filenames: dict[str, str] = {}
        self._docs: dict[tuple[str, int], DocumentInfo] = {}
        self._pages: dict[str, Image.Image] = {}  # page image file id → image
        self._sources: dict[str, bytes] = {}  # source file id → PDF bytes
        self.collected: list[Part] = []  # images produced, for the pro stage
        self.requested: list[str] = []  # block ids the model asked images of
        self._calls = 0

    # -- what the turn knows -----------------------------------------------------------
    def add_hits(self, hits: list[Hit]) -> None:
        """Remembers the hits' pages and file names (their blocks come through
        `add_block`, with the handles the model sees)."""
        for hit in hits:
            if hit.filename:
                self.filenames.setdefault(hit.document_id, hit.filename)
            if hit.page_image is not None:
                self.pages.setdefault((hit.document_id, hit.page_image.number), hit.page_image)

    def add_block(self, block: Block) -> None:
        self.blocks.setdefault(block.handle, block)

    def catalogue(self, blocks: list[Block]) -> list[tuple[str, str, PageInfo]]:
        """(document id, file name, page) of the rendered pages the blocks sit on."""
        out: list[tuple[str, str, PageInfo]] = []
        for key in dict.fromkeys((b.document_id, b.page) for b in blocks):
            page = self.pages.get(key)
            if page is not None and page.image_file_id:
                out.append((key[0], self.filenames.get(key[0], ""), page))
        return out

    async def document(self, document_id: str, page: int) -> DocumentInfo:
        """The document's source file and page `page` (GetDocument, once per page)."""
        key = (document_id, page)
        if key not in self._docs:
            info = await self.documents.document(document_id, page)
            self._docs[key] = info
            if info.page is not None:
                self.pages.setdefault(key, info.page)
        return self._docs[key]

    async def page(self, document_id: str, number: int) -> PageInfo | None:
        """A page with its image: from the hits, else asked of RAG."""
        found = self.pages.get((document_id, number))
        if found is None:
            found = (await self.document(document_id, number)).page
        return found

    def known_documents(self) -> list[str]:
        seen: list[str] = []
        for block in self.blocks.values():
            if block.document_id not in seen:
                seen.append(block.document_id)
        return seen

    async def _page_image(self, page: PageInfo) -> Image.Image:
        if page.image_file_id not in self._pages:
            data = await self.files.download(page.image_file_id)
            image = await asyncio.to_thread(lambda: Image.open(io.BytesIO(data)).convert("RGB"))
            self._pages[page.image_file_id] = image
        return self._pages[page.image_file_id]

    async def _store(
        self,
        image: Image.Image,
        *,
        kind: chat_pb2.ImageKind.ValueType,
        document_id: str,
        page: PageInfo,
        norm: tuple[float, float, float, float] | None,
        scale: float,
        description: str,
        tool_call_id: str,
    ) -> tuple[ImageRow, bytes]:
        data = await asyncio.to_thread(png, image)
        name = {IMAGE_VIEWPORT: "viewport", IMAGE_ZOOM: "zoom"}.get(kind, "page")
        stored = await self.files.store_image(
            data, f"{name}-p{page.number}-{len(self.turn.images) + 1}.png", self.labels
        )
        row = ImageRow(
            kind=kind,
            file_id=stored.file_id,
            document_id=document_id,
            page=page.number,
            box=_box_proto_dict(page, norm) if norm else None,
            scale=scale,
            width=image.width,
            height=image.height,
            size_bytes=stored.size_bytes,
            mime_type="image/png",
            description=description,
        )
        self.turn.images.append(row)
        url, expire = await self.files.signed_url(stored.file_id, self.url_ttl)
        event = chat_pb2.ImageProduced(image=image_proto(row), url=url, tool_call_id=tool_call_id)
        if expire is not None:
            event.expire_time.FromDatetime(expire)
        self.turn.emit(image_produced=event)
        return row, data

    # -- dispatch -----------------------------------------------------------------------
    async def run(
        self, calls: list[FunctionCall], *, model: str, iteration: int
    ) -> list[ToolResult]:
        results = []
        for call in calls:
            self._calls += 1
            call.id = call.id or f"call-{self._calls}"
            args = struct_pb2.Struct()
            with contextlib.suppress(TypeError, ValueError):
                args.update(call.args)
            self.turn.emit(
                tool_call=chat_pb2.ToolCall(
                    id=call.id, name=call.name, arguments=args, model=model, iteration=iteration
                )
            )
            try:
                if call.name == "request_images":
                    results.append(await self.request_images(call))
                elif call.name == "zoom":
                    results.append(await self.zoom(call))
                else:
                    results.append(ToolResult({"error": f"неизвестный инструмент {call.name}"}, []))
            except ServiceError as exc:
                self.turn.warning(
                    "FILE_UNREADABLE", f"Не удалось получить изображение: {exc.message}"
                )
                results.append(ToolResult({"error": exc.message}, []))
        return results

    async def request_images(self, call: FunctionCall) -> ToolResult:
        raw = call.args.get("block_ids") or []
        ids = [str(b) for b in (raw if isinstance(raw, list) else [raw])][:20]
        found: list[Block] = []
        missing: list[str] = []
        for block_id in ids:
            block = self.blocks.get(block_id)
            if block is None or block.box is None:
                missing.append(block_id)
            else:
                found.append(block)
                self.requested.append(block_id)
        if missing:
            self.turn.warning(
                "BLOCK_NOT_FOUND", f"Блоки не найдены в контексте: {', '.join(missing)}"
            )
        pages: list[tuple[Block, PageInfo]] = []
        async with self.turn.phase(chat_pb2.PHASE_IMAGE_DOWNLOAD, "Загрузка изображений страниц"):
            for block in found:
                page = await self.page(block.document_id, block.page)
                if page is None or not page.image_file_id:
                    missing.append(block.handle)
                    continue
                await self._page_image(page)
                pages.append((block, page))
        images: list[Part] = []
        described: list[dict[str, Any]] = []
        if pages:
            async with self.turn.phase(chat_pb2.PHASE_CROPS, "Вырезка блоков"):
                for n, (block, page) in enumerate(pages, start=1):
                    image = self._pages[page.image_file_id]
                    norm_box = (block.box or {}).get("normalized") or {}
                    cut = await asyncio.to_thread(crop, image, norm_box, pad=PAD)
                    row, data = await self._store(
                        cut,
                        kind=IMAGE_VIEWPORT,
                        document_id=block.document_id,
                        page=page,
                        norm=_norm(norm_box),
                        scale=1.0,
                        description=f"Блок {block.id}",
                        tool_call_id=call.id,
                    )
                    self.turn.progress(chat_pb2.PHASE_CROPS, n, len(pages), "images")
                    images.append(Part(image=data))
                    described.append(
                        {
                            "block_id": block.handle,
                            "image_id": row.id,
                            "page": page.number,
                            "width": row.width,
                            "height": row.height,
                        }
                    )
        self.collected.extend(images)
        response: dict[str, Any] = {"images": described}
        if missing:
            response["not_found"] = missing
        return ToolResult(response, images)

    async def zoom(self, call: FunctionCall) -> ToolResult:
        if self.turn.zooms >= self.max_zooms:
            self.turn.warning(
                "ZOOM_LIMIT", f"Достигнут лимит увеличений за ход ({self.max_zooms})."
            )
            return ToolResult({"error": "лимит zoom на этот ход исчерпан"}, [])
        try:
            page_number = int(call.args.get("page") or 0)
            box = call.args.get("box") or {}
            if not isinstance(box, dict):
                raise ValueError("box")
            norm = _norm(box)
            scale = max(1.0, min(MAX_SCALE, float(call.args.get("scale") or 2.0)))
        except (TypeError, ValueError):
            return ToolResult(
                {"error": "неверные аргументы zoom: page, box{left,top,right,bottom}, scale"}, []
            )
        document_id = str(call.args.get("document_id") or "")
        if not document_id:
            candidates = [b.document_id for b in self.blocks.values() if b.page == page_number]
            document_id = candidates[0] if candidates else next(iter(self.known_documents()), "")
        if not document_id:
            return ToolResult({"error": "нет документа с такой страницей в контексте"}, [])
        self.turn.zooms += 1
        async with self.turn.phase(chat_pb2.PHASE_IMAGE_DOWNLOAD, "Загрузка страницы"):
            info = await self.document(document_id, page_number)
            page = self.pages.get((document_id, page_number)) or info.page
            if page is None or not page.image_file_id:
                return ToolResult({"error": f"страница {page_number} не найдена"}, [])
            page_image = await self._page_image(page)
            source: bytes | None = None
            if info.format == rag_pb2.DOCUMENT_FORMAT_PDF and info.file_id:
                try:
                    if info.file_id not in self._sources:
                        self._sources[info.file_id] = await self.files.download(info.file_id)
                    source = self._sources[info.file_id]
                except ServiceError as exc:
                    log.info("source PDF unavailable, zooming the page image: %s", exc.message)
        async with self.turn.phase(
            chat_pb2.PHASE_ZOOMS, f"Увеличение области страницы {page_number}"
        ):
            image: Image.Image | None = None
            if source is not None:
                try:
                    # The page image's pixels per PDF point, times the zoom.
                    image = await asyncio.to_thread(
                        _render_at_page_scale, source, page_number, box, page_image.width, scale
                    )
                except Exception as exc:
                    log.info("PDF render failed, zooming the page image: %s", exc)
            if image is None:
                image = await asyncio.to_thread(zoom_image, page_image, box, scale)
            row, data = await self._store(
                image,
                kind=IMAGE_ZOOM,
                document_id=document_id,
                page=page,
                norm=norm,
                scale=scale,
                description=f"Увеличение ×{scale:g}, страница {page_number}",
                tool_call_id=call.id,
            )
            self.turn.progress(chat_pb2.PHASE_ZOOMS, 1, 1, "images")
        part = Part(image=data)
        self.collected.append(part)
        return ToolResult(
            {
                "image_id": row.id,
                "page": page_number,
                "width": row.width,
                "height": row.height,
                "scale": scale,
            },
            [part],
        )


def _render_at_page_scale(
    pdf: bytes, page_number: int, box: dict[str, Any], page_image_width: int, scale: float
) -> Image.Image:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    try:
        width_pt = doc[page_number - 1].get_size()[0]
    finally:
        doc.close()
    return render_pdf_region(pdf, page_number, box, page_image_width / width_pt * scale)


def image_proto(row: ImageRow) -> chat_pb2.MessageImage:
    msg = chat_pb2.MessageImage(
        id=row.id,
        kind=chat_pb2.ImageKind.ValueType(row.kind),
        file_id=row.file_id,
        document_id=row.document_id or "",
        page=row.page,
        scale=row.scale,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
        mime_type=row.mime_type,
        description=row.description,
    )
    if row.box:
        json_format.ParseDict(row.box, msg.box, ignore_unknown_fields=True)
    return msg
