//! Server API replies kept by `Idempotency-Key` (`sql/0008_idempotency.sql`): written in
//! the transaction of what the request created (`features::idempotent`), read by a retry,
//! pruned after a day. What a reply says is `api.rs`'s business; this file only keeps it.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreResult};
use crate::model::Micros;

/// A kept reply: the request it answered (`fingerprint`), its status and JSON body.
#[derive(Debug, Clone)]
pub struct KeptReply {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    pub created_at: Micros,
}

/// How long a reply is kept: a retry within a day gets it.
pub const REPLY_KEPT: Micros = 24 * 3600 * 1_000_000;

impl Store {
    pub fn kept_reply(&mut self, key: &str) -> StoreResult<Option<KeptReply>> {
        Ok(self
            .conn
            .prepare_cached("SELECT fingerprint, status, body, created_at FROM idempotency_keys WHERE key = ?1")?
            .query_row(params![key], |r| {
                Ok(KeptReply { fingerprint: r.get(0)?, status: r.get(1)?, body: r.get(2)?, created_at: r.get(3)? })
            })
            .optional()?)
    }

    /// Keeps a reply in the turn's transaction (one older than a day under the same key
    /// is replaced); false when a live one is kept already.
    pub fn keep_reply(&mut self, key: &str, reply: &KeptReply) -> StoreResult<bool> {
        self.ensure_transaction()?;
        let kept = self
            .conn
            .prepare_cached(
                "INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,
                     body = excluded.body, created_at = excluded.created_at
                 WHERE idempotency_keys.created_at < ?6",
            )?
            .execute(params![
                key,
                reply.fingerprint,
                reply.status,
                reply.body,
                reply.created_at,
                reply.created_at - REPLY_KEPT
            ])?;
        Ok(kept > 0)
    }

    /// Deletes replies older than a day, a bounded number (outside any turn).
    pub fn prune_replies(&mut self, now: Micros) -> StoreResult<usize> {
        if self.in_transaction || self.lost.is_some() || self.write_error.is_some() {
            return Ok(0);
        }
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE key IN (
                     SELECT key FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT 500)",
            )?
            .execute(params![now - REPLY_KEPT])?)
    }
}
