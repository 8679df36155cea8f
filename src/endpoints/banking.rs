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
use crate::context::{Ctx, Frame, Refusal, Session, close_code, to_frame};
use crate::hub::{NotificationFeed, Topic};
use crate::model::{UserId, format_timestamp};
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
}

pub fn message_update_frame(message: &BankingMessage) -> Frame {
    to_frame(&MessageUpdate { r#type: "message_update", message: MessageObject::new(message) })
}

/// A banking message stored or updated reaches its user's banking-message sockets.
pub fn deliver_message(ctx: &mut Ctx, message: &BankingMessage) {
    ctx.publish(&Topic::BankingMessages(message.user_id.clone()), message_update_frame(message), None, true);
}

/// A fraud alert raised or resolved reaches its user's fraud-alert sockets.
pub fn deliver_fraud_alert(ctx: &mut Ctx, alert: &FraudAlert) {
    ctx.publish(&Topic::FraudAlerts(alert.user_id.clone()), fraud_alert_frame(alert), None, true);
}

fn fraud_alert_frame(alert: &FraudAlert) -> Frame {
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
    })
}

pub fn notification_update_frame(notification: &Notification) -> Frame {
    to_frame(&NotificationUpdate {
        r#type: "notification_update",
        notification: NotificationObject {
            id: notification.id,
            r#type: &notification.category,
            title: &notification.title,
            message: &notification.message,
            created_at: format_timestamp(notification.created_at),
        },
    })
}

/// The path's user id must be the token's.
fn check_owner(session: &Session, path_user: &str) -> Result<UserId, Refusal> {
    if path_user != session.identity.user_id.as_str() {
        return Err(Refusal::new(close_code::FORBIDDEN, "this is another user's stream"));
    }
    Ok(session.identity.user_id.clone())
}

pub fn open_messages(ctx: &mut Ctx, session: &mut Session, path_user: &str) -> Result<(), Refusal> {
    let user = check_owner(session, path_user)?;
    let pending = ctx.store.unread_banking_messages(&user, REPLAY_LIMIT).map_err(super::internal)?;
    subscribe(ctx, session, Topic::BankingMessages(user));
    for message in &pending {
        ctx.send(session.conn, message_update_frame(message));
    }
    Ok(())
}

pub fn open_fraud_alerts(ctx: &mut Ctx, session: &mut Session, path_user: &str) -> Result<(), Refusal> {
    let user = check_owner(session, path_user)?;
    let pending = ctx.store.unresolved_fraud_alerts(&user, REPLAY_LIMIT).map_err(super::internal)?;
    subscribe(ctx, session, Topic::FraudAlerts(user));
    for alert in &pending {
        ctx.send(session.conn, fraud_alert_frame(alert));
    }
    Ok(())
}

pub fn open_notifications(ctx: &mut Ctx, session: &mut Session, path_user: &str) -> Result<(), Refusal> {
    let user = check_owner(session, path_user)?;
    let pending = ctx.store.unread_notifications(&user, REPLAY_LIMIT).map_err(super::internal)?;
    subscribe(ctx, session, Topic::Notifications(user, NotificationFeed::Banking));
    for notification in &pending {
        ctx.send(session.conn, notification_update_frame(notification));
    }
    Ok(())
}

fn subscribe(ctx: &mut Ctx, session: &mut Session, topic: Topic) {
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
}

pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
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
            let user = session.identity.user_id.clone();
            match ctx.store.mark_banking_message_read(&user, id, ctx.now) {
                Ok(Some(message)) => {
                    ctx.publish(&Topic::BankingMessages(user.clone()), message_update_frame(&message), None, true);
                    // A parent shows its replies: it changed too.
                    if let Some(parent) = message.parent_id.and_then(|p| ctx.store.banking_message(p).ok().flatten()) {
                        ctx.publish(&Topic::BankingMessages(user), message_update_frame(&parent), None, true);
                    }
                }
                Ok(None) => ctx.send(session.conn, error_frame("No such message.")),
                Err(e) => {
                    log::error!("cannot mark a banking message read: {e}");
                    ctx.send(session.conn, error_frame("Could not mark the message as read."));
                }
            }
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}
