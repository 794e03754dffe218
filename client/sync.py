"""`Client`: the blocking twin of `AsyncClient`, for scripts and notebooks.

Every coroutine method of `AsyncClient` becomes a plain method and every stream a plain
iterator; the async client runs on a private event loop in a background thread (so it
also works where a loop is already running, as in Jupyter).

    with Client() as c:
        print(c.me().username)
        for event in c.send_message(chat_id, "Привет"):
            ...
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from client.sdk import AsyncClient

T = TypeVar("T")


class Client:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async: AsyncClient = self._run(_make(*args, **kwargs))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self._run(aclose())

    @property
    def aio(self) -> AsyncClient:
        return self._async

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._async, name)
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._run(attr(*args, **kwargs))

            return call
        if callable(attr) and (
            inspect.isasyncgenfunction(attr)
            or name in {"send_message", "ingest", "watch_job", "watch_turn", "generate_images"}
        ):

            @functools.wraps(attr)
            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                # Made on the loop's thread: a plain method that returns a stream opens
                # its gRPC channel when called, and an aio channel needs the loop.
                return self._iterate(self._run(_call(attr, *args, **kwargs)))

            return stream
        return attr

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _make(*args: Any, **kwargs: Any) -> AsyncClient:
    return AsyncClient(*args, **kwargs)


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)
