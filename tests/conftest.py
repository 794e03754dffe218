"""Shared fixtures: one real Postgres cluster per test session, a fresh database per test
module, and helpers to run real services on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.devpg import LocalPostgres, temporary_cluster

# SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so session fixtures stop the
# Postgres cluster they started instead of leaving it running.
signal.signal(signal.SIGTERM, signal.default_int_handler)

os.environ.setdefault("AIVERA_ENV", "test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """A throw-away cluster (fsync off) for the whole session."""
    with temporary_cluster("aivera-pg-") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def database_url(pg: LocalPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database for each test module."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.split(".")[-1].lower())
    return pg.create_database(f"t_{stem[:40]}_{uuid.uuid4().hex[:6]}")


@pytest.fixture
def internal_token() -> str:
    return "test-internal-token-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
async def session_marker() -> AsyncIterator[None]:
    # Forces the session event loop to exist before module fixtures that use it.
    yield
