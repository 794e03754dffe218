"""What every command shares: running a coroutine with a client, turning errors into
messages and exit codes (0 ok, 1 other error, 2 usage, 3 auth, 4 not found,
5 unavailable, 130 interrupted), and reading secrets without argv."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import typer

from client.cli.render import err
from client.config import Endpoints, credentials_path
from client.credentials import CredentialStore
from client.errors import (
    AiveraError,
    AuthRequired,
    NotFound,
    PermissionDenied,
    Unavailable,
    UsageError,
)
from client.messages import t
from client.sdk import AsyncClient

EXIT_INTERRUPTED = 130

JsonOpt = typer.Option(False, "--json", help="Вывод в JSON (для скриптов) / JSON output.")


def store() -> CredentialStore:
    return CredentialStore(credentials_path())


def make_client(server: str | None = None) -> AsyncClient:
    st = store()
    creds = st.load()
    endpoints = Endpoints.resolve(server or creds.server)
    return AsyncClient(endpoints, store=st, credentials=creds)


def describe(e: AiveraError) -> str:
    if e.localized:
        # The mesh's own text for the reason, in the user's language; the developer
        # message follows when it says more (e.g. which field, which limit).
        return e.localized if e.message in e.localized else f"{e.localized}\n  {e.message}"
    if isinstance(e, AuthRequired):
        return t("error.auth", detail=e.message)
    if isinstance(e, PermissionDenied):
        return t("error.permission", detail=e.message)
    if isinstance(e, NotFound):
        return t("error.not_found_detail", detail=e.message)
    if isinstance(e, Unavailable):
        return t("error.unavailable", detail=e.message)
    if isinstance(e, UsageError):
        return e.message
    return t("error.generic", detail=e.message)


def fail(e: AiveraError) -> NoReturn:
    err.print(describe(e), style="red", markup=False, highlight=False)
    raise typer.Exit(e.exit_code)


def run(
    fn: Callable[[AsyncClient], Awaitable[int | None]],
    *,
    server: str | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> None:
    """Run `fn` with a fresh client; map errors to messages and exit codes."""

    async def main() -> int | None:
        async with make_client(server) as c:
            return await fn(c)

    try:
        code = asyncio.run(main())
    except AiveraError as e:
        fail(e)
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        else:
            err.print(t("interrupted"), style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if code:
        raise typer.Exit(code)


def read_secret(prompt: str) -> str:
    """A secret from stdin when it is not a terminal, else from a hidden prompt. Never
    from argv (process arguments are visible to every user of the machine)."""
    if not sys.stdin.isatty():
        value = sys.stdin.readline().strip()
    else:
        value = getpass.getpass(prompt + ": ").strip()
    if not value:
        err.print(t("error.empty_secret"), style="red")
        raise typer.Exit(2)
    return value


def active_chat(c: AsyncClient, chat_id: str | None) -> str:
    cid = chat_id or c.credentials.active_chat_id
    if not cid:
        raise UsageError(t("chat.no_active"))
    return cid
