//! Conversations beyond rooms: members and their read positions, customers of support
//! conversations, read receipts, unread counts, and 1:1 pairs.

use rusqlite::{OptionalExtension, params};

use super::{ConversationKind, MESSAGE_COLUMNS, Store, StoreError, StoreResult, StoredMessage, message_from_row};
use crate::model::{Micros, UserId};

/// A customer from an external platform (Telegram, Instagram, ...).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    pub id: i64,
    pub source: String,
    pub external_id: String,
    pub first_name: String,
    pub last_name: String,
    pub profile_picture: Option<String>,
}

pub struct NewCustomer<'a> {
    pub source: &'a str,
    pub external_id: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub profile_picture: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub id: i64,
    pub kind: ConversationKind,
    /// The id clients use in paths.
    pub key: String,
    pub title: String,
    pub status: String,
    pub priority: i64,
    pub customer: Option<Customer>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

pub struct NewConversation<'a> {
    pub kind: ConversationKind,
    pub key: &'a str,
    pub title: &'a str,
    pub status: &'a str,
    pub priority: i64,
    pub customer_id: Option<i64>,
}

/// A conversation as one member's list shows it.
#[derive(Debug)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    pub last_message: Option<StoredMessage>,
    pub unread_count: i64,
}

/// A conversation as the console's recent list shows it: with how many members it has
/// (rooms have none: anyone may join them).
#[derive(Debug)]
pub struct RecentConversation {
    pub conversation: Conversation,
    pub members: i64,
}

/// Most conversations one recent list holds.
pub const MAX_RECENT_CONVERSATIONS: usize = 100;

const CONVERSATION_SELECT: &str =
    "SELECT c.id, c.kind, c.key, c.title, c.status, c.priority, c.created_at, c.updated_at,
            cu.id, cu.source, cu.external_id, cu.first_name, cu.last_name, cu.profile_picture
     FROM conversations c LEFT JOIN customers cu ON cu.id = c.customer_id";

fn conversation_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    let kind: String = row.get(1)?;
    let customer = match row.get::<_, Option<i64>>(8)? {
        Some(id) => Some(Customer {
            id,
            source: row.get(9)?,
            external_id: row.get(10)?,
            first_name: row.get(11)?,
            last_name: row.get(12)?,
            profile_picture: row.get(13)?,
        }),
        None => None,
    };
    Ok(Conversation {
        id: row.get(0)?,
        kind: ConversationKind::from_sql(&kind).unwrap_or(ConversationKind::Room),
        key: row.get(2)?,
        title: row.get(3)?,
        status: row.get(4)?,
        priority: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        customer,
    })
}

/// The key of the 1:1 conversation of two users: both ids, ordered, so either user
/// finds the same one.
pub fn direct_key(a: &UserId, b: &UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{}|{}", low.as_str().len(), [low.as_str(), high.as_str()].concat())
}

impl Store {
    pub fn conversation(&self, kind: ConversationKind, key: &str) -> StoreResult<Option<Conversation>> {
        Ok(self
            .conn
            .prepare_cached(&format!("{CONVERSATION_SELECT} WHERE c.kind = ?1 AND c.key = ?2"))?
            .query_row(params![kind.as_sql(), key], conversation_from_row)
            .optional()?)
    }

    /// A conversation by id that must exist (it was just created or is being written to).
    pub fn existing_conversation(&self, id: i64) -> StoreResult<Conversation> {
        self.conversation_by_id(id)?.ok_or(StoreError::NotFound("conversation"))
    }

    pub fn conversation_by_id(&self, id: i64) -> StoreResult<Option<Conversation>> {
        Ok(self
            .conn
            .prepare_cached(&format!("{CONVERSATION_SELECT} WHERE c.id = ?1"))?
            .query_row(params![id], conversation_from_row)
            .optional()?)
    }

    pub fn create_conversation(&mut self, new: &NewConversation<'_>, now: Micros) -> StoreResult<i64> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO conversations (kind, key, title, status, priority, customer_id, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )?
            .execute(params![new.kind.as_sql(), new.key, new.title, new.status, new.priority, new.customer_id, now])?;
        let id = self.conn.last_insert_rowid();
        if new.kind == ConversationKind::Room {
            self.continue_pruned_room(id, new.key, now)?;
        }
        Ok(id)
    }

    pub fn members(&self, conversation_id: i64) -> StoreResult<Vec<UserId>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT user_id FROM conversation_members WHERE conversation_id = ?1 ORDER BY user_id")?;
        let rows = statement.query_map(params![conversation_id], |row| row.get::<_, String>(0))?;
        Ok(rows.map(|r| r.map(|s| UserId::new(&s))).collect::<Result<_, _>>()?)
    }

    /// The conversations of every kind with the newest activity first (at most
    /// `MAX_RECENT_CONVERSATIONS`), each with its member count.
    pub fn recent_conversations(&mut self, limit: usize) -> StoreResult<Vec<RecentConversation>> {
        self.write_touched()?;
        let limit = limit.min(MAX_RECENT_CONVERSATIONS) as i64;
        let conversations: Vec<Conversation> = self
            .conn
            .prepare_cached(&format!("{CONVERSATION_SELECT} ORDER BY c.updated_at DESC, c.id DESC LIMIT ?1"))?
            .query_map(params![limit], conversation_from_row)?
            .collect::<Result<_, _>>()?;
        let mut recent = Vec::with_capacity(conversations.len());
        for conversation in conversations {
            let members = self
                .conn
                .prepare_cached("SELECT count(*) FROM conversation_members WHERE conversation_id = ?1")?
                .query_row(params![conversation.id], |row| row.get(0))?;
            recent.push(RecentConversation { conversation, members });
        }
        Ok(recent)
    }

    pub fn is_member(&self, conversation_id: i64, user: &UserId) -> StoreResult<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM conversation_members WHERE conversation_id = ?1 AND user_id = ?2")?
            .query_row(params![conversation_id, user.as_str()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Makes `members` the member set; returns the users removed. New members start
    /// with everything already in the conversation unread.
    pub fn set_members(&mut self, conversation_id: i64, members: &[UserId]) -> StoreResult<Vec<UserId>> {
        let current = self.members(conversation_id)?;
        self.ensure_transaction()?;
        let removed: Vec<UserId> = current.iter().filter(|u| !members.contains(u)).cloned().collect();
        for user in &removed {
            self.conn
                .prepare_cached("DELETE FROM conversation_members WHERE conversation_id = ?1 AND user_id = ?2")?
                .execute(params![conversation_id, user.as_str()])?;
        }
        for user in members {
            self.ensure_user(user)?;
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO conversation_members (conversation_id, user_id) VALUES (?1, ?2)",
                )?
                .execute(params![conversation_id, user.as_str()])?;
        }
        Ok(removed)
    }

    /// Makes a user known (so that direct messages to them are accepted) without a name.
    pub fn ensure_user(&mut self, user: &UserId) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO users (id, name, first_seen, last_seen) VALUES (?1, ?1, 0, 0)")?
            .execute(params![user.as_str()])?;
        Ok(())
    }

    /// Sets the display name the backend gave a user, making them known if they were
    /// not (`name`, the token's, starts as the id, as for a member named before they
    /// connect).
    pub fn set_display_name(&mut self, user: &UserId, name: &str) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO users (id, name, first_seen, last_seen, display_name) VALUES (?1, ?1, 0, 0, ?2)
                 ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
            )?
            .execute(params![user.as_str(), name])?;
        Ok(())
    }

    pub fn display_name(&self, user: &UserId) -> StoreResult<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT display_name FROM users WHERE id = ?1")?
            .query_row(params![user.as_str()], |row| row.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    pub fn user_exists(&self, user: &UserId) -> StoreResult<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
            .query_row(params![user.as_str()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Finds a customer by platform and external id, creating them, or updating the
    /// names and picture given.
    pub fn upsert_customer(&mut self, new: &NewCustomer<'_>, now: Micros) -> StoreResult<Customer> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO customers (source, external_id, first_name, last_name, profile_picture, created_at)
                 VALUES (?1, ?2, coalesce(?3, ''), coalesce(?4, ''), ?5, ?6)
                 ON CONFLICT (source, external_id) DO UPDATE SET
                     first_name = coalesce(?3, first_name),
                     last_name = coalesce(?4, last_name),
                     profile_picture = coalesce(?5, profile_picture)",
            )?
            .execute(params![new.source, new.external_id, new.first_name, new.last_name, new.profile_picture, now])?;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, source, external_id, first_name, last_name, profile_picture FROM customers
                 WHERE source = ?1 AND external_id = ?2",
            )?
            .query_row(params![new.source, new.external_id], |row| {
                Ok(Customer {
                    id: row.get(0)?,
                    source: row.get(1)?,
                    external_id: row.get(2)?,
                    first_name: row.get(3)?,
                    last_name: row.get(4)?,
                    profile_picture: row.get(5)?,
                })
            })?)
    }

    /// The customer's newest support conversation that is not closed.
    pub fn open_support_conversation(&mut self, customer_id: i64) -> StoreResult<Option<Conversation>> {
        self.write_touched()?;
        Ok(self
            .conn
            .prepare_cached(&format!(
                "{CONVERSATION_SELECT} WHERE c.kind = 'support' AND c.customer_id = ?1 AND c.status <> 'closed'
                 ORDER BY c.updated_at DESC, c.id DESC LIMIT 1"
            ))?
            .query_row(params![customer_id], conversation_from_row)
            .optional()?)
    }

    /// An agent replied: the customer's earlier messages are answered.
    pub fn mark_customer_messages_answered(&mut self, conversation_id: i64) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "UPDATE messages SET is_answered = 1
                 WHERE conversation_id = ?1 AND message_type = 'customer' AND is_answered = 0",
            )?
            .execute(params![conversation_id])?;
        Ok(())
    }

    /// Records that a user read one message (once). Returns false when it was recorded
    /// before. The user's read position moves forward to it.
    pub fn record_read(&mut self, message: &StoredMessage, user: &UserId, now: Micros) -> StoreResult<bool> {
        self.ensure_transaction()?;
        let inserted = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO message_reads (message_id, user_id, read_at) VALUES (?1, ?2, ?3)")?
            .execute(params![message.id, user.as_str(), now])?;
        self.advance_read(message.conversation_id, user, message.id)?;
        Ok(inserted == 1)
    }

    /// Moves a member's read position forward (never back) to `message_id`.
    pub fn advance_read(&mut self, conversation_id: i64, user: &UserId, message_id: i64) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "UPDATE conversation_members SET last_read_message_id = max(last_read_message_id, ?3)
                 WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .execute(params![conversation_id, user.as_str(), message_id])?;
        Ok(())
    }

    pub fn latest_message_id(&self, conversation_id: i64) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT coalesce(max(id), 0) FROM messages WHERE conversation_id = ?1")?
            .query_row(params![conversation_id], |row| row.get(0))?)
    }

    /// The conversations of one kind a user is a member of, newest activity first, with
    /// their last message and the user's unread count.
    pub fn conversations_of(&mut self, user: &UserId, kind: ConversationKind) -> StoreResult<Vec<ConversationSummary>> {
        self.write_touched()?;
        let mut statement = self.conn.prepare_cached(&format!(
            "{CONVERSATION_SELECT}
             JOIN conversation_members cm ON cm.conversation_id = c.id AND cm.user_id = ?1
             WHERE c.kind = ?2
             ORDER BY c.updated_at DESC, c.id DESC"
        ))?;
        let conversations: Vec<Conversation> = statement
            .query_map(params![user.as_str(), kind.as_sql()], conversation_from_row)?
            .collect::<Result<_, _>>()?;
        let mut summaries = Vec::with_capacity(conversations.len());
        for conversation in conversations {
            let last_message = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 ORDER BY id DESC LIMIT 1"
                ))?
                .query_row(params![conversation.id], message_from_row)
                .optional()?;
            let unread_count = self.unread_count(conversation.id, user)?;
            summaries.push(ConversationSummary { conversation, last_message, unread_count });
        }
        Ok(summaries)
    }

    /// Messages after the member's read position that someone else wrote.
    pub fn unread_count(&self, conversation_id: i64, user: &UserId) -> StoreResult<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM messages m
                 JOIN conversation_members cm ON cm.conversation_id = m.conversation_id AND cm.user_id = ?2
                 WHERE m.conversation_id = ?1 AND m.id > cm.last_read_message_id
                   AND (m.sender_id IS NULL OR m.sender_id <> ?2)",
            )?
            .query_row(params![conversation_id, user.as_str()], |row| row.get(0))?)
    }

    /// The 1:1 conversation of two users, created (with both as members) when missing.
    pub fn direct_conversation(&mut self, a: &UserId, b: &UserId, now: Micros) -> StoreResult<i64> {
        let key = direct_key(a, b);
        if let Some(id) = self.conversation_id(ConversationKind::Direct, &key)? {
            return Ok(id);
        }
        let id = self.create_conversation(
            &NewConversation {
                kind: ConversationKind::Direct,
                key: &key,
                title: "",
                status: "active",
                priority: 0,
                customer_id: None,
            },
            now,
        )?;
        self.set_members(id, &[a.clone(), b.clone()])?;
        Ok(id)
    }

    /// Direct messages to `user` they have not read, oldest first, at most `limit`.
    pub fn unread_direct_messages(&self, user: &UserId, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                 SELECT m.id FROM conversation_members cm
                 JOIN conversations c ON c.id = cm.conversation_id AND c.kind = 'direct'
                 JOIN messages m ON m.conversation_id = cm.conversation_id AND m.id > cm.last_read_message_id
                 WHERE cm.user_id = ?1 AND m.sender_id <> ?1
                 ORDER BY m.id LIMIT ?2
             ) ORDER BY id"
        ))?;
        let rows = statement.query_map(params![user.as_str(), limit as i64], message_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;

    #[test]
    fn direct_keys_are_symmetric_and_unambiguous() {
        let (a, b) = (UserId::new("5"), UserId::new("7"));
        assert_eq!(direct_key(&a, &b), direct_key(&b, &a));
        assert_ne!(
            direct_key(&UserId::new("1|2"), &UserId::new("3")),
            direct_key(&UserId::new("1"), &UserId::new("2|3"))
        );
    }

    #[test]
    fn unread_counts_follow_read_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db"), false).unwrap();
        let (ann, bob) = (UserId::new("1"), UserId::new("2"));
        let pair = store.direct_conversation(&ann, &bob, 1).unwrap();
        assert_eq!(pair, store.direct_conversation(&bob, &ann, 1).unwrap());
        let first = store.insert_message(NewMessage::text(pair, (&ann, "ann"), "one"), 2).unwrap();
        store.insert_message(NewMessage::text(pair, (&ann, "ann"), "two"), 3).unwrap();
        store.insert_message(NewMessage::text(pair, (&bob, "bob"), "mine"), 4).unwrap();
        assert_eq!(store.unread_count(pair, &bob).unwrap(), 2);
        assert_eq!(store.unread_direct_messages(&bob, 10).unwrap().len(), 2);
        assert!(store.record_read(&first, &bob, 5).unwrap());
        assert!(!store.record_read(&first, &bob, 6).unwrap(), "a second receipt is not recorded");
        assert_eq!(store.unread_count(pair, &bob).unwrap(), 1);
        let latest = store.latest_message_id(pair).unwrap();
        store.advance_read(pair, &bob, latest).unwrap();
        store.advance_read(pair, &bob, first.id).unwrap();
        assert_eq!(store.unread_count(pair, &bob).unwrap(), 0, "read positions never move back");
        assert!(store.unread_direct_messages(&bob, 10).unwrap().is_empty());
    }
}
