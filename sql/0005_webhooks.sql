-- 0005: the webhook outbox (docs/webhooks.md). What the backend must hear of is written
-- here in the same transaction as what it reports, so that nothing committed is lost
-- to a crash; a helper thread posts it in id order and the cursor says how far the
-- receiver has acknowledged. Written only while SWITCHBOARD_WEBHOOK_URL is set.

-- One row per webhook event; `id` is the event's id as the receiver sees it.
-- AUTOINCREMENT: an id is never used twice, even after every row was delivered and
-- deleted (a reused id would sit behind the cursor and never be sent).
CREATE TABLE webhook_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    stream     TEXT NOT NULL,
    seq        INTEGER,
    created_at INTEGER NOT NULL,
    data       TEXT NOT NULL
);

-- The last id the receiver acknowledged (a 2xx), or counted as dropped. Delivered rows
-- are deleted behind it.
CREATE TABLE webhook_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    delivered INTEGER NOT NULL
);
INSERT INTO webhook_cursor (id, delivered) VALUES (1, 0);

-- Unread timers (SWITCHBOARD_WEBHOOK_UNREAD_AFTER_SECS): a direct, consultation or
-- support message, or a notification, to look at again when `due`; whoever has still
-- not read it then is reported (`message.unread`, `notification.unread`).
CREATE TABLE webhook_timers (
    id              INTEGER PRIMARY KEY,
    due             INTEGER NOT NULL,
    kind            TEXT NOT NULL,       -- 'message' or 'notification'
    stream          TEXT NOT NULL,
    seq             INTEGER,
    ref_id          INTEGER NOT NULL,    -- the message's or the notification's id
    conversation_id INTEGER,             -- a message's conversation
    sender_id       TEXT,                -- a message's sender (never reported unread)
    user_id         TEXT,                -- the one recipient (a direct message, a notification)
    data            TEXT NOT NULL
);
CREATE INDEX webhook_timers_due ON webhook_timers (due);

-- Users reported online and not yet offline: after a crash they are reported offline
-- at the next start, so that the backend never keeps someone online forever.
CREATE TABLE webhook_online (
    user_id TEXT PRIMARY KEY
) WITHOUT ROWID;
