"""The auth service under test: real service, real Postgres (a database per module)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.auth.config import AuthSettings
from tests.helpers.auth import (
    Client,
    code_of,
    db,
    ed25519_pem,
    error_of,
    make_settings,
    master_entry,
    p256_pem,
    pem,
    serve,
    variant,
)

# The auth tests import these shared helpers from here; listing them makes the
# re-export explicit (mypy strict's no_implicit_reexport, ruff F401).
__all__ = [
    "Client",
    "code_of",
    "db",
    "ed25519_pem",
    "error_of",
    "make_settings",
    "master_entry",
    "p256_pem",
    "pem",
    "serve",
    "variant",
]


@pytest.fixture(scope="module")
def settings(database_url: str) -> AuthSettings:
    # Tests present wrong tokens freely; the limiter's own tests set small limits.
    return make_settings(database_url, exchange_token_failure_limit=1000)


@pytest.fixture(scope="module")
async def client(settings: AuthSettings) -> AsyncIterator[Client]:
    async with serve(settings) as c:
        yield c
