"""Domain errors. Handlers and domain code raise these; the RPC wrapper turns them into
gRPC statuses, so no handler repeats the mapping. Messages are shown to clients: never
put a secret, a token or another user's data in one.

Every error has a `reason` from the contract's `aivera.common.v1.ErrorReason` (declared
once, in `protos/aivera/common/v1/errors.proto`) that the wrapper sends as
`google.rpc.ErrorInfo` so programs can branch on it; each class has a fallback reason for
its status code, and a raise site names a specific one where a program would care
(`FailedPrecondition(..., reason=Reason.TURN_IN_PROGRESS)`). The message is English, for
developers; the user-facing text comes from `services.common.messages` by reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from aivera.common.v1 import errors_pb2

_PREFIX = "ERROR_REASON_"


class Reason:
    """The contract's ErrorReason values under their short names (`Reason.NOT_FOUND`)."""

    UNSPECIFIED = errors_pb2.ERROR_REASON_UNSPECIFIED
    INVALID_ARGUMENT = errors_pb2.ERROR_REASON_INVALID_ARGUMENT
    NOT_FOUND = errors_pb2.ERROR_REASON_NOT_FOUND
    ALREADY_EXISTS = errors_pb2.ERROR_REASON_ALREADY_EXISTS
    FAILED_PRECONDITION = errors_pb2.ERROR_REASON_FAILED_PRECONDITION
    PERMISSION_DENIED = errors_pb2.ERROR_REASON_PERMISSION_DENIED
    UNAUTHENTICATED = errors_pb2.ERROR_REASON_UNAUTHENTICATED
    RESOURCE_EXHAUSTED = errors_pb2.ERROR_REASON_RESOURCE_EXHAUSTED
    UNAVAILABLE = errors_pb2.ERROR_REASON_UNAVAILABLE
    ABORTED = errors_pb2.ERROR_REASON_ABORTED
    UNIMPLEMENTED = errors_pb2.ERROR_REASON_UNIMPLEMENTED
    INTERNAL = errors_pb2.ERROR_REASON_INTERNAL
    CANCELLED = errors_pb2.ERROR_REASON_CANCELLED
    DEADLINE_EXCEEDED = errors_pb2.ERROR_REASON_DEADLINE_EXCEEDED
    INVALID_PAGE_TOKEN = errors_pb2.ERROR_REASON_INVALID_PAGE_TOKEN
    SERVICE_STARTING = errors_pb2.ERROR_REASON_SERVICE_STARTING
    DATABASE_UNAVAILABLE = errors_pb2.ERROR_REASON_DATABASE_UNAVAILABLE
    DEPENDENCY_UNAVAILABLE = errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE
    TOKEN_MISSING = errors_pb2.ERROR_REASON_TOKEN_MISSING
    TOKEN_INVALID = errors_pb2.ERROR_REASON_TOKEN_INVALID
    TOKEN_EXPIRED = errors_pb2.ERROR_REASON_TOKEN_EXPIRED
    BAD_STATIC_TOKEN = errors_pb2.ERROR_REASON_BAD_STATIC_TOKEN
    BAD_REFRESH_TOKEN = errors_pb2.ERROR_REASON_BAD_REFRESH_TOKEN
    TOO_MANY_FAILURES = errors_pb2.ERROR_REASON_TOO_MANY_FAILURES
    ADMIN_REQUIRED = errors_pb2.ERROR_REASON_ADMIN_REQUIRED
    INTERNAL_ONLY = errors_pb2.ERROR_REASON_INTERNAL_ONLY
    BAD_SERVICE_CREDENTIAL = errors_pb2.ERROR_REASON_BAD_SERVICE_CREDENTIAL
    TURN_IN_PROGRESS = errors_pb2.ERROR_REASON_TURN_IN_PROGRESS
    PROVIDER_KEY_MISSING = errors_pb2.ERROR_REASON_PROVIDER_KEY_MISSING
    PROVIDER_RATE_LIMITED = errors_pb2.ERROR_REASON_PROVIDER_RATE_LIMITED
    PROVIDER_UNAVAILABLE = errors_pb2.ERROR_REASON_PROVIDER_UNAVAILABLE
    PROVIDER_KEY_INVALID = errors_pb2.ERROR_REASON_PROVIDER_KEY_INVALID
    ATTACHMENT_NOT_READY = errors_pb2.ERROR_REASON_ATTACHMENT_NOT_READY
    SHUTDOWN = errors_pb2.ERROR_REASON_SHUTDOWN
    FILE_TOO_LARGE = errors_pb2.ERROR_REASON_FILE_TOO_LARGE
    UNSUPPORTED_FORMAT = errors_pb2.ERROR_REASON_UNSUPPORTED_FORMAT
    CHECKSUM_MISMATCH = errors_pb2.ERROR_REASON_CHECKSUM_MISMATCH
    FILE_NOT_READY = errors_pb2.ERROR_REASON_FILE_NOT_READY
    DOCUMENT_NOT_READY = errors_pb2.ERROR_REASON_DOCUMENT_NOT_READY
    QUOTA_EXCEEDED = errors_pb2.ERROR_REASON_QUOTA_EXCEEDED
    DATASET_NOT_READY = errors_pb2.ERROR_REASON_DATASET_NOT_READY
    JOB_STATE = errors_pb2.ERROR_REASON_JOB_STATE
    CLONE_NOT_READY = errors_pb2.ERROR_REASON_CLONE_NOT_READY
    BASE_MODEL_UNAVAILABLE = errors_pb2.ERROR_REASON_BASE_MODEL_UNAVAILABLE
    TOO_MANY_ACTIVE_JOBS = errors_pb2.ERROR_REASON_TOO_MANY_ACTIVE_JOBS
    IN_USE = errors_pb2.ERROR_REASON_IN_USE
    MODEL_NOT_READY = errors_pb2.ERROR_REASON_MODEL_NOT_READY
    # -- training as a product (100-119)
    IMAGE_DIMENSIONS = errors_pb2.ERROR_REASON_IMAGE_DIMENSIONS
    REFERENCE_IMAGE_COUNT = errors_pb2.ERROR_REASON_REFERENCE_IMAGE_COUNT
    DUPLICATE_IMAGE = errors_pb2.ERROR_REASON_DUPLICATE_IMAGE
    IMAGE_LORA_STATE = errors_pb2.ERROR_REASON_IMAGE_LORA_STATE
    IMAGE_LORA_NOT_READY = errors_pb2.ERROR_REASON_IMAGE_LORA_NOT_READY
    # -- image generations (G: 118-119)
    TOO_MANY_GENERATIONS = errors_pb2.ERROR_REASON_TOO_MANY_GENERATIONS
    # -- chat as a product (120-139)
    NOT_LATEST_MESSAGE = errors_pb2.ERROR_REASON_NOT_LATEST_MESSAGE
    IMAGE_TOO_LARGE = errors_pb2.ERROR_REASON_IMAGE_TOO_LARGE
    MODEL_BUSY = errors_pb2.ERROR_REASON_MODEL_BUSY
    ADAPTER_INVALID = errors_pb2.ERROR_REASON_ADAPTER_INVALID
    # -- service identity and sessions (140-159)
    SESSION_REVOKED = errors_pb2.ERROR_REASON_SESSION_REVOKED
    CALLER_NOT_ALLOWED = errors_pb2.ERROR_REASON_CALLER_NOT_ALLOWED
    DELEGATION_REQUIRED = errors_pb2.ERROR_REASON_DELEGATION_REQUIRED
    DELEGATION_INVALID = errors_pb2.ERROR_REASON_DELEGATION_INVALID


def reason_name(reason: int) -> str:
    """The name sent in ErrorInfo.reason: the enum value's name without its prefix."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix(_PREFIX)  # type: ignore[arg-type]


def reason_value(name: str) -> int:
    """The enum value of an ErrorInfo.reason name; UNSPECIFIED for an unknown name."""
    try:
        return int(errors_pb2.ErrorReason.Value(_PREFIX + name))
    except ValueError:
        return Reason.UNSPECIFIED


# The reason a status code gets when the raise site names none.
_FALLBACK: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Reason.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: Reason.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: Reason.UNAVAILABLE,
    grpc.StatusCode.ABORTED: Reason.ABORTED,
    grpc.StatusCode.UNIMPLEMENTED: Reason.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: Reason.INTERNAL,
    grpc.StatusCode.CANCELLED: Reason.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.DEADLINE_EXCEEDED,
}


def fallback_reason(code: grpc.StatusCode) -> int:
    return _FALLBACK.get(code, Reason.INTERNAL)


class ServiceError(Exception):
    """An expected failure with a status code, a reason and a client-facing message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, reported as a google.rpc.BadRequest detail.
        self.field = field
        self.reason = fallback_reason(self.code) if reason is None else reason
        # ErrorInfo.metadata: facts a program may use (`field`, `resource`, `limit`, …).
        self.metadata: dict[str, str] = dict(metadata or {})
        if field is not None:
            self.metadata.setdefault("field", field)


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


class Internal(ServiceError):
    """A failure that is the server's fault (e.g. a remote call answered INTERNAL)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        Aborted,
        Unimplemented,
        Internal,
    )
}


def error_class(code: grpc.StatusCode) -> type[ServiceError]:
    """The ServiceError subclass for a status code (Internal for codes without one)."""
    return _BY_CODE.get(code, Internal)


def not_found(kind: str, ident: str) -> NotFound:
    """The one message for missing and for other users' resources alike."""
    return NotFound(f"{kind} {ident!r} not found", metadata={"resource": kind})
