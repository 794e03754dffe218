-- The event log of turns: every ChatEvent a turn streamed, in seq order, so WatchTurn on
-- any replica replays exactly what SendMessage sent. A turn writes its events in batches
-- (with the partial answer, every TURN_FLUSH_INTERVAL_SECONDS) and its terminal event in
-- the same transaction as the stored answer; the log is always a gapless prefix.
-- One row per batch (not per event): 500 streams at 20 tokens/s are 500 rows a second,
-- not 10,000, which kept the streams' p99 inter-token delay within its goal.
CREATE TABLE turn_events (
    message_id uuid NOT NULL REFERENCES messages (id),
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    events bytea NOT NULL,       -- aivera.chat.v1.ChatEvent messages, each after its
                                 -- 4-byte big-endian length
    terminal boolean NOT NULL,   -- the batch ends with `final` or `error`: the turn's end
    PRIMARY KEY (message_id, first_seq)
);

-- CancelTurn on a replica that does not run the turn: the running replica reads the flag
-- at its next flush and stops the turn.
ALTER TABLE messages ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
