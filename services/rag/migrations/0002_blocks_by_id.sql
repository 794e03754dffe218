-- Search answers carry their hits' blocks, looked up by (document, block id) in one
-- query for the whole response (Store.hit_context).
CREATE INDEX blocks_id ON blocks (document_id, id);
