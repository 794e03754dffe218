"""Auth service: exchange and refresh throughput against the real Postgres, and the cost
of access-token verification per call.

A throw-away Postgres cluster (fsync off) and the real auth service (`python -m
services.auth`, its own process, JSON request logs on as in production) are started
here. Each figure is set against a baseline measured in the same run:

- exchange / refresh ops/s (CONCURRENCY client tasks over one channel, one user each)
  vs a bare asyncpg loop of single-row `UPDATE ... RETURNING` with the same concurrency
  and pool size: the ratio is what gRPC, signing, hashing and the extra SQL cost;
- access-token verification as the RPC wrapper does it per call (header parse, JWKS
  key lookup, signature and claims check, role check) vs a bare `jwt.decode` with the
  public key.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

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
ROUNDS = 2
VERIFY_CALLS = int(os.environ.get("BENCH_AUTH_VERIFY_CALLS", "5000"))
POOL_SIZE = 10  # the service's default db_pool_max
ROOT = Path(__file__).resolve().parents[1]


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


async def _wait_serving(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
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


async def _rates(port: int, dsn: str, admin_token: str) -> tuple[float, float, float, str]:
    """(bare UPDATE, exchange, refresh) ops/s, best of ROUNDS alternating runs, and an
    access token for the verification figure."""
    pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    await pool.execute("CREATE TABLE bench_counter (id int PRIMARY KEY, n int)")
    await pool.execute(
        "INSERT INTO bench_counter SELECT g, 0 FROM generate_series(0, $1) g", CONCURRENCY
    )

    async def bare(i: int) -> None:
        await pool.fetchval("UPDATE bench_counter SET n = n + 1 WHERE id = $1 RETURNING n", i)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        auth = auth_pb2_grpc.AuthServiceStub(ch)
        admin = auth_pb2_grpc.AuthAdminServiceStub(ch)
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
        try:
            for _ in range(ROUNDS):  # alternate, keep the best of each: noise hits all alike
                for n, worker in enumerate((bare, exchange, refresh)):
                    best[n] = max(best[n], await _rate(worker))
        finally:
            await pool.close()
        return best[0], best[1], best[2], admin_access


async def _verification(pems: str, access_token: str) -> tuple[float, float]:
    """Microseconds per call: the RPC wrapper's authorize() vs a bare jwt.decode."""
    keyring = Keyring(parse_pems(pems), issuer="aivera-auth", audience="aivera")
    runtime = RpcRuntime(verifier=keyring.verifier(), internal_token="", log_calls=False)
    service = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
    info = method_info(service, service.methods_by_name["GetCurrentUser"])
    md = {"authorization": f"Bearer {access_token}"}
    public = keyring.current.private.public_key()
    await runtime.authorize(info, md)  # loads the key set

    def bare() -> None:
        jwt.decode(
            access_token,
            public,
            algorithms=["EdDSA"],
            audience="aivera",
            issuer="aivera-auth",
            options={"require": ["exp", "iat", "sub", "jti"]},
        )

    best_ours = best_bare = float("inf")
    for _ in range(3):  # alternate, keep the best of each
        start = time.perf_counter()
        for _ in range(VERIFY_CALLS):
            await runtime.authorize(info, md)
        best_ours = min(best_ours, (time.perf_counter() - start) / VERIFY_CALLS)
        start = time.perf_counter()
        for _ in range(VERIFY_CALLS):
            bare()
        best_bare = min(best_bare, (time.perf_counter() - start) / VERIFY_CALLS)
    return best_ours * 1e6, best_bare * 1e6


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
    admin_token = "avs_" + secrets.token_urlsafe(32)
    port = free_port()
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
        "AIVERA_INTERNAL_TOKEN": secrets.token_urlsafe(16),
        "DB_POOL_MAX": str(POOL_SIZE),
        "EXCHANGE_FAILURE_LIMIT": "1000000",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "services.auth", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_serving(port)
        bare, exchange, refresh, access = await _rates(port, dsn, admin_token)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ours_us, bare_us = await _verification(pems, access)
    print(
        f"auth: concurrency {CONCURRENCY}, best of {ROUNDS} x {SECONDS:.0f} s per figure, "
        f"db pool {POOL_SIZE}, {os.cpu_count()} CPUs shared by Postgres, service and client"
    )
    for name, rate in (("exchange", exchange), ("refresh", refresh)):
        print(
            f"auth: {name} {rate:,.0f} ops/s vs bare UPDATE {bare:,.0f} ops/s "
            f"-> ratio {rate / bare:.2f}"
        )
    print(
        f"auth: token check {ours_us:.1f} us/call (runtime authorize) vs bare jwt.decode "
        f"{bare_us:.1f} us/call -> ratio {ours_us / bare_us:.2f}"
    )


def main() -> None:
    with temporary_cluster("aivera-bench-auth-") as pg:
        asyncio.run(_run(pg))


if __name__ == "__main__":
    main()
