"""Run real services in the test process, on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from services.common.config import CommonSettings
from services.common.jwks import JwksVerifier
from services.common.server import App, ServiceSpec


@asynccontextmanager
async def running(
    spec: ServiceSpec,
    settings: CommonSettings,
    *,
    verifier: JwksVerifier | None = None,
    wait: bool = True,
) -> AsyncIterator[App]:
    """Start `spec` on port 0 (grpc and http), wait until SERVING, stop on exit."""
    spec.port = 0
    spec.http_port = 0
    if verifier is not None:
        spec.verifier = lambda _app: verifier
    settings = settings.model_copy(
        update={
            "grpc_host": "127.0.0.1",
            "http_host": "127.0.0.1",
            "health_check_interval_seconds": 0.2,
        }
    )
    app = App(spec, settings)
    await app.start()
    try:
        if wait:
            await app.wait_ready(60)
        yield app
    finally:
        await app.stop(grace=1.0)


def channel(app: App, **kwargs: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}", **kwargs)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
