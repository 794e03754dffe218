"""Generic request validation, applied once by the RPC wrapper to every request message.

Two layers, both pure and independent of gRPC:

- `deserializer(cls)`: the request deserializer grpc calls before our handler runs. A
  malformed message (bad wire format, invalid UTF-8 in a proto3 string) would make grpc
  answer UNKNOWN; instead it becomes a `Malformed` sentinel the wrapper answers with
  INVALID_ARGUMENT.
- `check(message)`: walks the message by its descriptor and refuses, naming the field
  path (`header.labels[k]`, `messages[2].text`), text with a NUL or another C0 control
  character (tab, newline, form feed and carriage return are text) and enum numbers that are not
  defined values (proto3 enums are open: the wire accepts any number).

The walk only visits string, enum and message fields, from a plan cached per descriptor;
`bytes` fields and scalars are never looked at.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from services.common.errors import InvalidArgument

# C0 controls except \t (0x09), \n (0x0a), \f (0x0c: page breaks in text pasted from
# PDFs) and \r (0x0d).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f]")

_STRING = 0
_ENUM = 1
_MESSAGE = 2


class Malformed:
    """What the wrapped deserializer returns for bytes that are not a valid message."""

    __slots__ = ("detail", "type_name")

    def __init__(self, type_name: str, detail: str) -> None:
        self.type_name = type_name
        self.detail = detail

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request bytes are not a valid {self.type_name} message: {self.detail}"
        )


def deserializer(cls: Any) -> Callable[[bytes], Any]:
    """`cls.FromString`, returning `Malformed` instead of raising on undecodable bytes."""
    from_string = cls.FromString
    type_name = cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return from_string(data)
        except (DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
            return Malformed(type_name, str(exc) or type(exc).__name__)

    return deserialize


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: int  # _STRING, _ENUM or _MESSAGE (of a map's values; -1: values unchecked)
    repeated: bool
    map_key_string: bool  # a map<string, …>: keys are checked too
    is_map: bool
    enum_values: frozenset[int]


# Descriptor → the fields worth visiting (string, enum, message holding either).
_plans: dict[Any, tuple[_Field, ...]] = {}


def _kind(field: Any) -> int | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _STRING
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return _MESSAGE
    return None


def _is_map(field: Any) -> bool:
    msg = field.message_type
    return msg is not None and msg.GetOptions().map_entry


def _relevant(desc: Any, seen: set[Any]) -> bool:
    """Whether a message type holds, at any depth, a string or an enum field."""
    if desc in _plans:
        return bool(_plans[desc])
    if desc in seen:
        return True  # recursive type: assume it does (the plan of the root decides)
    seen.add(desc)
    for field in desc.fields:
        kind = _kind(field)
        if kind in (_STRING, _ENUM):
            return True
        if kind == _MESSAGE and _relevant(field.message_type, seen):
            return True
    return False


def _plan(desc: Any) -> tuple[_Field, ...]:
    plan = _plans.get(desc)
    if plan is not None:
        return plan
    fields: list[_Field] = []
    for field in desc.fields:
        kind = _kind(field)
        if kind is None:
            continue
        repeated = field.is_repeated
        if kind == _MESSAGE and _is_map(field):
            entry = field.message_type
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            value_kind = _kind(value)
            key_string = key.type == FieldDescriptor.TYPE_STRING
            if value_kind == _MESSAGE and not _relevant(value.message_type, set()):
                value_kind = None
            if value_kind is None and not key_string:
                continue
            fields.append(
                _Field(
                    name=field.name,
                    kind=-1 if value_kind is None else value_kind,
                    repeated=False,
                    map_key_string=key_string,
                    is_map=True,
                    enum_values=_enum_values(value),
                )
            )
            continue
        if kind == _MESSAGE and not _relevant(field.message_type, set()):
            continue
        fields.append(
            _Field(
                name=field.name,
                kind=kind,
                repeated=repeated,
                map_key_string=False,
                is_map=False,
                enum_values=_enum_values(field),
            )
        )
    plan = tuple(fields)
    _plans[desc] = plan
    return plan


def _enum_values(field: Any) -> frozenset[int]:
    enum = field.enum_type
    return frozenset(enum.values_by_number) if enum is not None else frozenset()


def _show(key: object) -> str:
    """A map key as written in a field path (control characters escaped)."""
    text = str(key)
    return repr(text)[1:-1] if _CONTROL.search(text) else text


def _bad_text(path: str, value: str) -> InvalidArgument:
    match = _CONTROL.search(value)
    char = f"U+{ord(match.group()):04X}" if match else "a control character"
    return InvalidArgument(
        f"{path} contains a control character ({char}); text may hold tab, newline and "
        "carriage return but no NUL or other control characters",
        field=path,
    )


def _bad_enum(path: str, number: int) -> InvalidArgument:
    return InvalidArgument(f"{path} is {number}, which is not a defined value", field=path)


def _check_value(field: _Field, path: str, value: Any) -> None:
    kind = field.kind
    if kind == _STRING:
        if _CONTROL.search(value):
            raise _bad_text(path, value)
    elif kind == _ENUM:
        if value not in field.enum_values:
            raise _bad_enum(path, value)
    elif kind == _MESSAGE:
        _walk(value, path + ".")


def _walk(message: Message, prefix: str) -> None:
    plan = _plans.get(message.DESCRIPTOR)
    if plan is None:
        plan = _plan(message.DESCRIPTOR)
    for field in plan:
        name = field.name
        if field.is_map:
            entries = getattr(message, name)
            if not entries:
                continue
            for key, value in entries.items():
                path = f"{prefix}{name}[{_show(key)}]"
                if field.map_key_string and _CONTROL.search(key):
                    raise _bad_text(path, key)
                if field.kind >= 0:
                    _check_value(field, path, value)
        elif field.repeated:
            values: Iterable[Any] = getattr(message, name)
            for i, value in enumerate(values):
                _check_value(field, f"{prefix}{name}[{i}]", value)
        elif field.kind == _MESSAGE:
            if message.HasField(name):
                _walk(getattr(message, name), f"{prefix}{name}.")
        else:
            value = getattr(message, name)
            if value:  # "" and 0 (always a defined proto3 enum value) are fine
                _check_value(field, prefix + name, value)


def check(message: Message) -> None:
    """Raise InvalidArgument (naming the field path) if `message` holds text with a
    control character other than tab/newline/carriage return, or an undefined enum."""
    _walk(message, "")


def check_request(request: Any) -> None:
    """`check` for what the wrapped deserializer returned (a message or `Malformed`)."""
    if isinstance(request, Malformed):
        raise request.error()
    check(request)


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream whose every message goes through `check_request`."""
    async for request in requests:
        check_request(request)
        yield request
