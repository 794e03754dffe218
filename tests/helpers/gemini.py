"""A loopback server speaking Gemini's REST wire format, so the real google-genai client
runs against it in tests.

Endpoints: `POST /v1beta/models/{model}:generateContent` (one JSON answer) and
`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` (SSE `data: {json}` chunks).
Each request is recorded (model, method, API key header, body) and answered by the next
scripted `Reply` in the queue, or by `default` when the queue is empty. Replies can stream
text in pieces, call functions, fail with an HTTP status before streaming (400
API_KEY_INVALID, 429 RESOURCE_EXHAUSTED, 500...), fail in the middle of a stream (an SSE
error event, or a dropped connection), or hang until the client goes away.

    async with GeminiServer(valid_keys={"k1"}) as gemini:
        gemini.script(Reply.call("zoom", {...}), Reply.text("Ответ", pieces=3))
        client = genai.Client(api_key="k1", http_options=HttpOptions(base_url=gemini.base_url))
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer."""

    # Each chunk is a list of parts ({"text": ...} or {"functionCall": {...}}).
    chunks: list[list[dict[str, Any]]] = field(default_factory=list)
    # HTTP error before any chunk: status and the Google error body.
    status: int = 200
    error: dict[str, Any] | None = None
    # Mid-stream failure after this many chunks: an SSE error event (`fail_status`), or a
    # dropped connection when `drop` is set.
    fail_after: int | None = None
    fail_status: int = 500
    drop: bool = False
    # After the chunks, keep the stream open until the client disconnects.
    hang: bool = False
    # Seconds between chunks, and before the first one.
    delay: float = 0.0
    start_delay: float = 0.0
    finish_reason: str = "STOP"
    prompt_tokens: int = 11
    output_tokens: int | None = None

    # -- builders -----------------------------------------------------------------------
    @classmethod
    def text(cls, text: str, *, pieces: int = 1, **kw: Any) -> Reply:
        size = max(1, -(-len(text) // max(1, pieces)))
        parts = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        return cls(chunks=[[{"text": p}] for p in parts], **kw)

    @classmethod
    def tokens(cls, tokens: list[str], **kw: Any) -> Reply:
        return cls(chunks=[[{"text": t}] for t in tokens], **kw)

    @classmethod
    def call(cls, name: str, args: dict[str, Any], *, text: str = "", **kw: Any) -> Reply:
        parts: list[dict[str, Any]] = [{"text": text}] if text else []
        parts.append({"functionCall": {"name": name, "args": args}})
        return cls(chunks=[parts], **kw)

    @classmethod
    def calls(cls, *calls: tuple[str, dict[str, Any]], **kw: Any) -> Reply:
        return cls(chunks=[[{"functionCall": {"name": n, "args": a}} for n, a in calls]], **kw)

    @classmethod
    def http_error(cls, status: int, google_status: str, message: str, **kw: Any) -> Reply:
        body = {"error": {"code": status, "message": message, "status": google_status}}
        return cls(status=status, error=body, **kw)

    @classmethod
    def rate_limited(cls) -> Reply:
        return cls.http_error(
            429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."
        )

    @classmethod
    def invalid_key(cls) -> Reply:
        return cls(status=400, error=invalid_key_body())


def invalid_key_body() -> dict[str, Any]:
    return {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }


@dataclass
class Recorded:
    """A request the server received."""

    model: str
    method: str  # generateContent | streamGenerateContent
    api_key: str
    body: dict[str, Any]

    @property
    def system_instruction(self) -> str:
        parts = (self.body.get("systemInstruction") or {}).get("parts") or []
        return "".join(p.get("text", "") for p in parts)

    @property
    def contents(self) -> list[dict[str, Any]]:
        return list(self.body.get("contents") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def function_names(self) -> list[str]:
        return [
            d["name"]
            for t in self.tools
            for d in t.get("functionDeclarations") or ()
            if "name" in d
        ]

    def texts(self) -> list[str]:
        """Every text part of the contents, in order."""
        return [p["text"] for c in self.contents for p in c.get("parts", []) if "text" in p]

    def inline_images(self) -> list[tuple[str, bytes]]:
        """(mime type, bytes) of every inline image of the contents, in order."""
        out = []
        for content in self.contents:
            for part in content.get("parts", []):
                blob = part.get("inlineData") or part.get("inline_data")
                if blob:
                    mime = blob.get("mimeType") or blob.get("mime_type") or ""
                    data = blob.get("data", "")
                    out.append((mime, base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))))
        return out

    def function_responses(self) -> list[dict[str, Any]]:
        return [
            p["functionResponse"]
            for c in self.contents
            for p in c.get("parts", [])
            if "functionResponse" in p
        ]


class GeminiServer:
    """The loopback Gemini server. Use as an async context manager."""

    def __init__(self, *, valid_keys: set[str] | None = None, default: Reply | None = None) -> None:
        self.valid_keys = valid_keys
        self.default = default or Reply.text("Готово.")
        self.requests: list[Recorded] = []
        self.disconnects = 0  # streams the client left before they ended
        self._queue: list[Reply] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self._queue.extend(replies)

    def reset(self) -> None:
        self._queue.clear()
        self.requests.clear()
        self.disconnects = 0

    async def __aenter__(self) -> GeminiServer:
        app = web.Application()
        app.router.add_post("/{version}/models/{call}", self._handle)
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

    # -- handling -----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        key = request.headers.get("x-goog-api-key", "") or request.query.get("key", "")
        body = await request.json()
        self.requests.append(Recorded(model=model, method=method, api_key=key, body=body))
        if self.valid_keys is not None and key not in self.valid_keys:
            return web.json_response(invalid_key_body(), status=400)
        reply = self._queue.pop(0) if self._queue else self.default
        if reply.error is not None:
            return web.json_response(reply.error, status=reply.status)
        if method == "generateContent":
            parts = [p for chunk in reply.chunks for p in chunk]
            return web.json_response(self._chunk(reply, parts, last=True, model=model))
        if method != "streamGenerateContent":
            return web.json_response(
                {"error": {"code": 404, "message": "no such method"}}, status=404
            )
        return await self._stream(request, reply, model)

    def _chunk(
        self, reply: Reply, parts: list[dict[str, Any]], *, last: bool, model: str
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        out_tokens = reply.output_tokens
        if out_tokens is None:
            out_tokens = sum(len(p.get("text", "").split()) or 1 for c in reply.chunks for p in c)
        if last:
            candidate["finishReason"] = reply.finish_reason
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": reply.prompt_tokens,
                "candidatesTokenCount": out_tokens if last else 0,
                "totalTokenCount": reply.prompt_tokens + (out_tokens if last else 0),
            },
            "modelVersion": model,
        }

    async def _stream(self, request: web.Request, reply: Reply, model: str) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        try:
            if reply.start_delay:
                await asyncio.sleep(reply.start_delay)
            for n, parts in enumerate(reply.chunks):
                if reply.fail_after is not None and n == reply.fail_after:
                    await self._fail(response, reply)
                    return response
                if reply.delay and n:
                    await asyncio.sleep(reply.delay)
                last = n == len(reply.chunks) - 1 and not reply.hang
                payload = self._chunk(reply, parts, last=last, model=model)
                await response.write(f"data: {json.dumps(payload)}\r\n\r\n".encode())
            if reply.fail_after is not None and reply.fail_after >= len(reply.chunks):
                await self._fail(response, reply)
                return response
            if reply.hang:
                while True:  # until the client goes away
                    await asyncio.sleep(0.05)
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        self.disconnects += 1
                        return response
            await response.write_eof()
        except ConnectionResetError:
            self.disconnects += 1
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        return response

    async def _fail(self, response: web.StreamResponse, reply: Reply) -> None:
        if reply.drop:
            transport = response._req.transport if response._req is not None else None
            if transport is not None:
                transport.abort()
            return
        error = {
            "error": {
                "code": reply.fail_status,
                "message": "Internal error encountered.",
                "status": "INTERNAL",
            }
        }
        await response.write(f"data: {json.dumps(error)}\r\n\r\n".encode())
        await response.write_eof()
