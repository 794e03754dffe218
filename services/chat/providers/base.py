"""What a pipeline asks of a model, independent of the provider: requests, streamed
chunks, usage, and `ProviderError` (a failed model call, with the contract's error reason
and google.rpc code that the turn's TurnError carries)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.common.errors import reason_name


@dataclass
class FunctionCall:
    name: str
    args: dict[str, Any]
    id: str = ""


@dataclass
class Part:
    """One part of a message to or from a model: text, an image, a call or its result."""

    text: str | None = None
    image: bytes | None = None
    mime_type: str = "image/png"
    call: FunctionCall | None = None
    # The result of a call: (call, response dict).
    response: tuple[FunctionCall, dict[str, Any]] | None = None


@dataclass
class Content:
    role: str  # "user" | "model"
    parts: list[Part]


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema


@dataclass
class LlmRequest:
    model: str
    system_instruction: str
    contents: list[Content]
    tools: list[ToolSpec] = field(default_factory=list)
    max_output_tokens: int | None = None


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.total_tokens += other.total_tokens


@dataclass
class Chunk:
    """A piece of a streamed answer."""

    text: str = ""
    calls: list[FunctionCall] = field(default_factory=list)
    usage: Usage | None = None  # the running total of the call when the provider gives one


class ProviderError(Exception):
    """A model call failed; carries what the TurnError says: `reason` is an
    `ErrorReason` value (services.common.errors.Reason), `code` a google.rpc.Code."""

    def __init__(self, reason: int, code: int, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.message = message
        self.retryable = retryable

    @property
    def reason_name(self) -> str:
        """The reason as TurnError.reason and ErrorInfo.reason spell it."""
        return reason_name(self.reason)


class Provider(Protocol):
    """A model. `stream` yields chunks as they arrive and raises ProviderError."""

    name: str  # "gemini" | "local"

    def stream(self, request: LlmRequest) -> AsyncIterator[Chunk]: ...
