"""Wiring of the chat service: its servicers, schema and migrations."""

from __future__ import annotations

from pathlib import Path

from aivera.chat.v1 import chat_pb2

from services.chat.config import ChatSettings
from services.common.server import App, Servicers, ServiceSpec

MIGRATIONS = Path(__file__).parent / "migrations"


class ChatServiceServicer:
    """Handlers of aivera.chat.v1.ChatService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


class PromptAdminServiceServicer:
    """Handlers of aivera.chat.v1.PromptAdminService.

    RPCs not defined here answer UNIMPLEMENTED until their issue lands.
    """

    def __init__(self, app: App) -> None:
        self.app = app


def make_spec(settings: ChatSettings) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        services = chat_pb2.DESCRIPTOR.services_by_name
        return [
            (services["ChatService"], ChatServiceServicer(app)),
            (services["PromptAdminService"], PromptAdminServiceServicer(app)),
        ]

    return ServiceSpec(
        name="chat",
        port=settings.chat_port,
        http_port=settings.chat_http_port,
        build=build,
        schema="chat",
        migrations=MIGRATIONS,
    )
