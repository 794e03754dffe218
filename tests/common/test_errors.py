"""Error reasons are declared once (the contract's ErrorReason) and every one has the
user's text in both languages."""

from __future__ import annotations

import grpc

from aivera.common.v1 import errors_pb2
from services.common import messages
from services.common.errors import (
    FailedPrecondition,
    NotFound,
    Reason,
    error_class,
    not_found,
    reason_name,
    reason_value,
)


def test_every_reason_has_a_short_name_and_both_texts() -> None:
    for value in errors_pb2.ErrorReason.values():
        if value == Reason.UNSPECIFIED:
            continue
        name = reason_name(value)
        assert not name.startswith("ERROR_REASON_") and reason_value(name) == value
        assert getattr(Reason, name) == value, f"Reason.{name} missing"
        assert value in messages.CATALOGUE, f"no user text for {name}"
        ru, en = (messages.localized(value, loc) for loc in (messages.RU, messages.EN))
        assert ru and en and ru != en


def test_fallback_reason_by_code_and_specific_reason() -> None:
    assert reason_name(NotFound("x").reason) == "NOT_FOUND"
    err = FailedPrecondition("busy", reason=Reason.TURN_IN_PROGRESS)
    assert reason_name(err.reason) == "TURN_IN_PROGRESS"
    assert not_found("chat", "c1").metadata == {"resource": "chat"}
    assert error_class(grpc.StatusCode.NOT_FOUND) is NotFound
    assert reason_value("NO_SUCH_REASON") == Reason.UNSPECIFIED


def test_language_choice() -> None:
    assert messages.locale_of("en-US,en;q=0.8") == messages.EN
    assert messages.locale_of("ru") == messages.RU
    assert messages.locale_of("") == messages.RU
    assert "—" in messages.localized(Reason.INVALID_ARGUMENT, messages.EN)


def test_a_missing_replicate_key_is_not_called_a_gemini_key() -> None:
    """PROVIDER_KEY_MISSING reads by the error's `provider`: Gemini's text by default."""
    gemini = messages.localized(Reason.PROVIDER_KEY_MISSING, messages.EN, provider="gemini")
    assert "Gemini" in gemini
    assert messages.localized(Reason.PROVIDER_KEY_MISSING, messages.EN) == gemini
    for locale in (messages.RU, messages.EN):
        text = messages.localized(Reason.PROVIDER_KEY_MISSING, locale, provider="replicate")
        assert "Replicate" in text and "Gemini" not in text
    for reason, _provider in messages.BY_PROVIDER:
        assert reason in messages.CATALOGUE  # a variant of a text that exists
