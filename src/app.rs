//! The application behind the event loop: sessions open, frames arrive, sessions close,
//! server API requests come in, and each turn ends with a commit. It decides what to
//! store and whom to tell, and hands the server an outbox of frames to write.
//!
//! The server owns sockets; the app owns the store, the hub and who is online. The app
//! never touches a socket: everything it wants sent goes into the outbox, which the
//! server applies only after `end_turn` has committed the turn's writes. That is how
//! "nothing is sent before it is stored" holds for every endpoint at once.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use tungstenite::Utf8Bytes;

use crate::auth::Verifier;
use crate::config::Config;
use crate::endpoints::{self, Endpoint};
use crate::http::Request;
use crate::hub::{ConnId, Hub, Topic};
use crate::metrics::Metrics;
use crate::model::{Identity, Micros, UserId, now_micros};
use crate::store::Store;

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
    /// A binary frame to one connection (only the echo endpoint sends any).
    Binary { to: ConnId, data: tungstenite::Bytes },
    /// Close one connection with a close code.
    Close { to: ConnId, code: u16, reason: String },
    /// Close one connection with its endpoint's authentication close code (a logout).
    Logout { to: ConnId },
    /// Answer a server API request; `durable` answers become 500 if the commit fails.
    Http { to: ConnId, response: Vec<u8>, durable: bool },
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
    /// Seed documents: a valid token on someone else's resource.
    pub const FORBIDDEN: u16 = 4003;
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
}

/// A user with at least one open session.
pub struct OnlineUser {
    pub name: std::rc::Rc<str>,
    pub conns: Vec<ConnId>,
}

/// A per-user token bucket for the messages-per-minute limit.
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct App {
    pub config: Config,
    pub verifier: Verifier,
    pub api_key: String,
    pub store: Store,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Users with open sessions: their display name and connections (per-user cap,
    /// presence, the server API's online list).
    online: HashMap<UserId, OnlineUser>,
    buckets: HashMap<UserId, Bucket>,
    outbox: Vec<Out>,
    /// Connections whose frames this turn wrote to the store, with their endpoint's
    /// error frame: if the commit fails, each is told its message was not stored.
    writers: Vec<(ConnId, ErrorRenderer)>,
    /// The time of the current turn, set by `begin_turn`.
    pub now: Micros,
}

impl App {
    pub fn new(config: Config, verifier: Verifier, api_key: String, store: Store) -> App {
        App {
            config,
            verifier,
            api_key,
            store,
            hub: Hub::default(),
            metrics: Metrics::default(),
            online: HashMap::new(),
            buckets: HashMap::new(),
            outbox: Vec::new(),
            writers: Vec::new(),
            now: now_micros(),
        }
    }

    pub fn begin_turn(&mut self) {
        self.now = now_micros();
    }

    /// Opens a session on an upgraded, authenticated connection, or says why not.
    pub fn open(&mut self, conn: ConnId, endpoint: Endpoint, identity: Identity) -> Result<Session, Refusal> {
        let user_conns = self.online.get(&identity.user_id).map_or(0, |u| u.conns.len());
        if user_conns >= self.config.limits.max_connections_per_user {
            return Err(Refusal::new(close_code::TRY_AGAIN_LATER, "too many connections for this user"));
        }
        if user_conns == 0
            && let Err(e) = self.store.upsert_user(&identity.user_id, &identity.name, self.now)
        {
            log::error!("cannot record user: {e}");
            return Err(Refusal::new(close_code::INTERNAL_ERROR, "internal error"));
        }
        let mut session = Session { conn, identity, endpoint, topics: Vec::with_capacity(1), conversation: None };
        endpoints::open(self, &mut session)?;
        let identity = &session.identity;
        let user = self
            .online
            .entry(identity.user_id.clone())
            .or_insert_with(|| OnlineUser { name: identity.name.clone(), conns: Vec::with_capacity(1) });
        user.name = identity.name.clone();
        user.conns.push(conn);
        if user_conns == 0 {
            endpoints::presence::user_online(self, &session.identity, Some(conn));
        }
        self.metrics.connection_opened(session.endpoint.name());
        Ok(session)
    }

    /// A text frame from a client.
    pub fn on_text(&mut self, session: &mut Session, text: &str) {
        self.metrics.frames_in += 1;
        self.metrics.bytes_in += text.len() as u64;
        if !self.take_rate_token(&session.identity.user_id) {
            self.metrics.rate_limited += 1;
            let limit = self.config.limits.rate_limit_per_minute;
            let message = format!("Rate limit exceeded: at most {limit} messages per minute; message dropped.");
            self.send(session.conn, endpoints::error_frame(&session.endpoint, &message));
            return;
        }
        let writes = self.store.writes_this_turn();
        endpoints::on_text(self, session, text);
        if self.store.writes_this_turn() != writes {
            self.writers.push((session.conn, endpoints::error_renderer(&session.endpoint)));
        }
    }

    /// A binary frame from a client.
    pub fn on_binary(&mut self, session: &mut Session, data: &tungstenite::Bytes) {
        self.metrics.frames_in += 1;
        self.metrics.bytes_in += data.len() as u64;
        endpoints::on_binary(self, session, data);
    }

    /// A session ended, for whatever reason. Its subscriptions go, and whoever should
    /// hear of it does.
    pub fn close(&mut self, session: Session) {
        endpoints::close(self, &session);
        let user = &session.identity.user_id;
        if let Some(online) = self.online.get_mut(user) {
            online.conns.retain(|c| *c != session.conn);
            if online.conns.is_empty() {
                self.online.remove(user);
                endpoints::presence::user_offline(self, user);
            }
        }
        self.metrics.connection_closed(session.endpoint.name());
    }

    /// A complete request on the server API listener. A request that changes something
    /// runs in a savepoint: if it fails half way, its writes and its pushes are undone
    /// and the rest of the turn is untouched.
    pub fn on_api(&mut self, conn: ConnId, request: Request) {
        self.metrics.api_requests += 1;
        let writes = request.method != "GET";
        let pushes = self.outbox.len();
        if writes && let Err(e) = self.store.begin_unit() {
            log::error!("server API: {e}");
            let response = crate::api::unavailable().to_response();
            return self.outbox.push(Out::Http { to: conn, response, durable: false });
        }
        let (response, ok, durable) = crate::api::handle(self, &request);
        if writes && !(ok && self.store.keep_unit().is_ok()) {
            self.store.undo_unit();
            self.outbox.truncate(pushes);
        }
        self.outbox.push(Out::Http { to: conn, response, durable });
    }

    /// Commits the turn's writes and returns what to send. When the commit fails, frames
    /// that report stored data are dropped, API answers become 503s, and every client
    /// whose message was not stored gets its endpoint's error frame.
    pub fn end_turn(&mut self) -> Vec<Out> {
        let mut outbox = std::mem::take(&mut self.outbox);
        let writers = std::mem::take(&mut self.writers);
        match self.store.commit() {
            Ok(0) => {}
            Ok(writes) => self.metrics.committed(writes),
            Err(e) => {
                log::error!("commit failed, the turn's writes are rolled back: {e}");
                self.metrics.commit_failures += 1;
                outbox.retain(|out| !matches!(out, Out::Frame { durable: true, .. }));
                for out in &mut outbox {
                    if let Out::Http { response, durable: true, .. } = out {
                        *response = crate::api::unavailable().to_response();
                    }
                }
                for (to, render) in writers {
                    let frame = render("Message could not be stored; please try again.");
                    outbox.push(Out::Frame { to: vec![to], frame, durable: false });
                }
            }
        }
        outbox
    }

    /// After the turn's output has been handed to the sockets: housekeeping that may take
    /// a moment (see `Store::finish_checkpoint`).
    pub fn after_turn(&mut self) {
        self.store.finish_checkpoint();
    }

    /// Forgets rate-limit buckets that have refilled, so the map does not grow with
    /// every user ever seen. Called from the server's periodic sweep.
    pub fn sweep(&mut self) {
        self.store.sweep();
        let capacity = f64::from(self.config.limits.rate_limit_per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        self.buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity);
    }

    fn take_rate_token(&mut self, user: &UserId) -> bool {
        let capacity = f64::from(self.config.limits.rate_limit_per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let bucket = self.buckets.entry(user.clone()).or_insert(Bucket { tokens: capacity, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Queues a frame to one connection; it does not depend on the commit.
    pub fn send(&mut self, to: ConnId, frame: Frame) {
        self.outbox.push(Out::Frame { to: vec![to], frame, durable: false });
    }

    /// Queues a binary frame to one connection.
    pub fn send_binary(&mut self, to: ConnId, data: tungstenite::Bytes) {
        self.outbox.push(Out::Binary { to, data });
    }

    /// Queues a frame to every connection of a topic, optionally but one.
    pub fn publish(&mut self, topic: &Topic, frame: Frame, except: Option<ConnId>, durable: bool) {
        let to: Vec<ConnId> = self.hub.conns(topic).iter().copied().filter(|c| Some(*c) != except).collect();
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

    /// Users online now, ordered by id.
    pub fn online_users(&self) -> Vec<(&UserId, &OnlineUser)> {
        let mut users: Vec<_> = self.online.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        users
    }

    /// Queues a frame to every connection of one user in a topic.
    pub fn publish_to_user(&mut self, topic: &Topic, user: &UserId, frame: Frame, durable: bool) {
        let to = self.hub.user_conns(topic, user).to_vec();
        if !to.is_empty() {
            self.outbox.push(Out::Frame { to, frame, durable });
        }
    }
}
