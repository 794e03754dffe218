"""Settings of the chat service (environment variables; see the README table)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

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
    # LoRA adapters of clones kept loaded per base model (least recently used out).
    local_adapter_cache_size: int = 4
    # Base models kept loaded at once (least recently used out), within this many bytes
    # of weights (0: no byte limit).
    local_max_base_models: int = 2
    local_memory_budget_bytes: int = 0
    # "auto": CUDA in bf16 when present, else CPU in fp32; or "cpu" / "cuda".
    local_device: str = "auto"
    # Concurrent turns on one base model generated together (same adapter per batch),
    # and how many more may wait; past that a turn is refused with MODEL_BUSY.
    local_batch_size: int = 8
    local_queue_limit: int = 16

    # Base model → OpenAI-compatible server (vLLM with --enable-lora) that serves it
    # instead of the in-process model, e.g. INFERENCE_URLS='{"qwen2.5-7b-instruct":
    # "http://vllm-qwen2-5-7b:8000"}'.
    inference_urls: dict[str, str] = Field(default_factory=dict)
    inference_api_key: SecretStr | None = None
    inference_timeout_seconds: float = 120.0
    # Signed URLs of adapter files handed to the inference server to load.
    inference_adapter_url_ttl_seconds: int = 900
    # A volume shared with the inference servers (stock vLLM loads adapters from a local
    # path): chat writes verified adapters under INFERENCE_ADAPTERS_DIR and names them
    # <INFERENCE_ADAPTERS_MOUNT>/<model id>, the same folder as the servers mount it.
    # Unset: the load request carries signed URLs for a resolver plugin to fetch.
    inference_adapters_dir: Path | None = None
    inference_adapters_mount: str = "/adapters"

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
    # Images a user sends with a message: at most this many, each within this many
    # pixels (read from the header, before decoding) and bytes.
    chat_max_images_per_message: int = 8
    chat_max_image_pixels: int = 40_000_000
    chat_max_image_bytes: int = 20 * 1024 * 1024

    @property
    def spool_dir(self) -> Path:
        return self.chat_spool_dir or self.data_dir / "chat-spool"
