//! Webhooks: what the application backend hears of (docs/webhooks.md), in two halves.
//!
//! Writing (this file): what a turn stores and the backend must hear of becomes a row
//! of the outbox (`webhook_events`) in the same transaction — from the events features
//! record (`Tx::record` calls `on_event`), from what is not an event (a notification
//! read, `Tx::hook`; presence and room joins, `Hook` through `Write::Hook`), and from
//! the unread timers when they fall due (`fire_timers`). No I/O here beyond the store's
//! rows, on either engine.
//!
//! Posting (`delivery.rs`): a helper thread reads the outbox on its own connection and
//! posts it in batches, signed (`sign.rs`), retrying with backoff; on SQLite the loop
//! stores how far it got (`Engine::sweep_hooks`), on PostgreSQL the thread of the node
//! holding the lease does. The loop never does HTTP.

pub mod delivery;
pub mod sign;

use serde_json::{Value, json};

use crate::event::EventBody;
use crate::model::{HookType, Micros, Seq, StreamId, UserId, format_timestamp};
use crate::store::{ConversationKind, NewTimer, Storage, StoreResult, StoredMessage, TimerKind};

/// Which webhook events are written, and after how long unread timers fire: what a
/// turn needs to write them (`Tx::hooks`). Absent when no webhook URL is set.
#[derive(Clone, Debug)]
pub struct Hooks {
    /// `HookType::bit`s of the types wanted (`SWITCHBOARD_WEBHOOK_EVENTS`).
    pub types: u16,
    /// `SWITCHBOARD_WEBHOOK_UNREAD_AFTER_SECS`, in microseconds; `None`: no timers.
    pub unread_after: Option<Micros>,
}

impl Hooks {
    pub fn of(config: &crate::config::WebhookConfig) -> Hooks {
        Hooks {
            types: config.types,
            unread_after: config.unread_after.map(|d| d.as_micros().min(i64::MAX as u128) as i64),
        }
    }

    pub fn wants(&self, kind: HookType) -> bool {
        self.types & kind.bit() != 0
    }

    fn timers(&self, kind: HookType) -> Option<Micros> {
        self.unread_after.filter(|_| self.wants(kind))
    }
}

/// Webhooks at work: what turns write, and the thread that posts it (in `Ctx`).
pub struct Webhooks {
    pub hooks: Hooks,
    pub delivery: delivery::Delivery,
    /// On a cluster's node that delivers: who is reported online was set to the
    /// cluster's view since it started delivering (`App::sweep_hooks`).
    pub reported_online: bool,
}

impl Webhooks {
    /// Starts delivery from `outbox` (`lease`: how long a PostgreSQL node's hold on
    /// delivery lasts unrenewed).
    pub fn start(
        config: &crate::config::WebhookConfig,
        secret: String,
        outbox: delivery::Outbox,
        lease: std::time::Duration,
    ) -> Result<Webhooks, String> {
        let settings = delivery::Settings {
            url: config.url.clone(),
            secret,
            timeout: config.timeout,
            max_age: config.max_age,
            retry_max: config.retry_max,
            batch_max: config.batch_max,
            batch_bytes: MAX_BATCH_BYTES,
        };
        let delivery = delivery::Delivery::start(outbox, settings, lease)?;
        Ok(Webhooks { hooks: Hooks::of(config), delivery, reported_online: false })
    }
}

/// The largest request body of events (at least one event is sent whatever its size).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Writes the rows that a recorded event means for the backend (called by
/// `Tx::record_with`, in the same transaction, before the event is queued).
pub fn on_event(
    store: &mut dyn Storage,
    hooks: &Hooks,
    stream: &StreamId,
    seq: Seq,
    body: &EventBody,
    now: Micros,
) -> StoreResult<()> {
    let key = stream.key();
    match body {
        EventBody::Message { conversation: kind, message, customer } => {
            let conversation = conversation_json(store, message.conversation_id)?;
            let mut data = json!({"conversation": conversation, "message": message_json(message)});
            if let Some(customer) = customer {
                data["customer"] =
                    json!({"id": customer.id, "source": customer.source, "external_id": customer.external_id});
            }
            if hooks.wants(HookType::MessageCreated) {
                store.insert_hook(HookType::MessageCreated.name(), &key, Some(seq), &data.to_string(), now)?;
            }
            let member_only = matches!(kind, ConversationKind::Consultation | ConversationKind::Support);
            if let (true, Some(after)) = (member_only, hooks.timers(HookType::MessageUnread)) {
                store.insert_hook_timer(&message_timer(now + after, &key, seq, message, None, &data.to_string()))?;
            }
        }
        EventBody::DirectMessage { message } => {
            let StreamId::User(recipient) = stream else { return Ok(()) };
            let data = json!({
                "conversation": conversation_json(store, message.conversation_id)?,
                "message": message_json(message),
                "recipient_id": recipient.as_str(),
            });
            if hooks.wants(HookType::MessageCreated) {
                store.insert_hook(HookType::MessageCreated.name(), &key, Some(seq), &data.to_string(), now)?;
            }
            if let Some(after) = hooks.timers(HookType::MessageUnread) {
                store.insert_hook_timer(&message_timer(
                    now + after,
                    &key,
                    seq,
                    message,
                    Some(recipient),
                    &data.to_string(),
                ))?;
            }
        }
        EventBody::ReadReceipt { message_id, user_id, .. } => {
            let StreamId::Conversation(id) = stream else { return Ok(()) };
            read(store, hooks, &key, seq, *id, user_id, Some(*message_id), now)?;
        }
        EventBody::MessagesRead { user_id } => {
            let StreamId::Conversation(id) = stream else { return Ok(()) };
            read(store, hooks, &key, seq, *id, user_id, None, now)?;
        }
        EventBody::DirectRead { reader_id, .. } => {
            let StreamId::User(sender) = stream else { return Ok(()) };
            let pair = crate::store::direct_key(reader_id, sender);
            if let Some(id) = store.conversation_id(ConversationKind::Direct, &pair)? {
                read(store, hooks, &key, seq, id, reader_id, None, now)?;
            }
        }
        EventBody::Notification { notification, .. } => {
            if let Some(after) = hooks.timers(HookType::NotificationUnread) {
                let data = json!({
                    "user_id": notification.user_id.as_str(),
                    "notification": {
                        "id": notification.id,
                        "category": notification.category,
                        "title": notification.title,
                        "message": notification.message,
                        "link": notification.link,
                        "created_at": format_timestamp(notification.created_at),
                    },
                });
                store.insert_hook_timer(&NewTimer {
                    due: now + after,
                    kind: TimerKind::Notification,
                    stream: &key,
                    seq: Some(seq),
                    ref_id: notification.id,
                    conversation_id: None,
                    sender: None,
                    user: Some(&notification.user_id),
                    data: &data.to_string(),
                })?;
            }
        }
        EventBody::MembersChanged { added, removed } => {
            let StreamId::Conversation(id) = stream else { return Ok(()) };
            let conversation = conversation_json(store, *id)?;
            for (kind, users) in [(HookType::MemberJoined, added), (HookType::MemberLeft, removed)] {
                if !hooks.wants(kind) {
                    continue;
                }
                for user in users {
                    let data = json!({"conversation": conversation, "user_id": user.as_str()});
                    store.insert_hook(kind.name(), &key, Some(seq), &data.to_string(), now)?;
                }
            }
        }
        EventBody::CustomerMessage { .. }
        | EventBody::FraudAlert { .. }
        | EventBody::BankingMessage { .. }
        | EventBody::Logout => {}
    }
    Ok(())
}

/// `message.read`: a member's read position in a conversation moved.
#[allow(clippy::too_many_arguments)]
fn read(
    store: &mut dyn Storage,
    hooks: &Hooks,
    key: &str,
    seq: Seq,
    conversation_id: i64,
    user: &UserId,
    message_id: Option<i64>,
    now: Micros,
) -> StoreResult<()> {
    if !hooks.wants(HookType::MessageRead) {
        return Ok(());
    }
    let data = json!({
        "conversation": conversation_json(store, conversation_id)?,
        "user_id": user.as_str(),
        "message_id": message_id,
        "unread_count": store.unread_count(conversation_id, user)?,
    });
    store.insert_hook(HookType::MessageRead.name(), key, Some(seq), &data.to_string(), now)
}

/// An event no request records: a user online or offline, a room joined or left
/// (`Ctx::hook`). `online` keeps the set of users reported online: an online or offline
/// that would not change it is not reported again.
#[derive(Debug, Clone)]
pub struct Hook {
    pub kind: HookType,
    pub stream: StreamId,
    pub data: String,
    pub online: Option<(UserId, bool)>,
}

/// `user.online` or `user.offline` as a `Hook`.
pub fn presence_hook(user: &UserId, name: Option<&str>, online: bool) -> Hook {
    Hook {
        kind: if online { HookType::UserOnline } else { HookType::UserOffline },
        stream: StreamId::User(user.clone()),
        data: presence(user, name).to_string(),
        online: Some((user.clone(), online)),
    }
}

/// `notification.read`'s data.
pub fn notification_read(user: &UserId, notification_id: i64, unread_count: i64) -> Value {
    json!({"user_id": user.as_str(), "notification_id": notification_id, "unread_count": unread_count})
}

/// `user.online`'s and `user.offline`'s data.
pub fn presence(user: &UserId, name: Option<&str>) -> Value {
    match name {
        Some(name) => json!({"user_id": user.as_str(), "user_name": name}),
        None => json!({"user_id": user.as_str()}),
    }
}

/// `member.joined` or `member.left` of a room (a user's first socket in it opened, or
/// their last one closed) as a `Hook`.
pub fn room_hook(kind: HookType, room: &str, conversation: i64, user: &UserId, name: &str) -> Hook {
    let data = json!({"conversation": {"kind": "room", "id": room}, "user_id": user.as_str(), "user_name": name});
    Hook { kind, stream: StreamId::Conversation(conversation), data: data.to_string(), online: None }
}

/// The rows of an unread timer that fell due: one per user who has not read it.
pub fn unread(timer: &crate::store::DueTimer) -> Vec<(HookType, String)> {
    let kind = match timer.kind {
        TimerKind::Message => HookType::MessageUnread,
        TimerKind::Notification => HookType::NotificationUnread,
    };
    let Ok(base) = serde_json::from_str::<Value>(&timer.data) else { return Vec::new() };
    timer
        .unread_by
        .iter()
        .map(|user| {
            let mut data = base.clone();
            data["user_id"] = json!(user.as_str());
            (kind, data.to_string())
        })
        .collect()
}

/// A conversation as events name it: its kind and key (which never change, so a store
/// may remember them: `Storage::conversation_key`).
fn conversation_json(store: &mut dyn Storage, id: i64) -> StoreResult<Value> {
    let (kind, key) = store.conversation_key(id)?;
    Ok(json!({"kind": kind.as_sql(), "id": key}))
}

fn message_json(message: &StoredMessage) -> Value {
    json!({
        "id": message.id,
        "sender_id": message.sender_id.as_ref().map(UserId::as_str),
        "sender_name": message.sender_name,
        "content": message.content,
        "message_type": message.message_type,
        "created_at": format_timestamp(message.created_at),
    })
}

/// One event as the receiver gets it, from its outbox row.
pub fn event_json(row: &crate::store::HookRow) -> Value {
    json!({
        "id": row.id,
        "type": row.kind,
        "stream": row.stream,
        "seq": row.seq,
        "created_at": format_timestamp(row.created_at),
        "data": serde_json::from_str::<Value>(&row.data).unwrap_or(Value::Null),
    })
}

/// The unread timer of a stored message: `message.unread` at `due` unless it is read.
fn message_timer<'a>(
    due: Micros,
    stream: &'a str,
    seq: Seq,
    message: &'a StoredMessage,
    user: Option<&'a UserId>,
    data: &'a str,
) -> NewTimer<'a> {
    NewTimer {
        due,
        kind: TimerKind::Message,
        stream,
        seq: Some(seq),
        ref_id: message.id,
        conversation_id: Some(message.conversation_id),
        sender: message.sender_id.as_ref(),
        user,
        data,
    }
}
