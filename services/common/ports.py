"""The mesh's ports, in one table: each service's gRPC and HTTP (metrics, health,
extras) port, the training worker's HTTP port and the gateway's listeners.

Service settings, the dev launcher, the local gateway, Envoy's generated config and the
deploy tests read these; the client keeps its own copy (`client/config.py`, it ships
without the services) and a test checks the two agree.
"""

from __future__ import annotations

from typing import NamedTuple


class Ports(NamedTuple):
    grpc: int
    http: int


SERVICES: dict[str, Ports] = {
    "auth": Ports(50051, 9091),
    "storage": Ports(50052, 9092),
    "rag": Ports(50053, 9093),
    "chat": Ports(50054, 9094),
    "training": Ports(50055, 9095),
}

TRAINING_WORKER_HTTP = 9096
GATEWAY_PUBLIC = 8080
GATEWAY_ADMIN = 8081


def grpc_addr(service: str, host: str = "127.0.0.1") -> str:
    return f"{host}:{SERVICES[service].grpc}"
