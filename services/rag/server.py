"""Wiring of the rag service: its servicers, schema and migrations."""

from __future__ import annotations

from pathlib import Path

from aivera.rag.v1 import rag_pb2
from services.common.server import App, Servicers, ServiceSpec
from services.rag.config import RagSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class RagServiceServicer:
    """Handlers of aivera.rag.v1.RagService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


def make_spec(settings: RagSettings) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        services = rag_pb2.DESCRIPTOR.services_by_name
        return [
            (services["RagService"], RagServiceServicer(app)),
        ]

    return ServiceSpec(
        name="rag",
        port=settings.rag_port,
        http_port=settings.rag_http_port,
        build=build,
        schema="rag",
        migrations=MIGRATIONS,
    )
