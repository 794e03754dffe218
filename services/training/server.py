"""Wiring of the training service: its servicers, schema and migrations."""

from __future__ import annotations

from pathlib import Path

from aivera.training.v1 import (
    clones_pb2,
    datasets_pb2,
    jobs_pb2,
    models_pb2,
    notifications_pb2,
)

from services.common.server import App, Servicers, ServiceSpec
from services.training.config import TrainingSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class _Pending:
    """Handlers land with the training issue; until then every RPC answers UNIMPLEMENTED."""

    def __init__(self, app: App) -> None:
        self.app = app


def make_spec(settings: TrainingSettings) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        return [
            (datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"], _Pending(app)),
            (jobs_pb2.DESCRIPTOR.services_by_name["TrainingService"], _Pending(app)),
            (models_pb2.DESCRIPTOR.services_by_name["ModelService"], _Pending(app)),
            (clones_pb2.DESCRIPTOR.services_by_name["CloneService"], _Pending(app)),
            (notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"], _Pending(app)),
        ]

    return ServiceSpec(
        name="training",
        port=settings.training_port,
        http_port=settings.training_http_port,
        build=build,
        schema="training",
        migrations=MIGRATIONS,
    )
