-- 0003: what the application backend pushes to one user: notifications (one row reaches
-- all three notification endpoints), fraud alerts, and threaded banking messages.

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL,
    -- The document's `type` (000), `notification_type` (001) and `category` (003).
    category   TEXT NOT NULL,
    title      TEXT NOT NULL,
    message    TEXT NOT NULL,
    link       TEXT,
    is_read    INTEGER NOT NULL DEFAULT 0,
    read_at    INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id, id) WHERE is_read = 0;

CREATE TABLE fraud_alerts (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL,
    message     TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    is_resolved INTEGER NOT NULL DEFAULT 0,
    resolved_at INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX fraud_alerts_by_user ON fraud_alerts (user_id, id);

CREATE TABLE banking_messages (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    is_read    INTEGER NOT NULL DEFAULT 0,
    read_at    INTEGER,
    thread_id  TEXT NOT NULL,
    parent_id  INTEGER REFERENCES banking_messages (id),
    created_at INTEGER NOT NULL
);
CREATE INDEX banking_messages_by_user ON banking_messages (user_id, id);
CREATE INDEX banking_messages_by_parent ON banking_messages (parent_id);
