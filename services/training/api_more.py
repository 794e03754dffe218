"""ModelService, NotificationService and CloneService."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.training.v1 import clones_pb2, models_pb2, notifications_pb2
from services.common import context as ctx
from services.common.errors import (
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    not_found,
)
from services.common.pages import page_size
from services.common.protoutil import mask_paths, parse_uuid
from services.common.server import App
from services.training import store
from services.training.api_datasets import check_base_model, check_name
from services.training.api_jobs import _newest_page, _position, load_clone
from services.training.config import TrainingSettings
from services.training.hub import Hub, wait
from services.training.storage_io import Storage

log = logging.getLogger("aivera.training")
M, N, C = models_pb2, notifications_pb2, clones_pb2


async def load_model(conn: Any, user: str, raw_id: str, field: str = "id") -> Any:
    model_id = parse_uuid(raw_id, field=field)
    row = await conn.fetchrow(
        "SELECT * FROM model_artifacts WHERE id = $1 AND user_id = $2", model_id, user
    )
    if row is None:
        raise not_found("model", raw_id)
    return row


class ModelService:
    def __init__(self, app: App, settings: TrainingSettings) -> None:
        self.app = app
        self.settings = settings

    async def ListModels(self, request: M.ListModelsRequest, context: Any) -> M.ListModelsResponse:
        user = ctx.require_user_id()
        size = page_size(request.page_size)
        pos = _position(request.page_token)
        clone_id = parse_uuid(request.clone_id, field="clone_id") if request.clone_id else None
        args: list[Any] = [user, clone_id, size + 1]
        where = ""
        if pos is not None:
            args += list(pos)
            where = "AND (created_at, id) < ($4, $5)"
        rows = await self.app.pool.fetch(
            f"""SELECT * FROM model_artifacts WHERE user_id = $1
                AND ($2::uuid IS NULL OR clone_id = $2) {where}
                ORDER BY created_at DESC, id DESC LIMIT $3""",
            *args,
        )
        return M.ListModelsResponse(
            models=[store.model_proto(r) for r in rows[:size]],
            next_page_token=_newest_page(rows, size),
        )

    async def GetModel(self, request: M.GetModelRequest, context: Any) -> M.ModelArtifact:
        return store.model_proto(await load_model(self.app.pool, ctx.require_user_id(), request.id))

    async def CreateModelDownloadUrl(
        self, request: M.CreateModelDownloadUrlRequest, context: Any
    ) -> M.CreateModelDownloadUrlResponse:
        user = ctx.require_user_id()
        ttl = request.ttl_seconds or 3600
        if not 60 <= ttl <= 86400:
            raise InvalidArgument("ttl_seconds must be between 60 and 86400", field="ttl_seconds")
        row = await load_model(self.app.pool, user, request.id)
        storage = Storage(
            self.app.channel(self.settings.storage_addr), self.settings.internal_token()
        )
        out = M.CreateModelDownloadUrlResponse()
        expire: timestamp_pb2.Timestamp | None = None
        for f in row["files"]:
            try:
                url, exp = await storage.download_url(f["file_id"], ttl)
            except NotFound:
                raise Unavailable(f"the file {f['name']} of the model is missing") from None
            out.urls.add(name=f["name"], url=url, size_bytes=f["size_bytes"])
            if expire is None or exp.ToDatetime() < expire.ToDatetime():
                expire = exp
        if expire is not None:
            out.expire_time.CopyFrom(expire)
        return out


class NotificationService:
    def __init__(self, app: App, settings: TrainingSettings, hub: Hub) -> None:
        self.app = app
        self.settings = settings
        self.hub = hub

    async def ListNotifications(
        self, request: N.ListNotificationsRequest, context: Any
    ) -> N.ListNotificationsResponse:
        user = ctx.require_user_id()
        size = page_size(request.page_size)
        pos = _position(request.page_token)
        args: list[Any] = [user, request.unread_only, size + 1]
        where = ""
        if pos is not None:
            args += list(pos)
            where = "AND (created_at, id) < ($4, $5)"
        rows = await self.app.pool.fetch(
            f"""SELECT * FROM notifications WHERE user_id = $1 AND (NOT $2 OR NOT read) {where}
                ORDER BY created_at DESC, id DESC LIMIT $3""",
            *args,
        )
        return N.ListNotificationsResponse(
            notifications=[store.notification_proto(r) for r in rows[:size]],
            next_page_token=_newest_page(rows, size),
        )

    async def WatchNotifications(
        self, request: N.WatchNotificationsRequest, context: Any
    ) -> AsyncIterator[N.NotificationEvent]:
        user = ctx.require_user_id()
        pool = self.app.pool
        beat = self.settings.training_watch_heartbeat_seconds
        with self.hub.subscribe(store.NOTIFICATIONS_CHANNEL, user) as woken:
            since: dt.datetime = await pool.fetchval("SELECT clock_timestamp()")
            seen: set[uuid.UUID] = set()
            if request.include_unread:
                rows = await pool.fetch(
                    """SELECT * FROM (SELECT * FROM notifications WHERE user_id = $1 AND NOT read
                       ORDER BY created_at DESC LIMIT 100) t ORDER BY created_at, id""",
                    user,
                )
                for r in rows:
                    seen.add(r["id"])
                    yield N.NotificationEvent(notification=store.notification_proto(r))
            idle = 0.0
            while True:
                rows = await pool.fetch(
                    """SELECT * FROM notifications WHERE user_id = $1 AND created_at >= $2
                       ORDER BY created_at, id""",
                    user,
                    since - dt.timedelta(seconds=1),
                )
                sent = False
                for r in rows:
                    if r["id"] in seen:
                        continue
                    seen.add(r["id"])
                    sent = True
                    yield N.NotificationEvent(notification=store.notification_proto(r))
                if rows:
                    since = max(since, rows[-1]["created_at"])
                if sent:
                    idle = 0.0
                started = asyncio.get_running_loop().time()
                await wait(woken, min(1.0, beat))
                idle += asyncio.get_running_loop().time() - started
                if idle >= beat:
                    idle = 0.0
                    yield N.NotificationEvent(heartbeat=empty_pb2.Empty())

    async def MarkRead(self, request: N.MarkReadRequest, context: Any) -> N.MarkReadResponse:
        user = ctx.require_user_id()
        if request.all == bool(request.ids):
            raise InvalidArgument("give either ids or all, not both or neither", field="ids")
        if request.all:
            result = await self.app.pool.execute(
                "UPDATE notifications SET read = true WHERE user_id = $1 AND NOT read", user
            )
            return N.MarkReadResponse(marked_count=int(result.split()[-1]))
        if len(request.ids) > 1000:
            raise InvalidArgument("at most 1000 ids", field="ids")
        ids = list({parse_uuid(i, field="ids") for i in request.ids})
        async with self.app.pool.acquire() as conn, conn.transaction():
            mine = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND id = ANY($2::uuid[])",
                user,
                ids,
            )
            if mine != len(ids):
                raise NotFound("a notification was not found")
            result = await conn.execute(
                """UPDATE notifications SET read = true WHERE user_id = $1
                   AND id = ANY($2::uuid[]) AND NOT read""",
                user,
                ids,
            )
        return N.MarkReadResponse(marked_count=int(result.split()[-1]))


def _rag_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what} not found")
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        err: type[ServiceError] = {
            grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        }.get(code, ServiceError)
        out = err(exc.details() or code.name)
        out.code = code
        return out
    return Unavailable(f"RAG service: {exc.details() or code.name}")


class CloneService:
    def __init__(self, app: App, settings: TrainingSettings) -> None:
        self.app = app
        self.settings = settings

    def rag(self) -> rag_pb2_grpc.RagServiceStub:
        return rag_pb2_grpc.RagServiceStub(self.app.channel(self.settings.rag_addr))

    async def _clone(self, conn: Any, user: str, raw_id: str, field: str = "id") -> C.Clone:
        row = await load_clone(conn, user, raw_id, field)
        full = await conn.fetchrow(
            f"SELECT c.*, {store.CLONE_STATUS_SQL} FROM clones c WHERE c.id = $1", row["id"]
        )
        return store.clone_proto(full)

    async def CreateClone(self, request: C.CreateCloneRequest, context: Any) -> C.Clone:
        user = ctx.require_user_id()
        name = check_name(request.name)
        if len(request.persona_prompt) > 8000:
            raise InvalidArgument(
                "persona_prompt must be at most 8000 characters", field="persona_prompt"
            )
        base_model = check_base_model(self.settings, request.base_model)
        clone_id = uuid.uuid4()
        try:
            kb = await self.rag().CreateKnowledgeBase(
                rag_pb2.CreateKnowledgeBaseRequest(
                    name=f"clone {name}"[:200], clone_id=str(clone_id)
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"RAG service: {exc.details() or exc.code().name}") from None
        await self.app.pool.execute(
            """INSERT INTO clones (id, user_id, name, persona_prompt, base_model,
                                   knowledge_base_id) VALUES ($1, $2, $3, $4, $5, $6)""",
            clone_id,
            user,
            name,
            request.persona_prompt,
            base_model,
            kb.id,
        )
        return await self._clone(self.app.pool, user, str(clone_id))

    async def GetClone(self, request: C.GetCloneRequest, context: Any) -> C.Clone:
        return await self._clone(self.app.pool, ctx.require_user_id(), request.id)

    async def ListClones(self, request: C.ListClonesRequest, context: Any) -> C.ListClonesResponse:
        user = ctx.require_user_id()
        size = page_size(request.page_size)
        pos = _position(request.page_token)
        args: list[Any] = [user, size + 1]
        where = ""
        if pos is not None:
            args += list(pos)
            where = "AND (c.created_at, c.id) < ($3, $4)"
        rows = await self.app.pool.fetch(
            f"""SELECT c.*, {store.CLONE_STATUS_SQL} FROM clones c
                WHERE c.user_id = $1 AND c.deleted_at IS NULL {where}
                ORDER BY c.created_at DESC, c.id DESC LIMIT $2""",
            *args,
        )
        return C.ListClonesResponse(
            clones=[store.clone_proto(r) for r in rows[:size]],
            next_page_token=_newest_page(rows, size),
        )

    async def UpdateClone(self, request: C.UpdateCloneRequest, context: Any) -> C.Clone:
        user = ctx.require_user_id()
        paths = mask_paths(request.update_mask, ("name", "persona_prompt", "active_model_id"))
        clone = request.clone
        async with self.app.pool.acquire() as conn, conn.transaction():
            row = await load_clone(conn, user, clone.id, field="clone.id")
            sets: list[str] = []
            args: list[Any] = [row["id"]]
            if "name" in paths:
                args.append(check_name(clone.name, "clone.name"))
                sets.append(f"name = ${len(args)}")
            if "persona_prompt" in paths:
                if len(clone.persona_prompt) > 8000:
                    raise InvalidArgument(
                        "persona_prompt must be at most 8000 characters",
                        field="clone.persona_prompt",
                    )
                args.append(clone.persona_prompt)
                sets.append(f"persona_prompt = ${len(args)}")
            if "active_model_id" in paths:
                model_id = None
                if clone.active_model_id:
                    model = await conn.fetchrow(
                        "SELECT * FROM model_artifacts WHERE id = $1 AND user_id = $2",
                        parse_uuid(clone.active_model_id, field="clone.active_model_id"),
                        user,
                    )
                    if model is None:
                        raise not_found("model", clone.active_model_id)
                    if model["base_model"] != row["base_model"]:
                        raise InvalidArgument(
                            "the model's base model differs from the clone's",
                            field="clone.active_model_id",
                        )
                    model_id = model["id"]
                args.append(model_id)
                sets.append(f"active_model_id = ${len(args)}")
            await conn.execute(
                f"UPDATE clones SET {', '.join(sets)}, updated_at = clock_timestamp() "
                "WHERE id = $1",
                *args,
            )
            return await self._clone(conn, user, clone.id, "clone.id")

    async def DeleteClone(self, request: C.DeleteCloneRequest, context: Any) -> empty_pb2.Empty:
        user = ctx.require_user_id()
        row = await load_clone(self.app.pool, user, request.id)
        if row["knowledge_base_id"]:
            try:
                await self.rag().DeleteKnowledgeBase(
                    rag_pb2.DeleteKnowledgeBaseRequest(id=row["knowledge_base_id"]), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise Unavailable(f"RAG service: {exc.details() or exc.code().name}") from None
        result = await self.app.pool.execute(
            """UPDATE clones SET deleted_at = clock_timestamp()
               WHERE id = $1 AND deleted_at IS NULL""",
            row["id"],
        )
        if result.endswith(" 0"):
            raise not_found("clone", request.id)
        return empty_pb2.Empty()

    async def AddKnowledge(
        self, request: C.AddKnowledgeRequest, context: Any
    ) -> C.AddKnowledgeResponse:
        user = ctx.require_user_id()
        row = await load_clone(self.app.pool, user, request.id)
        if not request.file_id:
            raise InvalidArgument("file_id is required", field="file_id")
        call = self.rag().IngestDocument(
            rag_pb2.IngestDocumentRequest(
                knowledge_base_id=row["knowledge_base_id"], file_id=request.file_id
            ),
            timeout=3600,
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise _rag_error(exc, f"file {request.file_id!r}") from None
        if first is grpc.aio.EOF:
            raise Unavailable("RAG service ended the ingest without a document")

        async def drain() -> None:  # ingestion goes on in RAG; a cancelled stream fails it
            try:
                while await call.read() is not grpc.aio.EOF:
                    continue  # progress events are not needed here, only the end
            except grpc.aio.AioRpcError as exc:
                log.warning("knowledge ingest of %s ended: %s", request.file_id, exc.details())

        self.app.spawn(drain(), name=f"ingest-{first.document_id}")
        return C.AddKnowledgeResponse(document_id=first.document_id)

    async def RemoveKnowledge(
        self, request: C.RemoveKnowledgeRequest, context: Any
    ) -> empty_pb2.Empty:
        user = ctx.require_user_id()
        row = await load_clone(self.app.pool, user, request.id)
        if not request.document_id:
            raise InvalidArgument("document_id is required", field="document_id")
        rag = self.rag()
        try:
            doc = await rag.GetDocument(
                rag_pb2.GetDocumentRequest(id=request.document_id, block_page_size=1), timeout=30
            )
            if doc.document.knowledge_base_id != row["knowledge_base_id"]:
                raise not_found("document", request.document_id)
            await rag.DeleteDocument(
                rag_pb2.DeleteDocumentRequest(id=request.document_id), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise _rag_error(exc, f"document {request.document_id!r}") from None
        return empty_pb2.Empty()
