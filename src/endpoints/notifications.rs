//! Notifications on three endpoints, each in its document's shape, from one stored row:
//! `/ws/notifications/{user_id}/` (000, `notification_update`, in `banking.rs`),
//! `/ws/notifications/` (001: `connection_established`, `notification{data}`,
//! `unread_count`, `mark_read{notification_id}`) and `/ws/v1/notifications/` (003: flat
//! `notification`, `unread_count`; a refused token closes with 4003).
//!
//! On connect the 001 and 003 endpoints replay the user's unread notifications (oldest
//! first) and then the unread count. Marking one read on any endpoint sends the new
//! count to every 001 and 003 socket of the user. Errors are
//! `{"type": "error", "message": ...}`.

use serde::Serialize;
use serde_json::Value;

use super::banking::{self, REPLAY_LIMIT};
use super::{Endpoint, numeric_id, parse_object};
use crate::context::{Ctx, Frame, Refusal, Session, to_frame};
use crate::hub::{NotificationFeed, Topic};
use crate::model::{UserId, format_timestamp};
use crate::store::Notification;

#[derive(Serialize)]
struct ConnectionEstablished {
    r#type: &'static str,
    message: &'static str,
}

#[derive(Serialize)]
struct AppNotification<'a> {
    r#type: &'static str,
    data: AppNotificationData<'a>,
}

#[derive(Serialize)]
struct AppNotificationData<'a> {
    id: String,
    title: &'a str,
    message: &'a str,
    notification_type: &'a str,
    is_read: bool,
    created_at: String,
}

#[derive(Serialize)]
struct V1Notification<'a> {
    r#type: &'static str,
    id: i64,
    title: &'a str,
    message: &'a str,
    category: &'a str,
    link: Option<&'a str>,
    timestamp: String,
    is_read: bool,
}

#[derive(Serialize)]
struct UnreadCount {
    r#type: &'static str,
    count: i64,
}

pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
}

fn app_frame(n: &Notification) -> Frame {
    to_frame(&AppNotification {
        r#type: "notification",
        data: AppNotificationData {
            id: n.id.to_string(),
            title: &n.title,
            message: &n.message,
            notification_type: &n.category,
            is_read: n.is_read,
            created_at: format_timestamp(n.created_at),
        },
    })
}

fn v1_frame(n: &Notification) -> Frame {
    to_frame(&V1Notification {
        r#type: "notification",
        id: n.id,
        title: &n.title,
        message: &n.message,
        category: &n.category,
        link: n.link.as_deref(),
        timestamp: format_timestamp(n.created_at),
        is_read: n.is_read,
    })
}

fn count_frame(count: i64) -> Frame {
    to_frame(&UnreadCount { r#type: "unread_count", count })
}

/// The notification document an endpoint speaks, if it speaks one.
pub fn feed(endpoint: &Endpoint) -> Option<NotificationFeed> {
    match endpoint {
        Endpoint::Notifications => Some(NotificationFeed::App),
        Endpoint::V1Notifications => Some(NotificationFeed::V1),
        Endpoint::UserNotifications { .. } => Some(NotificationFeed::Banking),
        Endpoint::Rooms { .. }
        | Endpoint::Consultation { .. }
        | Endpoint::SupportChat { .. }
        | Endpoint::ConversationList
        | Endpoint::DirectChat
        | Endpoint::Presence
        | Endpoint::BankingMessages { .. }
        | Endpoint::FraudAlerts { .. } => None,
        #[cfg(feature = "echo")]
        Endpoint::Echo => None,
    }
}

pub fn open(ctx: &mut Ctx, session: &mut Session) -> Result<(), Refusal> {
    let user = session.identity.user_id.clone();
    let pending = ctx.store.unread_notifications(&user, REPLAY_LIMIT).map_err(super::internal)?;
    let count = ctx.store.unread_notification_count(&user).map_err(super::internal)?;
    let feed = feed(&session.endpoint).unwrap_or(NotificationFeed::App);
    let topic = Topic::Notifications(user, feed);
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    if feed == NotificationFeed::App {
        let hello = ConnectionEstablished { r#type: "connection_established", message: "Connected to notifications" };
        ctx.send(session.conn, to_frame(&hello));
    }
    for notification in &pending {
        let frame = if feed == NotificationFeed::App { app_frame(notification) } else { v1_frame(notification) };
        ctx.send(session.conn, frame);
    }
    ctx.send(session.conn, count_frame(count));
    Ok(())
}

/// Any notification endpoint: `{"type": "mark_read", "notification_id": ...}`.
pub fn on_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let object = match parse_object(text) {
        Ok(object) => object,
        Err(message) => return ctx.send(session.conn, error_frame(message)),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("mark_read") => {
            let Some(id) = numeric_id(object.get("notification_id")) else {
                return ctx.send(session.conn, error_frame("\"notification_id\" must be a notification id."));
            };
            let user = session.identity.user_id.clone();
            match ctx.store.mark_notification_read(&user, id, ctx.now) {
                Ok(Some(_)) => publish_unread_count(ctx, &user),
                Ok(None) => ctx.send(session.conn, error_frame("No such notification.")),
                Err(e) => {
                    log::error!("cannot mark a notification read: {e}");
                    ctx.send(session.conn, error_frame("Could not mark the notification as read."));
                }
            }
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

fn publish_unread_count(ctx: &mut Ctx, user: &UserId) {
    match ctx.store.unread_notification_count(user) {
        Ok(count) => {
            let frame = count_frame(count);
            ctx.publish(&Topic::Notifications(user.clone(), NotificationFeed::App), frame.clone(), None, true);
            ctx.publish(&Topic::Notifications(user.clone(), NotificationFeed::V1), frame, None, true);
        }
        Err(e) => log::error!("cannot count unread notifications: {e}"),
    }
}

/// A stored notification reaches every notification socket of its user, rendered once
/// per document; the 001 and 003 sockets also get the new unread count.
pub fn publish(ctx: &mut Ctx, notification: &Notification) {
    let user = &notification.user_id;
    let topics = [
        (
            Topic::Notifications(user.clone(), NotificationFeed::Banking),
            banking::notification_update_frame as fn(&Notification) -> Frame,
        ),
        (Topic::Notifications(user.clone(), NotificationFeed::App), app_frame),
        (Topic::Notifications(user.clone(), NotificationFeed::V1), v1_frame),
    ];
    for (topic, render) in topics {
        if !ctx.hub.conns(&topic).is_empty() {
            ctx.publish(&topic, render(notification), None, true);
        }
    }
    publish_unread_count(ctx, user);
}
