"""CORS for browser gRPC-web clients; the Envoy config uses the same header lists."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

ALLOW_METHODS = ("POST", "OPTIONS")
# What grpc-web / connect-web clients send, plus the mesh's own request headers.
ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-request-id",
    "x-accept-content-transfer-encoding",
    "x-accept-response-streaming",
    "keep-alive",
    "cache-control",
    # W3C trace context of a browser that traces its own work: the mesh continues it.
    "traceparent",
    "tracestate",
)
EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")
MAX_AGE_SECONDS = 86400

_STANDARD_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "date",
        "server",
        "connection",
        "vary",
        "keep-alive",
    }
)


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Allowed origins: exact origins, or `*` for any."""

    origins: tuple[str, ...]

    def allows(self, origin: str | None) -> bool:
        if not origin:
            return False
        return "*" in self.origins or origin.rstrip("/") in self.origins

    async def preflight(self, request: web.Request) -> web.Response:
        """Answer an OPTIONS preflight: 204 with the grants, or 403 for another origin."""
        origin = request.headers.get("Origin")
        wanted = request.headers.get("Access-Control-Request-Method", "").upper()
        if not self.allows(origin) or wanted not in ALLOW_METHODS:
            return web.Response(status=403, headers={"Vary": "Origin"})
        assert origin is not None
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(ALLOW_METHODS),
                "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
                "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
                "Vary": "Origin",
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp `on_response_prepare` hook: grant an allowed origin on every response
        (streamed ones too, whose headers leave before the handler returns)."""
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" or not self.allows(origin):
            return
        assert origin is not None
        extra = [
            name.lower()
            for name in response.headers
            if name.lower() not in _STANDARD_RESPONSE_HEADERS
            and not name.lower().startswith("access-control-")
        ]
        exposed = dict.fromkeys([*EXPOSE_HEADERS, *extra])
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(exposed)
        response.headers.add("Vary", "Origin")
