//! What the backend puts in a user's inbox: notifications, fraud alerts and banking
//! messages. Each is stored with the user as its key (replayed on connect until read) and
//! recorded on the user's stream (unread counts are state, read when rendered).

use crate::event::EventBody;
use crate::model::{StreamId, UserId};
use crate::request::{Failed, NewBankingMessage, NewNotification};
use crate::store::{self, BankingMessage, FraudAlert, Notification, StoreResult};
use crate::tx::Tx;

/// Stores a notification and records it, with the user's unread count, on their stream.
pub fn notify(tx: &mut Tx<'_>, new: &NewNotification) -> StoreResult<Notification> {
    let row = store::NewNotification {
        user_id: &new.user,
        category: &new.category,
        title: &new.title,
        message: &new.message,
        link: new.link.as_deref(),
    };
    let notification = tx.store.insert_notification(&row, tx.now)?;
    *tx.stored += 1;
    let stream = StreamId::User(new.user.clone());
    let unread_count = tx.store.unread_notification_count(&new.user)?;
    tx.record(&stream, EventBody::Notification { notification: notification.clone(), unread_count }, None)?;
    Ok(notification)
}

/// Marks one of the user's notifications read; returns the user's unread count then
/// (`NotFound`: no such notification of theirs). The count is state, not an event.
pub fn read_notification(tx: &mut Tx<'_>, user: &UserId, id: i64) -> Result<i64, Failed> {
    let (notification, read_now) = tx.store.mark_notification_read(user, id, tx.now)?.ok_or(Failed::NotFound)?;
    let unread_count = tx.store.unread_notification_count(user)?;
    // Reported when this call read it (not again for one read before).
    if read_now {
        let data = crate::webhook::notification_read(user, notification.id, unread_count);
        tx.hook(crate::model::HookType::NotificationRead, &StreamId::User(user.clone()), &data)?;
    }
    Ok(unread_count)
}

pub fn raise_fraud_alert(tx: &mut Tx<'_>, user: &UserId, message: &str, severity: &str) -> StoreResult<FraudAlert> {
    let alert = tx.store.insert_fraud_alert(user, message, severity, tx.now)?;
    *tx.stored += 1;
    tx.record(&StreamId::User(user.clone()), EventBody::FraudAlert { alert: alert.clone() }, None)?;
    Ok(alert)
}

/// Resolves an alert once; resolving it again changes nothing and records nothing.
pub fn resolve_fraud_alert(tx: &mut Tx<'_>, id: i64) -> Result<FraudAlert, Failed> {
    let before = tx.store.fraud_alert(id)?.ok_or(Failed::NotFound)?;
    let alert = tx.store.resolve_fraud_alert(id, tx.now)?.unwrap_or(before.clone());
    if !before.is_resolved {
        let stream = StreamId::User(alert.user_id.clone());
        tx.record(&stream, EventBody::FraudAlert { alert: alert.clone() }, None)?;
    }
    Ok(alert)
}

/// Stores a banking message, a reply when it has a parent (one of the same user's, in
/// the same thread), and records it and the parent it changed.
pub fn post_banking_message(tx: &mut Tx<'_>, new: &NewBankingMessage) -> Result<BankingMessage, Failed> {
    let parent = match new.parent {
        None => None,
        Some(id) => match tx.store.banking_message(id)? {
            Some(parent) if parent.user_id == new.user => Some(parent),
            _ => return Err(Failed::Refused("\"parent_message\" is not a message of this user")),
        },
    };
    let thread_id = match (&new.thread, &parent) {
        (Some(thread), Some(parent)) if *thread != parent.thread_id => {
            return Err(Failed::Refused("\"thread_id\" differs from the parent message's thread"));
        }
        (Some(thread), _) => thread.clone(),
        (None, Some(parent)) => parent.thread_id.clone(),
        (None, None) => new.new_thread.clone(),
    };
    let row = store::NewBankingMessage {
        user_id: &new.user,
        subject: &new.subject,
        body: &new.body,
        thread_id: &thread_id,
        parent_id: parent.as_ref().map(|p| p.id),
    };
    let message = tx.store.insert_banking_message(&row, tx.now)?;
    *tx.stored += 1;
    record_banking_change(tx, &message)?;
    Ok(message)
}

/// Marks one of the user's banking messages read (`NotFound`: no such message of theirs).
pub fn read_banking_message(tx: &mut Tx<'_>, user: &UserId, id: i64) -> Result<BankingMessage, Failed> {
    let message = tx.store.mark_banking_message_read(user, id, tx.now)?.ok_or(Failed::NotFound)?;
    record_banking_change(tx, &message)?;
    Ok(message)
}

/// A banking message changed: it, and its parent (whose replies now include it), are
/// recorded on the user's stream.
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
