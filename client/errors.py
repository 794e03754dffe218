"""Errors of the SDK, one class per way a caller reacts, each with the CLI's exit code.

gRPC statuses are mapped once, here: UNAUTHENTICATED that a refresh could not fix becomes
`AuthRequired` (log in again), NOT_FOUND `NotFound`, UNAVAILABLE and DEADLINE_EXCEEDED
`Unavailable`, PERMISSION_DENIED `PermissionDenied`; anything else stays an `AiveraError`
with the server's message and code.

Every error from the mesh also carries `reason` — the `google.rpc.ErrorInfo` reason a
program branches on (`"TURN_IN_PROGRESS"`, `"PROVIDER_KEY_MISSING"`, the names of
`aivera.common.v1.ErrorReason` without the prefix) — with its `metadata`, and
`localized`, the text for a person in the language the client asked for
(`accept-language`, from `AIVERA_LANG`).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5


class AiveraError(Exception):
    """A call failed; `code` is the gRPC status, `exit_code` the CLI's exit status."""

    exit_code = EXIT_ERROR

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        localized: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.localized = localized


class AuthRequired(AiveraError):
    """No session, or the session ended (refresh refused): `aivera login` again."""

    exit_code = EXIT_AUTH


class PermissionDenied(AiveraError):
    """Signed in, but the role does not allow the call."""

    exit_code = EXIT_AUTH


class NotFound(AiveraError):
    exit_code = EXIT_NOT_FOUND


class Unavailable(AiveraError):
    """A service could not be reached or is down; retrying later may succeed."""

    exit_code = EXIT_UNAVAILABLE


class UsageError(AiveraError):
    """The caller asked for something the client cannot do (e.g. no active chat)."""

    exit_code = EXIT_USAGE


def _details(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], str]:
    """(ErrorInfo reason, its metadata, LocalizedMessage text) of a failed call."""
    reason, metadata, text = "", {}, ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # trailers that disagree with the status: ignore the details
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
            localized = error_details_pb2.LocalizedMessage()
            detail.Unpack(localized)
            text = localized.message
    return reason, metadata, text


def from_rpc(error: grpc.aio.AioRpcError) -> AiveraError:
    code = error.code()
    message = error.details() or code.name
    reason, metadata, text = _details(error)
    cls = AiveraError
    if code is grpc.StatusCode.UNAUTHENTICATED:
        cls = AuthRequired
    elif code is grpc.StatusCode.PERMISSION_DENIED:
        cls = PermissionDenied
    elif code is grpc.StatusCode.NOT_FOUND:
        cls = NotFound
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        cls = Unavailable
    return cls(message, code, reason=reason, metadata=metadata, localized=text)
