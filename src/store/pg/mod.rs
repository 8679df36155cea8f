//! PostgreSQL, the store of a switchboard cluster (design/cluster.md §5.2–5.4): the same
//! schema and migrations as SQLite, in PostgreSQL's dialect (`sql/pg/`). Its client,
//! the `postgres` crate, runs its own runtime and blocks; it is only ever used from
//! helper threads (the engine's lanes), never from the event loop.

pub mod migrations;
mod store;

pub use store::PgStore;

/// One connection, or why not, in words for the operator (the URL's password left out).
pub fn connect(url: &str) -> Result<postgres::Client, String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    config.connect(postgres::NoTls).map_err(|e| format!("cannot connect to PostgreSQL: {e}"))
}
