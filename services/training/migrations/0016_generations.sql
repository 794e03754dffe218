-- Generations with image LoRAs (issue 17): one row per GenerateImages call, with the
-- prompt as it ran, the seed used and where it stands; its images are storage files of
-- the owner (`images` bucket), recorded as each one lands.
CREATE TABLE generations (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    image_lora_id uuid NOT NULL REFERENCES image_loras (id),
    prompt text NOT NULL,
    lora_scale double precision NOT NULL,
    num_outputs smallint NOT NULL,
    aspect_ratio smallint NOT NULL,
    seed bigint NOT NULL,
    status smallint NOT NULL,
    error text NOT NULL DEFAULT '',
    executor smallint NOT NULL,
    simulated boolean NOT NULL DEFAULT false,
    -- Replicate: the prediction's id (cancelled when the generation times out).
    remote_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
CREATE INDEX generations_user_newest ON generations (user_id, created_at DESC, id DESC);
CREATE INDEX generations_lora_newest ON generations (image_lora_id, created_at DESC, id DESC);
-- The per-user limit on running generations and the sweep of abandoned ones.
CREATE INDEX generations_running ON generations (user_id, created_at) WHERE status IN (1, 2);

CREATE TABLE generation_images (
    generation_id uuid NOT NULL REFERENCES generations (id),
    position smallint NOT NULL,
    file_id text NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (generation_id, position)
);

-- A REPLICATE training cancelled here whose cancel the provider has not confirmed yet:
-- the sweep (image_retention.py) sends it again until it does.
ALTER TABLE image_loras ADD COLUMN cancel_pending boolean NOT NULL DEFAULT false;
-- Deleted LoRAs whose files are still kept, for the retention sweep.
CREATE INDEX image_loras_to_purge ON image_loras (deleted_at)
    WHERE deleted_at IS NOT NULL AND purged_at IS NULL;
