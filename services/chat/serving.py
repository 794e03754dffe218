"""Who serves a clone: its own base model (the adapter's, else the clone's; the chat
service's default model when neither names one) with its active adapter, on the
in-process models or, for a base model with an INFERENCE_URLS entry, on that
OpenAI-compatible server (vLLM). A simulated adapter is never served as trained: the
base model answers and the turn says so.

Errors come before anything is stored: an unknown or unservable base model is
FAILED_PRECONDITION with BASE_MODEL_UNAVAILABLE, an adapter whose files do not match the
artifact FAILED_PRECONDITION with ADAPTER_INVALID, a full queue RESOURCE_EXHAUSTED with
MODEL_BUSY and a retry hint.
"""

from __future__ import annotations

from pathlib import Path

from services.chat.adapters import AdapterFiles
from services.chat.clients import Artifact, Clone, Clones, Files
from services.chat.config import ChatSettings
from services.chat.providers.local import LocalModels, LocalProvider, display_name
from services.chat.providers.openai import OpenAIProvider

SIMULATED = "SIMULATED_ADAPTER"


def simulated_notice(model_id: str) -> str:
    return (
        f"Адаптер клона ({model_id}) создан имитацией обучения и не содержит обученных "
        "весов: отвечает базовая модель без адаптера."
    )


class Serving:
    def __init__(
        self,
        *,
        local: LocalModels,
        clones: Clones,
        files: Files,
        adapters_dir: Path,
        settings: ChatSettings,
    ) -> None:
        self.local = local
        self.clones = clones
        self.files = files
        self.adapters = AdapterFiles(adapters_dir, files)
        shared = settings.inference_adapters_dir
        self.shared = None if shared is None else AdapterFiles(shared, files)
        self.settings = settings

    def inference_url(self, base: str) -> str | None:
        urls = self.settings.inference_urls
        return urls.get(base or self.local.name) or urls.get(display_name(base or self.local.name))

    async def default(self) -> LocalProvider | OpenAIProvider:
        """The chat service's default model (a chat without a clone and without a key)."""
        url = self.inference_url("")
        if url:
            return self._remote(url, self.local.name, None)
        await self.local.check_base("")
        return self.local.provider()

    async def for_clone(self, clone: Clone) -> LocalProvider | OpenAIProvider:
        base = clone.base_model
        adapter: Artifact | None = None
        notices: list[tuple[str, str]] = []
        if clone.active_model_id:
            artifact = await self.clones.artifact(clone.active_model_id)
            base = artifact.base_model or base
            if artifact.simulated:
                notices.append((SIMULATED, simulated_notice(artifact.id)))
            else:
                adapter = artifact
        url = self.inference_url(base)
        provider: LocalProvider | OpenAIProvider
        if url:
            provider = self._remote(url, base or self.local.name, adapter)
            if adapter is not None and self.shared is not None:
                await self.shared.fetch(adapter)  # verified, on the servers' volume
                provider.lora_path = f"{self.settings.inference_adapters_mount}/{adapter.id}"
        else:
            key = await self.local.check_base(base)
            fetched = None if adapter is None else await self.adapters.fetch(adapter)
            provider = self.local.provider(fetched, base=key)
        provider.notices.extend(notices)
        return provider

    def _remote(self, url: str, base: str, artifact: Artifact | None) -> OpenAIProvider:
        return OpenAIProvider(
            url,
            base=display_name(base),
            artifact=artifact,
            files=self.files,
            api_key=(
                self.settings.inference_api_key.get_secret_value()
                if self.settings.inference_api_key
                else None
            ),
            timeout=self.settings.inference_timeout_seconds,
            url_ttl=self.settings.inference_adapter_url_ttl_seconds,
        )
