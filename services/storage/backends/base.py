"""What a backend offers the service. Keys are `{bucket}/{user_id}/{file_id}/{filename}`.

A backend that cannot be reached raises `BackendUnavailable`: UNAVAILABLE with reason
DEPENDENCY_UNAVAILABLE (metadata `dependency: object storage`), retryable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from services.common.errors import Reason, Unavailable

Kind = Literal["s3", "local"]
CHUNK = 1024 * 1024  # the most bytes in one gRPC message


class BackendUnavailable(Unavailable):
    """The backend cannot be reached (connection refused, timeout, 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        reason: int = Reason.DEPENDENCY_UNAVAILABLE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, reason=reason, metadata={"dependency": "object storage", **(metadata or {})}
        )


@dataclass
class Presigned:
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class Writer(Protocol):
    """Streams one object. `commit` makes it visible; `abort` removes every trace."""

    @property
    def kind(self) -> Kind:
        """Where the bytes end up."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class Backend(Protocol):
    kind: Kind

    async def open_writer(self, key: str, size_hint: int) -> Writer: ...

    def read(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """Chunks of at most CHUNK bytes from `offset`; length 0 = to the end."""
        ...

    async def size(self, key: str) -> int | None:
        """The stored object's size, or None when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the object (no error when it is missing)."""
        ...

    async def presign(
        self, key: str, method: Literal["GET", "PUT"], file_id: str, expires_at: int, size: int
    ) -> Presigned:
        """A URL for `method` only, valid until `expires_at` (unix seconds)."""
        ...

    async def check(self) -> bool:
        """True while the backend answers."""
        ...
