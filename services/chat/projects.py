"""ProjectService: each user's tree of folders holding documents and chats. Handlers
validate and call the store; `build_tree` (pure) nests the rows the store returns."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from google.protobuf import empty_pb2

from aivera.chat.v1 import projects_pb2
from services.chat import convert
from services.chat.clients import Documents
from services.chat.store import ChatRow, FolderDocumentRow, FolderRow, Store
from services.common import pages
from services.common.context import require_user_id
from services.common.errors import InvalidArgument, ResourceExhausted, not_found
from services.common.protoutil import mask_paths, parse_uuid, timestamp

MAX_NAME = 100
MAX_DEPTH = 8  # levels of folders, the top one included
MAX_FOLDERS = 2000  # folders GetProjectTree returns


def _name(value: str, field: str) -> str:
    name = value.strip()
    if not name:
        raise InvalidArgument("name must not be empty", field=field)
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"name is longer than {MAX_NAME} characters", field=field)
    return name


def folder_proto(row: FolderRow) -> projects_pb2.Folder:
    return projects_pb2.Folder(
        id=str(row.id),
        parent_id="" if row.parent_id is None else str(row.parent_id),
        name=row.name,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )


def document_proto(row: FolderDocumentRow) -> projects_pb2.FolderDocument:
    return projects_pb2.FolderDocument(
        folder_id=str(row.folder_id),
        document_id=str(row.document_id),
        knowledge_base_id=str(row.knowledge_base_id),
        filename=row.filename,
        add_time=timestamp(row.add_time),
    )


def build_tree(
    folders: Sequence[FolderRow],
    documents: Sequence[FolderDocumentRow],
    chats: Sequence[ChatRow],
    root: uuid.UUID | None = None,
) -> list[projects_pb2.FolderNode]:
    """The folders nested under their parents (siblings in the given order), each with
    its documents and chats: the top-level folders, or the one folder `root`."""
    by_id = {f.id: f for f in folders}
    children: dict[uuid.UUID | None, list[FolderRow]] = {}
    for f in folders:
        children.setdefault(f.parent_id if f.parent_id in by_id else None, []).append(f)
    docs: dict[uuid.UUID, list[FolderDocumentRow]] = {}
    for d in documents:
        docs.setdefault(d.folder_id, []).append(d)
    held: dict[uuid.UUID | None, list[ChatRow]] = {}
    for c in chats:
        held.setdefault(c.folder_id, []).append(c)

    def node(f: FolderRow) -> projects_pb2.FolderNode:
        return projects_pb2.FolderNode(
            folder=folder_proto(f),
            children=[node(c) for c in children.get(f.id, ())],
            documents=[document_proto(d) for d in docs.get(f.id, ())],
            chats=[convert.chat(c) for c in held.get(f.id, ())],
        )

    if root is not None:
        return [node(by_id[root])] if root in by_id else []
    return [node(f) for f in children.get(None, ())]


class ProjectServiceServicer:
    def __init__(self, store: Store, documents: Documents) -> None:
        self.store = store
        self.documents = documents

    async def _folder(self, user_id: str, raw_id: str, field: str) -> FolderRow:
        folder = await self.store.get_folder(user_id, parse_uuid(raw_id, field=field))
        if folder is None:
            raise not_found("folder", raw_id)
        return folder

    async def CreateFolder(
        self, request: projects_pb2.CreateFolderRequest, context: Any
    ) -> projects_pb2.Folder:
        user_id = require_user_id()
        name = _name(request.name, "name")
        parent_id = None
        if request.parent_id:
            parent = await self._folder(user_id, request.parent_id, "parent_id")
            if len(await self.store.folder_path(user_id, parent.id)) >= MAX_DEPTH:
                raise InvalidArgument(
                    f"folders nest at most {MAX_DEPTH} levels deep", field="parent_id"
                )
            parent_id = parent.id
        return folder_proto(await self.store.create_folder(user_id, name, parent_id))

    async def GetFolder(
        self, request: projects_pb2.GetFolderRequest, context: Any
    ) -> projects_pb2.Folder:
        return folder_proto(await self._folder(require_user_id(), request.id, "id"))

    async def GetProjectTree(
        self, request: projects_pb2.GetProjectTreeRequest, context: Any
    ) -> projects_pb2.ProjectTree:
        user_id = require_user_id()
        root = None
        if request.folder_id:
            root = (await self._folder(user_id, request.folder_id, "folder_id")).id
        folders, documents, chats = await self.store.tree(user_id, MAX_FOLDERS + 1)
        if len(folders) > MAX_FOLDERS:
            raise ResourceExhausted(
                f"the tree has more than {MAX_FOLDERS} folders",
                metadata={"limit": "folders", "value": str(MAX_FOLDERS)},
            )
        return projects_pb2.ProjectTree(roots=build_tree(folders, documents, chats, root))

    async def UpdateFolder(
        self, request: projects_pb2.UpdateFolderRequest, context: Any
    ) -> projects_pb2.Folder:
        user_id = require_user_id()
        paths = mask_paths(request.update_mask, ("name", "parent_id"))
        folder = await self._folder(user_id, request.folder.id, "folder.id")
        name = _name(request.folder.name, "folder.name") if "name" in paths else None
        parent: tuple[bool, uuid.UUID | None] = (False, None)
        if "parent_id" in paths:
            parent_id = None
            if request.folder.parent_id:
                target = await self._folder(user_id, request.folder.parent_id, "folder.parent_id")
                path = await self.store.folder_path(user_id, target.id)
                if folder.id in path:
                    raise InvalidArgument(
                        "a folder cannot move into itself or its subfolders",
                        field="folder.parent_id",
                    )
                if len(path) + await self.store.subtree_height(folder.id) > MAX_DEPTH:
                    raise InvalidArgument(
                        f"folders nest at most {MAX_DEPTH} levels deep", field="folder.parent_id"
                    )
                parent_id = target.id
            parent = (True, parent_id)
        row = await self.store.update_folder(user_id, folder.id, name, parent)
        if row is None:
            raise not_found("folder", request.folder.id)
        return folder_proto(row)

    async def DeleteFolder(
        self, request: projects_pb2.DeleteFolderRequest, context: Any
    ) -> empty_pb2.Empty:
        user_id = require_user_id()
        if not await self.store.delete_folder(user_id, parse_uuid(request.id, field="id")):
            raise not_found("folder", request.id)
        return empty_pb2.Empty()

    async def AddFolderDocument(
        self, request: projects_pb2.AddFolderDocumentRequest, context: Any
    ) -> projects_pb2.FolderDocument:
        user_id = require_user_id()
        folder = await self._folder(user_id, request.folder_id, "folder_id")
        document_id = parse_uuid(request.document_id, field="document_id")
        info = await self.documents.document(str(document_id), 1)  # NOT_FOUND if not theirs
        row = await self.store.add_folder_document(
            folder.id, document_id, uuid.UUID(info.knowledge_base_id), info.filename
        )
        return document_proto(row)

    async def RemoveFolderDocument(
        self, request: projects_pb2.RemoveFolderDocumentRequest, context: Any
    ) -> empty_pb2.Empty:
        user_id = require_user_id()
        folder_id = parse_uuid(request.folder_id, field="folder_id")
        document_id = parse_uuid(request.document_id, field="document_id")
        if not await self.store.remove_folder_document(user_id, folder_id, document_id):
            raise not_found("document", request.document_id)
        return empty_pb2.Empty()

    async def ListDocumentAnswers(
        self, request: projects_pb2.ListDocumentAnswersRequest, context: Any
    ) -> projects_pb2.ListDocumentAnswersResponse:
        user_id = require_user_id()
        document_id = parse_uuid(request.document_id, field="document_id")
        await self.documents.document(str(document_id), 1)  # NOT_FOUND if not the caller's
        page = pages.request(request.page_size, request.page_token, filter=f"doc={document_id}")
        rows = await self.store.document_answers(user_id, document_id, page)
        answers, token = pages.take(rows, page, key=lambda r: (r.seq,))
        return projects_pb2.ListDocumentAnswersResponse(
            answers=[convert.message(r) for r in answers], next_page_token=token
        )
