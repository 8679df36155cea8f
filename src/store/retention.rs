//! Retention (`SWITCHBOARD_RETENTION_DAYS`, `SWITCHBOARD_ROOM_HISTORY_MAX`,
//! `SWITCHBOARD_RETENTION_UNREAD`): what is deleted, in small steps between turns.
//!
//! What each table keeps, and why (the schema is in `sql/`):
//!
//! - No table's newest row (largest id) is deleted, so that no id is ever used again
//!   (`newest_id`): `sql/0001_init.sql` chose rowids over AUTOINCREMENT because nothing
//!   deleted messages then, and read positions, receipts and clients keep ids.
//! - `messages`: by age; in rooms also beyond the newest `room_history_max`. A message
//!   someone has not read (a member of its conversation, other than its sender, whose
//!   read position is before it and who has no read receipt of it) stays unless unread
//!   items go too. Rooms have no members, so room messages are never unread. Their
//!   `message_reads` go with them (`ON DELETE CASCADE`).
//! - `notifications` (read), `fraud_alerts` (resolved), `banking_messages` (read, and
//!   without replies left: a reply points at its parent): by age. Unread or unresolved
//!   ones stay unless unread items go too; they are what "offline is not lost" promises.
//! - `conversations`: rooms only, once nothing is left (no message, no member, nobody
//!   listening, no activity within the age). Consultations, support conversations and 1:1
//!   pairs are the backend's records and carry memberships: never deleted here.
//! - `users`: once nothing is left (not seen within the age, not online here, no
//!   conversation membership, no notification, alert or banking message left, not
//!   reported online to the webhooks, no display name the backend set). A deleted user
//!   is as one never seen: the server API's 1:1 messages to them are refused as to an
//!   unknown user until they connect.
//! - `streams`: never deleted. A pruned room's position is kept under its id, and under
//!   `room:<key>` for the room of the same name created later, whose numbers go on
//!   from there: a client resuming with `?since=` a seq of the old room is told that
//!   recovery is not possible, never handed the new room's messages as if they followed.
//!   Before a conversation's messages are deleted its `streams` row is brought up to
//!   their seqs, so the numbering never goes back (it is the largest of the row, the
//!   newest event and the newest message).
//! - `events`: by `SWITCHBOARD_EVENT_RETENTION_SECS`, or this age when shorter
//!   (`streams.rs`, `prune_events`).
//! - `customers`: kept; conversations and messages refer to them, and they are the
//!   backend's identities. `settings`, `schema_migrations`: kept.
//! - `webhook_events`, `webhook_timers`, `webhook_online`: already deleted once
//!   delivered, fired or reported offline (`webhooks.rs`).
//!
//! Each step is one small transaction of at most `BATCH` rows looked at, between turns,
//! so a call spends about a millisecond on it (`budget`): at each sweep (twice a
//! second), and while work is left, every 10 ms after a turn (the loop wakes for it:
//! `Engine::next_poll`), so a backlog drains at up to a tenth of a core. Phases take turns, and
//! a phase whose pass is through rests a while before looking again. Deleted pages go to
//! the free list; `PRAGMA incremental_vacuum` gives them back to the file system a few at
//! a time (the database is `auto_vacuum = INCREMENTAL`, see `Store::open_with` and
//! `Store::use_incremental_vacuum`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreResult};
use crate::config::Retention;
use crate::model::{Micros, StreamId};

/// Rows looked at per step at most.
const BATCH: i64 = 64;
/// With work left, the pause before the next call: at most a millisecond in every ten.
const AGAIN_AFTER: Duration = Duration::from_millis(10);
/// Free pages given back per step at most (256 KiB).
const VACUUM_PAGES: i64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Messages,
    RoomHistory,
    Notifications,
    FraudAlerts,
    Banking,
    Rooms,
    Users,
    Vacuum,
}

const PHASES: [Phase; 8] = [
    Phase::Messages,
    Phase::RoomHistory,
    Phase::Notifications,
    Phase::FraudAlerts,
    Phase::Banking,
    Phase::Rooms,
    Phase::Users,
    Phase::Vacuum,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Messages => "messages",
            Phase::RoomHistory => "room history",
            Phase::Notifications => "notifications",
            Phase::FraudAlerts => "fraud alerts",
            Phase::Banking => "banking messages",
            Phase::Rooms => "rooms",
            Phase::Users => "users",
            Phase::Vacuum => "free pages",
        }
    }
}

/// Where each phase's pass is, between sweeps.
#[derive(Default)]
pub(super) struct State {
    /// Per phase: the last id (or rowid) its pass looked at, and when it may look again.
    cursor: [i64; PHASES.len()],
    rest_until: [Option<Instant>; PHASES.len()],
    /// The phase the next step is asked of.
    next: usize,
    /// With a room history limit: conversations posted to since they were last looked at
    /// (filled at commit), once the first pass over every room is through.
    pub(super) posted: Option<HashSet<i64>>,
    first_rooms_pass_done: bool,
    /// Conversations whose messages went by age since: rooms among them may be empty
    /// now, looked at before the next full pass over the rooms (which rests a while).
    emptied: HashSet<i64>,
    /// The last call ran out of budget with work left: when the next may run.
    again_at: Option<Instant>,
}

/// What one sweep's retention did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Rows deleted (and pages given back, for the free-page phase).
    pub rows: usize,
    pub pages: i64,
    pub steps: usize,
    /// The longest step and its phase.
    pub slowest: Duration,
    pub slowest_phase: &'static str,
}

/// What retention needs from the loop: who is online here, and which rooms have
/// listeners.
pub struct Live<'a> {
    pub online: &'a dyn Fn(&str) -> bool,
    pub listened: &'a dyn Fn(i64) -> bool,
}

impl Store {
    /// Between turns: deletes what `rules` say is past keeping, a step at a time until
    /// `budget` has passed or nothing is left to do now.
    pub fn prune_retention(
        &mut self,
        rules: &Retention,
        now: Micros,
        budget: Duration,
        live: &Live<'_>,
    ) -> StoreResult<Pruned> {
        let mut pruned = Pruned::default();
        if self.in_transaction {
            // The sweep came in the middle of a turn that wrote: right after its commit
            // instead (`App::after_turn`), or a busy server would never get to it.
            self.retention.again_at = Some(Instant::now());
            return Ok(pruned);
        }
        if !rules.is_on() || self.lost.is_some() || self.write_error.is_some() {
            return Ok(pruned);
        }
        if rules.room_history_max.is_some() && self.retention.posted.is_none() {
            self.retention.posted = Some(HashSet::new());
        }
        let started = Instant::now();
        let mut idle = 0;
        while idle < PHASES.len() && started.elapsed() < budget {
            let phase = PHASES[self.retention.next];
            self.retention.next = (self.retention.next + 1) % PHASES.len();
            let step_started = Instant::now();
            let done = match self.retention_step(phase, rules, now, live) {
                Ok(done) => done,
                Err(e) => {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    return Err(e);
                }
            };
            let Some(rows) = done else {
                idle += 1;
                continue;
            };
            idle = 0;
            let took = step_started.elapsed();
            pruned.steps += 1;
            if phase == Phase::Vacuum {
                pruned.pages += rows as i64;
            } else {
                pruned.rows += rows;
            }
            if took > pruned.slowest {
                pruned.slowest = took;
                pruned.slowest_phase = phase.name();
            }
            if rows > 0 {
                log::debug!("retention: {} step removed {rows} in {} us", phase.name(), took.as_micros());
            }
        }
        // Out of budget with work left: again soon (the loop wakes for it), not only at
        // the next sweep, so that a backlog drains at up to a tenth of a core.
        self.retention.again_at = (idle < PHASES.len()).then(|| Instant::now() + AGAIN_AFTER);
        Ok(pruned)
    }

    /// When retention has work left and may run again (see `prune_retention`).
    pub fn retention_due(&self) -> Option<Instant> {
        self.retention.again_at
    }

    /// One step of `phase`: `Some(rows deleted)` when it looked at something, `None`
    /// when it has nothing to do now.
    fn retention_step(
        &mut self,
        phase: Phase,
        rules: &Retention,
        now: Micros,
        live: &Live<'_>,
    ) -> StoreResult<Option<usize>> {
        let index = PHASES.iter().position(|p| *p == phase).expect("a phase");
        let cutoff = rules.max_age.map(|age| now - age.as_micros().min(i64::MAX as u128) as i64);
        if let (Phase::Rooms, Some(cutoff)) = (phase, cutoff)
            && !self.retention.emptied.is_empty()
        {
            let some: Vec<i64> = self.retention.emptied.iter().take(BATCH as usize).copied().collect();
            for id in &some {
                self.retention.emptied.remove(id);
            }
            return self.prune_emptied_rooms(&some, cutoff, now, live).map(Some);
        }
        if self.retention.rest_until[index].is_some_and(|until| Instant::now() < until) {
            return Ok(None);
        }
        let cursor = self.retention.cursor[index];
        let step = match (phase, cutoff) {
            (Phase::Messages, Some(cutoff)) => self.prune_old_messages(cursor, cutoff, rules.prune_unread)?,
            (Phase::RoomHistory, _) => match rules.room_history_max {
                Some(keep) => return self.prune_room_history(keep),
                None => return Ok(None),
            },
            (Phase::Notifications, Some(cutoff)) => {
                self.prune_read_items("notifications", "is_read", "", cursor, cutoff, rules.prune_unread)?
            }
            (Phase::FraudAlerts, Some(cutoff)) => {
                self.prune_read_items("fraud_alerts", "is_resolved", "", cursor, cutoff, rules.prune_unread)?
            }
            (Phase::Banking, Some(cutoff)) => self.prune_read_items(
                "banking_messages",
                "is_read",
                "AND NOT EXISTS (SELECT 1 FROM banking_messages r WHERE r.parent_id = t.id)",
                cursor,
                cutoff,
                rules.prune_unread,
            )?,
            (Phase::Rooms, Some(cutoff)) => self.prune_empty_rooms(cursor, cutoff, now, live)?,
            (Phase::Users, Some(cutoff)) => self.prune_idle_users(cursor, cutoff, live)?,
            (Phase::Vacuum, _) => return self.give_back_pages(),
            (_, None) => return Ok(None),
        };
        match step {
            Step::More { cursor, rows } => {
                self.retention.cursor[index] = cursor;
                Ok(Some(rows))
            }
            Step::Through { rows } => {
                // The pass is through: look again after a quarter of the age (between
                // 1 s and a minute), from the start.
                let age = rules.max_age.unwrap_or_default();
                self.retention.cursor[index] = 0;
                self.retention.rest_until[index] =
                    Some(Instant::now() + (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)));
                Ok(Some(rows))
            }
        }
    }

    /// Runs `work` in a transaction of its own (between turns).
    fn in_own_transaction<T>(&mut self, work: impl FnOnce(&mut Store) -> StoreResult<T>) -> StoreResult<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let done = work(self);
        match done {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn prune_old_messages(&mut self, cursor: i64, cutoff: Micros, prune_unread: bool) -> StoreResult<Step> {
        // (id, created_at, conversation, seq, unread by someone)
        let rows: Vec<(i64, Micros, i64, Option<i64>, bool)> = {
            let mut statement = self.conn.prepare_cached(
                "SELECT m.id, m.created_at, m.conversation_id, m.seq,
                        EXISTS (SELECT 1 FROM conversation_members cm
                                WHERE cm.conversation_id = m.conversation_id
                                  AND cm.last_read_message_id < m.id
                                  AND (m.sender_id IS NULL OR cm.user_id <> m.sender_id)
                                  AND NOT EXISTS (SELECT 1 FROM message_reads r
                                                  WHERE r.message_id = m.id AND r.user_id = cm.user_id))
                 FROM messages m WHERE m.id > ?1 ORDER BY m.id LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![cursor, BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        // Ids follow time closely but not strictly (a clock set back, rows copied in):
        // the pass ends at the first batch with nothing old in it.
        let old: Vec<_> = rows.iter().filter(|row| row.1 < cutoff).collect();
        let through = old.is_empty() || (rows.len() as i64) < BATCH;
        let last = rows.last().map_or(cursor, |row| row.0);
        let newest = self.newest_id("messages")?;
        let doomed: Vec<(i64, i64, Option<i64>)> = old
            .iter()
            .filter(|row| (prune_unread || !row.4) && row.0 != newest)
            .map(|row| (row.0, row.2, row.3))
            .collect();
        let deleted = if doomed.is_empty() {
            0
        } else {
            self.in_own_transaction(|store| {
                // The numbering never goes back: each conversation's row is at least the
                // seqs deleted (see the module's comment).
                let mut newest: Vec<(i64, i64)> = Vec::new();
                for (_, conversation, seq) in &doomed {
                    let Some(seq) = seq else { continue };
                    match newest.iter_mut().find(|(c, _)| c == conversation) {
                        Some((_, s)) => *s = (*s).max(*seq),
                        None => newest.push((*conversation, *seq)),
                    }
                }
                for (conversation, seq) in newest {
                    store.keep_position(&StreamId::Conversation(conversation).key(), seq, cutoff)?;
                }
                let mut delete = store.conn.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
                let mut deleted = 0;
                for (id, _, _) in &doomed {
                    deleted += delete.execute(params![id])?;
                }
                Ok(deleted)
            })?
        };
        self.retention.emptied.extend(doomed.iter().map(|(_, conversation, _)| *conversation));
        Ok(if through { Step::Through { rows: deleted } } else { Step::More { cursor: last, rows: deleted } })
    }

    /// The table's largest id. Its row is never deleted: SQLite gives a new row the
    /// largest rowid plus one, so keeping it means no id is ever used twice (a read
    /// position, a read receipt or a client's `message_id` never comes to mean another
    /// row; the tables are not AUTOINCREMENT, see `sql/0001_init.sql`).
    fn newest_id(&self, table: &str) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT coalesce(max(id), 0) FROM {table}"))?
            .query_row([], |r| r.get(0))?)
    }

    /// A `streams` row at least `seq` (written before the rows that carry it go).
    fn keep_position(&mut self, stream: &str, seq: i64, at: Micros) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO streams (id, last_seq, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?
            .execute(params![stream, seq, at])?;
        Ok(())
    }

    /// One room: the messages older than its newest `keep`, a batch at a time.
    fn prune_room_history(&mut self, keep: u64) -> StoreResult<Option<usize>> {
        let index = PHASES.iter().position(|p| *p == Phase::RoomHistory).expect("a phase");
        let room = if self.retention.first_rooms_pass_done {
            let posted = self.retention.posted.get_or_insert_with(HashSet::new);
            let Some(&room) = posted.iter().next() else { return Ok(None) };
            posted.remove(&room);
            let kind: Option<String> = self
                .conn
                .prepare_cached("SELECT kind FROM conversations WHERE id = ?1")?
                .query_row(params![room], |r| r.get(0))
                .optional()?;
            if kind.as_deref() != Some("room") {
                return Ok(Some(0));
            }
            room
        } else {
            let next: Option<i64> = self
                .conn
                .prepare_cached("SELECT id FROM conversations WHERE kind = 'room' AND id > ?1 ORDER BY id LIMIT 1")?
                .query_row(params![self.retention.cursor[index]], |r| r.get(0))
                .optional()?;
            match next {
                Some(room) => {
                    self.retention.cursor[index] = room;
                    room
                }
                None => {
                    self.retention.first_rooms_pass_done = true;
                    self.retention.cursor[index] = 0;
                    return Ok(Some(0));
                }
            }
        };
        let edge: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM messages WHERE conversation_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2")?
            .query_row(params![room, keep.min(i64::MAX as u64) as i64], |r| r.get(0))
            .optional()?;
        let Some(edge) = edge else { return Ok(Some(0)) };
        let deleted = self.in_own_transaction(|store| {
            Ok(store
                .conn
                .prepare_cached(
                    "DELETE FROM messages WHERE id IN (
                         SELECT id FROM messages WHERE conversation_id = ?1 AND id <= ?2 ORDER BY id LIMIT ?3)",
                )?
                .execute(params![room, edge, BATCH])?)
        })?;
        if deleted as i64 == BATCH {
            // More to go: this room again at its next turn.
            self.retention.posted.get_or_insert_with(HashSet::new).insert(room);
        }
        Ok(Some(deleted))
    }

    /// Notifications, fraud alerts or banking messages older than `cutoff` that are read
    /// (`flag` set), or all of them with `prune_unread`; `extra` narrows further.
    fn prune_read_items(
        &mut self,
        table: &'static str,
        flag: &'static str,
        extra: &'static str,
        cursor: i64,
        cutoff: Micros,
        prune_unread: bool,
    ) -> StoreResult<Step> {
        let rows: Vec<(i64, Micros, bool)> = {
            let mut statement = self.conn.prepare_cached(&format!(
                "SELECT t.id, t.created_at, (t.{flag} <> 0 OR ?3) {extra} FROM {table} t
                 WHERE t.id > ?1 ORDER BY t.id LIMIT ?2"
            ))?;
            let rows =
                statement.query_map(params![cursor, BATCH, prune_unread], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        // Ids follow time closely but not strictly (a clock set back, rows copied in):
        // the pass ends at the first batch with nothing old in it.
        let old: Vec<_> = rows.iter().filter(|row| row.1 < cutoff).collect();
        let through = old.is_empty() || (rows.len() as i64) < BATCH;
        let last = rows.last().map_or(cursor, |row| row.0);
        let newest = self.newest_id(table)?;
        let doomed: Vec<i64> = old.iter().filter(|row| row.2 && row.0 != newest).map(|row| row.0).collect();
        let deleted = if doomed.is_empty() {
            0
        } else {
            self.in_own_transaction(|store| {
                let mut delete = store.conn.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?;
                let mut deleted = 0;
                for id in &doomed {
                    deleted += delete.execute(params![id])?;
                }
                Ok(deleted)
            })?
        };
        Ok(if through { Step::Through { rows: deleted } } else { Step::More { cursor: last, rows: deleted } })
    }

    /// Rooms with nothing left: no message, no member, no activity since `cutoff`, and
    /// nobody listening here.
    fn prune_empty_rooms(&mut self, cursor: i64, cutoff: Micros, now: Micros, live: &Live<'_>) -> StoreResult<Step> {
        let rows: Vec<(i64, String, bool)> = {
            let mut statement = self.conn.prepare_cached(&format!(
                "SELECT c.id, c.key, {ROOM_IS_EMPTY}
                 FROM conversations c WHERE c.kind = 'room' AND c.id > ?3 ORDER BY c.id LIMIT ?4"
            ))?;
            let rows =
                statement.query_map(params![0, cutoff, cursor, BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let through = (rows.len() as i64) < BATCH;
        let last = rows.last().map_or(cursor, |row| row.0);
        let deleted = self.delete_rooms(rows, now, live)?;
        Ok(if through { Step::Through { rows: deleted } } else { Step::More { cursor: last, rows: deleted } })
    }

    /// The rooms among `ids` (conversations whose messages just went) that have nothing
    /// left.
    fn prune_emptied_rooms(&mut self, ids: &[i64], cutoff: Micros, now: Micros, live: &Live<'_>) -> StoreResult<usize> {
        let mut rows = Vec::new();
        for id in ids {
            let row: Option<(i64, String, bool)> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT c.id, c.key, {ROOM_IS_EMPTY} FROM conversations c WHERE c.id = ?1 AND c.kind = 'room'"
                ))?
                .query_row(params![id, cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            rows.extend(row);
        }
        self.delete_rooms(rows, now, live)
    }

    /// Deletes the rooms of `rows` (id, key, empty) that are empty and that nobody
    /// listens to here, keeping their positions (see the module's comment).
    fn delete_rooms(&mut self, rows: Vec<(i64, String, bool)>, now: Micros, live: &Live<'_>) -> StoreResult<usize> {
        let newest = self.newest_id("conversations")?;
        let doomed: Vec<(i64, String)> = rows
            .into_iter()
            .filter(|row| row.2 && row.0 != newest && !(live.listened)(row.0))
            .map(|row| (row.0, row.1))
            .collect();
        let mut positions = Vec::with_capacity(doomed.len());
        for (id, key) in doomed {
            positions.push((id, key, self.last_seq(&StreamId::Conversation(id))?));
        }
        if positions.is_empty() {
            return Ok(0);
        }
        self.in_own_transaction(|store| {
            let mut deleted = 0;
            for (id, key, last) in &positions {
                store.keep_position(&StreamId::Conversation(*id).key(), *last, now)?;
                store.keep_position(&format!("room:{key}"), *last, now)?;
                deleted += store
                    .conn
                    .prepare_cached(
                        "DELETE FROM conversations WHERE id = ?1 AND kind = 'room'
                           AND NOT EXISTS (SELECT 1 FROM messages WHERE conversation_id = ?1)",
                    )?
                    .execute(params![id])?;
            }
            Ok(deleted)
        })
    }

    /// Users with nothing left (see the module's comment).
    fn prune_idle_users(&mut self, cursor: i64, cutoff: Micros, live: &Live<'_>) -> StoreResult<Step> {
        let rows: Vec<(i64, String, bool)> = {
            let mut statement = self.conn.prepare_cached(
                "SELECT u.rowid, u.id,
                        u.last_seen < ?3
                        AND u.display_name IS NULL
                        AND NOT EXISTS (SELECT 1 FROM conversation_members WHERE user_id = u.id)
                        AND NOT EXISTS (SELECT 1 FROM notifications WHERE user_id = u.id)
                        AND NOT EXISTS (SELECT 1 FROM fraud_alerts WHERE user_id = u.id)
                        AND NOT EXISTS (SELECT 1 FROM banking_messages WHERE user_id = u.id)
                        AND NOT EXISTS (SELECT 1 FROM webhook_online WHERE user_id = u.id)
                 FROM users u WHERE u.rowid > ?1 ORDER BY u.rowid LIMIT ?2",
            )?;
            let rows =
                statement.query_map(params![cursor, BATCH, cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let through = (rows.len() as i64) < BATCH;
        let last = rows.last().map_or(cursor, |row| row.0);
        let doomed: Vec<String> =
            rows.into_iter().filter(|row| row.2 && !(live.online)(&row.1)).map(|row| row.1).collect();
        let deleted = if doomed.is_empty() {
            0
        } else {
            self.in_own_transaction(|store| {
                let mut delete = store.conn.prepare_cached("DELETE FROM users WHERE id = ?1")?;
                let mut deleted = 0;
                for id in &doomed {
                    deleted += delete.execute(params![id])?;
                }
                Ok(deleted)
            })?
        };
        Ok(if through { Step::Through { rows: deleted } } else { Step::More { cursor: last, rows: deleted } })
    }

    /// Gives free pages back to the file system, a few at a time (`auto_vacuum =
    /// INCREMENTAL`; with another mode the pragma does nothing and the pages are reused).
    fn give_back_pages(&mut self) -> StoreResult<Option<usize>> {
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free == 0 || self.auto_vacuum()? != 2 {
            return Ok(None);
        }
        let pages = free.min(VACUUM_PAGES);
        self.in_own_transaction(|store| {
            let mut statement = store.conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        })?;
        Ok(Some(pages as usize))
    }

    /// The database's `auto_vacuum` mode: 0 none, 1 full, 2 incremental.
    pub(super) fn auto_vacuum(&self) -> StoreResult<i64> {
        Ok(self.conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?)
    }

    /// With retention on: makes an older database (`auto_vacuum = NONE`, as every one
    /// made before retention existed) give deleted pages back to the file system. That
    /// takes one `VACUUM`, which rewrites the whole file once: about as long as copying
    /// it, with room on disk for a second copy (in the WAL) while it runs. Returns how
    /// long it took, or `None` when nothing had to be done.
    pub fn use_incremental_vacuum(&mut self) -> StoreResult<Option<Duration>> {
        if self.auto_vacuum()? == 2 {
            return Ok(None);
        }
        let started = Instant::now();
        self.conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
        Ok(Some(started.elapsed()))
    }

    /// A room created where one of the same name was pruned goes on from its numbers
    /// (see the module's comment).
    pub(super) fn continue_pruned_room(&mut self, id: i64, key: &str, now: Micros) -> StoreResult<()> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_seq FROM streams WHERE id = 'room:' || ?1")?
            .query_row(params![key], |r| r.get(0))
            .optional()?;
        if let Some(last) = last {
            let stream = StreamId::Conversation(id);
            self.keep_position(&stream.key(), last, now)?;
            self.seqs.forget(&stream);
        }
        Ok(())
    }
}

/// Whether the room `c` has nothing left, as an SQL expression (`?2`: the cutoff).
const ROOM_IS_EMPTY: &str = "(c.updated_at < ?2
     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)
     AND NOT EXISTS (SELECT 1 FROM conversation_members cm WHERE cm.conversation_id = c.id))";

/// How a step of a pass ended.
enum Step {
    /// More to look at after `cursor`.
    More { cursor: i64, rows: usize },
    /// Looked at everything (or reached rows too young).
    Through { rows: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;
    use crate::store::{ConversationKind, NewBankingMessage, NewMessage, Since};

    const NOBODY: Live<'static> = Live { online: &|_| false, listened: &|_| false };

    fn prune(store: &mut Store, rules: &Retention, now: Micros) -> usize {
        let mut rows = 0;
        // Passes rest between rounds; a test wants them all through now.
        for _ in 0..20 {
            store.retention.rest_until = Default::default();
            rows += store.prune_retention(rules, now, Duration::from_secs(10), &NOBODY).unwrap().rows;
        }
        rows
    }

    fn by_age(secs: u64) -> Retention {
        Retention { max_age: Some(Duration::from_secs(secs)), ..Retention::default() }
    }

    #[test]
    fn a_pruned_room_resumes_as_gone_and_its_name_goes_on_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db"), false).unwrap();
        let ann = UserId::new("1");
        let room = store.get_or_create_conversation(ConversationKind::Room, "old", 0).unwrap();
        let stream = StreamId::Conversation(room);
        for n in 0..5 {
            let seq = store.next_seq(&stream, 0).unwrap();
            let message = NewMessage { seq: Some(seq), ..NewMessage::text(room, (&ann, "ann"), "hi") };
            store.insert_message(message, n).unwrap();
        }
        // A newer row elsewhere, so that the room's messages are not the newest of all.
        let other = store.get_or_create_conversation(ConversationKind::Room, "new", 10_000_000).unwrap();
        store.insert_message(NewMessage::text(other, (&ann, "ann"), "new"), 10_000_000).unwrap();
        store.commit().unwrap();
        let now = 10_000_000;
        assert_eq!(prune(&mut store, &by_age(5), now), 6, "five messages and the room");
        assert_eq!(store.conversation_id(ConversationKind::Room, "old").unwrap(), None);
        // The old number resumes as gone, never as something else.
        assert_eq!(store.events_since(&stream, 2, 100).unwrap(), Since::Gone { last: 5 });
        let again = store.get_or_create_conversation(ConversationKind::Room, "old", now).unwrap();
        assert_ne!(again, room);
        let again = StreamId::Conversation(again);
        assert_eq!(store.last_seq(&again).unwrap(), 5);
        assert_eq!(store.events_since(&again, 2, 100).unwrap(), Since::Gone { last: 5 });
        store.commit().unwrap();
        // The newest row of a table stays, even when old: its id is never used again.
        assert_eq!(prune(&mut store, &by_age(1), now + 100_000_000), 0);
        assert_eq!(store.recent_messages(other, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_banking_thread_goes_replies_first_and_unread_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db"), false).unwrap();
        let user = UserId::new("7");
        let new = |parent_id| NewBankingMessage { user_id: &user, subject: "s", body: "b", thread_id: "t", parent_id };
        let parent = store.insert_banking_message(&new(None), 0).unwrap().id;
        let reply = store.insert_banking_message(&new(Some(parent)), 0).unwrap().id;
        let unread = store.insert_banking_message(&new(None), 0).unwrap().id;
        store.insert_banking_message(&new(None), 50_000_000).unwrap();
        for id in [parent, reply] {
            store.mark_banking_message_read(&user, id, 0).unwrap();
        }
        store.commit().unwrap();
        assert_eq!(prune(&mut store, &by_age(1), 60_000_000), 2);
        assert!(store.banking_message(parent).unwrap().is_none() && store.banking_message(reply).unwrap().is_none());
        assert!(store.banking_message(unread).unwrap().is_some(), "unread stays");
        let rules = Retention { prune_unread: true, ..by_age(1) };
        assert_eq!(prune(&mut store, &rules, 60_000_000), 1);
    }
}
