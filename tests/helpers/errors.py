"""Reading the google.rpc details of a failed call: the field at fault (BadRequest), the
reason a program branches on (ErrorInfo) and the text a user reads (LocalizedMessage)."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


def detail(err: grpc.RpcError, cls: type[M]) -> M | None:
    """The first detail of type `cls` in the call's status, or None."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for any_detail in status.details:
        if any_detail.Is(cls.DESCRIPTOR):
            out = cls()
            any_detail.Unpack(out)
            return out
    return None


def bad_field(err: grpc.RpcError) -> str:
    bad = detail(err, error_details_pb2.BadRequest)
    return bad.field_violations[0].field if bad and bad.field_violations else ""


def reason(err: grpc.RpcError) -> str:
    """ErrorInfo.reason ('' when the status carries none)."""
    info = detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info else ""


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info is not None, f"no ErrorInfo in {err}"
    return info


def localized(err: grpc.RpcError) -> error_details_pb2.LocalizedMessage:
    text = detail(err, error_details_pb2.LocalizedMessage)
    assert text is not None, f"no LocalizedMessage in {err}"
    return text
