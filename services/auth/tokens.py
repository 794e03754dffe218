"""Static and refresh tokens: generation and the hash they are stored under.

Both are 256-bit random values (`secrets.token_urlsafe(32)`) with a recognisable prefix
(`avs_` static, `avr_` refresh; the log redaction and secret scanners know them).

They are stored as HMAC-SHA256(key, token), not with a slow password hash (bcrypt,
argon2): a slow hash protects low-entropy secrets from offline guessing, but 2^256
guesses are out of reach at any speed, so it would only add ~100 ms of CPU per exchange
and make the hash unsearchable (a salted hash cannot be looked up by index). A keyed hash
is deterministic, so the token's row is found by a unique index, and the key (a pepper
from the environment) means a copy of the database alone cannot test candidate tokens.
"""

from __future__ import annotations

import hmac
import secrets

STATIC_PREFIX = "avs_"
REFRESH_PREFIX = "avr_"
# Used when TOKEN_HASH_KEY is not set. Still a domain separator; the pepper property needs
# the environment key.
_DEFAULT_KEY = b"aivera-auth/token-hash/v1"
# Longest token accepted for hashing (bounds the work done on hostile input).
MAX_TOKEN_LENGTH = 512


class TokenHasher:
    def __init__(self, key: str = "") -> None:
        self._key = key.encode() if key else _DEFAULT_KEY

    def hash(self, token: str) -> bytes:
        # hmac.digest: the one-shot C path (same bytes as hmac.new(...).digest()).
        return hmac.digest(self._key, token.encode(), "sha256")


def new_static_token() -> str:
    return STATIC_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def plausible(token: str, prefix: str) -> bool:
    """Cheap shape check before any database work (wrong shapes still answer the same
    UNAUTHENTICATED as wrong tokens)."""
    return token.startswith(prefix) and 16 <= len(token) <= MAX_TOKEN_LENGTH
