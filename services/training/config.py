"""Settings of the training service (environment variables; see the README table)."""

from __future__ import annotations

from services.common.config import CommonSettings


class TrainingSettings(CommonSettings):
    training_port: int = 50055
    training_http_port: int = 9095
