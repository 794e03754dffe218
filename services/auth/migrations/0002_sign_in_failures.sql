-- Failed static-token exchanges, shared by every replica (see ratelimit.py): one row per
-- key, 'a:<client address>' or 'p:<HMAC of the token's first characters>', counting the
-- failures of a fixed window that starts at the key's first failure.
CREATE TABLE sign_in_failures (
    key text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures integer NOT NULL
);
CREATE INDEX sign_in_failures_window ON sign_in_failures (window_start);
