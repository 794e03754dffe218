"""Web console: time from Send to the first token in the browser, against the CLI's.

One mesh for both (a throw-away Postgres; the real auth, storage, RAG and chat services;
the loopback Gemini server answering at once; the local gateway serving web/dist), one
user, a new chat per round (no history: one model call per turn):

- baseline: the Python SDK the CLI uses, over native gRPC — from the SendMessage call to
  the first `llm_token` event;
- the console in Debian's headless Chromium (web/e2e/first-token.mjs) — from the Send
  click to the first text of the answer on the page (gRPC-web through the gateway,
  connect-web, React rendering).

Prints the medians and their ratio next to the goal (browser ≤ 1.2 × CLI). Skipped, with
the reason, without chromium or a built console.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from aivera.chat.v1 import chat_pb2
from client import AsyncClient, Credentials, Endpoints
from gateway import grpcweb
from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS
from services.common.devpg import free_port, temporary_cluster
from tests.client.mesh import start_mesh
from tests.helpers.gemini import Reply

ROUNDS = int(os.environ.get("BENCH_WEB_ROUNDS", "8"))
GOAL_RATIO = 1.2
KEY = "AIzaSyBENCHWEB000000000000000000000000042"
ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"


class Browser:
    """web/e2e/first-token.mjs in Chromium: one round per line written to it."""

    def __init__(self, origin: str, static_token: str) -> None:
        self.env = {
            **os.environ,
            "BASE_URL": origin + "/",
            "STATIC_TOKEN": static_token,
            "CHROMIUM": shutil.which("chromium") or "",
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def _line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        found: dict[str, Any] = json.loads(raw or b'{"error": "the browser script ended"}')
        if "error" in found:
            raise RuntimeError(found["error"])
        return found

    async def __aenter__(self) -> Browser:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(WEB / "e2e" / "first-token.mjs"),
            cwd=WEB,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self._line()  # signed in
        return self

    async def round(self) -> float:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        return float((await self._line())["ms"])

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def cli_first_token(user: AsyncClient, n: int) -> float:
    """The SDK's SendMessage (what `aivera chat send` runs), timed to the first token."""
    chat = await user.create_chat(f"cli {n}")
    start = time.perf_counter()
    first = 0.0
    async for event in user.send_message(chat.id, f"Question {n}"):
        if not first and event.WhichOneof("event") == "llm_token":
            first = (time.perf_counter() - start) * 1000
    return first


async def grpc_web_first_token(
    http: aiohttp.ClientSession, origin: str, access: str, user: AsyncClient, n: int
) -> float:
    """SendMessage as a browser's gRPC-web call, timed to the first token's frame."""
    chat_id = (await user.create_chat(f"grpc-web {n}")).id
    body = grpcweb.encode_message(
        chat_pb2.SendMessageRequest(chat_id=chat_id, text=f"Question {n}").SerializeToString()
    )
    headers = {
        "Content-Type": grpcweb.CONTENT_TYPE_BINARY,
        "X-Grpc-Web": "1",
        "Authorization": f"Bearer {access}",
    }
    start = time.perf_counter()
    first = 0.0
    buffer = b""
    async with http.post(
        f"{origin}/aivera.chat.v1.ChatService/SendMessage", data=body, headers=headers
    ) as resp:
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while len(buffer) >= 5:
                size = int.from_bytes(buffer[1:5], "big")
                if len(buffer) < 5 + size:
                    break
                flag, payload, buffer = buffer[0], buffer[5 : 5 + size], buffer[5 + size :]
                if not first and not flag & grpcweb.TRAILERS_FLAG:
                    event = chat_pb2.ChatEvent.FromString(payload)
                    if event.WhichOneof("event") == "llm_token":
                        first = (time.perf_counter() - start) * 1000
    return first


def missing() -> str | None:
    if shutil.which("node") is None or not (WEB / "node_modules" / "playwright-core").is_dir():
        return "node or web/node_modules missing (make web)"
    if not (WEB / "dist" / "index.html").is_file():
        return "web/dist missing (make web)"
    if shutil.which("chromium") is None:
        return "Debian's chromium missing (make chromium)"
    return None


async def run(database_url: str) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    async with start_mesh(
        database_url, storage_public_url=origin, access_token_ttl_seconds=3600
    ) as mesh:
        # The answer's first piece at once, the rest after: the figure is the path, not
        # the model.
        mesh.gemini.default = Reply.tokens(["First ", "token ", "and ", "more."], delay=0.05)
        ports = {
            "auth": mesh.auth.grpc_port,
            "storage": mesh.storage.grpc_port,
            "rag": mesh.rag_app.grpc_port,
            "chat": mesh.chat.grpc_port,
        }
        gateway = Gateway(
            GatewaySettings(
                port=port,
                admin_port=0,
                upstreams={n: f"127.0.0.1:{ports.get(n, 1)}" for n in UPSTREAMS},
                web_root=WEB / "dist",
                storage_http=f"127.0.0.1:{mesh.storage.http_port}",
            )
        )
        await gateway.start()
        try:
            endpoints = Endpoints.resolve(env=mesh.env())
            async with AsyncClient(endpoints, store=False, credentials=Credentials()) as admin:
                await admin.login(mesh.bootstrap_token)
                created = await admin.create_user("bench-" + uuid.uuid4().hex[:8])
            cli_ms: list[float] = []
            gateway_ms: list[float] = []
            web_ms: list[float] = []
            async with (
                AsyncClient(endpoints, store=False, credentials=Credentials()) as user,
                aiohttp.ClientSession() as http,
                Browser(origin, created.static_token) as browser,
            ):
                access = (await user.login(created.static_token)).access_token
                await user.set_provider_key(KEY)
                # Interleaved rounds: load on the shared machine drifts alike for all three;
                # round 0 warms channels and connections up and is not counted.
                for n in range(ROUNDS + 1):
                    cli = await cli_first_token(user, n)
                    via = await grpc_web_first_token(http, origin, access, user, n)
                    page = await browser.round()
                    if n:
                        cli_ms.append(cli)
                        gateway_ms.append(via)
                        web_ms.append(page)
        finally:
            await gateway.stop()
    cli, web = statistics.median(cli_ms), statistics.median(web_ms)
    via = statistics.median(gateway_ms)
    ratio = web / cli
    print(f"   send → first token, median of {ROUNDS} (new chat each, loopback Gemini)")
    print(f"   CLI (SDK, native gRPC)                    {cli:7.1f} ms   baseline")
    print(f"   gRPC-web via the gateway (HTTP client)    {via:7.1f} ms   {via / cli:.2f}x")
    print(f"   browser (Chromium, gRPC-web via gateway)  {web:7.1f} ms   {ratio:.2f}x")
    verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
    print(f"   goal: browser ≤ {GOAL_RATIO}x the CLI — {verdict}")


def main() -> None:
    why = missing()
    if why is not None:
        print(f"   skipped: {why}")
        return
    before = os.getloadavg()[0]
    with temporary_cluster("aivera-bench-web-") as pg:
        asyncio.run(run(pg.create_database("bench_web")))
    # The goal assumes a quiet machine; say how busy this one was.
    print(
        f"   machine: {os.cpu_count()} CPUs, load average {before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )


if __name__ == "__main__":
    main()
