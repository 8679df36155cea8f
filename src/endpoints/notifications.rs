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

use super::banking::REPLAY_LIMIT;
use super::{Endpoint, numeric_id, parse_object};
use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, to_frame};
use crate::engine::{OpenLoad, Opened, Replay, Snapshot, Target};
use crate::hub::{NotificationFeed, Topic};
use crate::model::{Seq, StreamId, UserId, format_timestamp};
use crate::request::{Answer, Done, Failed, Request, Write};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct UnreadCount {
    r#type: &'static str,
    count: i64,
}

pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
}

fn app_frame(n: &Notification, seq: Option<Seq>) -> Frame {
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
        seq,
    })
}

fn v1_frame(n: &Notification, seq: Option<Seq>) -> Frame {
    to_frame(&V1Notification {
        r#type: "notification",
        id: n.id,
        title: &n.title,
        message: &n.message,
        category: &n.category,
        link: n.link.as_deref(),
        timestamp: format_timestamp(n.created_at),
        is_read: n.is_read,
        seq,
    })
}

fn count_frame(count: i64) -> Frame {
    to_frame(&UnreadCount { r#type: "unread_count", count })
}

/// A stored event of the user's stream as a notification document shows it.
pub fn render(feed: NotificationFeed, event: &Event) -> Option<Frame> {
    let seq = Some(event.seq);
    match (&event.body, feed) {
        (EventBody::Notification { notification, .. }, NotificationFeed::App) => Some(app_frame(notification, seq)),
        (EventBody::Notification { notification, .. }, NotificationFeed::V1) => Some(v1_frame(notification, seq)),
        (EventBody::Notification { notification, .. }, NotificationFeed::Banking) => {
            Some(super::banking::notification_update_frame(notification, seq))
        }
        _ => None,
    }
}

/// A stored event reaches every notification socket of its user, rendered once per
/// document; the 001 and 003 sockets also get the new unread count.
pub fn deliver(ctx: &mut Ctx, event: &Event) {
    let StreamId::User(user) = &event.stream else { return };
    for feed in [NotificationFeed::Banking, NotificationFeed::App, NotificationFeed::V1] {
        let topic = Topic::Notifications(user.clone(), feed);
        if !ctx.hub.conns(&topic).is_empty()
            && let Some(frame) = render(feed, event)
        {
            ctx.publish(&topic, frame, None, true);
        }
    }
    if let EventBody::Notification { unread_count, .. } = &event.body {
        publish_unread_count(ctx, user, *unread_count);
    }
}

/// The user's unread count (state, not an event: it carries no seq) to every 001 and
/// 003 socket of theirs.
fn publish_unread_count(ctx: &mut Ctx, user: &UserId, count: i64) {
    let frame = count_frame(count);
    ctx.publish(&Topic::Notifications(user.clone(), NotificationFeed::App), frame.clone(), None, true);
    ctx.publish(&Topic::Notifications(user.clone(), NotificationFeed::V1), frame, None, true);
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

/// What opening 001 or 003 needs: the unread notifications and the count.
pub fn load(session: &Session) -> OpenLoad {
    OpenLoad {
        user: session.identity.user_id.clone(),
        target: Target::User,
        since: None,
        replay: Replay::Notifications { limit: REPLAY_LIMIT },
        unread_count: true,
        display_name: false,
    }
}

/// 001 and 003 on connect: (001's `connection_established`,) the unread notifications
/// or what was missed, then the count as it is now.
pub fn opened(ctx: &mut Ctx, session: &mut Session, opened: Opened) -> Result<(), Refusal> {
    let feed = feed(&session.endpoint).unwrap_or(NotificationFeed::App);
    let mut frames = super::start_frames(session, opened.start, opened.position, |snapshot| match snapshot {
        Snapshot::Notifications(pending) => {
            let render = if feed == NotificationFeed::App { app_frame } else { v1_frame };
            pending.iter().map(|n| render(n, None)).collect()
        }
        _ => Vec::new(),
    });
    frames.push(count_frame(opened.unread_count.unwrap_or(0)));
    frames.extend(super::join(ctx, session, opened.stream, opened.position));
    let topic = Topic::Notifications(session.identity.user_id.clone(), feed);
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    if feed == NotificationFeed::App {
        let hello = ConnectionEstablished { r#type: "connection_established", message: "Connected to notifications" };
        ctx.send(session.conn, to_frame(&hello));
    }
    ctx.send_all(session.conn, frames);
    Ok(())
}

/// A notification read: the user's new unread count goes to all their feeds that show it.
fn marked_read(ctx: &mut Ctx, session: &Session, answer: Answer) {
    match answer {
        Ok(Done::UnreadCount(count)) => publish_unread_count(ctx, &session.identity.user_id, count),
        Ok(other) => {
            other.unexpected("notification read");
        }
        Err(Failed::NotFound) => ctx.send(session.conn, error_frame("No such notification.")),
        Err(e) => {
            log::error!("cannot mark a notification read: {e}");
            ctx.send(session.conn, error_frame("Could not mark the notification as read."));
        }
    }
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
            let read = Write::ReadNotification { user: session.identity.user_id.clone(), id };
            ctx.ask(Then::Session { conn: session.conn, render: marked_read }, Request::Write(read));
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}
