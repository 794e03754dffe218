"""Per-user Replicate keys (PROVIDER_REPLICATE, issue 17): stored only in Replicate's
shape, never echoed, readable in plaintext by training (the remote image-LoRA trainer)
with a delegation for the user, and by no service that is not a declared caller."""

from __future__ import annotations

import secrets

import grpc

from aivera.auth.v1 import auth_pb2
from tests.helpers.auth import Client, error_of
from tests.helpers.services import bearer

REPLICATE = auth_pb2.PROVIDER_REPLICATE


def replicate_key() -> str:
    return "r8_" + secrets.token_urlsafe(30)[:37]


async def test_a_replicate_key_is_stored_in_its_shape_and_never_echoed(client: Client) -> None:
    _u, _t, s = await client.new_user()
    md = bearer(s.access_token)
    for bad in (
        "r8_short",
        "r8_" + "x" * 120,
        "r8_" + "x" * 30 + "!",
        "AIza" + "x" * 35,  # a Gemini key given as Replicate's
        "xx_" + "y" * 37,
    ):
        err = await error_of(
            client.auth.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(provider=REPLICATE, api_key=bad), metadata=md
            )
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad not in (err.details() or "") and bad not in str(err.trailing_metadata())
    key = replicate_key()
    res = await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=REPLICATE, api_key=key), metadata=md
    )
    assert res.is_set and res.last4 == key[-4:] and res.provider == REPLICATE
    assert key not in str(res)
    status = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=REPLICATE), metadata=md
    )
    assert status.is_set and status.last4 == key[-4:] and key not in str(status)
    # The Gemini slot is separate.
    gemini = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=auth_pb2.PROVIDER_GEMINI), metadata=md
    )
    assert not gemini.is_set


async def test_training_reads_the_replicate_key_and_rag_may_not(client: Client) -> None:
    _u, _t, s = await client.new_user()
    _o, _ot, other = await client.new_user()
    key = replicate_key()
    await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=REPLICATE, api_key=key),
        metadata=bearer(s.access_token),
    )
    req = auth_pb2.GetProviderKeyRequest(user_id=s.user.id, provider=REPLICATE)
    got = await client.internal.GetProviderKey(
        req, metadata=await client.service_md("training", user_token=s.access_token)
    )
    assert got.api_key == key and got.provider == REPLICATE
    cases = {
        "rag, for the user": (
            await client.service_md("rag", user_token=s.access_token),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "storage, for the user": (
            await client.service_md("storage", user_token=s.access_token),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "the user's own token": (bearer(s.access_token), grpc.StatusCode.PERMISSION_DENIED),
        "training, no delegation": (
            await client.service_md("training"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        "training, another user's delegation": (
            await client.service_md("training", user_token=other.access_token),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    for name, (md, expected) in cases.items():
        err = await error_of(client.internal.GetProviderKey(req, metadata=md))
        assert err.code() is expected, name
        assert key not in (err.details() or ""), name
    # The other user has no Replicate key: NOT_FOUND, not the first user's.
    err = await error_of(
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(provider=REPLICATE),
            metadata=await client.service_md("training", user_token=other.access_token),
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
