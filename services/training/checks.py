"""Request checks shared by datasets, jobs and clones: display names, personas and the
allowed base models. Each failure is INVALID_ARGUMENT naming the request field."""

from __future__ import annotations

from services.common.errors import InvalidArgument, Reason
from services.training.config import TrainingSettings

MAX_NAME = 200
MAX_PERSONA = 8000
MAX_DESCRIPTION = 2000


def _printable(value: str, field: str) -> str:
    if "\x00" in value:  # Postgres text cannot hold NUL
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return value


def name(value: str, field: str = "name", *, required: bool = True) -> str:
    value = _printable(value.strip(), field)
    if required and not value:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{field} must be at most {MAX_NAME} characters", field=field)
    return value


def persona(value: str, field: str = "persona_prompt") -> str:
    _printable(value, field)
    if len(value) > MAX_PERSONA:
        raise InvalidArgument(
            f"persona_prompt must be at most {MAX_PERSONA} characters", field=field
        )
    return value


def description(value: str, field: str = "description") -> str:
    _printable(value, field)
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"{field} must be at most {MAX_DESCRIPTION} characters", field=field)
    return value


def base_model(settings: TrainingSettings, value: str, field: str = "base_model") -> str:
    """The base model asked for (the server's default when empty), if it is allowed."""
    value = value or settings.default_base_model()
    if value not in settings.allowed_base_models:
        raise InvalidArgument(
            f"{field} {value!r} is not allowed; allowed: {', '.join(settings.allowed_base_models)}",
            field=field,
            reason=Reason.BASE_MODEL_UNAVAILABLE,
        )
    return value
