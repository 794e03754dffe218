"""Chat as a product: citations of the sources an answer used, follow-up questions that
search with a query rewritten from the history, regenerating an answer and editing the
last message (the replaced ones kept as superseded), images sent by the user. The real
auth and storage services, the RAG double and the loopback Gemini server (see
conftest.py)."""

from __future__ import annotations

import asyncio
import io
import zlib
from typing import Any

import grpc
import pytest
from PIL import Image

from aivera.chat.v1 import chat_pb2
from aivera.storage.v1 import storage_pb2
from services.chat import followup, prompts, user_images
from services.common.errors import Reason, ServiceError
from tests.chat.conftest import Mesh, User, code_of
from tests.chat.fakes import make_pdf, upload
from tests.helpers.errors import reason
from tests.helpers.gemini import GeminiServer, Reply

KEY = "AIzaSyTEST0000000000000000000000000021"
REWRITE = followup.REWRITE_SYSTEM[:40]


async def _listed(mesh: Mesh, user: User, chat_id: str, **kw: Any) -> list[chat_pb2.Message]:
    reply = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(chat_id=chat_id, page_size=200, **kw), metadata=user.md
    )
    return list(reply.messages)


def _final(events: list[chat_pb2.ChatEvent]) -> chat_pb2.Message:
    assert events[-1].HasField("final"), events[-1]
    return events[-1].final.message


# -- citations ------------------------------------------------------------------------------
async def test_answer_markers_become_citations_of_stored_search_results(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(
        Reply.text("Бетон B25 [2]; узел — на чертеже [3][2]. Сноска [9], ссылка [1](http://x).")
    )
    final = _final(await mesh.send(user, chat.id, "Какой бетон?"))
    # The model saw each block with its ref and how to cite.
    context = gemini.requests[0].texts()[-1]
    assert '"ref": 1, "id": "b-title"' in context and '"ref": 3, "id": "b-drawing"' in context
    assert prompts.CITE_INSTRUCTION in context
    # [2] and [3] in order of first mention, each once; [9] is no result, [1](…) a link.
    assert [(c.marker, c.search_result_index, c.block_id) for c in final.citations] == [
        (2, 1, "b-text"),
        (3, 2, "b-drawing"),
    ]
    drawing = final.citations[1]
    assert drawing.filename == "kzh-1.pdf" and drawing.page == 1
    assert drawing.document_id == final.search_results[2].document_id
    assert drawing.box.normalized.left == pytest.approx(0.20)
    assert final.search_results[2].filename == "kzh-1.pdf"
    # ListMessages returns the same citations from what is stored.
    listed = (await _listed(mesh, user, chat.id))[-1]
    assert list(listed.citations) == list(final.citations)
    # Another user's chat stays NOT_FOUND.
    other = await mesh.new_user()
    assert (
        await code_of(
            mesh.stub.ListMessages(chat_pb2.ListMessagesRequest(chat_id=chat.id), metadata=other.md)
        )
        == grpc.StatusCode.NOT_FOUND
    )


# -- follow-up questions --------------------------------------------------------------------
async def test_follow_up_searches_with_the_flash_rewrite(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(Reply.text("B25 [2]"))
    await mesh.send(user, chat.id, "Какой бетон на первом листе?")
    # A first question searches as asked (page references as numbers), no rewrite.
    assert mesh.rag.searches[-1][1] == "Какой бетон лист 1?"
    assert len(gemini.requests) == 1
    gemini.reset()
    gemini.script(Reply.text("«Класс бетона, КЖ-1, лист 2»", prompt_tokens=7), Reply.text("B30"))
    final = _final(await mesh.send(user, chat.id, "а на втором листе?"))
    rewrite, answer = gemini.requests
    assert rewrite.system_instruction.startswith(REWRITE) and rewrite.tools == []
    transcript = rewrite.texts()[0]
    assert "Какой бетон на первом листе?" in transcript and "B25 [2]" in transcript
    assert transcript.endswith("а на втором листе?")
    assert mesh.rag.searches[-1][1] == "Класс бетона, КЖ-1, лист 2"
    # The answer sees the history and the question as asked.
    assert answer.texts()[:2] == ["Какой бетон на первом листе?", "B25 [2]"]
    assert "а на втором листе?" in answer.texts()[2]
    assert list(final.models_used) == ["gemini-2.5-flash"]
    assert final.usage.input_tokens == 7 + 11  # both calls counted


async def test_complex_flash_stage_sees_the_history(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(Reply.text("B25."))
    await mesh.send(user, chat.id, "Какой бетон у фундамента?")
    gemini.reset()
    gemini.script(Reply.text("бетон колонны"), Reply.text("b-text: B25"), Reply.text("B25."))
    await mesh.send(user, chat.id, "А у колонны?", model_profile=chat_pb2.MODEL_PROFILE_COMPLEX)
    _, flash, pro = gemini.requests
    assert flash.system_instruction.startswith("Ты — этап извлечения данных")
    assert [c["role"] for c in flash.contents] == ["user", "model", "user"]
    assert flash.texts()[:2] == ["Какой бетон у фундамента?", "B25."]
    assert pro.texts()[:2] == ["Какой бетон у фундамента?", "B25."]


async def test_failed_rewrite_falls_back_to_the_heuristic(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(Reply.text("B25."))
    await mesh.send(user, chat.id, "Какой класс бетона на первом листе?")
    gemini.reset()
    gemini.script(Reply.http_error(500, "INTERNAL", "boom"), Reply.text("B30."))
    final = _final(await mesh.send(user, chat.id, "А на втором листе?"))
    assert final.content == "B30."
    assert mesh.rag.searches[-1][1] == "А лист 2? Какой класс бетона ?"


def test_heuristic_query() -> None:
    history = [
        (chat_pb2.MESSAGE_ROLE_USER, "Какой класс бетона указан на первом листе?"),
        (chat_pb2.MESSAGE_ROLE_ASSISTANT, "B25 [1]"),
    ]
    # The follow-up's page replaces the previous one; ordinals become numbers.
    assert followup.heuristic_query(history, "а на втором листе?") == (
        "а лист 2? Какой класс бетона указан ?"
    )
    # Without a page of its own the previous question's page stays.
    assert followup.heuristic_query(history, "А арматура?") == (
        "А арматура? Какой класс бетона указан лист 1?"
    )
    # A long standalone question is searched as asked; no history, no join.
    long = "Опиши все марки бетона и арматуры фундаментов, колонн и перекрытий этого здания"
    assert followup.heuristic_query(history[:0], "а на втором листе?") == "а лист 2?"
    assert followup.heuristic_query(history, long.replace("этого ", "")) == long.replace(
        "этого ", ""
    )
    assert followup.normalize_pages("стр. 3, page 4, second sheet") == (
        "страница 3, page 4, sheet 2"
    )


# -- regenerate and edit --------------------------------------------------------------------
async def test_regenerate_keeps_the_previous_answer_as_an_alternative(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.text("Первый ответ."))
    first = _final(await mesh.send(user, chat.id, "Вопрос?"))
    gemini.reset()
    gemini.script(Reply.text("Второй ответ."))
    call = mesh.stub.RegenerateMessage(
        chat_pb2.RegenerateMessageRequest(chat_id=chat.id, message_id=first.id), metadata=user.md
    )
    events = [e async for e in call]
    accepted = events[0].accepted.user_message
    assert accepted.content == "Вопрос?" and accepted.id == first.reply_to_message_id
    second = _final(events)
    assert second.content == "Второй ответ." and second.reply_to_message_id == accepted.id
    # The model answered the same question without the old answer in its history.
    (request,) = gemini.requests
    assert "Первый ответ." not in "".join(request.texts())
    assert "Вопрос?" in request.texts()[0]
    listed = await _listed(mesh, user, chat.id)
    assert [m.content for m in listed] == ["Вопрос?", "Второй ответ."]
    everything = await _listed(mesh, user, chat.id, include_superseded=True)
    assert [(m.content, m.superseded) for m in everything] == [
        ("Вопрос?", False),
        ("Первый ответ.", True),
        ("Второй ответ.", False),
    ]
    tail = await _listed(mesh, user, chat.id, order=chat_pb2.MESSAGE_ORDER_TAIL)
    assert [m.content for m in tail] == ["Вопрос?", "Второй ответ."]

    def regenerate(message_id: str, who: User = user) -> Any:
        return mesh.stub.RegenerateMessage(
            chat_pb2.RegenerateMessageRequest(chat_id=chat.id, message_id=message_id),
            metadata=who.md,
        )

    # The superseded answer is no longer the latest one.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [e async for e in regenerate(first.id)]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "NOT_LATEST_MESSAGE"
    # A user message is not an answer; a bad id is bad input; another user's is NOT_FOUND.
    assert await code_of(regenerate(accepted.id)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(regenerate("nope")) == grpc.StatusCode.INVALID_ARGUMENT
    other = await mesh.new_user(KEY)
    assert await code_of(regenerate(second.id, other)) == grpc.StatusCode.NOT_FOUND
    # After a newer question the old answer cannot be regenerated.
    gemini.script(Reply.text("Третий."))
    await mesh.send(user, chat.id, "Ещё вопрос?")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [e async for e in regenerate(second.id)]
    assert reason(info.value) == "NOT_LATEST_MESSAGE"
    assert len(await _listed(mesh, user, chat.id, include_superseded=True)) == 5


async def test_edit_replaces_the_last_user_message_and_answers_again(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.text("Ответ 1."), Reply.text("Ответ 2."))
    await mesh.send(user, chat.id, "Вопрос 1")
    second = _final(await mesh.send(user, chat.id, "Вопрос 2"))
    gemini.reset()
    gemini.script(Reply.text("Ответ 2'."))

    def edit(message_id: str, text: str, who: User = user) -> Any:
        return mesh.stub.EditMessage(
            chat_pb2.EditMessageRequest(chat_id=chat.id, message_id=message_id, text=text),
            metadata=who.md,
        )

    events = [e async for e in edit(second.reply_to_message_id, "Вопрос 2, исправленный")]
    assert events[0].accepted.user_message.content == "Вопрос 2, исправленный"
    assert _final(events).content == "Ответ 2'."
    (request,) = gemini.requests
    texts = request.texts()
    assert texts[:2] == ["Вопрос 1", "Ответ 1."] and "Вопрос 2, исправленный" in texts[2]
    assert not any("Вопрос 2\n" in t or t == "Вопрос 2" or "Ответ 2." in t for t in texts)
    listed = await _listed(mesh, user, chat.id)
    assert [m.content for m in listed] == [
        "Вопрос 1",
        "Ответ 1.",
        "Вопрос 2, исправленный",
        "Ответ 2'.",
    ]
    everything = await _listed(mesh, user, chat.id, include_superseded=True)
    assert [m.content for m in everything if m.superseded] == ["Вопрос 2", "Ответ 2."]
    # Only the latest user message; not an answer; text checked; another user NOT_FOUND.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [e async for e in edit(listed[0].id, "Вопрос 1, исправленный")]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "NOT_LATEST_MESSAGE"
    assert await code_of(edit(listed[3].id, "x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(edit(listed[2].id, "  ")) == grpc.StatusCode.INVALID_ARGUMENT
    other = await mesh.new_user(KEY)
    assert await code_of(edit(listed[2].id, "x", other)) == grpc.StatusCode.NOT_FOUND
    assert len(await _listed(mesh, user, chat.id, include_superseded=True)) == 6


# -- images from the user -------------------------------------------------------------------
def _image_bytes(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 10, 10) if mode == "RGB" else 0).save(out, format=fmt)
    return out.getvalue()


async def _upload(mesh: Mesh, user: User, data: bytes, name: str) -> str:
    return await upload(mesh.storage_stub, data, name, storage_pb2.BUCKET_IMAGES, user.md)


async def test_images_from_the_user_go_to_gemini_and_are_stored(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    png, jpeg, webp = _image_bytes("PNG"), _image_bytes("JPEG"), _image_bytes("WEBP")
    ids = [
        await _upload(mesh, user, png, "photo.png"),
        await _upload(mesh, user, jpeg, "scan.png"),  # sniffed: JPEG whatever the name
        await _upload(mesh, user, webp, "plan.bin"),
    ]
    gemini.script(Reply.text("На фото красный узел."))
    events = await mesh.send(user, chat.id, "Что на фото?", image_file_ids=ids)
    assert _final(events).content == "На фото красный узел."
    (request,) = gemini.requests
    assert request.inline_images() == [
        ("image/png", png),
        ("image/jpeg", jpeg),
        ("image/webp", webp),
    ]
    sent = events[0].accepted.user_message.images
    assert [(i.kind, i.file_id, i.mime_type, i.width, i.height) for i in sent] == [
        (chat_pb2.IMAGE_KIND_USER, ids[0], "image/png", 40, 30),
        (chat_pb2.IMAGE_KIND_USER, ids[1], "image/jpeg", 40, 30),
        (chat_pb2.IMAGE_KIND_USER, ids[2], "image/webp", 40, 30),
    ]
    listed = await _listed(mesh, user, chat.id)
    assert [i.file_id for i in listed[0].images] == ids and listed[0].images[0].size_bytes == len(
        png
    )
    # Regenerating shows the model the same images.
    gemini.reset()
    gemini.script(Reply.text("Узел."))
    call = mesh.stub.RegenerateMessage(
        chat_pb2.RegenerateMessageRequest(chat_id=chat.id, message_id=listed[1].id),
        metadata=user.md,
    )
    assert _final([e async for e in call]).content == "Узел."
    assert [m for m, _ in gemini.requests[0].inline_images()] == [
        "image/png",
        "image/jpeg",
        "image/webp",
    ]
    # The complex pipeline: the flash stage and the pro model both see the image.
    chat = await mesh.chat_with_document(user)
    gemini.reset()
    gemini.script(Reply.text("красный узел"), Reply.text("Красный."))
    await mesh.send(
        user,
        chat.id,
        "Что на фото?",
        image_file_ids=ids[:1],
        model_profile=chat_pb2.MODEL_PROFILE_COMPLEX,
    )
    flash, pro = gemini.requests
    assert flash.inline_images() == [("image/png", png)]
    assert pro.inline_images() == [("image/png", png)]


async def test_images_are_checked_before_anything_is_stored(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    text = await upload(
        mesh.storage_stub,
        b"not an image at all",
        "photo.txt",
        storage_pb2.BUCKET_DOCUMENTS,
        user.md,
    )
    huge = await _upload(mesh, user, _image_bytes("PNG", (7000, 7000), "1"), "huge.png")
    cut = await _upload(mesh, user, _image_bytes("PNG")[:40], "cut.png")
    other = await mesh.new_user(KEY)
    theirs = await _upload(mesh, other, _image_bytes("PNG"), "theirs.png")
    small = await _upload(mesh, user, _image_bytes("PNG"), "small.png")

    async def refused(ids: list[str]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, "Что на фото?", image_file_ids=ids)
        return info.value.code(), reason(info.value)

    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert await refused([text]) == (bad, "UNSUPPORTED_FORMAT")
    assert await refused([cut]) == (bad, "UNSUPPORTED_FORMAT")
    # 49 Mpx against a budget of 40: refused from the header, no pixel decoded.
    assert await refused([huge]) == (bad, "IMAGE_TOO_LARGE")
    assert await refused([small] * 1 + [theirs]) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert (await refused(["nope"]))[0] == bad
    many = [await _upload(mesh, user, _image_bytes("PNG", (2, 2 + n)), "x.png") for n in range(9)]
    assert (await refused(many))[0] == bad
    assert await _listed(mesh, user, chat.id) == []
    assert gemini.requests == []


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_sniffing_and_the_pixel_budget_read_only_the_header() -> None:
    png = _image_bytes("PNG", (300, 200))
    assert user_images.sniff(png) == "image/png"
    assert user_images.sniff(b"GIF89a....") is None
    assert user_images.inspect(png, max_pixels=60_000, max_bytes=1 << 20) == ("image/png", 300, 200)
    with pytest.raises(ServiceError) as info:
        user_images.inspect(png, max_pixels=59_999, max_bytes=1 << 20)
    assert info.value.metadata == {"field": "image_file_ids", "limit": "pixels", "value": "59999"}
    with pytest.raises(ServiceError):
        user_images.inspect(png, max_pixels=60_000, max_bytes=len(png) - 1)
    # A PNG header claiming 100 000 × 100 000 pixels over nothing: refused, never decoded.
    header = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", (100_000).to_bytes(4, "big") * 2 + b"\x01\x00\x00\x00\x00"
    )
    header += _chunk(b"IDAT", b"\x00" * 8)
    with pytest.raises(ServiceError) as info:
        user_images.inspect(header, max_pixels=40_000_000, max_bytes=1 << 20)
    assert info.value.reason == Reason.IMAGE_TOO_LARGE


# -- search in chats ------------------------------------------------------------------------
async def test_search_messages_full_text_in_russian_and_english(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    concrete = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(title="Бетон"), metadata=user.md
    )
    rebar = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="Rebar"), metadata=user.md)
    gemini.script(
        Reply.text("Класс бетона B25 для фундаментов."),
        Reply.text("Rebars are spaced at 200 mm."),
        Reply.text("Diameter 12 mm."),
    )
    await mesh.send(user, concrete.id, "Какой класс бетона у фундамента?")
    answer = _final(await mesh.send(user, rebar.id, "Reinforcement bar spacing?"))

    async def search(query: str, who: User = user, **kw: Any) -> Any:
        return await mesh.stub.SearchMessages(
            chat_pb2.SearchMessagesRequest(query=query, **kw), metadata=who.md
        )

    # Russian word forms («бетоном» → «бетон»), the newest of equal rank first.
    found = await search("бетоном")
    assert [h.message.content for h in found.hits] == [
        "Класс бетона B25 для фундаментов.",
        "Какой класс бетона у фундамента?",
    ]
    assert found.hits[0].chat_title == "Бетон" and "«бетона»" in found.hits[0].snippet
    # English forms («rebar» finds «Rebars»), in one chat only.
    found = await search("rebar", chat_id=rebar.id)
    assert [h.message.id for h in found.hits] == [answer.id]
    assert (await search("rebar", chat_id=concrete.id)).hits == []
    # Pages: one hit each, nothing twice.
    first = await search("класс", page_size=1)
    second = await search("класс", page_size=1, page_token=first.next_page_token)
    assert len(first.hits) == len(second.hits) == 1 and not second.next_page_token
    assert first.hits[0].message.id != second.hits[0].message.id
    # A superseded message is not searched.
    edit = mesh.stub.EditMessage(
        chat_pb2.EditMessageRequest(
            chat_id=rebar.id, message_id=answer.reply_to_message_id, text="Bar diameter?"
        ),
        metadata=user.md,
    )
    _ = [e async for e in edit]
    assert (await search("spacing")).hits == []
    assert len((await search("diameter")).hits) == 2
    # Bad input; another user sees nothing and gets NOT_FOUND for the chat.
    assert await code_of(search("  ")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(search("б" * 501)) == grpc.StatusCode.INVALID_ARGUMENT
    other = await mesh.new_user()
    assert (await search("бетон", other)).hits == []
    assert await code_of(search("бетон", other, chat_id=concrete.id)) == grpc.StatusCode.NOT_FOUND
    # A deleted chat is not searched.
    await mesh.stub.DeleteChat(chat_pb2.DeleteChatRequest(id=concrete.id), metadata=user.md)
    assert (await search("бетон")).hits == []


# -- management -----------------------------------------------------------------------------
async def test_detach_file(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    pdf = await upload(
        mesh.storage_stub, make_pdf(), "a.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )

    def detach(file_id: str, who: User = user, chat_id: str = chat.id) -> Any:
        return mesh.stub.DetachFile(
            chat_pb2.DetachFileRequest(chat_id=chat_id, file_id=file_id), metadata=who.md
        )

    # While the file is being ingested it cannot be detached.
    mesh.rag.ingest_hold = hold = asyncio.Event()
    try:
        await mesh.stub.AttachFile(
            chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
        )
        assert await code_of(detach(pdf)) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        hold.set()
        mesh.rag.ingest_hold = None
    for _ in range(100):
        got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
        if got.attachments[0].status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
            break
        await asyncio.sleep(0.05)
    document_id = got.attachments[0].document_id
    assert document_id
    other = await mesh.new_user()
    assert await code_of(detach(pdf, other)) == grpc.StatusCode.NOT_FOUND
    assert await code_of(detach("nope")) == grpc.StatusCode.INVALID_ARGUMENT
    await detach(pdf)
    assert mesh.rag.deleted[-1] == document_id  # gone from the chat's knowledge base
    got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
    assert list(got.attachments) == []
    assert await code_of(detach(pdf)) == grpc.StatusCode.NOT_FOUND
    # Attached again: a new document.
    await mesh.stub.AttachFile(
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
    )
    got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
    assert len(got.attachments) == 1
