-- Image LoRAs (seed 001): a style, character or product taught to an image model from the
-- owner's reference images. Soft-deleted; a trigger word is unique per owner among the
-- LoRAs not deleted, ignoring case, so prompts name exactly one of them.
CREATE TABLE image_loras (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    kind smallint NOT NULL,
    trigger_word text NOT NULL,
    status smallint NOT NULL,
    error text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    deleted_at timestamptz
);
CREATE INDEX image_loras_user_newest ON image_loras (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX image_loras_trigger_word ON image_loras (user_id, lower(trigger_word))
    WHERE deleted_at IS NULL;

-- Reference images: storage files of the owner, with what was read from their bytes. The
-- same bytes (sha256) are in a LoRA once.
CREATE TABLE image_lora_images (
    id uuid PRIMARY KEY,
    image_lora_id uuid NOT NULL REFERENCES image_loras (id),
    file_id text NOT NULL,
    caption text NOT NULL DEFAULT '',
    format smallint NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    size_bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (image_lora_id, sha256)
);
CREATE INDEX image_lora_images_lora ON image_lora_images (image_lora_id, created_at, id);
