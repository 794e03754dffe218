"""Who may call which RPC, read from the `aivera.common.v1` options in the protos.

The runtime's auth check, the local gateway and the Envoy route test all read this one
table, so access is declared once, in the contract.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from aivera.common.v1 import common_pb2


class Access(enum.IntEnum):
    """Mirror of aivera.common.v1.Access, for readable comparisons."""

    PUBLIC = common_pb2.ACCESS_PUBLIC
    USER = common_pb2.ACCESS_USER
    ADMIN = common_pb2.ACCESS_ADMIN
    INTERNAL = common_pb2.ACCESS_INTERNAL


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What the runtime needs to know about one RPC."""

    path: str  # "/aivera.auth.v1.AuthService/GetJwks"
    service: str  # "aivera.auth.v1.AuthService"
    name: str  # "GetJwks"
    access: Access
    idempotent: bool  # declares NO_SIDE_EFFECTS or IDEMPOTENT: safe to retry on UNAVAILABLE
    client_streaming: bool
    server_streaming: bool
    # Mesh services allowed to call it (empty: any); declared with the callers option.
    callers: frozenset[str] = frozenset()

    @property
    def audience(self) -> str:
        """The short name of the service that serves it: `aivera.rag.v1.RagService` → rag."""
        return self.service.split(".")[1]


def service_access(service: ServiceDescriptor) -> Access:
    opts = service.GetOptions()
    value = opts.Extensions[common_pb2.default_access]
    return Access(value) if value else Access.USER


def method_info(service: ServiceDescriptor, method: MethodDescriptor) -> MethodInfo:
    opts = method.GetOptions()
    value = opts.Extensions[common_pb2.access]
    access = Access(value) if value else service_access(service)
    idem = opts.idempotency_level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
    return MethodInfo(
        path=f"/{service.full_name}/{method.name}",
        service=service.full_name,
        name=method.name,
        access=access,
        idempotent=idem,
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
        callers=frozenset(opts.Extensions[common_pb2.callers]),
    )


def _pb2_modules() -> Iterable[object]:
    """Every generated `*_pb2` module under the `aivera` package (all v1 contracts)."""
    root = importlib.import_module("aivera")
    for info in pkgutil.walk_packages(root.__path__, "aivera."):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(info.name)


@cache
def all_services() -> tuple[ServiceDescriptor, ...]:
    """Every service declared in protos/, in a stable order."""
    found: dict[str, ServiceDescriptor] = {}
    for module in _pb2_modules():
        file_desc = module.DESCRIPTOR  # type: ignore[attr-defined]
        for svc in file_desc.services_by_name.values():
            found[svc.full_name] = svc
    return tuple(found[name] for name in sorted(found))


@cache
def method_table() -> dict[str, MethodInfo]:
    """Path → MethodInfo for every RPC of every aivera service."""
    table: dict[str, MethodInfo] = {}
    for svc in all_services():
        for method in svc.methods:
            info = method_info(svc, method)
            table[info.path] = info
    return table


def routable_services(*, admin: bool) -> list[str]:
    """Services a gateway listener may route: never internal ones; admin ones only on the
    internal (admin) listener, and public/user ones only on the public listener."""
    out = []
    for svc in all_services():
        acc = service_access(svc)
        if acc is Access.INTERNAL:
            continue
        if (acc is Access.ADMIN) == admin:
            out.append(svc.full_name)
    return out
