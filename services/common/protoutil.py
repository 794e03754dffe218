"""Small conversions between protos and Python values, used by every servicer."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from google.protobuf import field_mask_pb2, timestamp_pb2

from services.common.errors import InvalidArgument


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return ts


def mask_paths(
    mask: field_mask_pb2.FieldMask, allowed: Iterable[str], *, field: str = "update_mask"
) -> set[str]:
    """The mask's paths, checked against what the RPC documents as updatable."""
    allowed_set = set(allowed)
    paths = set(mask.paths)
    if not paths:
        raise InvalidArgument(
            f"{field} must name at least one of: {', '.join(sorted(allowed_set))}", field=field
        )
    unknown = paths - allowed_set
    if unknown:
        raise InvalidArgument(
            f"{field} has paths that cannot be updated: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed_set))}",
            field=field,
        )
    return paths


def parse_uuid(value: str, *, field: str) -> uuid.UUID:
    """A resource id from a request. Malformed ids are INVALID_ARGUMENT."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field} is not a valid id", field=field) from None
