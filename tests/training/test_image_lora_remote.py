"""Remote image-LoRA training through Replicate's HTTP API, against a loopback server that
speaks it (tests/helpers/replicate_server.py): the client's wire calls and error mapping,
then the training service's trainer and its signed webhooks on real Postgres, the real
storage service and the real training service."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import image_loras_pb2 as L
from aivera.training.v1 import image_loras_pb2_grpc
from services.common.devpg import LocalPostgres
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from services.common.server import App
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.image_trainer import WEBHOOK_PATH
from services.training.image_webhooks import MAX_BODY
from services.training.replicate import Replicate
from services.training.server import make_spec as training_spec
from tests.helpers.auth import Client, make_settings, serve
from tests.helpers.errors import reason
from tests.helpers.identity import secret
from tests.helpers.replicate_server import (
    TRAINER,
    TRAINER_VERSION,
    ReplicateServer,
    png,
    sign,
    whsec,
)
from tests.helpers.services import bearer, channel, running
from tests.training.conftest import Env, User


@pytest.fixture
async def fake() -> AsyncIterator[ReplicateServer]:
    async with ReplicateServer(step_seconds=0.02) as server:
        yield server


def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return buf.getvalue()


# -- the client on the wire ---------------------------------------------------------------
async def test_client_trains_and_predicts_on_the_wire(fake: ReplicateServer) -> None:
    async with Replicate(fake.url, fake.token, timeout=5) as api:
        account = await api.account()
        assert account["username"] == "aivera-system"
        latest = (await api.get_model(TRAINER))["latest_version"]["id"]
        assert latest == TRAINER_VERSION
        await api.create_model("aivera-system/lora-one")
        with pytest.raises(Exception) as exists:
            await api.create_model("aivera-system/lora-one")
        assert exists.value.__class__.__name__ == "AlreadyExists"
        url = await api.upload_file(
            "images.zip", _zip({"00.png": b"x", "00.txt": b"a caption"}), "application/zip"
        )
        assert url.startswith(fake.url + "/v1/files/")
        training = await api.create_training(
            model=TRAINER,
            version=TRAINER_VERSION,
            destination="aivera-system/lora-one",
            input={"input_images": url, "trigger_word": "TOK", "steps": 100},
            webhook=None,
        )
        assert training["status"] == "starting" and training["urls"]["get"]
        assert fake.training_zips[training["id"]] == ["00.png", "00.txt"]
        while training["status"] not in ("succeeded", "failed", "canceled"):
            training = await api.get_training(training["id"])
        assert training["status"] == "succeeded", training
        assert "100/100" in training["logs"]
        version = training["output"]["version"]
        assert version.startswith("aivera-system/lora-one:")
        weights = await api.download(training["output"]["weights"], max_bytes=1 << 20)
        assert weights[257:262] == b"ustar"  # a tar archive
        with pytest.raises(ResourceExhausted) as big:
            await api.download(training["output"]["weights"], max_bytes=100)
        assert big.value.reason == Reason.FILE_TOO_LARGE

        prediction = await api.create_prediction(
            version=version, input={"prompt": "TOK a cat", "num_outputs": 2, "aspect_ratio": "16:9"}
        )
        while prediction["status"] not in ("succeeded", "failed", "canceled"):
            prediction = await api.get_prediction(prediction["id"])
        assert prediction["status"] == "succeeded" and len(prediction["output"]) == 2
        image = await api.download(prediction["output"][0], max_bytes=1 << 22)
        assert image[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(image[16:20], "big") == 1344  # 16:9 width
        fake.stall = True
        stalled = await api.create_prediction(version=version, input={"prompt": "TOK"})
        cancelled = await api.cancel_prediction(stalled["id"])
        assert cancelled["status"] == "canceled" and stalled["id"] in fake.cancels


async def test_client_sends_the_token_to_the_api_only(fake: ReplicateServer) -> None:
    async with ReplicateServer() as elsewhere:  # another host, serving an output
        elsewhere.outputs["x/weights.tar"] = (b"weights", "application/x-tar")
        async with Replicate(fake.url, fake.token, timeout=5) as api:
            got = await api.download(f"{elsewhere.url}/delivery/x/weights.tar", max_bytes=100)
            assert got == b"weights"
            with pytest.raises(InvalidArgument):
                await api.download("file:///etc/passwd", max_bytes=100)
        assert elsewhere.delivery_auth == [""]


async def test_client_errors_are_mapped_and_never_carry_the_token(
    fake: ReplicateServer,
) -> None:
    bad = "r8_" + "w" * 37
    async with Replicate(fake.url, bad, timeout=5) as api:
        with pytest.raises(FailedPrecondition) as refused:
            await api.get_training("abc")
        assert refused.value.reason == Reason.PROVIDER_KEY_INVALID
        assert bad not in str(refused.value) and "r8_" not in refused.value.message
        assert "r8_" not in repr(api)
    async with Replicate(fake.url, fake.token, timeout=5) as api:
        with pytest.raises(NotFound):
            await api.get_training("nosuchtraining")
        with pytest.raises(InvalidArgument):
            await api.create_prediction(version="nope:nope", input={"prompt": "x"})
        with pytest.raises(InvalidArgument):
            await api.get_training("../../v1/account")  # never a path of our making
        fake.down = True
        with pytest.raises(Unavailable) as down:
            await api.account()
        assert down.value.reason == Reason.PROVIDER_UNAVAILABLE
        assert fake.refused == 1
    async with Replicate("http://127.0.0.1:1", fake.token, timeout=2) as api:
        with pytest.raises(Unavailable) as gone:
            await api.account()
        assert gone.value.reason == Reason.PROVIDER_UNAVAILABLE
        assert fake.token not in gone.value.message


# -- the trainer and its webhooks, in the training service ---------------------------------
@pytest.fixture(scope="module")
async def replicate() -> AsyncIterator[ReplicateServer]:
    async with ReplicateServer(step_seconds=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def training_overrides(replicate: ReplicateServer) -> dict[str, Any]:
    return {
        "replicate_api_url": replicate.url,
        "replicate_api_token": replicate.token,  # the system key (no auth in this module)
        "replicate_webhook_secret": replicate.webhook_secret,
        "replicate_destination_owner": "aivera-system",
        # Webhooks drive trainings here; the lost-webhook test polls fast.
        "image_lora_poll_seconds": 30.0,
        "image_lora_retry_seconds": 0.2,
        "image_lora_retry_max_seconds": 0.4,
        "image_lora_executor": "replicate",
    }


@pytest.fixture(scope="module")
async def remote(env: Env, replicate: ReplicateServer) -> AsyncIterator[Remote]:
    # The service's HTTP port is known once it runs: that is where Replicate posts.
    settings = env.training.settings
    assert isinstance(settings, TrainingSettings)
    settings.training_public_url = f"http://127.0.0.1:{env.training.http_port}"
    yield Remote(env, replicate, settings)


@dataclass
class Remote:
    env: Env
    fake: ReplicateServer
    settings: TrainingSettings

    @property
    def webhook(self) -> str:
        return self.settings.training_public_url + WEBHOOK_PATH

    async def db(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.settings.dsn())
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


class Artist(User):
    """A user with image LoRAs."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.loras = image_loras_pb2_grpc.ImageLoraServiceStub(env.chan)

    async def lora(self, n: int = 4, word: str = "") -> L.ImageLora:
        lora: L.ImageLora = await self.loras.CreateImageLora(
            L.CreateImageLoraRequest(
                name="style",
                kind=L.IMAGE_LORA_KIND_STYLE,
                trigger_word=word or f"tok{uuid.uuid4().hex[:8]}",
            ),
            metadata=self.md,
        )
        for i in range(n):
            rgb = (i * 40 % 256, (i * 90 + 7) % 256, hash(lora.id) % 256)
            file_id = await self.upload(
                png(512, 512, rgb), f"ref{i}.png", storage_pb2.BUCKET_TRAINING_IMAGES
            )
            lora = await self.loras.AddReferenceImage(
                L.AddReferenceImageRequest(
                    image_lora=lora.id, file_id=file_id, caption=f"a picture, number {i}"
                ),
                metadata=self.md,
            )
        return lora

    async def start(self, lora_id: str) -> L.ImageLora:
        started: L.ImageLora = await self.loras.StartTraining(
            L.StartTrainingRequest(
                image_lora=lora_id, executor=L.IMAGE_LORA_EXECUTOR_REPLICATE, steps=400
            ),
            metadata=self.md,
        )
        return started

    async def get(self, lora_id: str) -> L.ImageLora:
        got: L.ImageLora = await self.loras.GetImageLora(
            L.GetImageLoraRequest(id=lora_id), metadata=self.md
        )
        return got

    async def wait(self, lora_id: str, statuses: set[int], timeout: float = 30) -> L.ImageLora:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            lora = await self.get(lora_id)
            if lora.status in statuses:
                return lora
            if loop.time() > end:
                raise AssertionError(f"image LoRA stuck: {lora}")
            await asyncio.sleep(0.05)


async def _remote_id(remote: Remote, lora_id: str) -> str:
    value: str = await remote.db(
        "SELECT remote_id FROM training.image_loras WHERE id = $1", uuid.UUID(lora_id)
    )
    return value


async def _weights(remote: Remote, lora_id: str) -> tuple[str, str]:
    conn = await asyncpg.connect(remote.settings.dsn())
    try:
        row = await conn.fetchrow(
            "SELECT weights_file_id, remote_version FROM training.image_loras WHERE id = $1",
            uuid.UUID(lora_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return row["weights_file_id"], row["remote_version"]


async def test_webhooks_drive_a_training_to_ready(remote: Remote) -> None:
    fake = remote.fake
    user = Artist(remote.env)
    lora = await user.lora(4)
    before = len(fake.deliveries)
    started = await user.start(lora.id)
    assert started.status == L.IMAGE_LORA_STATUS_QUEUED
    assert started.executor == L.IMAGE_LORA_EXECUTOR_REPLICATE and started.attempt == 1
    # Well within the 30 s poll interval: only webhooks can have moved it.
    ready = await user.wait(
        lora.id, {L.IMAGE_LORA_STATUS_READY, L.IMAGE_LORA_STATUS_FAILED}, timeout=15
    )
    assert ready.status == L.IMAGE_LORA_STATUS_READY, ready.error
    assert ready.progress == 1.0 and ready.weights_size_bytes > 0 and not ready.simulated
    # The training Replicate ran: the images with their captions, the trigger word, steps.
    remote_id = await _remote_id(remote, lora.id)
    training = fake.trainings[remote_id]
    assert training["input"]["trigger_word"] == lora.trigger_word
    assert training["input"]["steps"] == 400
    names = fake.training_zips[remote_id]
    assert len([n for n in names if n.endswith(".png")]) == 4
    assert len([n for n in names if n.endswith(".txt")]) == 4
    # Webhooks carried it (polling is 30 s here): signed, to our route, all answered 200.
    ours = [d for d in fake.deliveries[before:] if remote_id in d.body]
    assert {json.loads(d.body)["status"] for d in ours} >= {"processing", "succeeded"}
    assert all(d.url == remote.webhook and d.status == 200 for d in ours)
    # The weights are the owner's storage file, in the models bucket, byte for byte.
    file_id, version = await _weights(remote, lora.id)
    assert version == training["output"]["version"]
    info = await user.storage.GetFile(storage_pb2.GetFileRequest(id=file_id), metadata=user.md)
    assert info.bucket == storage_pb2.BUCKET_MODELS
    weights = fake.outputs[f"{remote_id}/trained_model.tar"][0]
    assert info.size_bytes == len(weights) == ready.weights_size_bytes
    # Another user: NOT_FOUND for the LoRA, its weights file and its cancel.
    other = Artist(remote.env)
    for call in (
        other.get(lora.id),
        other.storage.GetFile(storage_pb2.GetFileRequest(id=file_id), metadata=other.md),
        other.loras.CancelTraining(L.CancelTrainingRequest(image_lora=lora.id), metadata=other.md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def _post(remote: Remote, headers: dict[str, str], body: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(remote.webhook, data=body.encode(), headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_signatures_are_checked_and_deliveries_applied_once(remote: Remote) -> None:
    fake = remote.fake
    fake.stall = True  # the training stays processing: only webhooks can change it
    user = Artist(remote.env)
    lora = await user.lora(4)
    try:
        await user.start(lora.id)
        await user.wait(lora.id, {L.IMAGE_LORA_STATUS_TRAINING})
        remote_id = await _remote_id(remote, lora.id)
        failed = dict(fake.trainings[remote_id], status="failed", error="CUDA out of memory")
        body = json.dumps(failed)
        now = int(time.time())
        good = fake.signed_headers("msg_forged_1", now, body)
        cases = {
            "missing signature": {k: v for k, v in good.items() if k != "webhook-signature"},
            "missing id": {k: v for k, v in good.items() if k != "webhook-id"},
            "signed with another secret": {
                **good,
                "webhook-signature": sign(whsec(), "msg_forged_1", now, body),
            },
            "signature of another body": {
                **good,
                "webhook-signature": sign(fake.webhook_secret, "msg_forged_1", now, body + " "),
            },
            "old timestamp": fake.signed_headers("msg_forged_1", now - 3600, body),
            "future timestamp": fake.signed_headers("msg_forged_1", now + 3600, body),
        }
        for name, headers in cases.items():
            status, _ = await _post(remote, headers, body)
            assert status == 401, name
        got = await user.get(lora.id)
        assert got.status == L.IMAGE_LORA_STATUS_TRAINING, "a refused webhook changed it"
        # Too large: refused before anything is parsed or verified.
        status, _ = await _post(remote, good, "x" * (MAX_BODY + 10))
        assert status == 413
        # A replayed id is skipped: the first delivery of msg_progress applies, the same
        # id again (even re-signed now with other content) does nothing.
        logs = dict(fake.trainings[remote_id], logs="x |  300/400 [00:01]")
        progress_body = json.dumps(logs)
        h = fake.signed_headers("msg_progress", now, progress_body)
        assert (await _post(remote, h, progress_body))[1]["result"] == "applied"
        assert (await user.get(lora.id)).progress == pytest.approx(0.75)
        assert (await _post(remote, h, progress_body))[1]["result"] == "duplicate"
        replay = fake.signed_headers("msg_progress", int(time.time()), body)
        assert (await _post(remote, replay, body))[1]["result"] == "duplicate"
        assert (await user.get(lora.id)).status == L.IMAGE_LORA_STATUS_TRAINING
        # An unknown training: 200, ignored.
        stranger = json.dumps({"id": "unknowntraining01", "status": "failed"})
        h = fake.signed_headers("msg_stranger", now, stranger)
        assert await _post(remote, h, stranger) == (200, {"result": "ignored"})
        # The genuine failure, signed: FAILED with the provider's reason.
        h = fake.signed_headers("msg_fail", now, body)
        assert (await _post(remote, h, body))[1]["result"] == "applied"
        got = await user.get(lora.id)
        assert got.status == L.IMAGE_LORA_STATUS_FAILED
        assert "CUDA out of memory" in got.error and fake.token not in got.error
    finally:
        fake.stall = False


async def test_lost_webhooks_are_covered_by_polling(remote: Remote) -> None:
    fake = remote.fake
    fake.drop_webhooks = True
    remote.settings.image_lora_poll_seconds = 0.3
    user = Artist(remote.env)
    lora = await user.lora(4)
    try:
        before = len(fake.deliveries)
        await user.start(lora.id)
        ready = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_READY, L.IMAGE_LORA_STATUS_FAILED})
        assert ready.status == L.IMAGE_LORA_STATUS_READY, ready.error
        assert len(fake.deliveries) == before  # not one webhook arrived
        assert ready.weights_size_bytes > 0
    finally:
        fake.drop_webhooks = False
        remote.settings.image_lora_poll_seconds = 30.0


async def test_remote_failure_then_retry_with_the_same_images(remote: Remote) -> None:
    fake = remote.fake
    fake.fail_trainings = "training diverged: loss is NaN"
    user = Artist(remote.env)
    lora = await user.lora(5)
    try:
        await user.start(lora.id)
        failed = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_FAILED, L.IMAGE_LORA_STATUS_READY})
        assert failed.status == L.IMAGE_LORA_STATUS_FAILED
        assert "loss is NaN" in failed.error and failed.HasField("finish_time")
    finally:
        fake.fail_trainings = ""
    first = await _remote_id(remote, lora.id)
    again = await user.start(lora.id)
    assert again.attempt == 2 and again.status == L.IMAGE_LORA_STATUS_QUEUED and not again.error
    ready = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_READY, L.IMAGE_LORA_STATUS_FAILED})
    assert ready.status == L.IMAGE_LORA_STATUS_READY, ready.error
    second = await _remote_id(remote, lora.id)
    assert second != first
    assert fake.training_zips[second] == fake.training_zips[first]  # the same images
    # Both attempts trained versions of the one destination model of this LoRA.
    assert fake.trainings[first]["destination"] == fake.trainings[second]["destination"]


async def test_cancel_cancels_at_the_provider(remote: Remote) -> None:
    fake = remote.fake
    fake.stall = True
    user = Artist(remote.env)
    lora = await user.lora(4)
    try:
        await user.start(lora.id)
        await user.wait(lora.id, {L.IMAGE_LORA_STATUS_TRAINING})
        remote_id = await _remote_id(remote, lora.id)
        cancelled = await user.loras.CancelTraining(
            L.CancelTrainingRequest(image_lora=lora.id), metadata=user.md
        )
        assert cancelled.status == L.IMAGE_LORA_STATUS_CANCELLED
        assert remote_id in fake.cancels
        assert fake.trainings[remote_id]["status"] == "canceled"
    finally:
        fake.stall = False
    # The provider's `canceled` webhook changes nothing; the LoRA stays CANCELLED.
    await asyncio.sleep(0.3)
    assert (await user.get(lora.id)).status == L.IMAGE_LORA_STATUS_CANCELLED


async def test_provider_down_keeps_the_lora_queued_until_it_returns(remote: Remote) -> None:
    fake = remote.fake
    user = Artist(remote.env)
    lora = await user.lora(4)
    fake.down = True
    refused = fake.refused
    try:
        await user.start(lora.id)
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while fake.refused < refused + 2:  # tried, refused, tried again after a backoff
            assert loop.time() < end, "the trainer never tried"
            await asyncio.sleep(0.05)
        got = await user.get(lora.id)
        assert got.status in (L.IMAGE_LORA_STATUS_QUEUED, L.IMAGE_LORA_STATUS_VALIDATING)
        assert not got.error
    finally:
        fake.down = False
    ready = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_READY, L.IMAGE_LORA_STATUS_FAILED})
    assert ready.status == L.IMAGE_LORA_STATUS_READY, ready.error
    assert ready.attempt == 1


async def test_a_lost_create_answer_adopts_the_training_never_a_second(remote: Remote) -> None:
    fake = remote.fake
    user = Artist(remote.env)
    lora = await user.lora(4)
    mine = lora.id.replace("-", "")[:20]

    def ours() -> list[dict[str, Any]]:
        return [
            t for t in fake.trainings.values() if t["destination"].endswith(f"/aivera-lora-{mine}")
        ]

    # Replicate creates the training, then the connection drops before its answer: the
    # trainer never learns the id and puts the LoRA back in the queue (a long backoff, so
    # the account gets a newer training meanwhile and the search has to page).
    fake.lose_create_answers = 1
    fake.list_page_size = 1
    remote.settings.image_lora_retry_seconds = 60.0
    remote.settings.image_lora_retry_max_seconds = 60.0
    try:
        await user.start(lora.id)
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not ours() or (await user.get(lora.id)).status != L.IMAGE_LORA_STATUS_QUEUED:
            assert loop.time() < end, "the create never reached the fake"
            await asyncio.sleep(0.05)
        assert fake.lose_create_answers == 0 and await _remote_id(remote, lora.id) == ""
        (lost,) = ours()
        async with Replicate(fake.url, fake.token, timeout=5) as api:
            await api.create_model(f"aivera-system/noise-{mine}")
            url = await api.upload_file("n.zip", _zip({"0.png": b"x"}), "application/zip")
            noise = await api.create_training(
                model=TRAINER,
                version=TRAINER_VERSION,
                destination=f"aivera-system/noise-{mine}",
                input={"input_images": url, "trigger_word": "NOISE", "steps": 10},
                webhook=None,
            )
            first = await api.list_trainings()
            assert first["results"][0]["id"] == noise["id"] and first["next"]
            assert first["previous"] is None
            second = await api.list_trainings(first["next"])
            assert second["results"][0]["id"] == lost["id"] and second["previous"]
        # The retry comes now; it finds the training by the images' URL it recorded.
        await remote.db(
            "UPDATE training.image_loras SET remote_retry_at = now() WHERE id = $1",
            uuid.UUID(lora.id),
        )
        ready = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_READY, L.IMAGE_LORA_STATUS_FAILED})
    finally:
        fake.lose_create_answers = 0
        fake.list_page_size = 100
        remote.settings.image_lora_retry_seconds = 0.2
        remote.settings.image_lora_retry_max_seconds = 0.4
    assert ready.status == L.IMAGE_LORA_STATUS_READY, ready.error
    assert ready.attempt == 1
    assert [t["id"] for t in ours()] == [lost["id"]]  # one training, paid for once
    assert await _remote_id(remote, lora.id) == lost["id"]
    file_id, version = await _weights(remote, lora.id)
    assert file_id and version == fake.trainings[lost["id"]]["output"]["version"]


async def test_a_refused_key_fails_the_training_clearly(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aivera.training")
    fake = remote.fake
    user = Artist(remote.env)
    lora = await user.lora(4)
    system = fake.tokens.pop(fake.token)  # Replicate no longer knows the system key
    try:
        await user.start(lora.id)
        failed = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_FAILED, L.IMAGE_LORA_STATUS_READY})
    finally:
        fake.tokens[remote.settings.replicate_api_token.get_secret_value()] = system
    assert failed.status == L.IMAGE_LORA_STATUS_FAILED
    assert "refused the API key" in failed.error
    key = remote.settings.replicate_api_token.get_secret_value()
    assert key not in failed.error
    # Each move was logged, with the LoRA and the statuses; the key never was.
    moves = [r for r in caplog.records if getattr(r, "fields", {}).get("image_lora") == lora.id]
    assert [(r.fields["status_from"], r.fields["status_to"]) for r in moves] == [  # type: ignore[attr-defined]
        ("QUEUED", "VALIDATING"),
        ("VALIDATING", "FAILED"),
    ]
    assert key not in caplog.text and "r8_" not in caplog.text


async def test_weights_over_the_limit_fail_the_training(remote: Remote) -> None:
    user = Artist(remote.env)
    lora = await user.lora(4)
    remote.settings.image_lora_max_weights_bytes = 512
    try:
        await user.start(lora.id)
        failed = await user.wait(lora.id, {L.IMAGE_LORA_STATUS_FAILED, L.IMAGE_LORA_STATUS_READY})
    finally:
        remote.settings.image_lora_max_weights_bytes = 5 * 1024**3
    assert failed.status == L.IMAGE_LORA_STATUS_FAILED
    assert "larger than the limit of 512 bytes" in failed.error
    assert failed.weights_size_bytes == 0


# -- the user's own Replicate key, from auth, in a mesh with service identities -----------
@dataclass
class Mesh:
    auth: Client
    training: App
    settings: TrainingSettings
    storage_chan: grpc.aio.Channel
    chan: grpc.aio.Channel


@pytest.fixture(scope="module")
async def mesh(
    pg: LocalPostgres, replicate: ReplicateServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    """Auth, storage and training with their credentials, on a database of their own (the
    module's other training service must not claim these LoRAs), and no system key."""
    url = pg.create_database(f"t_remote_keys_{uuid.uuid4().hex[:6]}")
    async with serve(make_settings(url)) as auth:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": url,
            "auth_addr": f"127.0.0.1:{auth.app.grpc_port}",
        }
        s = StorageSettings(
            **common,
            aivera_service_secret=SecretStr(secret("storage")),
            data_dir=tmp_path_factory.mktemp("mesh-storage"),
            storage_backend="local",
        )
        async with running(storage_spec(s), s) as st:
            t = TrainingSettings(
                **common,
                aivera_service_secret=SecretStr(secret("training")),
                storage_addr=f"127.0.0.1:{st.grpc_port}",
                training_poll_seconds=0.2,
                replicate_api_url=replicate.url,
                replicate_webhook_secret=SecretStr(replicate.webhook_secret),
                image_lora_poll_seconds=30.0,
                image_lora_executor="replicate",
            )
            async with running(training_spec(t), t) as tr:
                settings = tr.settings
                assert isinstance(settings, TrainingSettings)
                settings.training_public_url = f"http://127.0.0.1:{tr.http_port}"
                async with channel(st) as schan, channel(tr) as tchan:
                    yield Mesh(auth, tr, settings, schan, tchan)


async def test_the_users_own_key_trains_in_their_account(
    mesh: Mesh, replicate: ReplicateServer
) -> None:
    _u, _t, session = await mesh.auth.new_user()
    md = bearer(session.access_token)
    user_id = session.user.id
    loras = image_loras_pb2_grpc.ImageLoraServiceStub(mesh.chan)
    store = storage_pb2_grpc.StorageServiceStub(mesh.storage_chan)
    lora = await loras.CreateImageLora(
        L.CreateImageLoraRequest(name="me", kind=L.IMAGE_LORA_KIND_CHARACTER, trigger_word="zyx"),
        metadata=md,
    )
    for i in range(4):
        data = png(512, 640, (i * 50, 20, 200))

        async def reqs(data: bytes = data) -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=storage_pb2.BUCKET_TRAINING_IMAGES,
                    filename="me.png",
                    size_bytes=len(data),
                )
            )
            yield storage_pb2.UploadRequest(chunk=data)

        f = await store.Upload(reqs(), metadata=md)
        await loras.AddReferenceImage(
            L.AddReferenceImageRequest(image_lora=lora.id, file_id=f.id), metadata=md
        )
    start = L.StartTrainingRequest(image_lora=lora.id, executor=L.IMAGE_LORA_EXECUTOR_REPLICATE)
    # No key of the user's and no system key: refused before anything changes.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await loras.StartTraining(start, metadata=md)
    assert missing.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason(missing.value) == "PROVIDER_KEY_MISSING"
    token = replicate.add_account(f"artist-{user_id[:8]}")
    await mesh.auth.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=auth_pb2.PROVIDER_REPLICATE, api_key=token),
        metadata=md,
    )
    await loras.StartTraining(start, metadata=md)
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while (
        got := await loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=md)
    ).status not in (
        L.IMAGE_LORA_STATUS_READY,
        L.IMAGE_LORA_STATUS_FAILED,
    ):
        assert loop.time() < end, got
        await asyncio.sleep(0.05)
    assert got.status == L.IMAGE_LORA_STATUS_READY, got.error
    # Trained with the user's key (read from auth on the LoRA's grant, after the request
    # ended), into a model of the user's Replicate account.
    (remote_id,) = [
        tid
        for tid, t in replicate.trainings.items()
        if t["destination"].startswith(f"artist-{user_id[:8]}/")
    ]
    assert replicate.token_of(remote_id) == token
