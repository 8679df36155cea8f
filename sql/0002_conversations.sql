-- 0002: what consultations, support conversations and 1:1 pairs need beyond rooms:
-- customers from external platforms, support message fields, and read receipts.

CREATE TABLE customers (
    id              INTEGER PRIMARY KEY,
    source          TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    first_name      TEXT NOT NULL DEFAULT '',
    last_name       TEXT NOT NULL DEFAULT '',
    profile_picture TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (source, external_id)
);

ALTER TABLE conversations ADD COLUMN customer_id INTEGER REFERENCES customers (id);
CREATE INDEX conversations_by_customer ON conversations (customer_id);

-- Support messages: who wrote it (type: support, customer, AI, marketing) is in
-- message_type; these are the document's other fields.
ALTER TABLE messages ADD COLUMN customer_id INTEGER REFERENCES customers (id);
ALTER TABLE messages ADD COLUMN is_ai_response INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN is_answered INTEGER NOT NULL DEFAULT 0;

-- Read receipts of single messages (document 001), once per user and message.
CREATE TABLE message_reads (
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    read_at    INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id)
) WITHOUT ROWID;
