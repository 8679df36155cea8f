//! The numbered migrations of `sql/`, compiled in, and their application at start-up.
//!
//! Each migration runs once, in its own transaction, and is recorded in
//! `schema_migrations`, so a database written by an older switchboard opens in a newer
//! one. A database newer than this binary (a migration it does not know) is refused
//! rather than guessed at. Migrations are never edited once released: add a new file.

use rusqlite::{Connection, params};

/// (version, name, SQL), in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../sql/0001_init.sql")),
    (2, "conversations", include_str!("../../sql/0002_conversations.sql")),
    (3, "notifications", include_str!("../../sql/0003_notifications.sql")),
    (4, "streams", include_str!("../../sql/0004_streams.sql")),
    (5, "webhooks", include_str!("../../sql/0005_webhooks.sql")),
    (6, "webhook_order", include_str!("../../sql/0006_webhook_order.sql")),
    (7, "display_names", include_str!("../../sql/0007_display_names.sql")),
    (8, "idempotency", include_str!("../../sql/0008_idempotency.sql")),
];

pub fn apply(conn: &Connection) -> Result<(), String> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
         )",
    )
    .map_err(|e| e.to_string())?;
    let newest: i64 = conn
        .query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if newest > known {
        return Err(format!(
            "the database is at schema version {newest}, newer than this switchboard knows ({known}); use a newer binary"
        ));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > newest) {
        let run = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.execute_batch(sql)?;
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)", params![version, name])?;
            conn.execute_batch("COMMIT")
        };
        if let Err(e) = run() {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(format!("migration {version:04}_{name} failed: {e}"));
        }
        log::info!("applied migration {version:04}_{name}");
    }
    Ok(())
}
