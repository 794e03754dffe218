"""Commands of the account: login, logout, me, settings, key; and the admin commands."""

from __future__ import annotations

from typing import Annotated

import typer

from aivera.auth.v1 import auth_pb2
from aivera.chat.v1 import chat_pb2
from client.cli.base import JsonOpt, read_secret, run
from client.cli.render import enum_name, out, print_json, table, to_dict, ts
from client.errors import AiveraError, NotFound
from client.messages import t
from client.sdk import PROVIDERS, AsyncClient

settings_app = typer.Typer(help="Настройки: модель и роль / settings.", no_args_is_help=True)
key_app = typer.Typer(
    help="Ключи провайдеров: Gemini, Replicate / your provider keys.", no_args_is_help=True
)
admin_app = typer.Typer(help="Администрирование / administration.", no_args_is_help=True)
user_app = typer.Typer(help="Пользователи / users.", no_args_is_help=True)
prompt_app = typer.Typer(help="Системные промпты / system prompts.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(prompt_app, name="prompt")

PROFILES = {"simple": chat_pb2.MODEL_PROFILE_SIMPLE, "complex": chat_pb2.MODEL_PROFILE_COMPLEX}
KEY_PROMPTS = {"gemini": "key.prompt", "replicate": "key.prompt_replicate"}
ProviderOpt = Annotated[
    str,
    typer.Option(
        "--provider", help="gemini | replicate (Replicate: обучение image LoRA / image LoRAs)"
    ),
]


def _provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise typer.BadParameter(" | ".join(PROVIDERS), param_hint="--provider")
    return provider


def login(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Адрес шлюза (host:port) / gateway address; без него — сервисы напрямую.",
        ),
    ] = None,
) -> None:
    """Войти по статическому токену (скрытый ввод или stdin) / sign in with a static token."""
    token = read_secret(t("login.prompt"))

    async def go(c: AsyncClient) -> None:
        resp = await c.login(token)
        role = enum_name(auth_pb2.Role, resp.user.role, "ROLE_")
        out.print(t("login.ok", username=resp.user.username, role=role), markup=False)

    run(go, server=server)


def logout(
    all_sessions: Annotated[
        bool, typer.Option("--all", help="Завершить все сессии / end every session.")
    ] = False,
) -> None:
    """Выйти: завершить сессию и удалить токены / sign out."""

    async def go(c: AsyncClient) -> None:
        await c.logout(all_sessions=all_sessions)
        out.print(t("logout.ok"))

    run(go)


def me(json_: bool = JsonOpt) -> None:
    """Пользователь, роль, настройки и ключ / who you are and your settings."""

    async def go(c: AsyncClient) -> None:
        user = await c.me()
        settings: chat_pb2.UserSettings | None = None
        role_name = ""
        key: auth_pb2.ProviderKeyStatus | None = None
        try:
            settings = await c.get_settings()
            if settings.selected_role_prompt_id:
                roles = {r.id: r.name for r in await c.list_roles()}
                role_name = roles.get(settings.selected_role_prompt_id, "")
        except AiveraError:
            settings = None  # chat service down: still show the account
        try:
            key = await c.provider_key_status()
        except AiveraError:
            key = None
        try:
            replicate = await c.provider_key_status("replicate")
        except AiveraError:
            replicate = None
        if json_:
            print_json(
                {
                    "user": to_dict(user),
                    "settings": to_dict(settings) if settings else None,
                    "role_name": role_name,
                    "provider_key": to_dict(key) if key else None,
                    "replicate_key": to_dict(replicate) if replicate else None,
                    "active_chat_id": c.credentials.active_chat_id,
                }
            )
            return
        rows = [
            (t("me.user"), f"{user.username} ({user.id})"),
            (t("me.role"), enum_name(auth_pb2.Role, user.role, "ROLE_")),
        ]
        if settings is not None:
            profile = enum_name(chat_pb2.ModelProfile, settings.model_profile, "MODEL_PROFILE_")
            rows.append((t("me.model"), profile))
            rows.append((t("me.prompt_role"), role_name or t("me.no_role")))
        for label, status in (("me.key", key), ("me.replicate_key", replicate)):
            if status is not None:
                shown = t("me.key_set", last4=status.last4) if status.is_set else t("me.key_none")
                rows.append((t(label), shown))
        if c.credentials.active_chat_id:
            rows.append((t("me.chat"), c.credentials.active_chat_id))
        out.print(table(["", ""], rows, header=False))

    run(go)


@settings_app.command("set-model")
def set_model(profile: Annotated[str, typer.Argument(help="simple | complex")]) -> None:
    """Профиль модели: simple (flash) или complex (flash + pro)."""
    if profile not in PROFILES:
        raise typer.BadParameter("simple | complex", param_hint="PROFILE")

    async def go(c: AsyncClient) -> None:
        s = await c.update_settings(model_profile=PROFILES[profile])
        out.print(
            t(
                "settings.model_ok",
                profile=enum_name(chat_pb2.ModelProfile, s.model_profile, "MODEL_PROFILE_"),
            ),
            markup=False,
        )

    run(go)


@settings_app.command("set-role")
def set_role(role: Annotated[str, typer.Argument(help="none | <имя или id роли>")]) -> None:
    """Роль: none или имя/id роли / role prompt: none or a name or id."""

    async def go(c: AsyncClient) -> None:
        if role.lower() in ("none", "нет", ""):
            await c.update_settings(role_prompt_id="")
            out.print(t("settings.role_none"))
            return
        roles = await c.list_roles()
        match = [r for r in roles if r.id == role or r.name.casefold() == role.casefold()]
        if not match:
            raise NotFound(
                t("settings.role_unknown", role=role, names=", ".join(r.name for r in roles))
            )
        await c.update_settings(role_prompt_id=match[0].id)
        out.print(t("settings.role_ok", role=match[0].name), markup=False)

    run(go)


@settings_app.command("roles")
def roles(json_: bool = JsonOpt) -> None:
    """Доступные роли / the roles you can select."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_roles()
        if json_:
            print_json(items)
            return
        out.print(
            table(
                ["id", t("col.name"), t("col.description")],
                [(r.id, r.name, r.description) for r in items],
            )
        )

    run(go)


@key_app.command("set")
def key_set(provider: ProviderOpt = "gemini") -> None:
    """Сохранить ключ (скрытый ввод или stdin) / store your key (Gemini by default)."""
    api_key = read_secret(t(KEY_PROMPTS[_provider(provider)]))

    async def go(c: AsyncClient) -> None:
        s = await c.set_provider_key(api_key, provider)
        out.print(t("key.saved", last4=s.last4), markup=False)

    run(go)


@key_app.command("status")
def key_status(provider: ProviderOpt = "gemini", json_: bool = JsonOpt) -> None:
    """Есть ли ключ / whether a key is stored."""
    _provider(provider)

    async def go(c: AsyncClient) -> None:
        s = await c.provider_key_status(provider)
        if json_:
            print_json(s)
            return
        out.print(
            t("me.key_set", last4=s.last4) + f" ({ts(s.update_time)})"
            if s.is_set
            else t("me.key_none"),
            markup=False,
        )

    run(go)


@key_app.command("delete")
def key_delete(provider: ProviderOpt = "gemini") -> None:
    """Удалить ключ / delete the key."""
    _provider(provider)

    async def go(c: AsyncClient) -> None:
        await c.delete_provider_key(provider)
        out.print(t("key.deleted"))

    run(go)


# ---- admin ----------------------------------------------------------------------------


async def _user_id(c: AsyncClient, ref: str) -> str:
    """A user id from an id or a username."""
    for u in await c.list_users():
        if ref in (u.id, u.username):
            return u.id
    raise NotFound(t("admin.user_unknown", user=ref))


@user_app.command("create")
def user_create(
    username: str,
    admin: Annotated[
        bool, typer.Option("--admin", help="Роль администратора / admin role.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Создать пользователя; статический токен показывается один раз / create a user."""

    async def go(c: AsyncClient) -> None:
        resp = await c.create_user(username, admin=admin)
        if json_:
            print_json(resp)
            return
        out.print(
            t("admin.user_created", username=resp.user.username, id=resp.user.id), markup=False
        )
        out.print(resp.static_token, markup=False, soft_wrap=True)
        out.print(t("admin.token_once"), style="yellow")

    run(go)


@user_app.command("list")
def user_list(json_: bool = JsonOpt) -> None:
    """Пользователи / list users."""

    async def go(c: AsyncClient) -> None:
        users = await c.list_users()
        if json_:
            print_json(users)
            return
        rows = [
            (
                u.id,
                u.username,
                enum_name(auth_pb2.Role, u.role, "ROLE_"),
                enum_name(auth_pb2.UserStatus, u.status, "USER_STATUS_"),
                ts(u.last_seen_time),
            )
            for u in users
        ]
        out.print(
            table(
                ["id", t("col.username"), t("col.role"), t("col.status"), t("col.last_seen")], rows
            )
        )

    run(go)


@user_app.command("disable")
def user_disable(user: Annotated[str, typer.Argument(help="id или имя / id or username")]) -> None:
    """Отключить пользователя (его сессии перестают работать) / disable a user."""

    async def go(c: AsyncClient) -> None:
        u = await c.set_user_status(await _user_id(c, user), active=False)
        out.print(t("admin.user_disabled", username=u.username), markup=False)

    run(go)


@user_app.command("enable")
def user_enable(user: Annotated[str, typer.Argument(help="id или имя / id or username")]) -> None:
    """Включить пользователя / enable a user."""

    async def go(c: AsyncClient) -> None:
        u = await c.set_user_status(await _user_id(c, user), active=True)
        out.print(t("admin.user_enabled", username=u.username), markup=False)

    run(go)


@user_app.command("rotate-token")
def user_rotate(
    user: Annotated[str, typer.Argument(help="id или имя / id or username")],
    json_: bool = JsonOpt,
) -> None:
    """Выдать новый статический токен (старый перестаёт работать) / rotate a static token."""

    async def go(c: AsyncClient) -> None:
        resp = await c.rotate_static_token(await _user_id(c, user))
        if json_:
            print_json(resp)
            return
        out.print(resp.static_token, markup=False, soft_wrap=True)
        out.print(t("admin.token_once"), style="yellow")

    run(go)


@user_app.command("revoke-sessions")
def user_revoke(user: Annotated[str, typer.Argument(help="id или имя / id or username")]) -> None:
    """Завершить все сессии пользователя / revoke every session of a user."""

    async def go(c: AsyncClient) -> None:
        n = await c.revoke_sessions(await _user_id(c, user))
        out.print(t("admin.sessions_revoked", n=n))

    run(go)


@prompt_app.command("list")
def prompt_list(
    all_versions: Annotated[
        bool, typer.Option("--all", help="Все версии / every version.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Системные промпты / system prompts."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_system_prompts(all_versions=all_versions)
        if json_:
            print_json(items)
            return
        rows = [
            (
                p.id,
                enum_name(chat_pb2.SystemPromptName, p.name, "SYSTEM_PROMPT_NAME_"),
                p.version,
                "✓" if p.is_active else "",
                p.description,
            )
            for p in items
        ]
        out.print(
            table(
                ["id", t("col.name"), t("col.version"), t("col.active"), t("col.description")], rows
            )
        )

    run(go)


@prompt_app.command("activate")
def prompt_activate(prompt_id: str) -> None:
    """Сделать версию активной (откат — активация старой) / activate a version."""

    async def go(c: AsyncClient) -> None:
        p = await c.activate_system_prompt(prompt_id)
        name = enum_name(chat_pb2.SystemPromptName, p.name, "SYSTEM_PROMPT_NAME_")
        out.print(t("admin.prompt_activated", name=name, version=p.version), markup=False)

    run(go)
