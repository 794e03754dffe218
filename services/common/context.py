"""Per-call state carried in context variables: the caller, the request id, the deadline.

The RPC wrapper sets them for each incoming call; outgoing channels read them to relay
identity, request id and the remaining deadline to the next service.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

ROLE_USER = "user"
ROLE_ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. `internal` callers are other services of the mesh; they may act
    for a user (user_id set) or for themselves (user_id None)."""

    user_id: str | None
    role: str | None = None
    internal: bool = False
    # The caller's bearer token, relayed to other services on calls made for this caller.
    token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN


ANONYMOUS = Caller(user_id=None)

_caller: ContextVar[Caller] = ContextVar("aivera_caller", default=ANONYMOUS)
_request_id: ContextVar[str] = ContextVar("aivera_request_id", default="")
_deadline: ContextVar[float | None] = ContextVar("aivera_deadline", default=None)
_method: ContextVar[str] = ContextVar("aivera_method", default="")
# The caller's `accept-language`, for the localized text of errors.
_language: ContextVar[str] = ContextVar("aivera_language", default="")


def current_caller() -> Caller:
    return _caller.get()


def require_user_id() -> str:
    """The user the current call acts for; handlers of user RPCs can rely on it."""
    user_id = _caller.get().user_id
    if user_id is None:  # the RPC wrapper guarantees this for ACCESS_USER methods
        raise RuntimeError("no user in call context")
    return user_id


def request_id() -> str:
    return _request_id.get()


def current_method() -> str:
    return _method.get()


def language() -> str:
    return _language.get()


def deadline_remaining() -> float | None:
    """Seconds left of the incoming call's deadline, or None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def new_request_id() -> str:
    return uuid.uuid4().hex


def bind(
    *,
    caller: Caller,
    request_id: str,
    method: str,
    timeout: float | None,
    language: str = "",
) -> list[object]:
    """Set the call context; returns tokens for `unbind`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return [
        (_caller, _caller.set(caller)),
        (_request_id, _request_id.set(request_id)),
        (_method, _method.set(method)),
        (_deadline, _deadline.set(deadline)),
        (_language, _language.set(language)),
    ]


def set_caller(caller: Caller) -> None:
    _caller.set(caller)


@contextlib.contextmanager
def acting_for(user_id: str, *, request_id: str | None = None) -> Iterator[None]:
    """Background work done for a user (a training worker, a purge task): outgoing calls
    carry the internal credential on behalf of `user_id`, since no user token lives
    long enough."""
    t1 = _caller.set(Caller(user_id=user_id, role=ROLE_USER, internal=True))
    t2 = _request_id.set(request_id or new_request_id())
    try:
        yield
    finally:
        _caller.reset(t1)
        _request_id.reset(t2)
