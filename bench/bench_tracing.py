"""Tracing's cost on the chat stream benchmark: the chat service with tracing on (every
RPC, SQL statement and model call a span, exported over OTLP/gRPC in batches to a
collector) against the same service with tracing off, both running at once and measured
in alternation, so the ratio comes from one run:

1. one SendMessage of BENCH_CHAT_TOKENS tokens on each service at the same moment, both
   services on one CPU (other work on a shared machine then weighs on both alike), in
   BENCH_TRACING_ROUNDS rounds (default 9): the service's CPU
   time per turn, untraced / traced (the goal: >= 0.9, i.e. tracing adds <= 10%; the
   median of the rounds' ratios), and the tokens/s ratio;
2. BENCH_TRACING_STREAMS concurrent short turns (BENCH_CHAT_STREAM_TOKENS tokens at
   BENCH_CHAT_RATE tokens/s): the service's CPU and the extra inter-token delay it adds,
   traced fully, traced at production's sampling ratio (a third service), and untraced.
   Short turns are where spans weigh most: a turn's ~16 spans (its RPCs, SQL statements,
   the model call) cost ~0.1 ms of CPU each, most of it the OTLP exporter's encoding.

The collector is a minimal OTLP/gRPC trace sink in its own process (it counts spans), so
the exporter does all of its real work: batching, protobuf encoding, the gRPC call.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.bench_chat import KID, RATE, STREAM_TOKENS, TOKENS, Client, _pct, _wait_serving
from services.common.devpg import LocalPostgres, free_port, temporary_cluster

STREAMS = int(os.environ.get("BENCH_TRACING_STREAMS", "200"))
ROUNDS = int(os.environ.get("BENCH_TRACING_ROUNDS", "9"))
GOAL = 0.9  # untraced / traced CPU per turn: at most 10% overhead
SAMPLED = 0.1  # OTEL_TRACES_SAMPLER_ARG of deploy/k8s/overlays/prod
ROOT = Path(__file__).resolve().parents[1]


# -- the collector (child process) ---------------------------------------------------------
async def _sink(port: int, counts: Path) -> None:
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received = 0

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request: Any, context: Any) -> Any:
            nonlocal received
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    received += len(scope.spans)
            _write(counts, received)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _cpu(proc: Any) -> float:
    """CPU seconds (user + system) of a process so far, all its threads."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def _pin(*procs: Any) -> int:
    """Puts `procs` on one CPU (the last of this process's); returns which."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    for proc in procs:
        proc.cpu_affinity([cpu])
    return cpu


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _write(counts: Path, received: int) -> None:
    counts.write_text(str(received))


def _spans_seen(counts: Path) -> int:
    return int(counts.read_text() or 0) if counts.exists() else 0


# -- the client side -----------------------------------------------------------------------
def _start_chat(
    dsn: str, jwk: dict[str, Any], otlp: str | None, ratio: float = 1.0
) -> tuple[Any, int]:
    port = free_port()
    env = {
        **os.environ,
        "AIVERA_ENV": "dev",
        "DATABASE_URL": dsn,
        "CHAT_PORT": str(port),
        "CHAT_HTTP_PORT": str(free_port()),
        "GRPC_HOST": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "BENCH_JWK": json.dumps(jwk),
        "BENCH_BARE_PORT": str(free_port()),
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if otlp is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
        env["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_chat", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


async def _streams(client: Client) -> list[float]:
    chats = await asyncio.gather(*(client.chat() for _ in range(STREAMS)))
    extra: list[float] = []
    await asyncio.gather(*(client.rated_turn(c, md, extra) for c, md in chats))
    return [x * 1000 for x in extra]


async def _figures(pg: LocalPostgres, counts: Path) -> None:
    import psutil  # type: ignore[import-untyped]

    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="EdDSA", use="sig")
    sink_port = free_port()
    sink = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "bench.bench_tracing", "sink", str(sink_port), str(counts)],
        cwd=ROOT,
    )
    off, off_port = _start_chat(pg.create_database("bench_tracing_off"), jwk, None)
    otlp = f"http://127.0.0.1:{sink_port}"
    on, on_port = _start_chat(pg.create_database("bench_tracing_on"), jwk, otlp)
    some, some_port = _start_chat(pg.create_database("bench_tracing_some"), jwk, otlp, SAMPLED)
    try:
        await _wait_serving(off_port)
        await _wait_serving(on_port)
        await _wait_serving(some_port)
        plain, traced = Client(off_port, off_port, key), Client(on_port, on_port, key)
        sampled = Client(some_port, some_port, key)
        await sampled.turn_rate(200)
        await plain.turn_rate(200)  # warm-up
        await traced.turn_rate(200)
        clients = {"off": plain, "on": traced}
        services = {
            "off": psutil.Process(off.pid),
            "on": psutil.Process(on.pid),
            "some": psutil.Process(some.pid),
        }
        # Rounds run both services' turns at the same moment, so other work on the
        # machine weighs on both alike; each round gives a ratio, the median is reported.
        rate_ratios: list[float] = []
        cpu_ratios: list[float] = []
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        load_before = _load()
        # Both services share one CPU for the rounds: whatever else runs on the machine
        # (other work, the client, Postgres, the other hyperthread) then weighs on their
        # CPU time alike, interleaved at the scheduler's grain; on separate CPUs it
        # would weigh on one more than the other, round by round.
        shared = _pin(services["off"], services["on"])
        for _ in range(ROUNDS):
            before = {name: _cpu(proc) for name, proc in services.items()}
            off_rate, on_rate = await asyncio.gather(
                plain.turn_rate(TOKENS), traced.turn_rate(TOKENS)
            )
            await asyncio.sleep(0.5)  # the turns' last writes, and a batch exported
            spent: dict[str, float] = {n: _cpu(services[n]) - before[n] for n in ("off", "on")}
            for name in ("off", "on"):
                cpu[name].append(spent[name])
            rate_ratios.append(on_rate / off_rate)
            cpu_ratios.append(spent["off"] / spent["on"])
        for proc in (services["off"], services["on"]):
            proc.cpu_affinity([])  # all CPUs again
        # The figure for the goal: the service's CPU time per turn (its threads, the span
        # exporter's included), untraced / traced; tokens/s beside it.
        ratio = statistics.median(cpu_ratios)
        print(
            f"tracing: 1 stream x {TOKENS} tokens, {ROUNDS} paired rounds (both services "
            f"at once): service CPU per turn traced {statistics.median(cpu['on']) * 1000:.0f}"
            f" ms vs untraced {statistics.median(cpu['off']) * 1000:.0f} ms -> ratio "
            f"{ratio:.2f} (median; rounds {', '.join(f'{r:.2f}' for r in cpu_ratios)}; "
            f"goal >= {GOAL}: overhead {100 * (1 / ratio - 1):.1f}%, "
            f"{'ok' if ratio >= GOAL else 'OVER'}); tokens/s traced/untraced "
            f"{statistics.median(rate_ratios):.2f}; both on CPU {shared}; machine load "
            f"average (1/5/15 min) "
            f"{load_before} before the rounds, {_load()} after"
        )
        # Many short turns: spans per turn (RPCs, SQL, the model call) weigh more than
        # in one long stream. Traced fully, and at the production overlay's ratio.
        clients["some"] = sampled
        ms: dict[str, list[float]] = {}
        used: dict[str, float] = {}
        for name in ("on", "off", "some"):
            start = _cpu(services[name])
            ms[name] = await _streams(clients[name])
            used[name] = _cpu(services[name]) - start
        await asyncio.sleep(2)  # the last batch reaches the sink
        spans = _spans_seen(counts)
        print(
            f"tracing: {STREAMS} concurrent streams x {STREAM_TOKENS} tokens at {RATE:g} "
            f"tok/s: service CPU traced {used['on']:.2f} s vs untraced {used['off']:.2f} s "
            f"(ratio {used['off'] / used['on']:.2f}), {SAMPLED:g} of traces "
            f"{used['some']:.2f} s (ratio {used['off'] / used['some']:.2f}); extra "
            f"inter-token delay p99 traced {_pct(ms['on'], 0.99):.1f} ms, "
            f"{SAMPLED:g} of traces {_pct(ms['some'], 0.99):.1f} ms, untraced "
            f"{_pct(ms['off'], 0.99):.1f} ms (p50 {_pct(ms['on'], 0.5):.1f} / "
            f"{_pct(ms['some'], 0.5):.1f} / {_pct(ms['off'], 0.5):.1f} ms); "
            f"{spans:,} spans reached the collector; load average {_load()}"
        )
        for client in clients.values():
            await client.channel.close()
            await client.bare.close()
    finally:
        for proc in (off, on, some, sink):
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    print(f"tracing: {os.cpu_count()} CPUs; BENCH_CHAT_TOKENS={TOKENS}, streams {STREAMS}")
    started = time.perf_counter()
    with temporary_cluster("aivera-bench-tracing-") as pg:
        counts = pg.datadir.parent / "otlp-spans"
        asyncio.run(_figures(pg, counts))
    print(f"tracing: done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:
        asyncio.run(_sink(int(sys.argv[2]), Path(sys.argv[3])))
    else:
        main()
