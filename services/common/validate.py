"""Generic request validation, applied once by the RPC wrapper to every request message.

Two layers, both pure and independent of gRPC:

- `deserializer(cls)`: the request deserializer grpc calls before our handler runs. A
  malformed message (bad wire format, invalid UTF-8 in a proto3 string) would make grpc
  answer UNKNOWN; instead it becomes a `Malformed` sentinel the wrapper answers with
  INVALID_ARGUMENT.
- `check(message)`: walks the message by its descriptor and refuses, naming the field
  path (`header.labels[k]`, `messages[2].text`), text with a NUL or another C0 control
  character (tab, newline, form feed and carriage return are text) and enum numbers that are not
  defined values (proto3 enums are open: the wire accepts any number). It also enforces the
  rules a contract declares on a field with the `aivera.common.v1.rules` option (lengths,
  required, integer ranges, UUID ids; see FieldRules in common.proto).

The walk only visits string, enum and message fields and integers that declare rules, from a
plan cached per descriptor; `bytes` fields and other scalars are never looked at.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from aivera.common.v1 import common_pb2
from services.common.errors import InvalidArgument

# C0 controls except \t (0x09), \n (0x0a), \f (0x0c: page breaks in text pasted from
# PDFs) and \r (0x0d).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f]")

_STRING = 0
_ENUM = 1
_MESSAGE = 2
_INT = 3  # only fields that declare rules

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


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
class Rules:
    """A field's declared `aivera.common.v1.rules`, read once from its descriptor."""

    max_len: int
    min_len: int
    required: bool
    min: int | None
    max: int | None
    uuid: bool


def rules_of(field: Any) -> Rules | None:
    """The rules declared on a field, or None when it declares none."""
    opts = field.GetOptions()
    if not opts.HasExtension(common_pb2.rules):
        return None
    r = opts.Extensions[common_pb2.rules]
    return Rules(
        max_len=r.max_len,
        min_len=r.min_len,
        required=r.required,
        min=r.min if r.HasField("min") else None,
        max=r.max if r.HasField("max") else None,
        uuid=r.uuid,
    )


def rule_problems(field: Any) -> list[str]:
    """Why the rules declared on `field` do not fit its type (empty when they do, or when
    there are none). A rule the walk would not apply must not pass review silently."""
    rules = rules_of(field)
    if rules is None:
        return []
    problems: list[str] = []
    is_map = _is_map(field)
    target = field.message_type.fields_by_name["value"] if is_map else field
    text = target.type == FieldDescriptor.TYPE_STRING
    integer = target.type in _INTEGERS
    message = _kind(target) == _MESSAGE
    if (rules.max_len or rules.min_len or rules.uuid) and not text:
        problems.append("max_len/min_len/uuid apply to string fields only")
    if (rules.min is not None or rules.max is not None) and not integer:
        problems.append("min/max apply to integer fields only")
    if rules.required and not (text or message) and not field.is_repeated:
        problems.append("required applies to string, message and repeated fields only")
    if rules.max_len and rules.min_len > rules.max_len:
        problems.append("min_len is greater than max_len")
    if rules.min is not None and rules.max is not None and rules.min > rules.max:
        problems.append("min is greater than max")
    if rules == Rules(0, 0, False, None, None, False):
        problems.append("the rules option is set but declares nothing")
    return problems


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: int  # _STRING, _ENUM, _MESSAGE or _INT (of a map's values; -1: values unchecked)
    repeated: bool
    map_key_string: bool  # a map<string, …>: keys are checked too
    is_map: bool
    enum_values: frozenset[int]
    rules: Rules | None = None  # declared rules (for a map: of its values)


# Descriptor → the fields worth visiting (string, enum, message holding either).
_plans: dict[Any, tuple[_Field, ...]] = {}


def _kind(field: Any) -> int | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _STRING
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return _MESSAGE
    if field.type in _INTEGERS and field.GetOptions().HasExtension(common_pb2.rules):
        return _INT
    return None


def _is_map(field: Any) -> bool:
    msg = field.message_type
    return msg is not None and msg.GetOptions().map_entry


def _relevant(desc: Any, seen: set[Any]) -> bool:
    """Whether a message type holds, at any depth, a string or an enum field or a field that
    declares rules."""
    if desc in _plans:
        return bool(_plans[desc])
    if desc in seen:
        return True  # recursive type: assume it does (the plan of the root decides)
    seen.add(desc)
    for field in desc.fields:
        kind = _kind(field)
        if kind in (_STRING, _ENUM, _INT):
            return True
        if kind == _MESSAGE and field.GetOptions().HasExtension(common_pb2.rules):
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
                    rules=rules_of(field),
                )
            )
            continue
        rules = rules_of(field)
        if kind == _MESSAGE and rules is None and not _relevant(field.message_type, set()):
            continue
        if kind == _MESSAGE and not _relevant(field.message_type, set()):
            kind = -1  # only its presence is checked (required)
        fields.append(
            _Field(
                name=field.name,
                kind=kind,
                repeated=repeated,
                map_key_string=False,
                is_map=False,
                enum_values=_enum_values(field),
                rules=rules,
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


def _required(path: str) -> InvalidArgument:
    return InvalidArgument(f"{path} is required", field=path)


def _check_rules_text(rules: Rules, path: str, value: str) -> None:
    if not value:
        if rules.required:
            raise _required(path)
        return
    if rules.required and not value.strip():
        raise InvalidArgument(f"{path} must not be blank", field=path)
    n = len(value)
    if rules.max_len and n > rules.max_len:
        raise InvalidArgument(
            f"{path} is longer than {rules.max_len} characters",
            field=path,
            metadata={"limit": "max_len", "value": str(rules.max_len)},
        )
    if n < rules.min_len:
        raise InvalidArgument(
            f"{path} is shorter than {rules.min_len} characters",
            field=path,
            metadata={"limit": "min_len", "value": str(rules.min_len)},
        )
    if rules.uuid:
        try:
            uuid.UUID(value)
        except ValueError:
            raise InvalidArgument(f"{path} is not a valid id", field=path) from None


def _check_rules_int(rules: Rules, path: str, value: int) -> None:
    if rules.min is not None and value < rules.min:
        raise InvalidArgument(
            f"{path} is {value}; it must be at least {rules.min}",
            field=path,
            metadata={"limit": "min", "value": str(rules.min)},
        )
    if rules.max is not None and value > rules.max:
        raise InvalidArgument(
            f"{path} is {value}; it must be at most {rules.max}",
            field=path,
            metadata={"limit": "max", "value": str(rules.max)},
        )


def _check_value(field: _Field, path: str, value: Any) -> None:
    kind = field.kind
    if kind == _STRING:
        if _CONTROL.search(value):
            raise _bad_text(path, value)
        if field.rules is not None:
            _check_rules_text(field.rules, path, value)
    elif kind == _INT:
        if field.rules is not None:
            _check_rules_int(field.rules, path, value)
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
                if field.rules is not None and field.rules.required:
                    raise _required(prefix + name)
                continue
            for key, value in entries.items():
                path = f"{prefix}{name}[{_show(key)}]"
                if field.map_key_string and _CONTROL.search(key):
                    raise _bad_text(path, key)
                if field.kind >= 0:
                    _check_value(field, path, value)
        elif field.repeated:
            values: Iterable[Any] = getattr(message, name)
            if field.rules is not None and field.rules.required and not values:
                raise _required(prefix + name)
            for i, value in enumerate(values):
                _check_value(field, f"{prefix}{name}[{i}]", value)
        elif field.kind == _MESSAGE or field.kind == -1:
            if message.HasField(name):
                if field.kind == _MESSAGE:
                    _walk(getattr(message, name), f"{prefix}{name}.")
            elif field.rules is not None and field.rules.required:
                raise _required(prefix + name)
        else:
            value = getattr(message, name)
            # "" and 0 (always a defined proto3 enum value) pass the generic checks; a
            # field with rules is checked empty too (required, an integer's range).
            if value or field.rules is not None:
                _check_value(field, prefix + name, value)


def check(message: Message) -> None:
    """Raise InvalidArgument (naming the field path) if `message` holds text with a
    control character other than tab/newline/carriage return, an undefined enum, or a
    value that breaks a rule its contract declares."""
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
