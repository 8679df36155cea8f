//! What the backend puts in a user's inbox: notifications, fraud alerts and banking
//! messages. Each is stored with the user as its key (replayed on connect until read) and
//! recorded on the user's stream (unread counts are state, read when rendered).

use crate::event::EventBody;
use crate::model::{StreamId, UserId};
use crate::store::{BankingMessage, FraudAlert, NewBankingMessage, NewNotification, Notification, StoreResult};
use crate::tx::Tx;

pub fn notify(tx: &mut Tx<'_>, new: &NewNotification<'_>) -> StoreResult<Notification> {
    let notification = tx.store.insert_notification(new, tx.now)?;
    *tx.stored += 1;
    let stream = StreamId::User(new.user_id.clone());
    let unread_count = tx.store.unread_notification_count(new.user_id)?;
    tx.record(&stream, EventBody::Notification { notification: notification.clone(), unread_count }, None)?;
    Ok(notification)
}

/// Marks one of the user's notifications read; returns the user's unread count then
/// (`None`: no such notification of theirs). The count is state, not an event.
pub fn read_notification(tx: &mut Tx<'_>, user: &UserId, id: i64) -> StoreResult<Option<i64>> {
    if tx.store.mark_notification_read(user, id, tx.now)?.is_none() {
        return Ok(None);
    }
    Ok(Some(tx.store.unread_notification_count(user)?))
}

pub fn raise_fraud_alert(tx: &mut Tx<'_>, user: &UserId, message: &str, severity: &str) -> StoreResult<FraudAlert> {
    let alert = tx.store.insert_fraud_alert(user, message, severity, tx.now)?;
    *tx.stored += 1;
    tx.record(&StreamId::User(user.clone()), EventBody::FraudAlert { alert: alert.clone() }, None)?;
    Ok(alert)
}

/// Resolves an alert once; resolving it again changes and records nothing. `None` when
/// there is no such alert.
pub fn resolve_fraud_alert(tx: &mut Tx<'_>, id: i64) -> StoreResult<Option<FraudAlert>> {
    let Some(before) = tx.store.fraud_alert(id)? else { return Ok(None) };
    let alert = tx.store.resolve_fraud_alert(id, tx.now)?.unwrap_or(before.clone());
    if !before.is_resolved {
        let stream = StreamId::User(alert.user_id.clone());
        tx.record(&stream, EventBody::FraudAlert { alert: alert.clone() }, None)?;
    }
    Ok(Some(alert))
}

/// Stores a banking message and records it, and its parent (whose thread moved) if it
/// is a reply.
pub fn post_banking_message(tx: &mut Tx<'_>, new: &NewBankingMessage<'_>) -> StoreResult<BankingMessage> {
    let message = tx.store.insert_banking_message(new, tx.now)?;
    *tx.stored += 1;
    record_banking_change(tx, &message)?;
    Ok(message)
}

pub fn banking_message(tx: &Tx<'_>, id: i64) -> StoreResult<Option<BankingMessage>> {
    tx.store.banking_message(id)
}

/// Marks a banking message read. `None` when the user has no such message.
pub fn read_banking_message(tx: &mut Tx<'_>, user: &UserId, id: i64) -> StoreResult<Option<BankingMessage>> {
    let Some(message) = tx.store.mark_banking_message_read(user, id, tx.now)? else { return Ok(None) };
    record_banking_change(tx, &message)?;
    Ok(Some(message))
}

/// A banking message changed: it is recorded, and its parent too, which shows its
/// replies.
fn record_banking_change(tx: &mut Tx<'_>, message: &BankingMessage) -> StoreResult<()> {
    let stream = StreamId::User(message.user_id.clone());
    tx.record(&stream, EventBody::BankingMessage { message: message.clone() }, None)?;
    if let Some(parent) = message.parent_id
        && let Some(updated) = tx.store.banking_message(parent)?
    {
        tx.record(&stream, EventBody::BankingMessage { message: updated }, None)?;
    }
    Ok(())
}
