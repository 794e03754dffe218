-- The event log of turns: every ChatEvent a turn streamed, in seq order, so WatchTurn on
-- any replica replays exactly what SendMessage sent. A turn writes its events in batches
-- (with the partial answer, every TURN_FLUSH_INTERVAL_SECONDS) and its terminal event in
-- the same transaction as the stored answer; the log is always a gapless prefix.
CREATE TABLE turn_events (
    message_id uuid NOT NULL REFERENCES messages (id),
    seq bigint NOT NULL,
    event bytea NOT NULL,        -- aivera.chat.v1.ChatEvent, serialized
    terminal boolean NOT NULL,   -- `final` or `error`: the last event of the turn
    PRIMARY KEY (message_id, seq)
);

-- CancelTurn on a replica that does not run the turn: the running replica reads the flag
-- at its next flush and stops the turn.
ALTER TABLE messages ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
