-- LOCAL generations run on the training workers (generation_worker.py), claimed from this
-- table as jobs are from theirs: the hardware class they queue for, when they (re)entered
-- the queue, the claim (worker, token, a lease its heartbeat renews), how often a worker
-- was lost while running one, and how far the pipeline got (0–1).
ALTER TABLE generations
    ADD COLUMN hardware_class text NOT NULL DEFAULT '',
    ADD COLUMN queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN worker_id text NOT NULL DEFAULT '',
    ADD COLUMN claim_token uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN worker_losses integer NOT NULL DEFAULT 0,
    ADD COLUMN progress double precision NOT NULL DEFAULT 0;
-- The workers' queue: QUEUED (1) LOCAL (2) generations, oldest first.
CREATE INDEX generations_local_queue ON generations (created_at, id)
    WHERE status = 1 AND executor = 2;
-- Claimed generations, for the reap of expired leases.
CREATE INDEX generations_leases ON generations (lease_expires_at)
    WHERE status = 2 AND claim_token IS NOT NULL;
