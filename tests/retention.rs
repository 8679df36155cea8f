//! Retention (`SWITCHBOARD_RETENTION_DAYS`, `SWITCHBOARD_ROOM_HISTORY_MAX`,
//! `SWITCHBOARD_RETENTION_UNREAD`) on the real binary and real SQLite files (and, but for
//! the file's own tests, on PostgreSQL in the suite's third pass): rows are
//! backdated while the server is stopped, then a server with retention
//! deletes what is old, keeps what is fresh or unread, gives the pages back to the file
//! system, and a client resuming with `?since=` a pruned seq is told that recovery is not
//! possible. Each test prints the longest retention step the server logged.

mod util;

use std::path::Path;

use serde_json::{Value, json};
use util::*;

const DAY: i64 = 86_400_000_000;

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn count(server: &Server, sql: &str) -> i64 {
    server.query(sql)[0].parse().unwrap()
}

/// The longest retention step in the server's log, in microseconds, and how many
/// sweeps deleted something.
fn steps(log: &str) -> (u64, usize) {
    let mut longest = 0;
    let mut sweeps = 0;
    for line in log.lines().filter(|l| l.contains("retention:") && l.contains("the longest")) {
        sweeps += 1;
        let us = line.split("the longest ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok());
        longest = longest.max(us.unwrap_or(0));
    }
    (longest, sweeps)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Writes what the test needs straight into the stopped server's file.
fn backdate(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// Rows written into a stopped server's store, whichever engine (SQL both speak).
fn write_rows(server: &Server, sql: &str) {
    if on_postgres() {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            server.query(statement);
        }
    } else {
        backdate(&server.db_path(), sql);
    }
}

#[test]
fn old_items_go_fresh_and_unread_ones_stay_and_the_file_shrinks() {
    if sqlite_only("retention deletes from the SQLite file (PostgreSQL refuses the settings)") {
        return;
    }
    let mut server = Server::start(&[]);
    server.stop();
    let db = server.db_path();
    let old = now_micros() - 10 * DAY;
    let fresh = now_micros();
    let conn = rusqlite::Connection::open(&db).unwrap();
    // An older database: no incremental vacuum yet (the start-up step converts it).
    conn.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ('room', 'old', 'old', ?1, ?1)",
        [old],
    )
    .unwrap();
    let old_room = conn.last_insert_rowid();
    let filler = "x".repeat(1000);
    for seq in 1..=4000 {
        conn.execute(
            "INSERT INTO messages (conversation_id, sender_id, sender_name, content, created_at, seq)
             VALUES (?1, 'u1', 'ann', ?2, ?3, ?4)",
            rusqlite::params![old_room, filler, old, seq],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ('room', 'fresh', 'fresh', ?1, ?1)",
        [fresh],
    )
    .unwrap();
    let fresh_room = conn.last_insert_rowid();
    for seq in 1..=5 {
        conn.execute(
            "INSERT INTO messages (conversation_id, sender_id, sender_name, content, created_at, seq)
             VALUES (?1, 'u1', 'ann', 'hello', ?2, ?3)",
            rusqlite::params![fresh_room, fresh, seq],
        )
        .unwrap();
    }
    // A 1:1 pair: one old message user 2 has read, one old message user 2 has not.
    conn.execute(
        "INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ('direct', '1:2', '', ?1, ?1)",
        [old],
    )
    .unwrap();
    let pair = conn.last_insert_rowid();
    let mut ids = Vec::new();
    for (seq, text) in [(1, "read long ago"), (2, "never read")] {
        conn.execute(
            "INSERT INTO messages (conversation_id, sender_id, sender_name, content, created_at, seq)
             VALUES (?1, '1', 'ann', ?2, ?3, ?4)",
            rusqlite::params![pair, text, old, seq],
        )
        .unwrap();
        ids.push(conn.last_insert_rowid());
    }
    conn.execute(
        "INSERT INTO conversation_members (conversation_id, user_id, last_read_message_id) VALUES (?1, '1', ?2), (?1, '2', ?3)",
        rusqlite::params![pair, ids[1], ids[0]],
    )
    .unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO users (id, name, first_seen, last_seen) VALUES
             ('1', 'ann', {old}, {old}), ('2', 'bob', {old}, {old}), ('7', 'eve', {old}, {old}),
             ('ghost', 'gone', {old}, {old}), ('new', 'new', {fresh}, {fresh});
         INSERT INTO notifications (user_id, category, title, message, is_read, read_at, created_at) VALUES
             ('7', 'info', 'read', 'old and read', 1, {old}, {old}),
             ('7', 'info', 'unread', 'old and unread', 0, NULL, {old}),
             ('7', 'info', 'fresh', 'fresh and read', 1, {fresh}, {fresh});
         INSERT INTO fraud_alerts (user_id, message, severity, is_resolved, resolved_at, created_at) VALUES
             ('7', 'resolved', 'low', 1, {old}, {old}),
             ('7', 'open', 'high', 0, NULL, {old});
         INSERT INTO banking_messages (user_id, subject, body, is_read, read_at, thread_id, created_at) VALUES
             ('7', 'read', 'b', 1, {old}, 't1', {old}),
             ('7', 'unread', 'b', 0, NULL, 't2', {old});
         COMMIT;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))
    .unwrap();
    drop(conn);
    let before = file_size(&db);

    let mut server = server_with(&server, &[("SWITCHBOARD_RETENTION_DAYS", "1")]);
    eventually("the old room's messages deleted", || {
        count(&server, &format!("SELECT count(*) FROM messages WHERE conversation_id = {old_room}")) == 0
    });
    eventually("the empty old room and the idle user deleted", || {
        count(&server, "SELECT count(*) FROM conversations WHERE key = 'old'") == 0
            && count(&server, "SELECT count(*) FROM users WHERE id = 'ghost'") == 0
    });
    eventually("the free pages given back", || count(&server, "PRAGMA freelist_count") == 0);
    assert_eq!(count(&server, "PRAGMA auto_vacuum"), 2, "converted to incremental vacuum at start");
    assert!(server.log_text().contains("one VACUUM"), "the conversion is logged with its time");
    // Fresh things stay; unread things stay.
    assert_eq!(count(&server, &format!("SELECT count(*) FROM messages WHERE conversation_id = {fresh_room}")), 5);
    assert_eq!(server.query(&format!("SELECT content FROM messages WHERE conversation_id = {pair}")), ["never read"]);
    assert_eq!(server.query("SELECT title FROM notifications ORDER BY id"), ["unread", "fresh"]);
    assert_eq!(server.query("SELECT message FROM fraud_alerts"), ["open"]);
    assert_eq!(server.query("SELECT subject FROM banking_messages"), ["unread"]);
    let mut users = server.query("SELECT id FROM users ORDER BY id");
    users.sort();
    assert_eq!(users, ["1", "2", "7", "new"], "users with something left stay");
    // The pruned room's numbers are kept for a room of the same name.
    assert_eq!(server.query("SELECT last_seq FROM streams WHERE id = 'room:old'"), ["4000"]);

    // A client resuming the old room from a pruned seq is told so, and the room's
    // numbers go on: never a new message under an old seq.
    let mut client = server.connect_as("/ws/chat/old/?since=5", json!(3), "cy");
    let frame = recv_until(&mut client, |f| f["type"] == "recovery_not_possible");
    assert_eq!(frame["type"], "recovery_not_possible", "{frame}");
    client.send_json(json!({"message": "a new start"}));
    let echoed = recv_until(&mut client, |f| f["message"] == "a new start");
    assert_eq!(echoed["seq"], 4001, "{echoed}");
    client.close();

    let (longest, sweeps) = steps(&server.log_text());
    server.stop();
    let after = file_size(&db);
    eprintln!(
        "retention: file {before} -> {after} bytes; {sweeps} sweeps deleted something, the longest step {longest} us"
    );
    assert!(sweeps > 0);
    assert!(after < before / 2, "the file shrank: {before} -> {after} bytes");
}

fn recv_until(client: &mut Client, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = client.recv();
        if wanted(&frame) {
            return frame;
        }
    }
}

/// A server on the same directory with `extra` settings added.
fn server_with(stopped: &Server, extra: &[(&str, &str)]) -> Server {
    let mut env: Vec<(&str, &str)> = vec![("SWITCHBOARD_LOG", "debug")];
    env.extend_from_slice(extra);
    Server::start_in(stopped.dir.clone(), &env)
}

#[test]
fn a_room_keeps_its_newest_messages_and_resuming_past_them_is_refused() {
    let server = Server::start(&[("SWITCHBOARD_ROOM_HISTORY_MAX", "10")]);
    for n in 1..=40 {
        let (status, _) = server.api("POST", "/api/rooms/busy/messages", Some(&json!({"message": format!("m{n}")})));
        assert_eq!(status, 201);
    }
    // Another kind of conversation is not a room: its messages are not counted.
    eventually("the room cut to its newest 10", || {
        count(
            &server,
            "SELECT count(*) FROM messages JOIN conversations c ON c.id = conversation_id WHERE c.key = 'busy'",
        ) == 10
    });
    let kept = server.query(
        "SELECT content FROM messages JOIN conversations c ON c.id = conversation_id WHERE c.key = 'busy' ORDER BY messages.id",
    );
    assert_eq!(kept, (31..=40).map(|n| format!("m{n}")).collect::<Vec<_>>());
    // Resuming within what is kept works; from before it, recovery is not possible.
    let mut client = server.connect_as("/ws/chat/busy/?since=37", json!(1), "ann");
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = client.recv();
        if frame["type"] == "chat_message" {
            got.push(frame["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(got, [38, 39, 40]);
    client.close();
    let mut client = server.connect_as("/ws/chat/busy/?since=5", json!(1), "ann");
    let frame = recv_until(&mut client, |f| f["type"] == "recovery_not_possible" || f["type"] == "chat_message");
    assert_eq!(frame["type"], "recovery_not_possible", "{frame}");
    client.close();
    let (longest, sweeps) = steps(&server.log_text());
    eprintln!("room history: {sweeps} sweeps deleted something, the longest step {longest} us");
}

/// On either engine: old room messages go, an old message a member has not read stays,
/// fresh ones stay; read notifications and resolved alerts go by age, unread and
/// unresolved ones stay.
#[test]
fn old_messages_go_and_unread_ones_stay_on_either_engine() {
    let mut server = Server::start(&[]);
    for n in 0..3 {
        assert_eq!(server.api("POST", "/api/rooms/old/messages", Some(&json!({"message": format!("o{n}")}))).0, 201);
    }
    let body = json!({"kind": "consultation", "id": "c-old", "title": "t", "members": [5, 7]});
    assert_eq!(server.api("POST", "/api/conversations", Some(&body)).0, 201);
    let mut doctor = server.connect_as("/ws/consultations/c-old/", json!(5), "Dr. Rao");
    doctor.recv();
    doctor.send_json(json!({"type": "chat_message", "message": "unread by 7"}));
    doctor.recv_type("chat_message");
    doctor.close();
    for (title, user) in [("read", 7), ("unread", 7)] {
        let note = json!({"user_id": user, "title": title, "message": "m"});
        assert_eq!(server.api("POST", "/api/notifications", Some(&note)).0, 201);
    }
    for message in ["resolved", "open"] {
        let alert = json!({"user_id": 7, "message": message, "severity": "high"});
        assert_eq!(server.api("POST", "/api/fraud-alerts", Some(&alert)).0, 201);
    }
    let resolved = server.query("SELECT id FROM fraud_alerts WHERE message = 'resolved'")[0].clone();
    assert_eq!(server.api("POST", &format!("/api/fraud-alerts/{resolved}/resolve"), None).0, 200);
    assert_eq!(server.api("POST", "/api/rooms/fresh/messages", Some(&json!({"message": "f"}))).0, 201);
    server.stop();
    let old = now_micros() - 3 * DAY;
    write_rows(
        &server,
        &format!(
            "UPDATE messages SET created_at = {old} WHERE content <> 'f';
             UPDATE notifications SET created_at = {old}, is_read = CASE WHEN title = 'read' THEN 1 ELSE 0 END;
             UPDATE fraud_alerts SET created_at = {old};"
        ),
    );
    let server = server_with(&server, &[("SWITCHBOARD_RETENTION_DAYS", "1")]);
    eventually("old read items deleted", || {
        count(&server, "SELECT count(*) FROM messages") == 2
            && count(&server, "SELECT count(*) FROM notifications") == 1
            && count(&server, "SELECT count(*) FROM fraud_alerts") == 1
    });
    let mut kept = server.query("SELECT content FROM messages");
    kept.sort();
    assert_eq!(kept, ["f", "unread by 7"]);
    assert_eq!(server.query("SELECT title FROM notifications"), ["unread"]);
    assert_eq!(server.query("SELECT message FROM fraud_alerts"), ["open"]);
}

#[test]
fn unread_items_go_by_age_only_when_told() {
    let mut server = Server::start(&[]);
    server.stop();
    let (old, fresh) = (now_micros() - 3 * DAY, now_micros());
    write_rows(
        &server,
        &format!(
            "INSERT INTO notifications (user_id, category, title, message, is_read, created_at) VALUES
                 ('7', 'info', 'unread', 'old and unread', 0, {old}), ('7', 'info', 'new', 'fresh', 0, {fresh});
             INSERT INTO fraud_alerts (user_id, message, severity, is_resolved, created_at) VALUES
                 ('7', 'open', 'high', 0, {old}), ('7', 'new', 'low', 0, {fresh});"
        ),
    );
    let server =
        server_with(&server, &[("SWITCHBOARD_RETENTION_DAYS", "1"), ("SWITCHBOARD_RETENTION_UNREAD", "prune")]);
    eventually("unread items deleted by age", || {
        count(&server, "SELECT count(*) FROM notifications") == 1
            && count(&server, "SELECT count(*) FROM fraud_alerts") == 1
    });
    assert_eq!(server.query("SELECT title FROM notifications"), ["new"]);
    assert_eq!(server.query("SELECT message FROM fraud_alerts"), ["new"]);
}

#[test]
fn retention_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db").display().to_string();
    for (env, says) in [
        (vec![("SWITCHBOARD_RETENTION_DAYS", "soon")], "SWITCHBOARD_RETENTION_DAYS"),
        (vec![("SWITCHBOARD_ROOM_HISTORY_MAX", "-1")], "SWITCHBOARD_ROOM_HISTORY_MAX"),
        (vec![("SWITCHBOARD_RETENTION_UNREAD", "prune")], "needs SWITCHBOARD_RETENTION_DAYS"),
    ] {
        let mut env = env;
        env.push(("SWITCHBOARD_DB", &db));
        let output = switchboard_command(&["serve"], &env, dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert!(!Path::new(&db).exists(), "a refused start writes nothing");
}

/// The soak behind `benches/retention-soak.sh`: steady chat with a short retention,
/// the database file's size printed every 5 s; it must level off. Bounded by
/// `SWITCHBOARD_SOAK_SECS` (default 120) and stops by itself; loopback only.
#[test]
#[ignore = "a soak of minutes: benches/retention-soak.sh"]
fn soak() {
    if sqlite_only("the retention soak measures the SQLite file") {
        return;
    }
    let secs: u64 = std::env::var("SWITCHBOARD_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let retention_secs = 20.0;
    let days = format!("{}", retention_secs / 86_400.0);
    let server = Server::start(&[
        ("SWITCHBOARD_RETENTION_DAYS", days.as_str()),
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("SWITCHBOARD_LOG", "debug"),
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (clients, per_second) = (4, 200);
    let mut threads = Vec::new();
    for user in 0..clients {
        let mut client = server.connect_as(&format!("/ws/chat/soak{}/", user % 2), json!(user), &format!("u{user}"));
        client.recv_type("room_users_list");
        let (stop, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            let text = "y".repeat(400);
            let every = std::time::Duration::from_secs(1) / per_second;
            let mut next = std::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let mine = format!("{user}-{n}-{text}");
                client.send_json(json!({"message": mine}));
                while client.recv()["message"] != mine.as_str() {}
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                next += every;
                if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            client.close();
        }));
    }
    let db = server.db_path();
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    let started = std::time::Instant::now();
    let mut sizes = Vec::new();
    eprintln!(
        "retention soak: {clients} clients x {per_second} messages/s of ~400 bytes for {secs} s, retention {retention_secs} s"
    );
    eprintln!(
        "{:>6} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "secs", "sent", "db bytes", "wal bytes", "messages", "free pages"
    );
    while started.elapsed() < std::time::Duration::from_secs(secs) {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let size = file_size(&db);
        let messages = count(&server, "SELECT count(*) FROM messages");
        let free = count(&server, "PRAGMA freelist_count");
        eprintln!(
            "{:>6} {:>10} {:>12} {:>10} {:>10} {:>10}",
            started.elapsed().as_secs(),
            sent.load(std::sync::atomic::Ordering::Relaxed),
            size,
            std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
            messages,
            free
        );
        sizes.push((started.elapsed().as_secs_f64(), size));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let log = server.log_text();
    let mut micros: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" step removed "))
        .filter_map(|l| l.rsplit(" in ").next()?.trim_end_matches(" us").parse().ok())
        .collect();
    micros.sort_unstable();
    let at = |q: f64| micros.get(((micros.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    eprintln!(
        "retention steps: {} that deleted something; p50 {} us, p99 {} us, longest {} us",
        micros.len(),
        at(0.5),
        at(0.99),
        micros.last().copied().unwrap_or(0)
    );
    // Level: once the retention has passed twice, the file no longer grows by much.
    let settled: Vec<u64> = sizes.iter().filter(|(t, _)| *t > 2.0 * retention_secs).map(|s| s.1).collect();
    if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
        eprintln!("file size after {}s: {first} bytes; at the end: {last} bytes", 2.0 * retention_secs);
        assert!(*last < first + first / 2 + (1 << 20), "the file kept growing: {first} -> {last} bytes");
    }
}
