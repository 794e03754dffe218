-- Knowledge bases, their documents, and what parsing found (pages and blocks). Vectors
-- live in Qdrant; every row names its owner and every query filters on it.
CREATE TABLE knowledge_bases (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    clone_id text NOT NULL DEFAULT '',
    chat_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX knowledge_bases_user_newest ON knowledge_bases (user_id, created_at DESC, id DESC);

CREATE TABLE documents (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    knowledge_base_id uuid NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    file_id text NOT NULL,
    filename text NOT NULL DEFAULT '',
    format text NOT NULL DEFAULT '',
    status text NOT NULL CHECK (status IN ('processing', 'ready', 'failed')),
    error text NOT NULL DEFAULT '',
    page_count integer NOT NULL DEFAULT 0,
    block_count integer NOT NULL DEFAULT 0,
    chunk_count integer NOT NULL DEFAULT 0,
    -- The running ingest that owns the row; a finishing ingest whose token no longer
    -- matches (deleted, or superseded after going stale) writes nothing.
    ingest_token uuid,
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (knowledge_base_id, file_id)
);

CREATE INDEX documents_kb_newest ON documents (knowledge_base_id, created_at DESC, id DESC);
CREATE INDEX documents_user ON documents (user_id);

CREATE TABLE pages (
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    number integer NOT NULL CHECK (number >= 1),
    -- The rendered PNG in the storage `images` bucket; '' for formats not rendered.
    image_file_id text NOT NULL DEFAULT '',
    width_px integer NOT NULL DEFAULT 0,
    height_px integer NOT NULL DEFAULT 0,
    PRIMARY KEY (document_id, number)
);

CREATE TABLE blocks (
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    -- Position in reading order over the whole document (the block paging key).
    seq integer NOT NULL,
    id text NOT NULL,
    page integer NOT NULL,
    kind text NOT NULL,
    text text NOT NULL,
    -- services.rag.model.Box.to_dict(), or NULL for formats without layout.
    box jsonb,
    PRIMARY KEY (document_id, seq)
);

CREATE INDEX blocks_page ON blocks (document_id, page, seq);
