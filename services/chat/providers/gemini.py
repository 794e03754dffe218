"""Gemini through google-genai, with the user's own key.

A client is made per request (the key is the user's and lives only in this object for
the turn); it is never logged or stored. Provider 429s are retried with exponential
backoff while nothing has been streamed yet, then reported as RESOURCE_EXHAUSTED with
reason PROVIDER_RATE_LIMITED; a rejected key is PROVIDER_KEY_INVALID, a provider that
fails or cannot be reached PROVIDER_UNAVAILABLE (retryable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.rpc import code_pb2

from services.chat.providers.base import (
    Chunk,
    Content,
    FunctionCall,
    LlmRequest,
    ProviderError,
    Usage,
)
from services.common.errors import Reason

log = logging.getLogger("aivera.chat.gemini")


def key_invalid() -> ProviderError:
    return ProviderError(
        Reason.PROVIDER_KEY_INVALID,
        code_pb2.FAILED_PRECONDITION,
        "Ключ Gemini API отклонён Google как недействительный: проверьте его или задайте "
        "новый ключ в настройках.",
        retryable=False,
    )


def rate_limited() -> ProviderError:
    return ProviderError(
        Reason.PROVIDER_RATE_LIMITED,
        code_pb2.RESOURCE_EXHAUSTED,
        "Превышен лимит запросов к Gemini для вашего ключа. Повторите попытку позже.",
        retryable=True,
    )


def _error_reasons(exc: genai_errors.APIError) -> set[str]:
    details = exc.details if isinstance(exc.details, dict) else {}
    error = details.get("error") if isinstance(details.get("error"), dict) else {}
    reasons: set[str] = set()
    for item in (error or {}).get("details") or ():
        if isinstance(item, dict) and isinstance(item.get("reason"), str):
            reasons.add(item["reason"])
    return reasons


def map_error(exc: BaseException) -> ProviderError:
    """A google-genai / transport failure as a ProviderError (never with the key)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        reasons = _error_reasons(exc)
        if "API_KEY_INVALID" in reasons or code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            return key_invalid()
        if code == HTTPStatus.TOO_MANY_REQUESTS:
            return rate_limited()
        if code >= HTTPStatus.INTERNAL_SERVER_ERROR:
            return ProviderError(
                Reason.PROVIDER_UNAVAILABLE,
                code_pb2.UNAVAILABLE,
                f"Сервис Gemini вернул ошибку {code}. Повторите попытку.",
                retryable=True,
            )
        # Another 4xx: the request this service built was refused (e.g. an unknown model
        # name in the system settings) — not the user's doing, not retryable.
        return ProviderError(
            Reason.INTERNAL,
            code_pb2.INTERNAL,
            f"Gemini отклонил запрос (HTTP {code}, {exc.status or 'ошибка'}).",
            retryable=False,
        )
    return ProviderError(
        Reason.PROVIDER_UNAVAILABLE,
        code_pb2.UNAVAILABLE,
        f"Связь с Gemini прервалась ({type(exc).__name__}). Повторите попытку.",
        retryable=True,
    )


def _contents(contents: list[Content]) -> list[types.Content]:
    out: list[types.Content] = []
    for content in contents:
        parts: list[types.Part] = []
        for part in content.parts:
            if part.text is not None:
                parts.append(types.Part(text=part.text))
            elif part.image is not None:
                parts.append(types.Part.from_bytes(data=part.image, mime_type=part.mime_type))
            elif part.call is not None:
                parts.append(
                    types.Part(
                        function_call=types.FunctionCall(name=part.call.name, args=part.call.args)
                    )
                )
            elif part.response is not None:
                call, response = part.response
                parts.append(
                    types.Part(
                        function_response=types.FunctionResponse(name=call.name, response=response)
                    )
                )
        out.append(types.Content(role=content.role, parts=parts))
    return out


def _config(request: LlmRequest) -> types.GenerateContentConfig:
    config: dict[str, Any] = {"system_instruction": request.system_instruction or None}
    if request.tools:
        config["tools"] = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=t.name, description=t.description, parameters_json_schema=t.parameters
                    )
                    for t in request.tools
                ]
            )
        ]
        config["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(disable=True)
    if request.max_output_tokens:
        config["max_output_tokens"] = request.max_output_tokens
    return types.GenerateContentConfig(**config)


class GeminiProvider:
    name = "gemini"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None,
        timeout_seconds: float,
        retry_attempts: int,
        retry_initial_delay: float,
        retry_max_delay: float,
    ) -> None:
        """Timeouts and retries come from the settings (services/chat/config.py)."""
        options = types.HttpOptions(timeout=int(timeout_seconds * 1000), base_url=base_url)
        self._client = genai.Client(api_key=api_key, http_options=options)
        self._attempts = max(1, retry_attempts)
        self._delay = retry_initial_delay
        self._max_delay = retry_max_delay

    def __repr__(self) -> str:  # never show the key
        return "GeminiProvider()"

    async def stream(self, request: LlmRequest) -> AsyncIterator[Chunk]:
        contents = _contents(request.contents)
        config = _config(request)
        delay = self._delay
        for attempt in range(1, self._attempts + 1):
            started = False
            try:
                response = await self._client.aio.models.generate_content_stream(
                    model=request.model, contents=contents, config=config
                )
                async for piece in response:
                    chunk = _chunk(piece)
                    started = True
                    yield chunk
                return
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                error = map_error(exc)
                retry = error.reason == Reason.PROVIDER_RATE_LIMITED and not started
                if retry and attempt < self._attempts:
                    log.info("gemini 429, retry %d in %.2fs", attempt, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                    continue
                raise error from None

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def _chunk(piece: types.GenerateContentResponse) -> Chunk:
    chunk = Chunk()
    texts: list[str] = []
    for candidate in (piece.candidates or [])[:1]:
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.function_call is not None and part.function_call.name:
                chunk.calls.append(
                    FunctionCall(
                        name=part.function_call.name,
                        args=dict(part.function_call.args or {}),
                        id=part.function_call.id or "",
                    )
                )
            elif part.text and not part.thought:
                texts.append(part.text)
    chunk.text = "".join(texts)
    meta = piece.usage_metadata
    if meta is not None:
        chunk.usage = Usage(
            input_tokens=meta.prompt_token_count or 0,
            output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
            total_tokens=meta.total_token_count or 0,
        )
    return chunk
