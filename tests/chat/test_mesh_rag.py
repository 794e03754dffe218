"""A turn through the real RAG service: a generated PDF attached to a chat is ingested
(parsed with block boxes, pages rendered into storage, embedded), searched by the turn,
and the model's request_images / zoom calls crop the real rendered page."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fpdf import FPDF
from PIL import Image

from aivera.chat.v1 import chat_pb2
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2
from tests.chat.conftest import Mesh, build_mesh
from tests.chat.fakes import RED_BOX, make_pdf, upload
from tests.helpers.gemini import GeminiServer, Reply
from tests.helpers.services import channel

KEY = "AIzaSyTEST0000000000000000000000000004"


@pytest.fixture(scope="module")
async def mesh(database_url: str) -> AsyncIterator[Mesh]:
    async with build_mesh(database_url, real_rag=True) as built:
        yield built


def _red_share(data: bytes) -> float:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    pixels = list(image.getdata())
    return sum(1 for r, g, b in pixels if r > 180 and g < 60 and b < 60) / len(pixels)


async def test_turn_over_real_rag(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="КЖ"), metadata=user.md)
    pdf = await upload(
        mesh.storage_stub, make_pdf(), "kzh.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )
    await mesh.stub.AttachFile(
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
    )
    for _ in range(600):
        got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
        if got.attachments[0].status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
            break
        await asyncio.sleep(0.1)
    attachment = got.attachments[0]
    assert attachment.status == chat_pb2.ATTACHMENT_STATUS_READY, attachment.error_message
    async with channel(mesh.rag_app) as ch:
        detail = await rag_pb2_grpc.RagServiceStub(ch).GetDocument(
            rag_pb2.GetDocumentRequest(id=attachment.document_id), metadata=user.md
        )
    concrete = next(b for b in detail.blocks if "B25" in b.text)
    left, top, right, bottom = RED_BOX
    gemini.script(
        Reply.call("request_images", {"block_ids": [concrete.id]}),
        Reply.call(
            "zoom",
            {
                "page": 1,
                "box": {"left": left, "top": top, "right": right, "bottom": bottom},
                "scale": 2,
            },
        ),
        Reply.text("Бетон B25; узел закрашен красным."),
    )
    events = await mesh.send(user, chat.id, "Beton klassa B25?")
    assert events[-1].HasField("final"), events[-1]
    first, second, third = gemini.requests
    assert concrete.id in first.texts()[-1]  # the searched block is in the context
    crop = second.inline_images()[0][1]
    assert 0.0 <= _red_share(crop) < 0.05  # the text block, not the drawing
    zoom = third.inline_images()[-1][1]
    assert _red_share(zoom) > 0.7
    page = detail.pages[0]
    assert Image.open(io.BytesIO(zoom)).width == pytest.approx(
        (right - left) * page.width_px * 2, rel=0.05
    )
    final = events[-1].final.message
    assert concrete.id in {s.block_id for s in final.search_results}
    assert [i.kind for i in final.images] == [
        chat_pb2.IMAGE_KIND_VIEWPORT,
        chat_pb2.IMAGE_KIND_ZOOM,
    ]


FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian's fonts-dejavu-core
SHEETS = (
    "Лист 1. Фундамент ФМ-1: класс бетона B25, арматура A500C.",
    "Лист 2. Колонна К-1: класс бетона B30, арматура A240.",
    # Words of the follow-up as asked: searching «а на втором листе?» itself finds this.
    "Лист 3. Общие указания: узлы на втором листе выполнять по серии 1.020.",
)


def sheets_pdf() -> bytes:
    """A4 pages in Russian, one «лист» each."""
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_font("dejavu", fname=str(FONT))
    for text in SHEETS:
        pdf.add_page()
        pdf.set_font("dejavu", size=12)
        pdf.text(0.1 * pdf.w, 0.1 * pdf.h, text)
    return bytes(pdf.output())


@pytest.mark.smollm2
async def test_follow_up_retrieves_the_sheet_it_names(mesh: Mesh, gemini: GeminiServer) -> None:
    """Without a Gemini key (the local model) the follow-up «а на втором листе?» is
    searched joined to the previous question, its ordinal as a number: the real RAG
    service ranks sheet 2 first (the follow-up searched as asked ranks sheet 3, which has
    its words)."""
    admin = await mesh.admin_user()
    for name in ("LLM_SYSTEM", "JSON_ANNOTATION", "HTML_OCR"):  # short: CPU prefill
        await mesh.admin_stub.CreateSystemPromptVersion(
            chat_pb2.CreateSystemPromptVersionRequest(
                name=chat_pb2.SystemPromptName.Value(f"SYSTEM_PROMPT_NAME_{name}"),
                content="Answer briefly.",
                activate=True,
            ),
            metadata=admin.md,
        )
    user = await mesh.new_user()  # no key: the local model and the local heuristic
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="КЖ"), metadata=user.md)
    pdf = await upload(
        mesh.storage_stub, sheets_pdf(), "kzh-2.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )
    await mesh.stub.AttachFile(
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
    )
    for _ in range(600):
        got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
        if got.attachments[0].status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
            break
        await asyncio.sleep(0.1)
    assert got.attachments[0].status == chat_pb2.ATTACHMENT_STATUS_READY
    first = await mesh.send(user, chat.id, "Какой класс бетона указан на первом листе?")
    assert first[-1].HasField("final"), first[-1]
    assert first[-1].final.message.search_results
    follow = await mesh.send(user, chat.id, "а на втором листе?")
    assert follow[-1].HasField("final"), follow[-1]
    results = follow[-1].final.message.search_results
    assert results[0].page == 2 and "B30" in results[0].text
    assert results[0].filename == "kzh-2.pdf"
    assert gemini.requests == []
