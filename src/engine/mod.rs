//! Storage as data. Opening a session: an endpoint says what it needs to open (an
//! `OpenLoad`), an engine answers with what it read (`Opened`) and the endpoint renders
//! its on-connect frames from that (`endpoints::opened`). Between the two the session is
//! *opening*: its client frames wait, bounded (`Session::opening`). After that, every
//! read and write is a `Request` (`request.rs`) under a `Ticket`, answered the same way.
//!
//! The local engine (the default, and today the only one) answers inline from SQLite,
//! in the same turn and transaction as the rest of the turn, so an opening session is
//! answered before `App::open` returns and a request before its handler does: nothing
//! waits. An engine that answers later (PostgreSQL through a writer and reader lanes,
//! design/cluster.md §5.6) keeps the same shape: `App::ready_opens` and
//! `App::ready_answers` give each answer to whoever asked when it comes. `Engine::Deferred`,
//! the local engine answering one turn later, exercises that path (the app's tests, and
//! the whole integration suite when `SWITCHBOARD_TEST_DEFERRED_ENGINE=1`).

mod lane;
pub mod postgres;
pub mod reader;
pub mod writer;

use crate::event::{Event, EventBody};
use crate::hub::ConnId;
use crate::model::{Micros, Seq, StreamId, UserId};
use crate::request::{Answer, Request, Write};
use crate::store::{
    BankingMessage, Conversation, ConversationKind, ConversationSummary, FraudAlert, Missed, Notification, Since,
    Storage, Store, StoreError, StoredMessage,
};
use crate::tx::Tx;

/// Events one recovery replays at most; a client further behind gets a fresh snapshot.
pub const MAX_RECOVERED_EVENTS: usize = 10_000;

/// Which stream a session follows, and how it is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A room by name, created on its first open; its id when already known.
    Room { name: String, known: Option<i64> },
    /// A member-only conversation by kind and key; the user must be a member.
    Member { kind: ConversationKind, key: String },
    /// The user's own stream.
    User,
}

/// The usual opening replay an endpoint shows (when it does not resume after `since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The conversation's newest messages, oldest first.
    History { limit: usize },
    /// The user's support conversations with unread counts.
    ConversationList,
    /// Unread 1:1 messages to the user, oldest first.
    UnreadDirect { limit: usize },
    /// Unread notifications, oldest first.
    Notifications { limit: usize },
    /// Unread banking messages, oldest first.
    BankingMessages { limit: usize },
    /// Unresolved fraud alerts, oldest first.
    FraudAlerts { limit: usize },
    /// Nothing to read (a room whose history is kept rendered).
    Nothing,
}

/// What a session needs to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLoad {
    pub user: UserId,
    pub target: Target,
    /// Resume after this seq instead of the usual replay (`?since=`).
    pub since: Option<Seq>,
    pub replay: Replay,
    /// Also the user's unread notification count (001 and 003 end their opening with it,
    /// resumed or not).
    pub unread_count: bool,
    /// Also the display name the backend gave the user (`PUT /api/users/{id}`): their
    /// token carries no name (`endpoints::load` sets it).
    pub display_name: bool,
}

/// The replay as read.
#[derive(Debug)]
pub enum Snapshot {
    History(Vec<StoredMessage>),
    ConversationList(Vec<ConversationSummary>),
    UnreadDirect(Vec<StoredMessage>),
    Notifications(Vec<Notification>),
    BankingMessages(Vec<BankingMessage>),
    FraudAlerts(Vec<FraudAlert>),
    Nothing,
}

/// How the session starts.
#[derive(Debug)]
pub enum Start {
    /// The usual opening replay.
    Replay(Snapshot),
    /// Every event after `since`, in order, instead of the replay.
    Recovered(Vec<Event>),
    /// Events after `since` are no longer kept: say so, then the usual replay.
    NotPossible { since: Seq, snapshot: Snapshot },
}

/// What the engine read for an opening session, all in one turn: the stream's position
/// and the snapshot agree.
#[derive(Debug)]
pub struct Opened {
    pub stream: StreamId,
    pub position: Seq,
    /// The conversation, for conversation endpoints.
    pub conversation: Option<Conversation>,
    pub start: Start,
    pub unread_count: Option<i64>,
    /// The user's own stream's position, read with the snapshot by an engine of several
    /// nodes: every user with a session on a node follows their stream there, so that a
    /// logout stored by another node reaches all their sessions (`Ctx::follow_user`).
    pub user_position: Option<Seq>,
    /// The display name the backend gave the user, when asked for and set.
    pub display_name: Option<String>,
}

/// Why a session cannot open.
#[derive(Debug)]
pub enum OpenError {
    /// No such conversation.
    NotFound,
    /// The user is not one of its members.
    NotMember,
    /// `since` is past the stream's last seq.
    Ahead {
        since: Seq,
        last: Seq,
    },
    Store(StoreError),
}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> OpenError {
        OpenError::Store(e)
    }
}

/// What polls found about other nodes' writes (`Engine::take_changed`).
#[derive(Debug, Default)]
pub struct Changes {
    /// Streams changed lately, with their last seq.
    pub changed: Vec<(StreamId, Seq)>,
    /// Streams whose events after the position asked for are no longer kept, with
    /// their last seq.
    pub lost: Vec<(StreamId, Seq)>,
}

/// A request's number, by which its answer finds whoever asked (`Ctx::ask`).
pub type Ticket = u64;

/// The engine behind the loop, which owns the store: the loop asks it for opens and
/// requests, and tells it when a turn ends (`commit`), time passes (`sweep`) or a user
/// is seen; it never reaches the store itself.
pub enum Engine {
    /// SQLite, inline: answers before `open` or `ask` returns.
    Local(Store),
    /// SQLite, answered at the start of the next turn: the shape of an engine that
    /// answers later.
    Deferred(Store, Waiting),
    /// PostgreSQL through a writer and a reader lane (`postgres.rs`).
    Postgres(Box<postgres::PgEngine>),
}

impl Engine {
    /// The storage engine's name, as the console shows it.
    pub fn storage_name(&self) -> &'static str {
        match self {
            Engine::Local(_) | Engine::Deferred(..) => "sqlite",
            Engine::Postgres(_) => "postgresql",
        }
    }
}

/// What a deferred engine has been asked and not answered yet.
#[derive(Default)]
pub struct Waiting {
    opens: Vec<(ConnId, OpenLoad)>,
    requests: Vec<(Ticket, Request, bool)>,
}

impl Engine {
    /// The same store, answered a turn later.
    pub fn deferred(store: Store) -> Engine {
        Engine::Deferred(store, Waiting::default())
    }

    /// SQLite's store, for the engines that have one.
    fn store(&mut self) -> Option<&mut Store> {
        match self {
            Engine::Local(store) | Engine::Deferred(store, _) => Some(store),
            Engine::Postgres(_) => None,
        }
    }

    /// What a helper thread calls to wake the loop, on an engine that has one.
    pub fn waker(&self) -> Option<Box<dyn Fn() + Send>> {
        match self {
            Engine::Postgres(pg) => Some(pg.waker()),
            _ => None,
        }
    }

    /// The loop's waker, for an engine whose lanes answer from other threads.
    pub fn set_waker(&mut self, waker: mio::Waker) {
        if let Engine::Postgres(pg) = self {
            pg.set_waker(waker);
        }
    }

    /// Asks for what `conn`'s session needs to open. The answer is returned now by an
    /// inline engine, and otherwise comes from `ready` in a later turn.
    pub fn open(&mut self, conn: ConnId, load: OpenLoad, now: Micros) -> Option<Result<Opened, OpenError>> {
        match self {
            Engine::Local(store) => Some(open(store, &load, now)),
            Engine::Deferred(_, waiting) => {
                waiting.opens.push((conn, load));
                None
            }
            Engine::Postgres(pg) => {
                pg.open(conn, load, now);
                None
            }
        }
    }

    /// Answers for opening sessions that came since the last call (at the start of a turn).
    pub fn ready(&mut self, now: Micros) -> Vec<(ConnId, Result<Opened, OpenError>)> {
        match self {
            Engine::Local(_) => Vec::new(),
            Engine::Deferred(store, waiting) => std::mem::take(&mut waiting.opens)
                .into_iter()
                .map(|(conn, load)| (conn, open(store, &load, now)))
                .collect(),
            Engine::Postgres(pg) => pg.ready(),
        }
    }

    /// Asks for a read or a write; `atomic` runs it all or nothing (a server API request).
    /// The answer is returned now by an inline engine, and otherwise comes from `answers`
    /// in a later turn. Requests are run in the order they were asked. What a request
    /// records goes to `turn`'s events.
    pub fn ask(&mut self, mut turn: Turn<'_>, ticket: Ticket, request: Request, atomic: bool) -> Option<Answer> {
        match self {
            Engine::Local(store) => Some(run(&mut turn.tx(store), request, atomic)),
            Engine::Deferred(_, waiting) => {
                waiting.requests.push((ticket, request, atomic));
                None
            }
            Engine::Postgres(pg) => {
                // Every request runs in its own unit there (its seqs are given back only
                // by undoing it): `atomic` is implied.
                pg.ask(ticket, request, turn.now);
                None
            }
        }
    }

    /// Answers to requests that came since the last call (at the start of a turn), in the
    /// order they were asked; their events go to `turn`'s.
    pub fn answers(&mut self, mut turn: Turn<'_>) -> Vec<(Ticket, Answer)> {
        match self {
            Engine::Local(_) => Vec::new(),
            Engine::Deferred(store, waiting) => {
                let mut tx = turn.tx(store);
                std::mem::take(&mut waiting.requests)
                    .into_iter()
                    .map(|(ticket, request, atomic)| (ticket, run(&mut tx, request, atomic)))
                    .collect()
            }
            Engine::Postgres(pg) => pg.answers(turn),
        }
    }

    /// Whether answers are ready to be handed on without waiting (the loop must not
    /// sleep on them).
    pub fn pending(&self) -> bool {
        match self {
            Engine::Local(_) => false,
            Engine::Deferred(_, waiting) => !waiting.opens.is_empty() || !waiting.requests.is_empty(),
            Engine::Postgres(pg) => pg.has_ready(),
        }
    }

    /// Whether too many writes wait for their commit to take more now (backpressure:
    /// clients' frames wait unread and the server API answers 503). The local engines
    /// commit every turn: never.
    pub fn saturated(&self) -> bool {
        match self {
            Engine::Postgres(pg) => pg.saturated(),
            Engine::Local(_) | Engine::Deferred(..) => false,
        }
    }

    /// Whether anything asked is not answered yet (at shutdown, the loop waits for it).
    pub fn owes(&self) -> bool {
        match self {
            Engine::Postgres(pg) => pg.owes(),
            _ => self.pending(),
        }
    }

    /// Events of `stream` after `position` that this node delivered, or is delivering,
    /// before a session whose snapshot stops at `position` joined it (an engine that
    /// answers later reads snapshots while other writes commit); `None` when they are no
    /// longer kept. The local engines read snapshots in the turn: never any.
    pub fn catch_up(&self, stream: &StreamId, position: Seq) -> Option<Vec<Event>> {
        match self {
            Engine::Postgres(pg) => pg.catch_up(stream, position),
            Engine::Local(_) | Engine::Deferred(..) => Some(Vec::new()),
        }
    }

    /// When the engine next needs a turn of its own (a PostgreSQL node's poll).
    pub fn next_poll(&self) -> Option<std::time::Instant> {
        match self {
            Engine::Postgres(pg) => Some(pg.next_poll()),
            // Retention with work left (`Store::retention_due`).
            Engine::Local(store) | Engine::Deferred(store, _) => store.retention_due(),
        }
    }

    /// The Redis bus came up or went down (a PostgreSQL node with one).
    pub fn set_bus(&mut self, up: bool) {
        if let Engine::Postgres(pg) = self {
            pg.set_bus(up);
        }
    }

    /// Events heard on the bus, kept for sessions that join behind them.
    pub fn remember(&mut self, events: &[Event]) {
        if let Engine::Postgres(pg) = self {
            pg.remember(events);
        }
    }

    /// Looks for streams other nodes changed, when it is time (a PostgreSQL node).
    pub fn poll(&mut self, now: Micros) {
        if let Engine::Postgres(pg) = self {
            pg.poll(now);
        }
    }

    /// What the last polls found: streams changed lately with their last seq, and
    /// streams whose missing events are no longer kept, with their last seq. A single
    /// node's engines are the only writer: never any.
    pub fn take_changed(&mut self) -> Changes {
        match self {
            Engine::Postgres(pg) => pg.take_changed(),
            Engine::Local(_) | Engine::Deferred(..) => Default::default(),
        }
    }

    /// Asks for the events of `stream` after `after`, which come with a later turn's
    /// answers (events another node stored).
    pub fn fill(&mut self, stream: StreamId, after: Seq) {
        if let Engine::Postgres(pg) = self {
            pg.fill(stream, after);
        }
    }

    /// A user opened a first session: their latest display name is kept.
    pub fn seen(&mut self, user: &UserId, name: &str, now: Micros) -> Result<(), StoreError> {
        match self {
            Engine::Postgres(pg) => {
                pg.seen(user, name, now);
                Ok(())
            }
            Engine::Local(store) | Engine::Deferred(store, _) => store.upsert_user(user, name, now),
        }
    }

    /// With webhooks: a write nobody waits for (`Write::Hook`, `FireHookTimers`,
    /// `ReportOnline`): in the turn's transaction on SQLite, in a later batch on
    /// PostgreSQL (asked again until it is stored).
    pub fn hook_write(&mut self, write: Write, hooks: &crate::webhook::Hooks, now: Micros) {
        let store = match self {
            Engine::Postgres(pg) => return pg.background(Request::Write(write), now),
            Engine::Local(store) | Engine::Deferred(store, _) => store,
        };
        let (mut events, mut stored) = (Vec::new(), 0);
        let mut tx = Tx { store, now, events: &mut events, stored: &mut stored, hooks: Some(hooks) };
        if let Err(e) = run(&mut tx, Request::Write(write), true) {
            log::warn!("cannot store webhook events: {e}");
        }
    }

    /// Whether a commit since the last call stored webhook events (the delivery thread
    /// is woken for them).
    pub fn hooks_committed(&mut self) -> bool {
        match self {
            Engine::Postgres(pg) => pg.take_hooks_committed(),
            Engine::Local(store) | Engine::Deferred(store, _) => store.take_hooks_committed(),
        }
    }

    /// In the sweep, with webhooks: on SQLite, stores how far the receiver acknowledged
    /// (deleting what it has; on PostgreSQL the delivering node's thread does). Then the
    /// unread timers that fell due fire, on the node that delivers.
    pub fn sweep_hooks(&mut self, hooks: &crate::webhook::Hooks, delivered: i64, leading: bool, now: Micros) {
        if let Some(store) = self.store()
            && let Err(e) = store.advance_hook_cursor(delivered)
        {
            log::warn!("cannot store the webhooks' cursor (the events after the stored one will be sent again): {e}");
        }
        if leading && hooks.unread_after.is_some() {
            self.hook_write(Write::FireHookTimers, hooks, now);
        }
    }

    /// Writes done in the current turn so far (to know whether a handler wrote).
    pub fn writes_this_turn(&mut self) -> usize {
        self.store().map_or(0, |store| store.writes_this_turn())
    }

    /// The turn ends: its writes are committed (how many), or all undone.
    pub fn commit(&mut self) -> Result<usize, StoreError> {
        match self {
            // Its lane commits; the turn's writes go to it now if it is idle.
            Engine::Postgres(pg) => Ok(pg.end_turn()),
            Engine::Local(store) | Engine::Deferred(store, _) => store.commit(),
        }
    }

    /// Streams whose numbers a failed commit gave back, with their last seq now.
    pub fn take_rewound(&mut self) -> Vec<(StreamId, Seq)> {
        self.store().map_or_else(Vec::new, |store| store.take_rewound())
    }

    /// After the turn's output went out: housekeeping that may take a moment.
    pub fn after_turn(&mut self) {
        if let Some(store) = self.store() {
            store.finish_checkpoint();
        }
    }

    /// Whether the store can write, or why not in a few words (`/healthz`).
    pub fn health(&mut self) -> Result<(), String> {
        match self {
            Engine::Postgres(pg) => pg.health(),
            Engine::Local(store) | Engine::Deferred(store, _) => store.health(),
        }
    }

    /// Periodic housekeeping between turns: the store's checks, the streams' positions,
    /// and events older than `before` pruned for a few milliseconds at most.
    pub fn sweep(&mut self, before: Micros, now: Micros) {
        let store = match self {
            Engine::Postgres(pg) => return pg.sweep(before, now),
            Engine::Local(store) | Engine::Deferred(store, _) => store,
        };
        store.sweep();
        if let Err(e) = store.flush_streams() {
            log::warn!("cannot write the streams' positions (they are recovered from the rows): {e}");
        }
        if let Err(e) = store.prune_replies(now) {
            log::warn!("cannot prune the kept server API replies: {e}");
        }
        match store.prune_events(before, std::time::Duration::from_millis(1)) {
            Ok(0) => {}
            Ok(pruned) => log::debug!("pruned {pruned} events older than the retention"),
            Err(e) => log::warn!("cannot prune events: {e}"),
        }
    }
}

impl Engine {
    /// Between turns, with retention on: deletes what is past keeping for about a
    /// millisecond (`store/retention.rs`). SQLite only: `cli` refuses retention with
    /// PostgreSQL.
    /// When retention has work left and may run again.
    pub fn retention_due(&mut self) -> Option<std::time::Instant> {
        self.store().and_then(|store| store.retention_due())
    }

    pub fn prune_retention(&mut self, rules: &crate::config::Retention, now: Micros, live: &crate::store::Live<'_>) {
        /// What one sweep (twice a second) spends on it at most, give or take one step.
        const BUDGET: std::time::Duration = std::time::Duration::from_millis(1);
        let Some(store) = self.store() else { return };
        match store.prune_retention(rules, now, BUDGET, live) {
            Ok(pruned) if pruned.steps > 0 && (pruned.rows > 0 || pruned.pages > 0) => log::debug!(
                "retention: {} rows deleted and {} free pages given back in {} steps, the longest {} us ({})",
                pruned.rows,
                pruned.pages,
                pruned.steps,
                pruned.slowest.as_micros(),
                pruned.slowest_phase
            ),
            Ok(_) => {}
            Err(e) => log::warn!("retention: cannot delete what is past keeping now (tried again next sweep): {e}"),
        }
    }
}

/// What a turn gives a request run by the engine: its time, and where recorded events
/// and the stored count go (the loop's, in `Ctx`).
pub struct Turn<'a> {
    pub now: Micros,
    pub events: &'a mut Vec<Event>,
    pub stored: &'a mut u64,
    /// With webhooks: which the requests write (`Tx::hooks`).
    pub hooks: Option<&'a crate::webhook::Hooks>,
}

impl Turn<'_> {
    fn tx<'s>(&'s mut self, store: &'s mut dyn Storage) -> Tx<'s> {
        Tx { store, now: self.now, events: self.events, stored: self.stored, hooks: self.hooks }
    }
}

/// The local engine's run of one request, in the turn's transaction. An atomic one runs
/// in a savepoint: if it fails half way, its writes and its events are undone and the
/// rest of the turn is untouched.
pub fn run(tx: &mut Tx<'_>, request: Request, atomic: bool) -> Answer {
    if !atomic {
        return crate::features::run(tx, request);
    }
    tx.store.begin_unit()?;
    let (recorded, stored) = (tx.events.len(), *tx.stored);
    let answer = crate::features::run(tx, request).and_then(|done| Ok(tx.store.keep_unit().map(|()| done)?));
    if answer.is_err() {
        tx.store.undo_unit();
        tx.events.truncate(recorded);
        *tx.stored = stored;
    }
    answer
}

/// The local engine's read for an opening session, in the turn's transaction.
pub fn open(store: &mut dyn Storage, load: &OpenLoad, now: Micros) -> Result<Opened, OpenError> {
    // The stream, and for a member-only conversation the conversation itself (its kind
    // and customer render its messages).
    let (stream, conversation) = match &load.target {
        Target::Room { known: Some(id), .. } => (StreamId::Conversation(*id), None),
        Target::Room { name, known: None } => {
            (StreamId::Conversation(store.get_or_create_conversation(ConversationKind::Room, name, now)?), None)
        }
        Target::Member { kind, key } => {
            let conversation = store.conversation(*kind, key)?.ok_or(OpenError::NotFound)?;
            if !store.is_member(conversation.id, &load.user)? {
                return Err(OpenError::NotMember);
            }
            (StreamId::Conversation(conversation.id), Some(conversation))
        }
        Target::User => (StreamId::User(load.user.clone()), None),
    };
    let position = store.last_seq(&stream)?;
    let start = match load.since {
        None => Start::Replay(snapshot(store, load, &stream)?),
        Some(since) => match store.events_since(&stream, since, MAX_RECOVERED_EVENTS)? {
            Since::Events(missed) => Start::Recovered(recovered(&stream, missed, conversation.as_ref())),
            Since::Gone { .. } => Start::NotPossible { since, snapshot: snapshot(store, load, &stream)? },
            Since::Ahead { last } => return Err(OpenError::Ahead { since, last }),
        },
    };
    let unread_count = if load.unread_count { Some(store.unread_notification_count(&load.user)?) } else { None };
    let display_name = if load.display_name { store.display_name(&load.user)? } else { None };
    Ok(Opened { stream, position, conversation, start, unread_count, user_position: None, display_name })
}

fn snapshot(store: &mut dyn Storage, load: &OpenLoad, stream: &StreamId) -> Result<Snapshot, StoreError> {
    let user = &load.user;
    Ok(match (load.replay, stream) {
        (Replay::History { limit }, StreamId::Conversation(id)) => {
            Snapshot::History(store.recent_messages(*id, limit)?)
        }
        (Replay::History { .. }, StreamId::User(_)) | (Replay::Nothing, _) => Snapshot::Nothing,
        (Replay::ConversationList, _) => {
            Snapshot::ConversationList(store.conversations_of(user, ConversationKind::Support)?)
        }
        (Replay::UnreadDirect { limit }, _) => Snapshot::UnreadDirect(store.unread_direct_messages(user, limit)?),
        (Replay::Notifications { limit }, _) => Snapshot::Notifications(store.unread_notifications(user, limit)?),
        (Replay::BankingMessages { limit }, _) => {
            Snapshot::BankingMessages(store.unread_banking_messages(user, limit)?)
        }
        (Replay::FraudAlerts { limit }, _) => Snapshot::FraudAlerts(store.unresolved_fraud_alerts(user, limit)?),
    })
}

/// The missed rows as events: a conversation's messages with its kind and customer (a
/// room's when `conversation` is `None`: rooms have neither members nor customers), the
/// other events from their payload.
pub(crate) fn recovered(stream: &StreamId, missed: Vec<Missed>, conversation: Option<&Conversation>) -> Vec<Event> {
    let (kind, customer) = conversation.map_or((ConversationKind::Room, None), |c| (c.kind, c.customer.as_ref()));
    let event = |seq, body| Event { stream: stream.clone(), seq, body, except: None };
    missed
        .into_iter()
        .filter_map(|missed| match missed {
            Missed::Message(message) => {
                let seq = message.seq.unwrap_or(0);
                Some(event(seq, EventBody::Message { conversation: kind, customer: customer.cloned(), message }))
            }
            Missed::Event(row) => match serde_json::from_str::<EventBody>(&row.payload) {
                Ok(body) => Some(event(row.seq, body)),
                Err(e) => {
                    log::error!("event {}#{} ({}) cannot be read: {e}", stream.key(), row.seq, row.kind);
                    None
                }
            },
        })
        .collect()
}
