-- 0001: the first schema. Settings switchboard generates for itself, the users it has
-- seen, and one conversation table under rooms, consultations, support conversations and
-- 1:1 pairs, with members (and their read position) and messages.
-- Time stamps are integer microseconds since the Unix epoch, UTC.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);

CREATE TABLE conversations (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('room', 'consultation', 'support', 'direct')),
    -- The name clients use: a room name, the backend's conversation id, or the
    -- two user ids of a 1:1 pair.
    key        TEXT NOT NULL,
    title      TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL DEFAULT 'active',
    priority   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (kind, key)
);

CREATE TABLE conversation_members (
    conversation_id      INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id              TEXT NOT NULL,
    -- The newest message id this member has read; unread counts come from it.
    last_read_message_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

CREATE INDEX members_by_user ON conversation_members (user_id);

-- Ids are rowids, not AUTOINCREMENT: nothing deletes messages, so an id is never
-- reused, and AUTOINCREMENT would write its sqlite_sequence page in every commit.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       TEXT,
    sender_name     TEXT NOT NULL,
    content         TEXT NOT NULL,
    message_type    TEXT NOT NULL DEFAULT 'text',
    created_at      INTEGER NOT NULL
);

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
