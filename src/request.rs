//! Storage as data, after a session has opened: a handler does not call the store, it
//! asks for a `Request`, a read or a write, and says with a continuation (`context::Then`)
//! what to render when the `Answer` comes. The engine (`engine.rs`) runs it: the local
//! engine on SQLite inline, in the same turn and transaction, so nothing waits; an engine
//! that answers later (PostgreSQL's lanes, design/cluster.md §5.6) on another thread,
//! which is why a request owns its data and is `Send`.
//!
//! A write is one domain operation (`features::run`), whole: what it checks, stores and
//! records as events. Its events are delivered, and its answer rendered, only once it
//! ran; frames reporting it still wait for the turn's commit.

use crate::hub::ConnId;
use crate::model::{Identity, Micros, Seq, StreamId, UserId};
use crate::store::{
    BankingMessage, Conversation, ConversationKind, ConversationSummary, Customer, FraudAlert, Notification,
    RecentConversation, StoreError, StoredMessage,
};

/// What a handler asks of the engine.
#[derive(Debug, Clone)]
pub enum Request {
    Read(Read),
    Write(Write),
}

/// A read: nothing is stored, nothing recorded.
#[derive(Debug, Clone)]
pub enum Read {
    /// Whether a user is known (has connected once): direct chat's other side.
    UserKnown(UserId),
    /// The user's support conversations with unread counts, and their stream's position.
    ConversationList(UserId),
    /// A member-only conversation by kind and key, with its members.
    Conversation { kind: ConversationKind, key: String },
    /// Conversations of every kind, newest activity first, at most `limit` (the console).
    Recent { limit: usize },
}

/// A write: one domain operation, with everything it needs (the server API's larger
/// ones boxed, so that a chat message's stays small).
#[derive(Debug, Clone)]
pub enum Write {
    /// A message in a conversation the sender's session is bound to.
    Post {
        kind: ConversationKind,
        conversation: i64,
        sender: Identity,
        content: String,
    },
    /// A message into a room by name, created if new (the server API).
    PostToRoom {
        room: String,
        sender: Identity,
        content: String,
    },
    /// An agent's reply in a support conversation: its customer messages become answered.
    PostAgentMessage {
        conversation: i64,
        agent: Identity,
        content: String,
    },
    /// A 1:1 message to a known user.
    SendDirect {
        sender: Identity,
        recipient: UserId,
        content: String,
    },
    /// A read receipt for one message of a conversation; `conn` (the reader's) does not
    /// hear of it.
    ReadOne {
        conversation: i64,
        message_id: i64,
        reader: Identity,
        conn: ConnId,
    },
    /// A user read a conversation up to its newest message.
    ReadAll {
        conversation: i64,
        user: UserId,
    },
    /// A user read their 1:1 conversation with a known `sender`.
    ReadDirect {
        reader: UserId,
        sender: UserId,
    },
    /// A user read one of their notifications.
    ReadNotification {
        user: UserId,
        id: i64,
    },
    /// A user read one of their banking messages.
    ReadBankingMessage {
        user: UserId,
        id: i64,
    },
    /// A consultation or support conversation with its members (the server API).
    CreateConversation(Box<NewMemberConversation>),
    /// Replaces a conversation's member set.
    SetMembers {
        kind: ConversationKind,
        key: String,
        members: Vec<UserId>,
    },
    /// A customer's message from an external platform, into their open support
    /// conversation (a given one, or one found or created).
    Inbound(Box<Inbound>),
    /// A notification for a user.
    Notify(Box<NewNotification>),
    RaiseFraudAlert {
        user: UserId,
        message: String,
        severity: String,
    },
    ResolveFraudAlert {
        id: i64,
    },
    /// A banking message, or a reply in a thread.
    PostBankingMessage(Box<NewBankingMessage>),
    /// The backend logs a user out: recorded on their stream, every session of theirs
    /// closes. `connections`, how many the user had (on every node, with Redis), comes back
    /// in the answer.
    Logout {
        user: UserId,
        connections: usize,
    },
    /// A user opened a first session: they are known, with their latest display name.
    SeeUser {
        user: UserId,
        name: String,
    },
    /// With webhooks: an event no request records (a user online or offline, a room
    /// joined or left).
    Hook(Box<crate::webhook::Hook>),
    /// With webhooks: the unread timers due now fire (`features::hooks::fire_timers`).
    FireHookTimers,
    /// With webhooks: the users reported online become these, each change reported
    /// (`features::hooks::report_online`).
    ReportOnline(Vec<(UserId, String)>),
    /// The backend names a user (the server API): shown when their token has no name.
    SetDisplayName {
        user: UserId,
        name: String,
    },
    /// A server API write sent with an `Idempotency-Key`: run once, its reply kept with
    /// it in the same transaction (`features::idempotent`).
    Idempotent(Box<Idempotent>),
}

/// The reply of a server API write, made from its answer: with an `Idempotency-Key`,
/// inside the transaction, so that it is kept with what the write stored.
pub type ReplyFn = fn(Answer) -> Result<(u16, serde_json::Value), crate::http::HttpError>;

/// A server API write and its key (`Write::Idempotent`).
#[derive(Debug, Clone)]
pub struct Idempotent {
    pub key: String,
    /// What identifies the request: a retry must be the same request (SHA-256 of the
    /// method, the path and the body, hex).
    pub fingerprint: String,
    pub write: Write,
    pub reply: ReplyFn,
}

impl Request {
    /// The streams this request will record on, as far as they are known without
    /// reading anything (a conversation by id, a user): the writer lane on PostgreSQL
    /// locks a batch's streams in one order before running it, so that two nodes'
    /// batches never wait for each other's streams crosswise (a deadlock).
    pub fn streams(&self) -> Vec<StreamId> {
        let Request::Write(write) = self else { return Vec::new() };
        let mut write: &Write = write;
        while let Write::Idempotent(idempotent) = write {
            write = &idempotent.write;
        }
        let user = |user: &UserId| vec![StreamId::User(user.clone())];
        match write {
            Write::Post { conversation, .. }
            | Write::PostAgentMessage { conversation, .. }
            | Write::ReadOne { conversation, .. }
            | Write::ReadAll { conversation, .. } => vec![StreamId::Conversation(*conversation)],
            Write::SendDirect { recipient, .. } => user(recipient),
            Write::ReadDirect { sender, .. } => user(sender),
            Write::ReadNotification { user: who, .. }
            | Write::ReadBankingMessage { user: who, .. }
            | Write::RaiseFraudAlert { user: who, .. }
            | Write::Logout { user: who, .. } => user(who),
            Write::Notify(new) => user(&new.user),
            _ => Vec::new(),
        }
    }

    /// The user whose stored message this is, for the rate limit across nodes: a
    /// client's chat message, direct message or agent reply.
    pub fn rate_user(&self) -> Option<&UserId> {
        match self {
            Request::Write(Write::Post { sender, .. } | Write::SendDirect { sender, .. }) => Some(&sender.user_id),
            Request::Write(Write::PostAgentMessage { agent, .. }) => Some(&agent.user_id),
            _ => None,
        }
    }
}

/// A customer as an external platform names them.
#[derive(Debug, Clone)]
pub struct CustomerFields {
    pub source: String,
    pub external_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub profile_picture: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewMemberConversation {
    pub kind: ConversationKind,
    pub key: String,
    pub title: Option<String>,
    pub status: String,
    pub priority: i64,
    pub customer: Option<CustomerFields>,
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone)]
pub struct Inbound {
    pub customer: CustomerFields,
    pub content: String,
    /// The support conversation to post in; else the customer's open one, or a new one.
    pub conversation: Option<String>,
    /// The key of a conversation created for it.
    pub new_key: String,
    /// Members of a conversation created for it.
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user: UserId,
    pub category: String,
    pub title: String,
    pub message: String,
    pub link: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewBankingMessage {
    pub user: UserId,
    pub subject: String,
    pub body: String,
    /// A message of the same user this one answers.
    pub parent: Option<i64>,
    /// The thread asked for; the parent's when there is one.
    pub thread: Option<String>,
    /// The thread of a message that starts one.
    pub new_thread: String,
}

/// A message as stored: what its poster needs to know of it (the message itself goes
/// into its event, uncopied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub id: i64,
    pub created_at: Micros,
    pub seq: Seq,
}

/// What a request came to.
pub type Answer = Result<Done, Failed>;

/// A request's result. Each request has its own variant (see `Request`'s variants).
#[derive(Debug)]
pub enum Done {
    /// Stored; what listeners must hear of went out as events.
    Stored,
    Posted(Posted),
    /// A message posted into a room by name.
    PostedToRoom {
        room: String,
        posted: Posted,
    },
    Message(StoredMessage),
    UserKnown(UserId),
    ConversationList {
        summaries: Vec<ConversationSummary>,
        position: Seq,
    },
    Conversation {
        conversation: Conversation,
        members: Vec<UserId>,
    },
    Recent(Vec<RecentConversation>),
    Inbound {
        conversation: String,
        created: bool,
        message: StoredMessage,
        customer: Customer,
    },
    /// A notification read: the user's unread count now.
    UnreadCount(i64),
    /// A server API reply, made where the write ran, or kept from its first run
    /// (`Write::Idempotent`).
    Replied {
        status: u16,
        body: serde_json::Value,
    },
    Notification(Notification),
    FraudAlert(FraudAlert),
    BankingMessage(BankingMessage),
    LoggedOut {
        user: UserId,
        connections: usize,
    },
    /// A user's display name as stored.
    User {
        user: UserId,
        name: String,
    },
}

/// Why a request did nothing (a write that fails stores nothing and records nothing).
#[derive(Debug)]
pub enum Failed {
    /// Nothing to post.
    Empty,
    /// The other user is not known.
    UnknownUser,
    /// No such message, notification or alert for this user.
    NotFound,
    NoConversation {
        kind: ConversationKind,
        key: String,
    },
    /// A conversation with that kind and key exists.
    Exists {
        kind: ConversationKind,
        key: String,
    },
    /// A domain rule refused it, in words for the caller.
    Refused(&'static str),
    /// Past the sender's rate limit over all nodes: not stored.
    RateLimited,
    /// Another request holds what this one needs (an `Idempotency-Key` of a request
    /// being committed); try again.
    Conflict(&'static str),
    Store(StoreError),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Empty => f.write_str("nothing to post"),
            Failed::UnknownUser => f.write_str("no such user"),
            Failed::NotFound => f.write_str("not found"),
            Failed::NoConversation { kind, key } => write!(f, "no {} conversation with id {key:?}", kind.as_sql()),
            Failed::Exists { kind, key } => write!(f, "a {} conversation with id {key:?} exists", kind.as_sql()),
            Failed::Refused(why) => f.write_str(why),
            Failed::RateLimited => f.write_str("rate limit exceeded"),
            Failed::Conflict(why) => f.write_str(why),
            Failed::Store(e) => write!(f, "{e}"),
        }
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

impl Done {
    /// An answer of another shape than its request's: a bug, reported as an internal error.
    pub fn unexpected(self, what: &str) -> Failed {
        log::error!("{what}: unexpected answer {self:?}");
        Failed::Store(StoreError::Unavailable("an unexpected answer".into()))
    }
}

/// Requests cross to an engine's threads.
const _: () = {
    const fn send<T: Send>() {}
    send::<Request>();
    send::<Answer>();
};
