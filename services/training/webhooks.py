"""Outbound webhooks: endpoints a user registers, the Standard Webhooks signature
(https://www.standardwebhooks.com), the URL rules that keep the server from being pointed
at its own network, and the deliverer that sends the outbox (webhook_deliveries, written
with each notification) with exponential backoff and logs every attempt.

Secrets are sealed at rest with AES-256-GCM under `TRAINING_WEBHOOK_KEY` (the webhook id as
associated data, so a sealed secret copied to another row does not open); they are shown
only when created or rotated, never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aivera.training.v1 import notifications_pb2
from services.common import pages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    not_found,
)
from services.common.protoutil import parse_uuid
from services.training import checks
from services.training.config import TrainingSettings
from services.training.hub import Hub, wait
from services.training.store import (
    WEBHOOKS_CHANNEL,
    AttemptRow,
    DeliveryRow,
    DueRow,
    Store,
    WebhookRow,
)

log = logging.getLogger("aivera.training.webhooks")

PENDING, SUCCEEDED, FAILED = 1, 2, 3
SECRET_PREFIX = "whsec_"
MAX_URL = 2000
# The previous secret keeps signing beside a rotated one this long.
ROTATION_OVERLAP_SECONDS = 24 * 3600.0
# A claimed delivery is held this long past its request timeout before it is due again.
HOLD_MARGIN_SECONDS = 30.0
_DEV_KEY = hashlib.sha256(b"aivera development webhook key").digest()


# -- signing --------------------------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`."""
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    mac = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers; one signature per secret, space-separated."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }


class Sealer:
    """AES-256-GCM for the secrets at rest. In prod without `TRAINING_WEBHOOK_KEY`
    webhooks are off (CreateWebhook answers FAILED_PRECONDITION; nothing is delivered)
    rather than sealed under a key everyone knows."""

    def __init__(self, settings: TrainingSettings) -> None:
        raw = settings.training_webhook_key.get_secret_value()
        self._aead: AESGCM | None = None
        if raw:
            key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            if len(key) != 32:
                raise ValueError("TRAINING_WEBHOOK_KEY must be 32 bytes, base64url")
            self._aead = AESGCM(key)
        elif settings.aivera_env != "prod":
            self._aead = AESGCM(_DEV_KEY)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def _key(self) -> AESGCM:
        if self._aead is None:
            raise FailedPrecondition(
                "webhooks are not configured on this server (TRAINING_WEBHOOK_KEY)"
            )
        return self._aead

    def seal(self, webhook_id: uuid.UUID, secret: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._key().encrypt(nonce, secret.encode(), webhook_id.bytes)

    def open(self, webhook_id: uuid.UUID, blob: bytes) -> str:
        return self._key().decrypt(blob[:12], blob[12:], webhook_id.bytes).decode()


# -- URLs -----------------------------------------------------------------------------------
def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool, field: str = "url") -> str:
    """An https URL without credentials (http and private addresses only when allowed);
    INVALID_ARGUMENT naming `field` otherwise."""
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise InvalidArgument(f"{field} must be 1–{MAX_URL} characters", field=field)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidArgument(f"{field} must be an https URL", field=field)
    if parts.scheme == "http" and not allow_private:
        raise InvalidArgument(f"{field} must use https", field=field)
    if parts.username or parts.password:
        raise InvalidArgument(f"{field} must not hold credentials", field=field)
    host = parts.hostname
    literal = True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = False
    if not allow_private and (
        (literal and _private(host)) or host == "localhost" or host.endswith(".localhost")
    ):
        raise InvalidArgument(f"{field} names a private address", field=field)
    return url


async def resolves_private(host: str) -> bool:
    """Whether the host resolves to any private, loopback or link-local address (checked
    at every attempt: DNS can change after the webhook was created)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None)
    return any(_private(str(info[4][0])) for info in infos)


# -- the domain -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Created:
    webhook: WebhookRow
    secret: str


class Webhooks:
    def __init__(self, store: Store, settings: TrainingSettings) -> None:
        self.store = store
        self.settings = settings
        self.sealer = Sealer(settings)

    @property
    def allow_private(self) -> bool:
        allowed = self.settings.training_webhook_allow_private
        return self.settings.aivera_env != "prod" if allowed is None else allowed

    async def owned(self, user: str, raw_id: str, field: str = "id") -> WebhookRow:
        row = await self.store.get_webhook(user, parse_uuid(raw_id, field=field))
        if row is None:
            raise not_found("webhook", raw_id)
        return row

    async def create(
        self, user: str, *, url: str, event_kinds: Sequence[int], description: str
    ) -> Created:
        if not self.sealer.enabled:
            raise FailedPrecondition(
                "webhooks are not configured on this server (TRAINING_WEBHOOK_KEY)"
            )
        url = check_url(url, allow_private=self.allow_private)
        description = checks.name(description, "description", required=False)
        kinds = sorted(set(event_kinds))
        for kind in kinds:
            if kind not in notifications_pb2.NotificationKind.values() or kind == 0:
                raise InvalidArgument("event_kinds has an unknown kind", field="event_kinds")
        secret = new_secret()
        webhook_id = uuid.uuid4()
        async with self.store.transaction() as tx:
            await tx.lock_user(user)
            limit = self.settings.training_max_webhooks
            if await tx.count_webhooks(user) >= limit:
                raise ResourceExhausted(
                    f"you already have {limit} webhooks", metadata={"limit": str(limit)}
                )
            row = await tx.insert_webhook(
                webhook_id=webhook_id,
                user_id=user,
                url=url,
                description=description,
                event_kinds=kinds,
                secret=self.sealer.seal(webhook_id, secret),
                secret_hint=secret[-4:],
            )
        return Created(row, secret)

    async def list_webhooks(
        self, user: str, page: pages.PageRequest
    ) -> tuple[list[WebhookRow], str]:
        return await self.store.list_webhooks(user, page)

    async def delete(self, user: str, raw_id: str) -> None:
        async with self.store.transaction() as tx:
            row = await tx.get_webhook(user, parse_uuid(raw_id, field="id"))
            if row is None:
                raise not_found("webhook", raw_id)
            await tx.delete_webhook(row.id)

    async def rotate(self, user: str, raw_id: str) -> Created:
        row = await self.owned(user, raw_id)
        secret = new_secret()
        updated = await self.store.rotate_webhook_secret(
            row.id, self.sealer.seal(row.id, secret), secret[-4:], ROTATION_OVERLAP_SECONDS
        )
        return Created(updated, secret)

    async def deliveries(
        self, user: str, raw_id: str, page: pages.PageRequest
    ) -> tuple[list[tuple[DeliveryRow, list[AttemptRow]]], str]:
        row = await self.owned(user, raw_id, "webhook_id")
        return await self.store.list_deliveries(row.id, page)


# -- delivery -------------------------------------------------------------------------------
def retry_delay(settings: TrainingSettings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones."""
    schedule = settings.training_webhook_retry_seconds or [5.0]
    return float(schedule[min(attempts - 1, len(schedule) - 1)])


class Deliverer:
    """Sends due deliveries; any number of training replicas may run one."""

    def __init__(self, webhooks: Webhooks, hub: Hub | None) -> None:
        self.webhooks = webhooks
        self.store = webhooks.store
        self.settings = webhooks.settings
        self.hub = hub

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.training_webhook_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if self.hub is None:
                while True:
                    await self._round(http)
                    await asyncio.sleep(self.settings.training_webhook_poll_seconds)
            with self.hub.subscribe(WEBHOOKS_CHANNEL, "*") as woken:
                while True:
                    if not await self._round(http):
                        await wait(woken, self.settings.training_webhook_poll_seconds)

    async def _round(self, http: aiohttp.ClientSession) -> int:
        try:
            return await self.deliver_due(http)
        except Exception as exc:  # Postgres down: the outbox waits in the database
            log.warning("webhook delivery round failed: %s", exc)
            return 0

    async def deliver_due(self, http: aiohttp.ClientSession, limit: int = 20) -> int:
        hold = self.settings.training_webhook_timeout_seconds + HOLD_MARGIN_SECONDS
        due = await self.store.claim_deliveries(limit, hold)
        await asyncio.gather(*(self._attempt(http, d) for d in due))
        return len(due)

    def _secrets(self, d: DueRow) -> list[str]:
        out = [self.webhooks.sealer.open(d.webhook_id, d.secret)]
        if d.previous_secret and d.previous_expires_at and d.previous_expires_at > d.now:
            out.append(self.webhooks.sealer.open(d.webhook_id, d.previous_secret))
        return out

    async def _attempt(self, http: aiohttp.ClientSession, d: DueRow) -> None:
        started = time.monotonic()
        code, error = 0, ""
        try:
            host = urlsplit(d.url).hostname or ""
            if not self.webhooks.allow_private and await resolves_private(host):
                error = "refused: the URL resolves to a private address"
            else:
                sent = headers(self._secrets(d), str(d.id), int(time.time()), d.body)
                async with http.post(
                    d.url, data=d.body.encode(), headers=sent, allow_redirects=False
                ) as resp:
                    code = resp.status
                    if not 200 <= code < 300:
                        error = f"HTTP {code}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except InvalidTag:  # sealed under another TRAINING_WEBHOOK_KEY
            error = "the webhook's secret cannot be opened with this server's key"
        ms = int((time.monotonic() - started) * 1000)
        if not error:
            status, retry_in = SUCCEEDED, None
        else:
            age = (d.now - d.created_at).total_seconds()
            delay = retry_delay(self.settings, d.attempts + 1)
            if age + delay > self.settings.training_webhook_give_up_seconds:
                status, retry_in = FAILED, None
            else:
                status, retry_in = PENDING, delay
        await self.store.record_attempt(
            d.id,
            response_code=code,
            error=error,
            duration_ms=ms,
            status=status,
            retry_in=retry_in,
        )
