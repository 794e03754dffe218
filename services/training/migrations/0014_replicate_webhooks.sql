-- Remote image-LoRA training on Replicate (issue 17, image_trainer.py / image_webhooks.py).
-- Webhook ids already applied: a delivery Replicate retries, or one replayed within the
-- signature's time tolerance, is recorded once, in the same transaction as the change it
-- made, and skipped after.
CREATE TABLE replicate_webhooks (
    webhook_id text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX replicate_webhooks_received ON replicate_webhooks (received_at);

-- The provider was down or refused for a while: when a QUEUED LoRA may be tried again,
-- and how many tries in a row failed (the backoff doubles with each).
ALTER TABLE image_loras
    ADD COLUMN remote_retry_at timestamptz,
    ADD COLUMN remote_failures integer NOT NULL DEFAULT 0;
-- Webhooks name the provider's training id.
CREATE INDEX image_loras_remote_id ON image_loras (remote_id) WHERE remote_id <> '';
