-- A per-user session epoch, carried in every access token as `sep`: ending a user's
-- sessions (static token rotated, user disabled, sessions revoked, signed out everywhere)
-- bumps it, and every service refuses tokens below the user's current epoch.
ALTER TABLE users ADD COLUMN session_epoch bigint NOT NULL DEFAULT 0;

-- The feed the services poll (ListSessionRevocations): one row per bump. Rows older
-- than an access token's lifetime no longer matter and are purged.
CREATE TABLE session_revocations (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    epoch bigint NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, epoch)
);
CREATE INDEX session_revocations_revoked_at ON session_revocations (revoked_at);
