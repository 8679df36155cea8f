//! The PostgreSQL store against a real PostgreSQL server that the test harness starts
//! (`util::pg`): its schema migrations.

mod util;

use switchboard::store::pg::{self, migrations};
use util::pg::shared;

#[test]
fn migrations_apply_once_in_order_and_a_newer_database_is_refused() {
    let server = shared();
    let url = server.database();
    let mut client = pg::connect(&url).expect("connect");
    assert_eq!(migrations::apply(&mut client).unwrap(), [1, 2, 3, 4]);
    assert_eq!(migrations::apply(&mut client).unwrap(), Vec::<i64>::new(), "applied once");
    let (ok, recorded) =
        server.psql(&url, "SELECT string_agg(version || ' ' || name, ',' ORDER BY version) FROM schema_migrations");
    assert!(ok, "{recorded}");
    assert_eq!(recorded, "1 init,2 conversations,3 notifications,4 streams");
    // The same versions and names as SQLite's, so either engine's database is at a
    // version both understand.
    let sqlite: Vec<(i64, &str)> = switchboard::store::MIGRATIONS.iter().map(|m| (m.0, m.1)).collect();
    let postgres: Vec<(i64, &str)> = migrations::MIGRATIONS.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(sqlite, postgres);
    // Every table of the SQLite schema exists, with the PostgreSQL-only batch markers.
    let (ok, tables) = server
        .psql(&url, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    assert!(ok, "{tables}");
    assert_eq!(
        tables,
        "banking_messages,batches,conversation_members,conversations,customers,events,fraud_alerts,\
         message_reads,messages,notifications,schema_migrations,settings,streams,users"
    );

    // A database that a newer switchboard migrated is refused, not guessed at.
    assert!(server.psql(&url, "INSERT INTO schema_migrations (version, name) VALUES (99, 'future')").0);
    let refused = migrations::apply(&mut client).unwrap_err();
    assert!(refused.contains("schema version 99, newer than this switchboard knows (4)"), "{refused}");
}

#[test]
fn nodes_starting_at_once_migrate_a_database_once() {
    let server = shared();
    let url = server.database();
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrations::apply(&mut pg::connect(&url).expect("connect")))
        })
        .collect();
    let mut applied: Vec<Vec<i64>> = nodes.into_iter().map(|n| n.join().unwrap().expect("migrated")).collect();
    applied.sort();
    assert_eq!(applied, [vec![], vec![], vec![], vec![1, 2, 3, 4]], "exactly one node migrated");
}

#[test]
fn a_bad_url_or_an_unreachable_server_is_named() {
    let error = pg::connect("mysql://nope").err().expect("refused");
    assert!(error.starts_with("not a PostgreSQL URL"), "{error}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let error = pg::connect(&format!("postgres://postgres@127.0.0.1:{closed}/x")).err().expect("refused");
    assert!(error.starts_with("cannot connect to PostgreSQL"), "{error}");
}
