"""Settings every service reads from the environment (pydantic-settings).

Field names are the environment variable names, lower-cased (`database_url` ←
`DATABASE_URL`). Each service subclasses `CommonSettings` with its own fields. The README
has the full table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.ports import grpc_addr


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    # dev: local defaults allowed (e.g. a generated signing key); prod: every secret required.
    aivera_env: Literal["dev", "test", "prod"] = "dev"
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/aivera")
    db_pool_min: int = 1
    db_pool_max: int = 10
    # This workload's own credential, exchanged at auth for service tokens
    # (services.common.identity); auth holds its SHA-256 in AUTH_SERVICE_CLIENTS. Unset:
    # the process has no mesh identity and relays users' own tokens (tools, tests).
    aivera_service_secret: SecretStr = SecretStr("")
    log_level: str = "INFO"
    grpc_host: str = "0.0.0.0"
    http_host: str = "0.0.0.0"
    # SIGTERM: stop accepting, let in-flight RPCs (streams included) finish this long.
    shutdown_grace_seconds: float = 20.0
    # How often dependencies are re-checked for the health status.
    health_check_interval_seconds: float = 5.0
    # Addresses of the other services (host:port).
    auth_addr: str = grpc_addr("auth")
    storage_addr: str = grpc_addr("storage")
    rag_addr: str = grpc_addr("rag")
    chat_addr: str = grpc_addr("chat")
    training_addr: str = grpc_addr("training")
    # Access-token checks done by every service.
    jwt_issuer: str = "aivera-auth"
    jwt_audience: str = "aivera"
    # An unknown `kid` triggers a JWKS refetch at most this often (stops refetch floods).
    jwks_min_refresh_seconds: float = 2.0
    # Access-token lifetime (auth signs with it; every service keeps session revocations
    # this long, twice over).
    access_token_ttl_seconds: int = 3600
    # How often every service polls auth for ended sessions (services.common.revocations):
    # a revoked user's access token stops working everywhere within about this long.
    session_revocation_poll_seconds: float = 2.0
    # HMAC key of List page tokens; the same on every replica (services.common.pages).
    page_token_key: SecretStr = SecretStr("")
    # Deadlines of calls to other services (services.common.remote), by kind of call:
    # a lookup (get a file's metadata, a key), work (a search, a small upload), and a
    # transfer of a whole file (datasets, adapters, checkpoints).
    rpc_lookup_deadline_seconds: float = 10.0
    rpc_work_deadline_seconds: float = 60.0
    rpc_transfer_deadline_seconds: float = 600.0

    def service_secret(self) -> str:
        return self.aivera_service_secret.get_secret_value()

    def dsn(self) -> str:
        return self.database_url.get_secret_value()
