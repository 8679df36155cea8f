//! The PostgreSQL engine as the loop sees it (design/cluster.md §5.4, §5.6–5.7): opens
//! and reads go to the reader lane, writes collect into the open batch, handed to the
//! writer lane at the end of a turn when it is idle (so batches grow under load: group
//! commit). Answers come back on channels, with a wake-up of the loop, and are handed
//! on at the start of the next turn (`ready`, `answers`): a write's answer and its
//! events only once its batch committed, so nothing is delivered before it is stored.
//!
//! What other nodes store reaches this one by the polling path (§5.5): every poll
//! interval the poller lists the streams changed lately (`poll`); the loop compares them
//! with what it delivered and asks for what its listeners miss (`fill`), and for the
//! events before one that came out of order. Filled events come with the next answers
//! and go through the sequencer like this node's own. The poll is also how an idle node
//! notices that PostgreSQL is gone or back (`health`).

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::reader::{self, Filled, Job, Reader};
use super::writer::{Batch, Committed, Writer};
use super::{Changes, OpenError, OpenLoad, Opened, Ticket, Turn};
use crate::event::Event;
use crate::hub::ConnId;
use crate::model::{Micros, Seq, StreamId, UserId};
use crate::request::{Answer, Failed, Request, Write};
use crate::store::StoreError;

/// Who wakes the loop when an answer is ready (the server's `mio::Waker`, set once it
/// exists; until then nothing is asked, so nothing needs waking).
pub type Wake = Arc<OnceLock<mio::Waker>>;

/// Tickets from here up are writes nobody waits for (a user seen): the loop's own
/// tickets count up from 0 and never get here.
const UNANSWERED: Ticket = 1 << 62;

/// How long committed events are kept for sessions whose opening snapshot was read
/// before them (`catch_up`: the window is a reader's round trip, milliseconds), and how
/// many bytes of them at most (roughly: the text they carry).
const CATCH_UP_WINDOW: Duration = Duration::from_secs(5);
const CATCH_UP_BYTES: usize = 4 << 20;
const MAX_STREAMS_REMEMBERED: usize = 65_536;

/// How far back a poll looks for changed streams: longer than a batch can take to
/// commit after its streams' `updated_at` was set (its statements end after 5 s), plus
/// some clock difference between nodes.
const POLL_WINDOW: Micros = 15_000_000;

/// What the engine is told at start.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the poller looks for streams other nodes changed.
    pub poll_interval: Duration,
    /// Writes waiting for their commit (asked, and committing) past which the engine
    /// says it is saturated (`saturated`): the loop stops reading clients' frames and
    /// the server API answers 503 until the writer catches up.
    pub max_pending_writes: usize,
    /// The Redis bus, if any: the writer publishes there, and asks the rate limit.
    pub redis: Option<crate::config::RedisUrl>,
    /// The per-user rate limit of stored messages, per minute.
    pub rate_limit_per_minute: u32,
    /// With webhooks: which events the writer lane stores (`Tx::hooks`).
    pub hooks: Option<crate::webhook::Hooks>,
    /// What is deleted by age or count (`SWITCHBOARD_RETENTION_*`): by the writer lane,
    /// a bounded number of rows with a batch every few seconds.
    pub retention: crate::config::Retention,
}

/// How long after the bus came (back) up polling goes on at its own pace.
const BUS_SETTLE: Duration = Duration::from_secs(3);

/// How often a node with a working bus checks streams' positions anyway (a message the
/// bus lost, a node that died between its commit and its publish).
const POSITION_CHECK: Duration = Duration::from_secs(2);

/// A stream's recently committed events, and the newest seq no longer kept.
#[derive(Default)]
struct Recent {
    events: VecDeque<(Instant, Event)>,
    dropped_through: Seq,
}

pub struct PgEngine {
    writer: Writer,
    reader: Reader,
    poller: Reader,
    committed: Receiver<Committed>,
    read: Receiver<reader::Done>,
    /// Writes nobody waits for (a user seen, a webhook event) not stored yet, by
    /// ticket, and the next such ticket.
    background: HashMap<Ticket, Request>,
    next_background: Ticket,
    /// A batch committed webhook events since the last look (`take_hooks_committed`).
    hooks_committed: bool,
    /// Writes asked since the last batch was handed over, and the time of the last.
    open_batch: Vec<(Ticket, Request)>,
    now: Micros,
    /// A batch is committing, and how many writes it holds.
    writing: bool,
    committing: usize,
    next_batch: i64,
    /// Opens and requests asked and not answered yet.
    owed: usize,
    /// Answers received and not handed on yet.
    opened: Vec<(ConnId, Result<Opened, OpenError>)>,
    answered: Vec<(Ticket, Answer)>,
    /// The last batch's outcome (`/healthz`).
    health: Result<(), String>,
    /// Writes committed since the last turn ended (the commit metrics).
    committed_writes: usize,
    /// Events older than this are to be pruned with the next batch.
    prune_before: Option<Micros>,
    /// Per stream, what was committed lately (see `catch_up`), and all of it oldest
    /// first with its weight, to forget by age and by size.
    recent: HashMap<StreamId, Recent>,
    recent_order: VecDeque<(Instant, StreamId, usize)>,
    recent_bytes: usize,
    wake: Wake,
    options: Options,
    /// The bus is up: polls are position checks, every `POSITION_CHECK`, once it has
    /// been up for `BUS_SETTLE`.
    bus_up: bool,
    bus_up_since: Option<Instant>,
    /// When the next poll is due, and whether one is out.
    next_poll: Instant,
    polling: bool,
    /// What the poller said since the loop last looked: streams changed lately with
    /// their last seq, and streams whose missing events are no longer kept.
    changed: Vec<(StreamId, Seq)>,
    lost: Vec<(StreamId, Seq)>,
    /// Streams being filled, from which position; events filled and not handed on.
    filling: HashMap<StreamId, Seq>,
    filled: Vec<Event>,
}

/// What a helper thread calls to wake the loop.
fn waker(wake: Wake) -> Box<dyn Fn() + Send> {
    Box::new(move || {
        if let Some(waker) = wake.get()
            && let Err(e) = waker.wake()
        {
            log::error!("cannot wake the loop: {e}");
        }
    })
}

impl PgEngine {
    /// Starts the lanes on the database at `url` for this node.
    pub fn start(url: &str, node: String, wake: Wake, options: Options) -> PgEngine {
        let (committed_to, committed) = channel();
        let (read_to, read) = channel();
        PgEngine {
            writer: Writer::start(
                url.to_string(),
                node,
                options.redis.clone().map(crate::bus::Publisher::new),
                super::writer::Rules {
                    rate_limit_per_minute: options.rate_limit_per_minute,
                    hooks: options.hooks.clone(),
                    retention: options.retention,
                },
                committed_to,
                waker(wake.clone()),
            ),
            reader: Reader::start(url.to_string(), read_to.clone(), waker(wake.clone())),
            poller: Reader::start(url.to_string(), read_to, waker(wake.clone())),
            committed,
            read,
            background: HashMap::new(),
            next_background: 0,
            hooks_committed: false,
            open_batch: Vec::new(),
            now: 0,
            writing: false,
            committing: 0,
            next_batch: 1,
            owed: 0,
            opened: Vec::new(),
            answered: Vec::new(),
            health: Ok(()),
            committed_writes: 0,
            prune_before: None,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            recent_bytes: 0,
            wake,
            bus_up: false,
            bus_up_since: None,
            next_poll: Instant::now() + options.poll_interval,
            options,
            polling: false,
            changed: Vec::new(),
            lost: Vec::new(),
            filling: HashMap::new(),
            filled: Vec::new(),
        }
    }

    /// What another helper thread (the presence lane) calls to wake the loop.
    pub fn waker(&self) -> Box<dyn Fn() + Send> {
        waker(self.wake.clone())
    }

    /// The loop's waker, once the server has made it.
    pub fn set_waker(&mut self, waker: mio::Waker) {
        let _ = self.wake.set(waker);
    }

    pub fn open(&mut self, conn: ConnId, load: OpenLoad, now: Micros) {
        match self.reader.send(Job::Open { conn, load, now }) {
            Ok(()) => self.owed += 1,
            Err(e) => self.opened.push((conn, Err(OpenError::Store(StoreError::Unavailable(e))))),
        }
    }

    pub fn ready(&mut self) -> Vec<(ConnId, Result<Opened, OpenError>)> {
        self.drain_reads();
        std::mem::take(&mut self.opened)
    }

    fn drain_reads(&mut self) {
        while let Ok(done) = self.read.try_recv() {
            match done {
                reader::Done::Opened(conn, opened) => {
                    self.owed = self.owed.saturating_sub(1);
                    self.opened.push((conn, opened));
                }
                reader::Done::Answered(ticket, answer) => {
                    self.owed = self.owed.saturating_sub(1);
                    self.answered.push((ticket, answer));
                }
                reader::Done::Changed(changed) => {
                    self.polling = false;
                    match changed {
                        Ok(changed) => {
                            if self.health.is_err() {
                                log::info!("PostgreSQL answers again");
                            }
                            self.health = Ok(());
                            self.changed.extend(changed);
                        }
                        Err(e) => {
                            if self.health.is_ok() {
                                log::error!("PostgreSQL: cannot look for changed streams: {e}");
                            }
                            self.health = Err("PostgreSQL is unreachable".into());
                        }
                    }
                }
                reader::Done::Filled(stream, filled) => {
                    self.filling.remove(&stream);
                    match filled {
                        Ok(Filled::Events(events)) => {
                            self.remember(&events);
                            self.filled.extend(events);
                        }
                        Ok(Filled::Gone { last }) => self.lost.push((stream, last)),
                        Err(e) => log::warn!("PostgreSQL: cannot read stream {}: {e}", stream.key()),
                    }
                }
            }
        }
    }

    /// A request: a read goes to the reader now, a write into the open batch.
    pub fn ask(&mut self, ticket: Ticket, request: Request, now: Micros) {
        self.now = now;
        match request {
            Request::Read(_) => match self.reader.send(Job::Read { ticket, request, now }) {
                Ok(()) => self.owed += 1,
                Err(e) => self.answered.push((ticket, Err(Failed::Store(StoreError::Unavailable(e))))),
            },
            Request::Write(_) => {
                self.owed += 1;
                self.open_batch.push((ticket, request));
            }
        }
    }

    /// A user opened a first session; nobody waits for it, but until it is stored the
    /// user is unknown to direct messages on every node.
    pub fn seen(&mut self, user: &UserId, name: &str, now: Micros) {
        self.background(Request::Write(Write::SeeUser { user: user.clone(), name: name.to_string() }), now);
    }

    /// A write nobody waits for; a failed one is asked again with the next batch
    /// (`retry_background`).
    pub fn background(&mut self, request: Request, now: Micros) {
        let ticket = UNANSWERED + self.next_background;
        self.next_background += 1;
        self.background.insert(ticket, request.clone());
        self.ask(ticket, request, now);
    }

    /// Writes nobody waits for that failed to be stored: asked again.
    fn retry_background(&mut self, failed: Vec<Ticket>) {
        for ticket in failed {
            if let Some(request) = self.background.remove(&ticket) {
                self.background(request, self.now);
            }
        }
    }

    /// Whether a batch committed webhook events since the last call.
    pub fn take_hooks_committed(&mut self) -> bool {
        std::mem::take(&mut self.hooks_committed)
    }

    /// What the lanes answered since the last call: opens are kept for `ready`; write
    /// answers come with their batch's events (into `turn`), reads alone.
    pub fn answers(&mut self, turn: Turn<'_>) -> Vec<(Ticket, Answer)> {
        self.drain_reads();
        let mut answers = std::mem::take(&mut self.answered);
        turn.events.append(&mut self.filled);
        while let Ok(committed) = self.committed.try_recv() {
            self.writing = false;
            self.committing = 0;
            match committed {
                Committed::Yes { answers: written, events, stored, hooks, .. } => {
                    self.health = Ok(());
                    self.hooks_committed |= hooks;
                    self.owed = self.owed.saturating_sub(written.len());
                    self.committed_writes += written.len();
                    self.remember(&events);
                    turn.events.extend(events);
                    *turn.stored += stored;
                    let (seen, written): (Vec<_>, Vec<_>) = written.into_iter().partition(|(t, _)| *t >= UNANSWERED);
                    let (stored, failed): (Vec<_>, Vec<_>) = seen.into_iter().partition(|(_, answer)| answer.is_ok());
                    for (ticket, _) in stored {
                        self.background.remove(&ticket);
                    }
                    self.retry_background(failed.into_iter().map(|(ticket, _)| ticket).collect());
                    answers.extend(written);
                }
                Committed::No { tickets, error, batch } => {
                    log::error!("PostgreSQL: batch {batch} failed, {} writes not stored: {error}", tickets.len());
                    self.health = Err("PostgreSQL could not store a batch".into());
                    self.owed = self.owed.saturating_sub(tickets.len());
                    let failed = |e: &str| Err(Failed::Store(StoreError::Unavailable(e.to_string())));
                    let (seen, tickets): (Vec<_>, Vec<_>) = tickets.into_iter().partition(|t| *t >= UNANSWERED);
                    self.retry_background(seen);
                    answers.extend(tickets.into_iter().map(|t| (t, failed(&error))));
                }
            }
        }
        self.hand_over();
        answers
    }

    /// The turn ends: the open batch goes to the writer if it is idle. Returns the
    /// writes committed since the last turn ended.
    pub fn end_turn(&mut self) -> usize {
        self.hand_over();
        std::mem::take(&mut self.committed_writes)
    }

    /// Between turns: events older than `before` go with the next batch (one is sent
    /// for them alone when nothing else is written).
    pub fn sweep(&mut self, before: Micros, now: Micros) {
        self.prune_before = Some(before);
        self.now = self.now.max(now);
    }

    /// When the next poll is due.
    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    /// Asks the poller for the streams changed lately, if a poll is due and none is out.
    pub fn poll(&mut self, now: Micros) {
        let at = Instant::now();
        if self.polling || at < self.next_poll {
            return;
        }
        // Just after the bus came back, other nodes' publishers may not have reconnected
        // yet (they try again a second later): polling stays the bus for a moment.
        let settled = self.bus_up_since.is_some_and(|since| at.duration_since(since) >= BUS_SETTLE);
        self.next_poll = at + if settled { POSITION_CHECK } else { self.options.poll_interval };
        match self.poller.send(Job::Changed { since: now - POLL_WINDOW }) {
            Ok(()) => self.polling = true,
            Err(e) => self.health = Err(e),
        }
    }

    /// The bus came up (a position check is due at once: what was published while it
    /// was down was not heard) or went down (polling is the bus again).
    pub fn set_bus(&mut self, up: bool) {
        if up && !self.bus_up {
            self.next_poll = Instant::now();
            self.bus_up_since = Some(Instant::now());
        } else if !up && self.bus_up {
            self.next_poll = self.next_poll.min(Instant::now() + self.options.poll_interval);
            self.bus_up_since = None;
        }
        self.bus_up = up;
    }

    /// Streams changed lately with their last seq, and streams whose missing events are
    /// gone with theirs, since the last call.
    pub fn take_changed(&mut self) -> Changes {
        Changes { changed: std::mem::take(&mut self.changed), lost: std::mem::take(&mut self.lost) }
    }

    /// Asks for the events of `stream` after `after` (nothing if they are being read).
    pub fn fill(&mut self, stream: StreamId, after: Seq) {
        if self.filling.get(&stream).is_some_and(|from| *from <= after) {
            return;
        }
        self.filling.insert(stream.clone(), after);
        if let Err(e) = self.poller.send(Job::Fill { stream: stream.clone(), after }) {
            log::warn!("cannot read stream {}: {e}", stream.key());
            self.filling.remove(&stream);
        }
    }

    fn hand_over(&mut self) {
        if self.writing || (self.open_batch.is_empty() && self.prune_before.is_none()) {
            return;
        }
        let batch = Batch {
            id: self.next_batch,
            now: self.now,
            requests: std::mem::take(&mut self.open_batch),
            prune_before: self.prune_before.take(),
        };
        self.next_batch += 1;
        let tickets: Vec<Ticket> = batch.requests.iter().map(|(t, _)| *t).collect();
        let size = batch.requests.len();
        match self.writer.send(batch) {
            Ok(()) => {
                self.writing = true;
                self.committing = size;
            }
            Err(e) => {
                log::error!("{e}: {} writes not stored", tickets.len());
                self.owed = self.owed.saturating_sub(tickets.len());
                // The lane is gone (the node is stopping): nothing is asked again.
                let failed = tickets.into_iter().filter(|t| self.background.remove(t).is_none()).collect::<Vec<_>>();
                self.answered
                    .extend(failed.into_iter().map(|t| (t, Err(Failed::Store(StoreError::Unavailable(e.clone()))))));
                self.health = Err(e);
            }
        }
    }

    /// Keeps events this node delivers (its own, filled, or heard on the bus) for the
    /// sessions that join behind them (`catch_up`).
    pub fn remember(&mut self, events: &[Event]) {
        let now = Instant::now();
        for event in events {
            let weight = weight(event);
            self.recent.entry(event.stream.clone()).or_default().events.push_back((now, event.clone()));
            self.recent_order.push_back((now, event.stream.clone(), weight));
            self.recent_bytes += weight;
        }
        // Forget the oldest: each stream's oldest is the oldest of all of that stream.
        while let Some((at, stream, weight)) = self.recent_order.front()
            && (self.recent_bytes > CATCH_UP_BYTES || now.duration_since(*at) > CATCH_UP_WINDOW)
        {
            self.recent_bytes -= weight;
            if let Some(recent) = self.recent.get_mut(stream) {
                if let Some((_, old)) = recent.events.pop_front() {
                    recent.dropped_through = recent.dropped_through.max(old.seq);
                }
                if recent.events.is_empty() && recent.dropped_through == 0 {
                    self.recent.remove(stream);
                }
            }
            self.recent_order.pop_front();
        }
        if self.recent.len() > MAX_STREAMS_REMEMBERED {
            // Streams with nothing kept: a session joining one of them behind its last
            // forgotten seq is then not told (after CATCH_UP_WINDOW, which a reader's
            // answer does not take).
            self.recent.retain(|_, r| !r.events.is_empty());
        }
    }

    /// The events of `stream` committed after `position` that this node has delivered or
    /// is delivering: what a session whose snapshot was read before them must still get.
    /// `None` when some of them are no longer kept.
    pub fn catch_up(&self, stream: &StreamId, position: Seq) -> Option<Vec<Event>> {
        let Some(recent) = self.recent.get(stream) else { return Some(Vec::new()) };
        if recent.dropped_through > position {
            return None;
        }
        // This node's commits and what it filled from others may overlap and interleave.
        let mut events: Vec<Event> =
            recent.events.iter().filter(|(_, e)| e.seq > position).map(|(_, e)| e.clone()).collect();
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Some(events)
    }

    /// Too many writes wait for their commit: take no more until some are answered.
    pub fn saturated(&self) -> bool {
        self.open_batch.len() + self.committing >= self.options.max_pending_writes
    }

    /// Anything asked and not answered yet.
    pub fn owes(&self) -> bool {
        self.owed > 0 || !self.open_batch.is_empty() || !self.opened.is_empty()
    }

    /// Answers received and waiting to be handed on (the loop must not sleep on them).
    pub fn has_ready(&self) -> bool {
        !self.opened.is_empty() || !self.answered.is_empty() || !self.filled.is_empty()
    }

    pub fn health(&self) -> Result<(), String> {
        self.health.clone()
    }
}

/// Roughly the memory an event holds: the text it carries, and a little more.
fn weight(event: &Event) -> usize {
    use crate::event::EventBody;
    256 + match &event.body {
        EventBody::Message { message, .. }
        | EventBody::DirectMessage { message }
        | EventBody::CustomerMessage { message, .. } => message.content.len() + message.sender_name.len(),
        EventBody::Notification { notification, .. } => notification.title.len() + notification.message.len(),
        EventBody::BankingMessage { message } => message.subject.len() + message.body.len(),
        EventBody::FraudAlert { alert } => alert.message.len(),
        EventBody::ReadReceipt { .. }
        | EventBody::MessagesRead { .. }
        | EventBody::DirectRead { .. }
        | EventBody::MembersChanged { .. }
        | EventBody::Logout => 0,
    }
}
