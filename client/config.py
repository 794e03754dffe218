"""Where the services are and where the session is kept.

Two ways to reach the mesh:

- **gateway**: one gRPC address where every service is routed (Envoy's gRPC listener),
  given by `--server` at login, `AIVERA_SERVER`, or the `server` saved in the credentials;
- **direct**: each service at its own address, by default the platform's fixed ports on
  localhost (auth 50051, storage 50052, rag 50053, chat 50054, training 50055).

Either way `AIVERA_AUTH_ADDR`, `AIVERA_STORAGE_ADDR`, `AIVERA_RAG_ADDR`, `AIVERA_CHAT_ADDR`
and `AIVERA_TRAINING_ADDR` override one service, and `AIVERA_ADMIN_ADDR` sends the admin
services (user and prompt administration, routed only on the gateway's internal
listener) to another address. An address with `https://` uses TLS; `http://` or none is
plaintext.

The credentials live in `$AIVERA_CONFIG_DIR` or `$XDG_CONFIG_HOME/aivera` (default
`~/.config/aivera`), file `credentials.json`, mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("auth", "storage", "rag", "chat", "training")
# A copy of services/common/ports.py (the client ships without the services);
# tests/common/test_ports.py checks that the two agree.
DEFAULT_PORTS = {"auth": 50051, "storage": 50052, "rag": 50053, "chat": 50054, "training": 50055}


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("AIVERA_CONFIG_DIR"):
        return Path(env["AIVERA_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aivera"


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials.json"


@dataclass(frozen=True)
class Endpoints:
    """gRPC address of each service (`host:port`, optionally with `https://`)."""

    addresses: dict[str, str] = field(default_factory=dict)
    admin: str | None = None
    server: str | None = None  # the gateway address, when one is used

    def of(self, service: str, *, admin: bool = False) -> str:
        if admin and self.admin:
            return self.admin
        return self.addresses[service]

    @classmethod
    def gateway(cls, server: str, *, admin: str | None = None) -> Endpoints:
        return cls({s: server for s in SERVICES}, admin=admin, server=server)

    @classmethod
    def direct(cls, host: str = "127.0.0.1", *, admin: str | None = None) -> Endpoints:
        return cls({s: f"{host}:{p}" for s, p in DEFAULT_PORTS.items()}, admin=admin)

    @classmethod
    def resolve(cls, server: str | None = None, env: Mapping[str, str] | None = None) -> Endpoints:
        """`server` (from `--server` or the credentials) unless `AIVERA_SERVER` is set,
        then the per-service overrides of the environment."""
        env = os.environ if env is None else env
        server = env.get("AIVERA_SERVER") or server or None
        base = cls.gateway(server) if server else cls.direct()
        addresses = dict(base.addresses)
        for s in SERVICES:
            value = env.get(f"AIVERA_{s.upper()}_ADDR")
            if value:
                addresses[s] = value
        return cls(addresses, admin=env.get("AIVERA_ADMIN_ADDR") or None, server=server)


def split_address(address: str) -> tuple[str, bool]:
    """`https://h:p` → (`h:p`, TLS); `http://h:p` and `h:p` → plaintext."""
    if address.startswith("https://"):
        return address.removeprefix("https://").rstrip("/"), True
    return address.removeprefix("http://").rstrip("/"), False
