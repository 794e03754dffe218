-- Projects: each user's tree of folders holding documents (RAG documents placed in a
-- folder) and chats (chats.folder_id). Deleting a folder deletes its subtree's rows;
-- chats in it move to the top (folder_id NULL).
CREATE TABLE folders (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    parent_id uuid REFERENCES folders (id) ON DELETE CASCADE,
    name text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Sibling names are unique, case-insensitively (top-level ones per user).
CREATE UNIQUE INDEX folders_sibling_name
    ON folders (user_id, coalesce(parent_id, '00000000-0000-0000-0000-000000000000'),
                lower(name));
CREATE INDEX folders_parent ON folders (parent_id);

CREATE TABLE folder_documents (
    folder_id uuid NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
    document_id uuid NOT NULL,
    knowledge_base_id uuid NOT NULL,
    filename text NOT NULL DEFAULT '',
    add_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (folder_id, document_id)
);

ALTER TABLE chats ADD COLUMN folder_id uuid REFERENCES folders (id) ON DELETE SET NULL;
CREATE INDEX chats_folder ON chats (folder_id) WHERE folder_id IS NOT NULL;
