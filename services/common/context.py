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
    """Who is calling: a user (user_id), a mesh service (service), or a service acting
    for a user with a delegation (both)."""

    user_id: str | None
    role: str | None = None
    # The calling mesh service, proven by its service token.
    service: str | None = None
    # The bearer token this call came with (the user's access token, or a delegation
    # addressed to this service): calls made for this caller exchange it at auth for a
    # delegation to the next service (services.common.identity).
    token: str | None = None
    # Background work: the grant that stands in for the user's token.
    grant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def internal(self) -> bool:
        return self.service is not None


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
def acting_for(user_id: str, *, grant: str | None, request_id: str | None = None) -> Iterator[None]:
    """Background work done for a user (a training job, an ingest that outlives its
    request): outgoing calls act for `user_id` with delegations exchanged from `grant`,
    which the service obtained while the user's request was live (identity.grant_now).
    Without one (work from before grants, a process without a mesh identity) calls made
    for the user are refused with DELEGATION_REQUIRED."""
    t1 = _caller.set(Caller(user_id=user_id, role=ROLE_USER, grant=grant))
    t2 = _request_id.set(request_id or new_request_id())
    try:
        yield
    finally:
        _caller.reset(t1)
        _request_id.reset(t2)
