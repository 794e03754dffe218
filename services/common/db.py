"""asyncpg pool for one service's schema, and what counts as "the database is down"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg


class Database(Protocol):
    """Where a store finds its pool when a query runs: the service's `App` (its pool
    connects during start-up, after the stores are built)."""

    @property
    def pool(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Connected:
    """A `Database` for one-shot commands and workers that opened a pool themselves."""

    pool: Any


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, everywhere.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )
    await conn.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def _release(conn: asyncpg.Connection) -> None:
    """What a connection goes through when it returns to the pool, beyond asyncpg's own
    clean-up (a stray transaction rolled back, listeners removed).

    asyncpg's default would also send `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` — a second round trip after every query, ~7% of the auth service's CPU
    per token exchange. No code leaves session state on a pooled connection: locks are
    transaction-scoped (`pg_advisory_xact_lock`), and LISTEN and the migrations' session
    lock use connections of their own. So nothing more is needed here."""
    return None


async def create_pool(dsn: str, *, schema: str, service: str, min_size: int, max_size: int) -> Any:
    """A pool whose connections see `schema` first: SQL in a service names its tables
    unqualified and cannot reach another service's schema by accident."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_release,
        # jit off: the services run short OLTP queries, and a plan whose estimate crosses
        # jit_above_cost (chat's turn context: a never-analysed one-row table estimated at
        # ~530 rows times its subplans) spent 25-45 ms compiling for a 0.3 ms query, at
        # every turn start; 500 turns at once was ~17 CPU-s of Postgres (issue 23).
        server_settings={
            "search_path": schema,
            "application_name": f"aivera-{service}",
            "jit": "off",
        },
    )


# Failures that mean the database cannot be reached right now (refused or reset
# connections, a server shutting down or starting up, a connection lost mid-query) —
# as opposed to a query the database refused.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` says the database is down, not that a query was wrong."""
    return isinstance(exc, _UNREACHABLE)
