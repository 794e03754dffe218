"""Server streaming through our runtime vs a bare grpcio asyncio server.

Both servers run in their own process and stream the same DownloadResponse messages; the
runtime one goes through the full RPC wrapper (JWT check, request id, log line, metrics).
The client (this process) is identical for both. Runs alternate and the best of each is
kept, so a noisy neighbour hurts both sides alike. Goal: ratio >= 0.8.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.devpg import free_port

MESSAGES = int(os.environ.get("BENCH_STREAM_MESSAGES", "50000"))
PAYLOAD = b"x" * 128
ROUNDS = 2
DOWNLOAD = "/aivera.storage.v1.StorageService/Download"


async def _stream(request: Any, context: Any) -> AsyncIterator[storage_pb2.DownloadResponse]:
    message = storage_pb2.DownloadResponse(chunk=PAYLOAD)
    for _ in range(request.length):
        yield message


async def serve_bare(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        _stream,
        storage_pb2.DownloadRequest.FromString,
        storage_pb2.DownloadResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "aivera.storage.v1.StorageService", {"Download": handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_runtime(port: int, public_jwk: dict[str, Any]) -> None:
    from services.common import logs
    from services.common.config import CommonSettings
    from services.common.jwks import JwksVerifier
    from services.common.server import App, Servicers, ServiceSpec

    class Storage:
        Download = staticmethod(_stream)

    async def build(app: App) -> Servicers:
        return [(storage_pb2.DESCRIPTOR.services_by_name["StorageService"], Storage())]

    async def fetch() -> list[dict[str, Any]]:
        return [public_jwk]

    logs.configure("bench", "INFO")
    spec = ServiceSpec(
        name="bench",
        port=port,
        http_port=0,
        build=build,
        verifier=lambda _app: JwksVerifier(fetch, issuer="aivera-auth", audience="aivera"),
    )
    app = App(spec, CommonSettings(grpc_host="127.0.0.1", http_host="127.0.0.1"))
    await app.start()
    await app.wait_ready()
    await asyncio.Event().wait()


def _measure(port: int, token: str) -> float:
    # The sync client iterates in C-core and outpaces the asyncio client several times,
    # so the server, not the client, is what limits the rate being compared.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        # The contract requires a file id (a UUID); the bench's servicer ignores it.
        request = storage_pb2.DownloadRequest(id=str(uuid.UUID(int=1)), length=MESSAGES)
        best = 0.0
        for _ in range(ROUNDS):
            start = time.perf_counter()
            count = 0
            for _msg in stub.Download(request, metadata=md):
                count += 1
            assert count == MESSAGES
            best = max(best, count / (time.perf_counter() - start))
        return best


def _spawn(kind: str, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_runtime", kind, str(port), extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    import json

    key = ed25519.Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="bench", alg="EdDSA", use="sig")
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "aivera-auth",
            "aud": "aivera",
            "sub": "u1",
            "role": "user",
            "iat": now,
            "exp": now + 3600,
            "jti": "j",
        },
        key,
        algorithm="EdDSA",
        headers={"kid": "bench"},
    )
    bare_port, ours_port = free_port(), free_port()
    procs = [_spawn("bare", bare_port), _spawn("runtime", ours_port, json.dumps(jwk))]
    try:
        bare, ours = 0.0, 0.0
        for _ in range(2):  # alternate: bare, ours, bare, ours
            bare = max(bare, _measure(bare_port, token))
            ours = max(ours, _measure(ours_port, token))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    print(f"runtime: server stream {MESSAGES} msgs x {len(PAYLOAD)} B")
    print(f"  bare grpcio   {bare:>10,.0f} msg/s")
    print(f"  our runtime   {ours:>10,.0f} msg/s")
    print(f"  ratio {ours / bare:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    kind, port_text = sys.argv[1], sys.argv[2]
    if kind == "bare":
        asyncio.run(serve_bare(int(port_text)))
    else:
        import json as _json

        asyncio.run(serve_runtime(int(port_text), _json.loads(sys.argv[3])))
