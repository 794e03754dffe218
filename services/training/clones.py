"""Clones: a base model + the user's active adapter + a knowledge base in RAG + a persona.
The knowledge base is made with the clone and deleted before the clone is; a clone's
status is derived from its jobs and active model, never stored."""

from __future__ import annotations

import uuid

from aivera.training.v1 import clones_pb2
from services.common import pages
from services.common.errors import FailedPrecondition, InvalidArgument, Reason, not_found
from services.common.protoutil import parse_uuid
from services.training import checks, lifecycle
from services.training.config import TrainingSettings
from services.training.knowledge import KnowledgeClient
from services.training.store import CloneRow, Store

C = clones_pb2


def clone_status(row: CloneRow) -> clones_pb2.CloneStatus.ValueType:
    """In the contract's order of precedence: TRAINING, READY, FAILED, DRAFT."""
    if row.training:
        return C.CLONE_STATUS_TRAINING
    if row.active_model_id is not None:
        return C.CLONE_STATUS_READY
    if row.last_job_status == lifecycle.FAILED:
        return C.CLONE_STATUS_FAILED
    return C.CLONE_STATUS_DRAFT


async def owned(store: Store, user: str, raw_id: str, field: str = "id") -> CloneRow:
    """The user's clone; NOT_FOUND for a missing, deleted or another user's one."""
    row = await store.get_clone(user, parse_uuid(raw_id, field=field))
    if row is None:
        raise not_found("clone", raw_id)
    return row


class Clones:
    def __init__(
        self, store: Store, settings: TrainingSettings, knowledge: KnowledgeClient
    ) -> None:
        self.store = store
        self.settings = settings
        self.knowledge = knowledge

    async def get(self, user: str, raw_id: str, field: str = "id") -> CloneRow:
        return await owned(self.store, user, raw_id, field)

    async def list_clones(self, user: str, page: pages.PageRequest) -> tuple[list[CloneRow], str]:
        return await self.store.list_clones(user, page)

    async def create(
        self, user: str, *, name: str, persona_prompt: str, base_model: str
    ) -> CloneRow:
        name = checks.name(name)
        persona = checks.persona(persona_prompt)
        base_model = checks.base_model(self.settings, base_model)
        clone_id = uuid.uuid4()
        kb_id = await self.knowledge.create_kb(f"clone {name}"[: checks.MAX_NAME], str(clone_id))
        await self.store.insert_clone(
            clone_id=clone_id,
            user_id=user,
            name=name,
            persona_prompt=persona,
            base_model=base_model,
            knowledge_base_id=kb_id,
        )
        return await self.get(user, str(clone_id))

    async def update(
        self,
        user: str,
        raw_id: str,
        *,
        name: str | None = None,
        persona_prompt: str | None = None,
        active_model_id: str | None = None,
    ) -> CloneRow:
        """Change the fields given (None: not in the update mask; an empty
        `active_model_id` clears the active model)."""
        async with self.store.transaction() as tx:
            row = await owned(tx, user, raw_id, "clone.id")
            if name is not None:
                name = checks.name(name, "clone.name")
            if persona_prompt is not None:
                persona_prompt = checks.persona(persona_prompt, "clone.persona_prompt")
            model_id: uuid.UUID | None = None
            if active_model_id:
                model = await tx.get_model(
                    user, parse_uuid(active_model_id, field="clone.active_model_id")
                )
                if model is None:
                    raise not_found("model", active_model_id)
                if model.base_model != row.base_model:
                    raise InvalidArgument(
                        "the model's base model differs from the clone's",
                        field="clone.active_model_id",
                    )
                model_id = model.id
            await tx.update_clone(
                row.id,
                name=name,
                persona_prompt=persona_prompt,
                set_active_model=active_model_id is not None,
                active_model_id=model_id,
            )
            return await owned(tx, user, raw_id, "clone.id")

    async def delete(self, user: str, raw_id: str) -> None:
        """Delete the knowledge base first, so no clone is gone while its documents stay."""
        row = await self.get(user, raw_id)
        if row.knowledge_base_id:
            await self.knowledge.delete_kb(row.knowledge_base_id)
        if not await self.store.delete_clone(row.id):
            raise not_found("clone", raw_id)

    async def add_knowledge(self, user: str, raw_id: str, file_id: str) -> str:
        """Ingest a storage file into the clone's knowledge base; the document id."""
        row = await self.get(user, raw_id)
        if not file_id:
            raise InvalidArgument("file_id is required", field="file_id")
        return await self.knowledge.ingest(self._kb(row), file_id)

    async def remove_knowledge(self, user: str, raw_id: str, document_id: str) -> None:
        row = await self.get(user, raw_id)
        if not document_id:
            raise InvalidArgument("document_id is required", field="document_id")
        await self.knowledge.remove(self._kb(row), document_id)

    @staticmethod
    def _kb(row: CloneRow) -> str:
        if not row.knowledge_base_id:
            raise FailedPrecondition(
                "the clone has no knowledge base", reason=Reason.CLONE_NOT_READY
            )
        return row.knowledge_base_id
