"""Handlers of aivera.training.v1.CloneService: read the request (the update mask too),
call `Clones`, answer protos."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import clones_pb2
from services.common import context as ctx
from services.common import pages
from services.common.protoutil import mask_paths
from services.training.clones import Clones
from services.training.convert import clone_proto

C = clones_pb2
UPDATABLE = ("name", "persona_prompt", "active_model_id")


class CloneService:
    def __init__(self, clones: Clones) -> None:
        self.clones = clones

    async def CreateClone(self, request: C.CreateCloneRequest, context: Any) -> C.Clone:
        row = await self.clones.create(
            ctx.require_user_id(),
            name=request.name,
            persona_prompt=request.persona_prompt,
            base_model=request.base_model,
        )
        return clone_proto(row)

    async def GetClone(self, request: C.GetCloneRequest, context: Any) -> C.Clone:
        return clone_proto(await self.clones.get(ctx.require_user_id(), request.id))

    async def ListClones(self, request: C.ListClonesRequest, context: Any) -> C.ListClonesResponse:
        user = ctx.require_user_id()
        page = pages.request(request.page_size, request.page_token)
        rows, token = await self.clones.list_clones(user, page)
        return C.ListClonesResponse(clones=[clone_proto(r) for r in rows], next_page_token=token)

    async def UpdateClone(self, request: C.UpdateCloneRequest, context: Any) -> C.Clone:
        user = ctx.require_user_id()
        paths = mask_paths(request.update_mask, UPDATABLE)
        clone = request.clone
        row = await self.clones.update(
            user,
            clone.id,
            name=clone.name if "name" in paths else None,
            persona_prompt=clone.persona_prompt if "persona_prompt" in paths else None,
            active_model_id=clone.active_model_id if "active_model_id" in paths else None,
        )
        return clone_proto(row)

    async def DeleteClone(self, request: C.DeleteCloneRequest, context: Any) -> empty_pb2.Empty:
        await self.clones.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def AddKnowledge(
        self, request: C.AddKnowledgeRequest, context: Any
    ) -> C.AddKnowledgeResponse:
        document_id = await self.clones.add_knowledge(
            ctx.require_user_id(), request.id, request.file_id
        )
        return C.AddKnowledgeResponse(document_id=document_id)

    async def RemoveKnowledge(
        self, request: C.RemoveKnowledgeRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.clones.remove_knowledge(ctx.require_user_id(), request.id, request.document_id)
        return empty_pb2.Empty()
