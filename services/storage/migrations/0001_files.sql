-- Metadata of stored files. The bytes live in object storage under storage_path; no URL
-- is ever stored (URLs are signed on demand).
CREATE TABLE files (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    bucket text NOT NULL
        CHECK (bucket IN ('documents', 'images', 'datasets', 'models', 'training-images')),
    storage_path text NOT NULL,
    filename text NOT NULL,
    content_type text NOT NULL DEFAULT '',
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256 text NOT NULL DEFAULT '',
    -- What the client declared at CreateUploadUrl; checked by CompleteUpload.
    declared_sha256 text NOT NULL DEFAULT '',
    status text NOT NULL CHECK (status IN ('uploading', 'ready', 'deleted')),
    backend text NOT NULL CHECK (backend IN ('s3', 'local')),
    labels jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz,
    -- UPLOADING files: when the upload URL (or stream) stops being valid.
    upload_expires_at timestamptz
);

CREATE INDEX files_user_newest ON files (user_id, created_at DESC, id DESC)
    WHERE status <> 'deleted';
CREATE INDEX files_labels ON files USING gin (labels jsonb_path_ops);
CREATE INDEX files_deleted ON files (deleted_at) WHERE status = 'deleted';
CREATE INDEX files_uploading ON files (upload_expires_at) WHERE status = 'uploading';
CREATE INDEX files_local ON files (created_at) WHERE backend = 'local' AND status = 'ready';
