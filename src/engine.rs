//! Storage as data, for opening a session: an endpoint says what it needs to open (an
//! `OpenLoad`), an engine answers with what it read (`Opened`) and the endpoint renders
//! its on-connect frames from that (`endpoints::opened`). Between the two the session is
//! *opening*: its client frames wait, bounded (`Session::opening`).
//!
//! The local engine (the default, and today the only one) answers inline from SQLite,
//! in the same turn and transaction as the rest of the turn, so an opening session is
//! answered before `App::open` returns and nothing waits. An engine that answers later
//! (PostgreSQL through reader lanes, design/cluster.md §5.6) keeps the same shape:
//! `App::finish_opens` gives each answer to its session when it comes. The tests use
//! `Engine::Deferred`, the local engine answering one turn later, to exercise that path.

use crate::event::{Event, EventBody};
use crate::hub::ConnId;
use crate::model::{Micros, Seq, StreamId, UserId};
use crate::store::{
    BankingMessage, Conversation, ConversationKind, ConversationSummary, FraudAlert, Missed, Notification, Since,
    Store, StoreError, StoredMessage,
};

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

/// The engine behind the loop.
pub enum Engine {
    /// SQLite, inline: answers before `open` returns.
    Local,
    /// SQLite, answered at the start of the next turn: the shape of an engine that
    /// answers later. For tests.
    Deferred { waiting: Vec<(ConnId, OpenLoad)> },
}

impl Engine {
    /// Asks for what `conn`'s session needs to open. The answer is returned now by an
    /// inline engine, and otherwise comes from `ready` in a later turn.
    pub fn open(
        &mut self,
        store: &mut Store,
        conn: ConnId,
        load: OpenLoad,
        now: Micros,
    ) -> Option<Result<Opened, OpenError>> {
        match self {
            Engine::Local => Some(open(store, &load, now)),
            Engine::Deferred { waiting } => {
                waiting.push((conn, load));
                None
            }
        }
    }

    /// Answers that came since the last call (at the start of a turn).
    pub fn ready(&mut self, store: &mut Store, now: Micros) -> Vec<(ConnId, Result<Opened, OpenError>)> {
        match self {
            Engine::Local => Vec::new(),
            Engine::Deferred { waiting } => {
                std::mem::take(waiting).into_iter().map(|(conn, load)| (conn, open(store, &load, now))).collect()
            }
        }
    }
}

/// The local engine's read for an opening session, in the turn's transaction.
pub fn open(store: &mut Store, load: &OpenLoad, now: Micros) -> Result<Opened, OpenError> {
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
    Ok(Opened { stream, position, conversation, start, unread_count })
}

fn snapshot(store: &mut Store, load: &OpenLoad, stream: &StreamId) -> Result<Snapshot, StoreError> {
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
fn recovered(stream: &StreamId, missed: Vec<Missed>, conversation: Option<&Conversation>) -> Vec<Event> {
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
