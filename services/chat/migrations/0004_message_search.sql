-- SearchMessages: full-text search over messages with the Russian and the English
-- configuration. A partial expression index: answers being streamed (status 4, their
-- content rewritten at every flush) and failed ones are not indexed, so the streaming
-- writes never touch it. Queries repeat the expression and the predicate exactly.
CREATE INDEX messages_fts ON messages
    USING gin ((to_tsvector('russian', content) || to_tsvector('english', content)))
    WHERE status IN (1, 2) AND NOT superseded;
