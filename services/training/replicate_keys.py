"""Which Replicate token trains (and generates) for a user: the user's own key, held
encrypted by auth (AuthInternalService.GetProviderKey, PROVIDER_REPLICATE, which answers
training only with a delegation for that user: call it inside the user's request or under
`ctx.acting_for` with the work's grant), else the system's key from settings, else
FAILED_PRECONDITION (PROVIDER_KEY_MISSING). The token is returned, never logged.

Without an auth channel (a process with no mesh identity: auth would refuse it anyway)
only the system key is used."""

from __future__ import annotations

import grpc

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from services.common.errors import FailedPrecondition, Reason
from services.common.remote import Deadlines, map_rpc_error
from services.training.config import TrainingSettings


async def user_key(auth: grpc.aio.Channel, settings: TrainingSettings, user_id: str) -> str | None:
    """The user's Replicate key; None when the user has none."""
    stub = auth_pb2_grpc.AuthInternalServiceStub(auth)
    try:
        reply = await stub.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id=user_id, provider=auth_pb2.PROVIDER_REPLICATE),
            timeout=Deadlines.from_settings(settings).lookup,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise map_rpc_error(exc, "provider key") from None
    return reply.api_key or None


async def replicate_token(
    auth: grpc.aio.Channel | None, settings: TrainingSettings, user_id: str
) -> str:
    """The token to call Replicate with for `user_id`. Auth down is UNAVAILABLE (the
    user may have a key: the system's is not used in its place)."""
    if auth is not None:
        key = await user_key(auth, settings, user_id)
        if key:
            return key
    system = settings.replicate_api_token.get_secret_value()
    if system:
        return system
    raise FailedPrecondition(
        "no Replicate API key: set yours with SetProviderKey (PROVIDER_REPLICATE)",
        reason=Reason.PROVIDER_KEY_MISSING,
        metadata={"provider": "replicate"},
    )
