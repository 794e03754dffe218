"""Settings of the local gateway, from the environment.

| variable | default | meaning |
|---|---|---|
| GATEWAY_HOST | 0.0.0.0 | public listener address |
| GATEWAY_PORT | 8080 | public listener port (PUBLIC and USER services) |
| GATEWAY_ADMIN_HOST | 127.0.0.1 | admin listener address (keep it off public networks) |
| GATEWAY_ADMIN_PORT | 8081 | admin listener port (ADMIN services) |
| GATEWAY_CORS_ORIGINS | localhost dev origins | comma-separated origins, or `*` |
| GATEWAY_MAX_REQUEST_BYTES | 16 MiB | largest request body accepted |
| AUTH_ADDR … TRAINING_ADDR | 127.0.0.1:5005x | upstream gRPC addresses |
| LOG_LEVEL | INFO | log level |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.routes import GRPC_PORTS
from services.common.ports import GATEWAY_ADMIN, GATEWAY_PUBLIC

# Origins a browser client is commonly served from in development.
DEV_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
    "http://localhost:8080",
    "http://127.0.0.1:8080",
)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the services' own gRPC limit


def default_upstreams() -> dict[str, str]:
    return {name: f"127.0.0.1:{port}" for name, port in GRPC_PORTS.items()}


def parse_origins(value: str | None) -> tuple[str, ...]:
    if value is None:
        return DEV_CORS_ORIGINS
    return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "0.0.0.0"
    port: int = GATEWAY_PUBLIC
    admin_host: str = "127.0.0.1"
    admin_port: int = GATEWAY_ADMIN
    upstreams: dict[str, str] = field(default_factory=default_upstreams)
    cors_origins: tuple[str, ...] = DEV_CORS_ORIGINS
    max_request_bytes: int = MAX_MESSAGE_BYTES
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        upstreams = {
            name: env.get(f"{name.upper()}_ADDR") or addr
            for name, addr in default_upstreams().items()
        }
        return cls(
            host=env.get("GATEWAY_HOST", "0.0.0.0"),
            port=int(env.get("GATEWAY_PORT", str(GATEWAY_PUBLIC))),
            admin_host=env.get("GATEWAY_ADMIN_HOST", "127.0.0.1"),
            admin_port=int(env.get("GATEWAY_ADMIN_PORT", str(GATEWAY_ADMIN))),
            upstreams=upstreams,
            cors_origins=parse_origins(env.get("GATEWAY_CORS_ORIGINS")),
            max_request_bytes=int(env.get("GATEWAY_MAX_REQUEST_BYTES", str(MAX_MESSAGE_BYTES))),
            log_level=env.get("LOG_LEVEL", "INFO"),
        )
