-- Grants (services.auth.delegation): a mesh service's standing permission to act for a
-- user in work that outlives the user's access token (a training job). Opaque tokens,
-- stored as HMACs like refresh tokens; `holder` is the only service that may redeem one,
-- and one taken at an older session epoch than the user's current one is void.
CREATE TABLE grants (
    id uuid PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX grants_expires_at ON grants (expires_at);
