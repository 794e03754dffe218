-- Hardware classes, simulated (never billed) device time and per-user quotas.
ALTER TABLE training_jobs ADD COLUMN hardware_class text NOT NULL DEFAULT '';
-- A claim of a simulated job records its time at rate 0 and counts against no quota.
ALTER TABLE cost_records ADD COLUMN simulated boolean NOT NULL DEFAULT false;
ALTER TABLE cost_records ADD COLUMN hardware_class text NOT NULL DEFAULT '';
ALTER TABLE cost_records ADD COLUMN user_id text NOT NULL DEFAULT '';
UPDATE cost_records c SET user_id = j.user_id FROM training_jobs j WHERE j.id = c.job_id;
CREATE INDEX cost_records_user_month ON cost_records (user_id, started_at DESC);

-- An admin's per-user limits; NULL keeps the server default.
CREATE TABLE user_quotas (
    user_id text PRIMARY KEY,
    max_active_jobs integer,
    gpu_hours_per_month double precision,
    monthly_budget_micros bigint,
    updated_by text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
