//! `PgStore`: the domain's `Storage` on PostgreSQL, for the engine's lanes. The same
//! operations as SQLite's `Store`, in PostgreSQL's dialect, inside a transaction the lane
//! opens and commits (`begin`, `commit`, `rollback`).
//!
//! What differs from SQLite, on purpose:
//! - **Seqs are taken in the database.** `next_seq` bumps the stream's `streams` row in
//!   the transaction (an upsert that locks the row until commit), so every node numbers a
//!   stream from one counter, gap-free, in commit order. Nothing is kept in memory:
//!   `release_seq` does nothing, and a request whose event could not be stored must be
//!   undone with its unit (`undo_unit`, a savepoint), which the engine does for every
//!   request it runs here.
//! - **A conversation's last activity** (`updated_at`) moves with each message at once
//!   (SQLite defers it to the end of the turn).
//! - **Text may hold NUL,** which PostgreSQL's `text` cannot: free text (what clients
//!   and the backend write) is stored escaped (`enc`) and read back unescaped (`dec`),
//!   byte for byte as on SQLite.

use std::borrow::Cow;
use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use crate::model::{Micros, Seq, StreamId, UserId};
use crate::store::{
    BankingMessage, Conversation, ConversationKind, ConversationSummary, Customer, FraudAlert,
    MAX_RECENT_CONVERSATIONS, Missed, NewBankingMessage, NewConversation, NewCustomer, NewMessage, NewNotification,
    Notification, RecentConversation, Since, Storage, StoreError, StoreResult, StoredEvent, StoredMessage, direct_key,
};

/// The escape of `enc`: the last code point, a noncharacter no text needs.
const ESC: char = '\u{10FFFF}';

/// Text as stored: NUL becomes ESC "0", ESC itself ESC "1" (reversible, and free when
/// neither occurs).
pub(super) fn enc(text: &str) -> Cow<'_, str> {
    if !text.contains(['\0', ESC]) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0' => out.extend([ESC, '0']),
            ESC => out.extend([ESC, '1']),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn enc_opt(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(enc)
}

/// Text as it was written (see `enc`).
fn dec(text: String) -> String {
    if !text.contains(ESC) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == ESC) {
            (_, true) => match chars.next() {
                Some('0') => out.push('\0'),
                Some('1') => out.push(ESC),
                Some(other) => out.extend([ESC, other]),
                None => out.push(ESC),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn text(row: &Row, index: usize) -> String {
    dec(row.get(index))
}

fn opt_text(row: &Row, index: usize) -> Option<String> {
    row.get::<_, Option<String>>(index).map(dec)
}

/// How deep `replies` nest inside a banking message (as on SQLite).
const MAX_REPLY_DEPTH: usize = 8;

const MESSAGE_COLUMNS: &str = "id, conversation_id, sender_id, sender_name, content, message_type, created_at, \
                               customer_id, is_ai_response, is_answered, seq";
const CONVERSATION_SELECT: &str = "SELECT c.id, c.kind, c.key, c.title, c.status, c.priority, c.created_at, \
                                   c.updated_at, cu.id, cu.source, cu.external_id, cu.first_name, cu.last_name, \
                                   cu.profile_picture FROM conversations c LEFT JOIN customers cu ON cu.id = c.customer_id";
const NOTIFICATION_COLUMNS: &str = "id, user_id, category, title, message, link, is_read, read_at, created_at";
const ALERT_COLUMNS: &str = "id, user_id, message, severity, is_resolved, resolved_at, created_at";
const BANKING_COLUMNS: &str = "id, user_id, subject, body, is_read, read_at, thread_id, parent_id, created_at";

pub struct PgStore {
    client: Client,
    /// Prepared statements by their SQL: one round trip each, once per connection.
    statements: HashMap<String, Statement>,
    /// The last unit was kept and its savepoint not released yet (`keep_unit`).
    unit_kept: bool,
    /// Webhook outbox rows of the transaction, written just before it commits
    /// (`flush_hooks`), and where each open unit's began.
    pub(super) hooks: Vec<super::webhooks::PendingHook>,
    pub(super) hook_marks: Vec<usize>,
    /// Conversations' kinds and keys, which never change (`conversation_key`).
    keys: HashMap<i64, (ConversationKind, String)>,
}

impl PgStore {
    pub fn new(client: Client) -> PgStore {
        PgStore {
            client,
            statements: HashMap::new(),
            unit_kept: false,
            hooks: Vec::new(),
            hook_marks: Vec::new(),
            keys: HashMap::new(),
        }
    }

    pub fn begin(&mut self) -> StoreResult<()> {
        self.unit_kept = false;
        self.clear_hooks();
        Ok(self.client.batch_execute("BEGIN")?)
    }

    /// Begins a transaction and locks the `streams` rows of `streams` in key order, in
    /// one round trip (a simple query: the keys are quoted here, with
    /// `standard_conforming_strings` on for the transaction).
    pub fn begin_locking(&mut self, streams: &[String]) -> StoreResult<()> {
        self.unit_kept = false;
        self.clear_hooks();
        let keys: Vec<String> =
            streams.iter().filter(|k| !k.contains('\0')).map(|k| format!("'{}'", k.replace('\'', "''"))).collect();
        if keys.len() < 2 {
            return Ok(self.client.batch_execute("BEGIN")?);
        }
        let sql = format!(
            "BEGIN; SET LOCAL standard_conforming_strings = on;
             SELECT 1 FROM streams WHERE id IN ({}) ORDER BY id FOR UPDATE",
            keys.join(",")
        );
        Ok(self.client.batch_execute(&sql)?)
    }

    pub fn commit(&mut self) -> StoreResult<()> {
        self.unit_kept = false;
        self.clear_hooks();
        Ok(self.client.batch_execute("COMMIT")?)
    }

    pub fn rollback(&mut self) -> StoreResult<()> {
        self.unit_kept = false;
        self.clear_hooks();
        Ok(self.client.batch_execute("ROLLBACK")?)
    }

    /// Whether the connection is lost.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The connection, for what is not a domain operation (migrations, settings).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The prepared statement of `sql`: `query`, `execute` and the others prepare each
    /// text once per connection.
    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Option<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_opt(&statement, params)?)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Row> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_one(&statement, params)?)
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, params)?)
    }

    fn conversation_by_id(&mut self, id: i64) -> StoreResult<Option<Conversation>> {
        let row = self.query_opt(&format!("{CONVERSATION_SELECT} WHERE c.id = $1"), &[&id])?;
        row.map(|r| conversation_from_row(&r)).transpose()
    }

    fn ensure_user(&mut self, user: &UserId) -> StoreResult<()> {
        self.execute(
            "INSERT INTO users (id, name, first_seen, last_seen) VALUES ($1, $1, 0, 0) ON CONFLICT (id) DO NOTHING",
            &[&user.as_str()],
        )?;
        Ok(())
    }

    fn unread_count(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<i64> {
        let row = self.query_one(
            "SELECT count(*) FROM messages m
             JOIN conversation_members cm ON cm.conversation_id = m.conversation_id AND cm.user_id = $2
             WHERE m.conversation_id = $1 AND m.id > cm.last_read_message_id
               AND (m.sender_id IS NULL OR m.sender_id <> $2)",
            &[&conversation_id, &user.as_str()],
        )?;
        Ok(row.get(0))
    }

    fn load_replies(&mut self, message: &mut BankingMessage, depth: usize) -> StoreResult<()> {
        if depth == 0 {
            return Ok(());
        }
        let rows = self.query(
            &format!("SELECT {BANKING_COLUMNS} FROM banking_messages WHERE parent_id = $1 ORDER BY id"),
            &[&message.id],
        )?;
        message.replies = rows.iter().map(banking_from_row).collect();
        for reply in &mut message.replies {
            self.load_replies(reply, depth - 1)?;
        }
        Ok(())
    }
}

fn flag(row: &Row, index: usize) -> bool {
    row.get::<_, i32>(index) != 0
}

fn conversation_from_row(row: &Row) -> StoreResult<Conversation> {
    let kind: String = row.get(1);
    let customer = row.get::<_, Option<i64>>(8).map(|id| Customer {
        id,
        source: text(row, 9),
        external_id: text(row, 10),
        first_name: text(row, 11),
        last_name: text(row, 12),
        profile_picture: opt_text(row, 13),
    });
    Ok(Conversation {
        id: row.get(0),
        kind: ConversationKind::from_sql(&kind).ok_or(StoreError::NotFound("conversation kind"))?,
        key: row.get(2),
        title: text(row, 3),
        status: text(row, 4),
        priority: row.get(5),
        created_at: row.get(6),
        updated_at: row.get(7),
        customer,
    })
}

fn message_from_row(row: &Row) -> StoredMessage {
    StoredMessage {
        id: row.get(0),
        conversation_id: row.get(1),
        sender_id: row.get::<_, Option<String>>(2).map(|s| UserId::new(&s)),
        sender_name: text(row, 3),
        content: text(row, 4),
        message_type: row.get(5),
        created_at: row.get(6),
        customer_id: row.get(7),
        is_ai_response: flag(row, 8),
        is_answered: flag(row, 9),
        seq: row.get(10),
    }
}

fn notification_from_row(row: &Row) -> Notification {
    Notification {
        id: row.get(0),
        user_id: UserId::new(row.get(1)),
        category: text(row, 2),
        title: text(row, 3),
        message: text(row, 4),
        link: opt_text(row, 5),
        is_read: flag(row, 6),
        read_at: row.get(7),
        created_at: row.get(8),
    }
}

fn alert_from_row(row: &Row) -> FraudAlert {
    FraudAlert {
        id: row.get(0),
        user_id: UserId::new(row.get(1)),
        message: text(row, 2),
        severity: row.get(3),
        is_resolved: flag(row, 4),
        resolved_at: row.get(5),
        created_at: row.get(6),
    }
}

fn banking_from_row(row: &Row) -> BankingMessage {
    BankingMessage {
        id: row.get(0),
        user_id: UserId::new(row.get(1)),
        subject: text(row, 2),
        body: text(row, 3),
        is_read: flag(row, 4),
        read_at: row.get(5),
        thread_id: text(row, 6),
        parent_id: row.get(7),
        created_at: row.get(8),
        replies: Vec::new(),
    }
}

impl Storage for PgStore {
    fn next_seq(&mut self, stream: &StreamId, now: Micros) -> StoreResult<Seq> {
        let row = self.query_one(
            "INSERT INTO streams (id, last_seq, updated_at) VALUES ($1, 1, $2)
             ON CONFLICT (id) DO UPDATE SET last_seq = streams.last_seq + 1,
                                            updated_at = greatest(streams.updated_at, excluded.updated_at)
             RETURNING last_seq",
            &[&stream.key(), &now],
        )?;
        Ok(row.get(0))
    }

    fn next_seqs(&mut self, stream: &StreamId, n: usize, now: Micros) -> StoreResult<Seq> {
        let n = n as i64;
        let row = self.query_one(
            "INSERT INTO streams (id, last_seq, updated_at) VALUES ($1, $3, $2)
             ON CONFLICT (id) DO UPDATE SET last_seq = streams.last_seq + $3,
                                            updated_at = greatest(streams.updated_at, excluded.updated_at)
             RETURNING last_seq",
            &[&stream.key(), &now, &n],
        )?;
        Ok(row.get(0))
    }

    fn insert_messages(&mut self, messages: &[NewMessage<'_>], now: Micros) -> StoreResult<Vec<StoredMessage>> {
        // The rows come back by (conversation, seq), which needs a seq on each.
        if messages.len() < 2 || messages.iter().any(|m| m.seq.is_none()) {
            return messages.iter().map(|message| self.insert_message(*message, now)).collect();
        }
        let column = |f: &dyn Fn(&NewMessage<'_>) -> String| messages.iter().map(f).collect::<Vec<String>>();
        let conversations: Vec<i64> = messages.iter().map(|m| m.conversation_id).collect();
        let sender_ids: Vec<Option<&str>> = messages.iter().map(|m| m.sender.map(|(id, _)| id.as_str())).collect();
        let sender_names = column(&|m| enc(m.sender.map_or("", |(_, name)| name)).into_owned());
        let contents = column(&|m| enc(m.content).into_owned());
        let types = column(&|m| m.message_type.to_string());
        let customers: Vec<Option<i64>> = messages.iter().map(|m| m.customer_id).collect();
        let ai: Vec<i32> = messages.iter().map(|m| i32::from(m.is_ai_response)).collect();
        let answered: Vec<i32> = messages.iter().map(|m| i32::from(m.is_answered)).collect();
        let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap_or(0)).collect();
        let mut touched = conversations.clone();
        touched.sort_unstable();
        touched.dedup();
        // One statement: every row, and each conversation's `updated_at`.
        let rows = self.query(
            "WITH m AS (
                 INSERT INTO messages (conversation_id, sender_id, sender_name, content, message_type, created_at,
                                       customer_id, is_ai_response, is_answered, seq)
                 SELECT c, s, n, t, ty, $10, cu, ai, an, sq
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                             $7::int[], $8::int[], $9::bigint[]) AS u(c, s, n, t, ty, cu, ai, an, sq)
                 RETURNING id, conversation_id, seq),
             c AS (UPDATE conversations SET updated_at = greatest(updated_at, $10) WHERE id = ANY($11))
             SELECT id, conversation_id, seq FROM m",
            &[
                &conversations,
                &sender_ids,
                &sender_names,
                &contents,
                &types,
                &customers,
                &ai,
                &answered,
                &seqs,
                &now,
                &touched,
            ],
        )?;
        let ids: HashMap<(i64, i64), i64> =
            rows.iter().map(|r| ((r.get::<_, i64>(1), r.get::<_, i64>(2)), r.get::<_, i64>(0))).collect();
        messages
            .iter()
            .map(|m| {
                let id = ids.get(&(m.conversation_id, m.seq.unwrap_or(0))).copied();
                Ok(m.stored(id.ok_or(StoreError::NotFound("a message just inserted"))?, now))
            })
            .collect()
    }

    fn release_seq(&mut self, _stream: &StreamId, _seq: Seq) {
        // Given back by undoing the request's unit (see the module's comment).
    }

    fn last_seq(&mut self, stream: &StreamId) -> StoreResult<Seq> {
        let row = self.query_one("SELECT coalesce(max(last_seq), 0) FROM streams WHERE id = $1", &[&stream.key()])?;
        Ok(row.get(0))
    }

    fn insert_event(&mut self, stream: &StreamId, seq: Seq, kind: &str, payload: &str, now: Micros) -> StoreResult<()> {
        self.execute(
            "INSERT INTO events (stream, seq, kind, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&stream.key(), &seq, &kind, &payload, &now],
        )?;
        Ok(())
    }

    fn events_since(&mut self, stream: &StreamId, since: Seq, limit: usize) -> StoreResult<Since> {
        let last = self.last_seq(stream)?;
        if let Some(answer) = Since::without_reading(since, last, limit) {
            return Ok(answer);
        }
        let rows = self.query(
            "SELECT seq, kind, payload FROM events WHERE stream = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&stream.key(), &since, &(limit as i64)],
        )?;
        let mut missed: Vec<Missed> = rows
            .iter()
            .map(|r| Missed::Event(StoredEvent { seq: r.get(0), kind: r.get(1), payload: r.get(2) }))
            .collect();
        if let StreamId::Conversation(id) = stream {
            let rows = self.query(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                &[id, &since, &(limit as i64)],
            )?;
            missed.extend(rows.iter().map(|r| Missed::Message(message_from_row(r))));
            missed.sort_by_key(Missed::seq);
        }
        Ok(Since::from_missed(missed, since, last))
    }

    // A unit kept is released with the next unit's start, in the same round trip (or
    // by COMMIT, which releases every savepoint): a batch's request costs one round trip
    // less.
    fn begin_unit(&mut self) -> StoreResult<()> {
        let sql = if std::mem::take(&mut self.unit_kept) {
            "RELEASE SAVEPOINT unit; SAVEPOINT unit"
        } else {
            "SAVEPOINT unit"
        };
        self.client.batch_execute(sql)?;
        self.mark_hooks();
        Ok(())
    }

    fn keep_unit(&mut self) -> StoreResult<()> {
        self.unit_kept = true;
        self.keep_hooks();
        Ok(())
    }

    fn undo_unit(&mut self) {
        self.unit_kept = false;
        self.undo_hooks();
        if let Err(e) = self.client.batch_execute("ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit") {
            log::warn!("PostgreSQL: cannot undo a unit (the batch fails): {e}");
        }
    }

    fn insert_hook(&mut self, kind: &str, stream: &str, seq: Option<Seq>, data: &str, now: Micros) -> StoreResult<()> {
        PgStore::insert_hook(self, kind, stream, seq, data, now)
    }

    fn insert_hook_timer(&mut self, timer: &crate::store::NewTimer<'_>) -> StoreResult<()> {
        PgStore::insert_hook_timer(self, timer)
    }

    fn set_hook_online(&mut self, user: &UserId, online: bool) -> StoreResult<bool> {
        PgStore::set_hook_online(self, user, online)
    }

    fn hook_online_users(&mut self) -> StoreResult<Vec<UserId>> {
        PgStore::hook_online_users(self)
    }

    fn take_due_hook_timers(&mut self, now: Micros, limit: usize) -> StoreResult<Vec<crate::store::DueTimer>> {
        PgStore::take_due_hook_timers(self, now, limit)
    }

    fn unread_count(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<i64> {
        PgStore::unread_count(self, conversation_id, user)
    }

    fn kept_reply(&mut self, key: &str) -> StoreResult<Option<crate::store::KeptReply>> {
        let row = self.query_opt(
            "SELECT fingerprint, status, body, created_at FROM idempotency_keys WHERE key = $1",
            &[&enc(key)],
        )?;
        Ok(row.map(|r| crate::store::KeptReply {
            fingerprint: r.get(0),
            status: r.get::<_, i32>(1) as u16,
            body: dec(r.get(2)),
            created_at: r.get(3),
        }))
    }

    fn keep_reply(&mut self, key: &str, reply: &crate::store::KeptReply) -> StoreResult<bool> {
        // Another node's request with the same key, not committed yet, makes this wait
        // for it; then it inserted nothing.
        let kept = self.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,
                 body = excluded.body, created_at = excluded.created_at
             WHERE idempotency_keys.created_at < $6",
            &[
                &enc(key),
                &reply.fingerprint,
                &i32::from(reply.status),
                &enc(&reply.body),
                &reply.created_at,
                &(reply.created_at - crate::store::REPLY_KEPT),
            ],
        )?;
        Ok(kept > 0)
    }

    fn conversation_key(&mut self, id: i64) -> StoreResult<(ConversationKind, String)> {
        /// Conversations remembered at most (then forgotten all at once).
        const KEYS_KEPT: usize = 65_536;
        if let Some(known) = self.keys.get(&id) {
            return Ok(known.clone());
        }
        let conversation = self.existing_conversation(id)?;
        if self.keys.len() >= KEYS_KEPT {
            self.keys.clear();
        }
        self.keys.insert(id, (conversation.kind, conversation.key.clone()));
        Ok((conversation.kind, conversation.key))
    }

    fn upsert_user(&mut self, user: &UserId, name: &str, now: Micros) -> StoreResult<()> {
        self.execute(
            "INSERT INTO users (id, name, first_seen, last_seen) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen
             WHERE users.name IS DISTINCT FROM excluded.name OR users.last_seen < excluded.last_seen - 3600000000",
            &[&user.as_str(), &enc(name), &now],
        )?;
        Ok(())
    }

    fn user_exists(&mut self, user: &UserId) -> StoreResult<bool> {
        Ok(self.query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_str()])?.is_some())
    }

    fn set_display_name(&mut self, user: &UserId, name: &str) -> StoreResult<()> {
        self.execute(
            "INSERT INTO users (id, name, first_seen, last_seen, display_name) VALUES ($1, $1, 0, 0, $2)
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
            &[&user.as_str(), &enc(name)],
        )?;
        Ok(())
    }

    fn display_name(&mut self, user: &UserId) -> StoreResult<Option<String>> {
        let row = self.query_opt("SELECT display_name FROM users WHERE id = $1", &[&user.as_str()])?;
        Ok(row.and_then(|row| row.get::<_, Option<String>>(0)).map(dec))
    }

    fn get_or_create_conversation(&mut self, kind: ConversationKind, key: &str, now: Micros) -> StoreResult<i64> {
        if let Some(id) = self.conversation_id(kind, key)? {
            return Ok(id);
        }
        // Another node may create it at the same moment: the unique key decides.
        self.execute(
            "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ($1, $2, $2, $3, $3)
             ON CONFLICT (kind, key) DO NOTHING",
            &[&kind.as_sql(), &key, &now],
        )?;
        self.conversation_id(kind, key)?.ok_or(StoreError::NotFound("conversation"))
    }

    fn conversation_id(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<i64>> {
        let row =
            self.query_opt("SELECT id FROM conversations WHERE kind = $1 AND key = $2", &[&kind.as_sql(), &key])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn conversation(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<Conversation>> {
        let row = self
            .query_opt(&format!("{CONVERSATION_SELECT} WHERE c.kind = $1 AND c.key = $2"), &[&kind.as_sql(), &key])?;
        row.map(|r| conversation_from_row(&r)).transpose()
    }

    fn existing_conversation(&mut self, id: i64) -> StoreResult<Conversation> {
        self.conversation_by_id(id)?.ok_or(StoreError::NotFound("conversation"))
    }

    fn create_conversation(&mut self, new: &NewConversation<'_>, now: Micros) -> StoreResult<i64> {
        let row = self.query_one(
            "INSERT INTO conversations (kind, key, title, status, priority, customer_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
            &[&new.kind.as_sql(), &new.key, &enc(new.title), &enc(new.status), &new.priority, &new.customer_id, &now],
        )?;
        Ok(row.get(0))
    }

    fn direct_conversation(&mut self, a: &UserId, b: &UserId, now: Micros) -> StoreResult<i64> {
        let key = direct_key(a, b);
        if let Some(id) = self.conversation_id(ConversationKind::Direct, &key)? {
            return Ok(id);
        }
        let row = self.query_opt(
            "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ('direct', $1, '', $2, $2)
             ON CONFLICT (kind, key) DO NOTHING RETURNING id",
            &[&key, &now],
        )?;
        match row {
            Some(row) => {
                let id = row.get(0);
                self.set_members(id, &[a.clone(), b.clone()])?;
                Ok(id)
            }
            // Another node created the pair (with its members) meanwhile.
            None => self.conversation_id(ConversationKind::Direct, &key)?.ok_or(StoreError::NotFound("conversation")),
        }
    }

    fn open_support_conversation(&mut self, customer_id: i64) -> StoreResult<Option<Conversation>> {
        let row = self.query_opt(
            &format!(
                "{CONVERSATION_SELECT} WHERE c.kind = 'support' AND c.customer_id = $1 AND c.status <> 'closed'
                 ORDER BY c.updated_at DESC, c.id DESC LIMIT 1"
            ),
            &[&customer_id],
        )?;
        row.map(|r| conversation_from_row(&r)).transpose()
    }

    fn conversations_of(&mut self, user: &UserId, kind: ConversationKind) -> StoreResult<Vec<ConversationSummary>> {
        let rows = self.query(
            &format!(
                "{CONVERSATION_SELECT}
                 JOIN conversation_members cm ON cm.conversation_id = c.id AND cm.user_id = $1
                 WHERE c.kind = $2
                 ORDER BY c.updated_at DESC, c.id DESC"
            ),
            &[&user.as_str(), &kind.as_sql()],
        )?;
        let conversations = rows.iter().map(conversation_from_row).collect::<StoreResult<Vec<_>>>()?;
        let mut summaries = Vec::with_capacity(conversations.len());
        for conversation in conversations {
            let last_message = self
                .query_opt(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1"
                    ),
                    &[&conversation.id],
                )?
                .map(|r| message_from_row(&r));
            let unread_count = self.unread_count(conversation.id, user)?;
            summaries.push(ConversationSummary { conversation, last_message, unread_count });
        }
        Ok(summaries)
    }

    fn recent_conversations(&mut self, limit: usize) -> StoreResult<Vec<RecentConversation>> {
        let limit = limit.min(MAX_RECENT_CONVERSATIONS) as i64;
        let rows =
            self.query(&format!("{CONVERSATION_SELECT} ORDER BY c.updated_at DESC, c.id DESC LIMIT $1"), &[&limit])?;
        let conversations = rows.iter().map(conversation_from_row).collect::<StoreResult<Vec<_>>>()?;
        // Member counts in one more round trip, not one per conversation.
        let ids: Vec<i64> = conversations.iter().map(|c| c.id).collect();
        let counts: HashMap<i64, i64> = self
            .query(
                "SELECT conversation_id, count(*) FROM conversation_members WHERE conversation_id = ANY($1)
                 GROUP BY conversation_id",
                &[&ids],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok(conversations
            .into_iter()
            .map(|conversation| {
                let members = counts.get(&conversation.id).copied().unwrap_or(0);
                RecentConversation { conversation, members }
            })
            .collect())
    }

    fn members(&mut self, conversation_id: i64) -> StoreResult<Vec<UserId>> {
        let rows = self.query(
            "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY user_id",
            &[&conversation_id],
        )?;
        Ok(rows.iter().map(|r| UserId::new(r.get(0))).collect())
    }

    fn is_member(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<bool> {
        let row = self.query_opt(
            "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
            &[&conversation_id, &user.as_str()],
        )?;
        Ok(row.is_some())
    }

    fn set_members(&mut self, conversation_id: i64, members: &[UserId]) -> StoreResult<Vec<UserId>> {
        let current = self.members(conversation_id)?;
        let removed: Vec<UserId> = current.iter().filter(|u| !members.contains(u)).cloned().collect();
        for user in &removed {
            self.execute(
                "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation_id, &user.as_str()],
            )?;
        }
        for user in members {
            self.ensure_user(user)?;
            self.execute(
                "INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&conversation_id, &user.as_str()],
            )?;
        }
        Ok(removed)
    }

    fn upsert_customer(&mut self, new: &NewCustomer<'_>, now: Micros) -> StoreResult<Customer> {
        let row = self.query_one(
            "INSERT INTO customers (source, external_id, first_name, last_name, profile_picture, created_at)
             VALUES ($1, $2, coalesce($3, ''), coalesce($4, ''), $5, $6)
             ON CONFLICT (source, external_id) DO UPDATE SET
                 first_name = coalesce($3, customers.first_name),
                 last_name = coalesce($4, customers.last_name),
                 profile_picture = coalesce($5, customers.profile_picture)
             RETURNING id, source, external_id, first_name, last_name, profile_picture",
            &[
                &enc(new.source),
                &enc(new.external_id),
                &enc_opt(new.first_name),
                &enc_opt(new.last_name),
                &enc_opt(new.profile_picture),
                &now,
            ],
        )?;
        Ok(Customer {
            id: row.get(0),
            source: text(&row, 1),
            external_id: text(&row, 2),
            first_name: text(&row, 3),
            last_name: text(&row, 4),
            profile_picture: opt_text(&row, 5),
        })
    }

    fn insert_message(&mut self, message: NewMessage<'_>, now: Micros) -> StoreResult<StoredMessage> {
        let (sender_id, sender_name) = match message.sender {
            Some((id, name)) => (Some(id.as_str()), name),
            None => (None, ""),
        };
        // The conversation's `updated_at` moves in the same statement (one round trip).
        let row = self.query_one(
            "WITH m AS (
                 INSERT INTO messages (conversation_id, sender_id, sender_name, content, message_type, created_at,
                                       customer_id, is_ai_response, is_answered, seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id),
             c AS (UPDATE conversations SET updated_at = greatest(updated_at, $6) WHERE id = $1)
             SELECT id FROM m",
            &[
                &message.conversation_id,
                &sender_id,
                &enc(sender_name),
                &enc(message.content),
                &message.message_type,
                &now,
                &message.customer_id,
                &i32::from(message.is_ai_response),
                &i32::from(message.is_answered),
                &message.seq,
            ],
        )?;
        Ok(message.stored(row.get(0), now))
    }

    fn message(&mut self, id: i64) -> StoreResult<Option<StoredMessage>> {
        let row = self.query_opt(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"), &[&id])?;
        Ok(row.map(|r| message_from_row(&r)))
    }

    fn recent_messages(&mut self, conversation_id: i64, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        let rows = self.query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM (
                     SELECT * FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2
                 ) newest ORDER BY id"
            ),
            &[&conversation_id, &(limit as i64)],
        )?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    fn latest_message_id(&mut self, conversation_id: i64) -> StoreResult<i64> {
        let row = self
            .query_one("SELECT coalesce(max(id), 0) FROM messages WHERE conversation_id = $1", &[&conversation_id])?;
        Ok(row.get(0))
    }

    fn advance_read(&mut self, conversation_id: i64, user: &UserId, message_id: i64) -> StoreResult<()> {
        self.execute(
            "UPDATE conversation_members SET last_read_message_id = greatest(last_read_message_id, $3)
             WHERE conversation_id = $1 AND user_id = $2",
            &[&conversation_id, &user.as_str(), &message_id],
        )?;
        Ok(())
    }

    fn record_read(&mut self, message: &StoredMessage, user: &UserId, now: Micros) -> StoreResult<bool> {
        let inserted = self.execute(
            "INSERT INTO message_reads (message_id, user_id, read_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&message.id, &user.as_str(), &now],
        )?;
        self.advance_read(message.conversation_id, user, message.id)?;
        Ok(inserted == 1)
    }

    fn mark_customer_messages_answered(&mut self, conversation_id: i64) -> StoreResult<()> {
        self.execute(
            "UPDATE messages SET is_answered = 1
             WHERE conversation_id = $1 AND message_type = 'customer' AND is_answered = 0",
            &[&conversation_id],
        )?;
        Ok(())
    }

    fn unread_direct_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        let rows = self.query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                     SELECT m.id FROM conversation_members cm
                     JOIN conversations c ON c.id = cm.conversation_id AND c.kind = 'direct'
                     JOIN messages m ON m.conversation_id = cm.conversation_id AND m.id > cm.last_read_message_id
                     WHERE cm.user_id = $1 AND m.sender_id <> $1
                     ORDER BY m.id LIMIT $2
                 ) ORDER BY id"
            ),
            &[&user.as_str(), &(limit as i64)],
        )?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    fn insert_notification(&mut self, new: &NewNotification<'_>, now: Micros) -> StoreResult<Notification> {
        let row = self.query_one(
            "INSERT INTO notifications (user_id, category, title, message, link, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&new.user_id.as_str(), &enc(new.category), &enc(new.title), &enc(new.message), &enc_opt(new.link), &now],
        )?;
        Ok(Notification {
            id: row.get(0),
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

    fn mark_notification_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<(Notification, bool)>> {
        let marked = self.execute(
            "UPDATE notifications SET is_read = 1, read_at = $3 WHERE id = $1 AND user_id = $2 AND is_read = 0",
            &[&id, &user.as_str(), &now],
        )?;
        let row = self.query_opt(
            &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1 AND user_id = $2"),
            &[&id, &user.as_str()],
        )?;
        Ok(row.map(|r| (notification_from_row(&r), marked > 0)))
    }

    fn unread_notifications(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<Notification>> {
        let rows = self.query(
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM (
                     SELECT * FROM notifications WHERE user_id = $1 AND is_read = 0 ORDER BY id DESC LIMIT $2
                 ) newest ORDER BY id"
            ),
            &[&user.as_str(), &(limit as i64)],
        )?;
        Ok(rows.iter().map(notification_from_row).collect())
    }

    fn unread_notification_count(&mut self, user: &UserId) -> StoreResult<i64> {
        let row =
            self.query_one("SELECT count(*) FROM notifications WHERE user_id = $1 AND is_read = 0", &[&user.as_str()])?;
        Ok(row.get(0))
    }

    fn insert_fraud_alert(
        &mut self,
        user: &UserId,
        message: &str,
        severity: &str,
        now: Micros,
    ) -> StoreResult<FraudAlert> {
        let row = self.query_one(
            "INSERT INTO fraud_alerts (user_id, message, severity, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&user.as_str(), &enc(message), &severity, &now],
        )?;
        Ok(FraudAlert {
            id: row.get(0),
            user_id: user.clone(),
            message: message.to_string(),
            severity: severity.to_string(),
            is_resolved: false,
            resolved_at: None,
            created_at: now,
        })
    }

    fn fraud_alert(&mut self, id: i64) -> StoreResult<Option<FraudAlert>> {
        let row = self.query_opt(&format!("SELECT {ALERT_COLUMNS} FROM fraud_alerts WHERE id = $1"), &[&id])?;
        Ok(row.map(|r| alert_from_row(&r)))
    }

    fn resolve_fraud_alert(&mut self, id: i64, now: Micros) -> StoreResult<Option<FraudAlert>> {
        self.execute(
            "UPDATE fraud_alerts SET is_resolved = 1, resolved_at = $2 WHERE id = $1 AND is_resolved = 0",
            &[&id, &now],
        )?;
        self.fraud_alert(id)
    }

    fn unresolved_fraud_alerts(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<FraudAlert>> {
        let rows = self.query(
            &format!(
                "SELECT {ALERT_COLUMNS} FROM (
                     SELECT * FROM fraud_alerts WHERE user_id = $1 AND is_resolved = 0 ORDER BY id DESC LIMIT $2
                 ) newest ORDER BY id"
            ),
            &[&user.as_str(), &(limit as i64)],
        )?;
        Ok(rows.iter().map(alert_from_row).collect())
    }

    fn insert_banking_message(&mut self, new: &NewBankingMessage<'_>, now: Micros) -> StoreResult<BankingMessage> {
        let row = self.query_one(
            "INSERT INTO banking_messages (user_id, subject, body, thread_id, parent_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&new.user_id.as_str(), &enc(new.subject), &enc(new.body), &enc(new.thread_id), &new.parent_id, &now],
        )?;
        self.banking_message(row.get(0))?.ok_or(StoreError::NotFound("banking message"))
    }

    fn banking_message(&mut self, id: i64) -> StoreResult<Option<BankingMessage>> {
        let row = self.query_opt(&format!("SELECT {BANKING_COLUMNS} FROM banking_messages WHERE id = $1"), &[&id])?;
        match row {
            Some(row) => {
                let mut message = banking_from_row(&row);
                self.load_replies(&mut message, MAX_REPLY_DEPTH)?;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    fn mark_banking_message_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<BankingMessage>> {
        self.execute(
            "UPDATE banking_messages SET is_read = 1, read_at = $3 WHERE id = $1 AND user_id = $2 AND is_read = 0",
            &[&id, &user.as_str(), &now],
        )?;
        Ok(self.banking_message(id)?.filter(|m| &m.user_id == user))
    }

    fn unread_banking_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<BankingMessage>> {
        let rows = self.query(
            "SELECT id FROM (
                 SELECT id FROM banking_messages WHERE user_id = $1 AND is_read = 0 ORDER BY id DESC LIMIT $2
             ) newest ORDER BY id",
            &[&user.as_str(), &(limit as i64)],
        )?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            messages.extend(self.banking_message(row.get(0))?);
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_reads_back_byte_for_byte() {
        let esc = ESC.to_string();
        for text in ["", "plain", "\0", "a\0b\0", &esc, &format!("{esc}0"), &format!("\0{esc}1{esc}\0x")] {
            let stored = enc(text);
            assert!(!stored.contains('\0'), "{text:?}");
            assert_eq!(dec(stored.into_owned()), text);
        }
        assert!(matches!(enc("no escape needed"), Cow::Borrowed(_)));
    }
}
