"""A base model on an OpenAI-compatible inference server (vLLM with `--enable-lora`),
streamed over the chat-completions wire format (server-sent events).

A clone's adapter is served by name (its model id): when the server does not list it in
`/v1/models` it is loaded first through vLLM's `/v1/load_lora_adapter`. Its `lora_path`
is the adapter's folder on a volume shared with the server (INFERENCE_ADAPTERS_DIR, as
stock vLLM loads from a local path), or without one the storage service's signed URL of
the adapter's config with every file's URL alongside (`lora_files`), for a resolver
plugin on the server to fetch. A server that cannot be
reached or fails is PROVIDER_UNAVAILABLE (retryable); a stream that breaks off before
`[DONE]` is the same failure, after the text streamed so far (the runner keeps it and
stores the answer INCOMPLETE); 429 is MODEL_BUSY.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx
from google.rpc import code_pb2

from services.chat.clients import Artifact, Files
from services.chat.providers.base import Chunk, LlmRequest, ProviderError, Usage
from services.common.errors import Reason

log = logging.getLogger("aivera.chat.openai")


def unavailable(what: str) -> ProviderError:
    return ProviderError(
        Reason.PROVIDER_UNAVAILABLE,
        code_pb2.UNAVAILABLE,
        f"Сервер модели недоступен ({what}). Повторите попытку.",
        retryable=True,
    )


def busy() -> ProviderError:
    return ProviderError(
        Reason.MODEL_BUSY,
        code_pb2.RESOURCE_EXHAUSTED,
        "Сервер модели перегружен. Повторите через несколько секунд.",
        retryable=True,
    )


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        url: str,
        *,
        base: str,
        artifact: Artifact | None,
        files: Files,
        api_key: str | None = None,
        timeout: float = 120.0,
        url_ttl: int = 900,
    ) -> None:
        self.url = url.rstrip("/")
        self.base = base
        self.artifact = artifact
        self.files = files
        self.timeout = timeout
        self.url_ttl = url_ttl
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self.notices: list[tuple[str, str]] = []
        # The adapter's folder as the server sees it (a shared volume); empty: signed URLs.
        self.lora_path = ""

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider({self.url!r}, base={self.base!r})"

    @property
    def model_name(self) -> str:
        if self.artifact is None:
            return self.base
        return f"{self.base}+lora:{self.artifact.id}"

    @property
    def served_model(self) -> str:
        """What the server calls it: the base model, or the adapter's name."""
        return self.base if self.artifact is None else self.artifact.id

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self.client.get(self.url + path)
        except httpx.HTTPError as exc:
            raise unavailable(type(exc).__name__) from None

    async def ensure_adapter(self) -> None:
        """Loads the clone's adapter on the server unless it already serves it."""
        if self.artifact is None:
            return
        listed = await self._get("/v1/models")
        if listed.status_code == HTTPStatus.OK:
            ids = {m.get("id") for m in listed.json().get("data", [])}
            if self.artifact.id in ids:
                return
        body: dict[str, Any] = {"lora_name": self.artifact.id, "lora_path": self.lora_path}
        if not self.lora_path:
            urls: dict[str, str] = {}
            for name, file_id, _ in self.artifact.files:
                urls[name], _ = await self.files.signed_url(file_id, self.url_ttl)
            body["lora_path"] = urls.get("adapter_config.json", "")
            body["lora_files"] = urls
        try:
            reply = await self.client.post(self.url + "/v1/load_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            raise unavailable(type(exc).__name__) from None
        # vLLM answers 400 "already loaded" when another replica got there first.
        if reply.status_code == HTTPStatus.BAD_REQUEST and "already" in reply.text:
            return
        if reply.status_code != HTTPStatus.OK:
            raise unavailable(f"adapter load {reply.status_code}")

    def messages(self, request: LlmRequest) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if request.system_instruction:
            out.append({"role": "system", "content": request.system_instruction})
        for content in request.contents:
            text = "\n\n".join(p.text for p in content.parts if p.text)
            if text:
                role = "user" if content.role == "user" else "assistant"
                out.append({"role": role, "content": text})
        return out

    async def stream(self, request: LlmRequest) -> AsyncIterator[Chunk]:
        await self.ensure_adapter()
        body: dict[str, Any] = {
            "model": self.served_model,
            "messages": self.messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_output_tokens:
            body["max_tokens"] = request.max_output_tokens
        done = False
        try:
            async with self.client.stream(
                "POST", self.url + "/v1/chat/completions", json=body
            ) as reply:
                if reply.status_code == HTTPStatus.TOO_MANY_REQUESTS:
                    raise busy()
                if reply.status_code != HTTPStatus.OK:
                    raise unavailable(f"HTTP {reply.status_code}")
                async for line in reply.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = _chunk(json.loads(data))
                    if chunk is not None:
                        yield chunk
        except httpx.HTTPError as exc:
            raise unavailable(type(exc).__name__) from None
        except ValueError:
            raise unavailable("malformed stream") from None
        if not done:
            raise unavailable("the stream broke off")


def _chunk(event: dict[str, Any]) -> Chunk | None:
    if "error" in event:
        raise unavailable(str(event["error"].get("message", "error"))[:200])
    usage = event.get("usage")
    text = ""
    for choice in event.get("choices") or ():
        text += (choice.get("delta") or {}).get("content") or ""
    if not text and not usage:
        return None
    return Chunk(
        text=text,
        usage=None
        if not usage
        else Usage(
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            int(usage.get("total_tokens", 0)),
        ),
    )
