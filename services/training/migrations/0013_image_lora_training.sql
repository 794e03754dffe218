-- Training of image LoRAs (issue 17): who trains it, how far it got, where the weights
-- are. REPLICATE trainings keep the provider's training id and the model version to
-- generate with; LOCAL and SIMULATE trainings are training jobs on the mesh's workers
-- (training_jobs.image_lora_id, added with the job side).
ALTER TABLE image_loras
    ADD COLUMN executor smallint NOT NULL DEFAULT 0,
    ADD COLUMN simulated boolean NOT NULL DEFAULT false,
    ADD COLUMN progress double precision NOT NULL DEFAULT 0,
    ADD COLUMN job_id uuid,
    ADD COLUMN attempt integer NOT NULL DEFAULT 0,
    ADD COLUMN training_steps integer NOT NULL DEFAULT 0,
    -- Replicate: the training's id, and once it succeeded the version to run.
    ADD COLUMN remote_id text NOT NULL DEFAULT '',
    ADD COLUMN remote_version text NOT NULL DEFAULT '',
    -- The trained weights, a storage file of the owner (`lora-models` bucket).
    ADD COLUMN weights_file_id text NOT NULL DEFAULT '',
    ADD COLUMN weights_size_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN weights_sha256 text NOT NULL DEFAULT '',
    -- When the status was last confirmed with the provider (webhook or poll).
    ADD COLUMN checked_at timestamptz,
    -- When a deleted LoRA's images and weights were removed from storage.
    ADD COLUMN purged_at timestamptz;
-- The trainer's queues: LoRAs waiting for a remote trainer, or in training remotely.
CREATE INDEX image_loras_active ON image_loras (status, updated_at)
    WHERE status IN (2, 3, 4) AND deleted_at IS NULL;
