//! The webhook outbox on PostgreSQL (`sql/pg/0005_webhooks.sql`, `0006_webhook_order.sql`):
//! what `store/webhooks.rs` is on SQLite, for a cluster of nodes.
//!
//! Two things differ, both because several nodes commit at once:
//! - **Ids in commit order.** A request's outbox rows wait in the store (`PendingHook`)
//!   and are written by `flush_hooks` just before the batch commits, with ids taken
//!   from `webhook_next` under that row's lock (held until COMMIT, one statement and
//!   the COMMIT: the only moment batches of several nodes wait for each other). So an id
//!   becomes visible only after every smaller one: the delivery cursor never passes an
//!   event still being committed. A unit undone takes its rows with it.
//! - **One node delivers** (`PgOutbox`): the one holding the lease on `webhook_cursor`,
//!   renewed as it goes and taken over by another node once it runs out. The holder
//!   moves the cursor itself, on its own connection.

use std::time::Duration;

use postgres::Client;

use super::{PgStore, connect};
use crate::model::{Micros, Seq, UserId};
use crate::store::{DueTimer, HookRow, NewTimer, StoreResult, TimerKind};

/// An outbox row waiting for its batch's commit (`flush_hooks`).
#[derive(Debug)]
pub(super) struct PendingHook {
    kind: String,
    stream: String,
    seq: Option<Seq>,
    created_at: Micros,
    data: String,
}

impl PgStore {
    pub(super) fn insert_hook(
        &mut self,
        kind: &str,
        stream: &str,
        seq: Option<Seq>,
        data: &str,
        now: Micros,
    ) -> StoreResult<()> {
        self.hooks.push(PendingHook {
            kind: kind.to_string(),
            stream: stream.to_string(),
            seq,
            created_at: now,
            data: data.to_string(),
        });
        Ok(())
    }

    /// Writes the outbox rows of the batch, with the next ids, just before COMMIT (the
    /// lock on `webhook_next` is held until then). Nothing when the batch has none.
    pub fn flush_hooks(&mut self) -> StoreResult<usize> {
        if self.hooks.is_empty() {
            return Ok(0);
        }
        let hooks = std::mem::take(&mut self.hooks);
        self.hook_marks.clear();
        let n = hooks.len() as i64;
        let kinds: Vec<&str> = hooks.iter().map(|h| h.kind.as_str()).collect();
        let streams: Vec<&str> = hooks.iter().map(|h| h.stream.as_str()).collect();
        let seqs: Vec<Option<i64>> = hooks.iter().map(|h| h.seq).collect();
        let created: Vec<i64> = hooks.iter().map(|h| h.created_at).collect();
        let data: Vec<&str> = hooks.iter().map(|h| h.data.as_str()).collect();
        self.execute(
            "WITH taken AS (UPDATE webhook_next SET next_id = next_id + $1 WHERE id = 1 RETURNING next_id - $1 AS first)
             INSERT INTO webhook_events (id, type, stream, seq, created_at, data)
             SELECT taken.first + h.n - 1, h.type, h.stream, h.seq, h.created_at, h.data
             FROM taken, unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])
                  WITH ORDINALITY AS h(type, stream, seq, created_at, data, n)",
            &[&n, &kinds, &streams, &seqs, &created, &data],
        )?;
        Ok(hooks.len())
    }

    /// A unit begins: the outbox rows it adds go if it is undone.
    pub(super) fn mark_hooks(&mut self) {
        self.hook_marks.push(self.hooks.len());
    }

    pub(super) fn keep_hooks(&mut self) {
        self.hook_marks.pop();
    }

    pub(super) fn undo_hooks(&mut self) {
        if let Some(mark) = self.hook_marks.pop() {
            self.hooks.truncate(mark);
        }
    }

    /// The transaction ends (committed or not): nothing waits any more.
    pub(super) fn clear_hooks(&mut self) {
        self.hooks.clear();
        self.hook_marks.clear();
    }

    pub(super) fn insert_hook_timer(&mut self, timer: &NewTimer<'_>) -> StoreResult<()> {
        self.execute(
            "INSERT INTO webhook_timers (due, kind, stream, seq, ref_id, conversation_id, sender_id, user_id, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &timer.due,
                &timer.kind.as_sql(),
                &timer.stream,
                &timer.seq,
                &timer.ref_id,
                &timer.conversation_id,
                &timer.sender.map(UserId::as_str),
                &timer.user.map(UserId::as_str),
                &timer.data,
            ],
        )?;
        Ok(())
    }

    pub(super) fn set_hook_online(&mut self, user: &UserId, online: bool) -> StoreResult<bool> {
        let sql = if online {
            "INSERT INTO webhook_online (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM webhook_online WHERE user_id = $1"
        };
        Ok(self.execute(sql, &[&user.as_str()])? > 0)
    }

    pub(super) fn hook_online_users(&mut self) -> StoreResult<Vec<UserId>> {
        let rows = self.query("SELECT user_id FROM webhook_online ORDER BY user_id", &[])?;
        Ok(rows.into_iter().map(|r| UserId::new(&r.get::<_, String>(0))).collect())
    }

    /// As on SQLite; a timer is taken by one node only (`SKIP LOCKED`: another node's
    /// sweep at the same moment takes the others).
    pub(super) fn take_due_hook_timers(&mut self, now: Micros, limit: usize) -> StoreResult<Vec<DueTimer>> {
        let due = self.query(
            "DELETE FROM webhook_timers WHERE id IN (
                 SELECT id FROM webhook_timers WHERE due <= $1 ORDER BY due, id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING kind, stream, seq, ref_id, conversation_id, sender_id, user_id, data",
            &[&now, &(limit as i64)],
        )?;
        let mut fired = Vec::with_capacity(due.len());
        for row in due {
            let kind: String = row.get(0);
            let ref_id: i64 = row.get(3);
            let conversation_id: Option<i64> = row.get(4);
            let sender: Option<String> = row.get(5);
            let user: Option<String> = row.get(6);
            let (kind, unread_by) = if kind == TimerKind::Notification.as_sql() {
                let unread = self
                    .query_opt("SELECT is_read = 0 FROM notifications WHERE id = $1", &[&ref_id])?
                    .is_some_and(|r| r.get::<_, bool>(0));
                (
                    TimerKind::Notification,
                    if unread { user.map(|u| UserId::new(&u)).into_iter().collect() } else { vec![] },
                )
            } else {
                let users = self.query(
                    "SELECT cm.user_id FROM conversation_members cm
                     WHERE cm.conversation_id = $1 AND cm.last_read_message_id < $2
                       AND cm.user_id IS DISTINCT FROM $3 AND ($4::text IS NULL OR cm.user_id = $4)
                       AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = $2 AND r.user_id = cm.user_id)
                     ORDER BY cm.user_id",
                    &[&conversation_id, &ref_id, &sender, &user],
                )?;
                (TimerKind::Message, users.into_iter().map(|r| UserId::new(&r.get::<_, String>(0))).collect())
            };
            fired.push(DueTimer { kind, stream: row.get(1), seq: row.get(2), data: row.get(7), unread_by });
        }
        Ok(fired)
    }
}

/// What the delivery thread learns of the lease when it asks (`PgOutbox::lead`).
#[derive(Debug, PartialEq, Eq)]
pub enum Lead {
    /// This node delivers, and went on doing so.
    Held,
    /// This node delivers from now on, from this cursor (as the last holder stored it).
    Took(i64),
    /// Another node delivers.
    Elsewhere,
}

/// The delivery thread's outbox on PostgreSQL: its own connection (made again when
/// lost), the lease, the cursor.
pub struct PgOutbox {
    url: String,
    node: String,
    lease: Duration,
    client: Option<Client>,
    held: bool,
}

impl PgOutbox {
    pub fn new(url: &str, node: &str, lease: Duration) -> PgOutbox {
        PgOutbox { url: url.to_string(), node: node.to_string(), lease, client: None, held: false }
    }

    fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(connect(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// A failed statement: the connection is made again next time if it was lost.
    fn failed(&mut self, e: postgres::Error) -> String {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        e.to_string()
    }

    /// Takes or renews the lease (the database's clock decides when it runs out).
    pub fn lead(&mut self) -> Result<Lead, String> {
        let (node, millis) = (self.node.clone(), self.lease.as_millis() as f64);
        let row = self
            .client()?
            .query_opt(
                "UPDATE webhook_cursor SET owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
                 WHERE id = 1 AND (owner IS NULL OR owner = $1 OR lease_until < clock_timestamp())
                 RETURNING delivered",
                &[&node, &millis],
            )
            .map_err(|e| self.failed(e))?;
        let was = std::mem::replace(&mut self.held, row.is_some());
        Ok(match row {
            Some(_) if was => Lead::Held,
            Some(row) => Lead::Took(row.get(0)),
            None => Lead::Elsewhere,
        })
    }

    /// The newest id committed (0 for none ever).
    pub fn newest(&mut self) -> Result<i64, String> {
        let row = self.client()?.query_one("SELECT next_id - 1 FROM webhook_next", &[]).map_err(|e| self.failed(e))?;
        Ok(row.get(0))
    }

    /// Rows after `after`, in id order (see `WebhookLog::after`).
    pub fn after(&mut self, after: i64, limit: usize, max_bytes: usize) -> Result<Vec<HookRow>, String> {
        let rows = self
            .client()?
            .query(
                "SELECT id, type, stream, seq, created_at, data FROM webhook_events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .map_err(|e| self.failed(e))?;
        let (mut out, mut bytes) = (Vec::new(), 0);
        for r in rows {
            let data: String = r.get(5);
            bytes += data.len() + 128;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(HookRow {
                id: r.get(0),
                kind: r.get(1),
                stream: r.get(2),
                seq: r.get(3),
                created_at: r.get(4),
                data,
            });
        }
        Ok(out)
    }

    /// The receiver acknowledged up to `delivered` (or they were dropped): the cursor
    /// moves, the lease is renewed, and delivered rows are deleted (a bounded number).
    /// False when another node holds the lease now (this one stops delivering).
    pub fn acknowledged(&mut self, delivered: i64) -> Result<bool, String> {
        /// Rows deleted per acknowledgement at most.
        const DELETE_BATCH: i64 = 5000;
        let (node, millis) = (self.node.clone(), self.lease.as_millis() as f64);
        let client = self.client()?;
        let moved = client
            .execute(
                "UPDATE webhook_cursor SET delivered = greatest(delivered, $2),
                     lease_until = clock_timestamp() + $3 * interval '1 millisecond'
                 WHERE id = 1 AND owner = $1",
                &[&node, &delivered, &millis],
            )
            .map_err(|e| self.failed(e))?;
        if moved == 0 {
            self.held = false;
            return Ok(false);
        }
        self.client()?
            .execute(
                "DELETE FROM webhook_events
                 WHERE id <= least($1, (SELECT min(id) FROM webhook_events) + $2 - 1)",
                &[&delivered, &DELETE_BATCH],
            )
            .map_err(|e| self.failed(e))?;
        Ok(true)
    }

    /// A clean stop: the lease is given up, so another node takes over at once.
    pub fn release(&mut self) {
        if !self.held {
            return;
        }
        let node = self.node.clone();
        if let Ok(client) = self.client() {
            let _ = client.execute("UPDATE webhook_cursor SET owner = NULL WHERE id = 1 AND owner = $1", &[&node]);
        }
        self.held = false;
    }
}
