-- Chats, their messages (with the images and search results a turn used), attachments,
-- settings (user and system) and the prompts (system, versioned; roles, versioned).
-- Enum-like columns hold the proto enum numbers.

CREATE TABLE chats (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    title text NOT NULL,
    clone_id uuid,
    knowledge_base_ids uuid[] NOT NULL DEFAULT '{}',
    attachments_knowledge_base_id uuid,
    archived boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_message_time timestamptz,
    delete_time timestamptz
);

CREATE INDEX chats_user_activity
    ON chats (user_id, (coalesce(last_message_time, create_time)) DESC, id DESC)
    WHERE delete_time IS NULL;

CREATE TABLE attachments (
    id uuid PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chats (id),
    file_id uuid NOT NULL,
    document_id uuid,
    filename text NOT NULL DEFAULT '',
    status smallint NOT NULL,  -- AttachmentStatus
    error_message text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (chat_id, file_id)
);

CREATE TABLE messages (
    id uuid PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chats (id),
    -- Total order of messages (a user message and its answer are inserted together).
    seq bigserial NOT NULL UNIQUE,
    role smallint NOT NULL,    -- MessageRole
    content text NOT NULL DEFAULT '',
    status smallint NOT NULL,  -- MessageStatus
    models_used text[] NOT NULL DEFAULT '{}',
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    total_tokens bigint NOT NULL DEFAULT 0,
    error jsonb,               -- TurnError {code, reason, message, retryable}
    file_ids uuid[] NOT NULL DEFAULT '{}',
    model_profile smallint NOT NULL DEFAULT 0,
    role_prompt_id uuid,
    role_prompt_version integer NOT NULL DEFAULT 0,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Refreshed by the replica running the turn while status is IN_PROGRESS; a turn whose
    -- heartbeat is stale was cut short (crash, restart) and is marked INCOMPLETE.
    heartbeat_time timestamptz
);

CREATE INDEX messages_chat_order ON messages (chat_id, seq);
-- The turn lock: at most one running turn (IN_PROGRESS answer) per chat, across replicas.
CREATE UNIQUE INDEX messages_one_running_turn ON messages (chat_id) WHERE status = 4;

CREATE TABLE message_images (
    id uuid PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES messages (id),
    ord integer NOT NULL,
    kind smallint NOT NULL,    -- ImageKind
    file_id uuid NOT NULL,     -- the storage service keeps the storage path
    document_id uuid,
    page integer NOT NULL DEFAULT 0,
    box jsonb,                 -- aivera.common.v1.BoundingBox as JSON
    scale real NOT NULL DEFAULT 1,
    width integer NOT NULL,
    height integer NOT NULL,
    size_bytes bigint NOT NULL,
    mime_type text NOT NULL,
    description text NOT NULL DEFAULT '',
    UNIQUE (message_id, ord)
);

CREATE TABLE message_search_results (
    message_id uuid NOT NULL REFERENCES messages (id),
    ord integer NOT NULL,
    block_id text NOT NULL,
    document_id uuid,
    page integer NOT NULL DEFAULT 0,
    text text NOT NULL DEFAULT '',
    box jsonb,                 -- normalised and pixel coordinates
    score real NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, ord)
);

CREATE TABLE settings_user (
    user_id text PRIMARY KEY,
    model_profile smallint,           -- NULL: the system default
    selected_role_prompt_id uuid,     -- NULL: no role
    update_time timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE settings_system (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    allowed_models text[] NOT NULL,
    flash_model text NOT NULL,
    pro_model text NOT NULL,
    local_model_enabled boolean NOT NULL,
    default_model_profile smallint NOT NULL,
    max_message_chars integer NOT NULL CHECK (max_message_chars > 0),
    max_attachments_per_chat integer NOT NULL CHECK (max_attachments_per_chat > 0),
    max_tool_iterations integer NOT NULL CHECK (max_tool_iterations > 0),
    max_zooms_per_turn integer NOT NULL CHECK (max_zooms_per_turn > 0),
    update_time timestamptz
);

CREATE TABLE prompts_system (
    id uuid PRIMARY KEY,
    name text NOT NULL
        CHECK (name IN ('llm_system', 'json_annotation', 'html_ocr', 'flash_extractor')),
    version integer NOT NULL,
    content text NOT NULL,
    description text NOT NULL DEFAULT '',
    is_active boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (name, version)
);
-- Exactly one active version per name (at most one by the index; seeded with one each).
CREATE UNIQUE INDEX prompts_system_one_active ON prompts_system (name) WHERE is_active;

CREATE TABLE prompts_user (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    content text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    is_active boolean NOT NULL DEFAULT true,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every content version of a role prompt (the row above holds the current one).
CREATE TABLE prompts_user_versions (
    role_id uuid NOT NULL REFERENCES prompts_user (id),
    version integer NOT NULL,
    content text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (role_id, version)
);

-- Defaults ---------------------------------------------------------------------------

INSERT INTO settings_system (allowed_models, flash_model, pro_model, local_model_enabled,
                             default_model_profile, max_message_chars,
                             max_attachments_per_chat, max_tool_iterations, max_zooms_per_turn)
VALUES (ARRAY['gemini-2.5-flash', 'gemini-2.5-pro', 'gemini-2.0-flash'],
        'gemini-2.5-flash', 'gemini-2.5-pro', true, 1, 20000, 20, 6, 8);

INSERT INTO prompts_system (id, name, version, content, description, is_active) VALUES
(gen_random_uuid(), 'llm_system', 1,
$$Ты — ассистент инженера, который отвечает на вопросы по технической документации: чертежам, спецификациям, паспортам и отчётам.
Стратегия работы:
1. Сначала прочитай текстовый контекст (найденные блоки документов) и определи, каких данных не хватает для ответа.
2. Если нужная информация находится на чертеже, в таблице или на мелком шрифте — запроси изображение блока или увеличь (ZOOM) нужную область страницы, а не угадывай.
3. Обращай внимание на шифры документов и марки (например, «АР», «КЖ», «ОВ»), номера листов и ревизий; называй их в ответе.
4. Большие листы делай по квадрантам: сначала обзор страницы, затем увеличение нужного квадранта.
5. Отвечай по-русски, кратко и по существу; указывай документ и страницу, на которые опираешься. Если данных недостаточно — прямо скажи об этом.$$,
 'Базовая стратегия: ZOOM, шифры, квадранты', true),
(gen_random_uuid(), 'json_annotation', 1,
$$Контекст документов приходит блоками в формате JSON: у каждого блока есть id, номер страницы (page), вид (text, heading, table, image), текст и рамка (box) в нормированных координатах 0..1 (left, top, right, bottom).
Ссылайся на блоки по их id.
Инструменты:
- request_images(block_ids) — возвращает вырезки указанных блоков из изображений страниц; используй, когда нужно увидеть чертёж, схему или таблицу блока.
- zoom(page, box, scale) — возвращает увеличенную вырезку области страницы в высоком разрешении; box задаётся в нормированных координатах, scale — кратность увеличения (обычно 2–4).
Вызывай инструменты только тогда, когда без изображения ответить нельзя.$$,
 'Как читать JSON-блоки и вызывать request_images/zoom', true),
(gen_random_uuid(), 'html_ocr', 1,
$$Часть блоков содержит результат OCR в HTML: таблицы (<table>, <tr>, <td>), заголовки и абзацы.
Читай таблицы построчно, сохраняя соответствие заголовков столбцов и значений; объединённые ячейки (rowspan/colspan) относятся ко всем охваченным строкам и столбцам.
OCR может ошибаться в цифрах и единицах измерения: если значение важно для ответа и выглядит сомнительно, проверь его по изображению через request_images или zoom.$$,
 'Как читать HTML OCR-блоки и таблицы', true),
(gen_random_uuid(), 'flash_extractor', 1,
$$Ты — этап извлечения данных. Тебе дан документ (текстовые блоки с id), каталог изображений страниц и вопрос пользователя.
Твоя задача — не отвечать на вопрос, а собрать всё, что нужно для ответа:
1. Выбери релевантные блоки и перечисли их id с кратким пояснением, что в них важно.
2. Запроси изображения нужных блоков через request_images и увеличь мелкие детали через zoom.
3. В конце выпиши извлечённые факты (значения, размеры, марки, номера листов) со ссылками на id блоков и страницы.
Пиши по-русски, кратко, без вступлений.$$,
 'Промпт этапа Flash (complex)', true);

INSERT INTO prompts_user (id, name, description, content) VALUES
(gen_random_uuid(), 'инженер', 'Технические вопросы по проектной и рабочей документации',
$$Ты отвечаешь как опытный инженер-проектировщик. Опирайся на нормы и проектные решения, называй марки, размеры, материалы и номера листов, указывай на несоответствия и риски.$$),
(gen_random_uuid(), 'экономист', 'Объёмы, стоимость и сроки',
$$Ты отвечаешь как инженер-экономист. Выделяй объёмы работ, количества, единицы измерения, стоимость и сроки; сводные данные оформляй таблицей; отмечай, каких данных не хватает для расчёта.$$),
(gen_random_uuid(), 'инженер по гарантии', 'Гарантийные обязательства и дефекты',
$$Ты отвечаешь как инженер по гарантийным обязательствам. Обращай внимание на гарантийные сроки, условия эксплуатации, требования к обслуживанию, описания дефектов и ответственность сторон; ссылайся на пункты документов.$$);

INSERT INTO prompts_user_versions (role_id, version, content)
SELECT id, version, content FROM prompts_user;
