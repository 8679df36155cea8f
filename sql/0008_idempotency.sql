-- 0008: server API replies kept by Idempotency-Key (README, "Server API"). A POST or PUT
-- with the header stores its reply here in the same transaction as what it created, so a
-- retry with the same key gets the same reply and creates nothing. `fingerprint` is a
-- SHA-256 of the method, path and body: the same key with another request is refused.
-- Kept a day, then pruned in small batches.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
