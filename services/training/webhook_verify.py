"""Verification of inbound Standard Webhooks (https://www.standardwebhooks.com), as
Replicate signs its training and prediction webhooks: headers `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated
`v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`, several while a secret
rotates), the secret `whsec_<base64>`. The signature is the one our outbound webhooks
send (webhooks.signature); a timestamp outside the tolerance is refused so a captured
request cannot be replayed later (within it, the receiver dedupes on `webhook-id`).

Pure: the caller passes the clock and the raw body bytes exactly as received."""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Mapping

from services.training.webhooks import signature

TOLERANCE_SECONDS = 300


class InvalidWebhook(ValueError):
    """Missing headers, a bad or absent signature, or a timestamp outside the tolerance.
    The message names which, never the secret or the expected signature."""


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> str:
    """The webhook's id once its signature and timestamp hold; InvalidWebhook otherwise.
    Header names are matched ignoring case."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "")
    raw_ts = lower.get("webhook-timestamp", "")
    sigs = lower.get("webhook-signature", "")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", raw_ts),
        ("webhook-signature", sigs),
    ):
        if not value:
            raise InvalidWebhook(f"missing {name} header")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise InvalidWebhook("webhook-timestamp is not Unix seconds") from None
    if abs(now - timestamp) > tolerance:
        raise InvalidWebhook("webhook-timestamp is outside the tolerance")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWebhook("the body is not UTF-8") from None
    try:
        expected = signature(secret, msg_id, timestamp, text)
    except (binascii.Error, ValueError):
        raise InvalidWebhook("the webhook secret is malformed") from None
    # Every v1 signature is tried (rotation); other versions are skipped, not failed.
    if any(hmac.compare_digest(s, expected) for s in sigs.split() if s.startswith("v1,")):
        return msg_id
    raise InvalidWebhook("no valid webhook-signature")
