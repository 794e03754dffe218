-- Outbound webhooks: endpoints with sealed signing secrets, an outbox of deliveries (one
-- per notification and matching webhook, written with the notification) and the log of
-- every attempt.
CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    url text NOT NULL,
    description text NOT NULL DEFAULT '',
    event_kinds smallint[] NOT NULL DEFAULT '{}',
    secret bytea NOT NULL,                 -- AES-GCM sealed, the webhook id as associated data
    previous_secret bytea,                 -- still signs beside the new one until it expires
    previous_expires_at timestamptz,
    secret_hint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz
);
CREATE INDEX webhooks_user_newest ON webhooks (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks (id),
    user_id text NOT NULL,
    notification_id uuid NOT NULL,
    event_type text NOT NULL,
    body text NOT NULL,                    -- the exact bytes every attempt sends
    status smallint NOT NULL,
    next_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 1;
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id bigserial PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id),
    response_code integer NOT NULL,
    error text NOT NULL DEFAULT '',
    duration_ms bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
