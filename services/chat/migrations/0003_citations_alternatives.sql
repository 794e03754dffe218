-- Citations show the file a cited block comes from; regenerated and edited messages are
-- kept as alternatives (superseded) instead of being overwritten.
ALTER TABLE message_search_results ADD COLUMN filename text NOT NULL DEFAULT '';

-- An answer's user message (RegenerateMessage answers it again).
ALTER TABLE messages ADD COLUMN reply_to_id uuid REFERENCES messages (id);
-- Replaced by a regenerated answer or an edited message: listed only on request, never
-- in the history a model sees.
ALTER TABLE messages ADD COLUMN superseded boolean NOT NULL DEFAULT false;
UPDATE messages a SET reply_to_id = (
    SELECT u.id FROM messages u
    WHERE u.chat_id = a.chat_id AND u.role = 1 AND u.seq < a.seq
    ORDER BY u.seq DESC LIMIT 1)
WHERE a.role = 2;
