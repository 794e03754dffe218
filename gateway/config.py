"""Settings of the local gateway, from the environment.

| variable | default | meaning |
|---|---|---|
| GATEWAY_HOST | 127.0.0.1 | public listener address (`0.0.0.0` to serve other machines) |
| GATEWAY_PORT | 8080 | public listener port (PUBLIC and USER services) |
| GATEWAY_ADMIN_HOST | 127.0.0.1 | admin listener address (keep it off public networks) |
| GATEWAY_ADMIN_PORT | 8081 | admin listener port (ADMIN services) |
| GATEWAY_CORS_ORIGINS | localhost dev origins (none in prod) | comma-separated, or `*` |
| GATEWAY_MAX_REQUEST_BYTES | 16 MiB | largest request body accepted |
| GATEWAY_REQUEST_TIMEOUT_SECONDS | 120 | longest unary call and body read |
| AUTH_ADDR … TRAINING_ADDR | 127.0.0.1:5005x | upstream gRPC addresses |
| STORAGE_HTTP_ADDR | 127.0.0.1:9092 | storage HTTP port: `/files/` signed URLs on this origin |
| GATEWAY_WEB_ROOT | web/dist | the built console served at `/` (empty: none) |
| GATEWAY_CSP_CONNECT_SRC | admin listener (none in prod) | other origins to fetch from (S3) |
| LOG_LEVEL | INFO | log level |

With AIVERA_ENV=prod, GATEWAY_CORS_ORIGINS must be set: production origins come from
configuration only. A shorter `grpc-timeout` than the request timeout wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.routes import GRPC_PORTS
from services.common.ports import GATEWAY_ADMIN, GATEWAY_PUBLIC, SERVICES

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
# The longest a unary call may last at either gateway (Envoy's route timeout is the same):
# a call without `grpc-timeout`, or with a longer one, ends DEADLINE_EXCEEDED by then.
# Streaming calls are bounded by their own `grpc-timeout` (and Envoy's idle timeout).
REQUEST_TIMEOUT_SECONDS = 120.0
WEB_ROOT = Path(__file__).resolve().parent.parent / "web" / "dist"


class ConfigError(ValueError):
    """A setting missing or invalid for this environment."""


def default_upstreams() -> dict[str, str]:
    return {name: f"127.0.0.1:{port}" for name, port in GRPC_PORTS.items()}


def parse_origins(value: str | None, *, env_name: str = "dev") -> tuple[str, ...]:
    """Origins from `GATEWAY_CORS_ORIGINS`; unset, the localhost dev origins, except in
    production, where the origins come from configuration only."""
    if value is None:
        if env_name == "prod":
            raise ConfigError("GATEWAY_CORS_ORIGINS is required when AIVERA_ENV=prod")
        return DEV_CORS_ORIGINS
    return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())


def connect_src(value: str | None, *, env_name: str, admin_origin: str) -> tuple[str, ...]:
    """Origins from `GATEWAY_CSP_CONNECT_SRC`; unset outside production, the admin
    listener's origin, so that administration works in the console under `make run`
    (the admin services are routed only there, a second origin)."""
    if value is None:
        return () if env_name == "prod" else (admin_origin,)
    return tuple(value.split())


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = GATEWAY_PUBLIC
    admin_host: str = "127.0.0.1"
    admin_port: int = GATEWAY_ADMIN
    upstreams: dict[str, str] = field(default_factory=default_upstreams)
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = MAX_MESSAGE_BYTES
    request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
    log_level: str = "INFO"
    # The console (gateway/static.py): its built files and the storage HTTP upstream of
    # the signed-URL paths, served on the public listener's origin.
    web_root: Path | None = None
    storage_http: str | None = None
    csp_connect_src: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        web_root = env.get("GATEWAY_WEB_ROOT", str(WEB_ROOT))
        upstreams = {
            name: env.get(f"{name.upper()}_ADDR") or addr
            for name, addr in default_upstreams().items()
        }
        return cls(
            host=env.get("GATEWAY_HOST", "127.0.0.1"),
            port=int(env.get("GATEWAY_PORT", str(GATEWAY_PUBLIC))),
            admin_host=env.get("GATEWAY_ADMIN_HOST", "127.0.0.1"),
            admin_port=int(env.get("GATEWAY_ADMIN_PORT", str(GATEWAY_ADMIN))),
            upstreams=upstreams,
            cors_origins=parse_origins(
                env.get("GATEWAY_CORS_ORIGINS"), env_name=env.get("AIVERA_ENV", "dev")
            ),
            max_request_bytes=int(env.get("GATEWAY_MAX_REQUEST_BYTES", str(MAX_MESSAGE_BYTES))),
            request_timeout_seconds=float(
                env.get("GATEWAY_REQUEST_TIMEOUT_SECONDS", str(REQUEST_TIMEOUT_SECONDS))
            ),
            log_level=env.get("LOG_LEVEL", "INFO"),
            web_root=Path(web_root) if web_root else None,
            storage_http=env.get("STORAGE_HTTP_ADDR") or f"127.0.0.1:{SERVICES['storage'].http}",
            csp_connect_src=connect_src(
                env.get("GATEWAY_CSP_CONNECT_SRC"),
                env_name=env.get("AIVERA_ENV", "dev"),
                admin_origin=f"http://{env.get('GATEWAY_ADMIN_HOST', '127.0.0.1')}:"
                f"{env.get('GATEWAY_ADMIN_PORT', str(GATEWAY_ADMIN))}",
            ),
        )
