"""A dependency that is down is UNAVAILABLE with reason DEPENDENCY_UNAVAILABLE naming it,
never INTERNAL: another service of the mesh (through the shared remote layer every service
uses) and the Qdrant server (RAG's production index). Real connections to closed ports."""

from __future__ import annotations

import grpc
import pytest

from services.common.channels import open_channel
from services.common.devpg import free_port
from services.common.errors import Reason, ServiceError, reason_name
from services.common.remote import Deadlines, StorageClient
from services.rag.index import QdrantIndex


async def test_a_peer_service_that_is_down_is_dependency_unavailable() -> None:
    channel = open_channel(f"127.0.0.1:{free_port()}")
    storage = StorageClient(channel, Deadlines(lookup=2, work=2, transfer=2))
    try:
        for call in (
            storage.get_file("f1"),
            storage.download("f1"),
            storage.upload(1, "a.txt", b"abc"),  # type: ignore[arg-type]
        ):
            with pytest.raises(ServiceError) as info:
                await call
            assert info.value.code is grpc.StatusCode.UNAVAILABLE
            assert reason_name(info.value.reason) == "DEPENDENCY_UNAVAILABLE"
            assert info.value.metadata["dependency"].startswith("file")
    finally:
        await channel.close()


async def test_a_qdrant_server_that_is_down_is_dependency_unavailable() -> None:
    index = QdrantIndex.open(dim=8, url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ServiceError) as info:
            await index.ensure_collection()
        assert info.value.code is grpc.StatusCode.UNAVAILABLE
        assert info.value.reason == Reason.DEPENDENCY_UNAVAILABLE
        assert info.value.metadata == {"dependency": "vector index"}
    finally:
        await index.close()
