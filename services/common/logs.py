"""Structured JSON logs. Each line carries the service, the request id and the caller, so
a request can be followed across services (and, while tracing is on, the trace and span
ids, so a line leads to its trace). A redaction filter scrubs anything shaped like
a token or an API key, as a last line of defence: code must not log secrets at all."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from services.common import context, tracing

_SECRET_PATTERNS = re.compile(
    r"(avs_[A-Za-z0-9_\-]{8,}"  # static tokens
    r"|avr_[A-Za-z0-9_\-]{8,}"  # refresh tokens
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"  # JWTs
    r"|AIza[A-Za-z0-9_\-]{20,}"  # Google API keys
    r"|r8_[A-Za-z0-9_\-]{20,}"  # Replicate API tokens
    r"|whsec_[A-Za-z0-9+/=]{16,}"  # webhook signing secrets
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _SECRET_PATTERNS.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = context.request_id()
        if rid:
            payload["request_id"] = rid
        if tracing.enabled():
            ids = tracing.current_ids()
            if ids is not None:
                payload["trace_id"], payload["span_id"] = ids
        caller = context.current_caller()
        if caller.user_id:
            payload["user_id"] = caller.user_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update({k: redact(v) if isinstance(v, str) else v for k, v in extra.items()})
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure(service: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_aivera", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler._aivera = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would drown the request log.
    for noisy in ("asyncio", "aiohttp.access", "botocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fields(**kwargs: Any) -> dict[str, Any]:
    """`log.info("msg", extra=fields(a=1))` adds structured fields to the line."""
    return {"fields": kwargs}
