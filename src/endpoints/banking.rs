//! Document 000, the banking backend: `/ws/messages/{user_id}/` (threaded messages,
//! `mark_read`), `/ws/fraud-alerts/{user_id}/` and `/ws/notifications/{user_id}/`.
//!
//! The path's user id must be the token's (else 4003). Everything here is created by the
//! server API and pushed; on connect each endpoint first replays what is still pending:
//! unread messages, unresolved alerts, unread notifications, oldest first. Ids are JSON
//! numbers (user ids when they are integers), as in the document. Errors are
//! `{"type": "error", "message": ...}`.

use serde::Serialize;
use serde_json::Value;

use super::{numeric_id, parse_object};
use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, close_code, to_frame};
use crate::engine::{OpenLoad, Opened, Replay, Snapshot, Target};
use crate::hub::{NotificationFeed, Topic};
use crate::model::{Seq, UserId, format_timestamp};
use crate::request::{Answer, Failed, Request, Write};
use crate::route::Endpoint;
use crate::store::{BankingMessage, FraudAlert, Notification};

/// Pending items replayed on connect, at most.
pub const REPLAY_LIMIT: usize = 100;

#[derive(Serialize)]
pub struct MessageObject<'a> {
    id: i64,
    user: &'a UserId,
    subject: &'a str,
    body: &'a str,
    is_read: bool,
    read_at: Option<String>,
    thread_id: &'a str,
    parent_message: Option<i64>,
    replies: Vec<MessageObject<'a>>,
    created_at: String,
}

impl<'a> MessageObject<'a> {
    pub fn new(message: &'a BankingMessage) -> MessageObject<'a> {
        MessageObject {
            id: message.id,
            user: &message.user_id,
            subject: &message.subject,
            body: &message.body,
            is_read: message.is_read,
            read_at: message.read_at.map(format_timestamp),
            thread_id: &message.thread_id,
            parent_message: message.parent_id,
            replies: message.replies.iter().map(MessageObject::new).collect(),
            created_at: format_timestamp(message.created_at),
        }
    }
}

#[derive(Serialize)]
struct MessageUpdate<'a> {
    r#type: &'static str,
    message: MessageObject<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct AlertObject<'a> {
    id: i64,
    user: &'a UserId,
    message: &'a str,
    severity: &'a str,
    is_resolved: bool,
    resolved_at: Option<String>,
    created_at: String,
}

#[derive(Serialize)]
struct FraudAlertUpdate<'a> {
    r#type: &'static str,
    alert: AlertObject<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct NotificationObject<'a> {
    id: i64,
    r#type: &'a str,
    title: &'a str,
    message: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct NotificationUpdate<'a> {
    r#type: &'static str,
    notification: NotificationObject<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

pub fn message_update_frame(message: &BankingMessage, seq: Option<Seq>) -> Frame {
    to_frame(&MessageUpdate { r#type: "message_update", message: MessageObject::new(message), seq })
}

/// A stored event of the user's stream as `/ws/messages/{user_id}/` shows it.
pub fn render_message(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::BankingMessage { message } => Some(message_update_frame(message, Some(event.seq))),
        _ => None,
    }
}

/// A stored event of the user's stream as `/ws/fraud-alerts/{user_id}/` shows it.
pub fn render_fraud_alert(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::FraudAlert { alert } => Some(fraud_alert_frame(alert, Some(event.seq))),
        _ => None,
    }
}

fn fraud_alert_frame(alert: &FraudAlert, seq: Option<Seq>) -> Frame {
    to_frame(&FraudAlertUpdate {
        r#type: "fraud_alert_update",
        alert: AlertObject {
            id: alert.id,
            user: &alert.user_id,
            message: &alert.message,
            severity: &alert.severity,
            is_resolved: alert.is_resolved,
            resolved_at: alert.resolved_at.map(format_timestamp),
            created_at: format_timestamp(alert.created_at),
        },
        seq,
    })
}

pub fn notification_update_frame(notification: &Notification, seq: Option<Seq>) -> Frame {
    to_frame(&NotificationUpdate {
        r#type: "notification_update",
        notification: NotificationObject {
            id: notification.id,
            r#type: &notification.category,
            title: &notification.title,
            message: &notification.message,
            created_at: format_timestamp(notification.created_at),
        },
        seq,
    })
}

/// The path's user id must be the token's.
fn check_owner(session: &Session, path_user: &str) -> Result<UserId, Refusal> {
    if path_user != session.identity.user_id.as_str() {
        return Err(Refusal::new(close_code::FORBIDDEN, "this is another user's stream"));
    }
    Ok(session.identity.user_id.clone())
}

/// What opening one of this document's endpoints needs: the path's user must be the
/// token's; then the pending items of the user's stream.
pub fn load(session: &Session, path_user: &str, replay: Replay) -> Result<OpenLoad, Refusal> {
    let user = check_owner(session, path_user)?;
    Ok(OpenLoad { user, target: Target::User, since: None, replay, unread_count: false, display_name: false })
}

pub fn load_messages(session: &Session, path_user: &str) -> Result<OpenLoad, Refusal> {
    load(session, path_user, Replay::BankingMessages { limit: REPLAY_LIMIT })
}

pub fn load_fraud_alerts(session: &Session, path_user: &str) -> Result<OpenLoad, Refusal> {
    load(session, path_user, Replay::FraudAlerts { limit: REPLAY_LIMIT })
}

pub fn load_notifications(session: &Session, path_user: &str) -> Result<OpenLoad, Refusal> {
    load(session, path_user, Replay::Notifications { limit: REPLAY_LIMIT })
}

/// On connect: what is still pending, oldest first (or what was missed).
pub fn opened(ctx: &mut Ctx, session: &mut Session, opened: Opened) -> Result<(), Refusal> {
    let user = session.identity.user_id.clone();
    let topic = match session.endpoint {
        Endpoint::BankingMessages { .. } => Topic::BankingMessages(user),
        Endpoint::FraudAlerts { .. } => Topic::FraudAlerts(user),
        _ => Topic::Notifications(user, NotificationFeed::Banking),
    };
    let mut frames = super::start_frames(session, opened.start, opened.position, |snapshot| match snapshot {
        Snapshot::BankingMessages(pending) => pending.iter().map(|m| message_update_frame(m, None)).collect(),
        Snapshot::FraudAlerts(pending) => pending.iter().map(|a| fraud_alert_frame(a, None)).collect(),
        Snapshot::Notifications(pending) => pending.iter().map(|n| notification_update_frame(n, None)).collect(),
        _ => Vec::new(),
    });
    frames.extend(super::join(ctx, session, opened.stream, opened.position));
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    ctx.send_all(session.conn, frames);
    Ok(())
}

pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
}

/// A banking message read reaches the user's sessions as its event.
fn marked_read(ctx: &mut Ctx, session: &Session, answer: Answer) {
    let words = match answer {
        Ok(_) => return,
        Err(Failed::NotFound) => "No such message.",
        Err(e) => {
            log::error!("cannot mark a banking message read: {e}");
            "Could not mark the message as read."
        }
    };
    ctx.send(session.conn, error_frame(words));
}

/// `/ws/messages/{user_id}/`: `{"type": "mark_read", "message_id": 123}`.
pub fn on_messages_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let object = match parse_object(text) {
        Ok(object) => object,
        Err(message) => return ctx.send(session.conn, error_frame(message)),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("mark_read") => {
            let Some(id) = numeric_id(object.get("message_id")) else {
                return ctx.send(session.conn, error_frame("\"message_id\" must be a message id."));
            };
            let read = Write::ReadBankingMessage { user: session.identity.user_id.clone(), id };
            ctx.ask(Then::Session { conn: session.conn, render: marked_read }, Request::Write(read));
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}
