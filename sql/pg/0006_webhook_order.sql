-- 0006 on PostgreSQL: webhook events in commit order, and one node delivering them.
--
-- Several nodes commit at once, so an id taken when a row is inserted (IDENTITY) may
-- become visible after a larger one: the delivery cursor would pass it and it would
-- never be sent. A batch's rows now take their ids from `webhook_next` just before
-- COMMIT, under that row's lock, so ids become visible in order: whoever reads id N
-- committed also sees every id below it (store/pg/webhooks.rs).
ALTER TABLE webhook_events ALTER COLUMN id DROP IDENTITY;

CREATE TABLE webhook_next (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    next_id BIGINT NOT NULL
);
INSERT INTO webhook_next (id, next_id) VALUES (1, 1);

-- The lease on delivery: the node that holds it (`owner`, until `lease_until` by the
-- database's clock) posts the events and moves `delivered`; another takes it over
-- once it runs out (a node killed, stopped or cut off).
ALTER TABLE webhook_cursor ADD COLUMN owner TEXT;
ALTER TABLE webhook_cursor ADD COLUMN lease_until TIMESTAMPTZ;
