//! SQLite: opening the file, migrations, typed queries and group commit. The only code
//! that knows SQL.
//!
//! The database is in WAL mode. Writes made during one event-loop turn share one
//! transaction, opened lazily by the first write (`ensure_transaction`) and committed
//! by the server at the end of the turn (`commit`), before anything of that turn is
//! sent to any client. Reads inside the turn see the turn's own writes.

pub mod backup;
mod checkpoint;
mod conversations;
mod file;
mod migrations;
mod notifications;
pub mod pg;
mod replies;
mod retention;
mod storage;
mod streams;
mod webhooks;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::config::DbCheck;
use crate::model::{Micros, Seq, UserId};

pub use conversations::{
    Conversation, ConversationSummary, Customer, MAX_RECENT_CONVERSATIONS, NewConversation, NewCustomer,
    RecentConversation, direct_key,
};
pub use migrations::MIGRATIONS;
pub use notifications::{BankingMessage, FraudAlert, NewBankingMessage, NewNotification, Notification};
pub use replies::{KeptReply, REPLY_KEPT};
pub use retention::{Live, Pruned};
pub use storage::Storage;
pub use streams::{Missed, Since, StoredEvent};
pub use webhooks::{DueTimer, HookRow, NewTimer, TimerKind, WebhookLog};

#[derive(Debug)]
pub enum StoreError {
    /// The file could not be opened or is not a database: fatal at start-up.
    Open(String),
    /// A query failed: the turn's writes are rolled back and its deliveries dropped.
    Sqlite(rusqlite::Error),
    /// The store cannot write now (the file is gone, or SQLite rolled the turn back after
    /// a failed write); the reason is ours, fit for a log line or a health check.
    Unavailable(String),
    /// A row the caller relied on is not there (what it was, in a few words).
    NotFound(&'static str),
    /// A PostgreSQL query failed, or its connection did.
    Postgres(postgres::Error),
}

impl StoreError {
    /// The store cannot be reached now (not a fault of the request): worth trying again
    /// later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }

    /// What went wrong in a few words of our own (never SQLite's wording), for
    /// `/healthz`.
    pub fn summary(&self) -> String {
        use rusqlite::ErrorCode;
        match self {
            StoreError::Open(_) => "cannot open the database".into(),
            StoreError::Unavailable(reason) => reason.clone(),
            StoreError::NotFound(what) => format!("{what} not found"),
            StoreError::Sqlite(e) => match e.sqlite_error_code() {
                Some(ErrorCode::DiskFull) => "disk full".into(),
                Some(ErrorCode::ReadOnly) => "the database is read-only".into(),
                Some(ErrorCode::SystemIoFailure) => "I/O error".into(),
                Some(ErrorCode::CannotOpen) => "cannot open the database file".into(),
                Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => "the database is damaged".into(),
                Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => "the database is locked".into(),
                _ => "a write failed".into(),
            },
            StoreError::Postgres(e) if e.is_closed() => "the connection to PostgreSQL is lost".into(),
            StoreError::Postgres(e) => match e.code() {
                Some(code) => format!("PostgreSQL refused a query ({})", code.code()),
                None => "PostgreSQL is unreachable".into(),
            },
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(message) => f.write_str(message),
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::Unavailable(reason) => write!(f, "database unavailable: {reason}"),
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::Postgres(e) => match e.as_db_error() {
                Some(db) => write!(f, "PostgreSQL: {} ({})", db.message(), db.code().code()),
                None => write!(f, "PostgreSQL: {e}"),
            },
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::Postgres(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The kinds of conversation; each is served by one seed protocol family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The seq of the event that delivered it on its stream (`None` before migration 4).
    pub seq: Option<Seq>,
}

/// A message to store. `sender` is `None` for messages from a customer or the system.
#[derive(Clone, Copy)]
pub struct NewMessage<'a> {
    pub conversation_id: i64,
    pub sender: Option<(&'a UserId, &'a str)>,
    pub content: &'a str,
    pub message_type: &'a str,
    pub customer_id: Option<i64>,
    pub is_ai_response: bool,
    pub is_answered: bool,
    /// The seq of the event that delivers it (from `Store::next_seq`).
    pub seq: Option<Seq>,
}

impl<'a> NewMessage<'a> {
    /// The message as stored under `id` at `now` (either store).
    pub fn stored(&self, id: i64, now: Micros) -> StoredMessage {
        StoredMessage {
            id,
            conversation_id: self.conversation_id,
            sender_id: self.sender.map(|(id, _)| id.clone()),
            sender_name: self.sender.map_or("", |(_, name)| name).to_string(),
            content: self.content.to_string(),
            message_type: self.message_type.to_string(),
            created_at: now,
            customer_id: self.customer_id,
            is_ai_response: self.is_ai_response,
            is_answered: self.is_answered,
            seq: self.seq,
        }
    }

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
            seq: None,
        }
    }
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, sender_id, sender_name, content, message_type, created_at, customer_id, is_ai_response, is_answered, seq";

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
    /// The locked database file (the server's store; `None` for `token` and in memory).
    file: Option<file::DbFile>,
    /// SQLite rolled this turn's transaction back by itself after a failed write (disk
    /// full, I/O error): every later write of the turn is refused, since outside a
    /// transaction each would commit on its own, and the commit fails.
    turn_failed: bool,
    /// Why writes fail, since the last failed commit; cleared by a commit or a probe
    /// that succeeds. `/healthz` reports it.
    write_error: Option<String>,
    /// The database file was removed or replaced while running: nothing written from
    /// now on would survive, so every write is refused until a restart.
    lost: Option<String>,
    /// When a failing store last tried a write of its own (see `sweep`).
    last_probe: Option<std::time::Instant>,
    /// Each stream's last seq, and what the turn moved (`streams.rs`).
    seqs: streams::Seqs,
    /// Webhook outbox rows written in the open transaction, and whether a commit since
    /// the last look stored some (the delivery thread is woken for them).
    hooks_in_turn: usize,
    hooks_committed: bool,
    /// Where retention's passes are (`retention.rs`).
    retention: retention::State,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush_streams() {
            log::warn!("cannot write the streams' positions at exit (they are recovered from the rows): {e}");
        }
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
        let in_memory = is_in_memory(path);
        if !in_memory {
            // Created private before SQLite sees it (see `file::create_private`); a file
            // that exists read-only is left to SQLite and `open_for_server` to judge.
            file::create_private(path)
                .or_else(|_| std::fs::File::open(path))
                .map_err(|e| StoreError::Open(format!("cannot open database {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Open(format!("cannot open database {}: {e}", path.display())))?;
        // A new database gives deleted pages back to the file system when retention asks
        // (`retention.rs`); this must be set before the first table is created.
        let empty: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| StoreError::Open(format!("cannot read database {}: {e}", path.display())))?;
        if empty == 0 {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(|e| StoreError::Open(format!("cannot configure database {}: {e}", path.display())))?;
        }
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
        let checkpointer = if in_memory {
            None
        } else {
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                .map_err(|e| StoreError::Open(format!("cannot configure database {}: {e}", path.display())))?;
            Some(checkpoint::Checkpointer::start(path, restart_frames).map_err(StoreError::Open)?)
        };
        Ok(Store {
            conn,
            in_transaction: false,
            writes_in_transaction: 0,
            touched: Vec::new(),
            checkpointer,
            file: None,
            turn_failed: false,
            write_error: None,
            lost: None,
            last_probe: None,
            seqs: streams::Seqs::default(),
            hooks_in_turn: 0,
            hooks_committed: false,
            retention: retention::State::default(),
        })
    }

    /// Opens the database for the server: the file is created 0600 and locked against a
    /// second server, checked when `check` asks for it, and must take a write, so that a
    /// read-only or damaged database stops start-up with a line naming the file instead
    /// of failing every client later.
    pub fn open_for_server(path: &Path, sync_full: bool, check: DbCheck) -> StoreResult<Store> {
        let file = if is_in_memory(path) { None } else { Some(file::DbFile::lock(path).map_err(StoreError::Open)?) };
        let mut store = Store::open(path, sync_full)?;
        store.file = file;
        if store.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StoreError::Open(format!("database {} is read-only", path.display())));
        }
        let pragma = match check {
            DbCheck::Off => None,
            DbCheck::Quick => Some("PRAGMA quick_check"),
            DbCheck::Full => Some("PRAGMA integrity_check"),
        };
        if let Some(pragma) = pragma {
            let started = std::time::Instant::now();
            let checked: rusqlite::Result<Vec<String>> =
                store.conn.prepare(pragma).and_then(|mut s| s.query_map([], |row| row.get::<_, String>(0))?.collect());
            let problems = match checked {
                Ok(problems) => problems,
                // Damage can stop the check itself.
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
                    ) =>
                {
                    vec![e.to_string()]
                }
                Err(e) => return Err(StoreError::Open(format!("cannot check database {}: {e}", path.display()))),
            };
            if problems.first().map(String::as_str) != Some("ok") {
                return Err(StoreError::Open(format!(
                    "database {} failed its integrity check ({} problems, the first: {}); restore it from a backup",
                    path.display(),
                    problems.len(),
                    problems.first().map_or("none reported", String::as_str)
                )));
            }
            log::info!("database {} passed {pragma} in {:.1} s", path.display(), started.elapsed().as_secs_f64());
        }
        let now = crate::model::now_micros().to_string();
        store
            .put_setting_now("last_start", &now)
            .map_err(|e| StoreError::Open(format!("cannot write database {}: {}", path.display(), e.summary())))?;
        Ok(store)
    }

    /// Opens the turn's transaction if it is not open yet.
    fn ensure_transaction(&mut self) -> StoreResult<()> {
        if let Some(reason) = &self.lost {
            return Err(StoreError::Unavailable(reason.clone()));
        }
        if self.turn_failed {
            return Err(StoreError::Unavailable("an earlier write of this turn failed".into()));
        }
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        } else if self.conn.is_autocommit() {
            // SQLite rolled the transaction back by itself after a failed write: nothing
            // of this turn is stored, and this write would commit on its own.
            self.turn_failed = true;
            return Err(StoreError::Unavailable("a write failed and the turn was rolled back".into()));
        }
        self.writes_in_transaction += 1;
        Ok(())
    }

    /// Writes begun since the turn started (each write of a turn adds one).
    pub fn writes_this_turn(&self) -> usize {
        self.writes_in_transaction
    }

    /// Commits the turn's writes. Returns how many writes the commit carried (0 when
    /// there was no transaction). On failure everything of the turn is rolled back.
    pub fn commit(&mut self) -> StoreResult<usize> {
        if !self.in_transaction {
            return Ok(0);
        }
        self.in_transaction = false;
        let writes = std::mem::take(&mut self.writes_in_transaction);
        let hooks = std::mem::take(&mut self.hooks_in_turn);
        let result = if std::mem::take(&mut self.turn_failed) || self.conn.is_autocommit() {
            Err(StoreError::Unavailable("a write failed and the turn was rolled back".into()))
        } else {
            self.write_touched().and_then(|()| Ok(self.conn.execute_batch("COMMIT")?))
        };
        if let Err(e) = result {
            self.touched.clear();
            self.seqs.rollback_turn();
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.writes_failing(&e);
            return Err(e);
        }
        self.streams_committed();
        self.writes_work();
        self.hooks_committed |= hooks > 0;
        Ok(writes)
    }

    fn writes_failing(&mut self, e: &StoreError) {
        let summary = e.summary();
        if self.write_error.is_none() {
            log::error!("database writes are failing ({summary}): {e}");
        }
        self.write_error = Some(summary);
    }

    fn writes_work(&mut self) {
        if self.write_error.take().is_some() {
            log::info!("database writes work again");
        }
    }

    /// Whether the store can write: `Err` says why not, in our words.
    pub fn health(&self) -> Result<(), String> {
        match (&self.lost, &self.write_error) {
            (Some(lost), _) => Err(lost.clone()),
            (None, Some(error)) => Err(format!("cannot write: {error}")),
            (None, None) => Ok(()),
        }
    }

    /// Between turns, twice a second: notices a database file that was removed or
    /// replaced, and while writes are failing, tries one small write a second, so that
    /// health recovers when the disk has room again even if no client writes.
    pub fn sweep(&mut self) {
        if self.lost.is_none()
            && let Some(Err(reason)) = self.file.as_ref().map(file::DbFile::still_there)
        {
            log::error!("{reason} while running: refusing every write from now on; restart switchboard to recreate it");
            self.lost = Some(reason);
        }
        if self.write_error.is_none() || self.lost.is_some() || self.in_transaction {
            return;
        }
        let now = std::time::Instant::now();
        if self.last_probe.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1)) {
            return;
        }
        self.last_probe = Some(now);
        let probe = self.conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO settings (key, value) VALUES ('write_probe', CAST(unixepoch() AS TEXT))
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value;
             COMMIT;",
        );
        match probe {
            Ok(()) => self.writes_work(),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.writes_failing(&StoreError::Sqlite(e));
            }
        }
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
            if let Some(posted) = &mut self.retention.posted {
                posted.insert(conversation_id);
            }
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
        self.seqs.begin_unit();
        Ok(())
    }

    /// Keeps the unit's writes (they commit with the turn).
    pub fn keep_unit(&mut self) -> StoreResult<()> {
        if self.turn_failed || self.conn.is_autocommit() {
            // The transaction is gone: RELEASE would start and commit one of its own.
            self.turn_failed = true;
            return Err(StoreError::Unavailable("a write failed and the turn was rolled back".into()));
        }
        self.conn.execute_batch("RELEASE unit")?;
        self.seqs.keep_unit();
        Ok(())
    }

    /// Undoes the unit's writes; the rest of the turn stays.
    pub fn undo_unit(&mut self) {
        self.seqs.undo_unit();
        if self.conn.is_autocommit() {
            // SQLite rolled everything back already; `commit` fails the turn.
            self.turn_failed |= self.in_transaction;
            return;
        }
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
            self.seqs.rollback_turn();
            drop(self.take_rewound());
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
    /// `last_seen` moves by the hour: a user who comes back within the hour with the same
    /// name changes no page, so that everyone reconnecting after a deploy costs no
    /// writes.
    pub fn upsert_user(&mut self, id: &UserId, name: &str, now: Micros) -> StoreResult<()> {
        self.ensure_transaction()?;
        self.conn
            .prepare_cached(
                "INSERT INTO users (id, name, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen
                 WHERE users.name IS NOT excluded.name OR users.last_seen < excluded.last_seen - 3600000000",
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
        let id = self.conn.last_insert_rowid();
        if kind == ConversationKind::Room {
            self.continue_pruned_room(id, key, now)?;
        }
        Ok(id)
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
                                                              customer_id, is_ai_response, is_answered, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                message.is_answered,
                message.seq
            ])?;
        let id = self.conn.last_insert_rowid();
        match self.touched.iter_mut().find(|(c, _)| *c == message.conversation_id) {
            Some((_, at)) => *at = (*at).max(now),
            None => self.touched.push((message.conversation_id, now)),
        }
        Ok(message.stored(id, now))
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

/// SQLite's names for a database that has no file.
fn is_in_memory(path: &Path) -> bool {
    path.as_os_str() == ":memory:" || path.as_os_str().is_empty()
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
        seq: row.get(10)?,
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
