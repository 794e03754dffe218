"""Settings of the rag service (environment variables; see the README table)."""

from __future__ import annotations

from services.common.config import CommonSettings


class RagSettings(CommonSettings):
    rag_port: int = 50053
    rag_http_port: int = 9093
