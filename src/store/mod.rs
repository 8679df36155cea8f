//! SQLite: opening the file, migrations, typed queries and group commit. The only code
//! that knows SQL.
//!
//! The database is in WAL mode. Writes made during one event-loop turn share one
//! transaction, opened lazily by the first write (`ensure_transaction`) and committed
//! by the server at the end of the turn (`commit`), before anything of that turn is
//! sent to any client. Reads inside the turn see the turn's own writes.

mod checkpoint;
mod conversations;
mod migrations;
mod notifications;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{Micros, UserId};

pub use conversations::{Conversation, ConversationSummary, Customer, NewConversation, NewCustomer, direct_key};
pub use migrations::MIGRATIONS;
pub use notifications::{BankingMessage, FraudAlert, NewBankingMessage, NewNotification, Notification};

#[derive(Debug)]
pub enum StoreError {
    /// The file could not be opened or is not a database: fatal at start-up.
    Open(String),
    /// A query failed: the turn's writes are rolled back and its deliveries dropped.
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(message) => f.write_str(message),
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The kinds of conversation; each is served by one seed protocol family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// 004: open rooms, created by the first connection.
    Room,
    /// 001: member-only, created through the server API.
    Consultation,
    /// 002: member-only, created through the server API or by an inbound message.
    Support,
    /// 003: the two users of a 1:1 pair, created by the first message.
    Direct,
}

impl ConversationKind {
    pub fn as_sql(self) -> &'static str {
        match self {
            ConversationKind::Room => "room",
            ConversationKind::Consultation => "consultation",
            ConversationKind::Support => "support",
            ConversationKind::Direct => "direct",
        }
    }

    pub fn from_sql(kind: &str) -> Option<ConversationKind> {
        match kind {
            "room" => Some(ConversationKind::Room),
            "consultation" => Some(ConversationKind::Consultation),
            "support" => Some(ConversationKind::Support),
            "direct" => Some(ConversationKind::Direct),
            _ => None,
        }
    }
}

/// A stored chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: i64,
    pub conversation_id: i64,
    pub sender_id: Option<UserId>,
    pub sender_name: String,
    pub content: String,
    pub message_type: String,
    pub created_at: Micros,
    pub customer_id: Option<i64>,
    pub is_ai_response: bool,
    pub is_answered: bool,
}

/// A message to store. `sender` is `None` for messages from a customer or the system.
pub struct NewMessage<'a> {
    pub conversation_id: i64,
    pub sender: Option<(&'a UserId, &'a str)>,
    pub content: &'a str,
    pub message_type: &'a str,
    pub customer_id: Option<i64>,
    pub is_ai_response: bool,
    pub is_answered: bool,
}

impl<'a> NewMessage<'a> {
    /// A plain text message from a user.
    pub fn text(conversation_id: i64, sender: (&'a UserId, &'a str), content: &'a str) -> NewMessage<'a> {
        NewMessage {
            conversation_id,
            sender: Some(sender),
            content,
            message_type: "text",
            customer_id: None,
            is_ai_response: false,
            is_answered: false,
        }
    }
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, sender_id, sender_name, content, message_type, created_at, customer_id, is_ai_response, is_answered";

pub struct Store {
    conn: Connection,
    in_transaction: bool,
    /// Writes since the last commit, for the commit-batch metric.
    writes_in_transaction: usize,
    /// Conversations that got messages this turn, with the newest time: their
    /// `updated_at` is written once per turn, at commit, not once per message.
    touched: Vec<(i64, Micros)>,
    /// Checkpoints the WAL off the event loop's thread; `None` for an in-memory database.
    checkpointer: Option<checkpoint::Checkpointer>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Stop the checkpoint thread first, so that closing the main connection (the
        // last one) checkpoints the WAL fully and removes it.
        self.checkpointer.take();
    }
}

impl Store {
    /// Opens (creating when missing) the database and applies pending migrations.
    pub fn open(path: &Path, sync_full: bool) -> StoreResult<Store> {
        Store::open_with(path, sync_full, checkpoint::RESTART_FRAMES)
    }

    fn open_with(path: &Path, sync_full: bool, restart_frames: i64) -> StoreResult<Store> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Open(format!("cannot open database {}: {e}", path.display())))?;
        let setup = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            if sync_full { "FULL" } else { "NORMAL" }
        );
        conn.execute_batch(&setup)
            .map_err(|e| StoreError::Open(format!("cannot use database {}: {e}", path.display())))?;
        migrations::apply(&conn)
            .map_err(|e| StoreError::Open(format!("cannot migrate database {}: {e}", path.display())))?;
        conn.set_prepared_statement_cache_capacity(64);
        // The bundled SQLite is built with STAT4, which re-prepares a cached statement
        // whenever a bound value might change its plan: measured, a quarter of the
        // server's CPU while clients connected. Our queries have one good plan each.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| StoreError::Open(format!("cannot configure database {}: {e}", path.display())))?;
        let in_memory = path.as_os_str() == ":memory:" || path.as_os_str().is_empty();
        let checkpointer = if in_memory {
            None
        } else {
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                .map_err(|e| StoreError::Open(format!("cannot configure database {}: {e}", path.display())))?;
            Some(checkpoint::Checkpointer::start(path, restart_frames).map_err(StoreError::Open)?)
        };
        Ok(Store { conn, in_transaction: false, writes_in_transaction: 0, touched: Vec::new(), checkpointer })
    }

    /// Opens the turn's transaction if it is not open yet.
    fn ensure_transaction(&mut self) -> StoreResult<()> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        }
        self.writes_in_transaction += 1;
        Ok(())
    }

    /// Commits the turn's writes. Returns how many writes the commit carried (0 when
    /// there was no transaction). On failure everything of the turn is rolled back.
    pub fn commit(&mut self) -> StoreResult<usize> {
        if !self.in_transaction {
            return Ok(0);
        }
        self.in_transaction = false;
        let writes = std::mem::take(&mut self.writes_in_transaction);
        if let Err(e) = self.write_touched().and_then(|()| Ok(self.conn.execute_batch("COMMIT")?)) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(writes)
    }

    /// Between turns: when the checkpoint thread fell behind the writes, copies the rest
    /// of the WAL into the database here, so that the next commit writes the WAL from its
    /// start (see `checkpoint.rs`). Costs the pages committed during one pass of that
    /// thread, at most twice a second.
    pub fn finish_checkpoint(&mut self) {
        if self.in_transaction || !self.checkpointer.as_ref().is_some_and(|c| c.take_behind()) {
            return;
        }
        if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("WAL checkpoint failed: {e}");
        }
    }

    /// Writes the turn's pending `updated_at` changes (at commit, and before a query that
    /// orders by activity).
    pub(crate) fn write_touched(&mut self) -> StoreResult<()> {
        for (conversation_id, at) in std::mem::take(&mut self.touched) {
            self.conn
                .prepare_cached("UPDATE conversations SET updated_at = max(updated_at, ?2) WHERE id = ?1")?
                .execute(params![conversation_id, at])?;
        }
        Ok(())
    }

    /// Starts a unit inside the turn's transaction that can be undone on its own (a
    /// server API request that fails half way). Savepoints do not nest here.
    pub fn begin_unit(&mut self) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn.execute_batch("SAVEPOINT unit")?;
        Ok(())
    }

    /// Keeps the unit's writes (they commit with the turn).
    pub fn keep_unit(&mut self) -> StoreResult<()> {
        self.conn.execute_batch("RELEASE unit")?;
        Ok(())
    }

    /// Undoes the unit's writes; the rest of the turn stays.
    pub fn undo_unit(&mut self) {
        // `touched` keeps its entries: an updated_at moved for nothing is harmless.
        let _ = self.conn.execute_batch("ROLLBACK TO unit; RELEASE unit");
    }

    /// Abandons the turn's writes (a failed commit rolls back by itself; this is for tests).
    #[cfg(test)]
    pub fn rollback(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            self.writes_in_transaction = 0;
            self.touched.clear();
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    pub fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
            .query_row(params![key], |row| row.get(0))
            .optional()?)
    }

    /// Stores a setting at once, outside the turn's transaction (start-up only).
    pub fn put_setting_now(&mut self, key: &str, value: &str) -> StoreResult<()> {
        debug_assert!(!self.in_transaction);
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Records a user seen on a verified token, keeping their latest display name.
    pub fn upsert_user(&mut self, id: &UserId, name: &str, now: Micros) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO users (id, name, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen",
            )?
            .execute(params![id.as_str(), name, now])?;
        Ok(())
    }

    /// The id of a conversation by kind and key, creating it when it does not exist.
    pub fn get_or_create_conversation(&mut self, kind: ConversationKind, key: &str, now: Micros) -> StoreResult<i64> {
        if let Some(id) = self.conversation_id(kind, key)? {
            return Ok(id);
        }
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES (?1, ?2, ?2, ?3, ?3)",
            )?
            .execute(params![kind.as_sql(), key, now])?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn conversation_id(&self, kind: ConversationKind, key: &str) -> StoreResult<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM conversations WHERE kind = ?1 AND key = ?2")?
            .query_row(params![kind.as_sql(), key], |row| row.get(0))
            .optional()?)
    }

    /// Stores a message in the turn's transaction and returns it with its id. The
    /// conversation's `updated_at` (its last activity) moves with it.
    pub fn insert_message(&mut self, message: NewMessage<'_>, now: Micros) -> StoreResult<StoredMessage> {
        self.ensure_transaction()?;
        let (sender_id, sender_name) = match message.sender {
            Some((id, name)) => (Some(id.as_str()), name),
            None => (None, ""),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO messages (conversation_id, sender_id, sender_name, content, message_type, created_at,
                                       customer_id, is_ai_response, is_answered)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                message.conversation_id,
                sender_id,
                sender_name,
                message.content,
                message.message_type,
                now,
                message.customer_id,
                message.is_ai_response,
                message.is_answered
            ])?;
        let id = self.conn.last_insert_rowid();
        match self.touched.iter_mut().find(|(c, _)| *c == message.conversation_id) {
            Some((_, at)) => *at = (*at).max(now),
            None => self.touched.push((message.conversation_id, now)),
        }
        Ok(StoredMessage {
            id,
            conversation_id: message.conversation_id,
            sender_id: message.sender.map(|(id, _)| id.clone()),
            sender_name: sender_name.to_string(),
            content: message.content.to_string(),
            message_type: message.message_type.to_string(),
            created_at: now,
            customer_id: message.customer_id,
            is_ai_response: message.is_ai_response,
            is_answered: message.is_answered,
        })
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub fn recent_messages(&self, conversation_id: i64, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM (
                 SELECT * FROM messages WHERE conversation_id = ?1 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id"
        ))?;
        let rows = statement.query_map(params![conversation_id, limit as i64], message_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn message(&self, id: i64) -> StoreResult<Option<StoredMessage>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"))?
            .query_row(params![id], message_from_row)
            .optional()?)
    }
}

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        sender_id: row.get::<_, Option<String>>(2)?.map(|s| UserId::new(&s)),
        sender_name: row.get(3)?,
        content: row.get(4)?,
        message_type: row.get(5)?,
        created_at: row.get(6)?,
        customer_id: row.get(7)?,
        is_ai_response: row.get(8)?,
        is_answered: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), false).unwrap();
        (dir, store)
    }

    #[test]
    fn group_commit_keeps_a_turns_writes_together() {
        let (dir, mut store) = temp_store();
        let user = UserId::new("1");
        let room = store.get_or_create_conversation(ConversationKind::Room, "lobby", 1).unwrap();
        for i in 0..3 {
            store.insert_message(NewMessage::text(room, (&user, "ann"), &format!("m{i}")), 2).unwrap();
        }
        assert_eq!(store.commit().unwrap(), 4);
        store.insert_message(NewMessage::text(room, (&user, "ann"), "lost"), 3).unwrap();
        store.rollback();
        drop(store);
        let store = Store::open(&dir.path().join("t.db"), false).unwrap();
        let history = store.recent_messages(room, 2).unwrap();
        let contents: Vec<_> = history.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["m1", "m2"]);
    }

    #[test]
    fn reopening_applies_no_migration_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Store::open(&path, false).unwrap());
        let store = Store::open(&path, true).unwrap();
        let applied: i64 = store.conn.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(applied as usize, MIGRATIONS.len());
    }

    #[test]
    fn steady_writes_do_not_grow_the_wal_without_end() {
        // Commits every few milliseconds without a pause, as under steady load, while the
        // checkpoint thread runs: the WAL must still be written from its start again once
        // it reaches the threshold (here 200 frames instead of 16,384).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut store = Store::open_with(&path, false, 200).unwrap();
        let user = UserId::new("1");
        let room = store.get_or_create_conversation(ConversationKind::Room, "lobby", 1).unwrap();
        store.commit().unwrap();
        let wal = dir.path().join("t.db-wal");
        let started = std::time::Instant::now();
        let (mut written, mut largest) = (0, 0);
        while started.elapsed() < std::time::Duration::from_secs(4) {
            for _ in 0..4 {
                store.insert_message(NewMessage::text(room, (&user, "ann"), &"x".repeat(300)), 2).unwrap();
                written += 1;
            }
            store.commit().unwrap();
            store.finish_checkpoint();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // The WAL header's checkpoint sequence number counts the restarts.
        let header = std::fs::read(&wal).unwrap();
        let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let stored: i64 = store.conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, written);
        // A frame is a 4,096-byte page and a 24-byte header.
        let frames = largest / 4120;
        eprintln!("{written} messages: the WAL restarted {restarts} times, at most {frames} frames");
        assert!(restarts >= 3, "the WAL restarted {restarts} times in 4 s of writes");
        assert!(frames < 3 * 200 + 2 * written as u64 / 8, "the WAL grew to {frames} frames");
    }
}
