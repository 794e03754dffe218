"""Settings of the chat service (environment variables; see the README table)."""

from __future__ import annotations

from services.common.config import CommonSettings


class ChatSettings(CommonSettings):
    chat_port: int = 50054
    chat_http_port: int = 9094
