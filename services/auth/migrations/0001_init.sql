-- Users, sessions (refresh-token families), refresh tokens, provider keys.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    username text NOT NULL,
    role text NOT NULL CHECK (role IN ('user', 'admin')),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- HMAC-SHA256 of the static token (see tokens.py); the token itself is never stored.
    static_token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_static_token_hash_key ON users (static_token_hash);
CREATE INDEX users_created_at_id ON users (created_at, id);

-- A session: one static-token exchange and every refresh token rotated from it (the
-- token "family"). Revoking it stops all of its refresh tokens at once.
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    revoke_reason text
);
CREATE INDEX sessions_user_active ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    id uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- Set when the token is rotated (retired); presenting it again is reuse.
    used_at timestamptz
);
CREATE UNIQUE INDEX refresh_tokens_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

-- A user's API key for a model provider, AES-256-GCM encrypted (see crypto.py).
CREATE TABLE provider_keys (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider text NOT NULL,
    key_version text NOT NULL,
    ciphertext bytea NOT NULL,
    last4 text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider)
);
CREATE INDEX provider_keys_version ON provider_keys (key_version);
