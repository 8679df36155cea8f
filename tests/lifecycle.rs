//! Start-up, configuration, first run, the token command and graceful shutdown.

mod util;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use util::*;

fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (i32, String, String) {
    let mut command = switchboard_command(args, env, dir);
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut a = server.connect_as("/ws/chat/bye/", json!(1), "ann");
    a.recv_type("room_users_list");
    let mut b = server.connect_as("/ws/rooms/other/", json!(2), "bob");
    b.recv_type("room_users_list");
    a.send_json(json!({"message": "last words"}));
    a.recv_type("chat_message");
    let started = Instant::now();
    let reader = std::thread::spawn(move || (a.expect_close(), b.expect_close()));
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reader.join().unwrap(), (Some(1001), Some(1001)));
    assert!(server.log_text().contains("switchboard stopped"));
    // What was acknowledged is there after the restart.
    let server = server.restart();
    let mut c = server.connect_as("/ws/chat/bye/", json!(3), "cy");
    c.recv_type("room_users_list");
    assert_eq!(c.recv()["message"], "last words");
}

#[test]
fn first_run_needs_no_configuration_and_prints_a_working_wscat_command() {
    if util::sqlite_only("the first run with no configuration is on SQLite") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir);
    let server = Server::start_in(dir.clone(), &[("SWITCHBOARD_JWT_SECRET", ""), ("SWITCHBOARD_API_KEY", "")]);
    // The banner is followed by the hint lines; read them from the log of stdout.
    let banner = &server.stdout[0];
    assert!(banner.contains("listening on ws://127.0.0.1:"), "{banner}");
    assert!(dir.path().join("switchboard.db").exists(), "the database is created beside it");
    drop(server);
    // Second start: same kept secret, and `switchboard token` signs with it.
    let server = Server::start_in(dir.clone(), &[("SWITCHBOARD_JWT_SECRET", ""), ("SWITCHBOARD_API_KEY", "")]);
    let (code, stdout, stderr) = run(&["token", "--user", "42", "--name", "Zed"], &[], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let token = stdout.trim();
    let mut client = server.connect(&format!("/ws/chat/lobby/?token={token}"));
    let list = client.recv();
    assert_eq!(list["users"][0], json!({"id": "42", "username": "Zed"}));
}

#[test]
fn the_first_run_hint_is_a_ready_to_paste_wscat_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env_remove("SWITCHBOARD_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut hint = None;
    for _ in 0..4 {
        let line = lines.next().unwrap().unwrap();
        if line.contains("wscat -c") {
            hint = Some(line);
            break;
        }
    }
    let hint = hint.expect("a wscat line");
    let url = hint.split('\'').nth(1).expect("quoted URL");
    let (request, _) = (url.to_string(), ());
    let stream = std::net::TcpStream::connect(url.trim_start_matches("ws://").split('/').next().unwrap()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, _) = tungstenite::client(request.as_str(), stream).unwrap();
    let frame = ws.read().unwrap();
    assert!(frame.to_text().unwrap().contains("room_users_list"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&[], &[("SWITCHBOARD_LISTEN", "nowhere")], "SWITCHBOARD_LISTEN"),
        (&["--max-message-bytes", "-1"], &[], "SWITCHBOARD_MAX_MESSAGE_BYTES"),
        (&[], &[("SWITCHBOARD_CHAT_PROTOCOL", "irc")], "SWITCHBOARD_CHAT_PROTOCOL"),
        (&[], &[("SWITCHBOARD_JWT_ALGORITHM", "none")], "SWITCHBOARD_JWT_ALGORITHM"),
        (&[], &[("SWITCHBOARD_JWT_ALGORITHM", "RS256")], "SWITCHBOARD_JWT_PUBLIC_KEY_FILE"),
        (
            &[],
            &[("SWITCHBOARD_JWT_ALGORITHM", "RS256"), ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem")],
            "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
        ),
        (&[], &[("SWITCHBOARD_JWT_SECRET", "short")], "SWITCHBOARD_JWT_SECRET"),
        (&[], &[("SWITCHBOARD_IDLE_TIMEOUT_SECS", "0")], "SWITCHBOARD_IDLE_TIMEOUT_SECS"),
        (&[], &[("SWITCHBOARD_LOG", "loud")], "SWITCHBOARD_LOG"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
    ];
    for (args, env, named) in cases {
        let (code, _, stderr) = run(args, env, dir.path());
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(named), "{named} named in {stderr:?}");
    }
    // A port already in use is named too (exit 1: not a bad value, a failed start).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run(&["--listen", &addr, "--api-listen", "127.0.0.1:0"], &[], dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("SWITCHBOARD_LISTEN"), "{stderr}");
}

#[test]
fn help_lists_every_setting() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(&["--help"], &[], dir.path());
    assert_eq!(code, 0);
    for name in [
        "SWITCHBOARD_LISTEN",
        "SWITCHBOARD_API_LISTEN",
        "SWITCHBOARD_DB",
        "SWITCHBOARD_JWT_SECRET",
        "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
        "SWITCHBOARD_JWT_ALGORITHM",
        "SWITCHBOARD_JWT_ISSUER",
        "SWITCHBOARD_JWT_AUDIENCE",
        "SWITCHBOARD_API_KEY",
        "SWITCHBOARD_IDLE_TIMEOUT_SECS",
        "SWITCHBOARD_MAX_MESSAGE_BYTES",
        "SWITCHBOARD_RATE_LIMIT_PER_MINUTE",
        "SWITCHBOARD_MAX_CONNECTIONS",
        "SWITCHBOARD_CHAT_PROTOCOL",
        "SWITCHBOARD_ALLOWED_ORIGINS",
        "SWITCHBOARD_LOG",
        "--listen",
        "token --user ID",
    ] {
        assert!(stdout.contains(name), "{name} missing from --help");
    }
    let (code, _, stderr) = run(&["token"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("--user"));
}

#[test]
fn a_foreign_origin_is_refused_when_origins_are_configured() {
    let server = Server::start(&[("SWITCHBOARD_ALLOWED_ORIGINS", "https://app.example, https://admin.example")]);
    let token = server.token(json!(1), "ann");
    let path = format!("/ws/chat/origin/?token={token}");
    let mut ok = server.try_connect(&path, &[("Origin", "https://app.example")]).expect("allowed origin");
    assert_eq!(ok.recv()["type"], "room_users_list");
    let refused = server.try_connect(&path, &[("Origin", "https://evil.example")]);
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a foreign origin was let in"),
    }
    // Clients that send no Origin (not browsers) are not affected.
    let mut native = server.connect(&path);
    assert_eq!(native.recv()["type"], "room_users_list");
}

#[test]
fn a_database_from_a_newer_version_is_refused_not_guessed_at() {
    if util::sqlite_only("SQLite's file (tests/postgres.rs refuses a newer PostgreSQL database)") {
        return;
    }
    let mut server = Server::start(&[]);
    let db = server.db_path();
    server.stop();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')", []).unwrap();
    drop(conn);
    let (code, _, stderr) = run(
        &["--db", db.to_str().unwrap(), "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
        db.parent().unwrap(),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("newer"), "{stderr}");
}

/// The WAL checkpoint thread runs SCHED_BATCH (policy 3 in /proc), so that on a shared
/// core its wake-ups never preempt the event loop; the loop stays SCHED_OTHER (0).
#[test]
fn the_checkpoint_thread_is_batch_scheduled_and_the_loop_is_not() {
    if util::sqlite_only("SQLite's checkpoint thread") {
        return;
    }
    let server = Server::start(&[]);
    let policies = || -> Vec<(String, u32)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("/proc") {
            let dir = task.expect("task").path();
            let name = std::fs::read_to_string(dir.join("comm")).expect("comm").trim().to_string();
            let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
            // The fields after the parenthesised name start at field 3; policy is field 41.
            let after = &stat[stat.rfind(')').expect("stat") + 2..];
            let policy: u32 = after.split(' ').nth(38).expect("policy field").parse().expect("number");
            found.push((name, policy));
        }
        found
    };
    // The thread sets its policy as it starts, which may be just after the server listens.
    eventually("the checkpoint thread runs SCHED_BATCH", || policies().contains(&("wal-checkpoint".into(), 3)));
    let all = policies();
    assert!(all.contains(&("switchboard".into(), 0)), "threads and policies: {all:?}");
}
