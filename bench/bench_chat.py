"""Chat service: token streaming throughput and latency, and the local model's speed.

A throw-away Postgres cluster and the real chat service in its own process (`python -m
bench.bench_chat serve`: the chat service with a synthetic Gemini provider, a static key
source and a static JWKS; everything else as in production, request logs included).
Each figure is set against a baseline measured in the same run:

1. tokens/s of one SendMessage whose provider emits BENCH_CHAT_TOKENS tokens as fast as
   it can, vs a bare grpcio server (same process) streaming the same ChatEvent messages;
2. BENCH_CHAT_STREAMS concurrent SendMessage streams with a provider emitting
   BENCH_CHAT_RATE tokens/s each: the extra inter-token delay the service adds (client
   gap minus provider gap, p50/p99, the p99 next to its goal), the machine's load around
   that run (CPU count, load averages before/after, CPU busy machine-wide and the shares
   of the service and the client; the goal assumes an otherwise idle machine, so the line
   says when it was not), and the service's RSS at idle and at peak;
3. SmolLM2 tokens/s through our local provider (streamer thread, event-loop hand-off) vs
   a direct `model.generate` of the same prompt (this process, no service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from services.common.devpg import LocalPostgres, free_port, temporary_cluster

TOKENS = int(os.environ.get("BENCH_CHAT_TOKENS", "10000"))
STREAMS = int(os.environ.get("BENCH_CHAT_STREAMS", "500"))
RATE = float(os.environ.get("BENCH_CHAT_RATE", "20"))
STREAM_TOKENS = int(os.environ.get("BENCH_CHAT_STREAM_TOKENS", "40"))
LOCAL_TOKENS = int(os.environ.get("BENCH_CHAT_LOCAL_TOKENS", "48"))
ROUNDS = 2
P99_GOAL_MS = 50.0  # extra inter-token delay, 500 streams at 20 tok/s, idle machine
OTHER_WORK_IDLE_PCT = 10.0  # CPU of the machine used by neither the bench nor its service
ROOT = Path(__file__).resolve().parents[1]
ISSUER, AUDIENCE, KID = "aivera-auth", "aivera", "bench"
TOKEN_TEXT = "слово "  # one synthetic token


# -- the service side (child process) ------------------------------------------------------
class SyntheticProvider:
    """A provider whose answer is described by the request: `bench tokens=N rate=R`
    (R tokens/s, 0 = as fast as possible). Each token carries its emission time when
    rated, so the client can tell provider gaps from service delays."""

    name = "synthetic"

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        from services.chat.providers.base import Chunk, Usage

        text = request.contents[-1].parts[0].text or ""
        match = re.search(r"bench tokens=(\d+) rate=([\d.]+)", text)
        count, rate = (int(match[1]), float(match[2])) if match else (10, 0.0)
        interval = 1.0 / rate if rate > 0 else 0.0
        start = time.perf_counter()
        for n in range(count):
            if interval:
                delay = start + n * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield Chunk(text=f"{time.time():.6f}|")
            else:
                yield Chunk(text=TOKEN_TEXT)
        yield Chunk(usage=Usage(10, count, 10 + count))


class StaticKeys:
    async def gemini_key(self, user_id: str) -> str | None:
        return "bench-key"


class _Bare:
    """The baseline: a bare grpc.aio server streaming the same ChatEvent messages."""

    def __init__(self) -> None:
        self.events = [
            chat_pb2.ChatEvent(
                message_id=str(uuid.uuid4()),
                seq=n + 2,
                llm_token=chat_pb2.LlmToken(text=TOKEN_TEXT, model="gemini-2.5-flash"),
            )
            for n in range(TOKENS)
        ]

    async def stream(self, request: Any, context: Any) -> AsyncIterator[chat_pb2.ChatEvent]:
        for event in self.events:
            yield event


async def _serve() -> None:
    from services.chat.config import ChatSettings
    from services.chat.server import make_deps, make_spec
    from services.common import logs, tracing
    from services.common.jwks import JwksVerifier
    from services.common.server import App

    settings = ChatSettings()
    logs.configure("chat", settings.log_level)
    tracing.configure("chat")  # off unless OTEL_EXPORTER_OTLP_ENDPOINT (bench_tracing sets it)
    jwk = json.loads(os.environ["BENCH_JWK"])

    async def fetch() -> list[dict[str, Any]]:
        return [jwk]

    spec = make_spec(settings)
    spec.verifier = lambda app: JwksVerifier(fetch, issuer=ISSUER, audience=AUDIENCE)
    app = App(spec, settings)
    deps = make_deps(app, settings)
    deps.keys = StaticKeys()
    deps.gemini = lambda key: SyntheticProvider()
    spec.deps = deps
    await app.start()
    bare = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        _Bare().stream,
        request_deserializer=chat_pb2.SendMessageRequest.FromString,
        response_serializer=chat_pb2.ChatEvent.SerializeToString,
    )
    bare.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Bare", {"Stream": handler}),)
    )
    bare.add_insecure_port(f"127.0.0.1:{os.environ['BENCH_BARE_PORT']}")
    await bare.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await bare.stop(0)
    await app.stop(1)
    tracing.shutdown()


# -- the client side ----------------------------------------------------------------------
class Client:
    def __init__(self, port: int, bare_port: int, key: ed25519.Ed25519PrivateKey) -> None:
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.bare = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}", options=options)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.key = key

    def token(self) -> tuple[tuple[str, str], ...]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(uuid.uuid4()),
            "role": "user",
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": KID})
        return (("authorization", f"Bearer {token}"),)

    async def chat(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        md = self.token()
        chat = await self.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=md)
        return chat.id, md

    async def turn_rate(self, tokens: int) -> float:
        """Tokens/s of one SendMessage, first token to last."""
        chat_id, md = await self.chat()
        count, first = 0, 0.0
        call = self.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat_id, text=f"bench tokens={tokens} rate=0"),
            metadata=md,
        )
        async for event in call:
            if event.HasField("llm_token"):
                count += 1
                if count == 1:
                    first = time.perf_counter()
        assert count == tokens, count
        return (count - 1) / (time.perf_counter() - first)

    async def bare_rate(self) -> float:
        call = self.bare.unary_stream(
            "/bench.Bare/Stream",
            request_serializer=chat_pb2.SendMessageRequest.SerializeToString,
            response_deserializer=chat_pb2.ChatEvent.FromString,
        )(chat_pb2.SendMessageRequest())
        count, first = 0, 0.0
        async for event in call:
            if event.HasField("llm_token"):
                count += 1
                if count == 1:
                    first = time.perf_counter()
        return (count - 1) / (time.perf_counter() - first)

    async def rated_turn(self, chat_id: str, md: Any, extra: list[float]) -> bool:
        call = self.stub.SendMessage(
            chat_pb2.SendMessageRequest(
                chat_id=chat_id, text=f"bench tokens={STREAM_TOKENS} rate={RATE}"
            ),
            metadata=md,
        )
        previous: tuple[float, float] | None = None
        final = False
        async for event in call:
            if event.HasField("llm_token"):
                arrived = time.time()
                emitted = float(event.llm_token.text.rstrip("|"))
                if previous is not None:
                    extra.append((arrived - previous[0]) - (emitted - previous[1]))
                previous = (arrived, emitted)
            final = final or event.HasField("final")
        return final


async def _wait_serving(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(600):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("chat service did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _service_figures(pg: LocalPostgres) -> None:
    import psutil  # type: ignore[import-untyped]

    dsn = pg.create_database("bench_chat")
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="EdDSA", use="sig")
    port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIVERA_ENV": "dev",
        "DATABASE_URL": dsn,
        "CHAT_PORT": str(port),
        "CHAT_HTTP_PORT": str(free_port()),
        "GRPC_HOST": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "BENCH_JWK": json.dumps(jwk),
        "BENCH_BARE_PORT": str(bare_port),
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "bench.bench_chat", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_serving(port)
        client = Client(port, bare_port, key)
        await client.turn_rate(200)  # warm-up
        await client.bare_rate()
        ours, bare = [], []
        for _ in range(ROUNDS):
            bare.append(await client.bare_rate())
            ours.append(await client.turn_rate(TOKENS))
        print(
            f"chat: 1 stream x {TOKENS} tokens: SendMessage {max(ours):,.0f} tok/s vs bare "
            f"grpcio {max(bare):,.0f} tok/s -> ratio {max(ours) / max(bare):.2f} (goal >= 0.7)"
        )
        service = psutil.Process(proc.pid)
        chats = await asyncio.gather(*(client.chat() for _ in range(STREAMS)))
        idle_rss = service.memory_info().rss
        peak = idle_rss
        extra: list[float] = []
        done = False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, service.memory_info().rss)
                await asyncio.sleep(0.2)

        load_before = os.getloadavg()
        psutil.cpu_percent(None)  # starts the machine-wide CPU window of the streams
        service_cpu = sum(service.cpu_times()[:2])
        client_cpu = time.process_time()
        pg_cpu = _postgres_cpu(pg)
        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        finals = await asyncio.gather(*(client.rated_turn(c, md, extra) for c, md in chats))
        elapsed = time.perf_counter() - start
        done = True
        await sampler
        busy = psutil.cpu_percent(None)
        service_cpu = sum(service.cpu_times()[:2]) - service_cpu
        client_cpu = time.process_time() - client_cpu
        pg_cpu = _postgres_cpu(pg) - pg_cpu
        load_after = os.getloadavg()
        ms = [x * 1000 for x in extra]
        p99 = _pct(ms, 0.99)
        print(
            f"chat: {STREAMS} concurrent streams x {STREAM_TOKENS} tokens at {RATE:g} tok/s: "
            f"{sum(finals)}/{STREAMS} finished in {elapsed:.1f} s; extra inter-token delay "
            f"p50 {_pct(ms, 0.5):.1f} ms, p99 {p99:.1f} ms "
            f"(goal p99 < {P99_GOAL_MS:g} ms on an otherwise idle machine: "
            f"{'ok' if p99 < P99_GOAL_MS else 'OVER'}; "
            f"mean {statistics.fmean(ms):.1f} ms over {len(ms):,} gaps)"
        )
        print(_load_line(load_before, load_after, busy, (service_cpu, client_cpu, pg_cpu), elapsed))
        print(
            f"chat: service RSS {idle_rss / 2**20:.0f} MiB idle (after creating the chats), "
            f"{peak / 2**20:.0f} MiB peak during the streams "
            f"(+{(peak - idle_rss) / 2**10 / max(1, STREAMS):.0f} KiB per stream)"
        )
        await client.channel.close()
        await client.bare.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _local_figures() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.chat import prompts
    from services.chat.providers.base import Content, LlmRequest, Part
    from services.chat.providers.local import LocalModels
    from services.common.localmodels import SMOLLM2, default_models_dir, resolve_model

    path = resolve_model(SMOLLM2, default_models_dir())
    models = LocalModels(path, name=SMOLLM2, max_new_tokens=LOCAL_TOKENS)
    provider = models.provider()
    request = LlmRequest(
        model=SMOLLM2,
        system_instruction="You are a helpful assistant.",
        contents=[Content("user", [Part(text=prompts.request_text("Tell me about Paris."))])],
        max_output_tokens=LOCAL_TOKENS,
    )
    await models.ensure_loaded()
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    ids: Any = tokenizer.apply_chat_template(
        provider.messages(request),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    async def ours() -> float:
        start = time.perf_counter()
        produced = 0
        async for chunk in provider.stream(request):
            if chunk.usage is not None:
                produced = chunk.usage.output_tokens
        return produced / (time.perf_counter() - start)

    def direct() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=LOCAL_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        produced: int = out.shape[1] - ids["input_ids"].shape[1]
        return produced / (time.perf_counter() - start)

    await ours()
    direct()  # warm-up
    ours_rates, direct_rates = [], []
    for _ in range(ROUNDS + 1):
        direct_rates.append(await asyncio.to_thread(direct))
        ours_rates.append(await ours())
    print(
        f"chat: SmolLM2 {LOCAL_TOKENS} new tokens, best of {ROUNDS + 1}: our provider "
        f"{max(ours_rates):.1f} tok/s vs direct model.generate {max(direct_rates):.1f} tok/s "
        f"-> ratio {max(ours_rates) / max(direct_rates):.2f} (goal >= 0.9)"
    )


def _postgres_cpu(pg: LocalPostgres) -> float:
    """CPU seconds of the bench's Postgres so far (the postmaster and its backends)."""
    import psutil

    try:
        pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        procs = [main, *main.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += sum(proc.cpu_times()[:2])
    return total


def _load_line(
    before: tuple[float, float, float],
    after: tuple[float, float, float],
    busy: float,
    cpu_s: tuple[float, float, float],
    elapsed: float,
) -> str:
    """The machine's load around the streams, so a reader can judge the p99: load
    averages (1/5/15 min) before and after (they lag: the bench's own earlier phases
    raise them), the machine-wide CPU use during the run, the shares of the service, this
    client and the bench's Postgres in it, and what is left: other work on the machine,
    which decides whether the run counts as on an otherwise idle machine."""
    cpus = os.cpu_count() or 1
    fmt = "/".join
    service_cpu, client_cpu, pg_cpu = cpu_s

    def pct(seconds: float) -> float:
        return 100 * seconds / max(elapsed, 1e-9) / cpus

    other = max(0.0, busy - pct(service_cpu) - pct(client_cpu) - pct(pg_cpu))
    return (
        f"chat: machine load: {cpus} CPUs; load average (1/5/15 min) "
        f"{fmt(f'{x:.2f}' for x in before)} before the streams, "
        f"{fmt(f'{x:.2f}' for x in after)} after; CPU busy {busy:.0f}% machine-wide during "
        f"the {elapsed:.1f} s run: the service {service_cpu:.1f} CPU-s "
        f"({pct(service_cpu):.0f}%), this client {client_cpu:.1f} CPU-s "
        f"({pct(client_cpu):.0f}%), Postgres {pg_cpu:.1f} CPU-s ({pct(pg_cpu):.0f}%), "
        f"other work {other:.0f}% "
        + (
            f"(idle enough for the goal: < {OTHER_WORK_IDLE_PCT:g}%)"
            if other < OTHER_WORK_IDLE_PCT
            else f"(NOT an idle machine: >= {OTHER_WORK_IDLE_PCT:g}%; judge the p99 with that)"
        )
    )


def main() -> None:
    print(
        f"chat: {os.cpu_count()} CPUs shared by Postgres, the service and the client; "
        f"BENCH_CHAT_STREAMS={STREAMS}, BENCH_CHAT_TOKENS={TOKENS}"
    )
    with temporary_cluster("aivera-bench-chat-") as pg:
        asyncio.run(_service_figures(pg))
    asyncio.run(_local_figures())


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        asyncio.run(_serve())
    else:
        main()
