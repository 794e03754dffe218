"""Generic request validation (services/common/validate.py): the descriptor walk on its
own, then through the RPC wrapper on loopback (malformed bytes, control characters and
undefined enums answer INVALID_ARGUMENT with ErrorInfo and the field at fault)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

import aivera
from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2
from aivera.common.v1 import common_pb2
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import clones_pb2
from services.common import validate
from services.common.config import CommonSettings
from services.common.errors import InvalidArgument
from services.common.server import App
from tests.common.test_runtime import SlowDownload, make_spec
from tests.helpers.errors import bad_field, error_info
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring

# -- a test schema: nesting, repetition, maps, enums, bytes, oneof and recursion ----------

F = descriptor_pb2.FieldDescriptorProto
PKG = "aivera.test.validate"


def _field(name: str, number: int, kind: int, type_name: str = "", *, repeated: bool = False,
           oneof: int | None = None) -> F:  # fmt: skip
    out = F(name=name, number=number, type=kind)  # type: ignore[arg-type]
    if type_name:
        out.type_name = type_name
    out.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    if oneof is not None:
        out.oneof_index = oneof
    return out


def _map_entry(name: str, key: int, value: int, value_type: str = "") -> Any:
    entry = descriptor_pb2.DescriptorProto(name=name)
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, key), _field("value", 2, value, value_type)])
    return entry


def _schema() -> tuple[type[Message], type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="aivera_test_validate.proto", package=PKG, syntax="proto3"
    )
    color = file.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)
    enum, inner_t, outer_t = f".{PKG}.Color", f".{PKG}.Inner", f".{PKG}.Outer"
    inner = file.message_type.add(name="Inner")
    inner.field.extend(
        [
            _field("text", 1, F.TYPE_STRING),
            _field("color", 2, F.TYPE_ENUM, enum),
            _field("blob", 3, F.TYPE_BYTES),
            _field("colors", 4, F.TYPE_ENUM, enum, repeated=True),
        ]
    )
    outer = file.message_type.add(name="Outer")
    outer.nested_type.extend(
        [
            _map_entry("LabelsEntry", F.TYPE_STRING, F.TYPE_STRING),
            _map_entry("ByNameEntry", F.TYPE_STRING, F.TYPE_MESSAGE, inner_t),
            _map_entry("ByIdEntry", F.TYPE_INT32, F.TYPE_ENUM, enum),
        ]
    )
    outer.oneof_decl.add(name="choice")
    outer.field.extend(
        [
            _field("title", 1, F.TYPE_STRING),
            _field("inner", 2, F.TYPE_MESSAGE, inner_t),
            _field("messages", 3, F.TYPE_MESSAGE, inner_t, repeated=True),
            _field("labels", 4, F.TYPE_MESSAGE, f"{outer_t}.LabelsEntry", repeated=True),
            _field("by_name", 5, F.TYPE_MESSAGE, f"{outer_t}.ByNameEntry", repeated=True),
            _field("by_id", 6, F.TYPE_MESSAGE, f"{outer_t}.ByIdEntry", repeated=True),
            _field("tags", 7, F.TYPE_STRING, repeated=True),
            _field("data", 8, F.TYPE_BYTES),
            _field("color", 9, F.TYPE_ENUM, enum),
            _field("child", 10, F.TYPE_MESSAGE, outer_t),
            _field("note", 11, F.TYPE_STRING, oneof=0),
            _field("picked", 12, F.TYPE_MESSAGE, inner_t, oneof=0),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PKG}.Outer")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PKG}.Inner")),
    )


Outer, Inner = _schema()


def fault(message: Message) -> str:
    """The field path `check` refuses, or '' when it accepts the message."""
    try:
        validate.check(message)
    except InvalidArgument as exc:
        assert exc.field is not None and exc.metadata["field"] == exc.field
        return exc.field
    return ""


# -- the walk -----------------------------------------------------------------------------


def test_clean_text_with_tab_newline_return_and_unicode_passes() -> None:
    text = "Zeile 1\r\nline\t2 — ünïcødé 🚀 \u2028 \x7f"
    msg = Outer(
        title=text,
        inner=Inner(text=text, color=1, colors=[0, 1]),
        messages=[Inner(text=text)] * 3,
        labels={"k": text},
        by_name={"n": Inner(text=text)},
        by_id={7: 1},
        tags=[text, ""],
        note=text,
        child=Outer(title=text, child=Outer(inner=Inner(text=text))),
    )
    assert fault(msg) == ""
    assert fault(Outer()) == ""


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0e", "\x1b", "\x1f"])
def test_every_c0_control_but_tab_newline_formfeed_return_is_refused(char: str) -> None:
    assert fault(Outer(title=f"a{char}b")) == "title"


def test_page_breaks_from_pdf_text_are_allowed() -> None:
    assert fault(Outer(title="page 1\x0cpage 2")) == ""


def test_control_characters_are_found_at_any_depth() -> None:
    assert fault(Outer(inner=Inner(text="\x00"))) == "inner.text"
    assert fault(Outer(messages=[Inner(), Inner(), Inner(text="x\x00")])) == "messages[2].text"
    assert fault(Outer(tags=["ok", "no\x00"])) == "tags[1]"
    assert fault(Outer(labels={"k": "v\x00"})) == "labels[k]"
    assert fault(Outer(labels={"k\x00": "v"})) == "labels[k\\x00]"
    assert fault(Outer(by_name={"n": Inner(text="\x00")})) == "by_name[n].text"
    assert fault(Outer(note="\x00")) == "note"
    assert fault(Outer(picked=Inner(text="\x00"))) == "picked.text"
    deep = Outer(child=Outer(child=Outer(messages=[Inner(text="\x01")])))
    assert fault(deep) == "child.child.messages[0].text"


def test_bytes_fields_are_not_text() -> None:
    blob = bytes(range(32)) + b"\xff\xfe"
    assert fault(Outer(data=blob, inner=Inner(blob=blob), messages=[Inner(blob=blob)])) == ""


def test_undefined_enum_values_are_refused_where_they_stand() -> None:
    assert fault(Outer(color=1)) == ""
    assert fault(Outer(color=5)) == "color"
    assert fault(Outer(color=-1)) == "color"
    assert fault(Outer(inner=Inner(color=2))) == "inner.color"
    assert fault(Outer(messages=[Inner(colors=[1, 0, 9])])) == "messages[0].colors[2]"
    assert fault(Outer(by_id={3: 4})) == "by_id[3]"
    # Also when the number arrives on the wire from an older/newer client.
    wire = Outer(inner=Inner(color=1)).SerializeToString().replace(b"\x10\x01", b"\x10\x2a")
    assert fault(Outer.FromString(wire)) == "inner.color"


def test_error_names_the_character_and_the_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate.check(Outer(messages=[Inner(text="a\x00")]))
    assert "messages[0].text" in info.value.message and "U+0000" in info.value.message
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_deserializer_turns_undecodable_bytes_into_malformed() -> None:
    deserialize = validate.deserializer(Outer)
    good = Outer(title="t", data=b"\xff")
    assert deserialize(good.SerializeToString()) == good
    assert deserialize(b"") == Outer()
    bad_utf8 = b"\x0a\x02\xff\xfe"  # title = invalid UTF-8
    for data in (b"\xff\xff\xff", b"\x0a\x05ab", bad_utf8, b"\x52" + b"\x80" * 11):
        result = deserialize(data)
        assert isinstance(result, validate.Malformed), data
        with pytest.raises(InvalidArgument) as info:
            validate.check_request(result)
        assert PKG + ".Outer" in info.value.message


def test_real_request_types_walk() -> None:
    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_DOCUMENTS, filename="a.txt", labels={"k": "v\x00"}
    )
    assert fault(storage_pb2.UploadRequest(header=header)) == "header.labels[k]"
    undefined = storage_pb2.UploadHeader(bucket=99)  # type: ignore[arg-type]
    assert fault(storage_pb2.UploadRequest(header=undefined)) == "header.bucket"
    assert fault(storage_pb2.UploadRequest(chunk=b"\x00" * 64)) == ""


# -- through the RPC wrapper ------------------------------------------------------------


class Storage(SlowDownload):
    """Download (from the runtime tests) plus an Upload that reads the whole stream."""

    async def Upload(
        self, requests: AsyncIterator[storage_pb2.UploadRequest], ctx: Any
    ) -> storage_pb2.File:
        size = 0
        async for request in requests:
            size += len(request.chunk)
        return storage_pb2.File(size_bytes=size)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture
async def app(keyring: Keyring, database_url: str) -> AsyncIterator[App]:
    settings = CommonSettings(
        database_url=database_url,  # type: ignore[arg-type]
    )
    async with running(make_spec(Storage()), settings, verifier=keyring.verifier()) as app:
        yield app


def _invalid(err: grpc.aio.AioRpcError, domain: str) -> None:
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
    info = error_info(err)
    assert info.reason == "INVALID_ARGUMENT" and info.domain == domain


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x12\x05ab", b"\x0a"])
async def test_malformed_request_bytes_answer_invalid_argument(app: App, data: bytes) -> None:
    async with channel(app) as ch:
        call = ch.unary_unary(
            "/aivera.auth.v1.AuthService/GetJwks",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(data)
        _invalid(info.value, "auth.aivera.dev")
        assert "not a valid aivera.auth.v1.GetJwksRequest" in (info.value.details() or "")
        # A well-formed call on the same channel still works.
        await auth_pb2_grpc.AuthServiceStub(ch).GetJwks(auth_pb2.GetJwksRequest())


async def test_invalid_utf8_in_a_string_field_is_invalid_argument(
    app: App, keyring: Keyring
) -> None:
    token = keyring.mint(str(uuid.uuid4()))
    async with channel(app) as ch:
        call = ch.unary_unary("/aivera.auth.v1.AuthService/SetProviderKey")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\x12\x03\xff\xfe\xfd", metadata=bearer(token))  # api_key = bad UTF-8
        _invalid(info.value, "auth.aivera.dev")


async def test_nul_in_a_string_field_names_the_field(app: App, keyring: Keyring) -> None:
    token = keyring.mint(str(uuid.uuid4()))
    async with channel(app) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(api_key="abc\x00def"), metadata=bearer(token)
            )
        _invalid(info.value, "auth.aivera.dev")
        assert bad_field(info.value) == "api_key"
        assert error_info(info.value).metadata["field"] == "api_key"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(provider=77, api_key="abcdefgh"),  # type: ignore[arg-type]
                metadata=bearer(token),
            )
        assert bad_field(info.value) == "provider"


async def test_validation_comes_after_the_access_check(app: App) -> None:
    async with channel(app) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(auth_pb2.SetProviderKeyRequest(api_key="\x00"))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_client_stream_is_checked_message_by_message(app: App, keyring: Keyring) -> None:
    md = bearer(keyring.mint(str(uuid.uuid4())))
    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_DOCUMENTS, filename="a.txt", labels={"k": "v"}
    )

    def upload(bad_header: storage_pb2.UploadHeader) -> Iterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(header=bad_header)
        yield storage_pb2.UploadRequest(chunk=b"\x00\x01")

    async with channel(app) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        done = await stub.Upload(upload(header), metadata=md)
        assert done.size_bytes == 2  # bytes chunks are never checked as text
        bad = storage_pb2.UploadHeader(bucket=storage_pb2.BUCKET_DOCUMENTS, filename="a\x00.txt")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Upload(upload(bad), metadata=md)
        _invalid(info.value, "storage.aivera.dev")
        assert bad_field(info.value) == "header.filename"

        raw = ch.stream_unary("/aivera.storage.v1.StorageService/Upload")
        good = storage_pb2.UploadRequest(header=header).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(iter([good, b"\xff\xff\xff"]), metadata=md)
        _invalid(info.value, "storage.aivera.dev")


# -- rules declared in the contract (aivera.common.v1.rules) -------------------------------

RULES_PKG = "aivera.test.rules"


def _ruled(field: F, **rules: Any) -> F:
    ext = field.options.Extensions[common_pb2.rules]
    for key, value in rules.items():
        setattr(ext, key, value)
    return field


def _rules_schema() -> type[Message]:
    """A message with one field per rule kind, nested, repeated and map fields included.
    In the default pool: that is where the `rules` extension of option bytes is parsed."""
    file = descriptor_pb2.FileDescriptorProto(
        name="aivera_test_rules.proto", package=RULES_PKG, syntax="proto3"
    )
    item_t, blob_t, ruled_t = (f".{RULES_PKG}.{n}" for n in ("Item", "Blob", "Ruled"))
    item = file.message_type.add(name="Item")
    item.field.append(_ruled(_field("label", 1, F.TYPE_STRING), max_len=3))
    blob = file.message_type.add(name="Blob")  # nothing the walk reads: presence only
    blob.field.append(_field("data", 1, F.TYPE_BYTES))
    ruled = file.message_type.add(name="Ruled")
    ruled.nested_type.append(_map_entry("LabelsEntry", F.TYPE_STRING, F.TYPE_STRING))
    ruled.field.extend(
        [
            _ruled(_field("name", 1, F.TYPE_STRING), max_len=5, required=True),
            _ruled(_field("code", 2, F.TYPE_STRING), min_len=2),
            _ruled(_field("id", 3, F.TYPE_STRING), uuid=True),
            _ruled(_field("ids", 4, F.TYPE_STRING, repeated=True), uuid=True),
            _ruled(_field("page_size", 5, F.TYPE_INT32), min=0, max=1000),
            _ruled(_field("count", 6, F.TYPE_INT64), min=1),
            _ruled(_field("blob", 7, F.TYPE_MESSAGE, blob_t), required=True),
            _field("items", 8, F.TYPE_MESSAGE, item_t, repeated=True),
            _ruled(
                _field("labels", 9, F.TYPE_MESSAGE, f"{ruled_t}.LabelsEntry", repeated=True),
                max_len=4,
            ),
            _ruled(_field("tags", 10, F.TYPE_STRING, repeated=True), required=True),
            _field("child", 11, F.TYPE_MESSAGE, ruled_t),
            _field("plain", 12, F.TYPE_INT32),  # no rules: never looked at
        ]
    )
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(f"{RULES_PKG}.Ruled")
    except KeyError:
        pool.Add(file)
        desc = pool.FindMessageTypeByName(f"{RULES_PKG}.Ruled")
    return message_factory.GetMessageClass(desc)


Ruled = _rules_schema()
ID = "7b0c6a52-3c3f-4a77-9f1e-0e6a2f5c1d20"


def ruled(**fields: Any) -> Message:
    """A Ruled message that passes every rule, with `fields` changed."""
    msg = Ruled(name="abc", count=1, tags=["t"])
    msg.blob.SetInParent()  # type: ignore[attr-defined]
    for key, value in fields.items():
        target = getattr(msg, key)
        if isinstance(value, list):
            del target[:]
            target.extend(value)
        elif isinstance(value, dict):
            target.update(value)
        else:
            setattr(msg, key, value)
    return msg


def refusal(message: Message) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        validate.check(message)
    return info.value


def test_a_message_within_every_rule_passes() -> None:
    assert fault(ruled()) == ""
    full = ruled(code="ab", id=ID, ids=[ID, ID.upper()], page_size=1000, labels={"k": "vvvv"})
    full.items.add(label="abc")  # type: ignore[attr-defined]
    assert fault(full) == ""


def test_max_len_counts_characters_and_accepts_the_boundary() -> None:
    assert fault(ruled(name="abcde")) == ""
    assert fault(ruled(name="ééééé")) == ""  # 10 bytes, 5 characters
    err = refusal(ruled(name="abcdef"))
    assert err.field == "name" and "longer than 5 characters" in err.message
    assert err.metadata["limit"] == "max_len" and err.metadata["value"] == "5"


def test_min_len_applies_to_non_empty_text() -> None:
    assert fault(ruled(code="")) == ""  # emptiness is `required`'s business
    assert fault(ruled(code="ab")) == ""
    assert fault(ruled(code="a")) == "code"


def test_required_text_must_not_be_empty_or_blank() -> None:
    assert fault(ruled(name="")) == "name"
    assert fault(ruled(name=" \t ")) == "name"
    assert "is required" in refusal(ruled(name="")).message


def test_required_message_and_repeated_fields_must_be_present() -> None:
    msg = ruled()
    msg.ClearField("blob")
    assert fault(msg) == "blob"
    assert fault(ruled(tags=[])) == "tags"


@pytest.mark.parametrize(
    ("value", "path"), [(-1, "page_size"), (0, ""), (1000, ""), (1001, "page_size")]
)
def test_integer_range_is_inclusive(value: int, path: str) -> None:
    assert fault(ruled(page_size=value)) == path


def test_an_integer_minimum_applies_to_zero_too() -> None:
    err = refusal(ruled(count=0))
    assert err.field == "count" and "at least 1" in err.message
    assert err.metadata["limit"] == "min"
    assert fault(ruled(count=2**40)) == ""  # no max declared


def test_uuid_ids_are_checked_when_set() -> None:
    assert fault(ruled(id="")) == ""
    assert fault(ruled(id=ID)) == ""
    err = refusal(ruled(id="nope"))
    assert err.field == "id" and "not a valid id" in err.message
    assert fault(ruled(ids=[ID, "x"])) == "ids[1]"


def test_rules_apply_in_nested_repeated_messages_and_map_values() -> None:
    msg = ruled()
    msg.items.add(label="ok")  # type: ignore[attr-defined]
    msg.items.add(label="long")  # type: ignore[attr-defined]
    assert fault(msg) == "items[1].label"
    assert fault(ruled(labels={"k": "12345"})) == "labels[k]"
    nested = ruled()
    nested.child.name = "abc"  # type: ignore[attr-defined]
    nested.child.count = 1  # type: ignore[attr-defined]
    nested.child.tags.append("t")  # type: ignore[attr-defined]
    assert fault(nested) == "child.blob"  # the child's own required field


def test_control_characters_are_still_refused_on_fields_with_rules() -> None:
    assert fault(ruled(name="a\x00b")) == "name"


def test_the_plan_keeps_unannotated_scalars_out() -> None:
    names = {f.name for f in validate._plan(Ruled.DESCRIPTOR)}
    assert "plain" not in names and {"page_size", "count", "blob"} <= names


def test_declared_contract_rules_are_enforced() -> None:
    assert fault(chat_pb2.GetChatRequest(id="nope")) == "id"
    assert fault(chat_pb2.GetChatRequest()) == "id"
    assert fault(chat_pb2.GetChatRequest(id=ID)) == ""
    # AIP-158: a page size over the maximum is coerced to it (pages.py), never refused.
    assert fault(chat_pb2.ListChatsRequest(page_size=-1)) == "page_size"
    assert fault(chat_pb2.ListChatsRequest(page_size=100_000)) == ""
    assert fault(clones_pb2.CreateCloneRequest(name="x" * 200)) == ""
    assert fault(clones_pb2.CreateCloneRequest(name="x" * 201)) == "name"
    assert fault(clones_pb2.CreateCloneRequest(name="")) == "name"
    assert fault(clones_pb2.CreateCloneRequest(name="c", persona_prompt="p" * 8001)) == (
        "persona_prompt"
    )


def _contract_fields() -> Iterator[Any]:
    """Every field of every message of the generated `aivera` contracts."""

    def fields(desc: Any) -> Iterator[Any]:
        yield from desc.fields
        for nested in desc.nested_types:
            yield from fields(nested)

    for info in pkgutil.walk_packages(aivera.__path__, "aivera."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            for desc in module.DESCRIPTOR.message_types_by_name.values():
                yield from fields(desc)


def test_every_declared_rule_is_one_the_walk_applies() -> None:
    annotated = [f for f in _contract_fields() if validate.rules_of(f) is not None]
    assert len(annotated) > 50
    problems = {f.full_name: validate.rule_problems(f) for f in annotated}
    assert {k: v for k, v in problems.items() if v} == {}
    for field in annotated:  # and each one's message gets a plan that includes it
        plan = validate._plan(field.containing_type)
        assert field.name in {f.name for f in plan}, field.full_name


def test_rules_that_do_not_fit_the_type_are_reported() -> None:
    by_name = Ruled.DESCRIPTOR.fields_by_name
    assert validate.rule_problems(by_name["plain"]) == []
    file = descriptor_pb2.FileDescriptorProto(
        name="aivera_test_bad_rules.proto", package=RULES_PKG + ".bad", syntax="proto3"
    )
    bad = file.message_type.add(name="Bad")
    bad.field.extend(
        [
            _ruled(_field("n", 1, F.TYPE_INT32), max_len=3),
            _ruled(_field("s", 2, F.TYPE_STRING), min=1),
            _ruled(_field("b", 3, F.TYPE_BOOL), required=True),
            _ruled(_field("r", 4, F.TYPE_INT32), min=5, max=1),
        ]
    )
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(f"{RULES_PKG}.bad.Bad")
    except KeyError:
        pool.Add(file)
        desc = pool.FindMessageTypeByName(f"{RULES_PKG}.bad.Bad")
    for name in ("n", "s", "b", "r"):
        assert validate.rule_problems(desc.fields_by_name[name]), name


async def test_a_declared_rule_answers_invalid_argument_through_the_wrapper(
    app: App, keyring: Keyring
) -> None:
    md = bearer(keyring.mint(str(uuid.uuid4())))
    async with channel(app) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(
                _drain(stub.Download(storage_pb2.DownloadRequest(id="x"), metadata=md)), 10
            )
        _invalid(info.value, "storage.aivera.dev")
        assert bad_field(info.value) == "id"
        assert "not a valid id" in (info.value.details() or "")
        chunks = [
            r
            async for r in stub.Download(storage_pb2.DownloadRequest(id=ID, length=1), metadata=md)
        ]
        assert len(chunks) == 1


async def _drain(stream: Any) -> list[Any]:
    return [message async for message in stream]
