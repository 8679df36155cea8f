//! The webhook outbox in SQLite (`sql/0005_webhooks.sql`): rows written in the turn's
//! transaction beside what they report, the unread timers, the users reported online,
//! the delivered cursor; and `WebhookLog`, the delivery thread's own read-only view of
//! the outbox on a second connection (as the checkpoint thread has one), so that the
//! loop never waits for the receiver. What a row says and how it is posted is
//! `webhook/`'s business; this file only stores and reads it.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{Store, StoreResult};
use crate::model::{Micros, Seq, UserId};

/// An outbox row as the delivery thread reads it.
#[derive(Debug, Clone)]
pub struct HookRow {
    pub id: i64,
    pub kind: String,
    pub stream: String,
    pub seq: Option<Seq>,
    pub created_at: Micros,
    /// The event's `data` object, as JSON text.
    pub data: String,
}

/// An unread timer to set: look at a message or a notification again at `due`.
pub struct NewTimer<'a> {
    pub due: Micros,
    pub kind: TimerKind,
    pub stream: &'a str,
    pub seq: Option<Seq>,
    pub ref_id: i64,
    pub conversation_id: Option<i64>,
    pub sender: Option<&'a UserId>,
    pub user: Option<&'a UserId>,
    pub data: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    Message,
    Notification,
}

impl TimerKind {
    pub(crate) fn as_sql(self) -> &'static str {
        match self {
            TimerKind::Message => "message",
            TimerKind::Notification => "notification",
        }
    }
}

/// A timer that fell due, with whoever has still not read what it looks at.
pub struct DueTimer {
    pub kind: TimerKind,
    pub stream: String,
    pub seq: Option<Seq>,
    pub data: String,
    pub unread_by: Vec<UserId>,
}

/// A `webhook_timers` row: id, kind, stream, seq, ref_id, conversation_id, sender_id,
/// user_id, data.
type TimerRow = (i64, String, String, Option<Seq>, i64, Option<i64>, Option<String>, Option<String>, String);

impl Store {
    /// Writes one outbox row in the turn's transaction.
    pub fn insert_hook(
        &mut self,
        kind: &str,
        stream: &str,
        seq: Option<Seq>,
        data: &str,
        now: Micros,
    ) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO webhook_events (type, stream, seq, created_at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![kind, stream, seq, now, data])?;
        self.hooks_in_turn += 1;
        Ok(())
    }

    /// Sets an unread timer in the turn's transaction.
    pub fn insert_hook_timer(&mut self, timer: &NewTimer<'_>) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO webhook_timers (due, kind, stream, seq, ref_id, conversation_id, sender_id, user_id, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                timer.due,
                timer.kind.as_sql(),
                timer.stream,
                timer.seq,
                timer.ref_id,
                timer.conversation_id,
                timer.sender.map(UserId::as_str),
                timer.user.map(UserId::as_str),
                timer.data
            ])?;
        Ok(())
    }

    /// Outbox rows written in this turn so far (the delivery thread is told after the
    /// commit, `take_hooks_committed`).
    pub fn take_hooks_committed(&mut self) -> bool {
        std::mem::take(&mut self.hooks_committed)
    }

    /// Keeps a user in the set of those reported online (`online`), or takes them out;
    /// whether the set changed.
    pub fn set_hook_online(&mut self, user: &UserId, online: bool) -> StoreResult<bool> {
        self.ensure_transaction()?;
        let sql = if online {
            "INSERT OR IGNORE INTO webhook_online (user_id) VALUES (?1)"
        } else {
            "DELETE FROM webhook_online WHERE user_id = ?1"
        };
        Ok(self.conn.prepare_cached(sql)?.execute(params![user.as_str()])? > 0)
    }

    /// Users reported online and never offline (the server stopped without telling).
    pub fn hook_online_users(&self) -> StoreResult<Vec<UserId>> {
        let mut statement = self.conn.prepare_cached("SELECT user_id FROM webhook_online ORDER BY user_id")?;
        let users = statement.query_map([], |row| Ok(UserId::new(&row.get::<_, String>(0)?)))?;
        Ok(users.collect::<rusqlite::Result<_>>()?)
    }

    /// Timers due at `now`, at most `limit`, each with those who have still not read
    /// what it looks at; the timers are deleted, in the turn's transaction.
    pub fn take_due_hook_timers(&mut self, now: Micros, limit: usize) -> StoreResult<Vec<DueTimer>> {
        let due: Vec<TimerRow> = {
            let mut statement = self.conn.prepare_cached(
                "SELECT id, kind, stream, seq, ref_id, conversation_id, sender_id, user_id, data
                 FROM webhook_timers WHERE due <= ?1 ORDER BY due, id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_transaction()?;
        let mut fired = Vec::with_capacity(due.len());
        for (id, kind, stream, seq, ref_id, conversation_id, sender, user, data) in due {
            self.conn.prepare_cached("DELETE FROM webhook_timers WHERE id = ?1")?.execute(params![id])?;
            let (kind, unread_by) = if kind == "notification" {
                let unread: bool = self
                    .conn
                    .prepare_cached("SELECT is_read = 0 FROM notifications WHERE id = ?1")?
                    .query_row(params![ref_id], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false);
                (
                    TimerKind::Notification,
                    if unread { user.map(|u| UserId::new(&u)).into_iter().collect() } else { vec![] },
                )
            } else {
                // A member has read the message when their read position reached it, or
                // (001) they read that one message.
                let mut statement = self.conn.prepare_cached(
                    "SELECT cm.user_id FROM conversation_members cm
                     WHERE cm.conversation_id = ?1 AND cm.last_read_message_id < ?2
                       AND cm.user_id IS NOT coalesce(?3, '') AND (?4 IS NULL OR cm.user_id = ?4)
                       AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = ?2 AND r.user_id = cm.user_id)
                     ORDER BY cm.user_id",
                )?;
                let users = statement.query_map(params![conversation_id, ref_id, sender, user], |r| {
                    Ok(UserId::new(&r.get::<_, String>(0)?))
                })?;
                (TimerKind::Message, users.collect::<rusqlite::Result<_>>()?)
            };
            fired.push(DueTimer { kind, stream, seq, data, unread_by });
        }
        Ok(fired)
    }

    /// The newest outbox id committed (0 for none ever).
    pub fn newest_hook(&self) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_events'), 0)")?
            .query_row([], |r| r.get(0))?)
    }

    /// The last id acknowledged by the receiver (or dropped), as stored.
    pub fn hook_cursor(&self) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT delivered FROM webhook_cursor WHERE id = 1")?
            .query_row([], |r| r.get(0))?)
    }

    /// In the sweep: stores the delivered cursor and deletes delivered rows (a bounded
    /// number; what is left goes next time), in the turn's transaction. Writes nothing
    /// when nothing moved.
    pub fn advance_hook_cursor(&mut self, delivered: i64) -> StoreResult<()> {
        /// Rows deleted per sweep at most (twice a second), so that a large backlog just
        /// acknowledged costs the loop a few milliseconds at a time.
        const DELETE_BATCH: i64 = 5000;
        let oldest: Option<i64> =
            self.conn.prepare_cached("SELECT min(id) FROM webhook_events")?.query_row([], |r| r.get(0))?;
        let moved = self.hook_cursor()? < delivered;
        if !moved && oldest.is_none_or(|oldest| oldest > delivered) {
            return Ok(());
        }
        self.ensure_transaction()?;
        if moved {
            self.conn
                .prepare_cached("UPDATE webhook_cursor SET delivered = max(delivered, ?1) WHERE id = 1")?
                .execute(params![delivered])?;
        }
        if let Some(oldest) = oldest.filter(|oldest| *oldest <= delivered) {
            self.conn
                .prepare_cached("DELETE FROM webhook_events WHERE id <= ?1")?
                .execute(params![delivered.min(oldest + DELETE_BATCH - 1)])?;
        }
        Ok(())
    }
}

/// The delivery thread's view of the outbox: its own read-only connection, so that
/// reading a batch never waits for the loop nor makes it wait (WAL readers do not
/// block the writer).
pub struct WebhookLog {
    conn: Connection,
}

impl WebhookLog {
    pub fn open(path: &Path) -> Result<WebhookLog, String> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        Ok(WebhookLog { conn })
    }

    /// Where delivery starts: the cursor stored by the loop.
    pub fn cursor(&self) -> Result<i64, String> {
        self.conn
            .query_row("SELECT delivered FROM webhook_cursor WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| e.to_string())
    }

    /// The newest id committed (0 for none ever).
    pub fn newest(&self) -> Result<i64, String> {
        self.conn
            .query_row("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_events'), 0)", [], |r| {
                r.get(0)
            })
            .map_err(|e| e.to_string())
    }

    /// Rows after `after`, in id order: at most `limit`, and no more than `max_bytes`
    /// of `data` (at least one row whatever its size).
    pub fn after(&self, after: i64, limit: usize, max_bytes: usize) -> Result<Vec<HookRow>, String> {
        let read = || -> rusqlite::Result<Vec<HookRow>> {
            let mut statement = self.conn.prepare_cached(
                "SELECT id, type, stream, seq, created_at, data FROM webhook_events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = statement.query(params![after, limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0);
            while let Some(r) = rows.next()? {
                let data: String = r.get(5)?;
                bytes += data.len() + 128;
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(HookRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    stream: r.get(2)?,
                    seq: r.get(3)?,
                    created_at: r.get(4)?,
                    data,
                });
            }
            Ok(out)
        };
        read().map_err(|e| e.to_string())
    }
}
