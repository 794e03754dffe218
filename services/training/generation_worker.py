"""LOCAL generations on the training workers: the diffusers pipeline with an image LoRA's
weights needs the GPU the LoRA trained on, so a generation runs where LOCAL training runs
(the training API only records it and follows its row, generations.py).

How one worker shares itself between jobs and generations: it runs one thing at a time.
A worker that is idle (no job running) looks first for a QUEUED LOCAL generation of its
hardware classes (`training_worker_hardware_classes`; a generation queues for the class
image LoRA jobs use, `image_lora_hardware_class` or the default), then for a job. A
generation is seconds long and its user waits on the stream; a job runs for minutes to
hours and nobody waits on a single step, so generations go first, and the per-user limit
(`generation_max_active_per_user`) bounds how much they can hold jobs back. A worker
never takes a generation while it trains (the device's memory holds one model at a time):
on a busy pool a generation waits QUEUED for the next worker to come free, and fails
after `generation_queue_timeout_seconds` (the service's sweep).

A generation is claimed as a job is: a row lock that skips rows other workers are
claiming, a claim token and a lease (`training_lease_seconds`) the heartbeat renews every
`training_heartbeat_seconds`. A worker that dies leaves the lease to expire: the next
worker (or the service's sweep) puts the generation back in the queue, or fails it once
its workers were lost more than `generation_max_worker_losses` times. Every write names
the claim token, so a worker that lost its claim writes nothing more. Images are stored
in the owner's `images` bucket as they land, on the grant GenerateImages stored under the
generation's id (taken from the user's live request, dropped when the generation ends;
the LoRA's grant from StartTraining when there is none); a generation claimed again
skips the positions already stored (image i depends only on seed + i). The run stops at
the next denoising step when the claim is lost, the generation runs past
`generation_timeout_seconds` (FAILED) or the worker shuts down (SIGTERM: straight back to
QUEUED, no loss counted).

Each claim is billed as a job's claim is: a cost record (this worker's device type, the
hourly rate of the generation's hardware class on it, else the device's) opened with the
claim, brought up to date at each heartbeat and once more in the transaction that ends
or requeues it. It counts in the owner's monthly usage and costs; a simulated LoRA's is
kept at rate 0 and never billed.

Between generations the base pipeline stays loaded with the last LoRA in it
(image_pipeline's process cache), and the LoRA's weights stay in memory: the next
generation with the same LoRA downloads, checks and loads nothing. The pipeline is
released before the worker starts a job (the job loads its own model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aivera.training.v1 import image_loras_pb2
from services.common import context as ctx
from services.common.errors import FailedPrecondition, NotFound, ServiceError
from services.training import image_pipeline
from services.training.generation_store import GenerationRow, GenerationStore
from services.training.generations import (
    Failed,
    draw_in_thread,
    native_side,
    pixel_size,
    reap_lost,
    upload_image,
)
from services.training.image_lora_store import ImageLoraStore
from services.training.worker_http import BUSY

if TYPE_CHECKING:
    from services.training.worker import Worker

L = image_loras_pb2
log = logging.getLogger("aivera.training.generation_worker")
# Progress is written to the row when it moved at least this much.
PROGRESS_STEP = 0.05


class _Stop(Exception):
    """Raised in the pipeline's thread at a step boundary: the run must stop."""


@dataclass
class GenerationClaim:
    """This worker's hold on one generation."""

    row: GenerationRow
    token: uuid.UUID
    cost_id: int  # the cost record billed while it runs (device time, as a job's)
    stop: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # no longer ours: reaped, failed by the sweep
    timed_out: bool = False
    started: float = field(default_factory=time.monotonic)


class GenerationRunner:
    """The generation side of one worker (worker.py calls claim / run between jobs)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.store = worker.store
        self.gens = GenerationStore(worker.store)
        # The last LoRA weights read: (file id, bytes). A file's bytes never change.
        self._weights: tuple[str, bytes] | None = None

    async def reap(self) -> int:
        return await reap_lost(self.store, self.settings.generation_max_worker_losses)

    async def claim(self) -> GenerationClaim | None:
        token = uuid.uuid4()
        async with self.store.transaction() as tx:
            gens = GenerationStore(tx)
            row = await gens.next_local(self.settings.training_worker_hardware_classes)
            if row is None:
                return None
            row = await gens.claim(
                row.id,
                worker_id=self.worker.worker_id,
                token=token,
                lease=self.settings.training_lease_seconds,
            )
            cost_id = await tx.open_generation_cost(
                generation_id=row.id,
                user_id=row.user_id,
                worker_id=self.worker.worker_id,
                device_type=self.worker.device,
                rate=self.worker.rate_of_class(row.hardware_class),
                hardware_class=row.hardware_class,
                simulated=row.simulated,
            )
        return GenerationClaim(row, token, cost_id)

    # -- one generation -----------------------------------------------------------------
    async def run(self, claim: GenerationClaim) -> None:
        row = claim.row
        log.info("claimed generation %s", row.id)
        beat = asyncio.create_task(self._heartbeat(claim))
        self.worker.running_generation = str(row.id)
        BUSY.set(1)
        status, error = L.GENERATION_STATUS_SUCCEEDED, ""
        finished = True
        try:
            # The grant GenerateImages stored with it; else the LoRA's (StartTraining's).
            grant = await self.store.grant_of(row.id) or await self.store.grant_of(
                row.image_lora_id
            )
            with ctx.acting_for(row.user_id, grant=grant):
                finished = await self._generate(claim)
        except Failed as exc:
            status, error = L.GENERATION_STATUS_FAILED, str(exc)
        except ServiceError as exc:  # storage refused or is down
            status, error = L.GENERATION_STATUS_FAILED, exc.message
        except Exception:
            log.exception("generation %s failed", row.id)
            status, error = L.GENERATION_STATUS_FAILED, "the generation failed unexpectedly"
        finally:
            claim.stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self.worker.running_generation = None
            BUSY.set(0)
        try:
            if finished:
                await self._finish(claim, status, error)
            elif claim.timed_out:
                timeout = self.settings.generation_timeout_seconds
                await self._finish(
                    claim,
                    L.GENERATION_STATUS_FAILED,
                    f"the generation did not end within {timeout:g} s",
                )
            elif not claim.lost:  # shutting down: another worker takes it
                async with self.store.transaction() as tx:
                    await tx.bill_generation(claim.cost_id, claim.token)
                    await GenerationStore(tx).requeue_claimed(row.id, claim.token)
        except Exception as exc:  # Postgres down: the lease expires, a worker redoes it
            log.warning("could not record the end of generation %s: %s", row.id, exc)

    async def _finish(self, claim: GenerationClaim, status: int, error: str) -> None:
        async with self.store.transaction() as tx:
            # Billed last while it is still this claim's: the cost it keeps.
            await tx.bill_generation(claim.cost_id, claim.token)
            await GenerationStore(tx).finish_claimed(claim.row.id, claim.token, status, error)

    async def _heartbeat(self, claim: GenerationClaim) -> None:
        """Renew the lease; stop the run when the claim is lost, the generation ran past
        its timeout or the worker shuts down."""
        every = self.settings.training_heartbeat_seconds
        while not claim.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.shutdown.wait(), every)
            if self.worker.shutdown.is_set():
                claim.stop.set()
                return
            if time.monotonic() - claim.started > self.settings.generation_timeout_seconds:
                claim.timed_out = True
                claim.stop.set()
                return
            try:
                ok = await self.gens.renew(
                    claim.row.id, claim.token, self.settings.training_lease_seconds
                )
                await self.store.bill_generation(claim.cost_id, claim.token)
            except Exception as exc:  # a Postgres blip: the lease may survive it
                log.warning("generation heartbeat failed: %s", exc)
                continue
            self.worker._reached_queue()
            if not ok:
                log.info("generation %s is no longer ours", claim.row.id)
                claim.lost = True
                claim.stop.set()
                return

    async def _weights_of(self, file_id: str) -> bytes:
        if self._weights is not None and self._weights[0] == file_id:
            return self._weights[1]
        try:
            blob = await self.worker.storage.download(file_id)
        except (NotFound, FailedPrecondition):
            raise Failed("the image LoRA's weights are gone from storage") from None
        self._weights = (file_id, blob)
        return blob

    async def _generate(self, claim: GenerationClaim) -> bool:
        """Run the pipeline and store its images; True when every image is stored, False
        when the run stopped early (lost, timed out, shutting down). Failed when it
        cannot be done."""
        row = claim.row
        lora = await ImageLoraStore(self.store).get(row.user_id, row.image_lora_id)
        if lora is None:
            raise Failed("the image LoRA was deleted")
        if not lora.weights_file_id:
            raise Failed("the image LoRA has no trained weights")
        weights = await self._weights_of(lora.weights_file_id)
        long_side = self.settings.generation_local_long_side or await asyncio.to_thread(
            native_side, self.settings
        )
        width, height = pixel_size(row.aspect_ratio, long_side)
        stored = {i.position for i in (await self.gens.images([row.id]))[row.id]}
        if len(stored) >= row.num_outputs:  # a worker stored them all, then was lost
            return True

        def check() -> None:
            if claim.stop.is_set():
                raise _Stop()

        drawing, landed = draw_in_thread(
            row, weights=weights, width=width, height=height, settings=self.settings, check=check
        )
        try:
            sent = 0.0
            while (item := await landed.get()) is not None:
                if isinstance(item, float):
                    if item - sent >= PROGRESS_STEP and not claim.stop.is_set():
                        sent = item
                        await self._progress(claim, min(item, 1.0))
                    continue
                position, png = item
                if position not in stored and not claim.stop.is_set():
                    await self._store(claim, position, png)
                    stored.add(position)
        except BaseException:
            claim.stop.set()  # the thread stops at its next step; wait for it
            with contextlib.suppress(BaseException):
                await asyncio.shield(drawing)
            raise
        try:
            await drawing
        except _Stop:
            return False
        except image_pipeline.WeightsMismatch as exc:
            raise Failed(f"the image LoRA's weights do not fit the base pipeline: {exc}") from None
        except image_pipeline.PipelineNotFound as exc:
            raise Failed(str(exc)) from None
        except Exception as exc:
            from services.training.worker import out_of_memory  # worker imports this module

            if out_of_memory(exc):
                raise Failed("the device ran out of memory: ask for fewer images") from None
            log.warning("image pipeline of generation %s failed: %s", row.id, exc)
            raise Failed(f"the image pipeline failed: {str(exc)[:300]}") from None
        if claim.lost:
            return False
        if len(stored) < row.num_outputs:
            if claim.stop.is_set():
                return False
            raise Failed(f"the pipeline made {len(stored)} images of the {row.num_outputs}")
        return True

    async def _progress(self, claim: GenerationClaim, fraction: float) -> None:
        if not await self.gens.set_progress(claim.row.id, claim.token, fraction):
            claim.lost = True
            claim.stop.set()

    async def _store(self, claim: GenerationClaim, position: int, png: bytes) -> None:
        """Upload one image for the owner and record it while the claim is ours (else
        the file is nobody's: deleted again)."""
        row = claim.row
        file_id, header = await upload_image(self.worker.storage, row, position, png)
        async with self.store.transaction() as tx:
            ours = await GenerationStore(tx).add_claimed_image(
                row.id,
                claim.token,
                position=position,
                file_id=file_id,
                width=header.width,
                height=header.height,
                size_bytes=len(png),
            )
        if not ours:
            claim.lost = True
            claim.stop.set()
            try:
                await self.worker.storage.delete_file(file_id)
            except ServiceError as exc:
                log.warning("could not delete the unused image %s: %s", file_id, exc)


__all__ = ["GenerationClaim", "GenerationRunner"]
