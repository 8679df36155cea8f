//! Streams and their events: each stream's last sequence number and the delivery log a
//! reconnecting client resumes from (`sql/0004_streams.sql`).
//!
//! A message in a conversation is its own event: its row carries its seq
//! (`messages.seq`), so storing it costs nothing more than before. Every other event
//! (read receipts, and everything on a user's stream) is a row of `events`. A client
//! resuming a conversation's stream gets both, merged by seq.
//!
//! The database file is locked by one server (`file.rs`), so the last seq of each stream
//! in use is kept in memory: taking the next one is a map update. A failed commit puts
//! the numbers back (and says which, so delivery can rewind too); an undone server API
//! unit puts back what it took. The `streams` rows are written between turns, twice a
//! second (`flush_streams`), and when the store closes; after a crash, a stream's last
//! seq is the largest of its row, its newest message and its newest event, so nothing
//! committed is ever numbered twice.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::{MESSAGE_COLUMNS, Store, StoreResult, StoredMessage, message_from_row};
use crate::model::{Micros, Seq, StreamId};

/// Past this many streams the cache of last seqs is emptied after the `streams` rows are
/// written (it refills with one query per stream used again), so that streams opened once
/// (an idle connection's room) cost no memory for long.
const MAX_CACHED_STREAMS: usize = 4096;

/// One event as the delivery log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: Seq,
    pub kind: String,
    pub payload: String,
}

/// One event after a position: a row of `events`, or a conversation's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    Event(StoredEvent),
    Message(StoredMessage),
}

impl Missed {
    pub fn seq(&self) -> Seq {
        match self {
            Missed::Event(event) => event.seq,
            Missed::Message(message) => message.seq.unwrap_or(0),
        }
    }
}

/// What the log holds after a position, for a reconnecting client.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// The events after the position, in order (none when it is the stream's last).
    Events(Vec<Missed>),
    /// The position is ahead of the stream: the client read it somewhere else.
    Ahead { last: Seq },
    /// Events right after the position are no longer kept (retention), or more are
    /// missing than one recovery replays.
    Gone { last: Seq },
}

impl Since {
    /// The answer when nothing needs reading: `since` is ahead of the stream, at its end,
    /// or further behind than `limit` events.
    pub(crate) fn without_reading(since: Seq, last: Seq, limit: usize) -> Option<Since> {
        if since > last {
            Some(Since::Ahead { last })
        } else if since == last {
            Some(Since::Events(Vec::new()))
        } else if last - since > limit as Seq {
            Some(Since::Gone { last })
        } else {
            None
        }
    }

    /// What was read after `since`, in seq order: all of it, or `Gone` when pruning took
    /// some (numbering is gap-free, so every seq up to `last` must be there).
    pub(crate) fn from_missed(missed: Vec<Missed>, since: Seq, last: Seq) -> Since {
        let complete = missed.len() as Seq == last - since
            && missed.iter().zip(since + 1..).all(|(missed, expected)| missed.seq() == expected);
        if complete { Since::Events(missed) } else { Since::Gone { last } }
    }
}

#[derive(Default)]
pub(super) struct Seqs {
    /// Last seq per stream, as this turn's transaction sees it.
    last: HashMap<StreamId, Seq>,
    /// Streams moved by the open turn, with their last seq before it, and the turn's time.
    turn: HashMap<StreamId, Seq>,
    turn_at: Micros,
    /// Streams moved by committed turns whose `streams` row is not written yet.
    unflushed: HashMap<StreamId, Micros>,
    /// Streams moved by the open server API unit, with their last seq before it.
    unit: Option<HashMap<StreamId, Seq>>,
    /// Streams a failed commit put back, for delivery to rewind (`take_rewound`).
    rewound: Vec<(StreamId, Seq)>,
}

impl Seqs {
    pub(super) fn begin_unit(&mut self) {
        self.unit = Some(HashMap::new());
    }

    pub(super) fn keep_unit(&mut self) {
        self.unit = None;
    }

    pub(super) fn undo_unit(&mut self) {
        for (stream, before) in self.unit.take().unwrap_or_default() {
            self.last.insert(stream, before);
        }
    }

    /// Forgets a stream's cached number (its rows changed underneath), unless the open
    /// turn moved it.
    pub(super) fn forget(&mut self, stream: &StreamId) {
        if !self.turn.contains_key(stream) {
            self.last.remove(stream);
        }
    }

    /// The turn's commit failed: every stream goes back to where it was before it.
    pub(super) fn rollback_turn(&mut self) {
        self.unit = None;
        for (stream, before) in std::mem::take(&mut self.turn) {
            self.last.insert(stream.clone(), before);
            self.rewound.push((stream, before));
        }
    }
}

impl Store {
    /// The stream's last seq as this turn sees it (0 for a stream with no events).
    pub fn last_seq(&mut self, stream: &StreamId) -> StoreResult<Seq> {
        if let Some(&last) = self.seqs.last.get(stream) {
            return Ok(last);
        }
        // The largest of its row, its newest event and (within a conversation, ids and
        // seqs rise together) its newest message: one statement.
        let conversation = match stream {
            StreamId::Conversation(id) => *id,
            StreamId::User(_) => -1,
        };
        let last: Seq = self
            .conn
            .prepare_cached(
                "SELECT max(
                     coalesce((SELECT last_seq FROM streams WHERE id = ?1), 0),
                     coalesce((SELECT max(seq) FROM events WHERE stream = ?1), 0),
                     coalesce((SELECT seq FROM messages WHERE conversation_id = ?2 ORDER BY id DESC LIMIT 1), 0))",
            )?
            .query_row(params![stream.key(), conversation], |row| row.get(0))?;
        self.seqs.last.insert(stream.clone(), last);
        Ok(last)
    }

    /// Takes the stream's next seq for an event of this turn. `insert_event` with it
    /// must follow; if what the event reports cannot be stored, `release_seq` gives the
    /// number back, so that the stream has no gap.
    pub fn next_seq(&mut self, stream: &StreamId, now: Micros) -> StoreResult<Seq> {
        let last = self.last_seq(stream)?;
        let seqs = &mut self.seqs;
        // Per message: no key is cloned or hashed again once the stream is in the turn.
        if !seqs.turn.contains_key(stream) {
            seqs.turn.insert(stream.clone(), last);
        }
        if let Some(unit) = &mut seqs.unit
            && !unit.contains_key(stream)
        {
            unit.insert(stream.clone(), last);
        }
        seqs.turn_at = seqs.turn_at.max(now);
        if let Some(cached) = seqs.last.get_mut(stream) {
            *cached = last + 1;
        }
        Ok(last + 1)
    }

    /// Gives back a seq taken by `next_seq` whose event was not stored.
    pub fn release_seq(&mut self, stream: &StreamId, seq: Seq) {
        if let Some(last) = self.seqs.last.get_mut(stream)
            && *last == seq
        {
            *last -= 1;
        }
    }

    /// Stores an event under a seq from `next_seq`, in the turn's transaction.
    pub fn insert_event(
        &mut self,
        stream: &StreamId,
        seq: Seq,
        kind: &str,
        payload: &str,
        now: Micros,
    ) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached("INSERT INTO events (stream, seq, kind, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![stream.key(), seq, kind, payload, now])?;
        Ok(())
    }

    /// The events of a stream after `since`, for a client resuming from it: at most
    /// `limit` of them, or `Gone` when the first of them is no longer kept or more than
    /// `limit` are missing.
    pub fn events_since(&mut self, stream: &StreamId, since: Seq, limit: usize) -> StoreResult<Since> {
        let last = self.last_seq(stream)?;
        if let Some(answer) = Since::without_reading(since, last, limit) {
            return Ok(answer);
        }
        let mut missed: Vec<Missed> = {
            let mut statement = self.conn.prepare_cached(
                "SELECT seq, kind, payload FROM events WHERE stream = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![stream.key(), since, limit as i64], |row| {
                Ok(Missed::Event(StoredEvent { seq: row.get(0)?, kind: row.get(1)?, payload: row.get(2)? }))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if let StreamId::Conversation(id) = stream {
            // Newest first until the position: ids and seqs rise together, so this reads
            // only what was missed (and stops at messages from before seqs were kept).
            let mut statement = self.conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 ORDER BY id DESC"
            ))?;
            let mut rows = statement.query(params![id])?;
            let mut messages = Vec::new();
            while let Some(row) = rows.next()? {
                let message = message_from_row(row)?;
                if message.seq.is_none_or(|seq| seq <= since) || messages.len() > limit {
                    break;
                }
                messages.push(Missed::Message(message));
            }
            missed.extend(messages);
            missed.sort_by_key(Missed::seq);
        }
        Ok(Since::from_missed(missed, since, last))
    }

    /// The turn committed: its streams' numbers are stored (their `streams` rows are
    /// written by the next `flush_streams`).
    pub(super) fn streams_committed(&mut self) {
        let at = self.seqs.turn_at;
        for (stream, _) in self.seqs.turn.drain() {
            self.seqs.unflushed.insert(stream, at);
        }
    }

    /// Between turns: writes the `streams` rows of the streams committed turns moved, in
    /// one transaction.
    pub fn flush_streams(&mut self) -> StoreResult<()> {
        if self.in_transaction || self.lost.is_some() {
            return Ok(());
        }
        if self.seqs.unflushed.is_empty() {
            if self.seqs.last.len() > MAX_CACHED_STREAMS {
                // Everything is written: the numbers are in the rows again.
                self.seqs.last = HashMap::new();
            }
            return Ok(());
        }
        let unflushed = std::mem::take(&mut self.seqs.unflushed);
        let written = (|| -> StoreResult<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut statement = self.conn.prepare_cached(
                "INSERT INTO streams (id, last_seq, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq),
                                                updated_at = max(updated_at, excluded.updated_at)",
            )?;
            for (stream, at) in &unflushed {
                let last = self.seqs.last.get(stream).copied().unwrap_or(0);
                statement.execute(params![stream.key(), last, at])?;
            }
            drop(statement);
            Ok(self.conn.execute_batch("COMMIT")?)
        })();
        if let Err(e) = written {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            // Kept for the next try; the numbers themselves are safe in the rows.
            self.seqs.unflushed.extend(unflushed);
            return Err(e);
        }
        if self.seqs.last.len() > MAX_CACHED_STREAMS {
            self.seqs.last = HashMap::new();
        }
        Ok(())
    }

    /// Streams a failed commit put back, with their last stored seq: whatever was
    /// handed out for delivery past it was not stored.
    pub fn take_rewound(&mut self) -> Vec<(StreamId, Seq)> {
        std::mem::take(&mut self.seqs.rewound)
    }

    /// Between turns: deletes events older than `before`, oldest first, a batch at a time
    /// until a batch comes back short or `budget` has passed. Returns how many went.
    pub fn prune_events(&mut self, before: Micros, budget: std::time::Duration) -> StoreResult<usize> {
        const BATCH: i64 = 128;
        if self.in_transaction || self.lost.is_some() || self.write_error.is_some() {
            return Ok(0);
        }
        let oldest: Option<Micros> = self
            .conn
            .prepare_cached("SELECT created_at FROM events ORDER BY rowid LIMIT 1")?
            .query_row([], |row| row.get(0))
            .optional()?;
        if oldest.is_none_or(|at| at >= before) {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let mut pruned = 0;
        loop {
            // Rowid order is commit order, so the oldest rows come first and the scan
            // stops at the first batch: no index on the time is needed.
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let deleted = self
                .conn
                .prepare_cached(
                    "DELETE FROM events WHERE rowid IN (
                         SELECT rowid FROM (SELECT rowid, created_at FROM events ORDER BY rowid LIMIT ?2)
                         WHERE created_at < ?1)",
                )
                .and_then(|mut s| s.execute(params![before, BATCH]));
            let deleted = match deleted.and_then(|n| self.conn.execute_batch("COMMIT").map(|()| n)) {
                Ok(n) => n,
                Err(e) => {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    return Err(e.into());
                }
            };
            pruned += deleted;
            if (deleted as i64) < BATCH || started.elapsed() >= budget {
                return Ok(pruned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;

    fn event(store: &mut Store, stream: &StreamId, now: Micros) -> Seq {
        let seq = store.next_seq(stream, now).unwrap();
        store.insert_event(stream, seq, "k", &format!("{{\"n\":{seq}}}"), now).unwrap();
        seq
    }

    #[test]
    fn numbers_are_gap_free_survive_a_reopen_and_come_back_when_a_turn_or_unit_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (room, user) = (StreamId::Conversation(1), StreamId::User(UserId::new("7")));
        let mut store = Store::open(&path, false).unwrap();
        assert_eq!((event(&mut store, &room, 1), event(&mut store, &room, 1), event(&mut store, &user, 1)), (1, 2, 1));
        store.commit().unwrap();
        // A turn that is rolled back gives its numbers back, and says which.
        assert_eq!(event(&mut store, &room, 2), 3);
        store.rollback();
        assert_eq!(store.last_seq(&room).unwrap(), 2);
        // An undone unit gives back what it took, and only that.
        assert_eq!(event(&mut store, &room, 3), 3);
        store.begin_unit().unwrap();
        assert_eq!((event(&mut store, &room, 3), event(&mut store, &user, 3)), (4, 2));
        store.undo_unit();
        assert_eq!((store.last_seq(&room).unwrap(), store.last_seq(&user).unwrap()), (3, 1));
        // A number whose event could not be stored is released.
        let taken = store.next_seq(&room, 3).unwrap();
        store.release_seq(&room, taken);
        assert_eq!(event(&mut store, &room, 3), 4);
        store.commit().unwrap();
        drop(store);
        let mut store = Store::open(&path, false).unwrap();
        assert_eq!((store.last_seq(&room).unwrap(), store.last_seq(&user).unwrap()), (4, 1));
        match store.events_since(&room, 1, 100).unwrap() {
            Since::Events(events) => assert_eq!(events.iter().map(Missed::seq).collect::<Vec<_>>(), [2, 3, 4]),
            other => panic!("{other:?}"),
        }
        // After a crash (no `streams` row written), the numbers go on from the rows.
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("DELETE FROM streams", []).unwrap();
        drop(conn);
        let mut store = Store::open(&path, false).unwrap();
        assert_eq!((store.last_seq(&room).unwrap(), store.last_seq(&user).unwrap()), (4, 1));
        assert_eq!(store.events_since(&room, 4, 100).unwrap(), Since::Events(Vec::new()));
        assert_eq!(store.events_since(&room, 5, 100).unwrap(), Since::Ahead { last: 4 });
        assert_eq!(store.events_since(&room, 0, 2).unwrap(), Since::Gone { last: 4 });
    }

    #[test]
    fn pruning_takes_the_oldest_events_and_recovery_then_says_they_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db"), false).unwrap();
        let room = StreamId::Conversation(1);
        for at in 0..1_200 {
            event(&mut store, &room, at);
        }
        event(&mut store, &room, 5_000);
        store.commit().unwrap();
        let pruned = store.prune_events(1_100, std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(pruned, 1_100);
        assert_eq!(store.events_since(&room, 1_099, 10_000).unwrap(), Since::Gone { last: 1_201 });
        match store.events_since(&room, 1_100, 10_000).unwrap() {
            Since::Events(events) => assert_eq!(events.len(), 101),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.prune_events(1_100, std::time::Duration::from_secs(10)).unwrap(), 0);
    }
}
