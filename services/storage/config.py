"""Settings of the storage service (environment variables; see the README table)."""

from __future__ import annotations

from services.common.config import CommonSettings


class StorageSettings(CommonSettings):
    storage_port: int = 50052
    storage_http_port: int = 9092
