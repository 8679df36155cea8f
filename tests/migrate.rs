//! `switchboard migrate --to URL`: a SQLite database made by a real server through its
//! WebSocket and HTTP APIs is copied by the real binary into an empty database of the
//! throwaway PostgreSQL (`util::pg`), then served by a node on PostgreSQL: clients see
//! the same history and unread counts, with the same tokens, and what they write next
//! gets the next ids and seqs. A target that is not empty is refused and left as it was.

#[allow(dead_code)]
#[path = "util/receiver.rs"]
mod receiver;
mod util;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tungstenite::Message;
use util::pg::shared;
use util::*;

/// The source server: on SQLite even when the suite runs on PostgreSQL, and with the JWT
/// secret and API key it generates and keeps in its database (they must come along).
fn sqlite_server(dir: Arc<tempfile::TempDir>) -> Server {
    Server::start_in(
        dir,
        &[("SWITCHBOARD_DATABASE_URL", ""), ("SWITCHBOARD_JWT_SECRET", ""), ("SWITCHBOARD_API_KEY", "")],
    )
}

/// A node on the PostgreSQL database `url`, with the secrets kept there.
fn postgres_server(url: &str) -> Server {
    Server::start(&[("SWITCHBOARD_DATABASE_URL", url), ("SWITCHBOARD_JWT_SECRET", ""), ("SWITCHBOARD_API_KEY", "")])
}

/// One value of the SQLite database at `db` (read while no server writes).
fn sqlite_value(db: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(sql, [], |row| row.get::<_, rusqlite::types::Value>(0))
        .map(|value| match value {
            rusqlite::types::Value::Integer(n) => n.to_string(),
            rusqlite::types::Value::Text(text) => text,
            other => format!("{other:?}"),
        })
        .unwrap()
}

fn psql(url: &str, sql: &str) -> String {
    let (ok, out) = shared().psql(url, sql);
    assert!(ok, "{sql}: {out}");
    out
}

/// The generated secrets a server keeps, and tokens and API calls made with them.
struct Keys {
    secret: String,
    api_key: String,
}

impl Keys {
    fn of(db: &Path) -> Keys {
        Keys {
            secret: sqlite_value(db, "SELECT value FROM settings WHERE key = 'jwt_secret'"),
            api_key: sqlite_value(db, "SELECT value FROM settings WHERE key = 'api_key'"),
        }
    }

    fn token(&self, user: Value, name: &str) -> String {
        let claims = json!({"user_id": user, "name": name, "exp": in_secs(3600), "token_type": "access"});
        token_with(Algorithm::HS256, &EncodingKey::from_secret(self.secret.as_bytes()), claims)
    }

    fn connect(&self, server: &Server, path: &str, user: Value, name: &str) -> Client {
        let sep = if path.contains('?') { '&' } else { '?' };
        server.connect(&format!("{path}{sep}token={}", self.token(user, name)))
    }

    fn api(&self, server: &Server, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = server.api_with_key(method, path, Some(&body), Some(&self.api_key));
        assert!((200..300).contains(&status), "{method} {path} {body}: {status} {answer}");
        answer
    }
}

/// History and unread state made through the real APIs: a room (one message holding
/// NUL and U+10FFFF, which PostgreSQL stores escaped), a consultation with a read
/// receipt, 1:1 messages partly read, notifications partly read, a fraud alert, a
/// banking thread, and a support conversation with a customer's unread messages.
fn make_history(server: &Server, keys: &Keys) {
    let mut ann = keys.connect(server, "/ws/rooms/lobby/", json!(1), "Ann");
    ann.recv_type("room_users_list");
    let mut bo = keys.connect(server, "/ws/rooms/lobby/", json!(2), "Bo");
    bo.recv_type("room_users_list");
    for (from_ann, text) in [(true, "hello"), (false, "hi \u{0} there \u{10FFFF}!"), (true, "third")] {
        let client = if from_ann { &mut ann } else { &mut bo };
        client.send_json(json!({ "message": text }));
        while client.recv_type("chat_message")["message"] != text {}
    }
    keys.api(server, "POST", "/api/rooms/lobby/messages", json!({"message": "from the backend"}));
    keys.api(server, "POST", "/api/rooms/quiet/messages", json!({"message": "alone"}));

    keys.api(server, "POST", "/api/conversations", json!({"kind": "consultation", "id": "c-1", "members": [5, 7]}));
    let mut john = keys.connect(server, "/ws/consultations/c-1/", json!(5), "John");
    john.recv_type("connection_established");
    let mut jane = keys.connect(server, "/ws/consultations/c-1/", json!(7), "Jane");
    jane.recv_type("connection_established");
    john.send_json(json!({"type": "chat_message", "message": "a question"}));
    let asked = john.recv_type("chat_message");
    jane.recv_type("chat_message");
    jane.send_json(json!({"type": "read_receipt", "message_id": asked["data"]["id"]}));
    assert_eq!(john.recv_type("read_receipt")["user_id"], "7");
    jane.send_json(json!({"type": "chat_message", "message": "an answer"}));
    jane.recv_type("chat_message");

    // 1:1: Priya (7) writes twice, Aarav (5) reads, answers, and she writes once more
    // (unread for him); Mo (9) writes to her (unread for her).
    let mut aarav = keys.connect(server, "/ws/v1/chat/", json!(5), "Aarav");
    let mut priya = keys.connect(server, "/ws/v1/chat/", json!(7), "Priya");
    let mut mo = keys.connect(server, "/ws/v1/chat/", json!(9), "Mo");
    for text in ["psst 1", "psst 2"] {
        priya.send_json(json!({"type": "chat_message", "message": text, "recipient_id": 5}));
        assert_eq!(aarav.recv_type("chat_message")["message"], text);
    }
    aarav.send_json(json!({"type": "mark_read", "sender_id": 7}));
    priya.recv_type("messages_read");
    aarav.send_json(json!({"type": "chat_message", "message": "later", "recipient_id": 7}));
    priya.recv_type("chat_message");
    priya.send_json(json!({"type": "chat_message", "message": "psst 3", "recipient_id": 5}));
    aarav.recv_type("chat_message");
    mo.send_json(json!({"type": "chat_message", "message": "hey", "recipient_id": 7}));
    priya.recv_type("chat_message");

    // Three notifications for 7, one read: two unread.
    let mut app = keys.connect(server, "/ws/notifications/", json!(7), "Priya");
    app.recv_type("unread_count");
    let mut first = None;
    for i in 0..3 {
        let body = json!({"user_id": 7, "title": format!("t{i}"), "message": "m", "category": "hr"});
        let id = keys.api(server, "POST", "/api/notifications", body)["notification"]["id"].clone();
        first.get_or_insert(id);
        app.recv_type("unread_count");
    }
    app.send_json(json!({"type": "mark_read", "notification_id": first.unwrap().to_string()}));
    assert_eq!(app.recv_type("unread_count")["count"], 2);

    keys.api(server, "POST", "/api/fraud-alerts", json!({"user_id": 7, "message": "odd", "severity": "high"}));
    let parent = keys.api(server, "POST", "/api/messages", json!({"user_id": 7, "subject": "s", "body": "b"}));
    let reply = json!({"user_id": 7, "subject": "re", "body": "b2", "parent_message": parent["message"]["id"]});
    keys.api(server, "POST", "/api/messages", reply);

    let customer = json!({"external_id": "tg-1", "first_name": "Cy", "last_name": "Dee"});
    for content in ["help", "anyone?"] {
        let body = json!({"source": "telegram", "customer": customer, "content": content, "members": [5]});
        keys.api(server, "POST", "/api/inbound", body);
    }
    // Closed and gone before anyone looks: a room's user list is then the same each time.
    for client in [ann, bo, john, jane, aarav, priya, mo, app] {
        client.close();
    }
}

/// Every text frame a session gets on opening `path` until it has been quiet for a
/// while: what a client sees of the stored state.
fn opening_frames(server: &Server, keys: &Keys, path: &str, user: Value, name: &str) -> Vec<Value> {
    let mut client = keys.connect(server, path, user, name);
    client.ws.get_mut().set_read_timeout(Some(Duration::from_millis(600))).unwrap();
    let mut frames = Vec::new();
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => frames.push(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(frame)) => panic!("{path} closed: {frame:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break;
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }
    client.close();
    frames
}

/// What each kind of client sees on connecting, resumed or not, as (what, frames).
fn seen(server: &Server, keys: &Keys) -> Vec<(String, Vec<Value>)> {
    let sessions: [(&str, Value, &str); 11] = [
        ("/ws/rooms/lobby/", json!(3), "Cy"),
        ("/ws/rooms/lobby/?since=2", json!(3), "Cy"),
        ("/ws/rooms/quiet/", json!(3), "Cy"),
        ("/ws/consultations/c-1/", json!(5), "John"),
        ("/ws/v1/chat/", json!(5), "Aarav"),
        ("/ws/v1/chat/", json!(7), "Priya"),
        ("/ws/notifications/", json!(7), "Priya"),
        ("/ws/v1/notifications/?since=1", json!(7), "Priya"),
        ("/ws/messages/7/", json!(7), "Priya"),
        ("/ws/fraud-alerts/7/", json!(7), "Priya"),
        ("/ws/conversations/", json!(5), "Aarav"),
    ];
    sessions
        .into_iter()
        .map(|(path, user, name)| (format!("{path} as {user}"), opening_frames(server, keys, path, user, name)))
        .collect()
}

fn run_migrate(db: &Path, url: &str) -> Output {
    let dir = db.parent().unwrap();
    switchboard_command(&["migrate", "--to", url], &[("SWITCHBOARD_DB", db.to_str().unwrap())], dir)
        .output()
        .expect("run switchboard migrate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every table's rows, summed up: equal fingerprints mean nothing changed.
fn fingerprint(url: &str) -> String {
    let tables =
        psql(url, "SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    tables
        .split(' ')
        .map(|t| psql(url, &format!("SELECT '{t} ' || count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_sqlite_database_migrated_is_served_by_a_postgresql_node_as_it_was() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut source = sqlite_server(dir.clone());
    let db = source.db_path();
    let keys = Keys::of(&db);
    make_history(&source, &keys);
    let before = seen(&source, &keys);
    source.stop();
    // As after a crash between two writes of the streams' rows (twice a second): SQLite
    // finds the true positions in the rows, and so must the copy.
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert!(conn.execute("UPDATE streams SET last_seq = 1", []).unwrap() >= 4);
    drop(conn);

    // What the SQLite database holds, to check the copy and the next ids against.
    let tables = [
        "settings",
        "users",
        "customers",
        "conversations",
        "conversation_members",
        "messages",
        "message_reads",
        "notifications",
        "fraud_alerts",
        "banking_messages",
        "events",
    ];
    let counts: Vec<String> = tables.iter().map(|t| sqlite_value(&db, &format!("SELECT count(*) FROM {t}"))).collect();
    let max_message = sqlite_value(&db, "SELECT max(id) FROM messages");
    let max_notification = sqlite_value(&db, "SELECT max(id) FROM notifications");
    let lobby_last = sqlite_value(
        &db,
        "SELECT max(seq) FROM messages WHERE conversation_id = (SELECT id FROM conversations WHERE key = 'lobby')",
    );
    let user_7_last = sqlite_value(&db, "SELECT max(seq) FROM events WHERE stream = 'u:7'");
    assert_eq!(lobby_last, "4", "three messages and the backend's");

    let url = shared().database();
    let out = run_migrate(&db, &url);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let messages = &counts[5];
    assert!(stderr.contains(&format!("  messages: {messages}/{messages}\n")), "the progress of a table: {stderr}");
    assert!(stderr.contains("row counts verified"), "{stderr}");
    assert!(stdout.starts_with("switchboard: migrated ") && stdout.contains("row counts verified"), "{stdout}");

    // Every row is there, with its id.
    for (table, count) in tables.iter().zip(&counts) {
        assert_eq!(&psql(&url, &format!("SELECT count(*) FROM {table}")), count, "{table}");
    }
    assert_eq!(psql(&url, "SELECT max(id) FROM messages"), max_message);
    // Each stream is at its true position, whatever SQLite's streams rows said.
    assert_eq!(
        psql(
            &url,
            "SELECT last_seq FROM streams WHERE id = 'c:' || (SELECT id FROM conversations WHERE key = 'lobby')"
        ),
        lobby_last
    );
    assert_eq!(psql(&url, "SELECT last_seq FROM streams WHERE id = 'u:7'"), user_7_last);

    // A node on PostgreSQL: the same tokens work, and every client sees what it saw.
    let node = postgres_server(&url);
    let after = seen(&node, &keys);
    for ((what, want), (_, have)) in before.iter().zip(&after) {
        assert_eq!(have, want, "{what} differs after the migration");
    }
    for (what, frames) in &before {
        assert!(!frames.is_empty(), "{what}: no frame");
    }
    let all = serde_json::to_string(&before).unwrap();
    for needle in ["hi \\u0000 there \u{10FFFF}!", "\"unread_count\":2", "psst 3", "\"count\":2"] {
        assert!(all.contains(needle), "{needle} is not in what clients saw: {all}");
    }

    // What is written next takes the next ids and seqs: nothing collides.
    let mut cy = keys.connect(&node, "/ws/rooms/lobby/", json!(3), "Cy");
    cy.recv_type("room_users_list");
    let posted = keys.api(&node, "POST", "/api/rooms/lobby/messages", json!({"message": "after"}));
    assert_eq!(posted["id"].to_string(), (max_message.parse::<i64>().unwrap() + 1).to_string());
    loop {
        let frame = cy.recv_type("chat_message");
        if frame["message"] == "after" {
            assert_eq!(frame["seq"].to_string(), (lobby_last.parse::<i64>().unwrap() + 1).to_string());
            break;
        }
    }
    let mut erp = keys.connect(&node, "/ws/v1/notifications/", json!(7), "Priya");
    assert_eq!(erp.recv_type("unread_count")["count"], 2);
    let created = keys.api(&node, "POST", "/api/notifications", json!({"user_id": 7, "title": "new", "message": "m"}));
    assert_eq!(created["notification"]["id"].to_string(), (max_notification.parse::<i64>().unwrap() + 1).to_string());
    let notification = erp.recv_type("notification");
    assert_eq!(notification["seq"].to_string(), (user_7_last.parse::<i64>().unwrap() + 1).to_string());
    assert_eq!(erp.recv_type("unread_count")["count"], 3);
    let mut priya = keys.connect(&node, "/ws/v1/chat/", json!(7), "Priya");
    let mut aarav = keys.connect(&node, "/ws/v1/chat/", json!(5), "Aarav");
    priya.send_json(json!({"type": "chat_message", "message": "on postgres", "recipient_id": 5}));
    let direct = loop {
        // Past the unread one replayed on connecting.
        let frame = aarav.recv_type("chat_message");
        if frame["message"] == "on postgres" {
            break frame;
        }
    };
    assert_eq!(direct["id"].to_string(), (max_message.parse::<i64>().unwrap() + 2).to_string());
    drop(node);

    // A second run into the same database is refused and changes nothing.
    let kept = fingerprint(&url);
    let out = run_migrate(&db, &url);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("not empty") && stderr.contains("messages"), "{stderr}");
    assert_eq!(fingerprint(&url), kept);
}

#[test]
fn a_database_a_node_or_another_application_wrote_to_is_refused_and_left_as_it_was() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut source = sqlite_server(dir);
    let keys = Keys::of(&source.db_path());
    keys.api(&source, "POST", "/api/rooms/lobby/messages", json!({"message": "from SQLite"}));
    source.stop();
    let db = source.db_path();

    // A node on PostgreSQL already wrote there.
    let used = shared().database();
    let mut node = Server::start(&[("SWITCHBOARD_DATABASE_URL", &used)]);
    let (status, _) = node.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "from a node"})));
    assert_eq!(status, 201);
    node.stop();
    let kept = fingerprint(&used);
    let out = run_migrate(&db, &used);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("the target database is not empty:") && stderr.contains("messages"), "{stderr}");
    assert_eq!(fingerprint(&used), kept, "the refused target is untouched");

    // Another application's database: refused before switchboard creates anything.
    let foreign = shared().database();
    psql(&foreign, "CREATE TABLE orders (id INT); INSERT INTO orders VALUES (1)");
    let out = run_migrate(&db, &foreign);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds tables switchboard did not make (orders)"), "{stderr}");
    assert_eq!(
        psql(&foreign, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'"),
        "orders"
    );
}

#[test]
fn a_copy_that_does_not_match_commits_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut source = sqlite_server(dir);
    let keys = Keys::of(&source.db_path());
    for i in 0..3 {
        keys.api(
            &source,
            "POST",
            "/api/notifications",
            json!({"user_id": 7, "title": format!("t{i}"), "message": "m"}),
        );
    }
    source.stop();
    // A target whose notifications table silently drops a row: the counts catch it.
    let url = shared().database();
    switchboard::store::pg::migrations::apply(&mut switchboard::store::pg::connect(&url).unwrap()).unwrap();
    psql(
        &url,
        "CREATE FUNCTION drop_second() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN IF NEW.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER drop_second BEFORE INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION drop_second()",
    );
    let out = run_migrate(&source.db_path(), &url);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("nothing was committed")
            && last.contains("notifications has 3 rows in SQLite but 2 in PostgreSQL"),
        "{stderr}"
    );
    for table in ["settings", "notifications", "events", "streams"] {
        assert_eq!(psql(&url, &format!("SELECT count(*) FROM {table}")), "0", "{table} after the rollback");
    }
}

#[test]
fn a_missing_busy_or_old_source_and_a_bad_or_unreachable_target_are_named_in_one_line() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = shared().database();
    let failed = |out: Output| -> (Option<i32>, String) {
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        (out.status.code(), stderr)
    };
    let (code, line) = failed(run_migrate(&dir.path().join("none.db"), &url));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("none.db does not exist"), "{line}");

    let mut source = sqlite_server(dir.clone());
    let db = source.db_path();
    let (code, line) = failed(run_migrate(&db, &url));
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("in use by a running switchboard"), "{line}");
    source.stop();

    let command = |args: &[&str]| {
        switchboard_command(args, &[("SWITCHBOARD_DB", db.to_str().unwrap())], dir.path()).output().unwrap()
    };
    let (code, line) = failed(command(&["migrate"]));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--to"), "{line}");
    let (code, line) = failed(command(&["migrate", "--to=mysql://secret@x/y"]));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--to is not a postgres:// URL") && !line.contains("secret"), "{line}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Unreachable: tried again for a while (each try logged), then given up, as `serve` does.
    let out = command(&["migrate", "--to", &format!("postgres://postgres@127.0.0.1:{closed}/x")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.lines().last().unwrap().contains("--to: cannot reach PostgreSQL"), "{stderr}");
    let (code, line) =
        failed(command(&["migrate", "--to", &format!("postgres://postgres@127.0.0.1:{}/nope", shared().port)]));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--to: PostgreSQL refused the connection"), "{line}");

    // A database from before the last schema migration must be migrated by a server first.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)", [])
        .unwrap();
    drop(conn);
    let (code, line) = failed(run_migrate(&db, &url));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("older than this switchboard's"), "{line}");
    assert_eq!(psql(&url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0", "nothing was created");
}

/// Webhook events a SQLite server stored and could not deliver (its receiver down) are
/// migrated with their ids, and a node on PostgreSQL delivers them, then goes on with
/// larger ids; the cursor comes along (nothing delivered is sent again).
#[test]
fn undelivered_webhook_events_are_migrated_and_delivered_from_postgresql() {
    const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";
    let receiver = receiver::Receiver::start(HOOK_SECRET);
    let url_of_receiver = receiver.url();
    let hooks = [
        ("SWITCHBOARD_WEBHOOK_URL", url_of_receiver.as_str()),
        ("SWITCHBOARD_WEBHOOK_SECRET", HOOK_SECRET),
        ("SWITCHBOARD_WEBHOOK_EVENTS", "message.created"),
        ("SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "300"),
    ];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = vec![("SWITCHBOARD_DATABASE_URL", "")];
    settings.extend_from_slice(&hooks);
    let mut source = Server::start_in(dir, &settings);
    let post = |server: &Server, text: &str| {
        let (status, body) = server.api("POST", "/api/rooms/hooked/messages", Some(&json!({"message": text})));
        assert_eq!(status, 201, "{body}");
    };
    post(&source, "delivered before");
    eventually("the first event delivered", || receiver.events().len() == 1);
    receiver.stop();
    for i in 0..5 {
        post(&source, &format!("waiting {i}"));
    }
    // The cursor of the first is stored twice a second.
    std::thread::sleep(Duration::from_millis(1200));
    source.stop();
    let db = source.db_path();
    assert_eq!(sqlite_value(&db, "SELECT count(*) FROM webhook_events"), "5");

    let url = shared().database();
    let out = run_migrate(&db, &url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(psql(&url, "SELECT count(*) FROM webhook_events"), "5");
    assert_eq!(psql(&url, "SELECT delivered FROM webhook_cursor"), "1");
    assert_eq!(psql(&url, "SELECT next_id FROM webhook_next"), "7");

    receiver.up();
    let mut settings = vec![("SWITCHBOARD_DATABASE_URL", url.as_str())];
    settings.extend_from_slice(&hooks);
    let node = Server::start(&settings);
    post(&node, "stored on PostgreSQL");
    eventually("every event delivered", || receiver.events().len() == 7);
    let events = receiver.events();
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>(), "each once, with its id: {events:?}");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(events[6]["data"]["message"]["content"], "stored on PostgreSQL");
    drop(node);
}
