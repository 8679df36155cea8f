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
use super::{numeric_id, parse_object};
use crate::app::{App, Frame, Refusal, Session, to_frame};
use crate::hub::Topic;
use crate::model::{UserId, format_timestamp};
use crate::store::Notification;

pub const V1_AUTH_FAILED: u16 = 4003;

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

/// Notification topics are keyed by endpoint name (`Endpoint::name`).
const APP: &str = "notifications";
const V1: &str = "v1_notifications";
const BANKING: &str = "user_notifications";

pub fn open(app: &mut App, session: &mut Session) -> Result<(), Refusal> {
    let user = session.identity.user_id.clone();
    let pending = app.store.unread_notifications(&user, REPLAY_LIMIT).map_err(super::internal)?;
    let count = app.store.unread_notification_count(&user).map_err(super::internal)?;
    let name = session.endpoint.name();
    let topic = Topic::Notifications(user, name);
    app.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    if name == APP {
        let hello = ConnectionEstablished { r#type: "connection_established", message: "Connected to notifications" };
        app.send(session.conn, to_frame(&hello));
    }
    for notification in &pending {
        let frame = if name == APP { app_frame(notification) } else { v1_frame(notification) };
        app.send(session.conn, frame);
    }
    app.send(session.conn, count_frame(count));
    Ok(())
}

/// Any notification endpoint: `{"type": "mark_read", "notification_id": ...}`.
pub fn on_text(app: &mut App, session: &mut Session, text: &str) {
    let object = match parse_object(text) {
        Ok(object) => object,
        Err(message) => return app.send(session.conn, error_frame(message)),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("mark_read") => {
            let Some(id) = numeric_id(object.get("notification_id")) else {
                return app.send(session.conn, error_frame("\"notification_id\" must be a notification id."));
            };
            let user = session.identity.user_id.clone();
            match app.store.mark_notification_read(&user, id, app.now) {
                Ok(Some(_)) => publish_unread_count(app, &user),
                Ok(None) => app.send(session.conn, error_frame("No such notification.")),
                Err(e) => {
                    log::error!("cannot mark a notification read: {e}");
                    app.send(session.conn, error_frame("Could not mark the notification as read."));
                }
            }
        }
        Some(other) => app.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => app.send(session.conn, error_frame("Missing \"type\".")),
    }
}

fn publish_unread_count(app: &mut App, user: &UserId) {
    match app.store.unread_notification_count(user) {
        Ok(count) => {
            let frame = count_frame(count);
            app.publish(&Topic::Notifications(user.clone(), APP), frame.clone(), None, true);
            app.publish(&Topic::Notifications(user.clone(), V1), frame, None, true);
        }
        Err(e) => log::error!("cannot count unread notifications: {e}"),
    }
}

/// A stored notification reaches every notification socket of its user, rendered once
/// per document; the 001 and 003 sockets also get the new unread count.
pub fn publish(app: &mut App, notification: &Notification) {
    let user = &notification.user_id;
    let topics = [
        (Topic::Notifications(user.clone(), BANKING), banking::notification_update_frame as fn(&Notification) -> Frame),
        (Topic::Notifications(user.clone(), APP), app_frame),
        (Topic::Notifications(user.clone(), V1), v1_frame),
    ];
    for (topic, render) in topics {
        if !app.hub.conns(&topic).is_empty() {
            app.publish(&topic, render(notification), None, true);
        }
    }
    publish_unread_count(app, user);
}
