"""Command-line entry of every service: `python -m services.<svc> [serve|migrate|...]`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from services.common.config import CommonSettings
from services.common.server import ServiceSpec, migrate_only, serve

S = TypeVar("S", bound=CommonSettings)


def main(
    make_spec: Callable[[S], ServiceSpec],
    settings_cls: type[S],
    *,
    commands: Mapping[str, Callable[[S], Coroutine[Any, Any, None]]] | None = None,
    argv: list[str] | None = None,
) -> None:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    settings = settings_cls()
    extra = dict(commands or {})
    if command == "serve":
        asyncio.run(serve(make_spec(settings), settings))
    elif command == "migrate":
        asyncio.run(migrate_only(make_spec(settings), settings))
    elif command in extra:
        asyncio.run(extra[command](settings))
    else:
        names = ", ".join(["serve", "migrate", *extra])
        print(f"unknown command {command!r}; expected one of: {names}", file=sys.stderr)
        raise SystemExit(2)
