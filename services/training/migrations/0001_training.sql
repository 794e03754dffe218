-- Training: datasets, jobs (the queue), their events, metrics, checkpoints, models, costs,
-- notifications and clones. Enum columns hold the proto enum numbers.
CREATE TABLE datasets (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    file_id text NOT NULL,
    size_bytes bigint NOT NULL DEFAULT 0,
    format smallint NOT NULL DEFAULT 0,
    status smallint NOT NULL,
    base_model text NOT NULL,
    max_seq_length integer NOT NULL,
    errors jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_count integer NOT NULL DEFAULT 0,
    stats jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz
);
CREATE INDEX datasets_user_newest ON datasets (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE clones (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    persona_prompt text NOT NULL DEFAULT '',
    base_model text NOT NULL,
    active_model_id uuid,
    knowledge_base_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz
);
CREATE INDEX clones_user_newest ON clones (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE training_jobs (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    dataset_id uuid NOT NULL REFERENCES datasets (id),
    base_model text NOT NULL,
    method smallint NOT NULL,
    hyperparameters jsonb NOT NULL,
    executor smallint NOT NULL,
    clone_id uuid REFERENCES clones (id),
    status smallint NOT NULL,
    attempt integer NOT NULL DEFAULT 1,
    total_steps bigint NOT NULL DEFAULT 0,
    steps_per_epoch bigint NOT NULL DEFAULT 0,
    steps_done bigint NOT NULL DEFAULT 0,
    epoch double precision NOT NULL DEFAULT 0,
    loss double precision NOT NULL DEFAULT 0,
    eval_loss double precision,
    tokens_per_second double precision NOT NULL DEFAULT 0,
    eta_seconds bigint NOT NULL DEFAULT 0,
    error jsonb,
    model_id uuid,
    -- Queue and lease.
    worker_id text NOT NULL DEFAULT '',
    claim_token uuid,
    lease_expires_at timestamptz,
    worker_losses integer NOT NULL DEFAULT 0,
    queued_at timestamptz,
    -- Events: the last sequence given out.
    last_seq bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    start_time timestamptz,
    end_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz
);
CREATE INDEX training_jobs_user_newest ON training_jobs (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
-- The queue: QUEUED jobs oldest first; RUNNING jobs by lease expiry for the reaper.
CREATE INDEX training_jobs_queue ON training_jobs (queued_at) WHERE status = 2;
CREATE INDEX training_jobs_leases ON training_jobs (lease_expires_at) WHERE status = 3;
CREATE INDEX training_jobs_clone ON training_jobs (clone_id, created_at DESC);

-- Stored job events (JobEvent protos), sequence 1, 2, 3, ... per job.
CREATE TABLE job_events (
    job_id uuid NOT NULL REFERENCES training_jobs (id),
    seq bigint NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE metrics_points (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES training_jobs (id),
    attempt integer NOT NULL,
    step bigint NOT NULL,
    epoch double precision NOT NULL,
    loss double precision NOT NULL,
    learning_rate double precision NOT NULL,
    grad_norm double precision NOT NULL,
    tokens_per_second double precision NOT NULL,
    eval_loss double precision,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX metrics_points_job ON metrics_points (job_id, id);

CREATE TABLE checkpoints (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES training_jobs (id),
    attempt integer NOT NULL,
    step bigint NOT NULL,
    epoch double precision NOT NULL,
    loss double precision NOT NULL,
    eval_loss double precision,
    size_bytes bigint NOT NULL,
    storage_path text NOT NULL,
    file_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX checkpoints_job ON checkpoints (job_id, created_at, id);

CREATE TABLE model_artifacts (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    job_id uuid NOT NULL REFERENCES training_jobs (id),
    clone_id uuid,
    base_model text NOT NULL,
    method smallint NOT NULL,
    kind smallint NOT NULL,
    files jsonb NOT NULL,
    size_bytes bigint NOT NULL,
    steps bigint NOT NULL,
    final_loss double precision NOT NULL,
    final_eval_loss double precision,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX model_artifacts_user_newest ON model_artifacts (user_id, created_at DESC, id DESC);

-- Device time per claim of a job by a worker; updated at every heartbeat.
CREATE TABLE cost_records (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES training_jobs (id),
    attempt integer NOT NULL,
    worker_id text NOT NULL,
    device_type text NOT NULL,
    hourly_rate_micros bigint NOT NULL,
    device_seconds double precision NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX cost_records_job ON cost_records (job_id, id);

CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    kind smallint NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    job_id text NOT NULL DEFAULT '',
    dataset_id text NOT NULL DEFAULT '',
    model_id text NOT NULL DEFAULT '',
    read boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX notifications_user_newest ON notifications (user_id, created_at DESC, id DESC);
