"""The whole mesh under a mixed load: token exchange, lists, chat turns, search, uploads.

A throw-away Postgres, the five services each in its own process (as `make run` starts
them, request logs included), and a loopback stand-in for Gemini's REST API that answers
every chat turn with a short streamed reply. BENCH_LOAD_USERS users (each with a file, a
knowledge base holding one ingested document, a chat and a provider key) are driven by
BENCH_LOAD_CONCURRENCY concurrent clients for BENCH_LOAD_SECONDS (default 60), each
picking its next call by weight:

    exchange  ExchangeStaticToken                                   10 %
    lists     ListChats / ListFiles / ListKnowledgeBases / ListJobs 35 %
    chat      SendMessage, read to its final event                  15 %
    search    Search in the user's knowledge base                   25 %
    upload    Upload of a 2 kB text file                            15 %

Printed per kind: calls, p50 and p99 latency, error rate; the p50 is also set against a
baseline measured in the same run (the same mix from one client, before the load), so
the ratio says what the load costs. Per service: RSS after seeding, peak during the
load, and CPU seconds used by the load.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import jobs_pb2, jobs_pb2_grpc
from services.common.devpg import free_port, temporary_cluster
from services.common.identity import client_entry

SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
BASELINE_SECONDS = float(os.environ.get("BENCH_LOAD_BASELINE_SECONDS", str(max(3.0, SECONDS / 10))))
USERS = int(os.environ.get("BENCH_LOAD_USERS", "8"))
CONCURRENCY = int(os.environ.get("BENCH_LOAD_CONCURRENCY", "32"))
ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("auth", "storage", "rag", "training", "chat")
# Each service's mesh credential for this run (auth needs none).
SECRETS = {name: "svc_" + secrets.token_urlsafe(24) for name in SERVICES if name != "auth"}
WEIGHTS = {"exchange": 10, "lists": 35, "chat": 15, "search": 25, "upload": 15}
DOC = (
    "# Паспорт вентиляции\n\nПриточная установка ПВ-1 обслуживает второй этаж; расход "
    "воздуха 4200 м³/ч. Вытяжная установка В-2 работает с ней в паре.\n"
)
REPLY = "Установка ПВ-1 обслуживает второй этаж."

Md = tuple[tuple[str, str], ...]


# -- a loopback stand-in for Gemini --------------------------------------------------------
def _gemini_chunk(text: str, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if last:
        candidate["finishReason"] = "STOP"
    usage = {"promptTokenCount": 20, "candidatesTokenCount": 8, "totalTokenCount": 28}
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "bench"}


async def _gemini(request: web.Request) -> web.StreamResponse:
    _, _, method = request.match_info["call"].partition(":")
    await request.read()
    if method == "generateContent":
        return web.json_response(_gemini_chunk(REPLY, True))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = REPLY.split(" ")
    for n, word in enumerate(words):
        chunk = _gemini_chunk(word + " ", n == len(words) - 1)
        await response.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
    await response.write_eof()
    return response


# -- the mesh ------------------------------------------------------------------------------
@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]


def _env(dsn: str, data: Path, gemini_url: str) -> tuple[dict[str, str], dict[str, int], str]:
    ports = {name: free_port() for name in SERVICES}
    admin = "avs_" + secrets.token_urlsafe(32)
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    env = {
        **os.environ,
        "AIVERA_ENV": "dev",
        "DATABASE_URL": dsn,
        "DATA_DIR": str(data),
        "GRPC_HOST": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "JWT_PRIVATE_KEYS": pem,
        "MASTER_ENCRYPTION_KEY": "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIVERA_BOOTSTRAP_ADMIN_TOKEN": admin,
        # One credential per service, registered at auth (services/common/identity.py).
        "AUTH_SERVICE_CLIENTS": ",".join(client_entry(n, SECRETS[n]) for n in SECRETS),
        "EXCHANGE_FAILURE_LIMIT": "1000000",
        "GEMINI_BASE_URL": gemini_url,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for name, port in ports.items():
        env[f"{name.upper()}_PORT"] = str(port)
        env[f"{name.upper()}_HTTP_PORT"] = str(free_port())
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
    return env, ports, admin


async def _serving(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            with contextlib.suppress(grpc.aio.AioRpcError):  # not listening yet: poll again
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"the service on port {port} did not become SERVING")


# -- users and calls -----------------------------------------------------------------------
@dataclass
class User:
    static_token: str
    md: Md
    kb: str
    chats: list[str]  # one per client that uses this user: a chat runs one turn at a time


class Client:
    def __init__(self, channels: dict[str, grpc.aio.Channel]) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(channels["auth"])
        self.admin = auth_pb2_grpc.AuthAdminServiceStub(channels["auth"])
        self.storage = storage_pb2_grpc.StorageServiceStub(channels["storage"])
        self.rag = rag_pb2_grpc.RagServiceStub(channels["rag"])
        self.chat = chat_pb2_grpc.ChatServiceStub(channels["chat"])
        self.jobs = jobs_pb2_grpc.TrainingServiceStub(channels["training"])

    async def exchange(self, static_token: str) -> Md:
        reply = await self.auth.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=static_token), timeout=30
        )
        return (("authorization", f"Bearer {reply.access_token}"),)

    async def upload(self, md: Md, data: bytes, name: str) -> str:
        async def reqs() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=storage_pb2.BUCKET_DOCUMENTS, filename=name, size_bytes=len(data)
                )
            )
            yield storage_pb2.UploadRequest(chunk=data)

        return str((await self.storage.Upload(reqs(), metadata=md, timeout=30)).id)

    async def new_user(self, admin_md: Md, n: int) -> User:
        created = await self.admin.CreateUser(
            auth_pb2.CreateUserRequest(username=f"load-{n}-{uuid.uuid4().hex[:6]}"),
            metadata=admin_md,
        )
        md = await self.exchange(created.static_token)
        await self.auth.SetProviderKey(
            auth_pb2.SetProviderKeyRequest(
                provider=auth_pb2.PROVIDER_GEMINI, api_key="AIza" + secrets.token_hex(16)
            ),
            metadata=md,
        )
        file_id = await self.upload(md, DOC.encode(), "паспорт.md")
        kb = await self.rag.CreateKnowledgeBase(
            rag_pb2.CreateKnowledgeBaseRequest(name=f"kb {n}"), metadata=md
        )
        events = [
            e
            async for e in self.rag.IngestDocument(
                rag_pb2.IngestDocumentRequest(knowledge_base_id=kb.id, file_id=file_id),
                metadata=md,
                timeout=120,
            )
        ]
        if not events:
            raise RuntimeError("the ingest ended without events")
        chats = [
            (
                await self.chat.CreateChat(
                    chat_pb2.CreateChatRequest(title=f"load {n}.{i}", knowledge_base_ids=[kb.id]),
                    metadata=md,
                )
            ).id
            for i in range(-(-CONCURRENCY // USERS))
        ]
        return User(created.static_token, md, kb.id, chats)

    async def call(self, kind: str, user: User, rnd: random.Random, client_no: int) -> None:
        md = user.md
        if kind == "exchange":
            await self.exchange(user.static_token)
        elif kind == "lists":
            which = rnd.randrange(4)
            if which == 0:
                await self.chat.ListChats(chat_pb2.ListChatsRequest(), metadata=md, timeout=30)
            elif which == 1:
                await self.storage.ListFiles(
                    storage_pb2.ListFilesRequest(), metadata=md, timeout=30
                )
            elif which == 2:
                await self.rag.ListKnowledgeBases(
                    rag_pb2.ListKnowledgeBasesRequest(), metadata=md, timeout=30
                )
            else:
                await self.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md, timeout=30)
        elif kind == "chat":
            async for event in self.chat.SendMessage(
                chat_pb2.SendMessageRequest(
                    chat_id=user.chats[client_no % len(user.chats)],
                    text="Что обслуживает ПВ-1?",
                ),
                metadata=md,
                timeout=60,
            ):
                if event.HasField("error"):
                    raise RuntimeError(event.error.message)
        elif kind == "search":
            await self.rag.Search(
                rag_pb2.SearchRequest(knowledge_base_ids=[user.kb], query="ПВ-1 этаж"),
                metadata=md,
                timeout=30,
            )
        else:
            await self.upload(md, os.urandom(1024).hex().encode(), "note.txt")


@dataclass
class Stats:
    latencies: dict[str, list[float]]
    errors: dict[str, int]
    samples: dict[str, str]  # kind → one error, for the record


async def drive(
    client: Client, users: list[User], seconds: float, concurrency: int, seed: int
) -> Stats:
    stats = Stats(defaultdict(list), defaultdict(int), {})
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    end = time.monotonic() + seconds

    async def worker(n: int) -> None:
        rnd = random.Random(seed * 1000 + n)
        while time.monotonic() < end:
            kind = rnd.choices(kinds, weights)[0]
            # A chat runs one turn at a time: client n sends its turns to a chat of its own.
            user = users[n % len(users)] if kind == "chat" else rnd.choice(users)
            start = time.perf_counter()
            try:
                await client.call(kind, user, rnd, n // len(users))
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                stats.errors[kind] += 1
                stats.samples.setdefault(kind, str(exc)[:200])
            stats.latencies[kind].append(time.perf_counter() - start)

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return stats


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _run(dsn: str, data: Path) -> None:
    app = web.Application()
    app.router.add_post("/{version}/models/{call}", _gemini)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    gemini_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", gemini_port).start()
    env, ports, admin_token = _env(dsn, data, f"http://127.0.0.1:{gemini_port}")
    services: list[Service] = []
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for name in SERVICES:
            log = (logs / f"{name}.log").open("wb")
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [sys.executable, "-m", f"services.{name}"],
                cwd=ROOT,
                env={**env, "AIVERA_SERVICE_SECRET": SECRETS.get(name, "")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            services.append(Service(name, ports[name], proc))
        for s in services:
            await _serving(s.port, 180)
        channels = {s.name: grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in services}
        client = Client(channels)
        admin_md = await client.exchange(admin_token)
        users = [await client.new_user(admin_md, n) for n in range(USERS)]
        procs = {s.name: psutil.Process(s.proc.pid) for s in services}
        idle = {name: p.memory_info().rss for name, p in procs.items()}
        peak = dict(idle)

        baseline = await drive(client, users, BASELINE_SECONDS, 1, seed=1)
        cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}

        async def sample_rss() -> None:
            while True:
                for name, p in procs.items():
                    peak[name] = max(peak[name], p.memory_info().rss)
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_rss())
        started = time.perf_counter()
        loaded = await drive(client, users, SECONDS, CONCURRENCY, seed=2)
        elapsed = time.perf_counter() - started
        sampler.cancel()
        cpu = {name: sum(p.cpu_times()[:2]) - cpu0[name] for name, p in procs.items()}
        for ch in channels.values():
            await ch.close()
    finally:
        for s in services:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in services:
            try:
                s.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                s.proc.kill()
        await runner.cleanup()

    total = sum(len(v) for v in loaded.latencies.values())
    errors = sum(loaded.errors.values())
    print(
        f"load: {total} calls in {elapsed:.0f} s ({total / elapsed:.0f}/s) from {CONCURRENCY} "
        f"clients over {USERS} users; errors {errors} ({100 * errors / max(1, total):.2f} %); "
        f"{os.cpu_count()} CPUs"
    )
    print(f"   {'kind':<9} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'p50 alone':>10} {'p50 ratio':>9}")  # fmt: skip
    for kind in WEIGHTS:
        lat = loaded.latencies.get(kind, [])
        base = baseline.latencies.get(kind, [])
        p50, p99 = _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000
        alone = statistics.median(base) * 1000 if base else float("nan")
        rate = 100 * loaded.errors.get(kind, 0) / max(1, len(lat))
        print(
            f"   {kind:<9} {len(lat):>6} {p50:>8.1f} {p99:>8.1f} {rate:>6.2f}% "
            f"{alone:>10.1f} {p50 / alone if alone else float('nan'):>8.1f}x"
        )
    for kind, sample in loaded.samples.items():
        print(f"   first {kind} error: {sample}")
    print(f"   {'service':<9} {'RSS idle':>9} {'RSS peak':>9} {'CPU s':>7}")
    for name in SERVICES:
        print(
            f"   {name:<9} {idle[name] / 2**20:>7.0f}Mi {peak[name] / 2**20:>7.0f}Mi "
            f"{cpu[name]:>7.1f}"
        )


def main() -> None:
    with temporary_cluster("aivera-bench-load-") as pg:
        dsn = pg.create_database("bench_load")
        with tempfile.TemporaryDirectory(prefix="aivera-bench-load-") as data:
            asyncio.run(_run(dsn, Path(data)))


if __name__ == "__main__":
    main()
