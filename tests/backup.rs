//! `switchboard backup FILE` beside a running server under chat load: the copy is
//! complete and consistent, holds every message acknowledged before the backup began,
//! serves a new server, and is not overwritten unless asked. Also the systemd timer
//! pair, checked by `systemd-analyze verify` where it exists.

mod util;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use util::*;

/// Runs `switchboard backup` with `args` on the database at `db`: (exit code, stdout,
/// stderr).
fn run_backup(args: &[&str], db: &Path, extra: &[(&str, &str)]) -> (i32, String, String) {
    let db = db.display().to_string();
    let mut env = vec![("SWITCHBOARD_DB", db.as_str())];
    env.extend_from_slice(extra);
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let output = switchboard_command(&all, &env, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run switchboard backup");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Fills the database of a stopped server with `rows` old messages of about 300 bytes
/// in a room of their own, so that the copy takes many steps.
fn fill(db: &Path, rows: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "BEGIN; INSERT INTO conversations (kind, key, title, created_at, updated_at) VALUES ('room', 'filler', 'filler', 1, 1);",
    )
    .unwrap();
    let room = conn.last_insert_rowid();
    {
        let mut insert = conn
            .prepare(
                "INSERT INTO messages (conversation_id, sender_id, sender_name, content, created_at, seq)
                 VALUES (?1, 'f', 'filler', ?2, 1, ?3)",
            )
            .unwrap();
        let text = "x".repeat(300);
        for seq in 1..=rows {
            insert.execute(rusqlite::params![room, text, seq as i64]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn a_backup_under_chat_load_is_complete_and_serves_a_new_server() {
    if sqlite_only("switchboard backup copies the SQLite file") {
        return;
    }
    let limits = [("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000")];
    let mut server = Server::start(&limits);
    server.stop();
    fill(&server.db_path(), 150_000);
    let server = server.restart();

    // Four clients chat in one room as fast as their own messages come back: a message
    // whose echo a client got is acknowledged (committed before it was sent).
    let acked: Arc<Mutex<Vec<(String, Instant, Duration)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for user in 1..=4 {
        let mut client = server.connect_as("/ws/chat/load/", json!(user), &format!("user{user}"));
        client.recv_type("room_users_list");
        let (acked, stop) = (acked.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let text = format!("u{user}-m{n}");
                let sent = Instant::now();
                client.send_json(json!({"message": text}));
                loop {
                    let frame = client.recv();
                    if frame["type"] == "chat_message" && frame["message"] == text.as_str() {
                        break;
                    }
                }
                let rtt = sent.elapsed();
                slowest = slowest.max(rtt);
                acked.lock().unwrap().push((text, Instant::now(), rtt));
            }
            client.close();
            (n, slowest)
        }));
    }
    std::thread::sleep(Duration::from_millis(800));

    let target_dir = Arc::new(tempfile::tempdir().unwrap());
    let target = target_dir.path().join("switchboard.db");
    let began = Instant::now();
    let before: Vec<String> = acked.lock().unwrap().iter().map(|(text, ..)| text.clone()).collect();
    let (code, out, err) = run_backup(&[target.to_str().unwrap()], &server.db_path(), &[]);
    let took = began.elapsed();
    assert_eq!(code, 0, "backup failed: {out}{err}");
    assert!(out.contains("integrity ok"), "{out}");
    let (during, slowest_during, slowest_before) = {
        let acked = acked.lock().unwrap();
        let during: Vec<Duration> =
            acked.iter().filter(|(_, at, _)| *at > began && *at < began + took).map(|a| a.2).collect();
        let before = acked.iter().filter(|(_, at, _)| *at <= began).map(|a| a.2).max().unwrap_or_default();
        (during.len(), during.into_iter().max().unwrap_or_default(), before)
    };
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    for client in clients {
        let (n, slow) = client.join().unwrap();
        sent += n;
        slowest = slowest.max(slow);
    }
    let size = std::fs::metadata(&target).unwrap().len();
    eprintln!(
        "backup of {size} bytes took {:.2} s under load: {} messages acknowledged before it, {during} during it, {sent} sent in all; slowest round trip before it {:.1} ms, during it {:.1} ms, overall {:.1} ms",
        took.as_secs_f64(),
        before.len(),
        slowest_before.as_secs_f64() * 1000.0,
        slowest_during.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    assert!(!before.is_empty() && during > 0, "the load ran before and during the backup");
    assert!(!Path::new(&format!("{}-wal", target.display())).exists(), "the copy needs no -wal");

    // The copy on its own: complete, and everything acknowledged before the backup.
    let copy = rusqlite::Connection::open_with_flags(&target, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let fillers: i64 = copy
        .query_row(
            "SELECT count(*) FROM messages JOIN conversations c ON c.id = conversation_id WHERE c.key = 'filler'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fillers, 150_000);
    let stored: std::collections::HashSet<String> = copy
        .prepare("SELECT content FROM messages JOIN conversations c ON c.id = conversation_id WHERE c.key = 'load'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing: Vec<&String> = before.iter().filter(|text| !stored.contains(*text)).collect();
    assert!(missing.is_empty(), "acknowledged before the backup but not in it: {missing:?}");
    // Seqs in the copy are gap-free: one snapshot, not pages of different moments.
    let seqs: Vec<i64> = copy
        .prepare("SELECT seq FROM messages JOIN conversations c ON c.id = conversation_id WHERE c.key = 'load' ORDER BY messages.id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    drop(copy);

    // A new server on the copy serves the room's history and takes new messages.
    let restored = Server::start_in(target_dir.clone(), &limits);
    let mut client = restored.connect_as("/ws/chat/load/", json!(9), "reader");
    client.recv_type("room_users_list");
    client.send_json(json!({"message": "after restore"}));
    let echoed = loop {
        let frame = client.recv();
        if frame["message"] == "after restore" {
            break frame;
        }
    };
    assert_eq!(echoed["seq"].as_i64(), Some(seqs.len() as i64 + 1), "numbering goes on from the copy: {echoed}");
    drop(restored);

    // Again to the same file: refused without --overwrite, the copy untouched.
    let (code, _, err) = run_backup(&[target.to_str().unwrap()], &server.db_path(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exists; give --overwrite to replace it"), "{err}");
    let (code, out, err) = run_backup(&["--overwrite", target.to_str().unwrap()], &server.db_path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    let leftovers = std::fs::read_dir(target_dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"));
    assert_eq!(leftovers.count(), 0);
}

#[test]
fn bad_backups_are_refused_with_a_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    let (code, _, err) = run_backup(&["copy.db"], &missing, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no database at"), "{err}");
    assert!(!missing.exists(), "the source is never created");
    let (code, _, err) = run_backup(&[], &missing, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("backup needs FILE"), "{err}");
    let (code, _, err) = run_backup(&["a.db", "--keep"], &missing, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown flag"), "{err}");
    let not_ours = dir.path().join("other.db");
    rusqlite::Connection::open(&not_ours).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let (code, _, err) = run_backup(&[dir.path().join("c.db").to_str().unwrap()], &not_ours, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not a switchboard database"), "{err}");
    // PostgreSQL: nothing to copy here; pg_dump is the tool.
    let (code, _, err) =
        run_backup(&["copy.db"], &missing, &[("SWITCHBOARD_DATABASE_URL", "postgres://switchboard@127.0.0.1:1/none")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pg_dump"), "{err}");
}

#[test]
fn the_backup_timer_and_its_service_verify() {
    let Ok(found) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: the unit files are not verified here (.ci/check-static does)");
        return;
    };
    assert!(found.status.success());
    let dir = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut names = Vec::new();
    for name in ["switchboard.service", "switchboard-backup.service", "switchboard-backup.timer"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap().replace("/usr/local/bin/switchboard", bin());
        std::fs::write(dir.path().join(name), text).unwrap();
        names.push(dir.path().join(name));
    }
    let output = std::process::Command::new("systemd-analyze").arg("verify").args(&names).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}
