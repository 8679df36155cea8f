-- 0005 on PostgreSQL: as sql/0005_webhooks.sql (the webhook outbox, its cursor, the
-- unread timers, the users reported online). Nothing writes them on PostgreSQL yet:
-- switchboard refuses SWITCHBOARD_WEBHOOK_URL with SWITCHBOARD_DATABASE_URL until the
-- cursor has a lease, so that exactly one node delivers; the schema keeps both engines
-- at the same version.

CREATE TABLE webhook_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type       TEXT NOT NULL,
    stream     TEXT NOT NULL,
    seq        BIGINT,
    created_at BIGINT NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE webhook_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    delivered BIGINT NOT NULL
);
INSERT INTO webhook_cursor (id, delivered) VALUES (1, 0);

CREATE TABLE webhook_timers (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    due             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    stream          TEXT NOT NULL,
    seq             BIGINT,
    ref_id          BIGINT NOT NULL,
    conversation_id BIGINT,
    sender_id       TEXT,
    user_id         TEXT,
    data            TEXT NOT NULL
);
CREATE INDEX webhook_timers_due ON webhook_timers (due);

CREATE TABLE webhook_online (
    user_id TEXT PRIMARY KEY
);
