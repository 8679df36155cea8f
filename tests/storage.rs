//! The database file under faults: a full disk, a read-only file, a second server on the
//! same file, the file removed while running, a damaged file, and who may read it.
//! Tests that mount a small filesystem need root (CI runs as root); elsewhere they say
//! so and return.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use util::*;

/// Runs the binary to completion (for start-ups that must fail).
fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String, String) {
    let mut command = switchboard_command(args, env, dir);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = wait_with_deadline(&mut child, WAIT).expect("switchboard should have refused to start");
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: Arc<tempfile::TempDir>,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if !is_root() {
            eprintln!("skipped: mounting a small filesystem needs root (CI runs as root)");
            return None;
        }
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs");
        Some(SmallDisk { dir })
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(self.dir.path()).status();
        assert!(ok.unwrap().success(), "remount {options}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn db_env(path: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHBOARD_DB", path.display().to_string()),
        ("SWITCHBOARD_LISTEN", "127.0.0.1:0".into()),
        ("SWITCHBOARD_API_LISTEN", "127.0.0.1:0".into()),
        ("SWITCHBOARD_JWT_SECRET", SECRET.into()),
        ("SWITCHBOARD_API_KEY", API_KEY.into()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn a_second_server_on_the_same_database_is_refused_with_one_line() {
    if util::sqlite_only("SQLite's file lock") {
        return;
    }
    let server = Server::start(&[]);
    let env = db_env(&server.db_path());
    let (code, _, stderr) = run(&[], &env_refs(&env), server.dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use by another switchboard process"), "{stderr}");
    assert!(stderr.contains(&server.db_path().display().to_string()), "{stderr}");
    // The first one is untouched, and `switchboard token` still works beside it.
    let (status, _) = server.api("GET", "/healthz", None);
    assert_eq!(status, 200);
    let (code, token, stderr) = run(&["token", "--user", "7"], &env_refs(&env), server.dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(token.trim().starts_with("eyJ"));
}

#[test]
fn the_database_and_its_wal_are_private_and_an_old_readable_one_is_made_private() {
    if util::sqlite_only("SQLite's file modes") {
        return;
    }
    let server = Server::start(&[]);
    let mut client = server.connect_as("/ws/rooms/modes/", json!(1), "ann");
    client.recv_type("room_users_list");
    client.send_json(json!({"message": "hi"}));
    client.recv_type("chat_message");
    let db = server.db_path();
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
    }
    let mut server = server;
    server.stop();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = server.restart();
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(server.log_text().contains("made it 0600"), "{}", server.log_text());
}

/// Everything the server prints to stdout in its first half second, then stops it.
fn banner(env: &[(&str, &str)], dir: &Path) -> String {
    let mut command = switchboard_command(&[], env, dir);
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_configured_api_key_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let base = [("SWITCHBOARD_LISTEN", "127.0.0.1:0"), ("SWITCHBOARD_API_LISTEN", "127.0.0.1:0")];
    // Configured key, generated JWT secret: the wscat hint is printed, the key is not.
    let mut env = base.to_vec();
    env.push(("SWITCHBOARD_API_KEY", API_KEY));
    let out = banner(&env, dir.path());
    assert!(out.contains("wscat -c"), "{out}");
    assert!(!out.contains(API_KEY), "the configured API key was printed:\n{out}");
    assert!(!out.contains("Bearer"), "{out}");
    // Both configured: nothing secret at all, not even a token signed with the secret.
    env.push(("SWITCHBOARD_JWT_SECRET", SECRET));
    let out = banner(&env, dir.path());
    assert!(out.contains("listening on"), "{out}");
    assert!(!out.contains(API_KEY) && !out.contains("token=") && !out.contains(SECRET), "{out}");
    // Neither configured: the generated ones are shown for trying things out.
    let fresh = tempfile::tempdir().unwrap();
    let out = banner(&base, fresh.path());
    assert!(out.contains("wscat -c") && out.contains("Bearer"), "{out}");
}

#[test]
fn an_integrity_check_at_start_refuses_a_damaged_database() {
    if util::sqlite_only("SQLite's integrity check") {
        return;
    }
    let mut server = Server::start(&[]);
    for i in 0..20 {
        let message = format!("{i} {}", "x".repeat(3000));
        let (status, _) = server.api("POST", "/api/rooms/lobby/messages", Some(&json!({ "message": message })));
        assert_eq!(status, 201);
    }
    server.stop();
    let db = server.db_path();
    // Damage the last pages (messages and their overflow pages); the schema stays
    // readable, so only a check finds it.
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 12 * 4096, "{} bytes", bytes.len());
    let end = bytes.len();
    for b in &mut bytes[end - 4 * 4096..] {
        *b = 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let mut env = db_env(&db);
    env.push(("SWITCHBOARD_DB_CHECK", "quick".into()));
    let (code, _, stderr) = run(&[], &env_refs(&env), server.dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed its integrity check"), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
}

#[test]
fn an_intact_database_passes_the_integrity_check() {
    if util::sqlite_only("SQLite's integrity check") {
        return;
    }
    let server = Server::start(&[("SWITCHBOARD_DB_CHECK", "full")]);
    assert!(server.log_text().contains("passed PRAGMA integrity_check"), "{}", server.log_text());
}

/// Runs the binary as `nobody` (root only) until it exits or `WAIT` passes.
fn run_as_nobody(env: &[(&str, &str)], dir: &Path, stop_after: Option<Duration>) -> (i32, String, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut command = switchboard_command(&[], env, dir);
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).uid(65534).gid(65534);
    let mut child = command.spawn().unwrap();
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    }
    let status = wait_with_deadline(&mut child, WAIT).expect("switchboard did not exit");
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn a_read_only_database_stops_start_up_naming_the_file() {
    // The file is not writable for the server's user (as after a careless chown or
    // restore): SQLite would open it read-only, health would say ok and every client
    // would be closed with 1011.
    if !is_root() {
        eprintln!("skipped: running the server as another user needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = dir.path().join("switchboard.db");
    let env = db_env(&db);
    let (code, out, err) = run_as_nobody(&env_refs(&env), dir.path(), Some(Duration::from_millis(500)));
    assert_eq!(code, 0, "{out}{err}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();
    let (code, out, err) = run_as_nobody(&env_refs(&env), dir.path(), None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(!out.contains("listening"), "{out}");
}

#[test]
fn a_database_on_a_read_only_filesystem_stops_start_up_naming_the_file() {
    let Some(disk) = SmallDisk::mount("4m") else { return };
    let db = disk.dir.path().join("switchboard.db");
    let env = db_env(&db);
    {
        let mut server = Server::start_in(disk.dir.clone(), &env_refs(&env));
        server.stop();
    }
    disk.remount("ro");
    let (code, stdout, stderr) = run(&[], &env_refs(&env), disk.dir.path());
    disk.remount("rw");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[test]
fn a_database_removed_while_running_is_noticed_refused_and_logged_once() {
    if util::sqlite_only("SQLite's file removed") {
        return;
    }
    let server = Server::start(&[]);
    let (status, _) = server.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "before"})));
    assert_eq!(status, 201);
    let dir = server.dir.path().to_path_buf();
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    eventually("health reports the removed database", || server.api("GET", "/healthz", None).0 == 503);
    let (_, health) = server.api("GET", "/healthz", None);
    assert!(health["store"].as_str().unwrap().contains("was removed"), "{health}");
    let (status, body) = server.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "after"})));
    assert_eq!(status, 503, "{body}");
    let mut client = server.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    assert_eq!(client.expect_close(), Some(1011));
    std::thread::sleep(Duration::from_millis(1200));
    let log = server.log_text();
    assert_eq!(log.matches("was removed while running").count(), 1, "{log}");
}

/// `POST /api/rooms/full/messages` with `text`, each on a connection of its own;
/// returns the status and the whole response.
fn post_to_full_room(api: std::net::SocketAddr, text: &str) -> (u16, String) {
    let body = json!({ "message": text }).to_string();
    let request = format!(
        "POST /api/rooms/full/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_http_response(api, request.as_bytes())
}

/// Writes a file until the filesystem has no room left.
fn fill_up(dir: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

/// Posts one message per request from several threads at once (so that requests share
/// turns), and returns each request's text and status.
fn post_until_full(server: &Server, threads: usize, per_thread: usize, size: usize) -> Vec<(String, u16)> {
    let api = server.api;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut results = Vec::new();
                for i in 0..per_thread {
                    let text = format!("t{t}-m{i}-{}", "p".repeat(size));
                    let (status, response) = post_to_full_room(api, &text);
                    if status != 201 {
                        assert!(
                            !response.to_lowercase().contains("sqlite"),
                            "SQLite's wording reached the client: {response}"
                        );
                        assert!(
                            !response.contains("database or disk"),
                            "SQLite's wording reached the client: {response}"
                        );
                    }
                    results.push((text, status));
                }
                results
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

#[test]
fn on_a_full_disk_what_was_acknowledged_is_stored_and_nothing_else() {
    if util::sqlite_only("SQLite's file on a full disk") {
        return;
    }
    let Some(disk) = SmallDisk::mount("640k") else { return };
    let env = db_env(&disk.dir.path().join("switchboard.db"));
    let mut env = env_refs(&env);
    env.push(("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"));
    let server = Server::start_in(disk.dir.clone(), &env);
    let mut chat = server.connect_as("/ws/rooms/full/", json!(1), "ann");
    chat.recv_type("room_users_list");
    // A room with history and listeners keeps its history rendered (src/recent.rs): what
    // a failed commit leaves there must not reach the next socket.
    assert_eq!(server.api("POST", "/api/rooms/full/messages", Some(&json!({"message": "seed"}))).0, 201);
    let mut keeper = server.connect_as("/ws/rooms/full/", json!(2), "kim");
    keeper.recv_type("room_users_list");

    let results = post_until_full(&server, 8, 60, 1500);
    let failed = results.iter().filter(|(_, s)| *s != 201).count();
    assert!(failed > 0, "the disk never filled up");
    assert!(
        results.iter().all(|(_, s)| *s == 201 || *s == 503),
        "{:?}",
        results.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    // Take the rest of the disk too, so that even a small write cannot find room (SQLite
    // may reuse free pages and the WAL for a while), then the 503 carries Retry-After.
    fill_up(disk.dir.path());
    let mut results = results;
    let mut refused = None;
    for i in 0..50 {
        let text = format!("one more {i}");
        let (status, raw) = post_to_full_room(server.api, &text);
        results.push((text, status));
        if status != 201 {
            refused = Some(raw);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let raw = refused.expect("a full disk refuses a small write too");
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.contains("Retry-After:"), "{raw}");
    // Health says the store cannot write. (Read once: the store's probe, a tiny write
    // once a second, may then succeed in WAL space a checkpoint freed, and health with it.)
    let mut health = Value::Null;
    eventually("health reports the full disk", || {
        let (status, body) = server.api("GET", "/healthz", None);
        health = body;
        status == 503
    });
    assert!(health["store"].as_str().unwrap().starts_with("cannot write"), "{health}");
    // A socket joining now gets only stored messages as history.
    let acknowledged: std::collections::HashSet<&str> =
        results.iter().filter(|(_, s)| *s == 201).map(|(t, _)| t.as_str()).chain(["seed"]).collect();
    let mut late = server.connect_as("/ws/rooms/full/", json!(3), "lee");
    late.recv_type("room_users_list");
    late.ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while let Ok(tungstenite::Message::Text(text)) = late.ws.read() {
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "chat_message" {
            let text = frame["message"].as_str().unwrap();
            assert!(
                acknowledged.contains(text),
                "history holds a message that was refused: {}",
                &text[..12.min(text.len())]
            );
        }
    }
    drop((late, keeper));
    // A chat sender whose message cannot be stored hears so.
    drop(chat);
    let mut chat = server.connect_as("/ws/rooms/full/", json!(1), "ann");
    chat.recv_type("room_users_list");
    chat.send_json(json!({"message": "x".repeat(4000)}));
    let frame = loop {
        let frame = chat.recv();
        if frame["type"] != "chat_message" {
            break frame;
        }
    };
    assert!(frame["error"].as_str().unwrap().contains("could not be stored"), "{frame}");
    let log = server.log_text();
    let failures = log.matches("WAL checkpoints are failing").count();
    assert!(failures <= 2, "checkpoint failures logged {failures} times:\n{log}");

    // Room again, then a restart: every 201 is there, nothing else is.
    let mut server = server;
    server.stop();
    std::fs::remove_file(disk.dir.path().join("filler")).unwrap();
    disk.remount("size=64m");
    let server = server.restart();
    let (status, _) = server.api("GET", "/healthz", None);
    assert_eq!(status, 200);
    let stored: std::collections::HashSet<String> = {
        let conn = rusqlite::Connection::open(server.db_path()).unwrap();
        let mut statement = conn.prepare("SELECT content FROM messages").unwrap();
        statement.query_map([], |row| row.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    };
    for (text, status) in &results {
        let present = stored.contains(text);
        assert_eq!(present, *status == 201, "{} answered {status} but present={present}", &text[..10]);
    }
    let acknowledged = results.iter().filter(|(_, s)| *s == 201).count();
    eprintln!("{acknowledged} acknowledged and stored, {failed} refused and absent");
}

#[test]
fn health_recovers_when_the_disk_has_room_again() {
    if util::sqlite_only("SQLite's file on a full disk") {
        return;
    }
    let Some(disk) = SmallDisk::mount("640k") else { return };
    let env = db_env(&disk.dir.path().join("switchboard.db"));
    let server = Server::start_in(disk.dir.clone(), &env_refs(&env));
    // A listener in the room all along: the numbers of failed commits are taken again,
    // and it must still get every stored message live, numbered without a gap.
    let mut listener = server.connect_as("/ws/rooms/full/", json!(99), "watcher");
    listener.recv_type("room_users_list");
    let heard = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        loop {
            let frame = listener.recv();
            seqs.push(frame["seq"].as_i64().unwrap());
            if frame["message"] == "after" {
                return seqs;
            }
        }
    });
    let results = post_until_full(&server, 2, 200, 1500);
    assert!(results.iter().any(|(_, s)| *s == 503));
    fill_up(disk.dir.path());
    eventually("health reports the full disk", || server.api("GET", "/healthz", None).0 == 503);
    std::fs::remove_file(disk.dir.path().join("filler")).unwrap();
    disk.remount("size=64m");
    eventually("health recovers", || server.api("GET", "/healthz", None).0 == 200);
    let (status, _) = server.api("POST", "/api/rooms/full/messages", Some(&json!({"message": "after"})));
    assert_eq!(status, 201);
    // The server logs it before /healthz says 200; the harness reads its stderr on a
    // thread of its own, so the line may reach the test a moment later.
    eventually("the recovery is logged", || server.log_text().contains("database writes work again"));
    let acknowledged = results.iter().filter(|(_, s)| *s == 201).count() as i64;
    assert_eq!(heard.join().unwrap(), (1..=acknowledged + 1).collect::<Vec<i64>>());
}

#[test]
fn large_requests_that_fill_the_disk_mid_turn_are_either_answered_201_and_stored_or_not_stored() {
    if util::sqlite_only("SQLite's file on a full disk") {
        return;
    }
    // Requests of ~200 KB from many clients at once: a turn's transaction outgrows
    // SQLite's page cache, pages spill to the WAL before the commit, the disk fills in
    // the middle of the turn and SQLite rolls the transaction back by itself. Requests
    // later in that turn must not commit on their own (a savepoint outside a
    // transaction starts and commits one) while being answered with an error.
    let Some(disk) = SmallDisk::mount("3m") else { return };
    let env = db_env(&disk.dir.path().join("switchboard.db"));
    let server = Server::start_in(disk.dir.clone(), &env_refs(&env));
    let results = post_until_full(&server, 16, 12, 200_000);
    let failed = results.iter().filter(|(_, s)| *s != 201).count();
    assert!(failed > 0, "the disk never filled up");
    let mut server = server;
    server.stop();
    disk.remount("size=64m");
    let server = server.restart();
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let mut statement = conn.prepare("SELECT substr(content, 1, 12) FROM messages").unwrap();
    let stored: std::collections::HashSet<String> =
        statement.query_map([], |row| row.get::<_, String>(0)).unwrap().map(Result::unwrap).collect();
    let mut wrong = Vec::new();
    for (text, status) in &results {
        if stored.contains(&text[..12]) != (*status == 201) {
            wrong.push(format!("{} answered {status}", &text[..8]));
        }
    }
    assert!(wrong.is_empty(), "{} of {} requests: {wrong:?}", wrong.len(), results.len());
    eprintln!("{} acknowledged and stored, {failed} refused and absent", results.len() - failed);
}
