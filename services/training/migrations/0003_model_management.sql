-- Model management: soft-deleted models (files purged after retention), promoted
-- checkpoints, simulated artifacts, continuing from a model, retries that start over.
ALTER TABLE model_artifacts ADD COLUMN simulated boolean NOT NULL DEFAULT false;
ALTER TABLE model_artifacts ADD COLUMN checkpoint_id uuid;
ALTER TABLE model_artifacts ADD COLUMN deleted_at timestamptz;
ALTER TABLE model_artifacts ADD COLUMN purged_at timestamptz;
UPDATE model_artifacts m SET simulated = true
    FROM training_jobs j WHERE j.id = m.job_id AND j.executor = 2;
CREATE INDEX model_artifacts_purge ON model_artifacts (deleted_at)
    WHERE deleted_at IS NOT NULL AND purged_at IS NULL;

ALTER TABLE training_jobs ADD COLUMN init_model_id uuid REFERENCES model_artifacts (id);
-- Checkpoints of attempts before this one are not resumed from (a retry that changed the
-- hyperparameters starts over).
ALTER TABLE training_jobs ADD COLUMN resume_from_attempt integer NOT NULL DEFAULT 1;

ALTER TABLE notifications ADD COLUMN clone_id text NOT NULL DEFAULT '';
