"""ProjectService: each user's folder tree of documents and chats; a chat in a folder
searches that folder's documents; the answers saved against a document. The real auth
and storage services, the RAG double (it honours Search's document filter) and the
loopback Gemini server (see conftest.py)."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from aivera.chat.v1 import chat_pb2, projects_pb2, projects_pb2_grpc
from tests.chat.conftest import Mesh, User, code_of
from tests.helpers.gemini import GeminiServer, Reply

KEY = "AIzaSyTEST0000000000000000000000000022"


def _stub(mesh: Mesh) -> projects_pb2_grpc.ProjectServiceStub:
    return projects_pb2_grpc.ProjectServiceStub(mesh.chat_channel)


async def _folder(mesh: Mesh, user: User, name: str, parent: str = "") -> projects_pb2.Folder:
    folder: projects_pb2.Folder = await _stub(mesh).CreateFolder(
        projects_pb2.CreateFolderRequest(name=name, parent_id=parent), metadata=user.md
    )
    return folder


async def _tree(mesh: Mesh, user: User, folder_id: str = "") -> list[projects_pb2.FolderNode]:
    reply = await _stub(mesh).GetProjectTree(
        projects_pb2.GetProjectTreeRequest(folder_id=folder_id), metadata=user.md
    )
    return list(reply.roots)


def _move(folder_id: str, parent_id: str) -> projects_pb2.UpdateFolderRequest:
    return projects_pb2.UpdateFolderRequest(
        folder=projects_pb2.Folder(id=folder_id, parent_id=parent_id),
        update_mask=field_mask_pb2.FieldMask(paths=["parent_id"]),
    )


async def test_folder_tree_of_documents_and_chats(mesh: Mesh, gemini: GeminiServer) -> None:
    user, other = await mesh.new_user(), await mesh.new_user()
    stub = _stub(mesh)
    project = await _folder(mesh, user, "Объект А")
    kzh = await _folder(mesh, user, "КЖ", project.id)
    parts = await _folder(mesh, user, "Разделы", kzh.id)
    assert kzh.parent_id == project.id and project.parent_id == ""
    # Names: unique among siblings (case-insensitive), not empty.
    assert await code_of(_folder(mesh, user, "кж", project.id)) == grpc.StatusCode.ALREADY_EXISTS
    assert await code_of(_folder(mesh, user, " ")) == grpc.StatusCode.INVALID_ARGUMENT
    await _folder(mesh, other, "Объект А")  # another user's tree is separate
    # A chat and a document in КЖ.
    chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(title="Армирование", folder_id=kzh.id), metadata=user.md
    )
    assert chat.folder_id == kzh.id
    kb = mesh.rag.add_kb(user.id)
    doc = await mesh.rag.add_document(user.id, kb, mesh.storage_stub, user.md)
    placed = await stub.AddFolderDocument(
        projects_pb2.AddFolderDocumentRequest(folder_id=kzh.id, document_id=doc.id),
        metadata=user.md,
    )
    assert (placed.knowledge_base_id, placed.filename) == (kb, "kzh-1.pdf")
    again = await stub.AddFolderDocument(
        projects_pb2.AddFolderDocumentRequest(folder_id=kzh.id, document_id=doc.id),
        metadata=user.md,
    )
    assert again.add_time == placed.add_time
    (root,) = await _tree(mesh, user)
    assert root.folder.name == "Объект А"
    (node,) = root.children
    assert node.folder.id == kzh.id and [c.folder.id for c in node.children] == [parts.id]
    assert [d.document_id for d in node.documents] == [doc.id]
    assert [c.id for c in node.chats] == [chat.id]
    assert [n.folder.id for n in await _tree(mesh, user, kzh.id)] == [kzh.id]
    # Rename; move to the top; a move into its own subtree is refused.
    renamed = await stub.UpdateFolder(
        projects_pb2.UpdateFolderRequest(
            folder=projects_pb2.Folder(id=parts.id, name="Разделы проекта"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        metadata=user.md,
    )
    assert renamed.name == "Разделы проекта"
    assert (await stub.UpdateFolder(_move(parts.id, ""), metadata=user.md)).parent_id == ""
    assert sorted(n.folder.name for n in await _tree(mesh, user)) == [
        "Объект А",
        "Разделы проекта",
    ]
    assert await code_of(stub.UpdateFolder(_move(project.id, kzh.id), metadata=user.md)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(stub.UpdateFolder(_move(kzh.id, kzh.id), metadata=user.md)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # At most 8 levels.
    parent = ""
    for n in range(8):
        parent = (await _folder(mesh, user, f"L{n}", parent)).id
    assert await code_of(_folder(mesh, user, "L8", parent)) == grpc.StatusCode.INVALID_ARGUMENT
    # Another user: NOT_FOUND for each of the user's folders, documents and chats.
    assert await code_of(
        stub.GetFolder(projects_pb2.GetFolderRequest(id=kzh.id), metadata=other.md)
    ) == (grpc.StatusCode.NOT_FOUND)
    assert [n.folder.name for n in await _tree(mesh, other)] == ["Объект А"]
    theirs = (await _tree(mesh, other))[0].folder.id
    for call in (
        _folder(mesh, other, "x", kzh.id),
        stub.UpdateFolder(_move(kzh.id, ""), metadata=other.md),
        stub.DeleteFolder(projects_pb2.DeleteFolderRequest(id=kzh.id), metadata=other.md),
        stub.AddFolderDocument(
            projects_pb2.AddFolderDocumentRequest(folder_id=theirs, document_id=doc.id),
            metadata=other.md,
        ),
        stub.RemoveFolderDocument(
            projects_pb2.RemoveFolderDocumentRequest(folder_id=kzh.id, document_id=doc.id),
            metadata=other.md,
        ),
        stub.GetProjectTree(
            projects_pb2.GetProjectTreeRequest(folder_id=kzh.id), metadata=other.md
        ),
        mesh.stub.CreateChat(chat_pb2.CreateChatRequest(folder_id=kzh.id), metadata=other.md),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    move_chat = mesh.stub.UpdateChat(
        chat_pb2.UpdateChatRequest(
            chat=chat_pb2.Chat(id=chat.id, folder_id=theirs),
            update_mask=field_mask_pb2.FieldMask(paths=["folder_id"]),
        ),
        metadata=user.md,
    )
    assert await code_of(move_chat) == grpc.StatusCode.NOT_FOUND
    # Taking the document out; deleting the project: its chat moves to the top.
    await stub.RemoveFolderDocument(
        projects_pb2.RemoveFolderDocumentRequest(folder_id=kzh.id, document_id=doc.id),
        metadata=user.md,
    )
    assert list((await _tree(mesh, user, kzh.id))[0].documents) == []
    await stub.DeleteFolder(projects_pb2.DeleteFolderRequest(id=project.id), metadata=user.md)
    assert await code_of(
        stub.GetFolder(projects_pb2.GetFolderRequest(id=kzh.id), metadata=user.md)
    ) == (grpc.StatusCode.NOT_FOUND)
    got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
    assert got.folder_id == ""
    assert "Объект А" not in [n.folder.name for n in await _tree(mesh, user)]


async def test_a_chat_in_a_folder_searches_its_documents(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    stub = _stub(mesh)
    project = await _folder(mesh, user, "Проект")
    sub = await _folder(mesh, user, "Подраздел", project.id)
    kb = mesh.rag.add_kb(user.id)
    inside = await mesh.rag.add_document(user.id, kb, mesh.storage_stub, user.md)
    await mesh.rag.add_document(user.id, kb, mesh.storage_stub, user.md)  # not placed
    await stub.AddFolderDocument(
        projects_pb2.AddFolderDocumentRequest(folder_id=sub.id, document_id=inside.id),
        metadata=user.md,
    )
    chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(folder_id=project.id), metadata=user.md
    )
    gemini.script(Reply.text("Бетон B25 [2]."))
    events = await mesh.send(user, chat.id, "Какой бетон?")
    final = events[-1].final.message
    # One Search over the folder subtree's documents only.
    assert mesh.rag.searches[-1][0] == [kb] and mesh.rag.search_documents[-1] == [inside.id]
    assert {r.document_id for r in final.search_results} == {inside.id}
    # The answer is listed against the document.
    listed = await stub.ListDocumentAnswers(
        projects_pb2.ListDocumentAnswersRequest(document_id=inside.id), metadata=user.md
    )
    assert [a.id for a in listed.answers] == [final.id]
    assert listed.answers[0].citations[0].document_id == inside.id
    other = await mesh.new_user()
    request = projects_pb2.ListDocumentAnswersRequest(document_id=inside.id)
    assert await code_of(stub.ListDocumentAnswers(request, metadata=other.md)) == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = projects_pb2.ListDocumentAnswersRequest(document_id="nope")
    assert await code_of(stub.ListDocumentAnswers(bad, metadata=user.md)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # A chat with its own knowledge base in the folder searches both.
    own = mesh.rag.add_kb(user.id)
    own_doc = await mesh.rag.add_document(user.id, own, mesh.storage_stub, user.md)
    chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(folder_id=sub.id, knowledge_base_ids=[own]), metadata=user.md
    )
    # Both documents have a block `b-drawing`: the model tells them apart by document.
    key = f"{inside.id[:8]}:b-drawing"
    gemini.reset()
    gemini.script(Reply.call("request_images", {"block_ids": [key]}), Reply.text("Узел."))
    events = await mesh.send(user, chat.id, "Какой бетон?")
    assert mesh.rag.searches[-2:] == [([own], "Какой бетон?"), ([kb], "Какой бетон?")]
    final = events[-1].final.message
    assert {r.document_id for r in final.search_results} == {inside.id, own_doc.id}
    assert len(final.search_results) == 6  # three blocks of each, none lost to the other
    context = gemini.requests[0].texts()[-1]
    assert f'"id": "{key}"' in context and f'"id": "{own_doc.id[:8]}:b-drawing"' in context
    # The crop comes from the document the model named; stored ids stay the real ones.
    assert [i.document_id for i in final.images] == [inside.id]
    assert {r.block_id for r in final.search_results} == {"b-title", "b-text", "b-drawing"}
