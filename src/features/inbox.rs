//! What the backend puts in a user's inbox: notifications, fraud alerts and banking
//! messages. Each is stored with the user as its key (replayed on connect until read) and
//! recorded on the user's stream (unread counts are state, read when rendered).

use crate::context::{Ctx, EventBody};
use crate::model::{StreamId, UserId};
use crate::store::{BankingMessage, FraudAlert, NewBankingMessage, NewNotification, Notification, StoreResult};

pub fn notify(ctx: &mut Ctx, new: &NewNotification<'_>) -> StoreResult<Notification> {
    let notification = ctx.store.insert_notification(new, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    let stream = StreamId::User(new.user_id.clone());
    let unread_count = ctx.store.unread_notification_count(new.user_id)?;
    ctx.record(&stream, EventBody::Notification { notification: notification.clone(), unread_count }, None)?;
    Ok(notification)
}

/// Marks one of the user's notifications read; returns the user's unread count then
/// (`None`: no such notification of theirs). The count is state, not an event.
pub fn read_notification(ctx: &mut Ctx, user: &UserId, id: i64) -> StoreResult<Option<i64>> {
    if ctx.store.mark_notification_read(user, id, ctx.now)?.is_none() {
        return Ok(None);
    }
    Ok(Some(ctx.store.unread_notification_count(user)?))
}

pub fn raise_fraud_alert(ctx: &mut Ctx, user: &UserId, message: &str, severity: &str) -> StoreResult<FraudAlert> {
    let alert = ctx.store.insert_fraud_alert(user, message, severity, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    ctx.record(&StreamId::User(user.clone()), EventBody::FraudAlert { alert: alert.clone() }, None)?;
    Ok(alert)
}

/// Resolves an alert once; resolving it again changes and records nothing. `None` when
/// there is no such alert.
pub fn resolve_fraud_alert(ctx: &mut Ctx, id: i64) -> StoreResult<Option<FraudAlert>> {
    let Some(before) = ctx.store.fraud_alert(id)? else { return Ok(None) };
    let alert = ctx.store.resolve_fraud_alert(id, ctx.now)?.unwrap_or(before.clone());
    if !before.is_resolved {
        let stream = StreamId::User(alert.user_id.clone());
        ctx.record(&stream, EventBody::FraudAlert { alert: alert.clone() }, None)?;
    }
    Ok(Some(alert))
}

/// Stores a banking message and records it, and its parent (whose thread moved) if it
/// is a reply.
pub fn post_banking_message(ctx: &mut Ctx, new: &NewBankingMessage<'_>) -> StoreResult<BankingMessage> {
    let message = ctx.store.insert_banking_message(new, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    record_banking_change(ctx, &message)?;
    Ok(message)
}

pub fn banking_message(ctx: &Ctx, id: i64) -> StoreResult<Option<BankingMessage>> {
    ctx.store.banking_message(id)
}

/// Marks a banking message read. `None` when the user has no such message.
pub fn read_banking_message(ctx: &mut Ctx, user: &UserId, id: i64) -> StoreResult<Option<BankingMessage>> {
    let Some(message) = ctx.store.mark_banking_message_read(user, id, ctx.now)? else { return Ok(None) };
    record_banking_change(ctx, &message)?;
    Ok(Some(message))
}

/// A banking message changed: it is recorded, and its parent too, which shows its
/// replies.
fn record_banking_change(ctx: &mut Ctx, message: &BankingMessage) -> StoreResult<()> {
    let stream = StreamId::User(message.user_id.clone());
    ctx.record(&stream, EventBody::BankingMessage { message: message.clone() }, None)?;
    if let Some(parent) = message.parent_id
        && let Some(updated) = ctx.store.banking_message(parent)?
    {
        ctx.record(&stream, EventBody::BankingMessage { message: updated }, None)?;
    }
    Ok(())
}
