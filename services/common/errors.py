"""Domain errors. Handlers and domain code raise these; the RPC wrapper turns them into
gRPC statuses, so no handler repeats the mapping. Messages are shown to clients: never
put a secret, a token or another user's data in one."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An expected failure with a status code and a client-facing message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, reported as a google.rpc.BadRequest detail.
        self.field = field


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


def not_found(kind: str, ident: str) -> NotFound:
    """The one message for missing and for other users' resources alike."""
    return NotFound(f"{kind} {ident!r} not found")
