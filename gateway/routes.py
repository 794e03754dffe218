"""The gateways' route table, derived from the access options in the protos.

`services.common.access` reads `aivera.common.v1.default_access` / `access` from every
generated contract. From it:

- the public listener routes every service whose default access is PUBLIC or USER;
- the admin listener (cluster-internal network only) routes ADMIN services;
- INTERNAL services (e.g. `aivera.auth.v1.AuthInternalService`) are routed by neither.

A path is routed by its service prefix (`/<package>.<Service>/`), to the upstream named by
the package (`aivera.<svc>.v1` → `<svc>`), exactly as the Envoy config does. Anything else
is refused with UNIMPLEMENTED, the status Envoy gives a gRPC request that matches no
route, so a client cannot tell an internal service from one that does not exist.
The Envoy config (`gateway/envoy.yaml`) is generated from the same table by
`python -m gateway.envoy_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.access import Access, MethodInfo, method_table, routable_services
from services.common.ports import SERVICES

# The upstream services, their gRPC and HTTP ports (fixed for the platform).
GRPC_PORTS = {name: p.grpc for name, p in SERVICES.items()}
HTTP_PORTS = {name: p.http for name, p in SERVICES.items()}
UPSTREAMS = tuple(GRPC_PORTS)


def upstream_of(service: str) -> str:
    """`aivera.chat.v1.ChatService` → `chat`."""
    parts = service.split(".")
    if len(parts) < 4 or parts[0] != "aivera" or parts[1] not in GRPC_PORTS:
        raise ValueError(f"{service} is not an aivera service")
    return parts[1]


def split_path(path: str) -> tuple[str, str] | None:
    """`/pkg.Service/Method` → (service, method); None for anything else."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a routed call goes."""

    path: str
    service: str
    upstream: str  # key of UPSTREAMS
    method: MethodInfo | None  # None for a method this build's protos do not know


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The services one listener routes."""

    admin: bool
    services: frozenset[str]

    @classmethod
    def for_listener(cls, *, admin: bool) -> RouteTable:
        services = frozenset(routable_services(admin=admin))
        for service in services:
            upstream_of(service)  # every routed service must map to an upstream
        return cls(admin=admin, services=services)

    def resolve(self, path: str) -> Route | None:
        """The route for a request path, or None when this listener refuses it."""
        parts = split_path(path)
        if parts is None or parts[0] not in self.services:
            return None
        info = method_table().get(path)
        if info is not None and info.access is Access.INTERNAL:
            return None  # an internal RPC inside a routed service: never from outside
        return Route(path=path, service=parts[0], upstream=upstream_of(parts[0]), method=info)
