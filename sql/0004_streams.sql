-- 0004: streams and their events. Everything stored that must reach someone belongs to a
-- stream: 'c:<conversation id>' (messages, read receipts) or 'u:<user id>' (direct
-- messages and their read marks, notifications and unread counts, fraud alerts, banking
-- messages, new-customer messages for the conversation list). Each stream numbers its
-- events 1, 2, 3, ... without gaps, in commit order; a client that reconnects with
-- `?since=<seq>` gets the events after it from here (docs/protocols.md, "Recovery").

CREATE TABLE streams (
    id         TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The delivery log: what each event said, in the domain's terms (JSON), so that any
-- endpoint can render it again. A conversation's messages are not in it: each message
-- row is its own event (messages.seq below). Rows are pruned after
-- SWITCHBOARD_EVENT_RETENTION_SECS, oldest first (rowid order is commit order); the
-- domain tables keep everything.
CREATE TABLE events (
    stream     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (stream, seq)
);

-- The seq of the event that delivered a message on its stream: in a room, consultation
-- or support conversation the message *is* that event (a resuming client reads it from
-- here); a 1:1 message's is the recipient's stream's, whose event is in `events`. History
-- carries it too. NULL for messages stored before this migration.
ALTER TABLE messages ADD COLUMN seq INTEGER;
