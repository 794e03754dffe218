"""The image LoRA sweep, run every `image_lora_sweep_seconds` by the training service:

- a deleted LoRA's files leave storage once `image_lora_retention_seconds` have passed
  (its reference images, its weights and the images generated with it), through the same
  purge as deleted models (artifacts.Models.purge_file: StorageInternalService.PurgeFile,
  training's own right); then `purged_at` is set and its grant dropped;
- a REPLICATE training cancelled here whose cancel the provider did not confirm (it was
  down) is cancelled there again, until it confirms;
- a generation still running long after its timeout (its process went away) is failed,
  so it no longer counts against its owner's limit; a LOCAL one whose worker's lease
  expired goes back to the queue (or fails after `generation_max_worker_losses`) even
  when no worker is left to reap it, and one no worker took within
  `generation_queue_timeout_seconds` fails."""

from __future__ import annotations

import asyncio
import logging

from services.training import generations
from services.training.artifacts import Models
from services.training.config import TrainingSettings
from services.training.generation_store import GenerationStore
from services.training.image_loras import ImageLoras
from services.training.store import Store

log = logging.getLogger("aivera.training.image_retention")


class ImageSweep:
    def __init__(
        self,
        store: Store,
        settings: TrainingSettings,
        loras: ImageLoras,
        models: Models,
        abandoned_after: float,
    ) -> None:
        self.store = store
        self.settings = settings
        self.loras = loras
        self.models = models
        self.gens = GenerationStore(store)
        self.abandoned_after = abandoned_after

    async def purge_once(self) -> int:
        """Purge the files of LoRAs deleted longer than the retention ago; how many LoRAs
        were purged. A file already gone counts as purged."""
        rows = await self.loras.loras.to_purge(self.settings.image_lora_retention_seconds)
        for row in rows:
            images = (await self.loras.loras.images([row.id]))[row.id]
            files = [i.file_id for i in images] + await self.gens.files_of_lora(row.id)
            if row.weights_file_id:
                files.append(row.weights_file_id)
            for file_id in dict.fromkeys(files):
                await self.models.purge_file(file_id, row.user_id, row.id)
            await self.loras.loras.mark_purged(row.id)
            await self.store.drop_grant(row.id)
            log.info("purged the files of deleted image LoRA %s", row.id)
        return len(rows)

    async def cancel_pending(self) -> int:
        """Send again the cancels the provider did not confirm; how many it confirmed."""
        confirmed = 0
        for row in await self.loras.loras.cancels_pending():
            # For the owner, on the training's grant (image_trainer.cancel_remote).
            confirmed += await self.loras.cancel_remote(row)
        return confirmed

    async def fail_abandoned(self) -> int:
        return await self.gens.fail_abandoned(
            self.abandoned_after, "the generation was interrupted (the service restarted)"
        )

    async def reap_local(self) -> int:
        """LOCAL generations: lost workers' back to the queue (or failed), then those
        waiting longer than the queue timeout failed."""
        reaped = await generations.reap_lost(self.store, self.settings.generation_max_worker_losses)
        timeout = self.settings.generation_queue_timeout_seconds
        failed = await self.gens.fail_unclaimed(
            timeout, f"no worker took the generation within {timeout:g} s"
        )
        return reaped + failed

    async def once(self) -> None:
        steps = (self.purge_once, self.cancel_pending, self.fail_abandoned, self.reap_local)
        for step in steps:
            try:
                await step()
            except Exception as exc:  # storage, provider or Postgres down: next round
                log.warning("image LoRA sweep (%s) failed: %s", step.__name__, exc)

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self.settings.image_lora_sweep_seconds)
