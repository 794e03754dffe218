"""Service credentials and token exchange at auth: IssueServiceToken and ExchangeToken,
their bad input, and proofs that belong to another user or another service."""

from __future__ import annotations

import grpc

from aivera.auth.v1 import auth_pb2
from tests.auth.conftest import Client, error_of
from tests.helpers.errors import reason
from tests.helpers.identity import secret
from tests.helpers.services import bearer


async def test_a_service_credential_gets_a_service_token_and_nothing_else_does(
    client: Client,
) -> None:
    got = await client.identity.IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(service="rag", secret=secret("rag"))
    )
    assert got.service_token and got.HasField("expire_time")
    for name, request in {
        "another service's secret": auth_pb2.IssueServiceTokenRequest(
            service="chat", secret=secret("rag")
        ),
        "a wrong secret": auth_pb2.IssueServiceTokenRequest(service="rag", secret="svc_guess"),
        "no secret": auth_pb2.IssueServiceTokenRequest(service="rag"),
        "an unknown service": auth_pb2.IssueServiceTokenRequest(
            service="billing", secret=secret("rag")
        ),
    }.items():
        err = await error_of(client.identity.IssueServiceToken(request))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, name
        assert reason(err) == "BAD_SERVICE_CREDENTIAL", name
        assert secret("rag") not in (err.details() or ""), name


async def test_exchange_bad_input_and_proofs_that_are_not_the_callers(client: Client) -> None:
    _u, _t, session = await client.new_user()
    chat = await client.service_md("chat")
    exchange = client.internal.ExchangeToken
    # Bad input.
    for request, field in (
        (auth_pb2.ExchangeTokenRequest(audience="rag"), "subject_token"),
        (
            auth_pb2.ExchangeTokenRequest(subject_token=session.access_token, audience="mail"),
            "audience",
        ),
        (
            auth_pb2.ExchangeTokenRequest(
                subject_token=session.access_token,
                requested_token_type=auth_pb2.TOKEN_TYPE_GRANT,
                grant_ttl_seconds=-1,
            ),
            "grant_ttl_seconds",
        ),
    ):
        err = await error_of(exchange(request, metadata=chat))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (err.details() or ""), field
    # Only mesh services exchange: a user's own token is refused.
    err = await error_of(
        exchange(
            auth_pb2.ExchangeTokenRequest(subject_token=session.access_token, audience="rag"),
            metadata=bearer(session.access_token),
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    # A grant held by chat cannot be redeemed by RAG; chat redeems it.
    grant = await exchange(
        auth_pb2.ExchangeTokenRequest(
            subject_token=session.access_token, requested_token_type=auth_pb2.TOKEN_TYPE_GRANT
        ),
        metadata=chat,
    )
    assert grant.token_type == auth_pb2.TOKEN_TYPE_GRANT
    rag = await client.service_md("rag")
    err = await error_of(
        exchange(
            auth_pb2.ExchangeTokenRequest(subject_token=grant.token, audience="storage"),
            metadata=rag,
        )
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and reason(err) == "DELEGATION_INVALID"
    got = await exchange(
        auth_pb2.ExchangeTokenRequest(subject_token=grant.token, audience="storage"),
        metadata=chat,
    )
    assert got.token_type == auth_pb2.TOKEN_TYPE_DELEGATION
    # A delegation addressed to chat cannot be passed on by RAG, only by chat.
    for_chat = await exchange(
        auth_pb2.ExchangeTokenRequest(subject_token=session.access_token, audience="chat"),
        metadata=(chat[0],),
    )
    err = await error_of(
        exchange(
            auth_pb2.ExchangeTokenRequest(subject_token=for_chat.token, audience="storage"),
            metadata=rag,
        )
    )
    assert reason(err) == "DELEGATION_INVALID"
    await exchange(
        auth_pb2.ExchangeTokenRequest(subject_token=for_chat.token, audience="storage"),
        metadata=chat,
    )
    # Ending the user's sessions voids the grant.
    admin = bearer(await client.admin_token())
    await client.admin.RevokeSessions(auth_pb2.RevokeSessionsRequest(user_id=_u.id), metadata=admin)
    err = await error_of(
        exchange(
            auth_pb2.ExchangeTokenRequest(subject_token=grant.token, audience="storage"),
            metadata=chat,
        )
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and reason(err) == "SESSION_REVOKED"
