//! The numbered migrations of `sql/pg/`, compiled in, and their application at start-up:
//! the same versions and names as SQLite's (`store::migrations`), so a database of
//! either engine is at a schema version both understand, and `migrate` can copy one
//! into the other.
//!
//! Several nodes may start at once on one database: the whole application runs under a
//! session advisory lock, so one node migrates and the others then find nothing to do.
//! Each migration runs once, in its own transaction, recorded in `schema_migrations`; a
//! database newer than this binary is refused rather than guessed at.

use postgres::Client;

/// (version, name, SQL), in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../sql/pg/0001_init.sql")),
    (2, "conversations", include_str!("../../../sql/pg/0002_conversations.sql")),
    (3, "notifications", include_str!("../../../sql/pg/0003_notifications.sql")),
    (4, "streams", include_str!("../../../sql/pg/0004_streams.sql")),
    (5, "webhooks", include_str!("../../../sql/pg/0005_webhooks.sql")),
    (6, "webhook_order", include_str!("../../../sql/pg/0006_webhook_order.sql")),
    (7, "display_names", include_str!("../../../sql/pg/0007_display_names.sql")),
    (8, "idempotency", include_str!("../../../sql/pg/0008_idempotency.sql")),
];

/// The advisory lock key of switchboard's migrations ("sbmigrat").
const LOCK: i64 = 0x7362_6d69_6772_6174;

/// Applies what is missing; returns the versions applied.
pub fn apply(client: &mut Client) -> Result<Vec<i64>, String> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).map_err(|e| format!("cannot lock for migrations: {e}"))?;
    let applied = apply_locked(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]);
    applied
}

fn apply_locked(client: &mut Client) -> Result<Vec<i64>, String> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .map_err(|e| e.to_string())?;
    let newest: i64 = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if newest > known {
        return Err(format!(
            "the database is at schema version {newest}, newer than this switchboard knows ({known}); use a newer binary"
        ));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > newest) {
        let run = |client: &mut Client| -> Result<(), postgres::Error> {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])?;
            tx.commit()
        };
        run(client).map_err(|e| format!("migration {version:04}_{name} failed: {e}"))?;
        log::info!("applied migration {version:04}_{name} (PostgreSQL)");
        applied.push(*version);
    }
    Ok(applied)
}
