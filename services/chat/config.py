"""Settings of the chat service (environment variables; see the README table)."""

from __future__ import annotations

from pathlib import Path

from services.common.config import CommonSettings
from services.common.ports import SERVICES


class ChatSettings(CommonSettings):
    chat_port: int = SERVICES["chat"].grpc
    chat_http_port: int = SERVICES["chat"].http

    # Gemini REST endpoint; unset for Google's. Tests point it at a loopback server.
    gemini_base_url: str | None = None
    # Seconds a single provider call may take.
    gemini_timeout_seconds: float = 120.0
    # Provider 429s: attempts in all (the first included) and the first backoff (doubled
    # each time) before the turn fails with RESOURCE_EXHAUSTED.
    provider_retry_attempts: int = 4
    provider_retry_initial_delay_seconds: float = 1.0
    provider_retry_max_delay_seconds: float = 10.0

    # The local model: the built-in name or a local HF folder; DATA_DIR/models caches the
    # converted built-in model.
    local_model: str = "smollm2-135m-instruct"
    # Where converted models and downloaded clone adapters live; default MODELS_DIR, else
    # DATA_DIR/models.
    chat_models_dir: Path | None = None
    # Downloaded clone adapters; default <models dir>/adapters.
    chat_adapters_dir: Path | None = None
    local_max_new_tokens: int = 256
    # LoRA adapters of clones kept loaded on the base model (least recently used out).
    local_adapter_cache_size: int = 4

    # Running turns: how often the partial answer and heartbeat are written, and after how
    # long without a heartbeat a turn counts as cut short (crash of its replica).
    turn_flush_interval_seconds: float = 1.0
    turn_stale_seconds: float = 60.0
    # The final write of a turn is retried with backoff this long; then the turn is
    # spooled to local disk (chat_spool_dir) and written when the database answers again.
    turn_finish_retry_seconds: float = 10.0
    # WatchTurn of a turn that runs on another replica reads its event log this often.
    turn_watch_poll_seconds: float = 0.25
    # Local state; spooled turns live in chat_spool_dir (default DATA_DIR/chat-spool).
    data_dir: Path = Path(".data")
    chat_spool_dir: Path | None = None
    # Search results put into a turn's context.
    search_top_k: int = 8
    # Signed URLs of produced images.
    image_url_ttl_seconds: int = 3600
    # How long a turn waits for attachments still ingesting.
    attachment_wait_seconds: float = 60.0

    @property
    def spool_dir(self) -> Path:
        return self.chat_spool_dir or self.data_dir / "chat-spool"
