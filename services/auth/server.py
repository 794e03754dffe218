"""Wiring of the auth service: its servicers, schema and migrations."""

from __future__ import annotations

from pathlib import Path

from aivera.auth.v1 import auth_pb2

from services.auth.config import AuthSettings
from services.common.server import App, Servicers, ServiceSpec

MIGRATIONS = Path(__file__).parent / "migrations"


class AuthServiceServicer:
    """Handlers of aivera.auth.v1.AuthService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


class AuthAdminServiceServicer:
    """Handlers of aivera.auth.v1.AuthAdminService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


class AuthInternalServiceServicer:
    """Handlers of aivera.auth.v1.AuthInternalService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


def make_spec(settings: AuthSettings) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        services = auth_pb2.DESCRIPTOR.services_by_name
        return [
            (services["AuthService"], AuthServiceServicer(app)),
            (services["AuthAdminService"], AuthAdminServiceServicer(app)),
            (services["AuthInternalService"], AuthInternalServiceServicer(app)),
        ]

    return ServiceSpec(
        name="auth",
        port=settings.auth_port,
        http_port=settings.auth_http_port,
        build=build,
        schema="auth",
        migrations=MIGRATIONS,
    )
