"""Sign-in and the session against the real auth service: login, silent refresh after the
access token expires, shared refresh, a revoked session asking for login, the
credentials file, and the static token kept out of argv."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import string
import sys
from pathlib import Path

import grpc
import pytest

from aivera.auth.v1 import auth_pb2
from client import AsyncClient, AuthRequired, Client, CredentialStore, Endpoints
from client.config import credentials_path
from client.errors import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, PermissionDenied
from client.messages import MESSAGES
from tests.client.conftest import ACCESS_TTL, Auth, Cli

ROOT = Path(__file__).resolve().parents[2]


def argv_of(pid: int) -> bytes:
    """The process's arguments as the kernel shows them to every user."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def sdk(auth: Auth, cfg: Path, **kw: object) -> AsyncClient:
    endpoints = Endpoints.resolve(env={"AIVERA_AUTH_ADDR": auth.addr})
    return AsyncClient(endpoints, store=CredentialStore(cfg / "credentials.json"), **kw)  # type: ignore[arg-type]


async def test_login_saves_a_private_session_without_the_static_token(auth: Auth, cli: Cli) -> None:
    user, static = await auth.new_user()
    r = await cli("login", input=static + "\n")
    assert r.exit_code == 0, r.output
    assert user.username in r.output and "Вход выполнен" in r.output
    assert static not in r.output
    mode = stat.S_IMODE(os.stat(cli.credentials).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(cli.config_dir).st_mode) == 0o700
    raw = cli.credentials.read_text()
    assert static not in raw and "avs_" not in raw
    data = json.loads(raw)
    assert data["access_token"] and data["refresh_token"].startswith("avr_")
    assert data["user_id"] == user.id and data["access_expires_at"] > 0
    r = await cli("me", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["user"]["username"] == user.username


async def test_wrong_static_token_is_an_auth_error(auth: Auth, cli: Cli) -> None:
    r = await cli("login", input="avs_wrong_token_0123456789abcdef\n")
    assert r.exit_code == EXIT_AUTH
    assert "статический токен" in r.output
    assert not cli.credentials.exists()


async def test_commands_without_login_ask_for_it(cli: Cli) -> None:
    r = await cli("me")
    assert r.exit_code == EXIT_AUTH
    assert "aivera login" in r.output
    r = await cli("me", AIVERA_LANG="en")
    assert r.exit_code == EXIT_AUTH and "Run `aivera login`" in r.output


async def test_expired_access_token_refreshes_silently(auth: Auth, cli: Cli) -> None:
    user, static = await auth.new_user()
    assert (await cli("login", input=static)).exit_code == 0
    before = json.loads(cli.credentials.read_text())
    assert (await cli("me")).exit_code == 0  # still valid: no refresh
    assert json.loads(cli.credentials.read_text())["access_token"] == before["access_token"]
    await asyncio.sleep(ACCESS_TTL + 0.5)  # the access token is now expired
    r = await cli("me", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["user"]["id"] == user.id
    after = json.loads(cli.credentials.read_text())
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # rotated and saved
    assert stat.S_IMODE(os.stat(cli.credentials).st_mode) == 0o600


async def test_unauthenticated_answer_refreshes_and_repeats_once(
    auth: Auth, tmp_path: Path
) -> None:
    """A token the client believes valid but the server refuses: refresh, then repeat."""
    _, static = await auth.new_user()
    async with sdk(auth, tmp_path, refresh_skew=0) as c:
        await c.login(static)
        c.credentials.access_token = c.credentials.access_token[:-4] + "AAAA"  # bad signature
        c.session.save()
        me = await c.me()
        assert me.username == c.credentials.username
        assert c.session.refresh_count == 1


async def test_concurrent_calls_share_one_refresh(auth: Auth, tmp_path: Path) -> None:
    _, static = await auth.new_user()
    async with sdk(auth, tmp_path, refresh_skew=0) as c:
        await c.login(static)
        c.credentials.access_expires_at = 0  # as if it had expired
        users = await asyncio.gather(*(c.me() for _ in range(8)))
        assert {u.id for u in users} == {c.credentials.user_id}
        assert c.session.refresh_count == 1


async def test_two_processes_sharing_the_file_refresh_once(auth: Auth, tmp_path: Path) -> None:
    """Two clients on one credentials file (as two CLI processes): the file lock makes the
    second adopt the first's new tokens instead of spending the single-use refresh token
    again (which would trip reuse detection)."""
    _, static = await auth.new_user()
    async with sdk(auth, tmp_path) as first:
        await first.login(static)
        first.credentials.access_expires_at = 0  # both will see an expired access token
        first.session.save()
    async with sdk(auth, tmp_path, refresh_skew=0) as a, sdk(auth, tmp_path, refresh_skew=0) as b:
        ua, ub = await asyncio.gather(a.me(), b.me())
        assert ua.id == ub.id
        assert a.session.refresh_count + b.session.refresh_count == 1
        assert a.credentials.refresh_token == b.credentials.refresh_token


async def test_revoked_session_asks_for_login(auth: Auth, cli: Cli) -> None:
    user, static = await auth.new_user()
    assert (await cli("login", input=static)).exit_code == 0
    revoked = await auth.admin.RevokeSessions(
        auth_pb2.RevokeSessionsRequest(user_id=user.id), metadata=await auth.admin_md()
    )
    assert revoked.revoked_sessions == 1
    await asyncio.sleep(ACCESS_TTL + 0.5)
    r = await cli("me")
    assert r.exit_code == EXIT_AUTH
    assert "aivera login" in r.output
    data = json.loads(cli.credentials.read_text())
    assert not data["refresh_token"] and not data["access_token"]  # the dead session is gone
    # and logging in again works
    assert (await cli("login", input=static)).exit_code == 0
    assert (await cli("me")).exit_code == 0


async def test_logout_ends_the_session_on_the_server(auth: Auth, cli: Cli) -> None:
    _, static = await auth.new_user()
    assert (await cli("login", input=static)).exit_code == 0
    refresh = json.loads(cli.credentials.read_text())["refresh_token"]
    r = await cli("logout")
    assert r.exit_code == 0 and "Вы вышли" in r.output
    assert not json.loads(cli.credentials.read_text())["refresh_token"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await auth.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=refresh))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await cli("me")).exit_code == EXIT_AUTH


async def test_sdk_failed_refresh_raises_auth_required(auth: Auth, tmp_path: Path) -> None:
    user, static = await auth.new_user()
    async with sdk(auth, tmp_path, refresh_skew=0) as c:
        await c.login(static)
        await auth.admin.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user_id=user.id), metadata=await auth.admin_md()
        )
        c.credentials.access_expires_at = 0  # as if it had expired
        with pytest.raises(AuthRequired):
            await c.me()


async def test_login_refuses_a_token_argument(auth: Auth, cli: Cli) -> None:
    _, static = await auth.new_user()
    r = await cli("login", static)
    assert r.exit_code == EXIT_USAGE
    assert not cli.credentials.exists()
    r = await cli("login", "--token", static)
    assert r.exit_code == EXIT_USAGE


async def test_static_token_never_in_process_arguments(auth: Auth, tmp_path: Path) -> None:
    """`aivera login` as a real process, token on stdin; its argv is read from /proc."""
    _, static = await auth.new_user()
    env = {
        **os.environ,
        "AIVERA_CONFIG_DIR": str(tmp_path / "cfg"),
        "AIVERA_AUTH_ADDR": auth.addr,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.cli",
        "login",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    cmdline = argv_of(proc.pid)
    assert static.encode() not in cmdline and b"login" in cmdline
    assert proc.stdin is not None
    proc.stdin.write(static.encode() + b"\n")
    await proc.stdin.drain()
    await asyncio.sleep(0.3)
    if proc.returncode is None:  # still running, token already read: check again
        assert static.encode() not in argv_of(proc.pid)
    proc.stdin.close()
    out, errs = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, errs.decode()
    assert static.encode() not in out + errs
    saved = (tmp_path / "cfg" / "credentials.json").read_text()
    assert static not in saved


async def test_unreachable_service_exits_5(tmp_path: Path) -> None:
    from tests.client.conftest import Cli

    cli = Cli(tmp_path / "cfg", {"AIVERA_AUTH_ADDR": "127.0.0.1:1"})
    r = await cli("login", input="avs_whatever\n")
    assert r.exit_code == EXIT_UNAVAILABLE
    assert "недоступен" in r.output


async def test_admin_commands(auth: Auth, cli: Cli) -> None:
    assert (await cli("login", input=auth.admin_static)).exit_code == 0
    name = "cli-" + os.urandom(4).hex()
    r = await cli("admin", "user", "create", name, "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["static_token"].startswith("avs_")
    r = await cli("admin", "user", "list", "--json")
    assert name in {u["username"] for u in json.loads(r.stdout)}
    r = await cli("admin", "user", "rotate-token", name, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["static_token"] != created["static_token"]
    r = await cli("admin", "user", "disable", name)
    assert r.exit_code == 0 and name in r.output
    r = await cli("admin", "user", "disable", "no-such-user")
    assert r.exit_code == EXIT_NOT_FOUND
    # the disabled user cannot sign in
    other = Cli(cli.config_dir.parent / "other", cli.env)
    r = await other(
        "login",
        input=json.loads((await cli("admin", "user", "rotate-token", name, "--json")).stdout)[
            "static_token"
        ],
    )
    assert r.exit_code == EXIT_AUTH


async def test_admin_commands_need_the_admin_role(auth: Auth, cli: Cli) -> None:
    _, static = await auth.new_user()
    assert (await cli("login", input=static)).exit_code == 0
    r = await cli("admin", "user", "list")
    assert r.exit_code == EXIT_AUTH
    # The CLI prints the mesh's text for the reason, in the user's language.
    assert "Нужны права администратора" in r.output
    r = await cli("admin", "user", "list", AIVERA_LANG="en")
    assert r.exit_code == EXIT_AUTH and "This needs the admin role" in r.output


async def test_sdk_errors_carry_the_reason_and_the_localized_text(
    auth: Auth, tmp_path: Path
) -> None:
    _, static = await auth.new_user()
    async with sdk(auth, tmp_path / "cfg") as c:
        await c.login(static)
        with pytest.raises(PermissionDenied) as info:
            await c.list_users()
    assert info.value.reason == "ADMIN_REQUIRED"
    assert info.value.localized == "Нужны права администратора."
    assert "admin role" in info.value.message  # the developer message stays English


async def test_provider_key_commands(auth: Auth, cli: Cli) -> None:
    _, static = await auth.new_user()
    assert (await cli("login", input=static)).exit_code == 0
    key = "AIza" + "k" * 35
    r = await cli("key", "set", input=key + "\n")
    assert r.exit_code == 0, r.output
    assert key not in r.output and key[-4:] in r.output
    r = await cli("key", "status", "--json")
    status = json.loads(r.stdout)
    assert status["is_set"] is True and status["last4"] == key[-4:]
    assert (await cli("key", "delete")).exit_code == 0
    r = await cli("key", "status", "--json")
    assert not json.loads(r.stdout).get("is_set")
    assert (await cli("key", "delete")).exit_code == EXIT_NOT_FOUND


def test_default_credentials_path_follows_xdg(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert credentials_path(env) == tmp_path / "aivera" / "credentials.json"
    assert credentials_path({"HOME": "/x"}).name == "credentials.json"


def test_endpoints_gateway_and_overrides() -> None:
    e = Endpoints.resolve(env={"AIVERA_SERVER": "gw:443", "AIVERA_CHAT_ADDR": "chat:1"})
    assert e.of("auth") == "gw:443" and e.of("training") == "gw:443"
    assert e.of("chat") == "chat:1"
    assert e.of("auth", admin=True) == "gw:443"
    e = Endpoints.resolve("saved:8443", env={"AIVERA_ADMIN_ADDR": "adm:8081"})
    assert e.of("rag") == "saved:8443" and e.of("auth", admin=True) == "adm:8081"
    d = Endpoints.resolve(env={})
    assert d.of("auth") == "127.0.0.1:50051" and d.of("training") == "127.0.0.1:50055"


async def test_sync_client(auth: Auth, tmp_path: Path) -> None:
    user, static = await auth.new_user()
    endpoints = Endpoints.resolve(env={"AIVERA_AUTH_ADDR": auth.addr})

    def flow() -> str:
        # The blocking client runs its own loop; here in a worker thread, because the
        # auth service under test runs on this test's loop.
        with Client(endpoints, store=CredentialStore(tmp_path / "credentials.json")) as c:
            c.login(static)
            return str(c.me().id)

    assert await asyncio.to_thread(flow) == user.id
    assert CredentialStore(tmp_path / "credentials.json").load().user_id == user.id


def test_every_message_exists_in_both_languages() -> None:
    used: set[str] = set()
    for path in (ROOT / "client").rglob("*.py"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z_.]+)["']""", path.read_text()))
    used |= {f"role.{r}" for r in ("user", "assistant", "system")}
    assert used, "no messages found"
    missing = used - MESSAGES.keys()
    assert not missing
    fmt = string.Formatter()
    for key, (ru, en) in MESSAGES.items():
        assert ru and en, key
        fields_ru = {f for _, f, _, _ in fmt.parse(ru) if f}
        fields_en = {f for _, f, _, _ in fmt.parse(en) if f}
        assert fields_ru == fields_en, key
