-- A remote training about to be created (image_trainer.py): the uploaded images' URL (its
-- `input_images`, unique to this create) and the LoRA's attempt, written before the create
-- call. A claim that comes back to an attempt with one recorded (the trainer died or lost
-- the answer after Replicate created it) looks for that training and adopts it instead of
-- paying for a second one.
ALTER TABLE image_loras
    ADD COLUMN remote_intent text NOT NULL DEFAULT '',
    ADD COLUMN remote_intent_attempt integer NOT NULL DEFAULT 0,
    ADD COLUMN remote_intent_at timestamptz;
