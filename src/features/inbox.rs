//! What the backend puts in a user's inbox: notifications, fraud alerts and banking
//! messages. Each is stored with the user as its key (replayed on connect until read) and
//! emitted to the user's open sockets.

use crate::context::{Ctx, Event};
use crate::model::UserId;
use crate::store::{BankingMessage, FraudAlert, NewBankingMessage, NewNotification, Notification, StoreResult};

pub fn notify(ctx: &mut Ctx, new: &NewNotification<'_>) -> StoreResult<Notification> {
    let notification = ctx.store.insert_notification(new, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    ctx.emit(Event::Notification(notification.clone()));
    Ok(notification)
}

pub fn raise_fraud_alert(ctx: &mut Ctx, user: &UserId, message: &str, severity: &str) -> StoreResult<FraudAlert> {
    let alert = ctx.store.insert_fraud_alert(user, message, severity, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    ctx.emit(Event::FraudAlert(alert.clone()));
    Ok(alert)
}

/// Resolves an alert once; resolving it again changes and emits nothing. `None` when
/// there is no such alert.
pub fn resolve_fraud_alert(ctx: &mut Ctx, id: i64) -> StoreResult<Option<FraudAlert>> {
    let Some(before) = ctx.store.fraud_alert(id)? else { return Ok(None) };
    let alert = ctx.store.resolve_fraud_alert(id, ctx.now)?.unwrap_or(before.clone());
    if !before.is_resolved {
        ctx.emit(Event::FraudAlert(alert.clone()));
    }
    Ok(Some(alert))
}

/// Stores a banking message and emits it, and its parent (whose thread moved) if it is a
/// reply.
pub fn post_banking_message(ctx: &mut Ctx, new: &NewBankingMessage<'_>) -> StoreResult<BankingMessage> {
    let message = ctx.store.insert_banking_message(new, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    ctx.emit(Event::BankingMessage(message.clone()));
    if let Some(parent) = new.parent_id
        && let Some(updated) = ctx.store.banking_message(parent)?
    {
        ctx.emit(Event::BankingMessage(updated));
    }
    Ok(message)
}
