//! `switchboard migrate --to URL` (design/cluster.md §5.12): copies a SQLite database
//! into an empty PostgreSQL database, for a deployment that outgrows one node.
//!
//! - **The source is at rest.** The SQLite file is opened read-only under a shared
//!   `flock`, which a running server's lock refuses (and which keeps one from starting
//!   meanwhile); every table is read in one read transaction, so the copy and the counts
//!   it is checked against are one snapshot. It must be at this binary's schema version.
//! - **The target is empty.** A database holding tables switchboard did not make is
//!   refused before anything is created in it; otherwise it is migrated, its tables are
//!   locked, and any row in any of them refuses the copy (a second run included).
//! - **All or nothing.** Every table is copied in one PostgreSQL transaction, in foreign
//!   key order, with its ids (binary `COPY`, streamed: a table never has to fit in
//!   memory); each identity then restarts past the largest id. The row count of every
//!   table is compared with SQLite's before the commit: a difference rolls everything
//!   back and is named.
//! - **Read back as written.** Free text goes through `store::enc`, as `PgStore` writes it
//!   (PostgreSQL's `text` cannot hold NUL), so a node reads every message byte for byte.
//! - **Streams are recomputed.** SQLite writes a stream's `streams` row twice a second
//!   and finds its true last seq from the rows after a crash (`store::streams`);
//!   PostgreSQL hands out seqs from the row alone. Each row is therefore the largest of
//!   the stored `last_seq`, the stream's events and the messages it numbered, so no seq
//!   already given is ever given again.

use std::borrow::Cow;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, Transaction};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::store::enc;

/// A failure: the exit code (2 for what the operator must change first, 1 otherwise)
/// and one line saying what happened.
pub type Failure = (i32, String);

/// One table copied as it is.
struct Table {
    name: &'static str,
    /// Its columns, named alike in both schemas.
    columns: &'static [&'static str],
    /// The columns of free text, stored escaped on PostgreSQL (`store::enc`), exactly
    /// those `PgStore` escapes when it writes them.
    free_text: &'static [&'static str],
    /// The order rows are copied in: ids ascending, so that a banking reply comes after
    /// the message it answers (foreign keys are checked row by row).
    order: &'static str,
    /// Its `id` is an identity on PostgreSQL, to restart past the copied ids.
    identity: bool,
}

/// In foreign key order; `streams` is computed (`STREAMS`), `batches` (PostgreSQL's
/// batch markers) has no SQLite counterpart and stays empty.
const TABLES: &[Table] = &[
    Table { name: "settings", columns: &["key", "value"], free_text: &[], order: "key", identity: false },
    Table {
        name: "users",
        columns: &["id", "name", "first_seen", "last_seen", "display_name"],
        free_text: &["name", "display_name"],
        order: "id",
        identity: false,
    },
    Table {
        name: "customers",
        columns: &["id", "source", "external_id", "first_name", "last_name", "profile_picture", "created_at"],
        free_text: &["source", "external_id", "first_name", "last_name", "profile_picture"],
        order: "id",
        identity: true,
    },
    Table {
        name: "conversations",
        columns: &["id", "kind", "key", "title", "status", "priority", "created_at", "updated_at", "customer_id"],
        free_text: &["title", "status"],
        order: "id",
        identity: true,
    },
    Table {
        name: "conversation_members",
        columns: &["conversation_id", "user_id", "last_read_message_id"],
        free_text: &[],
        order: "conversation_id, user_id",
        identity: false,
    },
    Table {
        name: "messages",
        columns: &[
            "id",
            "conversation_id",
            "sender_id",
            "sender_name",
            "content",
            "message_type",
            "created_at",
            "customer_id",
            "is_ai_response",
            "is_answered",
            "seq",
        ],
        free_text: &["sender_name", "content"],
        order: "id",
        identity: true,
    },
    Table {
        name: "message_reads",
        columns: &["message_id", "user_id", "read_at"],
        free_text: &[],
        order: "message_id, user_id",
        identity: false,
    },
    Table {
        name: "notifications",
        columns: &["id", "user_id", "category", "title", "message", "link", "is_read", "read_at", "created_at"],
        free_text: &["category", "title", "message", "link"],
        order: "id",
        identity: true,
    },
    Table {
        name: "fraud_alerts",
        columns: &["id", "user_id", "message", "severity", "is_resolved", "resolved_at", "created_at"],
        free_text: &["message"],
        order: "id",
        identity: true,
    },
    Table {
        name: "banking_messages",
        columns: &["id", "user_id", "subject", "body", "is_read", "read_at", "thread_id", "parent_id", "created_at"],
        free_text: &["subject", "body", "thread_id"],
        order: "id",
        identity: true,
    },
    // SQLite numbers events by rowid (commit order, which pruning follows); PostgreSQL
    // by `id`, an identity GENERATED ALWAYS, which `COPY` fills from its input.
    Table {
        name: "events",
        columns: &["id", "stream", "seq", "kind", "payload", "created_at"],
        free_text: &[],
        order: "rowid",
        identity: true,
    },
    // Webhook events not delivered yet, with their ids (the receiver deduplicates by
    // them); PostgreSQL's next id and the delivered cursor follow (`copy_webhook_state`).
    Table {
        name: "webhook_events",
        columns: &["id", "type", "stream", "seq", "created_at", "data"],
        free_text: &[],
        order: "id",
        identity: false,
    },
    Table {
        name: "webhook_timers",
        columns: &["id", "due", "kind", "stream", "seq", "ref_id", "conversation_id", "sender_id", "user_id", "data"],
        free_text: &[],
        order: "id",
        identity: true,
    },
    Table { name: "webhook_online", columns: &["user_id"], free_text: &[], order: "user_id", identity: false },
    // Server API replies kept by Idempotency-Key: a retry after the move still gets its.
    Table {
        name: "idempotency_keys",
        columns: &["key", "fingerprint", "status", "body", "created_at"],
        free_text: &["key", "body"],
        order: "key",
        identity: false,
    },
];

/// Each stream's true position in the SQLite database: the largest of its `streams` row,
/// its newest event and the messages numbered on it. A room's, consultation's or support
/// conversation's messages are events of the conversation's stream (`c:<id>`); a 1:1
/// message is numbered on its recipient's stream (`u:<id>`), the pair's other member.
const STREAMS: &str = "
    SELECT id, max(last_seq), max(updated_at) FROM (
        SELECT id, last_seq, updated_at FROM streams
        UNION ALL
        SELECT stream, max(seq), max(created_at) FROM events GROUP BY stream
        UNION ALL
        SELECT 'c:' || m.conversation_id, max(m.seq), max(m.created_at)
        FROM messages m JOIN conversations c ON c.id = m.conversation_id AND c.kind <> 'direct'
        WHERE m.seq IS NOT NULL GROUP BY m.conversation_id
        UNION ALL
        SELECT 'u:' || cm.user_id, max(m.seq), max(m.created_at)
        FROM messages m JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'direct'
        JOIN conversation_members cm ON cm.conversation_id = m.conversation_id AND cm.user_id IS NOT m.sender_id
        WHERE m.seq IS NOT NULL GROUP BY cm.user_id
    ) GROUP BY id ORDER BY id";

/// How long `migrate` waits for another session's lock on a target table.
const LOCK_TIMEOUT: &str = "10s";

/// The SQLite database to copy, open read-only and locked against a server.
pub struct Source {
    conn: Connection,
    path: PathBuf,
    _lock: File,
}

/// What a finished copy did.
pub struct Copied {
    pub rows: u64,
    pub tables: usize,
    pub elapsed: Duration,
}

impl Source {
    /// Opens the database at `path` for copying: it must exist, not be in use by a
    /// server, and be a switchboard database at this binary's schema version.
    pub fn open(path: &Path) -> Result<Source, Failure> {
        let shown = path.display();
        if !path.is_file() {
            return Err((
                2,
                format!("database {shown} does not exist; SWITCHBOARD_DB (--db) names the SQLite file to copy"),
            ));
        }
        let lock = crate::store::file::lock_shared(path).map_err(|e| (1, e))?;
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| (1, format!("cannot open database {shown}: {e}")))?;
        let newest =
            conn.query_row("SELECT max(version) FROM schema_migrations", [], |row| row.get::<_, Option<i64>>(0));
        let known = crate::store::MIGRATIONS.last().map_or(0, |m| m.0);
        match newest {
            Ok(Some(version)) if version == known => {}
            Ok(Some(version)) if version > known => {
                return Err((
                    2,
                    format!(
                        "database {shown} is at schema version {version}, newer than this switchboard knows ({known}); use a newer binary"
                    ),
                ));
            }
            Ok(version) => {
                return Err((
                    2,
                    format!(
                        "database {shown} is at schema version {}, older than this switchboard's ({known}): start switchboard on it once (it migrates the file), stop it, then migrate",
                        version.unwrap_or(0)
                    ),
                ));
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
                return Err((2, format!("{shown} is not a SQLite database")));
            }
            Err(e) if e.to_string().contains("no such table") => {
                return Err((2, format!("{shown} is not a switchboard database (it has no schema_migrations table)")));
            }
            Err(e) => return Err((1, format!("cannot read database {shown}: {e}"))),
        }
        Ok(Source { conn, path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies everything into the PostgreSQL database of `client` (see the module's
    /// comment); on any failure nothing is committed there.
    pub fn copy_into(&self, client: &mut Client) -> Result<Copied, Failure> {
        let started = Instant::now();
        refuse_foreign_tables(client)?;
        super::migrations::apply(client).map_err(|e| (1, format!("--to: {e}")))?;
        // One snapshot of SQLite for the rows and the counts they are checked against.
        self.conn.execute_batch("BEGIN").map_err(|e| self.read_error(e))?;
        let copied = self.copy_snapshot(client);
        let _ = self.conn.execute_batch("COMMIT");
        let (rows, tables) = copied?;
        Ok(Copied { rows, tables, elapsed: started.elapsed() })
    }

    fn copy_snapshot(&self, client: &mut Client) -> Result<(u64, usize), Failure> {
        let mut tx = client.transaction().map_err(|e| (1, format!("--to: {}", pg_error(&e))))?;
        lock_and_refuse_rows(&mut tx)?;
        let mut counts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let count: i64 = self
                .conn
                .query_row(&format!("SELECT count(*) FROM {}", table.name), [], |row| row.get(0))
                .map_err(|e| self.read_error(e))?;
            counts.push(count as u64);
        }
        let streams = self.streams()?;
        let total = counts.iter().sum::<u64>() + streams.len() as u64;
        eprintln!("switchboard: copying {} ({total} rows) into PostgreSQL", self.path.display());
        let mut progress = Progress::new();
        for (table, &count) in TABLES.iter().zip(&counts) {
            self.copy_table(&mut tx, table, count, &mut progress)?;
        }
        copy_streams(&mut tx, &streams, &mut progress)?;
        self.copy_webhook_state(&mut tx)?;
        for table in TABLES.iter().filter(|t| t.identity) {
            restart_identity(&mut tx, table.name)?;
        }
        // The counts, checked in the transaction: a difference commits nothing.
        let expected =
            TABLES.iter().map(|t| t.name).zip(counts.iter().copied()).chain([("streams", streams.len() as u64)]);
        let mut differences = Vec::new();
        for (name, want) in expected {
            let have: i64 = tx
                .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                .map_err(|e| (1, format!("cannot count the rows of {name} in PostgreSQL: {}", pg_error(&e))))?
                .get(0);
            if have as u64 != want {
                differences.push(format!("{name} has {want} rows in SQLite but {have} in PostgreSQL"));
            }
        }
        if !differences.is_empty() {
            return Err((1, format!("the copy does not match, so nothing was committed: {}", differences.join("; "))));
        }
        tx.commit().map_err(|e| (1, format!("the commit failed, so nothing was copied: {}", pg_error(&e))))?;
        eprintln!("switchboard: row counts verified: {} tables as in SQLite", TABLES.len() + 1);
        Ok((total, TABLES.len() + 1))
    }

    /// The webhooks' delivered cursor, and the next event id: past every id SQLite ever
    /// gave (`sqlite_sequence`: ids of delivered, deleted events are not given again).
    fn copy_webhook_state(&self, tx: &mut Transaction<'_>) -> Result<(), Failure> {
        let (delivered, newest): (i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT delivered FROM webhook_cursor WHERE id = 1),
                        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_events'), 0)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| self.read_error(e))?;
        tx.execute("UPDATE webhook_cursor SET delivered = $1, owner = NULL WHERE id = 1", &[&delivered])
            .and_then(|_| tx.execute("UPDATE webhook_next SET next_id = $1 WHERE id = 1", &[&(newest + 1)]))
            .map_err(|e| (1, format!("cannot copy the webhooks' cursor: {}", pg_error(&e))))?;
        Ok(())
    }

    /// Every stream's position, computed (`STREAMS`).
    fn streams(&self) -> Result<Vec<(String, i64, i64)>, Failure> {
        let mut statement = self.conn.prepare(STREAMS).map_err(|e| self.read_error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(|e| self.read_error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.read_error(e))
    }

    fn copy_table(
        &self,
        tx: &mut Transaction<'_>,
        table: &Table,
        total: u64,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let name = table.name;
        let failed =
            |e: postgres::Error| (1, format!("copying {name} failed, so nothing was committed: {}", pg_error(&e)));
        let columns = table.columns.join(", ");
        // The target's own column types decide how each value is sent.
        let types: Vec<Type> = tx
            .prepare(&format!("SELECT {columns} FROM {name}"))
            .map_err(failed)?
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        // `events` has no id column in SQLite: its rowid is the id.
        let select: Vec<&str> =
            table.columns.iter().map(|c| if *c == "id" && table.order == "rowid" { "rowid" } else { c }).collect();
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {} FROM {name} ORDER BY {}", select.join(", "), table.order))
            .map_err(|e| self.read_error(e))?;
        let mut rows = statement.query([]).map_err(|e| self.read_error(e))?;
        let sink = tx.copy_in(&format!("COPY {name} ({columns}) FROM STDIN (FORMAT binary)")).map_err(failed)?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        let mut done = 0;
        while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
            let mut cells = Vec::with_capacity(types.len());
            for (index, (column, ty)) in table.columns.iter().zip(&types).enumerate() {
                let value = row.get_ref(index).map_err(|e| self.read_error(e))?;
                let free = table.free_text.contains(column);
                cells.push(Cell::of(value, ty, free).map_err(|what| {
                    (1, format!("{name}.{column} of row {} {what}, so nothing was committed", done + 1))
                })?);
            }
            let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::as_sql).collect();
            writer.write(&values).map_err(failed)?;
            done += 1;
            progress.table(name, done, total);
        }
        writer.finish().map_err(failed)?;
        progress.done(name, done, total);
        Ok(())
    }

    fn read_error(&self, e: rusqlite::Error) -> Failure {
        (1, format!("cannot read database {}: {e}", self.path.display()))
    }
}

fn copy_streams(
    tx: &mut Transaction<'_>,
    streams: &[(String, i64, i64)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let failed =
        |e: postgres::Error| (1, format!("copying streams failed, so nothing was committed: {}", pg_error(&e)));
    let total = streams.len() as u64;
    let sink = tx.copy_in("COPY streams (id, last_seq, updated_at) FROM STDIN (FORMAT binary)").map_err(failed)?;
    let mut writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::INT8]);
    for (done, (id, last_seq, updated_at)) in streams.iter().enumerate() {
        writer.write(&[id as &(dyn ToSql + Sync), last_seq, updated_at]).map_err(failed)?;
        progress.table("streams", done as u64 + 1, total);
    }
    writer.finish().map_err(failed)?;
    progress.done("streams", total, total);
    Ok(())
}

/// The next id a node takes is past every copied one (an identity's sequence does not
/// move when ids are given; `ALTER ... RESTART` is transactional, unlike `setval`).
fn restart_identity(tx: &mut Transaction<'_>, table: &str) -> Result<(), Failure> {
    let failed = |e: postgres::Error| (1, format!("cannot restart the ids of {table}: {}", pg_error(&e)));
    let next: i64 = tx.query_one(&format!("SELECT coalesce(max(id), 0) + 1 FROM {table}"), &[]).map_err(failed)?.get(0);
    tx.batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN id RESTART WITH {next}")).map_err(failed)?;
    Ok(())
}

/// Every table switchboard keeps data in on PostgreSQL.
fn target_tables() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|t| t.name).chain(["streams", "batches"])
}

/// Refuses a database that holds tables of its own (another application's) before
/// anything is created in it: it is not switchboard's unless it has its migrations.
fn refuse_foreign_tables(client: &mut Client) -> Result<(), Failure> {
    let failed = |e: postgres::Error| (1, format!("--to: cannot list the target's tables: {}", pg_error(&e)));
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY table_name",
            &[],
        )
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if tables.is_empty() || tables.iter().any(|t| t == "schema_migrations") {
        return Ok(());
    }
    let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
    let more = if tables.len() > shown.len() { ", ..." } else { "" };
    Err((
        2,
        format!(
            "--to: the target database is not empty: it holds tables switchboard did not make ({}{more}); migrate copies into a new, empty database, and nothing was changed",
            shown.join(", ")
        ),
    ))
}

/// Locks switchboard's tables against writers (a node started on the target, a second
/// `migrate`) for the transaction, then refuses if any holds a row.
fn lock_and_refuse_rows(tx: &mut Transaction<'_>) -> Result<(), Failure> {
    let tables: Vec<&str> = target_tables().collect();
    // No statement or idle timeout (a role's own would end a long copy half way), but a
    // bounded wait for locks.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0;
         SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .map_err(|e| {
        (1, format!("--to: cannot lock the target's tables (is a switchboard node using it?): {}", pg_error(&e)))
    })?;
    let mut holding = Vec::new();
    for table in tables {
        let found = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .map_err(|e| (1, format!("--to: cannot read {table}: {}", pg_error(&e))))?;
        if found.get::<_, bool>(0) {
            holding.push(table);
        }
    }
    if holding.is_empty() {
        return Ok(());
    }
    Err((
        2,
        format!(
            "--to: the target database is not empty: {} already {} rows (a switchboard node or an earlier migrate wrote there); migrate copies into an empty database only, and nothing was changed",
            holding.join(", "),
            if holding.len() == 1 { "holds" } else { "hold" }
        ),
    ))
}

/// PostgreSQL's own words for a failed statement.
fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// One SQLite value, as the target column's type takes it.
enum Cell<'a> {
    Int8(Option<i64>),
    Int4(Option<i32>),
    Text(Option<Cow<'a, str>>),
}

impl<'a> Cell<'a> {
    /// The value of a column of type `ty`, escaped if it is free text; `Err` says what
    /// is wrong with it.
    fn of(value: ValueRef<'a>, ty: &Type, free_text: bool) -> Result<Cell<'a>, String> {
        let cell = match (value, ty) {
            (ValueRef::Null, &Type::INT8) => Cell::Int8(None),
            (ValueRef::Null, &Type::INT4) => Cell::Int4(None),
            (ValueRef::Null, &Type::TEXT) => Cell::Text(None),
            (ValueRef::Integer(n), &Type::INT8) => Cell::Int8(Some(n)),
            (ValueRef::Integer(n), &Type::INT4) => {
                Cell::Int4(Some(i32::try_from(n).map_err(|_| format!("holds {n}, too large for an INTEGER"))?))
            }
            (ValueRef::Text(bytes), &Type::TEXT) => {
                let text = std::str::from_utf8(bytes).map_err(|_| "holds text that is not UTF-8".to_string())?;
                if free_text {
                    Cell::Text(Some(enc(text)))
                } else if text.contains('\0') {
                    return Err("holds a NUL character, which PostgreSQL's text cannot".into());
                } else {
                    Cell::Text(Some(Cow::Borrowed(text)))
                }
            }
            (value, ty) => return Err(format!("holds a {:?} value where PostgreSQL has {ty}", value.data_type())),
        };
        Ok(cell)
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int8(value) => value,
            Cell::Int4(value) => value,
            Cell::Text(value) => value,
        }
    }
}

/// The progress line on stderr: per table, rows copied of its count, at most once a
/// second while it runs (rewritten in place on a terminal) and once when it is done.
struct Progress {
    terminal: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress { terminal: std::io::stderr().is_terminal(), last: Instant::now() }
    }

    fn table(&mut self, name: &str, done: u64, total: u64) {
        // The clock is read every 4,096 rows only: a row costs microseconds.
        if !done.is_multiple_of(4096) || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let line = format!("  {name}: {done}/{total}");
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal { write!(err, "\r\x1b[K{line}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    fn done(&mut self, name: &str, done: u64, total: u64) {
        let start = if self.terminal { "\r\x1b[K" } else { "" };
        eprintln!("{start}  {name}: {done}/{total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_at_the_largest_seq_their_rows_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(crate::store::Store::open(&path, false).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO conversations (id, kind, key, created_at, updated_at) VALUES
                 (1, 'room', 'lobby', 1, 1), (2, 'direct', '5:7', 1, 1), (3, 'room', 'old', 1, 1);
             INSERT INTO conversation_members (conversation_id, user_id) VALUES (2, '5'), (2, '7');
             -- The room's row lags behind its messages; a read receipt is its last event.
             INSERT INTO streams (id, last_seq, updated_at) VALUES ('c:1', 2, 10), ('u:9', 4, 10);
             INSERT INTO messages (conversation_id, sender_id, sender_name, content, created_at, seq) VALUES
                 (1, '5', 'a', 'x', 20, 3), (1, '5', 'a', 'y', 21, 4),
                 -- 1:1 messages are numbered on their recipient's stream, whose events
                 -- were pruned; a message from before seqs were kept has none.
                 (2, '5', 'a', 'to 7', 22, 6), (2, '7', 'b', 'to 5', 23, 2), (3, '5', 'a', 'old', 5, NULL);
             INSERT INTO events (stream, seq, kind, payload, created_at) VALUES
                 ('c:1', 5, 'read_receipt', '{}', 24), ('u:7', 3, 'notification', '{}', 25);",
        )
        .unwrap();
        drop(conn);
        let source = Source::open(&path).unwrap();
        let streams = source.streams().unwrap();
        let want = [("c:1", 5, 24), ("u:5", 2, 23), ("u:7", 6, 25), ("u:9", 4, 10)];
        assert_eq!(streams, want.map(|(id, seq, at)| (id.to_string(), seq, at)));
    }
}
