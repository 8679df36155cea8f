//! The seed protocols: which path speaks which document, and the dispatch of a
//! session's events to the module of its document. Each module under here is the only
//! code that knows its document's JSON shapes and close codes.

pub mod banking;
pub mod consultation;
pub mod direct;
pub mod notifications;
pub mod presence;
pub mod rooms;
pub mod support;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, close_code, to_frame};
use crate::engine::{OpenError, OpenLoad, Opened, Replay, Snapshot, Start, Target};
use crate::hub::{NotificationFeed, Topic};
use crate::model::{Seq, StreamId};
use crate::request::{Answer, Failed};
pub use crate::route::{Endpoint, route};
use crate::store::{ConversationKind, StoreError};

/// What a session needs to open, if anything (storage as data: the engine reads it, now
/// or later, and `opened` renders it), resuming after `since` when given. Checks that
/// need no storage refuse here.
pub fn load(ctx: &Ctx, session: &mut Session, since: Option<Seq>) -> Result<Option<OpenLoad>, Refusal> {
    // A token without a name (SimpleJWT's default access token) names its user by their
    // id (`auth`), as does one whose name is the id itself: the name the backend set for
    // them, if any, is read with the rest and replaces it (`opened`).
    let nameless = *session.identity.name == *session.identity.user_id.as_str();
    Ok(endpoint_load(ctx, session, since)?.map(|load| OpenLoad { display_name: nameless, ..load }))
}

fn endpoint_load(ctx: &Ctx, session: &mut Session, since: Option<Seq>) -> Result<Option<OpenLoad>, Refusal> {
    let load = match session.endpoint.clone() {
        Endpoint::Rooms { room } => return rooms::load(ctx, session, &room, since).map(Some),
        Endpoint::Consultation { id } => consultation::load(ctx, session, &id),
        Endpoint::SupportChat { id } => support::load_chat(ctx, session, &id),
        Endpoint::ConversationList => support::load_list(session),
        Endpoint::DirectChat => direct::load(session),
        Endpoint::BankingMessages { user_id } => banking::load_messages(session, &user_id)?,
        Endpoint::FraudAlerts { user_id } => banking::load_fraud_alerts(session, &user_id)?,
        Endpoint::UserNotifications { user_id } => banking::load_notifications(session, &user_id)?,
        Endpoint::Notifications | Endpoint::V1Notifications => notifications::load(session),
        Endpoint::Presence => return Ok(None),
        #[cfg(feature = "echo")]
        Endpoint::Echo => return Ok(None),
    };
    Ok(Some(OpenLoad { since, ..load }))
}

/// Opens a session with what its load read (`None` for endpoints that need nothing):
/// subscriptions, its stream, its on-connect frames; or why it is refused.
pub fn opened(ctx: &mut Ctx, session: &mut Session, opened: Option<Result<Opened, OpenError>>) -> Result<(), Refusal> {
    let opened = match opened {
        None => {
            return match session.endpoint {
                Endpoint::Presence => presence::open(ctx, session),
                _ => Ok(()),
            };
        }
        Some(Err(e)) => return Err(refusal(e)),
        Some(Ok(opened)) => opened,
    };
    if let Some(name) = &opened.display_name {
        session.identity.name = name.as_str().into();
    }
    match session.endpoint.clone() {
        Endpoint::Rooms { room } => rooms::opened(ctx, session, &room, opened),
        Endpoint::Consultation { id } => consultation::opened(ctx, session, &id, opened),
        Endpoint::SupportChat { .. } => support::opened_chat(ctx, session, opened),
        Endpoint::ConversationList => support::opened_list(ctx, session, opened),
        Endpoint::DirectChat => direct::opened(ctx, session, opened),
        Endpoint::BankingMessages { .. } | Endpoint::FraudAlerts { .. } | Endpoint::UserNotifications { .. } => {
            banking::opened(ctx, session, opened)
        }
        Endpoint::Notifications | Endpoint::V1Notifications => notifications::opened(ctx, session, opened),
        Endpoint::Presence => presence::open(ctx, session),
        #[cfg(feature = "echo")]
        Endpoint::Echo => Ok(()),
    }
}

/// What opening a member-only conversation's chat needs: membership and its history.
pub fn member_history(ctx: &Ctx, session: &Session, kind: ConversationKind, key: &str) -> OpenLoad {
    OpenLoad {
        user: session.identity.user_id.clone(),
        target: Target::Member { kind, key: key.to_string() },
        since: None,
        replay: Replay::History { limit: ctx.config.history_limit },
        unread_count: false,
        display_name: false,
    }
}

/// Why an opening session is refused, as its close.
fn refusal(e: OpenError) -> Refusal {
    match e {
        OpenError::NotFound => Refusal::new(close_code::FORBIDDEN, "no such conversation"),
        OpenError::NotMember => Refusal::new(close_code::FORBIDDEN, "not a member of this conversation"),
        OpenError::Ahead { since, last } => Refusal::new(
            close_code::POLICY_VIOLATION,
            format!("since {since} is ahead of this stream (its last seq is {last})"),
        ),
        OpenError::Store(e) if e.is_unavailable() => {
            log::warn!("a session cannot open: {e}");
            Refusal::new(close_code::TRY_AGAIN_LATER, "storage unavailable, try again later")
        }
        OpenError::Store(e) => internal(e),
    }
}

pub fn on_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::on_text(ctx, session, text),
        Endpoint::Consultation { .. } => consultation::on_text(ctx, session, text),
        Endpoint::SupportChat { .. } => support::on_chat_text(ctx, session, text),
        Endpoint::ConversationList => support::on_list_text(ctx, session, text),
        Endpoint::DirectChat => direct::on_text(ctx, session, text),
        Endpoint::Presence | Endpoint::FraudAlerts { .. } => {}
        Endpoint::BankingMessages { .. } => banking::on_messages_text(ctx, session, text),
        Endpoint::UserNotifications { .. } | Endpoint::Notifications | Endpoint::V1Notifications => {
            notifications::on_text(ctx, session, text)
        }
        #[cfg(feature = "echo")]
        Endpoint::Echo => ctx.send(session.conn, Frame::from(text)),
    }
}

/// A binary frame: no seed protocol has any, so it gets the endpoint's error frame
/// (the echo endpoint sends it back).
pub fn on_binary(ctx: &mut Ctx, session: &mut Session, data: &tungstenite::Bytes) {
    match session.endpoint {
        #[cfg(feature = "echo")]
        Endpoint::Echo => ctx.send_binary(session.conn, data.clone()),
        Endpoint::Rooms { .. }
        | Endpoint::Consultation { .. }
        | Endpoint::SupportChat { .. }
        | Endpoint::ConversationList
        | Endpoint::DirectChat
        | Endpoint::Presence
        | Endpoint::BankingMessages { .. }
        | Endpoint::FraudAlerts { .. }
        | Endpoint::UserNotifications { .. }
        | Endpoint::Notifications
        | Endpoint::V1Notifications => {
            let _ = data;
            let frame = error_frame(&session.endpoint, "Binary frames are not supported; send JSON text.");
            ctx.send(session.conn, frame);
        }
    }
}

/// A session ended: its subscriptions go; rooms also tell the others who left.
pub fn close(ctx: &mut Ctx, session: &Session) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::close(ctx, session),
        Endpoint::Consultation { .. }
        | Endpoint::SupportChat { .. }
        | Endpoint::ConversationList
        | Endpoint::DirectChat
        | Endpoint::Presence
        | Endpoint::BankingMessages { .. }
        | Endpoint::FraudAlerts { .. }
        | Endpoint::UserNotifications { .. }
        | Endpoint::Notifications
        | Endpoint::V1Notifications => {
            ctx.leave_stream(session);
            for topic in &session.topics {
                ctx.hub.unsubscribe(topic, session.conn, &session.identity.user_id);
            }
        }
        #[cfg(feature = "echo")]
        Endpoint::Echo => {}
    }
}

/// Delivers a recorded event to this node's listeners: through its stream's sequencer
/// (in order, once), then rendered once per document and queued for the sockets of
/// each topic that shows it (durable: it reports stored data).
pub fn deliver(ctx: &mut Ctx, event: Event) {
    if let (EventBody::Logout, StreamId::User(_)) = (&event.body, &event.stream)
        && ctx.sequencer.position(&event.stream).is_none()
    {
        // Nobody here follows the user's stream, so nothing here can have seen it
        // already: every session of the user goes now (`deliver_in_order` does it for a
        // followed stream, once however often the event arrives).
        logout(ctx, &event);
    }
    for (_, event) in ctx.sequence(event) {
        deliver_in_order(ctx, &event);
    }
}

/// Every session of the user, whichever stream its endpoint follows, is logged out.
fn logout(ctx: &mut Ctx, event: &Event) {
    if let StreamId::User(user) = &event.stream {
        for conn in ctx.user_conns(user).to_vec() {
            ctx.logout_conn(conn);
        }
    }
}

/// An event the sequencer let through: rendered for the sockets that show it.
pub fn deliver_in_order(ctx: &mut Ctx, event: &Event) {
    ctx.delivering(Some(event));
    render_in_order(ctx, event);
    ctx.delivering(None);
}

fn render_in_order(ctx: &mut Ctx, event: &Event) {
    let user = match &event.stream {
        StreamId::User(user) => Some(user.clone()),
        StreamId::Conversation(_) => None,
    };
    match (&event.body, user) {
        (EventBody::Message { conversation: ConversationKind::Room, message, .. }, _) => {
            rooms::deliver_message(ctx, message)
        }
        (EventBody::Message { conversation: ConversationKind::Consultation, .. }, _)
        | (EventBody::ReadReceipt { .. }, _) => {
            if let (StreamId::Conversation(id), Some(frame)) = (&event.stream, consultation::render(event)) {
                ctx.publish(&Topic::Conversation(*id), frame, event.except, true);
            }
        }
        (EventBody::Message { conversation: ConversationKind::Support | ConversationKind::Direct, .. }, _)
        | (EventBody::MessagesRead { .. }, _) => {
            if let (StreamId::Conversation(id), Some(frame)) = (&event.stream, support::render_chat(event)) {
                ctx.publish(&Topic::Conversation(*id), frame, event.except, true);
            }
        }
        (EventBody::DirectMessage { .. } | EventBody::DirectRead { .. }, Some(user)) => {
            if let Some(frame) = direct::render(event) {
                ctx.publish_to_user(&Topic::DirectInbox(user.clone()), &user, frame, true);
            }
        }
        (EventBody::CustomerMessage { .. }, Some(user)) => {
            if let Some(frame) = support::render_list(event) {
                ctx.publish_to_user(&Topic::ConversationList(user.clone()), &user, frame, true);
            }
        }
        (EventBody::Notification { .. }, Some(_)) => notifications::deliver(ctx, event),
        (EventBody::FraudAlert { .. }, Some(user)) => {
            if let Some(frame) = banking::render_fraud_alert(event) {
                ctx.publish(&Topic::FraudAlerts(user), frame, None, true);
            }
        }
        (EventBody::BankingMessage { .. }, Some(user)) => {
            if let Some(frame) = banking::render_message(event) {
                ctx.publish(&Topic::BankingMessages(user), frame, None, true);
            }
        }
        (EventBody::MembersChanged { removed, .. }, _) => {
            if let StreamId::Conversation(id) = &event.stream {
                let topic = Topic::Conversation(*id);
                for user in removed {
                    for conn in ctx.hub.user_conns(&topic, user).to_vec() {
                        ctx.close_conn(conn, close_code::FORBIDDEN, "removed from the conversation");
                    }
                }
            }
        }
        // Acted on before sequencing (`deliver`): nothing to render.
        (EventBody::Logout, _) => logout(ctx, event),
        (_, None) => log::error!("event {}#{} is on a conversation stream by mistake", event.stream.key(), event.seq),
    }
}

/// A stored event as an endpoint's document shows it, if it shows it at all (what a
/// client resuming with `since` gets).
pub fn render(endpoint: &Endpoint, event: &Event) -> Option<Frame> {
    match endpoint {
        Endpoint::Rooms { .. } => rooms::render(event),
        Endpoint::Consultation { .. } => consultation::render(event),
        Endpoint::SupportChat { .. } => support::render_chat(event),
        Endpoint::ConversationList => support::render_list(event),
        Endpoint::DirectChat => direct::render(event),
        Endpoint::BankingMessages { .. } => banking::render_message(event),
        Endpoint::FraudAlerts { .. } => banking::render_fraud_alert(event),
        Endpoint::UserNotifications { .. } => notifications::render(NotificationFeed::Banking, event),
        Endpoint::Notifications => notifications::render(NotificationFeed::App, event),
        Endpoint::V1Notifications => notifications::render(NotificationFeed::V1, event),
        Endpoint::Presence => None,
        #[cfg(feature = "echo")]
        Endpoint::Echo => None,
    }
}

#[derive(Serialize)]
struct RecoveryNotPossible {
    r#type: &'static str,
    since: Seq,
    seq: Seq,
    message: &'static str,
}

/// The frames a session starts with: the usual opening replay (`replay` renders it);
/// or every event after its `since`, in its document; or, when they are no longer kept,
/// a `recovery_not_possible` frame and then the usual replay.
pub fn start_frames(
    session: &Session,
    start: Start,
    position: Seq,
    replay: impl FnOnce(Snapshot) -> Vec<Frame>,
) -> Vec<Frame> {
    match start {
        Start::Replay(snapshot) => replay(snapshot),
        Start::Recovered(events) => events.iter().filter_map(|event| render(&session.endpoint, event)).collect(),
        Start::NotPossible { since, snapshot } => {
            let mut frames = vec![to_frame(&RecoveryNotPossible {
                r#type: "recovery_not_possible",
                since,
                seq: position,
                message: "The events after this position are no longer kept; here is the current state.",
            })];
            frames.extend(replay(snapshot));
            frames
        }
    }
}

/// The endpoint's error frame for a message it cannot act on.
/// The session joins its stream at `position` (`Ctx::join_stream`); what its stream's
/// listeners here had already received after that position comes back rendered, for
/// this session alone, to send after its opening frames.
pub fn join(ctx: &mut Ctx, session: &Session, stream: StreamId, position: Seq) -> Vec<Frame> {
    let own = ctx.join_stream(session.conn, stream, position);
    own.iter().filter_map(|event| render(&session.endpoint, event)).collect()
}

/// A message posted from a session reaches its listeners, the sender included, as its
/// event; only a failure is told to the sender, in its endpoint's error frame.
pub fn posted(ctx: &mut Ctx, session: &Session, answer: Answer) {
    let words = match answer {
        Ok(_) => return,
        Err(Failed::RateLimited) => return rate_limited(ctx, session),
        Err(Failed::Empty) => "Message is empty.",
        Err(Failed::UnknownUser) => "User not found.",
        Err(e) => {
            log::error!("cannot store a message from {}: {e}", session.endpoint.name());
            "Message could not be stored."
        }
    };
    ctx.send(session.conn, error_frame(&session.endpoint, words));
}

/// With Redis: a presence topic's view may have changed for `user` (a change heard from
/// another node, a reload): the endpoint that shows the topic tells its clients.
pub fn refresh_presence(ctx: &mut Ctx, topic: &str, user: &crate::model::UserId) {
    match crate::cluster::room_of(topic) {
        Some(room) => rooms::refresh(ctx, room, user, None),
        None => presence::refresh(ctx, user, None),
    }
}

/// A client's message past its user's rate limit: dropped, and the client told so.
pub fn rate_limited(ctx: &mut Ctx, session: &Session) {
    ctx.metrics.rate_limited += 1;
    let limit = ctx.config.limits.rate_limit_per_minute;
    let message = format!("Rate limit exceeded: at most {limit} messages per minute; message dropped.");
    ctx.send(session.conn, error_frame(&session.endpoint, &message));
}

pub fn error_frame(endpoint: &Endpoint, message: &str) -> Frame {
    error_renderer(endpoint)(message)
}

/// The function that renders an endpoint's error frame, kept where rendering is needed
/// only if something fails later (see `App::end_turn`).
pub fn error_renderer(endpoint: &Endpoint) -> crate::context::ErrorRenderer {
    match endpoint {
        Endpoint::Rooms { .. } | Endpoint::SupportChat { .. } | Endpoint::ConversationList | Endpoint::Presence => {
            rooms::error_frame
        }
        Endpoint::Consultation { .. } => consultation::error_frame,
        Endpoint::DirectChat => direct::error_frame,
        Endpoint::BankingMessages { .. }
        | Endpoint::FraudAlerts { .. }
        | Endpoint::UserNotifications { .. }
        | Endpoint::Notifications
        | Endpoint::V1Notifications => notifications::error_frame,
        #[cfg(feature = "echo")]
        Endpoint::Echo => |message| Frame::from(message),
    }
}

#[derive(Serialize)]
struct BareError<'a> {
    error: &'a str,
}

#[derive(Serialize)]
struct TypedError<'a> {
    r#type: &'static str,
    message: &'a str,
}

/// `{"error": "..."}`: the error frame of documents 004 and 002.
pub fn bare_error(message: &str) -> Frame {
    to_frame(&BareError { error: message })
}

/// `{"type": "error", "message": "..."}`: document 003's error frame, also used where a
/// document shows none (001, 000).
pub fn typed_error(message: &str) -> Frame {
    to_frame(&TypedError { r#type: "error", message })
}

/// What `parse_object` says about text that is not JSON at all.
pub const NOT_JSON: &str = "Invalid JSON.";

/// Parses a client frame that must be a JSON object; the error is a message for the
/// endpoint's error frame.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, &'static str> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("Expected a JSON object."),
        Err(_) => Err(NOT_JSON),
    }
}

/// Reads an id a client sent as a JSON integer or a numeric string (documents show both).
pub fn numeric_id(value: Option<&Value>) -> Option<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A store failure while opening a session: logged, and the session closes with 1011.
pub fn internal(e: StoreError) -> Refusal {
    log::error!("store error: {e}");
    Refusal::new(close_code::INTERNAL_ERROR, "internal error")
}
