//! What the application backend pushes to one user: notifications, fraud alerts and
//! threaded banking messages.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreResult};
use crate::model::{Micros, UserId};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Notification {
    pub id: i64,
    pub user_id: UserId,
    pub category: String,
    pub title: String,
    pub message: String,
    pub link: Option<String>,
    pub is_read: bool,
    pub read_at: Option<Micros>,
    pub created_at: Micros,
}

pub struct NewNotification<'a> {
    pub user_id: &'a UserId,
    pub category: &'a str,
    pub title: &'a str,
    pub message: &'a str,
    pub link: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FraudAlert {
    pub id: i64,
    pub user_id: UserId,
    pub message: String,
    pub severity: String,
    pub is_resolved: bool,
    pub resolved_at: Option<Micros>,
    pub created_at: Micros,
}

/// A banking message with its replies (direct children, each with theirs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BankingMessage {
    pub id: i64,
    pub user_id: UserId,
    pub subject: String,
    pub body: String,
    pub is_read: bool,
    pub read_at: Option<Micros>,
    pub thread_id: String,
    pub parent_id: Option<i64>,
    pub created_at: Micros,
    pub replies: Vec<BankingMessage>,
}

pub struct NewBankingMessage<'a> {
    pub user_id: &'a UserId,
    pub subject: &'a str,
    pub body: &'a str,
    pub thread_id: &'a str,
    pub parent_id: Option<i64>,
}

/// How deep `replies` nest inside a banking message.
const MAX_REPLY_DEPTH: usize = 8;

const NOTIFICATION_COLUMNS: &str = "id, user_id, category, title, message, link, is_read, read_at, created_at";
const ALERT_COLUMNS: &str = "id, user_id, message, severity, is_resolved, resolved_at, created_at";
const BANKING_COLUMNS: &str = "id, user_id, subject, body, is_read, read_at, thread_id, parent_id, created_at";

fn notification_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Notification> {
    Ok(Notification {
        id: row.get(0)?,
        user_id: UserId::new(&row.get::<_, String>(1)?),
        category: row.get(2)?,
        title: row.get(3)?,
        message: row.get(4)?,
        link: row.get(5)?,
        is_read: row.get(6)?,
        read_at: row.get(7)?,
        created_at: row.get(8)?,
    })
}

fn alert_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FraudAlert> {
    Ok(FraudAlert {
        id: row.get(0)?,
        user_id: UserId::new(&row.get::<_, String>(1)?),
        message: row.get(2)?,
        severity: row.get(3)?,
        is_resolved: row.get(4)?,
        resolved_at: row.get(5)?,
        created_at: row.get(6)?,
    })
}

fn banking_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BankingMessage> {
    Ok(BankingMessage {
        id: row.get(0)?,
        user_id: UserId::new(&row.get::<_, String>(1)?),
        subject: row.get(2)?,
        body: row.get(3)?,
        is_read: row.get(4)?,
        read_at: row.get(5)?,
        thread_id: row.get(6)?,
        parent_id: row.get(7)?,
        created_at: row.get(8)?,
        replies: Vec::new(),
    })
}

impl Store {
    pub fn insert_notification(&mut self, new: &NewNotification<'_>, now: Micros) -> StoreResult<Notification> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO notifications (user_id, category, title, message, link, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![new.user_id.as_str(), new.category, new.title, new.message, new.link, now])?;
        Ok(Notification {
            id: self.conn.last_insert_rowid(),
            user_id: new.user_id.clone(),
            category: new.category.to_string(),
            title: new.title.to_string(),
            message: new.message.to_string(),
            link: new.link.map(str::to_string),
            is_read: false,
            read_at: None,
            created_at: now,
        })
    }

    /// Marks one of the user's notifications read (once). `None` when the id is not a
    /// notification of this user.
    pub fn mark_notification_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<(Notification, bool)>> {
        self.ensure_transaction()?;
        let marked = self
            .conn
            .prepare_cached(
                "UPDATE notifications SET is_read = 1, read_at = ?3 WHERE id = ?1 AND user_id = ?2 AND is_read = 0",
            )?
            .execute(params![id, user.as_str(), now])?;
        let notification = self
            .conn
            .prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = ?1 AND user_id = ?2"
            ))?
            .query_row(params![id, user.as_str()], notification_from_row)
            .optional()?;
        Ok(notification.map(|n| (n, marked > 0)))
    }

    pub fn unread_notification_count(&self, user: &UserId) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM notifications WHERE user_id = ?1 AND is_read = 0")?
            .query_row(params![user.as_str()], |row| row.get(0))?)
    }

    /// The user's unread notifications, the newest `limit`, oldest first.
    pub fn unread_notifications(&self, user: &UserId, limit: usize) -> StoreResult<Vec<Notification>> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM (
                 SELECT * FROM notifications WHERE user_id = ?1 AND is_read = 0 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id"
        ))?;
        let rows = statement.query_map(params![user.as_str(), limit as i64], notification_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_fraud_alert(
        &mut self,
        user: &UserId,
        message: &str,
        severity: &str,
        now: Micros,
    ) -> StoreResult<FraudAlert> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO fraud_alerts (user_id, message, severity, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user.as_str(), message, severity, now])?;
        Ok(FraudAlert {
            id: self.conn.last_insert_rowid(),
            user_id: user.clone(),
            message: message.to_string(),
            severity: severity.to_string(),
            is_resolved: false,
            resolved_at: None,
            created_at: now,
        })
    }

    pub fn fraud_alert(&self, id: i64) -> StoreResult<Option<FraudAlert>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM fraud_alerts WHERE id = ?1"))?
            .query_row(params![id], alert_from_row)
            .optional()?)
    }

    /// Resolves an alert (once); returns it as it is now, or `None` when it does not exist.
    pub fn resolve_fraud_alert(&mut self, id: i64, now: Micros) -> StoreResult<Option<FraudAlert>> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "UPDATE fraud_alerts SET is_resolved = 1, resolved_at = ?2 WHERE id = ?1 AND is_resolved = 0",
            )?
            .execute(params![id, now])?;
        self.fraud_alert(id)
    }

    /// The user's unresolved alerts, the newest `limit`, oldest first.
    pub fn unresolved_fraud_alerts(&self, user: &UserId, limit: usize) -> StoreResult<Vec<FraudAlert>> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM (
                 SELECT * FROM fraud_alerts WHERE user_id = ?1 AND is_resolved = 0 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id"
        ))?;
        let rows = statement.query_map(params![user.as_str(), limit as i64], alert_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_banking_message(&mut self, new: &NewBankingMessage<'_>, now: Micros) -> StoreResult<BankingMessage> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO banking_messages (user_id, subject, body, thread_id, parent_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![new.user_id.as_str(), new.subject, new.body, new.thread_id, new.parent_id, now])?;
        let id = self.conn.last_insert_rowid();
        Ok(self.banking_message(id)?.expect("the row just inserted"))
    }

    /// One banking message with its replies.
    pub fn banking_message(&self, id: i64) -> StoreResult<Option<BankingMessage>> {
        let message = self
            .conn
            .prepare_cached(&format!("SELECT {BANKING_COLUMNS} FROM banking_messages WHERE id = ?1"))?
            .query_row(params![id], banking_from_row)
            .optional()?;
        match message {
            Some(mut message) => {
                self.load_replies(&mut message, MAX_REPLY_DEPTH)?;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    fn load_replies(&self, message: &mut BankingMessage, depth: usize) -> StoreResult<()> {
        if depth == 0 {
            return Ok(());
        }
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {BANKING_COLUMNS} FROM banking_messages WHERE parent_id = ?1 ORDER BY id"
        ))?;
        let replies: Vec<BankingMessage> =
            statement.query_map(params![message.id], banking_from_row)?.collect::<Result<_, _>>()?;
        drop(statement);
        message.replies = replies;
        for reply in &mut message.replies {
            self.load_replies(reply, depth - 1)?;
        }
        Ok(())
    }

    /// Marks one of the user's banking messages read (once). `None` when it is not theirs.
    pub fn mark_banking_message_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<BankingMessage>> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "UPDATE banking_messages SET is_read = 1, read_at = ?3 WHERE id = ?1 AND user_id = ?2 AND is_read = 0",
            )?
            .execute(params![id, user.as_str(), now])?;
        Ok(self.banking_message(id)?.filter(|m| &m.user_id == user))
    }

    /// The user's unread banking messages, the newest `limit`, oldest first.
    pub fn unread_banking_messages(&self, user: &UserId, limit: usize) -> StoreResult<Vec<BankingMessage>> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM (
                     SELECT id FROM banking_messages WHERE user_id = ?1 AND is_read = 0 ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id",
            )?
            .query_map(params![user.as_str(), limit as i64], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            messages.extend(self.banking_message(id)?);
        }
        Ok(messages)
    }
}
