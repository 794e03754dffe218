"""Errors of the SDK, one class per way a caller reacts, each with the CLI's exit code.

gRPC statuses are mapped once, here: UNAUTHENTICATED that a refresh could not fix becomes
`AuthRequired` (log in again), NOT_FOUND `NotFound`, UNAVAILABLE and DEADLINE_EXCEEDED
`Unavailable`, PERMISSION_DENIED `PermissionDenied`; anything else stays an `AiveraError`
with the server's message and code.
"""

from __future__ import annotations

import grpc

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5


class AiveraError(Exception):
    """A call failed; `code` is the gRPC status, `exit_code` the CLI's exit status."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


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


def from_rpc(error: grpc.aio.AioRpcError) -> AiveraError:
    code = error.code()
    message = error.details() or code.name
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthRequired(message, code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message, code)
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(message, code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(message, code)
    return AiveraError(message, code)
