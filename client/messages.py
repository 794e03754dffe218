"""Every message the SDK and the CLI show, in Russian (default) and English.

`AIVERA_LANG=en` (or any value starting with `en`) selects English; the language is read
at each call, so tests and long-lived processes may switch it. `t(key, **values)` formats
the message with `str.format`.
"""

from __future__ import annotations

import os

MESSAGES: dict[str, tuple[str, str]] = {
    # session
    "auth.login_required": (
        "Вы не вошли или сессия закончилась. Выполните `aivera login`.",
        "You are not signed in or the session has ended. Run `aivera login`.",
    ),
    "auth.session_ended": (
        "Сессия закончилась (токен обновления отозван или истёк). Выполните `aivera login`.",
        "The session has ended (refresh token revoked or expired). Run `aivera login`.",
    ),
    "auth.bad_token": (
        "Неверный или отключённый статический токен.",
        "Wrong or disabled static token.",
    ),
    "login.prompt": ("Статический токен", "Static token"),
    "login.ok": ("Вход выполнен: {username} ({role}).", "Signed in as {username} ({role})."),
    "logout.ok": ("Вы вышли. Токены удалены.", "Signed out. Tokens removed."),
    # errors
    "error.auth": ("Ошибка входа: {detail}", "Authentication error: {detail}"),
    "error.permission": ("Недостаточно прав: {detail}", "Permission denied: {detail}"),
    "error.not_found": ("Не найдено", "Not found"),
    "error.not_found_detail": ("Не найдено: {detail}", "Not found: {detail}"),
    "error.unavailable": (
        "Сервис недоступен, повторите позже: {detail}",
        "Service unavailable, try again later: {detail}",
    ),
    "error.generic": ("Ошибка: {detail}", "Error: {detail}"),
    "error.empty_secret": ("Пустое значение.", "Empty value."),
    "error.bad_choice": (
        "Неизвестное значение «{value}»: выберите {choices}.",
        "Unknown value '{value}': choose {choices}.",
    ),
    "interrupted": ("Прервано.", "Interrupted."),
    # me / settings / key
    "me.user": ("Пользователь", "User"),
    "me.role": ("Роль в системе", "Account role"),
    "me.model": ("Профиль модели", "Model profile"),
    "me.prompt_role": ("Роль ассистента", "Assistant role"),
    "me.no_role": ("без роли", "none"),
    "me.key": ("Ключ Gemini", "Gemini key"),
    "me.replicate_key": ("Ключ Replicate", "Replicate key"),
    "me.key_set": ("задан, …{last4}", "set, …{last4}"),
    "me.key_none": ("не задан", "not set"),
    "me.chat": ("Активный чат", "Active chat"),
    "settings.model_ok": ("Профиль модели: {profile}.", "Model profile: {profile}."),
    "settings.role_none": ("Роль снята.", "No role selected."),
    "settings.role_ok": ("Роль: {role}.", "Role: {role}."),
    "settings.role_unknown": (
        "Нет активной роли «{role}». Доступны: {names}",
        "No active role '{role}'. Available: {names}",
    ),
    "key.prompt": ("Ключ Gemini", "Gemini API key"),
    "key.saved": ("Ключ сохранён (…{last4}).", "Key saved (…{last4})."),
    "key.deleted": ("Ключ удалён.", "Key deleted."),
    "key.prompt_replicate": ("Токен Replicate API", "Replicate API token"),
    # admin
    "admin.user_created": (
        "Создан пользователь {username} ({id}).",
        "Created user {username} ({id}).",
    ),
    "admin.token_once": (
        "Статический токен показан один раз — передайте его пользователю безопасно.",
        "The static token is shown only once: hand it over safely.",
    ),
    "admin.user_unknown": ("Нет пользователя «{user}».", "No user '{user}'."),
    "admin.user_disabled": ("Пользователь {username} отключён.", "User {username} disabled."),
    "admin.user_enabled": ("Пользователь {username} включён.", "User {username} enabled."),
    "admin.sessions_revoked": ("Завершено сессий: {n}.", "Sessions revoked: {n}."),
    "admin.prompt_activated": (
        "Активна версия {version} промпта {name}.",
        "Version {version} of prompt {name} is active.",
    ),
    # chat
    "chat.created": (
        "Чат «{title}» создан и выбран ({id}).",
        "Chat '{title}' created and selected ({id}).",
    ),
    "chat.using": ("Активный чат: «{title}» ({id}).", "Active chat: '{title}' ({id})."),
    "chat.no_active": (
        "Нет активного чата: `aivera chat new` или `aivera chat use <id>`, либо --chat.",
        "No active chat: `aivera chat new` or `aivera chat use <id>`, or pass --chat.",
    ),
    "chat.accepted": ("Сообщение принято", "Message accepted"),
    "chat.models_used": (
        "Модели: {models} · профиль {profile}",
        "Models: {models} · profile {profile}",
    ),
    "chat.tokens": ("токенов: {n}", "tokens: {n}"),
    "chat.turn_failed": ("Ход завершился ошибкой: {message}", "The turn failed: {message}"),
    "chat.cancelled": (
        "Ход отменён; частичный ответ сохранён как незавершённый.",
        "Turn cancelled; the partial answer is stored as incomplete.",
    ),
    "chat.reconnecting": (
        "Связь потеряна, переподключение ({attempt}) с события {seq}…",
        "Connection lost, reattaching ({attempt}) after event {seq}…",
    ),
    "chat.watch_gave_up": (
        "Не удалось переподключиться к ходу; он продолжается (aivera chat watch).",
        "Could not reattach to the turn; it goes on (aivera chat watch).",
    ),
    "chat.watch_stopped": (
        "Наблюдение остановлено; ход продолжается (aivera chat watch {turn}).",
        "Stopped watching; the turn goes on (aivera chat watch {turn}).",
    ),
    "chat.attached": (
        "Файл {filename} прикреплён: {status}.",
        "File {filename} attached: {status}.",
    ),
    "chat.sources": ("Источники:", "Sources:"),
    "chat.source_page": ("с. {page}", "p. {page}"),
    "chat.source_block": ("блок {block}", "block {block}"),
    "chat.sources_used": (
        "Использовано фрагментов документов: {n} (--sources — список).",
        "Document fragments used: {n} (--sources lists them).",
    ),
    "chat.images": ("Изображения ответа:", "Images of the answer:"),
    "chat.superseded": ("заменено", "superseded"),
    "chat.no_answer": (
        "В чате нет ответа, который можно получить заново.",
        "The chat has no answer to regenerate.",
    ),
    "chat.no_user_message": (
        "В чате нет сообщения, которое можно изменить.",
        "The chat has no message to edit.",
    ),
    "chat.renamed": ("Чат переименован: «{title}».", "Chat renamed: '{title}'."),
    "chat.archived": ("Чат «{title}» в архиве.", "Chat '{title}' archived."),
    "chat.unarchived": ("Чат «{title}» возвращён из архива.", "Chat '{title}' unarchived."),
    "chat.deleted": ("Чат удалён.", "Chat deleted."),
    "chat.search_none": ("Ничего не найдено.", "Nothing found."),
    "chat.detached": ("Файл откреплён от чата.", "File detached from the chat."),
    "chat.moved": ("Чат «{title}» перемещён.", "Chat '{title}' moved."),
    "project.created": ("Папка «{name}» создана ({id}).", "Folder '{name}' created ({id})."),
    "project.saved": ("Папка «{name}» сохранена.", "Folder '{name}' saved."),
    "project.deleted": (
        "Папка удалена; её чаты перенесены наверх.",
        "Folder deleted; its chats moved to the top.",
    ),
    "project.doc_added": ("Документ {filename} в папке.", "Document {filename} is in the folder."),
    "project.doc_removed": ("Документ убран из папки.", "Document taken out of the folder."),
    "admin.prompt_created": (
        "Промпт {name}: версия {version} сохранена ({id}).",
        "Prompt {name}: version {version} saved ({id}).",
    ),
    "admin.role_saved": (
        "Роль «{name}», версия {version} ({id}).",
        "Role '{name}', version {version} ({id}).",
    ),
    "admin.nothing_to_change": ("Нечего менять: укажите параметры.", "Nothing to change."),
    "role.user": ("Вы", "You"),
    "role.assistant": ("Ассистент", "Assistant"),
    "role.system": ("Система", "System"),
    "role.unspecified": ("?", "?"),
    # files / kb
    "file.uploaded": ("Загружен {filename} ({size}).", "Uploaded {filename} ({size})."),
    "file.downloaded": ("Скачан {filename}.", "Downloaded {filename}."),
    "kb.created": (
        "База знаний «{name}» создана ({id}).",
        "Knowledge base '{name}' created ({id}).",
    ),
    "kb.ingesting": ("Индексация", "Ingesting"),
    "kb.added": (
        "Документ {filename}: {status}, фрагментов {chunks}.",
        "Document {filename}: {status}, {chunks} chunks.",
    ),
    # training
    "dataset.validating": ("Проверка датасета…", "Validating the dataset…"),
    "dataset.stats": (
        "Примеров {examples}, токенов {tokens} (обучаемых {trained}), среднее {mean}, "
        "максимум {max}, длиннее лимита {over}.",
        "{examples} examples, {tokens} tokens ({trained} trained), mean {mean}, "
        "max {max}, {over} over the length limit.",
    ),
    "dataset.error_line": ("строка {line}: {message}", "line {line}: {message}"),
    "dataset.more_errors": ("…и ещё ошибок: {n}", "…and {n} more errors"),
    "train.started": ("Задание {id} создано: {status}.", "Job {id} created: {status}."),
    "train.status": ("Статус", "Status"),
    "train.status_now": ("Задание {id}: {status}.", "Job {id}: {status}."),
    "train.step": ("шаг", "step"),
    "train.checkpoint": ("Контрольная точка на шаге {step}.", "Checkpoint at step {step}."),
    "train.reconnecting": (
        "Связь потеряна, переподключение ({attempt}) с события {seq}…",
        "Connection lost, reattaching ({attempt}) after event {seq}…",
    ),
    "train.watch_gave_up": (
        "Не удалось переподключиться к заданию.",
        "Could not reattach to the job.",
    ),
    "train.watch_stopped": (
        "Наблюдение остановлено; задание продолжается (aivera train watch, чтобы вернуться).",
        "Stopped watching; the job goes on (aivera train watch to come back).",
    ),
    "train.finished": ("Итог: {status} · {summary}", "Result: {status} · {summary}"),
    "train.model": ("Модель: {id}", "Model: {id}"),
    "cost": ("Стоимость: {cost}", "Cost: {cost}"),
    "col.cost": ("Стоимость", "Cost"),
    "estimate.hardware": ("Оборудование", "Hardware"),
    "estimate.tokens": ("Токенов за эпоху (обучаемых)", "Tokens per epoch (trained)"),
    "estimate.steps": ("Шагов", "Steps"),
    "estimate.time": ("Ожидаемое время", "Expected time"),
    "estimate.cost": ("Ожидаемая стоимость", "Expected cost"),
    "estimate.memory": ("Память: нужно / есть", "Memory: needed / available"),
    "estimate.no_fit": (
        "Не помещается в память: уменьшите batch_size или max_seq_length, включите "
        "gradient checkpointing или QLoRA, или выберите другое оборудование.",
        "Does not fit in memory: lower batch_size or max_seq_length, enable gradient "
        "checkpointing or QLoRA, or choose other hardware.",
    ),
    "estimate.over_quota": ("Сверх квоты: {why}", "Over the quota: {why}"),
    "quota.month": ("Месяц", "Month"),
    "quota.jobs": ("Незавершённых заданий", "Unfinished jobs"),
    "quota.gpu_hours": ("GPU-часы", "GPU hours"),
    "quota.budget": ("Расход / бюджет", "Spent / budget"),
    "notes.marked": ("Отмечено прочитанными: {n}.", "Marked read: {n}."),
    "webhook.created": ("Вебхук {id} создан.", "Webhook {id} created."),
    "webhook.secret": (
        "Секрет подписи (показывается один раз): {secret}",
        "Signing secret (shown once): {secret}",
    ),
    "webhook.deleted": ("Вебхук {id} удалён.", "Webhook {id} deleted."),
    "model.downloaded": ("Файлы модели в {path}", "Model files in {path}"),
    "model.renamed": ("Модель {id}: «{name}».", "Model {id}: '{name}'."),
    "model.deleted": ("Модель {id} удалена.", "Model {id} deleted."),
    "model.promoted": ("Модель {id} «{name}» создана.", "Model {id} '{name}' created."),
    "model.no_checkpoint": ("Нет такой контрольной точки.", "No such checkpoint."),
    "clone.created": ("Клон «{name}» создан ({id}).", "Clone '{name}' created ({id})."),
    "clone.chat_hint": (
        'Пишите: aivera chat send "…"',
        'Now: aivera chat send "…"',
    ),
    # table columns
    "col.name": ("Имя", "Name"),
    "col.title": ("Название", "Title"),
    "col.description": ("Описание", "Description"),
    "col.status": ("Статус", "Status"),
    "col.role": ("Роль", "Role"),
    "col.username": ("Пользователь", "Username"),
    "col.last_seen": ("Последний вход", "Last seen"),
    "col.last_activity": ("Активность", "Last activity"),
    "col.version": ("Версия", "Version"),
    "col.active": ("Активна", "Active"),
    "col.size": ("Размер", "Size"),
    "col.type": ("Тип", "Type"),
    "col.created": ("Создан", "Created"),
    "col.documents": ("Документы", "Documents"),
    "col.chunks": ("Фрагменты", "Chunks"),
    "col.examples": ("Примеры", "Examples"),
    "col.steps": ("Шаги", "Steps"),
    "col.base_model": ("Базовая модель", "Base model"),
    "col.model": ("Модель", "Model"),
    "col.family": ("Семейство", "Family"),
    "col.parameters": ("Параметры", "Parameters"),
    "col.context": ("Контекст", "Context"),
    "col.license": ("Лицензия", "Licence"),
    "col.local": ("Локально", "Local"),
    "col.memory": ("Память", "Memory"),
    "col.price": ("Цена", "Price"),
    "col.amount": ("Сумма", "Amount"),
    "col.jobs": ("Заданий", "Jobs"),
    "col.events": ("События", "Events"),
    "col.secret": ("Секрет", "Secret"),
    "col.codes": ("Ответы", "Responses"),
    # image LoRAs
    "lora.unknown": (
        "Нет image LoRA «{ref}» (ни id, ни слова-триггера, ни названия).",
        "No image LoRA '{ref}' (no such id, trigger word or name).",
    ),
    "lora.too_large": (
        "{name}: {mib} МБ — больше 10 МБ, допустимых для референса.",
        "{name}: {mib} MiB is over the 10 MiB a reference image may have.",
    ),
    "lora.simulated": ("симуляция", "simulated"),
    "lora.kind": ("Тип", "Kind"),
    "lora.trigger": ("Слово-триггер", "Trigger word"),
    "lora.progress": ("Прогресс", "Progress"),
    "lora.executor": ("Исполнитель", "Executor"),
    "lora.attempt": ("Попытка", "Attempt"),
    "lora.job": ("Задание", "Job"),
    "lora.weights": ("Веса", "Weights"),
    "lora.finished": ("Завершено", "Finished"),
    "lora.pixels": ("Пиксели", "Pixels"),
    "lora.caption": ("Подпись", "Caption"),
    "lora.images": (
        "Референсов: {n} (для обучения нужно 4–15).",
        "Reference images: {n} (training needs 4–15).",
    ),
    "lora.images_col": ("Изображения", "Images"),
    "lora.scale": ("Сила", "Scale"),
    "lora.prompt": ("Промпт", "Prompt"),
    "lora.created": ("Создана image LoRA «{name}» ({id}).", "Created image LoRA '{name}' ({id})."),
    "lora.started": (
        "«{name}»: {status}, исполнитель {executor}, попытка {attempt}.",
        "'{name}': {status}, executor {executor}, attempt {attempt}.",
    ),
    "lora.status_now": ("«{name}»: {status}.", "'{name}': {status}."),
    "lora.ended": ("Обучение завершено: {status}.", "Training ended: {status}."),
    "lora.use_hint": (
        'Генерация: aivera lora generate {word} "{word} …"',
        'Generate: aivera lora generate {word} "{word} …"',
    ),
    "lora.watch_stopped": (
        "Слежение остановлено; обучение продолжается на сервере (aivera lora watch).",
        "Stopped watching; the training goes on on the server (aivera lora watch).",
    ),
    "lora.deleted": ("Image LoRA {id} удалена.", "Image LoRA {id} deleted."),
    "lora.generating": ("Генерация", "Generating"),
    "lora.queued": ("Промпт: {prompt} · seed {seed}", "Prompt: {prompt} · seed {seed}"),
    "lora.saved": ("Сохранено: {path} ({w}×{h})", "Saved: {path} ({w}×{h})"),
    "lora.generation_done": (
        "Генерация: {status}, изображений: {n}.",
        "Generation: {status}, images: {n}.",
    ),
}


def lang() -> str:
    return "en" if os.environ.get("AIVERA_LANG", "").lower().startswith("en") else "ru"


def t(key: str, **values: object) -> str:
    ru, en = MESSAGES.get(key, (key, key))
    text = en if lang() == "en" else ru
    return text.format(**values) if values else text
