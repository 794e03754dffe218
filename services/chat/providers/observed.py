"""One model call as operators see it: a span (while tracing is on) with the provider,
the model and the token counts, and the metrics of every call (duration, tokens, errors)
by provider — for Gemini, the local models and an inference server alike."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from services.chat.providers.base import Usage
from services.common import metrics, tracing


class ModelCall:
    """What the caller learns during the call: the provider's token counts."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None


@contextmanager
def model_call(provider: str, model: str) -> Iterator[ModelCall]:
    """Around one streamed model call; set `.usage` before the block ends."""
    call = ModelCall()
    started = time.perf_counter()
    attrs = {"gen_ai.system": provider, "gen_ai.request.model": model}
    with tracing.span(f"model {provider}", attrs) as span:
        try:
            yield call
        except BaseException:
            metrics.MODEL_CALL_ERRORS.labels(provider).inc()
            raise
        finally:
            metrics.MODEL_CALL_SECONDS.labels(provider).observe(time.perf_counter() - started)
            usage = call.usage
            if usage is not None:
                metrics.MODEL_TOKENS.labels(provider, "input").inc(usage.input_tokens)
                metrics.MODEL_TOKENS.labels(provider, "output").inc(usage.output_tokens)
                span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": usage.input_tokens,
                        "gen_ai.usage.output_tokens": usage.output_tokens,
                    }
                )
