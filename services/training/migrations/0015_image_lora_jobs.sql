-- Image LoRAs trained on the mesh's workers (issue 17: LOCAL and SIMULATE executors) run as
-- jobs of the training queue. A job trains either a text adapter on a dataset or an image
-- LoRA on its reference images: exactly one of the two is set.
ALTER TABLE training_jobs ALTER COLUMN dataset_id DROP NOT NULL;
ALTER TABLE training_jobs ADD COLUMN image_lora_id uuid REFERENCES image_loras (id);
ALTER TABLE training_jobs ADD CONSTRAINT training_jobs_one_subject
    CHECK ((dataset_id IS NULL) <> (image_lora_id IS NULL));
CREATE INDEX training_jobs_image_lora ON training_jobs (image_lora_id, created_at DESC)
    WHERE image_lora_id IS NOT NULL;
