"""Auth service: exchange and refresh throughput against the real Postgres, and the cost
of access-token verification per call.

A throw-away Postgres cluster (fsync off) and the real auth service (`python -m
services.auth`, its own process, JSON request logs on as in production) are started
here. Each figure is set against a baseline measured in the same run:

- exchange / refresh ops/s (CONCURRENCY client tasks over one channel, one user each)
  vs the irreducible work of such a call, served the same way: a bare grpc.aio server
  in its own process (`python -m bench.bench_auth baseline`) whose unary handler does
  one asyncpg round trip (a single-row `UPDATE ... RETURNING` on a pool of the same
  size) and one EdDSA signature (a minimal JWT), called by the same client with the
  same concurrency. The ratio is what the RPC wrapper, hashing, the heavier SQL and the
  logs cost on top (goal >= 0.5);
- access-token verification as the RPC wrapper does it per call (header parse, JWKS
  key lookup, signature and claims check, role check) vs a bare `jwt.decode` with the
  public key, as throughput: once for a token seen before (the verifier's cache, the
  hot path; goal >= 0.9) and once for a token never seen before (every call a new one).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import Keyring, parse_pems
from services.common.access import method_info
from services.common.devpg import LocalPostgres, free_port, temporary_cluster
from services.common.rpc import RpcRuntime

CONCURRENCY = int(os.environ.get("BENCH_AUTH_CONCURRENCY", "16"))
SECONDS = float(os.environ.get("BENCH_AUTH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_AUTH_ROUNDS", "2"))
VERIFY_CALLS = int(os.environ.get("BENCH_AUTH_VERIFY_CALLS", "5000"))
POOL_SIZE = 10  # the service's default db_pool_max
ROOT = Path(__file__).resolve().parents[1]
BASELINE_SQL = "UPDATE bench_counter SET n = n + 1 WHERE id = $1 RETURNING n"


# -- the baseline server: the irreducible work of an exchange -------------------------
def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


async def _no_reset_query(conn: asyncpg.Connection) -> None:
    """asyncpg still rolls back a stray transaction and drops listeners on release."""


async def serve_baseline(port: int, dsn: str) -> None:
    """A bare grpc.aio server answering ExchangeStaticToken with one asyncpg round trip
    and one EdDSA-signed JWT: no wrapper, no logs, no metrics, no hashing."""
    key = ed25519.Ed25519PrivateKey.generate()
    header = _b64(json.dumps({"alg": "EdDSA", "kid": "bench", "typ": "JWT"}).encode())
    # One round trip per call: a stock pool would send asyncpg's reset query
    # (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) on every release.
    pool = await asyncpg.create_pool(
        dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_no_reset_query
    )

    async def exchange(
        request: auth_pb2.ExchangeStaticTokenRequest, context: Any
    ) -> auth_pb2.ExchangeStaticTokenResponse:
        n = await pool.fetchval(BASELINE_SQL, int(request.static_token))
        now = int(time.time())
        claims = {"sub": str(n), "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex}
        signing_input = header + b"." + _b64(json.dumps(claims).encode())
        token = signing_input + b"." + _b64(key.sign(signing_input))
        return auth_pb2.ExchangeStaticTokenResponse(access_token=token.decode(), expires_in=3600)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        exchange,
        auth_pb2.ExchangeStaticTokenRequest.FromString,
        auth_pb2.ExchangeStaticTokenResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "aivera.auth.v1.AuthService", {"ExchangeStaticToken": handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- measuring ----------------------------------------------------------------------
async def _rate(worker: Callable[[int], Awaitable[None]]) -> float:
    """Ops/s of CONCURRENCY copies of `worker(i)` looping for SECONDS (after a warm-up)."""
    count = 0
    stop_at = 0.0

    async def loop(i: int) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await worker(i)
            count += 1

    stop_at = time.perf_counter() + 0.5  # warm-up
    await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))
    count = 0
    start = time.perf_counter()
    stop_at = start + SECONDS
    await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))
    return count / (time.perf_counter() - start)


async def _wait_ready(port: int, *, health: bool, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        if not health:
            await asyncio.wait_for(ch.channel_ready(), timeout)
            return
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            try:
                res = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if res.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("auth service did not become SERVING")


async def _rates(
    port: int, baseline_port: int, dsn: str, admin_token: str
) -> tuple[float, float, float, str]:
    """(baseline, exchange, refresh) ops/s, best of ROUNDS alternating runs, and an
    access token for the verification figure."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{baseline_port}") as base_ch,
    ):
        auth = auth_pb2_grpc.AuthServiceStub(ch)
        admin = auth_pb2_grpc.AuthAdminServiceStub(ch)
        base = auth_pb2_grpc.AuthServiceStub(base_ch)
        admin_access = (
            await auth.ExchangeStaticToken(
                auth_pb2.ExchangeStaticTokenRequest(static_token=admin_token)
            )
        ).access_token
        md = (("authorization", f"Bearer {admin_access}"),)
        statics: list[str] = []
        refresh_tokens: list[str] = []
        for i in range(CONCURRENCY):
            created = await admin.CreateUser(
                auth_pb2.CreateUserRequest(username=f"bench-{i:03d}"), metadata=md
            )
            statics.append(created.static_token)
            s = await auth.ExchangeStaticToken(
                auth_pb2.ExchangeStaticTokenRequest(static_token=created.static_token)
            )
            refresh_tokens.append(s.refresh_token)
        base_requests = [
            auth_pb2.ExchangeStaticTokenRequest(static_token=str(i)) for i in range(CONCURRENCY)
        ]

        async def baseline(i: int) -> None:
            await base.ExchangeStaticToken(base_requests[i])

        async def exchange(i: int) -> None:
            await auth.ExchangeStaticToken(
                auth_pb2.ExchangeStaticTokenRequest(static_token=statics[i])
            )

        async def refresh(i: int) -> None:
            r = await auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=refresh_tokens[i])
            )
            refresh_tokens[i] = r.refresh_token

        best = [0.0, 0.0, 0.0]
        for _ in range(ROUNDS):  # alternate, keep the best of each: noise hits all alike
            for n, worker in enumerate((baseline, exchange, refresh)):
                best[n] = max(best[n], await _rate(worker))
        return best[0], best[1], best[2], admin_access


async def _verification(pems: str, access_token: str) -> tuple[float, float, float]:
    """Calls/s: the RPC wrapper's authorize() for a token seen before (cached) and for a
    new token each call, and a bare jwt.decode with the public key."""
    keyring = Keyring(parse_pems(pems), issuer="aivera-auth", audience="aivera")
    runtime = RpcRuntime(verifier=keyring.verifier(), log_calls=False)
    service = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
    info = method_info(service, service.methods_by_name["GetCurrentUser"])
    md = {"authorization": f"Bearer {access_token}"}
    public = keyring.current.private.public_key()
    await runtime.authorize(info, md)  # loads the key set
    fresh = [
        {"authorization": "Bearer " + keyring.sign(user_id=f"u{i}", role="user", ttl=3600)}
        for i in range(VERIFY_CALLS * 3)
    ]

    def bare() -> None:
        jwt.decode(
            access_token,
            public,
            algorithms=["EdDSA"],
            audience="aivera",
            issuer="aivera-auth",
            options={"require": ["exp", "iat", "sub", "jti"]},
        )

    best_cached = best_fresh = best_bare = float("inf")
    for r in range(3):  # alternate, keep the best of each
        start = time.perf_counter()
        for _ in range(VERIFY_CALLS):
            await runtime.authorize(info, md)
        best_cached = min(best_cached, time.perf_counter() - start)
        start = time.perf_counter()
        for headers in fresh[r * VERIFY_CALLS : (r + 1) * VERIFY_CALLS]:
            await runtime.authorize(info, headers)
        best_fresh = min(best_fresh, time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(VERIFY_CALLS):
            bare()
        best_bare = min(best_bare, time.perf_counter() - start)
    return VERIFY_CALLS / best_cached, VERIFY_CALLS / best_fresh, VERIFY_CALLS / best_bare


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _run(pg: LocalPostgres) -> None:
    dsn = pg.create_database("bench_auth")
    pems = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_counter (id int PRIMARY KEY, n int)")
        await conn.execute(
            "INSERT INTO bench_counter SELECT g, 0 FROM generate_series(0, $1) g", CONCURRENCY
        )
    finally:
        await conn.close()
    admin_token = "avs_" + secrets.token_urlsafe(32)
    port, baseline_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIVERA_ENV": "dev",
        "DATABASE_URL": dsn,
        "AUTH_PORT": str(port),
        "AUTH_HTTP_PORT": str(free_port()),
        "GRPC_HOST": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "JWT_PRIVATE_KEYS": pems,
        "MASTER_ENCRYPTION_KEY": "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIVERA_BOOTSTRAP_ADMIN_TOKEN": admin_token,
        "DB_POOL_MAX": str(POOL_SIZE),
        "EXCHANGE_FAILURE_LIMIT": "1000000",
    }
    procs = [
        _spawn(["services.auth", "serve"], env),
        _spawn(["bench.bench_auth", "baseline", str(baseline_port), dsn], dict(os.environ)),
    ]
    try:
        await _wait_ready(port, health=True)
        await _wait_ready(baseline_port, health=False)
        baseline, exchange, refresh, access = await _rates(port, baseline_port, dsn, admin_token)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    cached, fresh, bare = await _verification(pems, access)
    print(
        f"auth: concurrency {CONCURRENCY}, best of {ROUNDS} x {SECONDS:.0f} s per figure, "
        f"db pool {POOL_SIZE}, {os.cpu_count()} CPUs shared by Postgres, services and client"
    )
    for name, rate in (("exchange", exchange), ("refresh", refresh)):
        print(
            f"auth: {name} {rate:,.0f} ops/s vs baseline {baseline:,.0f} ops/s (bare grpc.aio "
            f"unary + one asyncpg round trip + one EdDSA signature) -> ratio "
            f"{rate / baseline:.2f} (goal >= 0.5)"
        )
    print(
        f"auth: token check (runtime authorize, token seen before) {cached:,.0f} calls/s vs "
        f"bare jwt.decode {bare:,.0f} calls/s -> ratio {cached / bare:.2f} (goal >= 0.9)"
    )
    print(
        f"auth: token check (runtime authorize, new token each call) {fresh:,.0f} calls/s vs "
        f"bare jwt.decode {bare:,.0f} calls/s -> ratio {fresh / bare:.2f}"
    )


def main() -> None:
    with temporary_cluster("aivera-bench-auth-") as pg:
        asyncio.run(_run(pg))


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        asyncio.run(serve_baseline(int(sys.argv[2]), sys.argv[3]))
    else:
        main()
