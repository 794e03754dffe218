"""Generations with image LoRAs (seed 001): 1–4 images from a prompt with a READY LoRA of
the owner, made where the LoRA was trained — Replicate predictions on its trained version
(REPLICATE), the diffusers pipeline with its weights on the training workers (LOCAL),
placeholder images (SIMULATE).

A generation is recorded (QUEUED) before anything runs; the caller's stream only follows
it: a caller who goes away does not stop it, and every image is stored in the owner's
storage (`images` bucket) as it lands. REPLICATE (HTTP calls only) and SIMULATE (Pillow
only) run in a task of this process. LOCAL needs the GPU the image LoRA trained on, so it
runs where LOCAL training runs: a training worker of the image LoRA hardware class claims
the QUEUED row (generation_worker.py) on the grant stored with it, and the stream follows
the row (NOTIFY on `GENERATIONS_CHANNEL`, a poll as fallback; a QUEUED one sends its
status every `training_watch_heartbeat_seconds` while it waits). A LOCAL generation no
worker takes within `generation_queue_timeout_seconds` fails (the sweep).

A provider's or pipeline's failure ends the generation FAILED with the reason (images
stored before stay); it is never a gRPC error of the stream. The prompt runs with the
LoRA's trigger word, prepended when the prompt does not name it (as a word, ignoring
case): the LoRA answers only to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2
from services.common import context as ctx
from services.common import pages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
    not_found,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import catalogue, image_headers, image_pipeline
from services.training.billing import Billing
from services.training.config import TrainingSettings
from services.training.generation_store import (
    GENERATIONS_CHANNEL,
    GenerationImageRow,
    GenerationRow,
    GenerationStore,
)
from services.training.hub import Beat, Hub
from services.training.image_lora_store import ImageLoraRow
from services.training.image_loras import ImageLoras
from services.training.replicate import Replicate
from services.training.store import CostRow, Store

L = image_loras_pb2
log = logging.getLogger("aivera.training.generations")

MAX_PROMPT = 2000
MAX_OUTPUTS = 4
MAX_SCALE = 2.0
MAX_SEED = 2**32 - 1
# Aspect ratios: the provider's value and the (long, short) proportion of the sides.
RATIOS: dict[int, tuple[str, int, int]] = {
    L.ASPECT_RATIO_1_1: ("1:1", 1, 1),
    L.ASPECT_RATIO_16_9: ("16:9", 16, 9),
    L.ASPECT_RATIO_9_16: ("9:16", 9, 16),
    L.ASPECT_RATIO_4_3: ("4:3", 4, 3),
    L.ASPECT_RATIO_3_4: ("3:4", 3, 4),
    L.ASPECT_RATIO_3_2: ("3:2", 3, 2),
    L.ASPECT_RATIO_2_3: ("2:3", 2, 3),
}
# Replicate prediction statuses that end it.
_ENDED = {"succeeded", "failed", "canceled"}
# tqdm's "NN%|" in a prediction's logs: how far the sampler got.
_PERCENT = re.compile(r"(\d{1,3})%\|")
# Progress events are sent when the fraction moved at least this much.
_PROGRESS_STEP = 0.05
_ENDED_STATUSES = (L.GENERATION_STATUS_SUCCEEDED, L.GENERATION_STATUS_FAILED)

Spawn = Callable[[Coroutine[Any, Any, None], str], object]


# -- the request, checked (pure) ----------------------------------------------------------
def prompt_text(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("prompt is required", field="prompt")
    if len(value) > MAX_PROMPT:
        raise InvalidArgument(f"prompt must be at most {MAX_PROMPT} characters", field="prompt")
    if "\x00" in value:
        raise InvalidArgument("prompt must not contain NUL characters", field="prompt")
    return value


def with_trigger_word(prompt: str, word: str) -> str:
    """The prompt with the trigger word, prepended unless the prompt has it as a word
    (ignoring case)."""
    if re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", prompt, re.IGNORECASE):
        return prompt
    return f"{word} {prompt}"


def lora_scale(value: float | None) -> float:
    if value is None:
        return 1.0
    if not 0.0 <= value <= MAX_SCALE:  # NaN fails too
        raise InvalidArgument(f"lora_scale must be between 0 and {MAX_SCALE:g}", field="lora_scale")
    return value


def num_outputs(value: int) -> int:
    if not 0 <= value <= MAX_OUTPUTS:
        raise InvalidArgument(
            f"num_outputs must be between 1 and {MAX_OUTPUTS} (0: 1)", field="num_outputs"
        )
    return value or 1


def aspect_ratio(value: int) -> int:
    if value == L.ASPECT_RATIO_UNSPECIFIED:
        return L.ASPECT_RATIO_1_1
    if value not in RATIOS:
        raise InvalidArgument("aspect_ratio is not a known aspect ratio", field="aspect_ratio")
    return value


def seed(value: int | None) -> int:
    """The seed asked for, or one drawn."""
    if value is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= value <= MAX_SEED:
        raise InvalidArgument(f"seed must be between 0 and {MAX_SEED}", field="seed")
    return value


# Placeholder images when GENERATION_LOCAL_LONG_SIDE is 0 (they cost nothing to draw).
SIMULATED_LONG_SIDE = 1024


def native_side(settings: TrainingSettings) -> int:
    """The LOCAL base pipeline's native image side (builds the toy one on first use)."""
    return image_pipeline.resolution(image_pipeline.resolve(settings))


# What a drawing thread hands the loop: progress (a fraction), an image (its position and
# PNG bytes), then None when the thread is done.
Landed = asyncio.Queue[tuple[int, bytes] | float | None]


def draw_in_thread(
    row: GenerationRow,
    *,
    weights: bytes | None,
    width: int,
    height: int,
    settings: TrainingSettings,
    check: Callable[[], None] = lambda: None,
) -> tuple[asyncio.Future[None], Landed]:
    """Runs image_pipeline.generate for `row` in a thread (placeholders when `weights` is
    None); `check` runs in the thread at every step and may raise to stop it. The future
    ends with the thread; what it draws arrives on the queue."""
    loop = asyncio.get_running_loop()
    landed: Landed = asyncio.Queue()

    def on_progress(fraction: float) -> None:
        check()
        loop.call_soon_threadsafe(landed.put_nowait, float(fraction))

    def on_image(position: int, png: bytes) -> None:
        loop.call_soon_threadsafe(landed.put_nowait, (position, png))

    def draw() -> None:
        try:
            image_pipeline.generate(
                weights=weights,
                simulate=weights is None,
                prompt=row.prompt,
                lora_scale=row.lora_scale,
                num_outputs=row.num_outputs,
                width=width,
                height=height,
                seed=row.seed,
                on_progress=on_progress,
                on_image=on_image,
                settings=settings,
            )
        finally:
            loop.call_soon_threadsafe(landed.put_nowait, None)

    return asyncio.ensure_future(asyncio.to_thread(draw)), landed


def pixel_size(ratio: int, long_side: int) -> tuple[int, int]:
    """(width, height) of a local image: the longer side `long_side`, the shorter from the
    ratio, both multiples of 16 (what the pipeline's latent grid needs)."""
    _, w, h = RATIOS[ratio]
    side = max(16, long_side // 16 * 16)
    short = max(16, round(side * min(w, h) / max(w, h) / 16) * 16)
    return (side, short) if w >= h else (short, side)


def progress_of(logs: str) -> float:
    """The sampler's progress in a prediction's logs (its last tqdm percentage), 0–1."""
    found = _PERCENT.findall(logs or "")
    return min(1.0, int(found[-1]) / 100) if found else 0.0


def after_loss(losses: int, max_losses: int, worker_id: str) -> tuple[int, str]:
    """A LOCAL generation whose worker was lost (its lease expired) for the
    `losses + 1`-th time: QUEUED again, or FAILED once that is over `max_losses`."""
    if losses + 1 > max_losses:
        return L.GENERATION_STATUS_FAILED, (
            f"the worker running it was lost ({worker_id}); gave up after {losses + 1} "
            f"lost worker{'s' if losses else ''}"
        )
    return L.GENERATION_STATUS_QUEUED, ""


async def reap_lost(store: Store, max_losses: int) -> int:
    """Requeue (or fail) LOCAL generations whose worker's lease expired; how many. The
    workers run it before claiming, the service's sweep too (no worker left alive)."""
    async with store.transaction() as tx:
        gens = GenerationStore(tx)
        rows = await gens.expired_claims()
        for row in rows:
            status, error = after_loss(row.worker_losses, max_losses, row.worker_id)
            await gens.lose_worker(row.id, status, error)
            log.info("generation %s lost its worker %s", row.id, row.worker_id)
    return len(rows)


async def upload_image(
    storage: StorageClient, row: GenerationRow, position: int, data: bytes
) -> tuple[str, image_headers.ImageHeader]:
    """Store one generated image in the owner's `images` bucket (the caller acts for the
    owner): its file id and header. Failed when the bytes are no image."""
    try:
        header = image_headers.read_header(data[:65536])
    except image_headers.NotAnImage as exc:
        raise Failed(f"image {position} is not an image: {exc}") from None
    file = await storage.upload(
        storage_pb2.BUCKET_IMAGES,
        f"generation-{row.id}-{position}.{header.format}",
        data,
        labels={
            "purpose": "generation",
            "generation_id": str(row.id),
            "image_lora_id": str(row.image_lora_id),
        },
    )
    return file.id, header


# -- what the stream carries ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Image:
    row: GenerationImageRow
    url: str
    url_expire: Any  # dt.datetime | None


@dataclass(frozen=True, slots=True)
class Generation:
    row: GenerationRow
    images: list[Image]
    cost: list[CostRow] = field(default_factory=list)  # a LOCAL one's device time


@dataclass(frozen=True, slots=True)
class Queued:
    generation: Generation


@dataclass(frozen=True, slots=True)
class Progress:
    status: int
    fraction: float


@dataclass(frozen=True, slots=True)
class Done:
    generation: Generation


Event = Queued | Progress | Image | Done


@dataclass(frozen=True, slots=True)
class _Plan:
    """A recorded generation and what its task needs."""

    row: GenerationRow
    lora: ImageLoraRow
    token: str  # Replicate's key (REPLICATE only)
    grant: str | None
    request_id: str


class Failed(Exception):
    """The generation ends FAILED with this message (shown to the owner)."""


class Generations:
    def __init__(
        self,
        store: Store,
        storage: StorageClient,
        identity: ServiceIdentity | None,
        settings: TrainingSettings,
        loras: ImageLoras,
        spawn: Spawn,
        hub: Hub,
    ) -> None:
        self.store = store
        self.gens = GenerationStore(store)
        self.storage = storage
        self.identity = identity
        self.settings = settings
        self.loras = loras
        self.spawn = spawn
        self.hub = hub

    # -- GenerateImages -----------------------------------------------------------------
    async def generate(
        self,
        user: str,
        *,
        image_lora: str,
        prompt: str,
        scale: float | None,
        outputs: int,
        ratio: int,
        seed_: int | None,
    ) -> AsyncIterator[Event]:
        """Check and record the generation (errors are the call's), start its task (a
        worker claims a LOCAL one), then follow it: queued, progress, each image, done."""
        plan = await self._record(
            user,
            image_lora=image_lora,
            prompt=prompt,
            scale=scale,
            outputs=outputs,
            ratio=ratio,
            seed_=seed_,
        )
        if plan.row.executor == L.IMAGE_LORA_EXECUTOR_LOCAL:
            yield Queued(Generation(plan.row, []))
            async for followed in self._follow(plan.row.id):
                yield followed
            return
        events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.spawn(self._run(plan, events), f"generation-{plan.row.id}")
        yield Queued(Generation(plan.row, []))
        while (event := await events.get()) is not None:
            yield event

    async def _record(
        self,
        user: str,
        *,
        image_lora: str,
        prompt: str,
        scale: float | None,
        outputs: int,
        ratio: int,
        seed_: int | None,
    ) -> _Plan:
        lora_id = parse_uuid(image_lora, field="image_lora")
        text = prompt_text(prompt)
        scale = lora_scale(scale)
        outputs = num_outputs(outputs)
        ratio = aspect_ratio(ratio)
        seed_ = seed(seed_)
        lora = await self.loras.loras.get(user, lora_id)
        if lora is None:
            raise not_found("image LoRA", image_lora)
        ready(lora)
        token = ""
        if lora.executor == L.IMAGE_LORA_EXECUTOR_REPLICATE:
            token = await self.loras.replicate_token(user)  # PROVIDER_KEY_MISSING
        grant = await grant_now(self.identity)
        limit = self.settings.generation_max_active_per_user
        local = lora.executor == L.IMAGE_LORA_EXECUTOR_LOCAL
        hardware = ""
        if local:  # the workers of the class image LoRAs train on
            spec = catalogue.hardware_class(
                self.settings, self.settings.image_lora_hardware_class, "image_lora_hardware_class"
            )
            hardware = spec.name
            if not lora.simulated:  # device time is billed: the month must have room
                billing = Billing(self.store, self.settings)
                view = await billing.quota(self.store, user)
                billing.check(view, gpu=spec.is_gpu, what="generation")
        async with self.store.transaction() as tx:
            row = await self.gens.bound(tx).insert(
                user_id=user,
                image_lora_id=lora.id,
                prompt=with_trigger_word(text, lora.trigger_word),
                lora_scale=scale,
                num_outputs=outputs,
                aspect_ratio=ratio,
                seed=seed_,
                executor=lora.executor,
                simulated=lora.simulated,
                max_running=limit,
                running_for=self.running_for,
                hardware_class=hardware,
            )
            if row is not None and local and grant is not None:
                # The worker stores the images for the owner on this grant.
                await tx.put_grant(row.id, user, grant)
        if row is None:
            raise ResourceExhausted(
                f"you have {limit} generations running, the most allowed at once: wait for "
                "one to finish",
                reason=Reason.TOO_MANY_GENERATIONS,
                metadata={"limit": str(limit)},
            )
        return _Plan(row, lora, token, grant, ctx.request_id())

    @property
    def running_for(self) -> float:
        """How long a generation counts as running: its timeout and a margin; the sweep
        fails one still running after that (its process went away)."""
        return self.settings.generation_timeout_seconds + 60.0

    async def _run(self, plan: _Plan, events: asyncio.Queue[Event | None]) -> None:
        """The generation's task: run it, record each image and the end, tell the
        stream (if anyone still follows it)."""
        # A context of its own: the caller's deadline must not end the work, and calls to
        # storage act for the owner with the grant taken while the request was live.
        ctx.bind(
            caller=ctx.Caller(user_id=plan.row.user_id, role=ctx.ROLE_USER, grant=plan.grant),
            request_id=plan.request_id,
            method="generation",
            timeout=None,
        )
        gid = plan.row.id
        status, error = L.GENERATION_STATUS_SUCCEEDED, ""
        try:
            async with asyncio.timeout(self.settings.generation_timeout_seconds):
                if plan.lora.executor == L.IMAGE_LORA_EXECUTOR_REPLICATE:
                    await self._replicate(plan, events)
                else:
                    await self._simulate(plan, events)
        except Failed as exc:
            status, error = L.GENERATION_STATUS_FAILED, str(exc)
        except ServiceError as exc:  # the provider or storage refused or is down
            status, error = L.GENERATION_STATUS_FAILED, exc.message
        except TimeoutError:
            status = L.GENERATION_STATUS_FAILED
            error = (
                f"the generation did not end within {self.settings.generation_timeout_seconds:g} s"
            )
        except asyncio.CancelledError:  # the service stops: record why (if it still can)
            events.put_nowait(None)
            with contextlib.suppress(Exception):  # else the sweep fails it later
                await self.gens.finish(gid, L.GENERATION_STATUS_FAILED, "the service stopped")
            raise
        except Exception:
            log.exception("generation %s failed", gid)
            status, error = L.GENERATION_STATUS_FAILED, "the generation failed unexpectedly"
        try:
            await self.gens.finish(gid, status, error)
            events.put_nowait(Done(await self._view(await self._row(gid))))
        finally:
            events.put_nowait(None)

    async def _row(self, generation_id: uuid.UUID) -> GenerationRow:
        row = await self.gens.by_id(generation_id)
        assert row is not None  # generations are never deleted
        return row

    async def _replicate(self, plan: _Plan, events: asyncio.Queue[Event | None]) -> None:
        """A prediction on the LoRA's trained version, polled with a growing delay; its
        outputs stored as they appear (bounded downloads)."""
        row = plan.row
        client = Replicate(self.settings.replicate_api_url, plan.token)
        stored: set[int] = set()
        try:
            prediction = await client.create_prediction(
                version=plan.lora.remote_version,
                input={
                    "prompt": row.prompt,
                    "lora_scale": row.lora_scale,
                    "num_outputs": row.num_outputs,
                    "aspect_ratio": RATIOS[row.aspect_ratio][0],
                    "seed": row.seed,
                    "output_format": "png",
                },
            )
            pid = str(prediction["id"])
            await self.gens.processing(row.id, remote_id=pid)
            sent = -1.0
            delay = self.settings.generation_poll_seconds
            try:
                while True:
                    fraction = progress_of(str(prediction.get("logs") or ""))
                    if fraction - sent >= _PROGRESS_STEP or sent < 0:
                        sent = fraction
                        events.put_nowait(Progress(L.GENERATION_STATUS_PROCESSING, fraction))
                    status = prediction.get("status")
                    # Outputs of a finished prediction, or those a running one already has.
                    if status in ("succeeded", "processing"):
                        await self._store_outputs(plan, client, prediction, stored, events)
                    if status in _ENDED:
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, self.settings.generation_poll_max_seconds)
                    prediction = await client.get_prediction(pid)
            except (TimeoutError, asyncio.CancelledError):
                await _quietly(client.cancel_prediction(pid))
                raise
            if prediction.get("status") != "succeeded":
                why = prediction.get("error") or f"the prediction was {prediction.get('status')}"
                raise Failed(f"Replicate: {why}")
            if len(stored) < row.num_outputs:
                raise Failed(
                    f"Replicate returned {len(stored)} images of the {row.num_outputs} asked for"
                )
        finally:
            await client.close()

    async def _store_outputs(
        self,
        plan: _Plan,
        client: Replicate,
        prediction: dict[str, Any],
        stored: set[int],
        events: asyncio.Queue[Event | None],
    ) -> None:
        output = prediction.get("output") or []
        urls = [output] if isinstance(output, str) else list(output)
        for position, url in enumerate(urls[: plan.row.num_outputs]):
            if position in stored or not isinstance(url, str):
                continue
            data = await client.download(url, max_bytes=self.settings.generation_max_image_bytes)
            events.put_nowait(await self._store_image(plan, position, data))
            stored.add(position)

    async def _simulate(self, plan: _Plan, events: asyncio.Queue[Event | None]) -> None:
        """Placeholder images (image_pipeline.generate(simulate=True), Pillow only) in a
        thread; each stored as the thread hands it over."""
        row = plan.row
        long_side = self.settings.generation_local_long_side or SIMULATED_LONG_SIDE
        width, height = pixel_size(row.aspect_ratio, long_side)
        await self.gens.processing(row.id)
        events.put_nowait(Progress(L.GENERATION_STATUS_PROCESSING, 0.0))
        drawing, landed = draw_in_thread(
            row, weights=None, width=width, height=height, settings=self.settings
        )
        count = 0
        while (item := await landed.get()) is not None:
            if isinstance(item, float):
                continue  # placeholders: progress is counted in images
            position, png = item
            events.put_nowait(await self._store_image(plan, position, png))
            count += 1
            events.put_nowait(Progress(L.GENERATION_STATUS_PROCESSING, count / row.num_outputs))
        try:
            await drawing
        except Exception as exc:
            log.warning("placeholder images of generation %s failed: %s", row.id, exc)
            raise Failed(f"the placeholder images failed: {str(exc)[:300]}") from None
        if count < row.num_outputs:
            raise Failed(f"{count} images were drawn of the {row.num_outputs} asked for")

    async def _follow(self, generation_id: uuid.UUID) -> AsyncIterator[Event]:
        """A LOCAL generation as its worker writes it: progress when the status changes or
        the fraction moves, each image once, done at the end. Woken by NOTIFY, else polls;
        while nothing changes it repeats the status every watch heartbeat (a QUEUED one
        waiting for a worker: the client knows it still waits)."""
        sent: set[int] = set()
        status: int = L.GENERATION_STATUS_QUEUED
        fraction = 0.0
        beat = Beat(self.settings.training_watch_heartbeat_seconds)
        with self.hub.subscribe(GENERATIONS_CHANNEL, str(generation_id)) as woken:
            while True:
                row = await self._row(generation_id)
                ended = row.status in _ENDED_STATUSES
                moved = row.status != status or abs(row.progress - fraction) >= _PROGRESS_STEP
                if moved and not ended:
                    status, fraction = row.status, row.progress
                    yield Progress(status, min(fraction, 1.0))
                    beat.sent()
                images = (await self.gens.images([generation_id]))[generation_id]
                for image in images:  # read after the row: an ended one's are all there
                    if image.position not in sent:
                        sent.add(image.position)
                        yield await self._image(image)
                        beat.sent()
                if ended:
                    cost = (await self.store.generation_costs([row.id]))[row.id]
                    yield Done(Generation(row, [await self._image(i) for i in images], cost))
                    return
                if await beat.wait(woken):
                    yield Progress(status, min(fraction, 1.0))

    async def _store_image(self, plan: _Plan, position: int, data: bytes) -> Image:
        """Store one image in the owner's `images` bucket and record it."""
        file_id, header = await upload_image(self.storage, plan.row, position, data)
        row = await self.gens.add_image(
            plan.row.id,
            position=position,
            file_id=file_id,
            width=header.width,
            height=header.height,
            size_bytes=len(data),
        )
        return await self._image(row)

    async def _image(self, row: GenerationImageRow) -> Image:
        """With a fresh signed URL (none when the file is gone from storage)."""
        try:
            url, expire = await self.storage.download_url(
                row.file_id, self.settings.generation_url_ttl_seconds
            )
        except NotFound:
            return Image(row, "", None)
        return Image(row, url, expire)

    async def _view(self, row: GenerationRow) -> Generation:
        images = (await self.gens.images([row.id]))[row.id]
        cost = (await self.store.generation_costs([row.id]))[row.id]
        return Generation(row, [await self._image(i) for i in images], cost)

    # -- GetGeneration / ListGenerations ------------------------------------------------
    async def get(self, user: str, raw_id: str) -> Generation:
        row = await self.gens.get(user, parse_uuid(raw_id, field="id"))
        if row is None:
            raise not_found("generation", raw_id)
        return await self._view(row)

    async def list(
        self, user: str, image_lora: str, page: pages.PageRequest
    ) -> tuple[list[Generation], str]:
        lora_id = None
        if image_lora:
            lora_id = parse_uuid(image_lora, field="image_lora")
            if await self.loras.loras.get(user, lora_id) is None:
                raise not_found("image LoRA", image_lora)
        rows, token = await self.gens.list_generations(user, lora_id, page)
        images = await self.gens.images([r.id for r in rows])
        costs = await self.store.generation_costs([r.id for r in rows])
        out = [
            Generation(r, [await self._image(i) for i in images[r.id]], costs[r.id]) for r in rows
        ]
        return out, token


def ready(lora: ImageLoraRow) -> None:
    """READY, with what its executor generates from (a trained version, weights)."""
    usable = lora.status == L.IMAGE_LORA_STATUS_READY and (
        (lora.executor == L.IMAGE_LORA_EXECUTOR_REPLICATE and bool(lora.remote_version))
        or (lora.executor == L.IMAGE_LORA_EXECUTOR_LOCAL and bool(lora.weights_file_id))
        or lora.executor == L.IMAGE_LORA_EXECUTOR_SIMULATE
    )
    if not usable:
        status = L.ImageLoraStatus.Name(lora.status).removeprefix("IMAGE_LORA_STATUS_")  # type: ignore[arg-type]
        raise FailedPrecondition(
            f"the image LoRA is {status}: generate once its training has finished (READY)",
            field="image_lora",
            reason=Reason.IMAGE_LORA_NOT_READY,
            metadata={"status": status},
        )


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    """Best effort (a cancel on the way out): a failure is logged, never raised."""
    try:
        await coro
    except Exception as exc:
        log.warning("best-effort provider call failed: %s", exc)
