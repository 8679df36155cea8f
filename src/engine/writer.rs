//! The PostgreSQL engine's writer lane (design/cluster.md §5.4, §5.7): a helper thread
//! that owns one connection and commits the loop's write requests in batches. A batch
//! is one transaction: each request in its own savepoint (a request that fails is
//! undone alone, its seqs with it), then the batch's marker row, then `COMMIT`. Only
//! then does the lane answer, with every request's answer and the events they recorded,
//! so nothing is delivered before it is committed. If the connection is lost during
//! `COMMIT`, the lane reconnects and looks the marker up: the batch committed or it did
//! not, never "unknown".
//!
//! The loop hands a batch over when the lane is idle and keeps collecting meanwhile, so
//! batches grow by themselves under load (group commit). Answers go back on a channel,
//! followed by a wake-up of the loop (`wake`, a `mio::Waker` in the server).

use std::sync::mpsc::Sender;
use std::time::Duration;

use super::{Ticket, run};
use crate::event::Event;
use crate::features::chat;
use crate::model::{Micros, UserId};
use crate::request::{Answer, Done, Failed, Request, Write};
use crate::store::pg::{self, PgStore};
use crate::store::{StoreError, StoreResult};
use crate::tx::Tx;

type Requests = Vec<(Ticket, Request)>;

/// The write requests of one or more turns, in the order they were asked.
pub struct Batch {
    /// This node's batch number, unique for the node's lifetime (its marker's key).
    pub id: i64,
    pub now: Micros,
    pub requests: Vec<(Ticket, Request)>,
    /// Also prune a bounded number of `events` (and batch markers) older than this.
    pub prune_before: Option<Micros>,
}

/// Rows one batch prunes at most, so that pruning never holds a batch up for long.
const PRUNE_ROWS: i64 = 1000;

/// How often a node's writer lane deletes what retention says is too old (each time a
/// bounded number of rows per table, `RETAIN_ROWS`).
const RETAIN_EVERY: Duration = Duration::from_secs(2);
const RETAIN_ROWS: i64 = 500;

/// Retention on PostgreSQL, in the batch's transaction, the same rules as SQLite's
/// (`store/retention.rs`) for what goes: messages by age (not one someone has not read,
/// unless unread items go too) and beyond a room's newest `room_history_max`; read
/// notifications, resolved fraud alerts, read banking messages without replies by age.
/// Rows another node is deleting are skipped (`SKIP LOCKED`). Rooms and users are kept;
/// ids are never reused (identities) and a stream's position is its `streams` row, so
/// deleting rows moves no number back, and a client resuming past deleted messages is
/// told recovery is not possible (`Since::from_missed` sees the gap).
fn retain(store: &mut PgStore, retention: &crate::config::Retention, now: Micros) -> StoreResult<()> {
    let mut deleted = 0;
    if let Some(age) = retention.max_age {
        let cutoff = now - age.as_micros().min(i64::MAX as u128) as i64;
        let unread_too = retention.prune_unread;
        deleted += store.execute(
            "DELETE FROM messages WHERE id IN (
                 SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.created_at < $1 AND ($2 OR c.kind = 'room' OR NOT EXISTS (
                     SELECT 1 FROM conversation_members cm
                     WHERE cm.conversation_id = m.conversation_id AND cm.user_id IS DISTINCT FROM m.sender_id
                       AND cm.last_read_message_id < m.id
                       AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = m.id AND r.user_id = cm.user_id)))
                 ORDER BY m.id LIMIT $3 FOR UPDATE OF m SKIP LOCKED)",
            &[&cutoff, &unread_too, &RETAIN_ROWS],
        )?;
        // Each table with the column that says it was dealt with (read, resolved), and
        // what else must hold (a banking message goes only once no reply points at it).
        for (table, done, also) in [
            ("notifications", "is_read", ""),
            ("fraud_alerts", "is_resolved", ""),
            (
                "banking_messages",
                "is_read",
                "AND NOT EXISTS (SELECT 1 FROM banking_messages r WHERE r.parent_id = t.id)",
            ),
        ] {
            deleted += store.execute(
                &format!(
                    "DELETE FROM {table} WHERE id IN (
                         SELECT t.id FROM {table} t WHERE t.created_at < $1 AND ($2 OR t.{done} = 1) {also}
                         ORDER BY t.id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                ),
                &[&cutoff, &unread_too, &RETAIN_ROWS],
            )?;
        }
    }
    if let Some(max) = retention.room_history_max {
        // A room's stream numbers its messages only, so those at or below its last seq
        // less `max` are the ones past its newest `max`.
        let max = max.min(i64::MAX as u64) as i64;
        deleted += store.execute(
            "DELETE FROM messages WHERE id IN (
                 SELECT m.id FROM messages m
                 JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'room'
                 JOIN streams s ON s.id = 'c:' || m.conversation_id
                 WHERE m.seq <= s.last_seq - $1
                 ORDER BY m.id LIMIT $2 FOR UPDATE OF m SKIP LOCKED)",
            &[&max, &RETAIN_ROWS],
        )?;
    }
    if deleted > 0 {
        log::debug!("retention: deleted {deleted} rows");
    }
    Ok(())
}

/// What the lane says about a batch.
#[derive(Debug)]
pub enum Committed {
    /// Committed: each request's answer (a failed one was undone alone), and the events
    /// the batch recorded, in order.
    /// `hooks`: it stored webhook events too.
    Yes { batch: i64, answers: Vec<(Ticket, Answer)>, events: Vec<Event>, stored: u64, hooks: bool },
    /// Nothing of it is stored; every request failed with this.
    No { batch: i64, tickets: Vec<Ticket>, error: String },
}

/// What the lane applies to every batch besides its requests.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The per-user rate limit of stored messages, per minute (asked of Redis).
    pub rate_limit_per_minute: u32,
    /// With webhooks: which events the batches store (`Tx::hooks`).
    pub hooks: Option<crate::webhook::Hooks>,
    /// What is deleted by age or count (`retain`).
    pub retention: crate::config::Retention,
}

/// The loop's handle on the lane. Dropping it ends the lane after its current batch.
pub struct Writer(super::lane::Lane<Batch>);

/// How long the lane waits before connecting again, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Writer {
    /// Starts the lane for `node` on the database at `url`; answers go to `answers`,
    /// each followed by `wake()`.
    /// With a `publisher`, what each batch committed is published on the Redis bus
    /// before the lane answers (so that this node hears of it no later than others).
    pub fn start(
        url: String,
        node: String,
        publisher: Option<crate::bus::Publisher>,
        rules: Rules,
        answers: Sender<Committed>,
        wake: Box<dyn Fn() + Send>,
    ) -> Writer {
        let Rules { rate_limit_per_minute: rate, hooks, retention } = rules;
        let mut lane = Lane { url, node, store: None, pid: None, publisher, rate, hooks, retention, retained: None };
        Writer(super::lane::Lane::start("pg-writer", answers, wake, move |batch| lane.commit(batch)))
    }

    /// Hands a batch to the lane.
    pub fn send(&self, batch: Batch) -> Result<(), String> {
        self.0.send(batch)
    }
}

fn is_post(request: &Request) -> bool {
    matches!(request, Request::Write(Write::Post { .. }))
}

/// A lost connection fails the whole batch (its outcome is then read from the marker).
fn lost(answer: &Answer) -> Option<StoreError> {
    match answer {
        Err(Failed::Store(StoreError::Postgres(e))) if e.is_closed() => {
            Some(StoreError::Unavailable(format!("the connection was lost: {e}")))
        }
        _ => None,
    }
}

/// One request in its own unit: on PostgreSQL a request's seqs are given back only by
/// undoing it. Another node's batch may lock the same streams in the other order:
/// PostgreSQL then ends one of the two waits with a deadlock error, the unit is undone
/// (releasing what it locked), and the request runs once more.
fn run_one(tx: &mut Tx<'_>, request: Request) -> StoreResult<Answer> {
    let again = request.clone();
    let mut answer = run(tx, request, true);
    if let Err(Failed::Store(StoreError::Postgres(e))) = &answer
        && e.code() == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
    {
        log::warn!("PostgreSQL writer lane: a deadlock with another node; running the request again");
        answer = run(tx, again, true);
    }
    match lost(&answer) {
        Some(e) => Err(e),
        None => Ok(answer),
    }
}

/// Consecutive chat messages of a batch in one unit, with a statement per conversation
/// for their seqs and one for their rows (`chat::post_many`) instead of three each; if
/// that fails, they are undone and run one by one, so that each fails alone.
fn run_posts(tx: &mut Tx<'_>, requests: Vec<(Ticket, Request)>) -> StoreResult<Vec<(Ticket, Answer)>> {
    let (recorded, stored) = (tx.events.len(), *tx.stored);
    let grouped = {
        let posts: Vec<chat::Post<'_>> = requests
            .iter()
            .filter_map(|(_, request)| match request {
                Request::Write(Write::Post { kind, conversation, sender, content }) => {
                    Some(chat::Post { kind: *kind, conversation: *conversation, sender, content })
                }
                _ => None,
            })
            .collect();
        tx.store.begin_unit()?;
        chat::post_many(tx, &posts).and_then(|answers| Ok(tx.store.keep_unit().map(|()| answers)?))
    };
    match grouped {
        Ok(answers) => Ok(requests
            .into_iter()
            .zip(answers)
            .map(|((ticket, _), answer)| (ticket, answer.map(Done::Posted)))
            .collect()),
        Err(e) => {
            tx.store.undo_unit();
            tx.events.truncate(recorded);
            *tx.stored = stored;
            let e: Answer = Err(e);
            if let Some(lost) = lost(&e) {
                return Err(lost);
            }
            log::debug!("PostgreSQL writer lane: {} posts at once failed ({:?}); one by one", requests.len(), e);
            requests.into_iter().map(|(ticket, request)| Ok((ticket, run_one(tx, request)?))).collect()
        }
    }
}

struct Lane {
    url: String,
    node: String,
    store: Option<PgStore>,
    /// The PostgreSQL session (backend process) of `store`'s connection.
    pid: Option<i32>,
    publisher: Option<crate::bus::Publisher>,
    /// The per-user rate limit of stored messages, per minute (asked of Redis).
    rate: u32,
    /// With webhooks: which events the batches store (`Tx::hooks`).
    hooks: Option<crate::webhook::Hooks>,
    /// What is deleted by age or count, and when that last ran (`retain`).
    retention: crate::config::Retention,
    retained: Option<std::time::Instant>,
}

impl Lane {
    /// With Redis: the users whose messages the rate limit over all nodes counts
    /// (design/cluster.md §5.8), with their numbers of messages, asked once per batch;
    /// the answer is read by `limit` (the transaction begins meanwhile).
    fn ask_limit(&mut self, requests: &Requests) -> Option<(Vec<(UserId, u32)>, crate::bus::Asked)> {
        let publisher = self.publisher.as_mut()?;
        let mut users: Vec<(&UserId, u32)> = Vec::new();
        for user in requests.iter().filter_map(|(_, request)| request.rate_user()) {
            match users.iter_mut().find(|(u, _)| *u == user) {
                Some((_, n)) => *n += 1,
                None => users.push((user, 1)),
            }
        }
        if users.is_empty() {
            return None;
        }
        let asked = publisher.ask_admit(&users, self.rate)?;
        Some((users.into_iter().map(|(user, n)| (user.clone(), n)).collect(), asked))
    }

    /// The messages past their user's limit leave the batch, answered `RateLimited`,
    /// nothing stored. If Redis could not say, every message stays (each node's own
    /// bucket limited them in the loop).
    fn limit(
        &mut self,
        asked: Option<(Vec<(UserId, u32)>, crate::bus::Asked)>,
        requests: Requests,
    ) -> (Requests, Vec<(Ticket, Answer)>) {
        let Some((users, asked)) = asked else { return (requests, Vec::new()) };
        let Some(allowed) = self.publisher.as_mut().and_then(|p| p.admitted(asked)) else {
            return (requests, Vec::new());
        };
        let mut left: Vec<(UserId, u32)> = users.into_iter().zip(allowed).map(|((user, _), k)| (user, k)).collect();
        let mut refused = Vec::new();
        let mut kept = Vec::with_capacity(requests.len());
        for (ticket, request) in requests {
            let fits = match request.rate_user() {
                None => true,
                Some(user) => match left.iter_mut().find(|(u, _)| u == user) {
                    Some((_, k)) if *k > 0 => {
                        *k -= 1;
                        true
                    }
                    _ => false,
                },
            };
            if fits {
                kept.push((ticket, request));
            } else {
                refused.push((ticket, Err(Failed::RateLimited)));
            }
        }
        (kept, refused)
    }

    /// The streams the batch's requests name, in one order (their keys'): locked when
    /// the batch begins, so that another node's batch with some of the same streams
    /// waits for this one, or this one for it, never both for each other (a deadlock,
    /// which PostgreSQL breaks only after a second).
    fn streams_to_lock(requests: &Requests) -> Vec<String> {
        let mut streams: Vec<String> = requests.iter().flat_map(|(_, r)| r.streams()).map(|s| s.key()).collect();
        streams.sort_unstable();
        streams.dedup();
        streams
    }

    /// A connection, made again if it was lost (a few tries with backoff, then the
    /// batch fails: the loop answers its requests with errors and tries later batches).
    fn connected(&mut self) -> StoreResult<&mut PgStore> {
        if self.store.as_ref().is_some_and(PgStore::is_closed) {
            self.store = None;
        }
        if self.store.is_none() {
            let mut wait = Duration::from_millis(50);
            let mut tries = 0;
            loop {
                match pg::connect(&self.url) {
                    Ok(client) => {
                        let mut store = PgStore::new(client);
                        self.pid = store.query_one("SELECT pg_backend_pid()", &[]).ok().map(|row| row.get(0));
                        self.store = Some(store);
                        break;
                    }
                    Err(e) if tries >= 5 => return Err(StoreError::Unavailable(e)),
                    Err(e) => {
                        log::warn!("PostgreSQL writer lane: {e}; trying again in {} ms", wait.as_millis());
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(MAX_BACKOFF);
                        tries += 1;
                    }
                }
            }
        }
        Ok(self.store.as_mut().expect("connected"))
    }

    fn commit(&mut self, mut batch: Batch) -> Committed {
        let tickets: Vec<Ticket> = batch.requests.iter().map(|(ticket, _)| *ticket).collect();
        // Redis answers the rate limit while PostgreSQL begins the batch. A connection
        // that was cut while idle is found out by its first statement: then it is made
        // again, before any request ran.
        let asked = self.ask_limit(&batch.requests);
        let begun = self.begin(&Lane::streams_to_lock(&batch.requests));
        let (requests, refused) = self.limit(asked, std::mem::take(&mut batch.requests));
        batch.requests = requests;
        let failed = |error: String| Committed::No { batch: batch.id, tickets: tickets.clone(), error };
        let (mut events, mut stored, mut hooked) = (Vec::new(), 0u64, 0usize);
        let node = self.node.clone();
        let hooks = self.hooks.clone();
        let retention = self.retention;
        let retain_now = self.retention.is_on()
            && batch.prune_before.is_some()
            && self.retained.is_none_or(|at| at.elapsed() >= RETAIN_EVERY);
        if retain_now {
            self.retained = Some(std::time::Instant::now());
        }
        if let Err(e) = begun {
            if let Some(store) = self.store.as_mut() {
                let _ = store.rollback();
            }
            return failed(e.to_string());
        }
        let answers = match self.connected() {
            Err(e) => return failed(e.to_string()),
            Ok(store) => {
                let ran = (|| -> StoreResult<Vec<(Ticket, Answer)>> {
                    let mut answers = Vec::with_capacity(batch.requests.len() + refused.len());
                    answers.extend(refused);
                    let mut tx =
                        Tx { store, now: batch.now, events: &mut events, stored: &mut stored, hooks: hooks.as_ref() };
                    let mut requests = batch.requests.into_iter().peekable();
                    while let Some((ticket, request)) = requests.next() {
                        if is_post(&request) && requests.peek().is_some_and(|(_, next)| is_post(next)) {
                            let mut posts = vec![(ticket, request)];
                            while let Some(next) = requests.next_if(|(_, next)| is_post(next)) {
                                posts.push(next);
                            }
                            answers.extend(run_posts(&mut tx, posts)?);
                        } else {
                            answers.push((ticket, run_one(&mut tx, request)?));
                        }
                    }
                    store.execute(
                        "INSERT INTO batches (node, batch, committed_at) VALUES ($1, $2, $3)",
                        &[&node, &batch.id, &batch.now],
                    )?;
                    if let Some(before) = batch.prune_before {
                        let pruned = store.execute(
                            "DELETE FROM events WHERE id IN (
                                 SELECT id FROM events WHERE created_at < $1 ORDER BY id LIMIT $2)",
                            &[&before, &PRUNE_ROWS],
                        )?;
                        store.execute(
                            "DELETE FROM batches WHERE ctid IN (
                                 SELECT ctid FROM batches WHERE committed_at < $1 LIMIT $2)",
                            &[&before, &PRUNE_ROWS],
                        )?;
                        if pruned > 0 {
                            log::debug!("pruned {pruned} events older than the retention");
                        }
                        store.execute(
                            "DELETE FROM idempotency_keys WHERE key IN (
                                 SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
                            &[&(batch.now - crate::store::REPLY_KEPT), &PRUNE_ROWS],
                        )?;
                        if retain_now {
                            retain(store, &retention, batch.now)?;
                        }
                    }
                    // Last before COMMIT: the outbox rows take their ids in commit order.
                    hooked = store.flush_hooks()?;
                    Ok(answers)
                })();
                match ran {
                    Ok(answers) => answers,
                    Err(e) => {
                        let _ = store.rollback();
                        return failed(e.to_string());
                    }
                }
            }
        };
        let commit = self.store.as_mut().expect("connected").commit();
        match commit {
            Ok(()) => {
                self.publish(&events);
                Committed::Yes { batch: batch.id, answers, events, stored, hooks: hooked > 0 }
            }
            Err(e) => match self.resolve(batch.id) {
                Ok(true) => {
                    log::warn!("PostgreSQL writer lane: batch {} committed though COMMIT failed ({e})", batch.id);
                    self.publish(&events);
                    Committed::Yes { batch: batch.id, answers, events, stored, hooks: hooked > 0 }
                }
                Ok(false) => failed(e.to_string()),
                Err(lookup) => failed(format!("{e}; and its outcome could not be read: {lookup}")),
            },
        }
    }

    fn publish(&mut self, events: &[Event]) {
        if let Some(publisher) = &mut self.publisher {
            publisher.publish(events);
        }
    }

    /// Opens the batch's transaction, on a new connection if the one kept was cut.
    fn begin(&mut self, streams: &[String]) -> StoreResult<()> {
        match self.connected()?.begin_locking(streams) {
            Err(e) if self.store.as_ref().is_some_and(PgStore::is_closed) => {
                log::warn!("PostgreSQL writer lane: the connection was lost ({e}); connecting again");
                self.store = None;
                self.connected()?.begin_locking(streams)
            }
            begun => begun,
        }
    }

    /// Whether a batch whose `COMMIT` failed is stored: its marker says so.
    ///
    /// On a connection that was lost, the old session may still be committing (or about
    /// to read the `COMMIT` it was sent): it is ended, and gone, before the marker is
    /// looked up, so that the answer cannot change after it is given.
    fn resolve(&mut self, batch: i64) -> StoreResult<bool> {
        let lost = self.store.as_ref().is_none_or(PgStore::is_closed);
        let old = if lost { self.pid.take() } else { None };
        self.store = self.store.take().filter(|s| !s.is_closed());
        let node = self.node.clone();
        let store = self.connected()?;
        let _ = store.rollback();
        if let Some(old) = old {
            store.query("SELECT pg_terminate_backend($1)", &[&old])?;
            let gone_by = std::time::Instant::now() + Duration::from_secs(10);
            while store.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&old])?.get::<_, i64>(0) > 0
            {
                if std::time::Instant::now() > gone_by {
                    return Err(StoreError::Unavailable(format!("session {old} of the lost connection does not end")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let row = store.query_opt("SELECT 1 FROM batches WHERE node = $1 AND batch = $2", &[&node, &batch])?;
        Ok(row.is_some())
    }
}
