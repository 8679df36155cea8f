//! PostgreSQL, the store of a switchboard cluster (design/cluster.md §5.2–5.4): the same
//! schema and migrations as SQLite, in PostgreSQL's dialect (`sql/pg/`). Its client,
//! the `postgres` crate, runs its own runtime and blocks; it is only ever used from
//! helper threads (the engine's lanes), never from the event loop.

pub mod copy;
pub mod migrations;
mod store;
mod webhooks;

pub use store::PgStore;
pub use webhooks::{Lead, PgOutbox};

/// One connection, or why not, in words for the operator (the URL's password left out).
pub fn connect(url: &str) -> Result<postgres::Client, String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    with_timeouts(config).connect(postgres::NoTls).map_err(|e| format!("cannot connect to PostgreSQL: {e}"))
}

/// Statements and idle transactions of switchboard's connections end after 5 s
/// (design/cluster.md §5.3): a stream's row is never locked for longer by a stuck lane.
pub fn with_timeouts(mut config: postgres::Config) -> postgres::Config {
    config.options("-c statement_timeout=5000 -c idle_in_transaction_session_timeout=5000");
    config
}
