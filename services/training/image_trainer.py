"""The remote trainer of image LoRAs (executor REPLICATE), running in the training service.

    QUEUED ──claim──▶ VALIDATING (reference images read from storage on the LoRA's grant,
    zipped with captions as same-named .txt files) ──upload + create training──▶ TRAINING
    (progress from the training's logs, by webhook or poll) ──▶ READY (weights copied into
    the owner's storage, `models` bucket) / FAILED (the provider's error) / CANCELLED.

Claims are row moves with SKIP LOCKED, so several replicas share the queue; a claim whose
replica went away goes back to QUEUED after `image_lora_claim_timeout_seconds`. Replicate
down or rate-limiting: the LoRA goes back to QUEUED and is tried again with a doubling
delay (never lost, never failed for it); a refused key or request fails it with a message
saying why. A claim that comes back to an attempt whose create was begun (the trainer
died, or the answer was lost) adopts the training Replicate made, never a second one.
Webhooks (image_webhooks.py) report progress and endings; a TRAINING LoRA not
heard of for `image_lora_poll_seconds` is polled, so a lost webhook only delays it. The
API token (the user's, else the system's: replicate_keys.py) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import logging
import re
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2
from services.common import context as ctx
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.common.logs import fields
from services.common.remote import StorageClient
from services.training.config import TrainingSettings
from services.training.image_lora_store import ImageLoraRow, ImageLoraStore
from services.training.replicate import Replicate
from services.training.replicate_keys import replicate_token
from services.training.store import Store

log = logging.getLogger("aivera.training.image_trainer")
L = image_loras_pb2
REPLICATE = L.IMAGE_LORA_EXECUTOR_REPLICATE
QUEUED = L.IMAGE_LORA_STATUS_QUEUED
VALIDATING = L.IMAGE_LORA_STATUS_VALIDATING
TRAINING = L.IMAGE_LORA_STATUS_TRAINING
READY = L.IMAGE_LORA_STATUS_READY
FAILED = L.IMAGE_LORA_STATUS_FAILED
CANCELLED = L.IMAGE_LORA_STATUS_CANCELLED

WEBHOOK_PATH = "/webhooks/replicate"
EXTENSIONS: dict[int, str] = {
    L.IMAGE_FORMAT_JPEG: "jpg",
    L.IMAGE_FORMAT_PNG: "png",
    L.IMAGE_FORMAT_WEBP: "webp",
}
# tqdm's bar in the trainer's logs: "…| 250/1000 […"; the last one is where it stands.
_PROGRESS = re.compile(r"\|\s*(\d+)/(\d+)\b")
_ERROR_CHARS = 1000
# Seen webhook ids are kept this long: far past the signature's time tolerance, so a
# retried delivery of an applied event is skipped.
_WEBHOOK_KEEP_SECONDS = 7 * 86400.0
_POLL_BATCH = 20
# Adopting a training an earlier claim created (_adopt): how far Replicate's clock may be
# behind ours, and how many pages of the account's trainings are read at most.
_ADOPT_SKEW_SECONDS = 3600.0
_ADOPT_MAX_PAGES = 20


def progress_of(logs: Any) -> float | None:
    """Training progress 0–0.99 from the trainer's logs (1 only once READY)."""
    if not isinstance(logs, str):
        return None
    found = _PROGRESS.findall(logs)
    for done, total in reversed(found):
        if int(total) > 0:
            return min(0.99, int(done) / int(total))
    return None


def provider_error(training: dict[str, Any]) -> str:
    text = training.get("error")
    said = str(text).strip()[:_ERROR_CHARS] if text else "no reason given"
    return f"Replicate's training failed: {said}"


def webhook_url(settings: TrainingSettings) -> str | None:
    """Where Replicate sends webhooks; None without a public URL or a secret to verify them
    (then polling alone follows trainings)."""
    base = settings.training_public_url.rstrip("/")
    if not base or not settings.replicate_webhook_secret.get_secret_value():
        return None
    return base + WEBHOOK_PATH


class KeyOwner(Protocol):
    """What cancel_remote needs of its caller (ImageLoras has it)."""

    store: Store
    settings: TrainingSettings
    auth: grpc.aio.Channel | None


@contextlib.contextmanager
def _for_user(user_id: str, grant: str | None) -> Any:
    """Calls for the LoRA's owner: inside their request as it is, else on the grant."""
    if ctx.current_caller().user_id == user_id:
        yield
        return
    with ctx.acting_for(user_id, grant=grant):
        yield


@contextlib.asynccontextmanager
async def _client(
    settings: TrainingSettings, auth: grpc.aio.Channel | None, user_id: str
) -> AsyncIterator[tuple[Replicate, str]]:
    token = await replicate_token(auth, settings, user_id)
    api = Replicate(settings.replicate_api_url, token, timeout=settings.replicate_timeout_seconds)
    try:
        yield api, token
    finally:
        await api.close()


async def cancel_remote(owner: KeyOwner, row: ImageLoraRow) -> None:
    """Cancel the LoRA's training at Replicate with its owner's key (CancelTraining,
    DeleteImageLora, the sweep). A training that has ended there already is fine."""
    if row.executor != REPLICATE or not row.remote_id:
        return
    grant = await owner.store.grant_of(row.id)
    with _for_user(row.user_id, grant):
        async with _client(owner.settings, owner.auth, row.user_id) as (api, _):
            try:
                reply = await api.cancel_training(row.remote_id)
            except NotFound:
                reply = {"status": "gone"}
    log.info(
        "remote training of image LoRA %s cancelled at the provider",
        row.id,
        extra=fields(
            image_lora=str(row.id), remote_id=row.remote_id, remote_status=reply.get("status")
        ),
    )


class ImageTrainer:
    def __init__(
        self,
        store: Store,
        storage: StorageClient,
        settings: TrainingSettings,
        auth: grpc.aio.Channel | None,
    ) -> None:
        self.store = store
        self.loras = ImageLoraStore(store)
        self.storage = storage
        self.settings = settings
        self.auth = auth
        # Set by a webhook (or anyone) to look at the queue and due polls now.
        self.wake = asyncio.Event()
        self._finishing: set[uuid.UUID] = set()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        rounds = 0
        while True:
            try:
                await self.tick(prune=rounds % 1000 == 0)
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:  # the database: next round
                log.warning("image LoRA trainer: %s", exc.message)
            except Exception:
                log.exception("image LoRA trainer round failed")
            rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.training_poll_seconds)
            self.wake.clear()

    async def tick(self, *, prune: bool = False) -> None:
        """One round: stale claims back to the queue, new claims started, due polls."""
        stale = await self.loras.requeue_stale_claims(
            executor=REPLICATE,
            queued=QUEUED,
            validating=VALIDATING,
            older_than=self.settings.image_lora_claim_timeout_seconds,
        )
        if stale:
            log.warning("image LoRA trainer: %d abandoned claims back to QUEUED", stale)
        while (
            row := await self.loras.claim_remote(
                executor=REPLICATE, queued=QUEUED, validating=VALIDATING
            )
        ) is not None:
            self._transition(row, "QUEUED", "VALIDATING")
            try:
                await self.start(row)
            except Exception:  # a bug or the database: never strand the claim
                log.exception("image LoRA %s: starting its training failed", row.id)
                await self.loras.retry_later(
                    row.id,
                    row.updated_at,
                    queued=QUEUED,
                    validating=VALIDATING,
                    base=self.settings.image_lora_retry_seconds,
                    most=self.settings.image_lora_retry_max_seconds,
                )
        polls = await self.loras.due_polls(
            executor=REPLICATE,
            training=TRAINING,
            older_than=self.settings.image_lora_poll_seconds,
            limit=_POLL_BATCH,
        )
        await asyncio.gather(*(self.poll(row) for row in polls))
        if prune:
            await self.loras.prune_webhooks(_WEBHOOK_KEEP_SECONDS)

    # -- QUEUED → VALIDATING → TRAINING -------------------------------------------------------
    async def start(self, row: ImageLoraRow) -> None:
        """Pack the claimed LoRA's images and create its training at Replicate."""
        claimed = row.updated_at
        grant = await self.store.grant_of(row.id)
        try:
            with _for_user(row.user_id, grant):
                async with _client(self.settings, self.auth, row.user_id) as (api, token):
                    adopted = await self._adopt(api, row)
                    if adopted is not None:
                        training = adopted
                    else:
                        archive = await self._pack(row)
                        created = await self._create(api, token, row, claimed, archive)
                        if created is None:  # the claim was lost before the create
                            return
                        training = created
                    if not await self.loras.set_remote(
                        row.id,
                        claimed,
                        remote_id=training["id"],
                        training=TRAINING,
                        validating=VALIDATING,
                    ):
                        # Cancelled or deleted while we packed: nothing may train for it.
                        log.info(
                            "image LoRA %s changed while its training was created: cancelling it",
                            row.id,
                            extra=fields(image_lora=str(row.id), remote_id=training["id"]),
                        )
                        with contextlib.suppress(ServiceError):
                            await api.cancel_training(training["id"])
                        return
                    if adopted is not None:  # it may have moved on already: look at once
                        await self.loras.recheck(row.id)
                        self.wake.set()
        except (Unavailable, ResourceExhausted) as exc:
            if isinstance(exc, ResourceExhausted) and exc.reason != Reason.PROVIDER_RATE_LIMITED:
                await self._fail_claim(row, claimed, exc.message)
                return
            delay = await self.loras.retry_later(
                row.id,
                claimed,
                queued=QUEUED,
                validating=VALIDATING,
                base=self.settings.image_lora_retry_seconds,
                most=self.settings.image_lora_retry_max_seconds,
            )
            log.warning(
                "image LoRA %s: %s; back to QUEUED, next try in %.1fs",
                row.id,
                exc.message,
                delay or 0.0,
                extra=fields(image_lora=str(row.id), status_from="VALIDATING", status_to="QUEUED"),
            )
            return
        except ServiceError as exc:
            await self._fail_claim(row, claimed, _why(exc))
            return
        self._transition(row, "VALIDATING", "TRAINING", remote_id=training["id"])

    async def _fail_claim(self, row: ImageLoraRow, claimed: Any, error: str) -> None:
        if await self.loras.fail_claimed(
            row.id, claimed, failed=FAILED, validating=VALIDATING, error=error
        ):
            self._transition(row, "VALIDATING", "FAILED", error=error)

    async def _pack(self, row: ImageLoraRow) -> bytes:
        """The reference images as a zip, each caption beside its image as a .txt of the
        same name (the trainer reads them); each file checked against the sha256 recorded
        when it was added."""
        images = (await self.loras.images([row.id]))[row.id]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for i, img in enumerate(images):
                try:
                    data = await self.storage.download(img.file_id)
                except NotFound:
                    raise FailedPrecondition(
                        f"the file of reference image {img.id} is no longer in storage"
                    ) from None
                if hashlib.sha256(data).hexdigest() != img.sha256:
                    raise FailedPrecondition(
                        f"the file of reference image {img.id} changed since it was added"
                    )
                stem = f"{i:02d}_{img.id.hex[:8]}"
                z.writestr(f"{stem}.{EXTENSIONS.get(img.format, 'img')}", data)
                if img.caption:
                    z.writestr(f"{stem}.txt", img.caption)
        return buf.getvalue()

    async def _adopt(self, api: Replicate, row: ImageLoraRow) -> dict[str, Any] | None:
        """The training an earlier claim of this attempt created, if it did: that claim
        recorded its images' URL before the create call and went away (the trainer stopped,
        or the create's answer was lost) before storing the training's id. Replicate lists
        the account's trainings newest first; the one whose `input_images` is that URL is
        it. None when no create was begun, or Replicate never got it."""
        intent = await self.loras.intent_of(row.id, row.attempt)
        if intent is None:
            return None
        url, since = intent
        # Replicate's clock against ours: trainings older than this cannot be the one.
        oldest = since - dt.timedelta(seconds=_ADOPT_SKEW_SECONDS)
        page: str | None = None
        for _ in range(_ADOPT_MAX_PAGES):
            listing = await api.list_trainings(page)
            results = listing.get("results")
            for training in results if isinstance(results, list) else []:
                if not isinstance(training, dict):
                    continue
                given = training.get("input")
                if (
                    isinstance(given, dict)
                    and given.get("input_images") == url
                    and isinstance(training.get("id"), str)
                    and training["id"]
                ):
                    log.warning(
                        "image LoRA %s: adopting the training an earlier claim created",
                        row.id,
                        extra=fields(
                            image_lora=str(row.id),
                            attempt=row.attempt,
                            remote_id=training.get("id"),
                        ),
                    )
                    return training
                created = _when(training.get("created_at"))
                if created is not None and created < oldest:
                    return None
            nxt = listing.get("next")
            if not isinstance(nxt, str) or not nxt:
                return None
            page = nxt
        return None

    async def _create(
        self, api: Replicate, token: str, row: ImageLoraRow, claimed: Any, archive: bytes
    ) -> dict[str, Any] | None:
        settings = self.settings
        system = token == settings.replicate_api_token.get_secret_value()
        owner = settings.replicate_destination_owner if system else ""
        if not owner:
            owner = str((await api.account()).get("username") or "")
        destination = f"{owner}/aivera-lora-{row.id.hex[:20]}"
        with contextlib.suppress(AlreadyExists):  # a retry trains a new version of it
            await api.create_model(destination)
        version = settings.replicate_trainer_version
        if not version:
            latest = (await api.get_model(settings.replicate_trainer_model)).get("latest_version")
            version = str((latest or {}).get("id") or "")
            if not version:
                raise FailedPrecondition(
                    f"Replicate's {settings.replicate_trainer_model} has no version to train with"
                )
        url = await api.upload_file(f"{row.trigger_word}-images.zip", archive, "application/zip")
        steps = row.training_steps or settings.image_lora_replicate_steps
        # Written before the create: a claim coming back to this attempt finds the training
        # by this URL (_adopt) rather than creating (and paying for) a second one.
        if not await self.loras.set_intent(
            row.id, claimed, validating=VALIDATING, attempt=row.attempt, url=url
        ):
            return None
        return await api.create_training(
            model=settings.replicate_trainer_model,
            version=version,
            destination=destination,
            input={"input_images": url, "trigger_word": row.trigger_word, "steps": steps},
            webhook=webhook_url(settings),
        )

    # -- TRAINING ---------------------------------------------------------------------------
    async def poll(self, row: ImageLoraRow) -> None:
        """Ask Replicate where the training stands and apply it."""
        grant = await self.store.grant_of(row.id)
        try:
            with _for_user(row.user_id, grant):
                async with _client(self.settings, self.auth, row.user_id) as (api, _):
                    training = await api.get_training(row.remote_id)
                    await self.apply(row, training, api)
        except (Unavailable, ResourceExhausted) as exc:
            if isinstance(exc, ResourceExhausted) and exc.reason != Reason.PROVIDER_RATE_LIMITED:
                await self._end(row, FAILED, exc.message)
                return
            # Checked again after image_lora_poll_seconds (due_polls marked it).
            log.warning(
                "image LoRA %s: could not reach Replicate: %s",
                row.id,
                exc.message,
                extra=fields(image_lora=str(row.id)),
            )
        except NotFound:
            await self._end(row, FAILED, "Replicate no longer has the training")
        except ServiceError as exc:
            await self._end(row, FAILED, _why(exc))

    async def apply(self, row: ImageLoraRow, training: dict[str, Any], api: Replicate) -> None:
        status = training.get("status")
        if status in ("starting", "processing"):
            await self.loras.remote_progress(
                row.id, row.remote_id, training=TRAINING, progress=progress_of(training.get("logs"))
            )
        elif status == "succeeded":
            await self._succeed(row, training, api)
        elif status == "failed":
            await self._end(row, FAILED, provider_error(training))
        elif status == "canceled":
            await self._end(row, CANCELLED, "")

    async def _end(self, row: ImageLoraRow, status: int, error: str) -> None:
        if await self.loras.end_remote(
            row.id, row.remote_id, training=TRAINING, status=status, error=error
        ):
            self._transition(row, "TRAINING", _name(status), error=error)

    async def _succeed(self, row: ImageLoraRow, training: dict[str, Any], api: Replicate) -> None:
        """Copy the weights into the owner's storage, then READY."""
        if row.id in self._finishing:
            return
        output = training.get("output") or {}
        weights = output.get("weights") if isinstance(output, dict) else None
        version = output.get("version") if isinstance(output, dict) else None
        if not isinstance(weights, str) or not isinstance(version, str) or not version:
            await self._end(row, FAILED, "Replicate's training succeeded without weights")
            return
        self._finishing.add(row.id)
        try:
            data = await api.download(weights, max_bytes=self.settings.image_lora_max_weights_bytes)
            name = urlsplit(weights).path.rsplit("/", 1)[-1] or "weights.tar"
            stored = await self.storage.upload(
                storage_pb2.BUCKET_MODELS, name, data, labels={"image_lora": str(row.id)}
            )
            digest = hashlib.sha256(data).hexdigest()
            done = await self.loras.finish_remote(
                row.id,
                row.remote_id,
                training=TRAINING,
                ready=READY,
                version=version,
                file_id=stored.id,
                size_bytes=len(data),
                sha256=digest,
            )
            if not done:  # cancelled, deleted or finished elsewhere meanwhile
                await self.storage.delete_file(stored.id)
                return
        finally:
            self._finishing.discard(row.id)
        self._transition(row, "TRAINING", "READY", remote_id=row.remote_id, weights_bytes=len(data))

    # -- webhooks (image_webhooks.py) -------------------------------------------------------
    async def on_webhook(self, webhook_id: str, training: dict[str, Any]) -> str:
        """Apply a verified webhook once: its id is recorded in the transaction that applies
        it. Success is fetched and stored by the trainer (woken now), not in the request."""
        remote_id = training.get("id")
        status = training.get("status")
        if not isinstance(remote_id, str) or not isinstance(status, str):
            return "ignored"
        ended: tuple[ImageLoraRow, int, str] | None = None
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            if not await loras.first_webhook(webhook_id):
                return "duplicate"
            row = await loras.by_remote(REPLICATE, remote_id)
            if row is None or row.status != TRAINING:
                return "ignored"
            if status in ("starting", "processing"):
                await loras.remote_progress(
                    row.id, remote_id, training=TRAINING, progress=progress_of(training.get("logs"))
                )
            elif status == "succeeded":
                await loras.recheck(row.id)
                self.wake.set()
            elif status in ("failed", "canceled"):
                to, error = (
                    (FAILED, provider_error(training)) if status == "failed" else (CANCELLED, "")
                )
                if await loras.end_remote(
                    row.id, remote_id, training=TRAINING, status=to, error=error
                ):
                    ended = (row, to, error)
            else:
                return "ignored"
        if ended is not None:
            self._transition(ended[0], "TRAINING", _name(ended[1]), error=ended[2], via="webhook")
        return "applied"

    # -- logs -------------------------------------------------------------------------------
    def _transition(self, row: ImageLoraRow, old: str, new: str, **extra: Any) -> None:
        log.info(
            "image LoRA %s: %s → %s",
            row.id,
            old,
            new,
            extra=fields(
                image_lora=str(row.id),
                user_id=row.user_id,
                attempt=row.attempt,
                status_from=old,
                status_to=new,
                **{k: v for k, v in extra.items() if v not in (None, "")},
            ),
        )


def _when(value: Any) -> dt.datetime | None:
    """Replicate's `created_at` (ISO 8601, `Z` or an offset), or None."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _name(status: int) -> str:
    return L.ImageLoraStatus.Name(status).removeprefix("IMAGE_LORA_STATUS_")  # type: ignore[arg-type]


def _why(exc: ServiceError) -> str:
    """A failure the user can act on, in words (never a token: the client never puts one
    in a message)."""
    if exc.reason == Reason.PROVIDER_KEY_INVALID:
        return (
            "Replicate refused the API key: set a valid one with SetProviderKey "
            f"(PROVIDER_REPLICATE) and start the training again ({exc.message})"
        )
    if exc.reason == Reason.PROVIDER_KEY_MISSING:
        return "no Replicate API key: set yours with SetProviderKey (PROVIDER_REPLICATE)"
    if isinstance(exc, Unauthenticated):
        return "the training's permission to read your files has ended: start it again"
    return exc.message
