"""The browser console on the gateway's own origin: the built files of web/ (`web/dist`)
and the storage service's signed-URL paths (`/files/{id}`), beside gRPC-web.

One origin for the page, its RPCs and its uploads means the console needs no CORS at
all, and its Content-Security-Policy can say `'self'` everywhere:

- `/` and any page path (no file extension) answer `index.html` (the app routes in the
  browser); `/assets/*` are content-hashed, cached for a year; a missing file is 404.
- Every answer carries the strict CSP below (no inline script or style, no eval, no
  framing, no plugins), `nosniff`, `no-referrer`; `index.html` is never cached, so a new
  build is picked up on the next load.
- `GET|PUT /files/{id}?exp=&sig=` are streamed to the storage service's HTTP port
  unchanged (the signature is checked there); bodies are never buffered whole.
- A GET of a gRPC method path (`/aivera.x.v1.Service/Method`) is not a page: 405, as
  before (only POST reaches a service).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import mimetypes
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

import aiohttp
from aiohttp import web

log = logging.getLogger("aivera.gateway.static")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEB_ROOT = ROOT / "web" / "dist"
# The console's own port in Kubernetes (`python -m gateway.static`, behind Envoy).
WEB_PORT = 8090
HEALTH_PATH = "/healthz"
FILES_PREFIX = "/files/"
# Headers of a signed-URL request or answer passed on as they are (the rest are hop-by-hop
# or the proxy's own).
_FILE_REQUEST_HEADERS = ("content-length", "content-type", "range", "if-none-match")
_FILE_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-disposition",
    "cache-control",
    "etag",
    "last-modified",
    "accept-ranges",
    "content-range",
)
_GRPC_PATH = re.compile(r"^/[A-Za-z_][\w]*(\.[\w]+)+/[^/]+$")


def content_security_policy(connect_src: Iterable[str] = ()) -> str:
    """The console's policy: everything from this origin only. `connect_src` adds the
    origins the page may fetch from besides its own (an S3 endpoint of signed URLs)."""
    connect = " ".join(["'self'", *connect_src])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            # Page images and produced images: signed same-origin URLs, or object URLs.
            "img-src 'self' blob: data:",
            f"connect-src {connect}",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


class StaticSite:
    """The built console under `root` (a folder with index.html)."""

    def __init__(self, root: Path, csp: str | None = None) -> None:
        self.root = root.resolve()
        self.headers = security_headers(csp or content_security_policy())

    @property
    def available(self) -> bool:
        return (self.root / "index.html").is_file()

    def _file_for(self, path: str) -> Path | None:
        """The file a request path names, never outside `root`; index.html for page paths
        (no extension); None for a missing file."""
        relative = path.lstrip("/")
        candidate = (self.root / relative).resolve() if relative else self.root / "index.html"
        if not candidate.is_relative_to(self.root):
            return None
        if candidate.is_file():
            return candidate
        last = relative.rsplit("/", 1)[-1]
        if "." not in last:  # a page of the app, routed in the browser
            index = self.root / "index.html"
            return index if index.is_file() else None
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if _GRPC_PATH.match(request.path):
            # Not a page: only POST reaches a service (the answer without a console).
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        found = self._file_for(request.path)
        if found is None:
            return web.Response(status=404, text="not found\n", headers=self.headers)
        headers = dict(self.headers)
        if found.parent.name == "assets" and found.parent.parent == self.root:
            headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            headers["Cache-Control"] = "no-cache"
        ctype, _ = mimetypes.guess_type(found.name)
        if ctype:
            text = ctype.startswith("text/") or ctype == "application/javascript"
            headers["Content-Type"] = ctype + ("; charset=utf-8" if text else "")
        return web.FileResponse(found, headers=headers)


class FilesProxy:
    """Streams `/files/{id}` GET and PUT to the storage service's HTTP port."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        if "://" not in self.upstream:
            self.upstream = "http://" + self.upstream
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No total timeout: a large upload or download lasts as long as it streams.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        url = f"{self.upstream}{request.rel_url.path_qs}"
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FILE_REQUEST_HEADERS}
        body = request.content if request.method == "PUT" else None
        try:
            async with self._http().request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() in _FILE_RESPONSE_HEADERS:
                        response.headers[key] = value
                response.headers["X-Content-Type-Options"] = "nosniff"
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(256 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectionError:
            log.warning("storage HTTP upstream %s unreachable", self.upstream)
            return web.Response(status=503, text="storage is unavailable, try again\n")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def add_routes(app: web.Application, site: StaticSite | None, files: FilesProxy | None) -> None:
    """Adds the console's routes (before the catch-all POST of gRPC-web)."""
    if files is not None:
        app.router.add_get(FILES_PREFIX + "{id}", files.handle, allow_head=False)
        app.router.add_put(FILES_PREFIX + "{id}", files.handle)
    if site is not None:
        app.router.add_get("/{tail:.*}", site.handle)


async def _serve(
    root: Path, host: str, port: int, files_upstream: str | None, connect_src: list[str]
) -> None:
    """`python -m gateway.static`: the console alone (a static container behind Envoy)."""
    site = StaticSite(root, content_security_policy(connect_src))
    if not site.available:
        raise SystemExit(f"{root}/index.html is missing: build the console (make web)")
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get(HEALTH_PATH, healthz)
    proxy = FilesProxy(files_upstream) if files_upstream else None
    add_routes(app, site, proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("console from %s on %s:%d", root, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if proxy is not None:
            await proxy.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serves the built web console.")
    parser.add_argument("--root", type=Path, default=DEFAULT_WEB_ROOT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=WEB_PORT)
    parser.add_argument("--files-upstream", default=None)
    parser.add_argument(
        "--connect-src",
        default=os.environ.get("GATEWAY_CSP_CONNECT_SRC", ""),
        help="origins the page may fetch from besides its own, space-separated (an S3 "
        "endpoint of signed upload URLs); default GATEWAY_CSP_CONNECT_SRC",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(args.root, args.host, args.port, args.files_upstream, args.connect_src.split())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
