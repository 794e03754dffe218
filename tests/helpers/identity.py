"""Service credentials for tests that run several services: one secret per service, made
once per test process, and the AUTH_SERVICE_CLIENTS value that registers them at auth."""

from __future__ import annotations

import uuid

import grpc

from services.common.channels import open_channel
from services.common.config import CommonSettings
from services.common.identity import ServiceIdentity, client_entry

_RUN = uuid.uuid4().hex[:12]
SECRETS: dict[str, str] = {
    name: f"svc_test_{name}_{_RUN}" for name in ("chat", "rag", "storage", "training")
}
CLIENTS = ",".join(client_entry(name, secret) for name, secret in SECRETS.items())


def secret(service: str) -> str:
    """The test credential of `service` (AIVERA_SERVICE_SECRET)."""
    return SECRETS[service]


def worker_channel(settings: CommonSettings) -> grpc.aio.Channel:
    """A training worker's channel to storage, proving itself with training's credential."""
    identity = ServiceIdentity("training", secret("training"), settings.auth_addr)
    return open_channel(settings.storage_addr, identity=identity)
