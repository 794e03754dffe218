"""Settings of the auth service (environment variables; see the README table)."""

from __future__ import annotations

from services.common.config import CommonSettings


class AuthSettings(CommonSettings):
    auth_port: int = 50051
    auth_http_port: int = 9091
