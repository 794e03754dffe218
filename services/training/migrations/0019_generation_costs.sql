-- LOCAL generations hold a training worker's device too (generation_worker.py): each claim
-- of one is a cost record like a job's claim, billed while it runs and counted in the
-- owner's monthly usage and costs. A record is of a job or of a generation.
ALTER TABLE cost_records
    ALTER COLUMN job_id DROP NOT NULL,
    ADD COLUMN generation_id uuid REFERENCES generations (id),
    ADD CONSTRAINT cost_records_of_one CHECK ((job_id IS NULL) <> (generation_id IS NULL));
CREATE INDEX cost_records_generation ON cost_records (generation_id, id)
    WHERE generation_id IS NOT NULL;
