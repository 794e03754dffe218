"""One ports table: the client's copy (it ships without the services) must agree."""

from __future__ import annotations

from client import config as client_config
from gateway import routes
from services.common import ports


def test_client_ports_match_the_mesh_table() -> None:
    assert client_config.DEFAULT_PORTS == {n: p.grpc for n, p in ports.SERVICES.items()}
    assert set(client_config.SERVICES) == set(ports.SERVICES)


def test_gateway_upstreams_come_from_the_table() -> None:
    assert routes.GRPC_PORTS == {n: p.grpc for n, p in ports.SERVICES.items()}
    assert routes.HTTP_PORTS == {n: p.http for n, p in ports.SERVICES.items()}
