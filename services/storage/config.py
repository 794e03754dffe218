"""Settings of the storage service (environment variables; see the README table).

Sizes are bytes (MiB-based defaults: "10 MB" of the issue is 10 MiB here)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from services.common.config import CommonSettings
from services.common.ports import SERVICES

MiB = 1024 * 1024


class StorageSettings(CommonSettings):
    storage_port: int = SERVICES["storage"].grpc
    storage_http_port: int = SERVICES["storage"].http

    # Where new files go: the local filesystem (embedded default) or S3.
    storage_backend: Literal["s3", "local"] = "local"
    # Local backend root is DATA_DIR/storage.
    data_dir: Path = Path(".data")

    # S3 (any S3-compatible endpoint). One physical bucket; the object key starts with the
    # logical bucket: `{bucket}/{user_id}/{file_id}/{filename}`.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket: str = "aivera-storage"
    s3_path_style: bool = False
    s3_create_bucket: bool = True  # create the bucket at start-up when missing
    s3_connect_timeout_seconds: float = 3.0
    s3_read_timeout_seconds: float = 60.0
    s3_max_attempts: int = 2
    # Uploads above this size go through S3 multipart, in parts of this size (S3 needs
    # at least 5 MiB per part but the last).
    storage_multipart_threshold: int = 8 * MiB
    storage_multipart_part_size: int = 8 * MiB
    # Per-stream HTTP/2 flow-control window of the gRPC port (fixed; BDP probing off):
    # what one Upload may have in flight before the service reads it.
    storage_grpc_stream_window_bytes: int = 4 * MiB

    # S3 unreachable on write: store the file locally instead (synced later).
    storage_fallback_local: bool = False
    # Background moves of fallback files to S3 while S3 answers (the `sync` command does
    # the same on demand).
    storage_auto_sync: bool = True

    # Base of the local backend's signed URLs; default http://127.0.0.1:<http port>.
    storage_public_url: str | None = None
    # HMAC key of the local signed URLs. Required in prod; dev/test generate one per
    # data dir (DATA_DIR/storage/.url-signing-key).
    storage_url_signing_key: SecretStr = SecretStr("")

    # Per-bucket size limits.
    storage_max_bytes_documents: int = 100 * MiB
    storage_max_bytes_images: int = 10 * MiB
    storage_max_bytes_datasets: int = 500 * MiB
    storage_max_bytes_models: int = 5 * 1024 * MiB
    storage_max_bytes_training_images: int = 10 * MiB

    # Deleted files are purged this long after deletion; UPLOADING files this long after
    # their upload URL (or stream) expired.
    storage_retention_days: float = 7.0
    storage_upload_grace_seconds: float = 3600.0
    storage_purge_interval_seconds: float = 300.0
    # How long a streamed Upload may take before its row counts as abandoned.
    storage_stream_upload_ttl_seconds: int = 24 * 3600

    def local_root(self) -> Path:
        return self.data_dir / "storage"
