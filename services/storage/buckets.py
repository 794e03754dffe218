"""Buckets: their names, size limits and allowed content types; label rules.

Over a bucket's limit is RESOURCE_EXHAUSTED with reason FILE_TOO_LARGE (metadata `bucket`,
`limit_bytes`); content of a type the bucket does not accept is INVALID_ARGUMENT with
reason UNSUPPORTED_FORMAT (metadata `bucket`, `content_type`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aivera.storage.v1 import storage_pb2
from services.common.errors import InvalidArgument, Reason, ResourceExhausted
from services.storage import sniff
from services.storage.config import StorageSettings


@dataclass(frozen=True, slots=True)
class BucketRule:
    name: str  # "documents"
    proto: storage_pb2.Bucket.ValueType
    max_bytes: int
    allowed: frozenset[str]  # content types

    def check_declared_size(self, size: int, *, field: str) -> None:
        if size < 0:
            raise InvalidArgument(f"{field} must not be negative", field=field)
        if size > self.max_bytes:
            raise too_large(self, f"{size} bytes is over the {self.name} bucket's limit")

    def check_type(self, content_type: str | None) -> str:
        if content_type is None or content_type not in self.allowed:
            what = content_type or "an unrecognised type"
            allowed = ", ".join(sorted(self.allowed))
            raise InvalidArgument(
                f"the content is {what}; the {self.name} bucket accepts {allowed}",
                reason=Reason.UNSUPPORTED_FORMAT,
                metadata={"bucket": self.name, "content_type": content_type or ""},
            )
        return content_type


def too_large(rule: BucketRule, message: str) -> ResourceExhausted:
    """A file over its bucket's limit (declared, or received so far)."""
    return ResourceExhausted(
        f"{message} of {rule.max_bytes} bytes",
        reason=Reason.FILE_TOO_LARGE,
        metadata={"bucket": rule.name, "limit_bytes": str(rule.max_bytes)},
    )


_IMAGES = frozenset({sniff.PNG, sniff.JPEG, sniff.WEBP})

_TYPES: dict[storage_pb2.Bucket.ValueType, tuple[str, frozenset[str]]] = {
    storage_pb2.BUCKET_DOCUMENTS: (
        "documents",
        frozenset({sniff.PDF, sniff.MARKDOWN, sniff.HTML, sniff.JSON, sniff.TEXT}),
    ),
    storage_pb2.BUCKET_IMAGES: ("images", _IMAGES),
    storage_pb2.BUCKET_DATASETS: ("datasets", frozenset({sniff.JSONL, sniff.JSON})),
    storage_pb2.BUCKET_MODELS: ("models", frozenset({sniff.SAFETENSORS, sniff.JSON, sniff.TAR})),
    storage_pb2.BUCKET_TRAINING_IMAGES: ("training-images", _IMAGES),
}


class Buckets:
    """The bucket table, with limits from the settings."""

    def __init__(self, settings: StorageSettings) -> None:
        limits = {
            "documents": settings.storage_max_bytes_documents,
            "images": settings.storage_max_bytes_images,
            "datasets": settings.storage_max_bytes_datasets,
            "models": settings.storage_max_bytes_models,
            "training-images": settings.storage_max_bytes_training_images,
        }
        self._by_proto = {
            value: BucketRule(name, value, limits[name], types)
            for value, (name, types) in _TYPES.items()
        }
        self._by_name = {r.name: r for r in self._by_proto.values()}

    def from_proto(
        self, value: storage_pb2.Bucket.ValueType, *, field: str = "bucket"
    ) -> BucketRule:
        if value == storage_pb2.BUCKET_UNSPECIFIED:
            raise InvalidArgument(f"{field} is required", field=field)
        rule = self._by_proto.get(value)
        if rule is None:
            raise InvalidArgument(f"{field} {value} is not a known bucket", field=field)
        return rule

    def by_name(self, name: str) -> BucketRule:
        return self._by_name[name]


_LABEL_KEY = re.compile(r"[a-z0-9_.\-]{1,63}")
MAX_LABELS = 16
MAX_LABEL_VALUE = 256


def check_labels(labels: Mapping[str, str], *, field: str = "labels") -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed", field=field)
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"label key {key!r} must be 1-63 characters of a-z, 0-9, '_', '-' and '.'",
                field=field,
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label {key!r} is longer than {MAX_LABEL_VALUE} characters", field=field
            )
    return dict(labels)


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def check_sha256(value: str, *, field: str) -> str:
    """'' when unset; otherwise 64 hex characters, returned lower-case."""
    if not value:
        return ""
    if not _SHA256.fullmatch(value):
        raise InvalidArgument(f"{field} must be 64 hexadecimal characters", field=field)
    return value.lower()
