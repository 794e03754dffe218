"""The `aivera` app: the command groups put together.

Messages are Russian by default and English with `AIVERA_LANG=en` (`client.messages`).
Exit codes: 0 ok, 1 other error, 2 usage, 3 auth (log in again / no permission),
4 not found, 5 service unavailable, 130 interrupted.
"""

from __future__ import annotations

import typer

from client.cli import account, chat, lora, training

app = typer.Typer(
    name="aivera",
    help="Aivera: чаты с документами, обучение LoRA и клоны / documents chat, LoRA, clones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("login")(account.login)
app.command("logout")(account.logout)
app.command("me")(account.me)
app.add_typer(account.settings_app, name="settings")
app.add_typer(account.key_app, name="key")
app.add_typer(chat.chat_app, name="chat")
app.add_typer(chat.file_app, name="file")
app.add_typer(chat.kb_app, name="kb")
app.add_typer(chat.project_app, name="project")
app.add_typer(training.dataset_app, name="dataset")
app.add_typer(training.train_app, name="train")
app.add_typer(training.model_app, name="model")
app.add_typer(training.clone_app, name="clone")
app.add_typer(training.notification_app, name="notifications")
app.add_typer(training.webhook_app, name="webhooks")
app.add_typer(lora.lora_app, name="lora")
app.add_typer(account.admin_app, name="admin")
# Chat administration: new system prompt versions, role prompts, system settings.
account.prompt_app.command("create")(chat.prompt_create)
account.admin_app.add_typer(chat.role_app, name="role")
account.admin_app.add_typer(chat.system_app, name="system")


def main() -> None:
    app()
