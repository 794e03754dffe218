"""Wiring of the training service: the store, the domain objects and their servicers (one
per proto service), the NOTIFY hub that feeds WatchJob / WatchNotifications, and the
restart of validations a previous process left unfinished. Training itself runs in
workers (`python -m services.training worker`, see worker.py).

    api_<service>.py (handlers) → datasets / jobs + lifecycle / artifacts / clones +
    knowledge / notifications (domain) → store.py (SQL) → migrations/
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from aivera.training.v1 import (
    admin_pb2,
    billing_pb2,
    catalogue_pb2,
    clones_pb2,
    datasets_pb2,
    image_loras_pb2,
    jobs_pb2,
    models_pb2,
    notifications_pb2,
    webhooks_pb2,
)
from services.common.server import App, Servicers, ServiceSpec
from services.training import image_webhooks, queue_metrics
from services.training.admin import Admin
from services.training.api_admin import TrainingAdminService
from services.training.api_billing import BillingService
from services.training.api_catalogue import CatalogueService
from services.training.api_clones import CloneService
from services.training.api_datasets import DatasetService
from services.training.api_image_loras import ImageLoraService
from services.training.api_jobs import TrainingService
from services.training.api_models import ModelService
from services.training.api_notifications import NotificationService
from services.training.api_webhooks import WebhookService
from services.training.artifacts import Models
from services.training.billing import Billing
from services.training.clones import Clones
from services.training.config import TrainingSettings
from services.training.datasets import Datasets
from services.training.generations import Generations
from services.training.hub import Hub
from services.training.image_loras import ImageLoras
from services.training.image_retention import ImageSweep
from services.training.image_trainer import ImageTrainer
from services.training.jobs import Jobs
from services.training.knowledge import KnowledgeClient
from services.training.notifications import Notifications
from services.training.store import Store
from services.training.webhooks import Deliverer, Webhooks

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Training:
    """The service's domain, built once from the App."""

    hub: Hub
    datasets: Datasets
    jobs: Jobs
    models: Models
    clones: Clones
    notifications: Notifications
    billing: Billing
    webhooks: Webhooks
    admin: Admin
    image_loras: ImageLoras
    generations: Generations
    image_sweep: ImageSweep
    image_trainer: ImageTrainer

    @classmethod
    def build(cls, app: App, settings: TrainingSettings) -> Training:
        def spawn(coro: Coroutine[Any, Any, None], name: str) -> object:
            return app.spawn(coro, name=name)

        store = Store(app)  # reads app.pool per query: the pool connects after build
        storage = app.storage()
        hub = Hub(settings.dsn())
        knowledge = KnowledgeClient(app.channel(settings.rag_addr), app.deadlines, spawn)
        billing = Billing(store, settings)
        models = Models(store, storage, settings, app.identity)
        # Users' provider keys come from auth, which answers only the mesh's services: a
        # process without a mesh identity uses the system key alone (replicate_keys).
        auth = app.channel(settings.auth_addr) if app.identity else None
        image_loras = ImageLoras(store, storage, app.identity, settings, auth)
        generations = Generations(store, storage, app.identity, settings, image_loras, spawn, hub)
        return cls(
            hub=hub,
            datasets=Datasets(store, settings, storage, spawn, app.identity),
            jobs=Jobs(store, settings, storage, hub, spawn, billing, app.identity),
            models=models,
            clones=Clones(store, settings, knowledge),
            notifications=Notifications(store, settings, hub),
            billing=billing,
            webhooks=Webhooks(store, settings),
            admin=Admin(store),
            image_loras=image_loras,
            generations=generations,
            image_sweep=ImageSweep(store, settings, image_loras, models, generations.running_for),
            image_trainer=ImageTrainer(store, storage, settings, auth),
        )

    def servicers(self, settings: TrainingSettings) -> Servicers:
        def service(module: Any, name: str) -> Any:
            return module.DESCRIPTOR.services_by_name[name]

        return [
            (service(datasets_pb2, "DatasetService"), DatasetService(self.datasets)),
            (
                service(jobs_pb2, "TrainingService"),
                TrainingService(self.jobs, settings.training_currency),
            ),
            (service(models_pb2, "ModelService"), ModelService(self.models)),
            (service(clones_pb2, "CloneService"), CloneService(self.clones)),
            (
                service(image_loras_pb2, "ImageLoraService"),
                ImageLoraService(self.image_loras, self.generations),
            ),
            (
                service(notifications_pb2, "NotificationService"),
                NotificationService(self.notifications),
            ),
            (service(catalogue_pb2, "CatalogueService"), CatalogueService(settings)),
            (
                service(billing_pb2, "BillingService"),
                BillingService(self.billing, settings.training_currency),
            ),
            (service(webhooks_pb2, "WebhookService"), WebhookService(self.webhooks)),
            (
                service(admin_pb2, "TrainingAdminService"),
                TrainingAdminService(self.admin, settings.training_currency),
            ),
        ]


@dataclass
class TrainingSpec(ServiceSpec):
    """The training service's spec; `training` is the domain once built (tests use it)."""

    training: Training | None = None


def make_spec(settings: TrainingSettings) -> TrainingSpec:
    async def build(app: App) -> Servicers:
        settings_ = app.settings
        assert isinstance(settings_, TrainingSettings)
        spec.training = Training.build(app, settings_)
        return spec.training.servicers(settings_)

    async def on_ready(app: App) -> None:
        assert spec.training is not None
        await spec.training.hub.start()
        await spec.training.datasets.resume_pending()
        await spec.training.jobs.resume_pending()
        app.spawn(spec.training.models.purge_loop(), name="purge-deleted-models")
        app.spawn(spec.training.image_sweep.run(), name="image-lora-sweep")
        # Remote (Replicate) image LoRA trainings: claims, polls; webhooks wake it.
        app.spawn(spec.training.image_trainer.run(), name="image-lora-trainer")
        if spec.training.webhooks.sealer.enabled:
            deliverer = Deliverer(spec.training.webhooks, spec.training.hub)
            app.spawn(deliverer.run(), name="deliver-webhooks")
        # Queue depth, job states and the oldest wait as Prometheus gauges.
        app.spawn(queue_metrics.keep_fresh(Store(app)), name="training-queue-metrics")

    async def on_stop(app: App) -> None:
        if spec.training is not None:
            await spec.training.hub.stop()

    def http_routes(app: App, web_app: web.Application) -> None:
        settings_ = app.settings
        assert isinstance(settings_, TrainingSettings)

        def trainer() -> ImageTrainer | None:
            return spec.training.image_trainer if spec.training is not None else None

        # Replicate's signed webhooks of remote image LoRA trainings.
        image_webhooks.routes(settings_, trainer)(web_app)

    spec = TrainingSpec(
        name="training",
        port=settings.training_port,
        http_port=settings.training_http_port,
        build=build,
        schema="training",
        migrations=MIGRATIONS,
        on_ready=on_ready,
        on_stop=on_stop,
        http_routes=http_routes,
    )
    return spec
