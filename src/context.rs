//! The context every handler works in: what a turn has (the engine, the hub, who is
//! online, the metrics, the time of the turn) and what it may do (queue frames, closes
//! and API answers in the outbox). Endpoints and the server API import this and nothing
//! of the dispatcher (`app.rs`), so the dependencies run one way:
//! `server -> app -> {endpoints, api} -> context -> {engine, hub, ...}`.
//!
//! Nothing here touches a socket: the outbox is applied by the server only after
//! `App::end_turn` has committed the turn's writes.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;
use tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::engine::{Engine, Ticket, Turn};
pub use crate::event::{Event, EventBody};
use crate::http::HttpError;
use crate::hub::{ConnId, Hub, Topic};
use crate::metrics::Metrics;
use crate::model::{Identity, Micros, Seq, StreamId, UserId};
use crate::recent::Recent;
use crate::request::{Answer, Request};
use crate::route::Endpoint;
use crate::sequencer::{Offered, Sequencer};

/// A serialized frame: JSON text, shared by every connection it goes to.
pub type Frame = Utf8Bytes;

/// Renders an endpoint's error frame from a message (see `endpoints::error_renderer`).
pub type ErrorRenderer = fn(&str) -> Frame;

/// Serializes a frame once; cloning it for each recipient is a reference-count bump.
pub fn to_frame<T: Serialize>(value: &T) -> Frame {
    Utf8Bytes::from(serde_json::to_string(value).expect("frames are plain JSON values"))
}

/// Something for the server to do once the turn's writes are committed.
pub enum Out {
    /// A text frame to some connections. `durable` frames report stored data and are
    /// dropped if the commit fails.
    Frame { to: Vec<ConnId>, frame: Frame, durable: bool },
    /// Several frames to one connection, in order; they do not depend on the commit.
    Frames { to: ConnId, frames: Vec<Frame> },
    /// A binary frame to one connection (only the echo endpoint sends any).
    Binary { to: ConnId, data: tungstenite::Bytes },
    /// Close one connection with a close code.
    Close { to: ConnId, code: u16, reason: String },
    /// Close one connection with its endpoint's authentication close code (a logout).
    Logout { to: ConnId },
    /// Answer a server API request; `durable` answers become 503 if the commit fails.
    Http { to: ConnId, response: Vec<u8>, durable: bool },
}

/// A server API request's reply: a status and a JSON body, or an error.
pub type ApiReply = Result<(u16, serde_json::Value), HttpError>;

/// What to do with a request's answer when it comes (`Ctx::ask`): plain data that stays
/// on the loop while the request goes to the engine.
#[derive(Clone, Copy)]
pub enum Then {
    /// Render it on the session of `conn`, if that is still open (an error frame, say;
    /// what the write recorded reaches listeners as events either way).
    Session { conn: ConnId, render: fn(&mut Ctx, &Session, Answer) },
    /// Reply to the server API request on `conn`; a `durable` reply reports stored data
    /// and becomes a 503 if the turn's commit fails.
    Api { conn: ConnId, render: ApiRender, durable: bool },
}

/// How a server API reply is made from its answer: a read's may look at the loop's
/// state; a write's only at its answer (so that with an `Idempotency-Key` it is made
/// where the write runs, `request::ReplyFn`).
#[derive(Clone, Copy)]
pub enum ApiRender {
    Read(fn(&mut Ctx, Answer) -> ApiReply),
    Write(crate::request::ReplyFn),
}

impl Then {
    /// The session that asked, if a session did.
    pub fn session(&self) -> Option<ConnId> {
        match self {
            Then::Session { conn, .. } => Some(*conn),
            Then::Api { .. } => None,
        }
    }
}

/// Why a WebSocket session is refused after the upgrade: a close code and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: u16, reason: impl Into<String>) -> Refusal {
        Refusal { code, reason: reason.into() }
    }
}

/// Close codes used by more than one endpoint.
pub mod close_code {
    /// RFC 6455: the server is going away (shutdown, idle timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// RFC 6455: a message larger than the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// RFC 6455: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// RFC 6455 (IANA registry): try again later; used for the per-user connection cap.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// 1012, Service Restart: the session missed events it can no longer be sent; a
    /// client that reconnects gets a fresh snapshot.
    pub const SERVICE_RESTART: u16 = 1012;
    /// RFC 6455: a request the server will not serve (a `since` ahead of its stream, too
    /// much sent before the session opened).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Seed documents: a valid token on someone else's resource.
    pub const FORBIDDEN: u16 = 4003;
}

/// Client frames an opening session holds at most (and their bytes), until its
/// engine answers; past either the connection is closed (1008).
pub const MAX_EARLY_FRAMES: usize = 64;
pub const MAX_EARLY_BYTES: usize = 1 << 20;

/// A session waiting for its engine's answer (`engine.rs`), or an endpoint keeping
/// something for it.
#[derive(Default)]
pub struct Opening {
    /// Client frames that arrived meanwhile, in order.
    pub early: Vec<String>,
    pub early_bytes: usize,
    /// Frames the endpoint kept at load time for its answer (a room's rendered history),
    /// and the stream position they show (the session joins there).
    pub kept: Vec<Frame>,
    pub kept_position: Option<Seq>,
    /// Its answer refused it: it closes without ever opening.
    pub refused: bool,
    /// With Redis: waiting to hear whether its user's cap over all nodes admits it; the
    /// engine's answer (if any was needed) is held until then.
    pub admitting: bool,
    pub held: Option<Option<Result<crate::engine::Opened, crate::engine::OpenError>>>,
}

/// One open WebSocket session: who, on which endpoint, subscribed to what.
pub struct Session {
    pub conn: ConnId,
    pub identity: Identity,
    pub endpoint: Endpoint,
    /// Topics to leave when the session closes.
    pub topics: Vec<Topic>,
    /// The conversation this session is bound to, when its endpoint has one.
    pub conversation: Option<i64>,
    /// Set while the session waits for its engine's answer (see `Opening`), and kept
    /// when the answer refused it: a session with it never opened.
    pub opening: Option<Box<Opening>>,
}

impl Session {
    /// The stream its endpoint follows, once open (every endpoint has at most one; a
    /// conversation's is known once `conversation` is set).
    pub fn stream(&self) -> Option<StreamId> {
        match self.endpoint {
            Endpoint::Rooms { .. } | Endpoint::Consultation { .. } | Endpoint::SupportChat { .. } => {
                self.conversation.map(StreamId::Conversation)
            }
            Endpoint::ConversationList
            | Endpoint::DirectChat
            | Endpoint::BankingMessages { .. }
            | Endpoint::FraudAlerts { .. }
            | Endpoint::UserNotifications { .. }
            | Endpoint::Notifications
            | Endpoint::V1Notifications => Some(StreamId::User(self.identity.user_id.clone())),
            Endpoint::Presence => None,
            #[cfg(feature = "echo")]
            Endpoint::Echo => None,
        }
    }

    /// The opening state, created when first needed.
    pub fn opening_mut(&mut self) -> &mut Opening {
        self.opening.get_or_insert_with(Box::default)
    }
}

/// A user with at least one open session.
pub struct OnlineUser {
    pub name: std::sync::Arc<str>,
    pub conns: Vec<ConnId>,
}

/// The state handlers read and the outbox they write to, for one turn at a time.
pub struct Ctx {
    pub config: Config,
    /// The server API's key (configured or kept in the database).
    pub api_key: String,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Users with open sessions: their display name and connections (per-user cap,
    /// presence, the server API's online list).
    pub(crate) online: HashMap<UserId, OnlineUser>,
    pub(crate) outbox: Vec<Out>,
    /// Recorded and not yet delivered (see `Event`).
    events: Vec<Event>,
    /// Events the sequencer already let through (a session joining behind what waited
    /// for it), delivered before `events`.
    in_order: Vec<Event>,
    /// Streams with events waiting behind a gap since the last `follow_streams`.
    held: Vec<StreamId>,
    /// Sessions whose opening snapshot is ahead of their stream's delivered position
    /// here, with that snapshot's position: events up to it are not sent to them. Empty
    /// but for moments on a node of several (see `join_stream`).
    ahead: Vec<(ConnId, StreamId, Seq)>,
    /// The event being delivered while `ahead` is not empty.
    delivering: Option<(StreamId, Seq)>,
    /// Users whose own stream this node follows for them (an engine of several nodes;
    /// see `follow_user`).
    following_users: HashSet<UserId>,
    /// The Redis bus's subscription, on a node that has one (`bus.rs`; the server owns
    /// its socket).
    pub bus: Option<crate::bus::Subscriber>,
    /// Presence, caps and rate limits across nodes, on a node with Redis (`cluster`).
    pub cluster: Option<crate::cluster::Cluster>,
    /// Requests asked that the rate limit of stored messages counts (`Request::rate_user`).
    pub rate_limited_asks: u64,
    /// Where opens and requests go, and the store behind them (`engine.rs`).
    pub engine: Engine,
    /// Webhooks to the backend, when configured (`webhook/`).
    pub webhooks: Option<crate::webhook::Webhooks>,
    next_ticket: Ticket,
    /// Requests asked and not answered yet, by ticket, and whether each is a write.
    waiting: HashMap<Ticket, (Then, bool)>,
    /// Answers given inline, for the dispatcher to hand on when the handler returns.
    answers: Vec<(Then, Answer)>,
    /// Sessions with requests not answered yet, and how many (a session that closes
    /// meanwhile is closed only after them: its effects keep their order).
    asking: HashMap<ConnId, u32>,
    /// Per stream followed here, delivery in seq order, exactly once.
    pub sequencer: Sequencer<StreamId, Event>,
    /// Rendered recent history of active rooms (see `recent.rs`).
    pub recent: Recent,
    /// The time of the current turn, set by `App::begin_turn`.
    pub now: Micros,
    /// When this server started (the console's uptime).
    pub started_at: Micros,
    /// The HS256 secret tokens are signed with, when switchboard verifies HS256: what
    /// `POST /api/tokens` mints with (`None` with a public-key algorithm).
    pub token_secret: Option<String>,
    /// The WebSocket listener's address once bound (port 0 resolved): the console's
    /// WebSocket URL.
    pub ws_addr: Option<std::net::SocketAddr>,
}

impl Ctx {
    pub fn new(config: Config, api_key: String, engine: Engine) -> Ctx {
        let cluster = match (&config.redis, engine.waker()) {
            (Some(url), Some(wake)) => Some(crate::cluster::Cluster::start(url.clone(), config.node_lease, wake)),
            _ => None,
        };
        Ctx {
            config,
            api_key,
            hub: Hub::default(),
            metrics: Metrics::default(),
            online: HashMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            in_order: Vec::new(),
            held: Vec::new(),
            ahead: Vec::new(),
            delivering: None,
            following_users: HashSet::new(),
            bus: None,
            cluster,
            rate_limited_asks: 0,
            engine,
            webhooks: None,
            next_ticket: 0,
            waiting: HashMap::new(),
            answers: Vec::new(),
            asking: HashMap::new(),
            sequencer: Sequencer::new(4096),
            recent: Recent::default(),
            now: crate::model::now_micros(),
            started_at: crate::model::now_micros(),
            token_secret: None,
            ws_addr: None,
        }
    }

    /// The engine, and what a request it runs gets of this turn (`engine::Turn`).
    fn engine_and_turn(&mut self) -> (&mut Engine, Turn<'_>) {
        let turn = Turn {
            now: self.now,
            events: &mut self.events,
            stored: &mut self.metrics.messages_stored,
            hooks: self.webhooks.as_ref().map(|w| &w.hooks),
        };
        (&mut self.engine, turn)
    }

    /// With webhooks: stores an event no request records (presence, a room joined or
    /// left): in the turn's transaction on SQLite, with a later batch on PostgreSQL.
    pub fn hook(&mut self, hook: crate::webhook::Hook) {
        let Some(webhooks) = &self.webhooks else { return };
        if webhooks.hooks.wants(hook.kind) || hook.online.is_some() {
            self.engine.hook_write(crate::request::Write::Hook(Box::new(hook)), &webhooks.hooks, self.now);
        }
    }

    /// Asks the engine for a read or a write; `then` says what to do with the answer,
    /// handed on by the dispatcher (`App`) right after the handler returns for the local
    /// engine, or in a later turn. A server API write runs all or nothing.
    pub fn ask(&mut self, then: Then, request: Request) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let write = matches!(request, Request::Write(_));
        if request.rate_user().is_some() {
            self.rate_limited_asks += 1;
        }
        let atomic = write && matches!(then, Then::Api { .. });
        let (engine, turn) = self.engine_and_turn();
        match engine.ask(turn, ticket, request, atomic) {
            Some(answer) => self.answers.push((then, answer)),
            None => {
                if let Some(conn) = then.session() {
                    *self.asking.entry(conn).or_default() += 1;
                }
                self.waiting.insert(ticket, (then, write));
            }
        }
    }

    /// Whether a session has requests not answered yet.
    pub fn asking(&self, conn: ConnId) -> bool {
        self.asking.contains_key(&conn)
    }

    /// Answers given inline since the last call, swapped into `into` (empty), so that
    /// both buffers keep their capacity from turn to turn.
    pub fn take_answers(&mut self, into: &mut Vec<(Then, Answer)>) {
        std::mem::swap(&mut self.answers, into);
    }

    /// Answers the engine gave since the last call (at the start of a turn), each with
    /// what to do with it and whether it answers a write. Their events are queued for
    /// delivery.
    pub fn ready_answers(&mut self) -> Vec<(Then, Answer, bool)> {
        let (engine, turn) = self.engine_and_turn();
        let answers = engine.answers(turn);
        let mut ready = Vec::with_capacity(answers.len());
        for (ticket, answer) in answers {
            let Some((then, write)) = self.waiting.remove(&ticket) else { continue };
            if let Some(conn) = then.session()
                && let Some(count) = self.asking.get_mut(&conn)
            {
                *count -= 1;
                if *count == 0 {
                    self.asking.remove(&conn);
                }
            }
            ready.push((then, answer, write));
        }
        ready
    }

    /// A session joins its endpoint's stream at `position`, read together with its
    /// opening snapshot (`engine::open`), so that every later event reaches it once, in
    /// order (its `leave_stream` at close). Part of a successful `opened`.
    ///
    /// With an engine that answers later, events may have been committed and delivered
    /// here after the snapshot was read: those the stream's listeners already had are
    /// returned, for this session alone (`endpoints::join` renders them); those nobody
    /// here had yet go through the sequencer from `position`, to everyone in order.
    pub fn join_stream(&mut self, conn: ConnId, stream: StreamId, position: Seq) -> Vec<Event> {
        let delivered = self.sequencer.position(&stream);
        if let Some(delivered) = delivered
            && position > delivered
        {
            // Its snapshot is ahead of what this node delivered (another node stored the
            // events in between, not read here yet): the stream's position stays, so that
            // its other listeners get them; this session is spared those it has (`ahead`).
            self.sequencer.join(stream.clone(), delivered);
            self.ahead.push((conn, stream.clone(), position));
            self.metrics.stream_fills += 1;
            self.engine.fill(stream, delivered);
            return Vec::new();
        }
        for (_, early) in self.sequencer.join(stream.clone(), position) {
            self.in_order.push(early);
        }
        if delivered.is_none()
            && let Some(bus) = &mut self.bus
        {
            bus.want(&stream);
        }
        let Some(missed) = self.engine.catch_up(&stream, position) else {
            // What it missed between its snapshot and now is no longer kept: it starts
            // again from a fresh snapshot.
            log::warn!("stream {}: a session joined at {position}, behind what is kept here; closing it", stream.key());
            self.close_conn(conn, close_code::SERVICE_RESTART, "missed events; reconnect");
            return Vec::new();
        };
        let delivered = delivered.unwrap_or(position);
        let (own, pending): (Vec<Event>, Vec<Event>) = missed.into_iter().partition(|e| e.seq <= delivered);
        self.events.extend(pending);
        own
    }

    /// A session left its stream (it closed).
    pub fn leave_stream(&mut self, session: &Session) {
        if let Some(stream) = session.stream() {
            self.leave(&stream);
        }
        if !self.ahead.is_empty() {
            self.ahead.retain(|(conn, _, _)| *conn != session.conn);
        }
    }

    /// The event being delivered, while sessions that joined ahead of their stream's
    /// position wait for it to catch up (`publish` spares them what they have).
    pub fn delivering(&mut self, event: Option<&Event>) {
        if !self.ahead.is_empty() {
            self.delivering = event.map(|e| (e.stream.clone(), e.seq));
        }
    }

    /// Drops from `to` the sessions that already have the event being delivered.
    fn spare_ahead(&self, to: &mut Vec<ConnId>) {
        if let Some((stream, seq)) = &self.delivering {
            to.retain(|c| !self.ahead.iter().any(|(conn, s, position)| conn == c && s == stream && seq <= position));
        }
    }

    /// Passes a recorded event through its stream's sequencer: what comes out, in
    /// order, is for this node's listeners; nothing, if none follow the stream here.
    pub fn sequence(&mut self, event: Event) -> Vec<(Seq, Event)> {
        let stream = event.stream.clone();
        match self.sequencer.offer(&stream, event.seq, event, Instant::now()) {
            Offered::Deliver(events) => {
                if events.is_empty() {
                    self.held.push(stream);
                }
                events
            }
            Offered::Lost { from, to, then } => {
                log::warn!(
                    "stream {}: events {from}..={to} were never seen here; its sessions start again",
                    stream.key()
                );
                self.metrics.events_lost += (to + 1 - from) as u64;
                self.restart_listeners(&stream);
                then
            }
            Offered::Duplicate | Offered::NotFollowed => Vec::new(),
        }
    }

    /// What other nodes stored, for the streams followed here (an engine with several
    /// nodes; see `engine::postgres`): the events of streams that moved past what was
    /// delivered, and those before events that came out of order, are asked for; they
    /// come with a later turn's answers. Where they are no longer kept, delivery goes on
    /// from the stream's end, and its listeners miss them (logged).
    pub fn follow_streams(&mut self) {
        if !self.ahead.is_empty() {
            let sequencer = &self.sequencer;
            self.ahead.retain(|(_, stream, position)| sequencer.position(stream).is_some_and(|d| d < *position));
        }
        let crate::engine::Changes { changed, lost } = self.engine.take_changed();
        for (stream, last) in changed {
            if let Some(delivered) = self.sequencer.position(&stream)
                && last > delivered
            {
                self.metrics.stream_fills += 1;
                if self.bus.as_ref().is_some_and(|bus| bus.is_up()) {
                    // A position check found what the bus did not bring (lost, or late).
                    self.metrics.position_repairs += 1;
                }
                self.engine.fill(stream, delivered);
            }
        }
        for stream in std::mem::take(&mut self.held) {
            if let Some((missing, _)) = self.sequencer.gap(&stream) {
                self.metrics.stream_fills += 1;
                self.engine.fill(stream, missing - 1);
            }
        }
        for (stream, last) in lost {
            let Some(delivered) = self.sequencer.position(&stream).filter(|d| *d < last) else { continue };
            log::warn!(
                "stream {}: events after {delivered} are no longer kept; its sessions start again",
                stream.key()
            );
            self.metrics.events_lost += (last - delivered) as u64;
            self.restart_listeners(&stream);
            let next = self.sequencer.follow(stream, last);
            self.in_order.extend(next.into_iter().map(|(_, event)| event));
        }
    }

    /// A user with a session here follows their own stream from `position` on (read
    /// with a session's snapshot), whatever their sessions' endpoints follow: a logout
    /// another node stores reaches every session of theirs here. Once per user; a stream
    /// followed already keeps its position (its listeners need what comes after it).
    pub fn follow_user(&mut self, user: &UserId, position: Seq) {
        if self.following_users.insert(user.clone()) {
            let stream = StreamId::User(user.clone());
            let followed = self.sequencer.position(&stream);
            let at = followed.map_or(position, |delivered| delivered.min(position));
            self.in_order.extend(self.sequencer.join(stream.clone(), at).into_iter().map(|(_, event)| event));
            if followed.is_none()
                && let Some(bus) = &mut self.bus
            {
                bus.want(&stream);
            }
        }
    }

    /// The user's last session here closed.
    pub fn unfollow_user(&mut self, user: &UserId) {
        if self.following_users.remove(user) {
            self.leave(&StreamId::User(user.clone()));
        }
    }

    /// One listener less; with the last, the stream is no longer heard on the bus.
    fn leave(&mut self, stream: &StreamId) {
        self.sequencer.leave(stream);
        if self.sequencer.position(stream).is_none()
            && let Some(bus) = &mut self.bus
        {
            bus.drop_stream(stream);
        }
    }

    /// Events heard on the bus (they go through the sequencer like any other).
    pub fn heard(&mut self, events: Vec<Event>) {
        self.engine.remember(&events);
        self.events.extend(events);
    }

    /// Closes the sessions that listen to a stream whose events they missed with 1012,
    /// so that their clients reconnect to a fresh snapshot (design §5.5; for a user's
    /// stream, every session of the user).
    fn restart_listeners(&mut self, stream: &StreamId) {
        let conns = match stream {
            StreamId::Conversation(id) => self.hub.conns(&Topic::Conversation(*id)).to_vec(),
            StreamId::User(user) => self.user_conns(user).to_vec(),
        };
        for conn in conns {
            self.close_conn(conn, close_code::SERVICE_RESTART, "missed events; reconnect");
        }
    }

    /// Streams whose subscription on the bus was just confirmed: what other nodes
    /// published on them before that (after their sessions' snapshots were read) is read
    /// from the store now, rather than at the next position check.
    pub fn check_streams(&mut self, streams: Vec<StreamId>) {
        for stream in streams {
            // A position check, not counted as a fill: it usually finds nothing.
            if let Some(delivered) = self.sequencer.position(&stream) {
                self.engine.fill(stream, delivered);
            }
        }
    }

    /// Events the sequencer let through outside `sequence`, to deliver first.
    pub fn take_in_order(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.in_order)
    }

    /// A failed commit gave streams their numbers back: delivery positions past them
    /// go back too, so that the numbers taken again are delivered.
    pub fn rewind_streams(&mut self) {
        for (stream, last) in self.engine.take_rewound() {
            self.sequencer.rewind(&stream, last);
        }
    }

    /// The events emitted since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Queues a frame to one connection; it does not depend on the commit.
    pub fn send(&mut self, to: ConnId, frame: Frame) {
        self.outbox.push(Out::Frame { to: vec![to], frame, durable: false });
    }

    /// Queues several frames to one connection, in order (a history replay).
    pub fn send_all(&mut self, to: ConnId, frames: Vec<Frame>) {
        if !frames.is_empty() {
            self.outbox.push(Out::Frames { to, frames });
        }
    }

    /// Queues a binary frame to one connection.
    pub fn send_binary(&mut self, to: ConnId, data: tungstenite::Bytes) {
        self.outbox.push(Out::Binary { to, data });
    }

    /// Queues a frame to every connection of a topic, optionally but one.
    pub fn publish(&mut self, topic: &Topic, frame: Frame, except: Option<ConnId>, durable: bool) {
        let mut to: Vec<ConnId> = self.hub.conns(topic).iter().copied().filter(|c| Some(*c) != except).collect();
        self.spare_ahead(&mut to);
        if !to.is_empty() {
            self.outbox.push(Out::Frame { to, frame, durable });
        }
    }

    /// Queues a close of another connection (used by the server API's disconnect).
    pub fn close_conn(&mut self, to: ConnId, code: u16, reason: &str) {
        self.outbox.push(Out::Close { to, code, reason: reason.to_string() });
    }

    /// Queues a logout of a connection (see `Out::Logout`).
    pub fn logout_conn(&mut self, to: ConnId) {
        self.outbox.push(Out::Logout { to });
    }

    /// Connections of a user that are open right now.
    pub fn user_conns(&self, user: &UserId) -> &[ConnId] {
        self.online.get(user).map(|u| u.conns.as_slice()).unwrap_or(&[])
    }

    /// Users online now, ordered by id, with their names and connection counts: on a
    /// node with Redis, on every node.
    pub fn online_users(&self) -> Vec<(UserId, std::sync::Arc<str>, usize)> {
        let here = |user: &UserId| self.online.get(user).map_or(0, |u| u.conns.len());
        let mut users: Vec<_> = match self.cluster.as_ref().and_then(|c| c.get(crate::cluster::ONLINE)) {
            Some(mirror) => mirror
                .shown
                .iter()
                .map(|(user, name)| {
                    let remote = mirror.remote.get(user).map_or(0, |(_, count)| *count as usize);
                    (user.clone(), name.clone(), remote.max(here(user)))
                })
                .collect(),
            None => self.online.iter().map(|(user, u)| (user.clone(), u.name.clone(), u.conns.len())).collect(),
        };
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    /// A user's connections on every node (on a node with Redis), else on this one.
    pub fn connections_of(&self, user: &UserId) -> usize {
        let here = self.online.get(user).map_or(0, |u| u.conns.len());
        let mirror = self.cluster.as_ref().and_then(|c| c.get(crate::cluster::ONLINE));
        let remote = mirror.and_then(|m| m.remote.get(user)).map_or(0, |(_, count)| *count as usize);
        here.max(remote)
    }

    /// With Redis: follows a presence topic here (its mirror loads, its channel is
    /// subscribed).
    pub fn mirror_topic(&mut self, topic: &str) {
        if let Some(cluster) = &mut self.cluster
            && cluster.mirror(topic)
            && let Some(bus) = &mut self.bus
        {
            bus.want_topic(topic);
        }
    }

    /// With Redis: stops following a presence topic here.
    pub fn unmirror_topic(&mut self, topic: &str) {
        if let Some(cluster) = &mut self.cluster {
            cluster.unmirror(topic);
            if let Some(bus) = &mut self.bus {
                bus.drop_topic(topic);
            }
        }
    }

    /// Queues a frame to every connection of one user in a topic.
    pub fn publish_to_user(&mut self, topic: &Topic, user: &UserId, frame: Frame, durable: bool) {
        let mut to = self.hub.user_conns(topic, user).to_vec();
        self.spare_ahead(&mut to);
        if !to.is_empty() {
            self.outbox.push(Out::Frame { to, frame, durable });
        }
    }
}
