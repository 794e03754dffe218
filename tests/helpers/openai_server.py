"""A loopback server speaking the OpenAI chat-completions streaming wire format and vLLM's
LoRA endpoints, so the chat service's OpenAI-wire provider runs against it in tests.

Endpoints: `GET /health`, `GET /v1/models` (the base model and the loaded adapters),
`POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (as vLLM with
`--enable-lora`: 400 for an adapter already loaded or not loaded), and
`POST /v1/chat/completions` with `stream: true` (SSE `data: {json}` chunks, a usage
chunk, `data: [DONE]`). A model that is neither the base nor a loaded adapter is 404, as
vLLM answers. `fail_after` drops the connection after that many content chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class OpenAIServer:
    base_model: str
    words: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " server."])
    fail_after: int | None = None  # drop the connection after this many chunks
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → load body
    requests: list[dict[str, Any]] = field(default_factory=list)  # chat-completions bodies
    loads: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OpenAIServer:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        ids = [self.base_model, *self.adapters]
        return web.json_response(
            {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}
        )

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("lora_name", "")
        if not name or not body.get("lora_path"):
            return web.Response(status=400, text="lora_name and lora_path are required")
        if name in self.adapters:
            return web.Response(
                status=400, text=f"The lora adapter '{name}' has already been loaded."
            )
        self.loads.append(body)
        self.adapters[name] = body
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.adapters.pop(body.get("lora_name", ""), None) is None:
            return web.Response(status=400, text="not loaded")
        return web.Response(text="Success")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        model = body.get("model")
        if model != self.base_model and model not in self.adapters:
            return web.json_response(
                {"error": {"message": f"The model `{model}` does not exist.", "code": 404}},
                status=404,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, word in enumerate(self.words):
            if self.fail_after is not None and n == self.fail_after:
                if request.transport is not None:
                    request.transport.abort()
                return response
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": len(self.words),
                "total_tokens": 7 + len(self.words),
            },
        }
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response
