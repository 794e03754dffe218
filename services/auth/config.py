"""Settings of the auth service (environment variables; see the README table)."""

from __future__ import annotations

from pydantic import SecretStr

from services.common.config import CommonSettings
from services.common.ports import SERVICES


class AuthSettings(CommonSettings):
    auth_port: int = SERVICES["auth"].grpc
    auth_http_port: int = SERVICES["auth"].http

    # One or more PEM private keys (Ed25519 → EdDSA, P-256 → ES256), concatenated. The
    # first signs; the others only verify (the previous key, kept until its tokens expire).
    # Outside dev/test the service refuses to start without one.
    jwt_private_keys: SecretStr = SecretStr("")
    # "v2:<base64url 32 bytes>,v1:<base64url 32 bytes>": the first entry encrypts, every
    # listed version decrypts. Required outside dev/test.
    master_encryption_key: SecretStr = SecretStr("")
    # Key of the HMAC that stores static and refresh tokens (a pepper: a stolen database
    # alone cannot even confirm a guessed token). Optional; a built-in key is used if unset.
    # Changing it invalidates every static and refresh token.
    token_hash_key: SecretStr = SecretStr("")
    # The first admin's static token: on start-up, if set and no admin exists, user
    # `admin` is created with it (idempotent).
    aivera_bootstrap_admin_token: SecretStr = SecretStr("")

    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # A retired refresh token presented again within this window answers UNAUTHENTICATED
    # but keeps the session (a retried request whose reply was lost, or racing duplicate
    # requests); after it, the whole session is revoked (reuse detection).
    refresh_reuse_grace_seconds: float = 10.0
    # A session (a refresh-token family) ends this long after its sign-in however often
    # it is refreshed (absolute lifetime), or once it goes unrefreshed this long (idle
    # timeout); then the static token must be exchanged again.
    session_max_lifetime_seconds: int = 90 * 24 * 3600
    session_idle_timeout_seconds: int = 30 * 24 * 3600
    # The shared sign-in limiter (ratelimit.py), counted in Postgres across replicas.
    # Failed exchanges per client address per window: past it, failing exchanges from
    # that address answer RESOURCE_EXHAUSTED (a valid token still signs in).
    exchange_failure_limit: int = 10
    # Failed exchanges per token prefix per window: past it, every exchange presenting
    # that prefix answers RESOURCE_EXHAUSTED until the window ends.
    exchange_token_failure_limit: int = 5
    exchange_failure_window_seconds: float = 60.0
    # Comma-separated CIDRs of the gateways in front of this service. When the direct
    # peer is one of them, the client address for rate limiting comes from
    # x-forwarded-for. Empty: the direct peer's address is the client.
    auth_trusted_proxies: str = ""

    # The mesh services' credentials, as `<service>:<sha256 hex of its secret>` entries,
    # comma-separated (services.common.identity). A service may have two entries at once:
    # rotation adds the new secret's hash, rolls the workload, then drops the old one.
    auth_service_clients: str = ""
    # Service tokens (x-aivera-service-token) and delegations are short-lived JWTs; grants
    # (work that outlives a user's access token) are opaque and end with the user's sessions.
    service_token_ttl_seconds: int = 900
    delegation_ttl_seconds: int = 300
    auth_grant_max_ttl_seconds: int = 30 * 24 * 3600
