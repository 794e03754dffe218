"""Each service's HTTP port: Prometheus `/metrics`, `/healthz` (200 only while SERVING),
and the service's own routes (auth: JWKS; storage: signed URLs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from services.common.server import App


async def start_http(app: App, host: str) -> tuple[web.AppRunner, int]:
    web_app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = app.serving
        return web.json_response({"serving": ok}, status=200 if ok else 503)

    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_get("/healthz", healthz)
    if app.spec.http_routes is not None:
        app.spec.http_routes(app, web_app)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, app.spec.http_port)
    await site.start()
    port = app.spec.http_port
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    return runner, port
