"""Requests generated from the proto descriptors with hypothesis.

Every field gets values by its type (and, for strings, by its name): hostile text (NUL and
other controls, bidi overrides, noncharacters, combining storms, 70k and 200k characters),
ids (the other user's, the caller's own, random, malformed), page tokens (the other user's
included), extreme integers and floats, undefined enum numbers, long repeated fields, deep
nesting, and FieldMask paths. Some requests go out as bytes that are not a valid message
at all: truncated, random (a few over grpc's 4 MiB cap), or a declared string field
holding invalid UTF-8.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from services.common.access import MethodInfo, method_info

SERVICES = ("auth", "chat", "rag", "storage", "training")

HUGE = "я" * 200_000  # 400 kB of UTF-8: over every text limit, under grpc's 4 MiB cap
OVERSIZE = b"\xfa\x3f" + b"\x80\x80\x80\x03" + b"x" * (6 << 20)  # a 6 MiB unknown field
LONG = "x" * 70_000
HOSTILE_TEXT = [
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "\x1f",
    "\u202eevil.exe\u202dtxt",  # right-to-left override
    "\u200f\u200e\u061c\u2066x\u2069",  # bidi marks and isolates
    "\ufeff\ufffe\uffff",  # BOM and noncharacters
    "\U0010ffff\U000e0001\U000fffff",  # last code point, tag, private use
    "e" + "\u0301" * 5000,  # a combining storm
    "🚀" * 3000,
    "\u2028\u2029\x85",  # line/paragraph separators, NEL
    "../../../etc/passwd",
    "/" * 300,
    "a" * 300 + ".pdf",
    "%s%n%x{0}${{7*7}}",
    "'; DROP TABLE users; --",
    "<script>alert(1)</script>",
    "\\u0000",
    " ",
    "\t\r\n",
    LONG,
    HUGE,
]
FILENAMES = [
    "notes.md",
    "report.pdf",
    "data.jsonl",
    "page.html",
    "a.txt",
    "photo.png",
    "a" * 300 + ".md",  # past 255 bytes with any suffix added
    "я" * 200 + ".txt",
    "../../etc/passwd.md",
    "CON.txt",
]
BAD_IDS = ["", "0", "-1", "00000000-0000-0000-0000-000000000000", "not-a-uuid", "' OR 1=1 --"]
BAD_TOKENS = ["", "x", "eyJ" + "A" * 200, "A" * 10_000, "%%%", "ey.ey.ey"]

INT32 = [0, 1, -1, 2, 7, 50, 100, 1000, 2**31 - 1, -(2**31), 10**6]
INT64 = [*INT32, 2**63 - 1, -(2**63), 2**53 + 1]
UINT32 = [0, 1, 2, 100, 2**32 - 1]
UINT64 = [*UINT32, 2**64 - 1]
BAD_ENUMS = [-1, 99, 2**31 - 1, -(2**31), 1000]
TIMESTAMP_SECONDS = [0, 1, -62135596800, 253402300799, -(2**62), 2**62, 1_700_000_000]


@dataclass(frozen=True)
class Rpc:
    """One RPC of the mesh: where it is served and what it takes."""

    service: str  # service folder: auth, chat, rag, storage, training
    info: MethodInfo
    request: Descriptor
    response: Descriptor

    @property
    def path(self) -> str:
        return self.info.path


def service_descriptors() -> Iterator[tuple[str, ServiceDescriptor]]:
    """Every service of every contract in gen/, with the folder serving it."""
    for folder in SERVICES:
        package = importlib.import_module(f"aivera.{folder}.v1")
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.endswith("_pb2"):
                continue
            pb2 = importlib.import_module(f"aivera.{folder}.v1.{module.name}")
            for service in pb2.DESCRIPTOR.services_by_name.values():
                yield folder, service


def every_rpc() -> list[Rpc]:
    return [
        Rpc(folder, method_info(service, method), method.input_type, method.output_type)
        for folder, service in service_descriptors()
        for method in service.methods
    ]


@dataclass(frozen=True)
class Pools:
    """Values worth putting in id and token fields."""

    ids: dict[str, str]  # the caller's own resources by kind ("chat", "knowledge_base")
    others: dict[str, str]  # another user's
    page_tokens: tuple[str, ...]
    models: tuple[str, ...]


_VERBS = re.compile(
    r"^(Get|Delete|Update|Cancel|Retry|Watch|List|Create|Preview|Promote|Rotate|Add|Remove|"
    r"Attach|Detach|Mark|Send|Edit|Regenerate|Complete|Activate|Estimate)"
)


def _kind_of(field: FieldDescriptor) -> str:
    """The resource kind an id field names: `chat_id` → chat; `id` of GetChatRequest or of
    Chat → chat; `knowledge_base_ids` → knowledge_base; `message_id` → message0."""
    name = field.name
    if name not in ("id", "ids"):
        kind = name.removesuffix("_ids").removesuffix("_id")
        return "message0" if kind == "message" else kind
    container = field.containing_type.name if field.containing_type is not None else ""
    owner = _VERBS.sub("", container).removesuffix("Request")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", owner).lower()


# Fields that name a resource by its kind alone (AIP style), not by an `_id` suffix.
_REFERENCES = frozenset({"image_lora", "reference_image"})


def _is_id(field: FieldDescriptor) -> bool:
    name = field.name
    return name in ("id", "ids", "parent") or name.endswith(("_id", "_ids")) or name in _REFERENCES


# Whether a field is set: mostly, so required fields are there and calls reach handlers.
PRESENT = st.sampled_from([True, True, True, False])
PLAUSIBLE_PRESENT = st.sampled_from([True] * 7 + [False])


def _text(hostile: bool = True) -> st.SearchStrategy[str]:
    plain = st.sampled_from(["", "a", "Привет", "report 2024.pdf", "x" * 200, "é" * 300])
    if not hostile:
        clean = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=24)
        return st.one_of(clean, plain)
    anything = st.text(
        alphabet=st.characters(exclude_categories=["Cs"], max_codepoint=0x10FFFF), max_size=24
    )
    # Mostly text a service should take, so calls get past validation to the handlers.
    return st.one_of(anything, plain, anything, plain, st.sampled_from(HOSTILE_TEXT))


class Generator:
    """Hypothesis strategies for request messages, built from descriptors once."""

    def __init__(self, pools: Pools, *, hostile: bool = True) -> None:
        self.pools = pools
        # Without hostility: clean text and defined enums only, so the call reaches the
        # handler with ids and sizes as the only thing to trip on.
        self.hostile = hostile
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        text = _text(hostile)
        self._text = text
        self._any_id = st.one_of(
            *[st.sampled_from(sorted(p.values())) for p in (pools.ids, pools.others) if p],
            st.uuids().map(str),
        )
        self._bad_id = st.one_of(st.sampled_from(BAD_IDS), text) if hostile else st.nothing()
        self._ids_by_kind: dict[str, st.SearchStrategy[str]] = {}
        self._tokens = st.one_of(
            st.sampled_from(pools.page_tokens or ("",)), st.sampled_from(BAD_TOKENS), text
        )
        self._models = st.one_of(st.sampled_from(pools.models), text)

    # -- scalars --------------------------------------------------------------------------
    def _id(self, field: FieldDescriptor) -> st.SearchStrategy[str]:
        """Ids for a field: mostly of the kind it names (chat_id: a chat; a GetChatRequest's
        or a Chat's id: a chat), the caller's own or the other user's; else any id."""
        kind = _kind_of(field)
        cached = self._ids_by_kind.get(kind)
        if cached is None:
            own = [self.pools.ids[k] for k in (kind,) if k in self.pools.ids]
            other = [self.pools.others[k] for k in (kind,) if k in self.pools.others]
            named = [st.just(v) for v in own * 2 + other]
            cached = st.one_of(*named, self._any_id, self._bad_id)
            self._ids_by_kind[kind] = cached
        return cached

    def _string(self, field: FieldDescriptor) -> st.SearchStrategy[str]:
        if _is_id(field):
            return self._id(field)
        if "token" in field.name:
            return self._tokens
        if field.name == "filename":
            return st.one_of(st.sampled_from(FILENAMES), self._text)
        if field.name == "sha256" and not self.hostile:
            return st.just("")  # a wrong digest would end every plausible upload early
        if field.name == "key" and not self.hostile:  # map keys (labels)
            return st.sampled_from(["env", "kind", "team.a", "x-1"])
        if field.name in ("base_model", "model", "init_model_id") or field.name.endswith("_model"):
            return self._models
        return self._text

    def _scalar(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        t = field.type
        if t == FieldDescriptor.TYPE_STRING:
            return self._string(field)
        if t == FieldDescriptor.TYPE_BYTES:
            return st.one_of(
                st.binary(max_size=64),
                st.sampled_from(
                    [b"", b"%PDF-1.7\n" + bytes(range(256)) * 8, b"\x00" * 70_000, b"{" * 5000]
                ),
            )
        if t == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if t == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            defined = sorted(field.enum_type.values_by_number)
            good = st.sampled_from(defined)
            if not self.hostile:
                return good
            return st.one_of(good, good, good, st.sampled_from(BAD_ENUMS))
        if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if t == FieldDescriptor.TYPE_FLOAT:
                return st.floats(width=32, allow_nan=True, allow_infinity=True)
            return st.floats(allow_nan=True, allow_infinity=True)
        if t in (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SFIXED32,
        ):
            return st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))
        if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            return st.sampled_from(UINT32)
        if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            return st.sampled_from(UINT64)
        if t in (
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_SFIXED64,
        ):
            return st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))
        if t in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            assert field.message_type is not None
            return self.message(field.message_type, depth + 1)
        raise AssertionError(f"unhandled field type {t} of {field.full_name}")

    # -- messages -------------------------------------------------------------------------
    def message(self, desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (desc.full_name, min(depth, 4))
        cached = self._messages.get(key)
        if cached is None:
            cached = self._build(desc, key[1])
            self._messages[key] = cached
        return cached

    def _build(self, desc: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(desc)
        if depth >= 4:
            return st.builds(cls)
        special = self._well_known(desc, cls)
        if special is not None:
            return special
        plain: list[tuple[FieldDescriptor, st.SearchStrategy[Any]]] = []
        oneofs: list[list[tuple[FieldDescriptor, st.SearchStrategy[Any]]]] = []
        for oneof in desc.oneofs:
            if oneof.fields and not (len(oneof.fields) == 1 and oneof.name.startswith("_")):
                oneofs.append([(f, st.deferred(self._field_value(f, depth))) for f in oneof.fields])
        in_oneof = {f.name for group in oneofs for f, _ in group}
        for f in desc.fields:
            if f.name not in in_oneof:
                plain.append((f, st.deferred(self._field_value(f, depth))))

        present = PRESENT if self.hostile else PLAUSIBLE_PRESENT

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            msg = cls()
            for f, strategy in plain:
                if draw(present):
                    _assign(msg, f, draw(strategy))
            for group in oneofs:
                pick = draw(st.integers(-1, len(group) - 1))
                if pick >= 0:
                    f, strategy = group[pick]
                    _assign(msg, f, draw(strategy))
            return msg

        return build()

    def stream(self, desc: Descriptor) -> st.SearchStrategy[list[Message]]:
        """A client stream shaped as the contract asks (a request whose first oneof holds
        a header, then a payload): the header message, then 1–2 payload messages."""
        cls = message_factory.GetMessageClass(desc)
        head_field, body_field = desc.oneofs[0].fields[:2]

        def one(field: FieldDescriptor, value: Any) -> Message:
            msg = cls()
            _assign(msg, field, value)
            return msg

        def shaped(parts: tuple[Any, list[Any]]) -> list[Message]:
            header, payloads = parts
            if "size_bytes" in header.DESCRIPTOR.fields_by_name and header.size_bytes >= 0:
                # Mostly the size the payload has, so the upload gets past the count.
                header.size_bytes = sum(len(p) for p in payloads if isinstance(p, bytes))
            return [one(head_field, header), *(one(body_field, p) for p in payloads)]

        head = st.deferred(self._field_value(head_field, 0))
        body = st.deferred(self._field_value(body_field, 0))
        return st.tuples(head, st.lists(body, min_size=1, max_size=2)).map(shaped)

    def _field_value(self, field: FieldDescriptor, depth: int) -> Any:
        """A thunk for st.deferred: recursive types resolve lazily."""

        def make() -> st.SearchStrategy[Any]:
            msg = field.message_type
            if msg is not None and msg.GetOptions().map_entry:
                key = self._scalar(msg.fields_by_name["key"], depth)
                value = self._scalar(msg.fields_by_name["value"], depth)
                return st.dictionaries(key, value, max_size=3)
            one = self._scalar(field, depth)
            if field.is_repeated:
                return st.one_of(
                    st.lists(one, max_size=3),
                    one.map(_many),  # a long list of one value
                )
            return one

        return make

    def _well_known(self, desc: Descriptor, cls: Any) -> st.SearchStrategy[Message] | None:
        name = desc.full_name
        if name == "google.protobuf.Timestamp":
            return st.builds(
                cls, seconds=st.sampled_from(TIMESTAMP_SECONDS), nanos=st.sampled_from([0, 10**9])
            )
        if name == "google.protobuf.Duration":
            return st.builds(cls, seconds=st.sampled_from(INT64[:8]), nanos=st.just(0))
        if name == "google.protobuf.FieldMask":
            return st.builds(cls, paths=st.lists(self._paths(), max_size=4))
        if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Any"):
            return st.builds(cls)
        return None

    def _paths(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(MASK_PATHS),
            st.sampled_from(["*", "", "id", "user_id", "create_time", "a.b.c", "\x00"]),
            _text(),
        )


# Every field name of every request message: FieldMask paths that exist somewhere.
MASK_PATHS: list[str] = sorted(
    {
        f.name
        for rpc in every_rpc()
        for f in rpc.request.fields
        for sub in ([f.message_type] if f.message_type is not None else [])
        for f in sub.fields
    }
    | {"title", "name", "description", "persona_prompt", "content", "active_model_id"}
)


def _assign(msg: Message, field: FieldDescriptor, value: Any) -> None:
    """Set one field, whatever its kind."""
    name = field.name
    target = getattr(msg, name) if field.is_repeated or _is_message(field) else None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if _is_message(value_field):
                target[k].CopyFrom(v)  # type: ignore[index]
            else:
                target[k] = v  # type: ignore[index]
    elif field.is_repeated:
        if _is_message(field):
            target.extend(value)  # type: ignore[union-attr]
        else:
            target.extend(value)  # type: ignore[union-attr]
    elif _is_message(field):
        target.CopyFrom(value)  # type: ignore[union-attr]
    else:
        setattr(msg, name, value)


def _many(value: Any) -> list[Any]:
    """2000 copies of a small value (a few of a big one: 2000 × 1 MB is no request)."""
    size = value.ByteSize() if isinstance(value, Message) else len(str(value))
    return [value] * (2000 if size < 200 else 2)


def _is_message(field: FieldDescriptor) -> bool:
    return field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)


# -- bytes that are not a valid message ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_fields(desc: Descriptor) -> list[int]:
    return [f.number for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING]


def malformed(kind: str, valid: bytes, desc: Descriptor, noise: bytes) -> bytes:
    """Bytes that no parser should accept as `desc`: cut mid-field, random, or a string
    field holding invalid UTF-8 (a lone continuation byte, an overlong NUL, a surrogate)."""
    if kind == "truncated":
        # A length-delimited field that claims more bytes than follow.
        return valid + b"\x0a\xff\xff\x03" + noise[:3]
    if kind == "random":
        # Now and then one over grpc's 4 MiB message cap (RESOURCE_EXHAUSTED).
        return valid + OVERSIZE if noise[0] % 64 == 0 else b"\xff" + noise
    strings = string_fields(desc) or [1]
    number = strings[len(noise) % len(strings)]
    bad = [b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xff"][len(noise) % 4]
    return valid + _varint(number << 3 | 2) + _varint(len(bad)) + bad
