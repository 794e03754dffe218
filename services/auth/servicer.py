"""gRPC handlers of aivera.auth.v1: request checks and proto conversion around core.Auth.

Handlers are thin: parse the request (enums through the tables below, never bare
numbers; ListUsers' page through `pages.request`), call `Auth`, convert the typed rows to
protos. They hold no SQL and catch no database error: `Auth` and its store raise domain
errors with contract reasons, and the RPC wrapper turns those into statuses. Access
levels (public / user / admin / internal) are enforced by the wrapper from the proto
options before a handler runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from google.protobuf import empty_pb2

from aivera.auth.v1 import auth_pb2
from services.auth.core import Auth, Session
from services.auth.delegation import Delegation
from services.auth.store import ProviderKeyRow, UserRow
from services.common import context, pages
from services.common.errors import InvalidArgument, PermissionDenied, Reason, Unauthenticated
from services.common.protoutil import mask_paths, parse_uuid, timestamp

ROLES: dict[auth_pb2.Role.ValueType, str] = {
    auth_pb2.ROLE_USER: "user",
    auth_pb2.ROLE_ADMIN: "admin",
}
ROLE_PB: dict[str, auth_pb2.Role.ValueType] = {v: k for k, v in ROLES.items()}
STATUSES: dict[auth_pb2.UserStatus.ValueType, str] = {
    auth_pb2.USER_STATUS_ACTIVE: "active",
    auth_pb2.USER_STATUS_DISABLED: "disabled",
}
STATUS_PB: dict[str, auth_pb2.UserStatus.ValueType] = {v: k for k, v in STATUSES.items()}
TOKEN_TYPES = frozenset(
    {auth_pb2.TOKEN_TYPE_UNSPECIFIED, auth_pb2.TOKEN_TYPE_DELEGATION, auth_pb2.TOKEN_TYPE_GRANT}
)
PROVIDERS: dict[auth_pb2.Provider.ValueType, str] = {
    auth_pb2.PROVIDER_GEMINI: "gemini",
    auth_pb2.PROVIDER_REPLICATE: "replicate",
}


def user_pb(user: UserRow) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        username=user.username,
        role=ROLE_PB[user.role],
        status=STATUS_PB[user.status],
        create_time=timestamp(user.created_at),
        last_seen_time=timestamp(user.last_seen_at),
    )


def provider_of(value: auth_pb2.Provider.ValueType, field: str = "provider") -> str:
    name = PROVIDERS.get(value)
    if name is None:
        raise InvalidArgument("provider must be PROVIDER_GEMINI or PROVIDER_REPLICATE", field=field)
    return name


def _caller_uuid() -> uuid.UUID:
    """The calling user (from the access token, or a service's delegation)."""
    try:
        return uuid.UUID(context.require_user_id())
    except ValueError:
        raise InvalidArgument("the calling user id is not a valid id") from None


class AuthServiceServicer:
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def ExchangeStaticToken(
        self, request: auth_pb2.ExchangeStaticTokenRequest, ctx: Any
    ) -> auth_pb2.ExchangeStaticTokenResponse:
        forwarded = dict(ctx.invocation_metadata() or ()).get("x-forwarded-for")
        client = self.auth.client(ctx.peer(), forwarded if isinstance(forwarded, str) else None)
        s = await self.auth.exchange(request.static_token, client=client)
        return auth_pb2.ExchangeStaticTokenResponse(
            access_token=s.access_token,
            refresh_token=s.refresh_token,
            expires_in=s.expires_in,
            user=user_pb(s.user),
            refresh_expire_time=timestamp(s.refresh_expires_at),
        )

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, ctx: Any
    ) -> auth_pb2.RefreshTokenResponse:
        s: Session = await self.auth.refresh(request.refresh_token)
        return auth_pb2.RefreshTokenResponse(
            access_token=s.access_token,
            refresh_token=s.refresh_token,
            expires_in=s.expires_in,
            user=user_pb(s.user),
            refresh_expire_time=timestamp(s.refresh_expires_at),
        )

    async def Logout(self, request: auth_pb2.LogoutRequest, ctx: Any) -> empty_pb2.Empty:
        await self.auth.logout(_caller_uuid(), request.refresh_token, request.all_sessions)
        return empty_pb2.Empty()

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, ctx: Any
    ) -> auth_pb2.User:
        return user_pb(await self.auth.current_user(_caller_uuid()))

    async def SetProviderKey(
        self, request: auth_pb2.SetProviderKeyRequest, ctx: Any
    ) -> auth_pb2.ProviderKeyStatus:
        provider = provider_of(request.provider)
        row = await self.auth.set_provider_key(_caller_uuid(), provider, request.api_key)
        return _status_pb(request.provider, row)

    async def GetProviderKeyStatus(
        self, request: auth_pb2.GetProviderKeyStatusRequest, ctx: Any
    ) -> auth_pb2.ProviderKeyStatus:
        provider = provider_of(request.provider)
        row = await self.auth.provider_key_status(_caller_uuid(), provider)
        return _status_pb(request.provider, row)

    async def DeleteProviderKey(
        self, request: auth_pb2.DeleteProviderKeyRequest, ctx: Any
    ) -> empty_pb2.Empty:
        await self.auth.delete_provider_key(_caller_uuid(), provider_of(request.provider))
        return empty_pb2.Empty()

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, ctx: Any) -> auth_pb2.Jwks:
        return jwks_pb(self.auth.keyring.jwks())


def jwks_pb(keys: list[dict[str, str]]) -> auth_pb2.Jwks:
    return auth_pb2.Jwks(keys=[auth_pb2.Jwk(**k) for k in keys])


def _status_pb(
    provider: auth_pb2.Provider.ValueType, row: ProviderKeyRow | None
) -> auth_pb2.ProviderKeyStatus:
    if row is None:
        return auth_pb2.ProviderKeyStatus(provider=provider, is_set=False)
    return auth_pb2.ProviderKeyStatus(
        provider=provider,
        is_set=True,
        last4=row.last4,
        update_time=timestamp(row.updated_at),
    )


class AuthAdminServiceServicer:
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def _admin(self) -> str | None:
        actor = context.current_caller().user_id
        await self.auth.require_admin(actor)
        return actor

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, ctx: Any
    ) -> auth_pb2.CreateUserResponse:
        await self._admin()
        role = "user" if request.role == auth_pb2.ROLE_UNSPECIFIED else ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role is not a known role", field="role")
        user, token = await self.auth.create_user(request.username, role)
        return auth_pb2.CreateUserResponse(user=user_pb(user), static_token=token)

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, ctx: Any
    ) -> auth_pb2.ListUsersResponse:
        await self._admin()
        page = pages.request(request.page_size, request.page_token)
        rows, token = await self.auth.list_users(page)
        return auth_pb2.ListUsersResponse(users=[user_pb(r) for r in rows], next_page_token=token)

    async def UpdateUser(self, request: auth_pb2.UpdateUserRequest, ctx: Any) -> auth_pb2.User:
        actor = await self._admin()
        user_id = parse_uuid(request.user.id, field="user.id")
        paths = mask_paths(request.update_mask, ("role", "status"))
        role = status = None
        if "role" in paths:
            role = ROLES.get(request.user.role)
            if role is None:
                raise InvalidArgument(
                    "user.role must be ROLE_USER or ROLE_ADMIN", field="user.role"
                )
        if "status" in paths:
            status = STATUSES.get(request.user.status)
            if status is None:
                raise InvalidArgument(
                    "user.status must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED",
                    field="user.status",
                )
        return user_pb(await self.auth.update_user(actor, user_id, role=role, status=status))

    async def RotateStaticToken(
        self, request: auth_pb2.RotateStaticTokenRequest, ctx: Any
    ) -> auth_pb2.RotateStaticTokenResponse:
        await self._admin()
        user, token = await self.auth.rotate_static_token(
            parse_uuid(request.user_id, field="user_id")
        )
        return auth_pb2.RotateStaticTokenResponse(user=user_pb(user), static_token=token)

    async def RevokeSessions(
        self, request: auth_pb2.RevokeSessionsRequest, ctx: Any
    ) -> auth_pb2.RevokeSessionsResponse:
        await self._admin()
        n = await self.auth.revoke_sessions(parse_uuid(request.user_id, field="user_id"))
        return auth_pb2.RevokeSessionsResponse(revoked_sessions=n)


class AuthInternalServiceServicer:
    def __init__(self, auth: Auth, delegation: Delegation) -> None:
        self.auth = auth
        self.delegation = delegation

    async def GetProviderKey(
        self, request: auth_pb2.GetProviderKeyRequest, ctx: Any
    ) -> auth_pb2.GetProviderKeyResponse:
        # The key is the delegated user's: chat cannot name anyone else.
        caller = context.current_caller()
        if caller.user_id is None:
            raise Unauthenticated(
                "GetProviderKey needs a delegation for the user",
                reason=Reason.DELEGATION_REQUIRED,
            )
        user_id = _caller_uuid()
        if request.user_id and parse_uuid(request.user_id, field="user_id") != user_id:
            raise PermissionDenied(
                "user_id is not the delegated user", reason=Reason.DELEGATION_INVALID
            )
        provider = provider_of(request.provider)
        plain = await self.auth.provider_key_plaintext(user_id, provider)
        return auth_pb2.GetProviderKeyResponse(provider=request.provider, api_key=plain)

    async def ExchangeToken(
        self, request: auth_pb2.ExchangeTokenRequest, ctx: Any
    ) -> auth_pb2.ExchangeTokenResponse:
        caller = context.current_caller().service
        assert caller is not None  # ACCESS_INTERNAL: the runtime required a service token
        if not request.subject_token:
            raise InvalidArgument("subject_token is required", field="subject_token")
        if request.requested_token_type not in TOKEN_TYPES:
            raise InvalidArgument("unknown requested_token_type", field="requested_token_type")
        grant = request.requested_token_type == auth_pb2.TOKEN_TYPE_GRANT
        issued = await self.delegation.exchange(
            caller=caller,
            subject=request.subject_token,
            audience=request.audience,
            grant=grant,
            grant_ttl=request.grant_ttl_seconds,
        )
        return auth_pb2.ExchangeTokenResponse(
            token=issued.token,
            token_type=auth_pb2.TOKEN_TYPE_GRANT if grant else auth_pb2.TOKEN_TYPE_DELEGATION,
            expire_time=timestamp(issued.expires_at),
        )

    async def ListSessionRevocations(
        self, request: auth_pb2.ListSessionRevocationsRequest, ctx: Any
    ) -> auth_pb2.ListSessionRevocationsResponse:
        since = request.since.ToDatetime(dt.UTC) if request.HasField("since") else None
        revoked, next_since = await self.auth.session_revocations(since)
        return auth_pb2.ListSessionRevocationsResponse(
            revocations=[
                auth_pb2.SessionRevocation(
                    user_id=r.user_id, epoch=r.epoch, revoke_time=timestamp(r.at)
                )
                for r in revoked
            ],
            next_since=timestamp(next_since),
        )


class ServiceIdentityServiceServicer:
    def __init__(self, delegation: Delegation) -> None:
        self.delegation = delegation

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, ctx: Any
    ) -> auth_pb2.IssueServiceTokenResponse:
        issued = self.delegation.issue_service_token(request.service, request.secret)
        return auth_pb2.IssueServiceTokenResponse(
            service_token=issued.token, expire_time=timestamp(issued.expires_at)
        )
