"""Outbound webhooks against a real HTTP receiver on loopback: deliveries signed as
Standard Webhooks specify (checked here with the spec's algorithm), the event filter,
retries with backoff after a 5xx with every attempt's response code in the delivery log,
giving up after the window, secret rotation (both signatures for a while), URL rules,
deletion, and another user's webhook."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr

from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import notifications_pb2 as N
from aivera.training.v1 import webhooks_pb2 as W
from aivera.training.v1 import webhooks_pb2_grpc
from services.common.errors import FailedPrecondition
from services.training.config import TrainingSettings
from services.training.webhooks import Sealer, check_url
from tests.helpers.errors import bad_field
from tests.training.conftest import MEMO, Env, User, chat

DATASET_READY = N.NOTIFICATION_KIND_DATASET_READY
JOB_FAILED = N.NOTIFICATION_KIND_JOB_FAILED


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    return {
        "training_webhook_retry_seconds": [0.3, 0.6],
        "training_webhook_give_up_seconds": 2.0,
        "training_webhook_poll_seconds": 0.2,
        "training_max_webhooks": 3,
    }


@dataclass
class Received:
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """An HTTP endpoint on loopback: answers the queued statuses in turn, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(Received(dict(request.headers), await request.text()))
        self.arrived.set()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def nth(self, index: int, timeout: float = 20) -> Received:
        """The request number `index` (0-based), once it has arrived."""
        while len(self.got) <= index:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        return self.got[index]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    r.url = f"http://127.0.0.1:{port}/hook"
    yield r
    await runner.cleanup()


def verify(secret: str, got: Received) -> bool:
    """The Standard Webhooks check, written from the spec: any v1 signature matches."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.{got.body}"
    expected = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest()).decode()
    sigs = [s.split(",", 1)[1] for s in got.headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, s) for s in sigs)


def hooks(u: User) -> webhooks_pb2_grpc.WebhookServiceStub:
    return webhooks_pb2_grpc.WebhookServiceStub(u.env.chan)


async def deliveries(u: User, hook_id: str) -> list[W.WebhookDelivery]:
    got = await hooks(u).ListWebhookDeliveries(
        W.ListWebhookDeliveriesRequest(webhook_id=hook_id), metadata=u.md
    )
    return list(got.deliveries)


async def settled(u: User, hook_id: str, count: int = 1) -> list[W.WebhookDelivery]:
    """The webhook's deliveries once `count` exist and none is PENDING."""
    for _ in range(200):
        ds = await deliveries(u, hook_id)
        if len(ds) >= count and all(d.status != W.DELIVERY_STATUS_PENDING for d in ds):
            return ds
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries not settled: {ds}")


async def test_signed_delivery_filter_retry_and_log(env: Env, receiver: Receiver) -> None:
    u = User(env)
    made = await hooks(u).CreateWebhook(
        W.CreateWebhookRequest(url=receiver.url, description="ci", event_kinds=[DATASET_READY]),
        metadata=u.md,
    )
    assert made.secret.startswith("whsec_") and made.webhook.secret_hint == made.secret[-4:]
    assert list(made.webhook.event_kinds) == [DATASET_READY]
    receiver.statuses = [500]  # the first attempt fails, the retry succeeds
    ds = await u.dataset(MEMO)
    first, second = await receiver.nth(0), await receiver.nth(1)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # same message id
    assert first.body == second.body and verify(made.secret, second)
    assert not verify("whsec_" + base64.b64encode(b"x" * 24).decode(), second)
    event = json.loads(second.body)
    assert event["type"] == "dataset.ready" and event["data"]["dataset_id"] == ds.id
    (d,) = await settled(u, made.webhook.id)
    assert d.status == W.DELIVERY_STATUS_SUCCEEDED and d.event_type == "dataset.ready"
    assert [a.response_code for a in d.attempts] == [500, 200]
    assert d.attempts[0].error == "HTTP 500" and not d.attempts[1].error
    assert d.id == second.headers["webhook-id"]
    # The filter: a failed job is not delivered to this webhook.
    short = await u.dataset([chat("long " * 40, "answer")])
    await receiver.nth(2)  # its dataset.ready
    job = await u.job(short.id, hp=J.Hyperparameters(max_steps=1, max_seq_length=16))
    await u.wait_job(job.id, (J.JOB_STATUS_FAILED,))
    await asyncio.sleep(1.0)
    assert [json.loads(r.body)["type"] for r in receiver.got] == ["dataset.ready"] * 3


async def test_gives_up_after_the_window(env: Env, receiver: Receiver) -> None:
    u = User(env)
    made = await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=receiver.url), metadata=u.md)
    receiver.statuses = [503] * 50
    await u.dataset(MEMO)
    (d,) = await settled(u, made.webhook.id)
    assert d.status == W.DELIVERY_STATUS_FAILED and not d.HasField("next_attempt_time")
    codes = [a.response_code for a in d.attempts]
    assert len(codes) >= 2 and set(codes) == {503}


async def test_rotation_signs_with_both_secrets(env: Env, receiver: Receiver) -> None:
    u = User(env)
    made = await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=receiver.url), metadata=u.md)
    rotated = await hooks(u).RotateWebhookSecret(
        W.RotateWebhookSecretRequest(id=made.webhook.id), metadata=u.md
    )
    assert rotated.secret != made.secret and rotated.webhook.secret_hint == rotated.secret[-4:]
    await u.dataset(MEMO)
    got = await receiver.nth(0)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify(rotated.secret, got) and verify(made.secret, got)
    listed = await hooks(u).ListWebhooks(W.ListWebhooksRequest(), metadata=u.md)
    assert [w.id for w in listed.webhooks] == [made.webhook.id]
    assert "whsec_" not in str(listed)  # the secret is never listed
    # Deleted: nothing more is delivered, and it is gone.
    await hooks(u).DeleteWebhook(W.DeleteWebhookRequest(id=made.webhook.id), metadata=u.md)
    await u.dataset(MEMO)
    await asyncio.sleep(1.0)
    assert len(receiver.got) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hooks(u).GetWebhook(W.GetWebhookRequest(id=made.webhook.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_input_limits_and_another_user(env: Env, receiver: Receiver) -> None:
    u, other = User(env), User(env)
    for url in ("ftp://example.com/x", "https://user:pw@example.com/x", "", "not a url"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=url), metadata=u.md)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err.value) == "url"
        )
    # Where private URLs are not allowed (prod), loopback and plain http are refused.
    for url in (
        "http://example.com/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://[::1]/x",
        "https://10.1.2.3/x",
        "https://169.254.169.254/latest",
    ):
        with pytest.raises(Exception) as refused:
            check_url(url, allow_private=False)
        assert getattr(refused.value, "field", "") == "url", url
    assert check_url("https://hooks.example.com/x", allow_private=False)
    made = await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=receiver.url), metadata=u.md)
    for _ in range(2):
        await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=receiver.url), metadata=u.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hooks(u).CreateWebhook(W.CreateWebhookRequest(url=receiver.url), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hook_id = made.webhook.id
    for call in (
        hooks(other).GetWebhook(W.GetWebhookRequest(id=hook_id), metadata=other.md),
        hooks(other).DeleteWebhook(W.DeleteWebhookRequest(id=hook_id), metadata=other.md),
        hooks(other).RotateWebhookSecret(
            W.RotateWebhookSecretRequest(id=hook_id), metadata=other.md
        ),
        hooks(other).ListWebhookDeliveries(
            W.ListWebhookDeliveriesRequest(webhook_id=hook_id), metadata=other.md
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (
        await hooks(other).ListWebhooks(W.ListWebhooksRequest(), metadata=other.md)
    ).webhooks
    # Another user's events never reach this user's webhook.
    await other.dataset(MEMO)
    await asyncio.sleep(1.0)
    assert not receiver.got


def test_secrets_are_sealed_and_prod_needs_a_key() -> None:
    key = base64.urlsafe_b64encode(bytes(range(32))).decode()
    sealer = Sealer(TrainingSettings(aivera_env="prod", training_webhook_key=SecretStr(key)))
    hook_a, hook_b = uuid.uuid4(), uuid.uuid4()
    blob = sealer.seal(hook_a, "whsec_abc")
    assert b"whsec_abc" not in blob and sealer.open(hook_a, blob) == "whsec_abc"
    with pytest.raises(InvalidTag):  # copied to another webhook's row, it does not open
        sealer.open(hook_b, blob)
    off = Sealer(TrainingSettings(aivera_env="prod"))
    assert not off.enabled
    with pytest.raises(FailedPrecondition):
        off.seal(hook_a, "whsec_abc")
