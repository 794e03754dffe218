"""Wiring of the storage service: its servicers, schema and migrations."""

from __future__ import annotations

from pathlib import Path

from aivera.storage.v1 import storage_pb2

from services.common.server import App, Servicers, ServiceSpec
from services.storage.config import StorageSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class StorageServiceServicer:
    """Handlers of aivera.storage.v1.StorageService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


def make_spec(settings: StorageSettings) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        services = storage_pb2.DESCRIPTOR.services_by_name
        return [
            (services["StorageService"], StorageServiceServicer(app)),
        ]

    return ServiceSpec(
        name="storage",
        port=settings.storage_port,
        http_port=settings.storage_http_port,
        build=build,
        schema="storage",
        migrations=MIGRATIONS,
    )
