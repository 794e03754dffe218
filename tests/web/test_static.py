"""The gateway's console routes: the built files with a strict CSP, page paths answered by
index.html, no file outside the root, gRPC paths still POST-only, and the signed-URL
paths streamed to the storage HTTP port (both ways) on the same origin."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS
from gateway.static import HEALTH_PATH, content_security_policy

CLOSED = "127.0.0.1:1"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script type="module" src="/assets/a.js">')
    (root / "assets" / "a.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside the root")
    return root


class Storage:
    """A stand-in for the storage service's HTTP port: it records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.put_bytes = b""

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(("GET", request.path_qs, request.headers.get("Authorization", "")))
        return web.Response(body=b"x" * 300_000, content_type="image/png")

    async def put(self, request: web.Request) -> web.Response:
        self.seen.append(("PUT", request.path_qs, request.headers.get("Content-Length", "")))
        self.put_bytes = await request.read()
        return web.Response(text="ok")


@pytest.fixture
async def storage() -> AsyncIterator[tuple[Storage, int]]:
    s = Storage()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/files/{id}", s.get)
    app.router.add_put("/files/{id}", s.put)
    runner = web.AppRunner(app)
    await runner.setup()
    site_ = web.TCPSite(runner, "127.0.0.1", 0)
    await site_.start()
    port = runner.addresses[0][1]
    yield s, port
    await runner.cleanup()


async def start(site: Path | None, storage_http: str | None) -> Gateway:
    gw = Gateway(
        GatewaySettings(
            port=0,
            admin_port=0,
            upstreams={name: CLOSED for name in UPSTREAMS},
            web_root=site,
            storage_http=storage_http,
        )
    )
    await gw.start()
    return gw


async def test_console_files_with_a_strict_csp(site: Path) -> None:
    gw = await start(site, None)
    base = f"http://127.0.0.1:{gw.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as r:
                assert r.status == 200 and "<script" in await r.text()
                csp = r.headers["Content-Security-Policy"]
                assert csp == content_security_policy()
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp
                assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Cache-Control"] == "no-cache"
            async with http.get(base + "/assets/a.js") as r:
                assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
                assert r.headers["Content-Type"].startswith(("text/javascript", "application/js"))
            async with http.get(base + "/chat/some-id") as r:  # a page of the app
                assert r.status == 200 and "<script" in await r.text()
            async with http.get(base + "/assets/missing.js") as r:
                assert r.status == 404
            async with http.get(base + "/assets/%2e%2e/%2e%2e/secret.txt") as r:
                assert r.status == 404 and "outside" not in await r.text()
            # gRPC method paths stay POST-only (405), with or without a console.
            async with http.get(base + "/aivera.chat.v1.ChatService/GetChat") as r:
                assert r.status == 405
            async with http.delete(base + "/") as r:
                assert r.status == 405
    finally:
        await gw.stop()


async def test_without_a_build_the_gateway_serves_grpc_web_only(tmp_path: Path) -> None:
    gw = await start(tmp_path / "not-built", None)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{gw.port}/") as r:
                assert r.status == 405
    finally:
        await gw.stop()


async def test_signed_url_paths_are_streamed_to_storage(
    site: Path, storage: tuple[Storage, int]
) -> None:
    recorder, port = storage
    gw = await start(site, f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{gw.port}"
    body = hashlib.sha256(b"seed").digest() * 40_000  # 1.25 MB, more than one chunk
    try:
        async with aiohttp.ClientSession() as http:
            url = "/files/0b8f2c1e-0000-4000-8000-000000000001?exp=1&sig=ab"
            async with http.put(base + url, data=body, headers={"Authorization": "x"}) as r:
                assert r.status == 200
            async with http.get(base + url, headers={"Authorization": "Bearer t"}) as r:
                assert r.status == 200 and len(await r.read()) == 300_000
                assert r.headers["Content-Type"] == "image/png"
            # The admin listener has no console and no file routes.
            async with http.get(f"http://127.0.0.1:{gw.admin_port}{url}") as r:
                assert r.status == 405
    finally:
        await gw.stop()
    assert recorder.put_bytes == body
    assert recorder.seen[0] == ("PUT", url, str(len(body)))
    # Only the signature travels: no credential header is passed on to storage.
    assert recorder.seen[1] == ("GET", url, "")


async def test_storage_down_is_503_with_a_retry_hint(site: Path) -> None:
    gw = await start(site, CLOSED)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{gw.port}/files/x?exp=1&sig=2") as r:
                assert r.status == 503 and "try again" in await r.text()
    finally:
        await gw.stop()


def test_console_container_serves_health_and_the_console(site: Path) -> None:
    """`python -m gateway.static`, the web image's process: /healthz (its probes), the
    console with its CSP, a clean stop on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.static", "--port", str(port), "--root", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTH_PATH}") as r:
                    assert r.read() == b"ok\n"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/chat/x") as r:
            assert "<script" in r.read().decode()
            assert r.headers["Content-Security-Policy"] == content_security_policy()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_web_image_is_pinned_non_root_and_runs_the_console() -> None:
    text = (Path(__file__).resolve().parents[2] / "web" / "Dockerfile").read_text()
    for image in ("python:3.11.7-slim-bookworm", "node:20.20.2-bookworm-slim"):
        assert image in text
    assert "\nUSER 10001:10001\n" in text
    assert 'ENTRYPOINT ["python", "-m", "gateway.static"]' in text
    assert "EXPOSE 8090" in text and "npm ci" in text and "buf generate ../protos" in text
