//! The context every handler works in: what a turn has (the store, the hub, who is
//! online, the metrics, the time of the turn) and what it may do (queue frames, closes
//! and API answers in the outbox). Endpoints and the server API import this and nothing
//! of the dispatcher (`app.rs`), so the dependencies run one way:
//! `server -> app -> {endpoints, api} -> context -> {store, hub, ...}`.
//!
//! Nothing here touches a socket: the outbox is applied by the server only after
//! `App::end_turn` has committed the turn's writes.

use std::collections::HashMap;

use serde::Serialize;
use tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::hub::{ConnId, Hub, Topic};
use crate::metrics::Metrics;
use crate::model::{Identity, Micros, UserId};
use crate::recent::Recent;
use crate::route::Endpoint;
use crate::store::{BankingMessage, Conversation, Customer, FraudAlert, Notification, Store, StoredMessage};

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

/// Something stored that its listeners must hear of, in the domain's terms. Features
/// and handlers emit events; the endpoints render each into the documents of those
/// who listen (`endpoints::deliver`), once per document, as soon as the handler that
/// emitted it returns, so a failed API request's events go with its other pushes.
#[derive(Debug)]
pub enum Event {
    /// A message stored in a room.
    RoomMessage { conversation: i64, message: StoredMessage },
    /// A customer's message from an external platform, in a support conversation.
    CustomerMessage(Box<InboundMessage>),
    /// A notification for a user.
    Notification(Notification),
    /// A fraud alert raised or resolved.
    FraudAlert(FraudAlert),
    /// A banking message stored or updated (a reply makes its parent's reply count move).
    BankingMessage(BankingMessage),
}

/// A customer's message with the conversation it landed in and the customer.
#[derive(Debug)]
pub struct InboundMessage {
    pub conversation: Conversation,
    pub customer: Customer,
    pub message: StoredMessage,
}

/// The state handlers read and the outbox they write to, for one turn at a time.
pub struct Ctx {
    pub config: Config,
    /// The server API's key (configured or kept in the database).
    pub api_key: String,
    pub store: Store,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Users with open sessions: their display name and connections (per-user cap,
    /// presence, the server API's online list).
    pub(crate) online: HashMap<UserId, OnlineUser>,
    pub(crate) outbox: Vec<Out>,
    /// Emitted and not yet delivered (see `Event`).
    events: Vec<Event>,
    /// Rendered recent history of active rooms (see `recent.rs`).
    pub recent: Recent,
    /// The time of the current turn, set by `App::begin_turn`.
    pub now: Micros,
}

impl Ctx {
    pub fn new(config: Config, api_key: String, store: Store) -> Ctx {
        Ctx {
            config,
            api_key,
            store,
            hub: Hub::default(),
            metrics: Metrics::default(),
            online: HashMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            recent: Recent::default(),
            now: crate::model::now_micros(),
        }
    }

    /// Records that something stored must reach its listeners.
    pub fn emit(&mut self, event: Event) {
        self.events.push(event);
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
