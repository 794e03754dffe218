"""User administration: every admin RPC's happy path, bad input, missing users, and that
nobody but an active admin gets through."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from aivera.auth.v1 import auth_pb2
from tests.auth.conftest import Client, code_of, error_of
from tests.helpers.errors import bad_field, reason
from tests.helpers.services import bearer

ME = auth_pb2.GetCurrentUserRequest()


def update(user_id: str, mask: list[str], **fields: Any) -> auth_pb2.UpdateUserRequest:
    return auth_pb2.UpdateUserRequest(
        user=auth_pb2.User(id=user_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=mask),
    )


async def test_create_user(client: Client) -> None:
    md = bearer(await client.admin_token())
    name = "Alice." + uuid.uuid4().hex[:6]
    created = await client.admin.CreateUser(auth_pb2.CreateUserRequest(username=name), metadata=md)
    assert created.user.username == name and created.user.role == auth_pb2.ROLE_USER
    assert created.user.status == auth_pb2.USER_STATUS_ACTIVE
    assert created.user.HasField("create_time") and not created.user.HasField("last_seen_time")
    assert created.static_token.startswith("avs_") and len(created.static_token) >= 40
    s = await client.exchange(created.static_token)
    assert s.user.id == created.user.id and s.user.role == auth_pb2.ROLE_USER

    admin2 = await client.admin.CreateUser(
        auth_pb2.CreateUserRequest(
            username="boss-" + uuid.uuid4().hex[:6], role=auth_pb2.ROLE_ADMIN
        ),
        metadata=md,
    )
    assert admin2.user.role == auth_pb2.ROLE_ADMIN

    err = await error_of(
        client.admin.CreateUser(auth_pb2.CreateUserRequest(username=name.upper()), metadata=md)
    )
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    for bad in ["", "ab", "x" * 65, "with space", "юзер", "a/b"]:
        code = await code_of(
            client.admin.CreateUser(auth_pb2.CreateUserRequest(username=bad), metadata=md)
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT, bad
    code = await code_of(
        client.admin.CreateUser(auth_pb2.CreateUserRequest(username="okname", role=7), metadata=md)  # type: ignore[arg-type]
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_list_users_paginates_oldest_first(client: Client) -> None:
    md = bearer(await client.admin_token())
    for _ in range(5):
        await client.new_user()
    seen: list[auth_pb2.User] = []
    token = ""
    while True:
        page = await client.admin.ListUsers(
            auth_pb2.ListUsersRequest(page_size=2, page_token=token), metadata=md
        )
        assert len(page.users) <= 2
        seen.extend(page.users)
        token = page.next_page_token
        if not token:
            break
    everyone = await client.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=md)
    assert [u.id for u in seen] == [u.id for u in everyone.users]
    assert len(seen) >= 6 and len({u.id for u in seen}) == len(seen)
    assert seen[0].username == "admin"
    times = [(u.create_time.seconds, u.create_time.nanos) for u in seen]
    assert times == sorted(times)
    for bad in (
        auth_pb2.ListUsersRequest(page_token="%%%"),
        auth_pb2.ListUsersRequest(page_token="eyJ4IjoxfQ"),  # {"x":1}
        auth_pb2.ListUsersRequest(page_size=-1),
    ):
        assert await code_of(client.admin.ListUsers(bad, metadata=md)) is (
            grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_update_user(client: Client) -> None:
    admin_session = await client.exchange(
        client.settings.aivera_bootstrap_admin_token.get_secret_value()
    )
    md = bearer(admin_session.access_token)
    user, static, _ = await client.new_user()
    promoted = await client.admin.UpdateUser(
        update(user.id, ["role"], role=auth_pb2.ROLE_ADMIN), metadata=md
    )
    assert promoted.role == auth_pb2.ROLE_ADMIN and promoted.status == auth_pb2.USER_STATUS_ACTIVE
    s = await client.exchange(static)
    assert s.user.role == auth_pb2.ROLE_ADMIN
    # The promoted user administers; once demoted, their still-valid admin token does not.
    await client.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(s.access_token))
    await client.admin.UpdateUser(update(user.id, ["role"], role=auth_pb2.ROLE_USER), metadata=md)
    code = await code_of(
        client.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(s.access_token))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED

    bad_requests = [
        update(user.id, []),
        update(user.id, ["username"], username="renamed"),
        update(user.id, ["role"]),  # ROLE_UNSPECIFIED
        update(user.id, ["status"]),
        update("not-a-uuid", ["role"], role=auth_pb2.ROLE_USER),
        update("", ["role"], role=auth_pb2.ROLE_USER),
        # An admin cannot lock themselves out.
        update(admin_session.user.id, ["status"], status=auth_pb2.USER_STATUS_DISABLED),
        update(admin_session.user.id, ["role"], role=auth_pb2.ROLE_USER),
    ]
    for req in bad_requests:
        code = await code_of(client.admin.UpdateUser(req, metadata=md))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, req
    code = await code_of(
        client.admin.UpdateUser(
            update(str(uuid.uuid4()), ["role"], role=auth_pb2.ROLE_USER), metadata=md
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND


async def test_rotate_static_token(client: Client) -> None:
    md = bearer(await client.admin_token())
    user, old, _session = await client.new_user()
    rotated = await client.admin.RotateStaticToken(
        auth_pb2.RotateStaticTokenRequest(user_id=user.id), metadata=md
    )
    assert rotated.user.id == user.id and rotated.static_token.startswith("avs_")
    assert rotated.static_token != old
    assert await code_of(client.exchange(old)) is grpc.StatusCode.UNAUTHENTICATED
    assert (await client.exchange(rotated.static_token)).user.id == user.id
    for bad, code in (
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT),
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
    ):
        got = await code_of(
            client.admin.RotateStaticToken(
                auth_pb2.RotateStaticTokenRequest(user_id=bad), metadata=md
            )
        )
        assert got is code


async def test_revoke_sessions(client: Client) -> None:
    md = bearer(await client.admin_token())
    user, static, s1 = await client.new_user()
    s2 = await client.exchange(static)
    _other, _ot, other_session = await client.new_user()
    res = await client.admin.RevokeSessions(
        auth_pb2.RevokeSessionsRequest(user_id=user.id), metadata=md
    )
    assert res.revoked_sessions == 2
    for token in (s1.refresh_token, s2.refresh_token):
        code = await code_of(
            client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token))
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED
    await client.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=other_session.refresh_token)
    )
    again = await client.admin.RevokeSessions(
        auth_pb2.RevokeSessionsRequest(user_id=user.id), metadata=md
    )
    assert again.revoked_sessions == 0
    for bad, code in (
        ("x", grpc.StatusCode.INVALID_ARGUMENT),
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
    ):
        got = await code_of(
            client.admin.RevokeSessions(auth_pb2.RevokeSessionsRequest(user_id=bad), metadata=md)
        )
        assert got is code


def admin_calls(c: Client, target: str) -> dict[str, Any]:
    return {
        "CreateUser": lambda md: c.admin.CreateUser(
            auth_pb2.CreateUserRequest(username="intruder" + uuid.uuid4().hex[:4]), metadata=md
        ),
        "ListUsers": lambda md: c.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=md),
        "UpdateUser": lambda md: c.admin.UpdateUser(
            update(target, ["role"], role=auth_pb2.ROLE_ADMIN), metadata=md
        ),
        "RotateStaticToken": lambda md: c.admin.RotateStaticToken(
            auth_pb2.RotateStaticTokenRequest(user_id=target), metadata=md
        ),
        "RevokeSessions": lambda md: c.admin.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user_id=target), metadata=md
        ),
    }


async def test_admin_rpcs_refuse_everyone_else(client: Client) -> None:
    user, _static, session = await client.new_user()
    calls = admin_calls(client, user.id)
    chat = await client.service_md("chat")
    assert set(calls) == {
        m.name for m in auth_pb2.DESCRIPTOR.services_by_name["AuthAdminService"].methods
    }
    for name, call in calls.items():
        assert await code_of(call(bearer(session.access_token))) is (
            grpc.StatusCode.PERMISSION_DENIED
        ), name
        assert await code_of(call(())) is grpc.StatusCode.UNAUTHENTICATED, name
        # A mesh service alone (no admin's delegation) is no admin.
        assert await code_of(call(chat)) is grpc.StatusCode.UNAUTHENTICATED, name
    # Nothing changed.
    me = await client.auth.GetCurrentUser(ME, metadata=bearer(session.access_token))
    assert me.role == auth_pb2.ROLE_USER
    await client.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=session.refresh_token)
    )


async def test_disabled_admin_cannot_administer(client: Client) -> None:
    md = bearer(await client.admin_token())
    boss, _t, boss_session = await client.new_user(role=auth_pb2.ROLE_ADMIN)
    await client.admin.UpdateUser(
        update(boss.id, ["status"], status=auth_pb2.USER_STATUS_DISABLED), metadata=md
    )
    code = await code_of(
        client.admin.ListUsers(
            auth_pb2.ListUsersRequest(), metadata=bearer(boss_session.access_token)
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


async def _list_all(client: Client, md: Any) -> list[str]:
    listed = await client.admin.ListUsers(auth_pb2.ListUsersRequest(page_size=1000), metadata=md)
    assert not listed.next_page_token
    return [u.id for u in listed.users]


async def test_list_users_pages_stay_stable_under_inserts(client: Client) -> None:
    md = bearer(await client.admin_token())
    for _ in range(3):
        await client.new_user()
    before = await _list_all(client, md)
    seen: list[str] = []
    added: list[str] = []
    token = ""
    while True:
        page = await client.admin.ListUsers(
            auth_pb2.ListUsersRequest(page_size=2, page_token=token), metadata=md
        )
        seen += [u.id for u in page.users]
        token = page.next_page_token
        if not token:
            break
        if len(added) < 4:  # users created between pages land after the cursor
            added += [(await client.new_user())[0].id for _ in range(2)]
    assert len(seen) == len(set(seen)), "a user was listed twice"
    assert seen == before + added  # nobody skipped, nobody repeated, oldest first
    assert seen == await _list_all(client, md)


async def test_list_users_page_token_is_bound_to_the_admin(client: Client) -> None:
    md = bearer(await client.admin_token())
    await client.new_user()
    first = await client.admin.ListUsers(auth_pb2.ListUsersRequest(page_size=1), metadata=md)
    token = first.next_page_token
    assert token
    # The same admin may continue.
    await client.admin.ListUsers(
        auth_pb2.ListUsersRequest(page_size=1, page_token=token), metadata=md
    )
    # Edited tokens, and tokens of another admin, are INVALID_PAGE_TOKEN.
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    _admin2, static2, _ = await client.new_user(role=auth_pb2.ROLE_ADMIN)
    md2 = bearer((await client.exchange(static2)).access_token)
    for bad, who in ((flipped, md), (token + "x", md), ("", md2)):
        request = auth_pb2.ListUsersRequest(page_size=1, page_token=bad or token)
        err = await error_of(client.admin.ListUsers(request, metadata=who))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, bad
        assert reason(err) == "INVALID_PAGE_TOKEN" and bad_field(err) == "page_token", bad


async def _refresh_reason(c: Client, token: str) -> tuple[grpc.StatusCode, str]:
    err = await error_of(c.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token)))
    return err.code(), reason(err)


async def test_rotating_the_static_token_ends_every_session(client: Client) -> None:
    md = bearer(await client.admin_token())
    user, static, s1 = await client.new_user()
    s2 = await client.exchange(static)  # a second family
    renewed = await client.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=s2.refresh_token)
    )
    _other, _ot, other_session = await client.new_user()
    rotated = await client.admin.RotateStaticToken(
        auth_pb2.RotateStaticTokenRequest(user_id=user.id), metadata=md
    )
    for token in (s1.refresh_token, renewed.refresh_token):
        assert await _refresh_reason(client, token) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_REFRESH_TOKEN",
        )
    # Other users keep their sessions; the new static token starts a fresh one.
    await client.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=other_session.refresh_token)
    )
    fresh = await client.exchange(rotated.static_token)
    await client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=fresh.refresh_token))


async def test_disabling_a_user_ends_every_session(client: Client) -> None:
    md = bearer(await client.admin_token())
    user, static, s1 = await client.new_user()
    s2 = await client.exchange(static)
    await client.admin.UpdateUser(
        update(user.id, ["status"], status=auth_pb2.USER_STATUS_DISABLED), metadata=md
    )
    for token in (s1.refresh_token, s2.refresh_token):
        assert await _refresh_reason(client, token) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_REFRESH_TOKEN",
        )
    # Enabled again: the old sessions stay dead (they were revoked, not just paused).
    await client.admin.UpdateUser(
        update(user.id, ["status"], status=auth_pb2.USER_STATUS_ACTIVE), metadata=md
    )
    for token in (s1.refresh_token, s2.refresh_token):
        assert (await _refresh_reason(client, token))[1] == "BAD_REFRESH_TOKEN"
    await client.exchange(static)
