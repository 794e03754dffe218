"""What a user reads when a call fails, by error reason, in Russian and English.

The status message is English for developers; this text travels beside it as a
`google.rpc.LocalizedMessage` in the caller's language (`accept-language` metadata:
`en…` → English, anything else → Russian, the product's language). One catalogue for
the whole mesh, keyed by the contract's reasons, so a reason reads the same everywhere.
"""

from __future__ import annotations

from services.common.errors import Reason

RU = "ru-RU"
EN = "en-US"

CATALOGUE: dict[int, tuple[str, str]] = {
    Reason.INVALID_ARGUMENT: ("Неверный запрос: {field}.", "Invalid request: {field}."),
    Reason.NOT_FOUND: ("Не найдено.", "Not found."),
    Reason.ALREADY_EXISTS: ("Такое имя уже занято.", "That name is already taken."),
    Reason.FAILED_PRECONDITION: (
        "Сейчас это действие недоступно.",
        "This action is not possible right now.",
    ),
    Reason.PERMISSION_DENIED: ("Недостаточно прав.", "Permission denied."),
    Reason.UNAUTHENTICATED: ("Нужно войти заново.", "Please sign in again."),
    Reason.RESOURCE_EXHAUSTED: ("Достигнут лимит.", "A limit has been reached."),
    Reason.UNAVAILABLE: (
        "Сервис временно недоступен, повторите позже.",
        "The service is temporarily unavailable; try again later.",
    ),
    Reason.ABORTED: (
        "Операция прервана параллельным изменением.",
        "The operation was stopped by a concurrent change.",
    ),
    Reason.UNIMPLEMENTED: ("Это пока не поддерживается.", "This is not supported yet."),
    Reason.INTERNAL: (
        "Внутренняя ошибка сервиса. Код запроса: {request_id}.",
        "Internal service error. Request id: {request_id}.",
    ),
    Reason.CANCELLED: ("Запрос отменён.", "The request was cancelled."),
    Reason.DEADLINE_EXCEEDED: ("Время ожидания истекло.", "The request timed out."),
    Reason.INVALID_PAGE_TOKEN: (
        "Ссылка на страницу списка устарела; начните с первой страницы.",
        "The page token is not valid for this list; start from the first page.",
    ),
    Reason.SERVICE_STARTING: (
        "Сервис запускается, повторите через несколько секунд.",
        "The service is starting; retry in a few seconds.",
    ),
    Reason.DATABASE_UNAVAILABLE: (
        "База данных временно недоступна, повторите позже.",
        "The database is temporarily unavailable; try again later.",
    ),
    Reason.DEPENDENCY_UNAVAILABLE: (
        "Связанный сервис временно недоступен, повторите позже.",
        "A service this one depends on is unavailable; try again later.",
    ),
    Reason.TOKEN_MISSING: ("Нужно войти.", "Please sign in."),
    Reason.TOKEN_INVALID: ("Токен доступа недействителен.", "The access token is not valid."),
    Reason.TOKEN_EXPIRED: ("Токен доступа истёк.", "The access token has expired."),
    Reason.BAD_STATIC_TOKEN: (
        "Неверный или отключённый статический токен.",
        "Wrong or disabled static token.",
    ),
    Reason.BAD_REFRESH_TOKEN: (
        "Сессия закончилась, войдите заново.",
        "The session has ended; sign in again.",
    ),
    Reason.TOO_MANY_FAILURES: (
        "Слишком много неудачных попыток входа, подождите.",
        "Too many failed sign-ins; wait a little.",
    ),
    Reason.ADMIN_REQUIRED: ("Нужны права администратора.", "This needs the admin role."),
    Reason.INTERNAL_ONLY: (
        "Этот вызов доступен только сервисам.",
        "This call is internal to the mesh.",
    ),
    Reason.BAD_SERVICE_CREDENTIAL: (
        "Неверные учётные данные сервиса.",
        "Wrong service credential.",
    ),
    Reason.TURN_IN_PROGRESS: (
        "Предыдущий ответ в этом чате ещё формируется.",
        "The previous answer in this chat is still being written.",
    ),
    Reason.PROVIDER_KEY_MISSING: (
        "Задайте ключ Gemini: без него локальная модель сейчас отключена.",
        "Set a Gemini key: the local model is turned off without one.",
    ),
    Reason.PROVIDER_RATE_LIMITED: (
        "Модель перегружена запросами, повторите через минуту.",
        "The model is rate-limited; retry in a minute.",
    ),
    Reason.PROVIDER_UNAVAILABLE: (
        "Модель сейчас недоступна, повторите позже.",
        "The model is unavailable; try again later.",
    ),
    Reason.PROVIDER_KEY_INVALID: (
        "Ключ Gemini отклонён, проверьте его.",
        "The Gemini key was rejected; check it.",
    ),
    Reason.ATTACHMENT_NOT_READY: (
        "Документ ещё обрабатывается.",
        "The document is still being processed.",
    ),
    Reason.FILE_TOO_LARGE: ("Файл слишком большой.", "The file is too large."),
    Reason.UNSUPPORTED_FORMAT: ("Формат файла не поддерживается.", "Unsupported file format."),
    Reason.CHECKSUM_MISMATCH: (
        "Файл повреждён при передаче, загрузите его снова.",
        "The file was corrupted in transfer; upload it again.",
    ),
    Reason.FILE_NOT_READY: ("Файл ещё не загружен.", "The file is not uploaded yet."),
    Reason.DOCUMENT_NOT_READY: (
        "Документ ещё не обработан.",
        "The document is not processed yet.",
    ),
    Reason.QUOTA_EXCEEDED: ("Квота исчерпана.", "The quota is used up."),
    Reason.DATASET_NOT_READY: (
        "Набор данных ещё проверяется или не прошёл проверку.",
        "The dataset is still being validated or failed validation.",
    ),
    Reason.JOB_STATE: (
        "Задача обучения в состоянии, которое не допускает это действие.",
        "The training job's state does not allow this.",
    ),
    Reason.CLONE_NOT_READY: (
        "Клон ещё не готов: модель не обучена.",
        "The clone is not ready: its model is not trained yet.",
    ),
    Reason.BASE_MODEL_UNAVAILABLE: (
        "Эта базовая модель недоступна.",
        "This base model is not available.",
    ),
    Reason.TOO_MANY_ACTIVE_JOBS: (
        "Слишком много активных задач обучения.",
        "Too many active training jobs.",
    ),
    Reason.IN_USE: ("Ресурс ещё используется.", "The resource is still in use."),
    Reason.MODEL_NOT_READY: ("Модель ещё не готова.", "The model is not ready yet."),
    Reason.SHUTDOWN: (
        "Сервис перезапускается: сделанное сохранено, продолжение доступно через повтор.",
        "The service is restarting: what was done is saved; retry to continue.",
    ),
    # -- training as a product (100-119)
    Reason.IMAGE_DIMENSIONS: (
        "Размер изображения вне допустимого: каждая сторона от 512 до 4096 пикселей.",
        "The image size is out of range: each side must be 512 to 4096 pixels.",
    ),
    Reason.REFERENCE_IMAGE_COUNT: (
        "Для LoRA нужно от 4 до 15 референсных изображений.",
        "An image LoRA needs 4 to 15 reference images.",
    ),
    Reason.DUPLICATE_IMAGE: (
        "Это изображение уже добавлено в LoRA.",
        "This image is already in the image LoRA.",
    ),
    Reason.IMAGE_LORA_STATE: (
        "В текущем статусе LoRA это действие недоступно.",
        "This action is not available in the image LoRA's current status.",
    ),
    Reason.IMAGE_LORA_NOT_READY: (
        "LoRA ещё не обучена: генерация доступна после завершения обучения.",
        "The image LoRA is not trained yet: generate once its training has finished.",
    ),
    # -- image generations (G: 118-119)
    Reason.TOO_MANY_GENERATIONS: (
        "Слишком много генераций одновременно: дождитесь окончания текущих.",
        "Too many generations at once: wait for the running ones to finish.",
    ),
    # -- chat as a product (120-139)
    Reason.NOT_LATEST_MESSAGE: (
        "Повторить или изменить можно только последнее сообщение чата.",
        "Only the chat's latest message can be regenerated or edited.",
    ),
    Reason.IMAGE_TOO_LARGE: (
        "Изображение слишком большое: уменьшите его разрешение или размер файла.",
        "The image is too large: reduce its resolution or file size.",
    ),
    Reason.MODEL_BUSY: (
        "Модель сейчас перегружена запросами: повторите чуть позже.",
        "The model is busy with other requests: retry shortly.",
    ),
    Reason.ADAPTER_INVALID: (
        "Адаптер клона повреждён или не подходит к базовой модели: переобучите клон.",
        "The clone's adapter is corrupt or does not fit its base model: retrain the clone.",
    ),
    # -- service identity and sessions (140-159)
    Reason.SESSION_REVOKED: (
        "Сеанс завершён (токен заменён или доступ отключён). Войдите заново.",
        "Your session has ended (token replaced or access disabled). Sign in again.",
    ),
    Reason.CALLER_NOT_ALLOWED: (
        "Этому сервису вызов запрещён.",
        "This service is not allowed to make this call.",
    ),
    Reason.DELEGATION_REQUIRED: (
        "Сервис обратился от имени пользователя без его полномочий.",
        "A service acted for a user without a delegation.",
    ),
    Reason.DELEGATION_INVALID: (
        "Полномочия на действие от имени пользователя недействительны.",
        "The delegation to act for the user is not valid.",
    ),
}


def locale_of(accept_language: str | None) -> str:
    """The catalogue language for an `accept-language` value."""
    if accept_language and accept_language.strip().lower().startswith("en"):
        return EN
    return RU


# Texts that depend on the error's `provider` metadata: a missing Replicate key is not
# the Gemini key the catalogue's text talks about.
BY_PROVIDER: dict[tuple[int, str], tuple[str, str]] = {
    (Reason.PROVIDER_KEY_MISSING, "replicate"): (
        "Задайте свой ключ Replicate в настройках или выберите другой способ обучения "
        "(локально или симуляция).",
        "Set your Replicate key in the settings, or choose another way to train "
        "(local or simulation).",
    ),
}


def localized(reason: int, locale: str, **values: str) -> str:
    """The user-facing text of `reason` in `locale`; missing placeholders read as '—'."""
    ru, en = BY_PROVIDER.get(
        (reason, values.get("provider", "")), CATALOGUE.get(reason, CATALOGUE[Reason.INTERNAL])
    )
    template = en if locale == EN else ru
    return template.format_map(_Defaults(values))


class _Defaults(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "—"
