"""Wiring of the training service: its servicers, schema and migrations, the NOTIFY hub
that feeds WatchJob / WatchNotifications, and the restart of interrupted validations.
Training itself runs in workers (`python -m services.training worker`, see worker.py)."""

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
from services.training.api_datasets import DatasetService
from services.training.api_jobs import TrainingService
from services.training.api_more import CloneService, ModelService, NotificationService
from services.training.config import TrainingSettings
from services.training.hub import Hub

MIGRATIONS = Path(__file__).parent / "migrations"


def make_spec(settings: TrainingSettings) -> ServiceSpec:
    state: dict[str, object] = {}

    async def build(app: App) -> Servicers:
        settings_ = app.settings
        assert isinstance(settings_, TrainingSettings)
        hub = Hub(settings_.dsn())
        datasets = DatasetService(app, settings_)
        jobs = TrainingService(app, settings_, hub)
        state.update(hub=hub, datasets=datasets, jobs=jobs)
        return [
            (datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"], datasets),
            (jobs_pb2.DESCRIPTOR.services_by_name["TrainingService"], jobs),
            (models_pb2.DESCRIPTOR.services_by_name["ModelService"], ModelService(app, settings_)),
            (clones_pb2.DESCRIPTOR.services_by_name["CloneService"], CloneService(app, settings_)),
            (
                notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"],
                NotificationService(app, settings_, hub),
            ),
        ]

    async def on_ready(app: App) -> None:
        hub = state["hub"]
        assert isinstance(hub, Hub)
        await hub.start()
        datasets, jobs = state["datasets"], state["jobs"]
        assert isinstance(datasets, DatasetService) and isinstance(jobs, TrainingService)
        await datasets.resume_pending()
        await jobs.resume_pending()

    async def on_stop(app: App) -> None:
        hub = state.get("hub")
        if isinstance(hub, Hub):
            await hub.stop()

    return ServiceSpec(
        name="training",
        port=settings.training_port,
        http_port=settings.training_http_port,
        build=build,
        schema="training",
        migrations=MIGRATIONS,
        on_ready=on_ready,
        on_stop=on_stop,
    )
