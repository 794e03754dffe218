"""One ports table: the client's copy (it ships without the services) must agree."""

from __future__ import annotations

from client import config as client_config
from gateway import routes
from services.common import ports


def test_client_ports_match_the_mesh_table() -> None:
    assert {n: p.grpc for n, p in ports.SERVICES.items()} == client_config.DEFAULT_PORTS
    assert set(client_config.SERVICES) == set(ports.SERVICES)


def test_gateway_upstreams_come_from_the_table() -> None:
    assert {n: p.grpc for n, p in ports.SERVICES.items()} == routes.GRPC_PORTS
    assert {n: p.http for n, p in ports.SERVICES.items()} == routes.HTTP_PORTS
