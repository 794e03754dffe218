"""Replicate's webhooks on the training service's HTTP port: POST /webhooks/replicate.

A delivery is read up to MAX_BODY bytes (more is 413 before any parsing), verified as
Replicate signs it (Standard Webhooks with `replicate_webhook_secret`; a missing or bad
signature, or a timestamp outside the tolerance, is 401 and changes nothing), then applied
once per `webhook-id` (image_trainer.ImageTrainer.on_webhook). A training this service
does not know (another deployment's, a prediction) is acknowledged with 200 and ignored,
so Replicate does not retry it. The database down is 503: Replicate retries later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from aiohttp import web

from services.common.errors import Unavailable
from services.common.logs import fields
from services.training.config import TrainingSettings
from services.training.image_trainer import WEBHOOK_PATH, ImageTrainer
from services.training.webhook_verify import InvalidWebhook, verify

log = logging.getLogger("aivera.training.image_webhooks")
MAX_BODY = 1024 * 1024  # a training object with its logs; Replicate's are far smaller


async def _read(request: web.Request) -> bytes | None:
    """The body, or None past MAX_BODY (stopped reading there, whatever the headers said)."""
    buf = bytearray()
    while chunk := await request.content.readany():
        buf += chunk
        if len(buf) > MAX_BODY:
            return None
    return bytes(buf)


def routes(
    settings: TrainingSettings, trainer: Callable[[], ImageTrainer | None]
) -> Callable[[web.Application], None]:
    """Add the route; `trainer` gives the service's trainer once it is built."""

    async def receive(request: web.Request) -> web.Response:
        secret = settings.replicate_webhook_secret.get_secret_value()
        if not secret:  # webhooks are never asked for without one
            return web.json_response({"error": "webhooks are not configured"}, status=401)
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        body = await _read(request)
        if body is None:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            webhook_id = verify(secret, request.headers, body, now=time.time())
        except InvalidWebhook as exc:
            log.warning(
                "refused a Replicate webhook: %s",
                exc,
                extra=fields(remote_addr=request.remote or ""),
            )
            return web.json_response({"error": str(exc)}, status=401)
        try:
            training = json.loads(body)
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(training, dict):
            return web.json_response({"error": "the body is not a JSON object"}, status=400)
        current = trainer()
        if current is None:
            return web.json_response({"error": "starting"}, status=503)
        try:
            outcome = await current.on_webhook(webhook_id, training)
        except Unavailable as exc:
            log.warning("Replicate webhook %s not applied: %s", webhook_id, exc.message)
            return web.json_response({"error": "unavailable"}, status=503)
        log.info(
            "Replicate webhook %s: %s",
            webhook_id,
            outcome,
            extra=fields(
                webhook_id=webhook_id,
                remote_id=str(training.get("id", "")),
                remote_status=str(training.get("status", "")),
                outcome=outcome,
            ),
        )
        return web.json_response({"result": outcome})

    def add(web_app: web.Application) -> None:
        web_app.router.add_post(WEBHOOK_PATH, receive)

    return add
