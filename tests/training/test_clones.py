"""CloneService against a stand-in RAG service that speaks the RAG contract (the real one
is not wired yet): the knowledge base is made with the clone and deleted before
DeleteClone returns, knowledge goes in and out, and the user's identity is relayed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2

from aivera.rag.v1 import rag_pb2
from aivera.training.v1 import clones_pb2 as C
from aivera.training.v1 import jobs_pb2 as J
from services.common import context as ctx
from services.common.config import CommonSettings
from services.common.errors import InvalidArgument, not_found
from services.common.server import App, ServiceSpec
from tests.helpers.services import running
from tests.helpers.tokens import Keyring
from tests.training.conftest import MEMO, Env, User

pytestmark = pytest.mark.asyncio


class FakeRag:
    """Knowledge bases and documents in memory, per user, as the RAG contract says."""

    def __init__(self) -> None:
        self.kbs: dict[str, tuple[str, str]] = {}  # id -> (user, clone_id)
        self.docs: dict[str, tuple[str, str]] = {}  # id -> (user, kb id)

    def _kb(self, kb_id: str) -> str:
        user = ctx.require_user_id()
        if self.kbs.get(kb_id, ("", ""))[0] != user:
            raise not_found("knowledge base", kb_id)
        return kb_id

    async def CreateKnowledgeBase(self, request: Any, context: Any) -> rag_pb2.KnowledgeBase:
        kb_id = str(uuid.uuid4())
        self.kbs[kb_id] = (ctx.require_user_id(), request.clone_id)
        return rag_pb2.KnowledgeBase(id=kb_id, name=request.name, clone_id=request.clone_id)

    async def DeleteKnowledgeBase(self, request: Any, context: Any) -> empty_pb2.Empty:
        self._kb(request.id)
        del self.kbs[request.id]
        self.docs = {d: v for d, v in self.docs.items() if v[1] != request.id}
        return empty_pb2.Empty()

    async def IngestDocument(
        self, request: Any, context: Any
    ) -> AsyncIterator[rag_pb2.IngestEvent]:
        self._kb(request.knowledge_base_id)
        if request.file_id == "unsupported":
            raise InvalidArgument("unsupported file type", field="file_id")
        doc_id = str(uuid.uuid4())
        self.docs[doc_id] = (ctx.require_user_id(), request.knowledge_base_id)
        yield rag_pb2.IngestEvent(
            document_id=doc_id, phase=rag_pb2.IngestPhase(stage=rag_pb2.INGEST_STAGE_PARSING)
        )
        yield rag_pb2.IngestEvent(document_id=doc_id, done=rag_pb2.IngestDone())

    async def GetDocument(self, request: Any, context: Any) -> rag_pb2.DocumentDetail:
        user, kb = self.docs.get(request.id, ("", ""))
        if user != ctx.require_user_id():
            raise not_found("document", request.id)
        return rag_pb2.DocumentDetail(
            document=rag_pb2.Document(id=request.id, knowledge_base_id=kb)
        )

    async def DeleteDocument(self, request: Any, context: Any) -> empty_pb2.Empty:
        await self.GetDocument(request, context)
        del self.docs[request.id]
        return empty_pb2.Empty()


FAKE = FakeRag()


@pytest.fixture(scope="module")
async def rag_addr(keyring: Keyring) -> AsyncIterator[str]:
    async def build(app: App) -> Any:
        return [(rag_pb2.DESCRIPTOR.services_by_name["RagService"], FAKE)]

    spec = ServiceSpec(name="rag-fake", port=0, http_port=0, build=build)
    settings = CommonSettings()
    async with running(spec, settings, verifier=keyring.verifier()) as app:
        yield f"127.0.0.1:{app.grpc_port}"


async def test_clone_lifecycle_with_knowledge(env: Env) -> None:
    u, other = User(env), User(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.CreateClone(
            C.CreateCloneRequest(name="", base_model=env.tiny), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.CreateClone(
            C.CreateCloneRequest(name="me", persona_prompt="x" * 8001, base_model=env.tiny),
            metadata=u.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    clone = await u.clones.CreateClone(
        C.CreateCloneRequest(name="me", persona_prompt="You are me.", base_model=env.tiny),
        metadata=u.md,
    )
    assert clone.status == C.CLONE_STATUS_DRAFT and clone.knowledge_base_id
    assert FAKE.kbs[clone.knowledge_base_id] == (u.id, clone.id)  # made as the user
    listed = await u.clones.ListClones(C.ListClonesRequest(), metadata=u.md)
    assert [c.id for c in listed.clones] == [clone.id]
    assert not (await other.clones.ListClones(C.ListClonesRequest(), metadata=other.md)).clones

    added = await u.clones.AddKnowledge(
        C.AddKnowledgeRequest(id=clone.id, file_id="f1"), metadata=u.md
    )
    assert FAKE.docs[added.document_id] == (u.id, clone.knowledge_base_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.AddKnowledge(
            C.AddKnowledgeRequest(id=clone.id, file_id="unsupported"), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # passed through
    for call in (
        other.clones.AddKnowledge(
            C.AddKnowledgeRequest(id=clone.id, file_id="f"), metadata=other.md
        ),
        other.clones.RemoveKnowledge(
            C.RemoveKnowledgeRequest(id=clone.id, document_id=added.document_id),
            metadata=other.md,
        ),
        u.clones.RemoveKnowledge(
            C.RemoveKnowledgeRequest(id=clone.id, document_id=str(uuid.uuid4())), metadata=u.md
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await u.clones.RemoveKnowledge(
        C.RemoveKnowledgeRequest(id=clone.id, document_id=added.document_id), metadata=u.md
    )
    assert added.document_id not in FAKE.docs

    # A job for the clone must use the clone's base model.
    ds = await u.dataset(MEMO)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.job(ds.id, clone_id=clone.id, base_model="smollm2-135m-instruct")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    job = await u.job(ds.id, clone_id=clone.id, executor=J.EXECUTOR_SIMULATE)
    assert job.clone_id == clone.id and job.base_model == env.tiny
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)

    # Another user's model cannot become the clone's active model.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.UpdateClone(
            C.UpdateCloneRequest(
                clone=C.Clone(id=clone.id, active_model_id=str(uuid.uuid4())),
                update_mask=field_mask_pb2.FieldMask(paths=["active_model_id"]),
            ),
            metadata=u.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Deleting the clone deletes its knowledge base before returning.
    added = await u.clones.AddKnowledge(
        C.AddKnowledgeRequest(id=clone.id, file_id="f2"), metadata=u.md
    )
    await u.clones.DeleteClone(C.DeleteCloneRequest(id=clone.id), metadata=u.md)
    assert clone.knowledge_base_id not in FAKE.kbs and added.document_id not in FAKE.docs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.DeleteClone(C.DeleteCloneRequest(id=clone.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
