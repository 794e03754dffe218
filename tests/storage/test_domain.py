"""Pure rules: file names, content sniffing, labels, URL signatures, bucket limits."""

from __future__ import annotations

import time

import pytest

from aivera.storage.v1 import storage_pb2
from services.common.errors import InvalidArgument, ResourceExhausted
from services.storage import sniff
from services.storage.buckets import Buckets, check_labels, check_sha256
from services.storage.config import MiB, StorageSettings
from services.storage.names import sanitize
from services.storage.signing import UrlSigner
from tests.storage.conftest import PDF, PNG, safetensors


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("отчёт за 2024.pdf", "отчёт за 2024.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("a/b/../Документ.md", "Документ.md"),
        ("bad\x00na\x1fme\n.txt", "badname.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("  .hidden.  ", "hidden"),
        ("x..y.json", "x.y.json"),
        ("日本語.txt", "日本語.txt"),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


@pytest.mark.parametrize("raw", ["", "..", "../..", "/", "\x00\x01", " . "])
def test_sanitize_empty_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        sanitize(raw)


def test_sanitize_truncates_keeping_extension_and_room_for_the_partial_suffix() -> None:
    name = sanitize("я" * 300 + ".pdf")
    assert len(name.encode()) <= 240 and name.endswith(".pdf") and name.startswith("яя")
    assert len((name + ".partial").encode()) <= 255  # the local backend's temporary name


def _sniff(data: bytes, name: str) -> str | None:
    s = sniff.Sniffer()
    for i in range(0, len(data), 7):
        s.feed(data[i : i + 7])
    return s.result(name)


@pytest.mark.parametrize(
    ("data", "name", "kind"),
    [
        (PDF, "x.bin", sniff.PDF),
        (PNG, "x.json", sniff.PNG),  # the bytes win over the name
        (b"\xff\xd8\xff\xe0" + bytes(100), "a.png", sniff.JPEG),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(50), "a", sniff.WEBP),
        (safetensors(4096), "model.bin", sniff.SAFETENSORS),
        (bytes(257) + b"ustar\x0000" + bytes(300), "a.tar", sniff.TAR),
        (b'{"a": 1}', "d.json", sniff.JSON),
        (b"\n [1, 2]", "d.json", sniff.JSON),
        (b'{"a": 1}\n{"a": 2}\n', "d.jsonl", sniff.JSONL),
        ("# Заголовок\n".encode(), "n.md", sniff.MARKDOWN),
        (b"<html></html>", "p.HTML", sniff.HTML),
        (b"plain", "notes.txt", sniff.TEXT),
        (b"plain", "noext", sniff.TEXT),
        (b"not json", "d.json", sniff.TEXT),
        (b"\x00\x01\x02binary", "d.txt", None),
        (b"\xc3\x28 bad utf8", "d.txt", None),
        ("ё".encode()[:1], "cut.txt", None),  # truncated multi-byte sequence
        (b"", "empty.txt", sniff.TEXT),  # an empty file is (empty) text
        (b"", "empty.png", sniff.TEXT),
    ],
)
def test_sniff(data: bytes, name: str, kind: str | None) -> None:
    assert _sniff(data, name) == kind


def test_bucket_rules_and_limits() -> None:
    buckets = Buckets(StorageSettings(storage_max_bytes_images=3 * MiB))
    images = buckets.by_name("images")
    assert images.max_bytes == 3 * MiB
    assert buckets.by_name("models").max_bytes == 5 * 1024 * MiB
    assert buckets.by_name("documents").max_bytes == 100 * MiB
    images.check_type(sniff.PNG)
    with pytest.raises(InvalidArgument):
        images.check_type(sniff.PDF)
    with pytest.raises(InvalidArgument):
        images.check_type(None)
    with pytest.raises(ResourceExhausted):
        images.check_declared_size(3 * MiB + 1, field="size_bytes")
    with pytest.raises(InvalidArgument):
        buckets.from_proto(storage_pb2.BUCKET_UNSPECIFIED)
    assert buckets.by_name("datasets").allowed == {sniff.JSONL, sniff.JSON}


def test_labels_and_sha() -> None:
    assert check_labels({"kb_id": "x", "a.b-c": ""}) == {"kb_id": "x", "a.b-c": ""}
    for bad in ({"Upper": "x"}, {"": "x"}, {"k" * 64: "x"}, {"k": "v" * 257}):
        with pytest.raises(InvalidArgument):
            check_labels(bad)
    with pytest.raises(InvalidArgument):
        check_labels({f"k{i}": "v" for i in range(17)})
    assert check_sha256("A" * 64, field="s") == "a" * 64
    with pytest.raises(InvalidArgument):
        check_sha256("xyz", field="s")


def test_url_signature_is_method_bound_and_expires() -> None:
    signer = UrlSigner(b"k" * 32)
    exp = int(time.time()) + 60
    url = signer.sign("http://h:1/", "GET", "abc", exp)
    assert url.startswith("http://h:1/files/abc?exp=")
    sig = url.split("sig=")[1]
    assert signer.verify("GET", "abc", str(exp), sig)
    assert not signer.verify("PUT", "abc", str(exp), sig)
    assert not signer.verify("GET", "abd", str(exp), sig)
    assert not signer.verify("GET", "abc", str(exp + 1), sig)
    assert not signer.verify("GET", "abc", str(exp), sig, now=exp + 1)
    assert not UrlSigner(b"other").verify("GET", "abc", str(exp), sig)
    put = signer.sign("http://h", "PUT", "abc", exp, size=10).split("sig=")[1]
    assert signer.verify("PUT", "abc", str(exp), put, size=10)
    assert not signer.verify("PUT", "abc", str(exp), put, size=11)
