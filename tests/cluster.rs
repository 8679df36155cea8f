//! Several nodes on one PostgreSQL (design/cluster.md §5.5, the polling path): real
//! binaries, real sockets, the throwaway PostgreSQL of `util::pg`. Clients of one
//! conversation or user on different nodes see every stored event once, in order,
//! whichever node stored it. With Redis too: the bus, and presence, the per-user cap
//! and the rate limit over all nodes.

// Only part of the receiver's modes are used here (tests/webhooks.rs uses them all).
#[allow(dead_code)]
#[path = "util/receiver.rs"]
mod receiver;
mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::pg::shared;
use util::*;

/// Two nodes on a fresh database, polling every 50 ms (the default is 250) to keep the
/// tests short.
fn two_nodes() -> (Server, Server, String) {
    let url = shared().database();
    let settings = [("SWITCHBOARD_DATABASE_URL", url.as_str()), ("SWITCHBOARD_POLL_INTERVAL_MS", "50")];
    (Server::start(&settings), Server::start(&settings), url)
}

/// The next `chat_message`'s text and seq, skipping presence frames.
fn said(client: &mut Client) -> (String, i64) {
    let frame = client.recv_type("chat_message");
    (frame["message"].as_str().unwrap_or_default().to_string(), frame["seq"].as_i64().unwrap_or(-1))
}

#[test]
fn a_room_with_members_on_two_nodes_gets_every_message_once_in_order() {
    let (a, b, url) = two_nodes();
    let mut ann = a.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    ann.recv_type("room_users_list");
    let mut bo = b.connect_as("/ws/rooms/lobby/", json!(2), "bo");
    bo.recv_type("room_users_list");
    let mut cy = a.connect_as("/ws/rooms/lobby/", json!(3), "cy");
    cy.recv_type("room_users_list");
    // Writers on both nodes at once, interleaved.
    for i in 0..20 {
        ann.send_json(json!({"message": format!("a{i}")}));
        bo.send_json(json!({"message": format!("b{i}")}));
    }
    let mut seen = Vec::new();
    for client in [&mut ann, &mut bo, &mut cy] {
        let got: Vec<(String, i64)> = (0..40).map(|_| said(client)).collect();
        let seqs: Vec<i64> = got.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "every message once, in seq order: {got:?}");
        client.expect_silence(Duration::from_millis(300));
        seen.push(got);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one order on both nodes: {seen:?}");
    // Each writer's own messages in the order sent.
    for prefix in ["a", "b"] {
        let mine: Vec<&String> = seen[0].iter().map(|(m, _)| m).filter(|m| m.starts_with(prefix)).collect();
        let sent: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(mine, sent.iter().collect::<Vec<_>>());
    }
    let (_, stored) = shared().psql(&url, "SELECT count(*), count(DISTINCT seq), max(seq) FROM messages");
    assert_eq!(stored, "40|40|40");

    // A client joining later on either node gets the same history.
    let mut dee = b.connect_as("/ws/rooms/lobby/", json!(4), "dee");
    dee.recv_type("room_users_list");
    let history: Vec<(String, i64)> = (0..40).map(|_| said(&mut dee)).collect();
    assert_eq!(history.last().map(|(_, seq)| *seq), Some(40), "{history:?}");
    // The server API on one node reaches the other's listeners.
    let (status, body) = a.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "from the backend"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(said(&mut dee), ("from the backend".to_string(), 41));
    assert_eq!(said(&mut bo), ("from the backend".to_string(), 41));
}

fn consultation(server: &Server, id: &str, members: Value) {
    let body =
        json!({"kind": "consultation", "id": id, "title": "t", "status": "active", "priority": 1, "members": members});
    let (status, answer) = server.api("POST", "/api/conversations", Some(&body));
    assert_eq!(status, 201, "{answer}");
}

#[test]
fn a_consultation_across_nodes_carries_messages_and_read_receipts() {
    let (a, b, _) = two_nodes();
    consultation(&a, "c1", json!([5, 6]));
    let mut doctor = a.connect_as("/ws/consultations/c1/", json!(5), "Dr. Rao");
    doctor.recv_type("connection_established");
    let mut patient = b.connect_as("/ws/consultations/c1/", json!(6), "Mira");
    patient.recv_type("connection_established");
    doctor.send_json(json!({"type": "chat_message", "message": "How are you?"}));
    let message = patient.recv_type("chat_message");
    assert_eq!(
        (message["data"]["content"].as_str(), message["data"]["sender_id"].as_str()),
        (Some("How are you?"), Some("5"))
    );
    assert_eq!(doctor.recv_type("chat_message")["data"], message["data"], "the sender's copy is the same");
    let id = message["data"]["id"].as_str().unwrap().to_string();
    patient.send_json(json!({"type": "read_receipt", "message_id": id}));
    let receipt = doctor.recv_type("read_receipt");
    assert_eq!((receipt["message_id"].as_str(), receipt["user_id"].as_str()), (Some(id.as_str()), Some("6")));

    // Members changed on one node: the removed member's session on the other closes.
    let (status, body) = b.api("PUT", "/api/conversations/consultation/c1/members", Some(&json!({"members": [5]})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(patient.expect_close(), Some(4003));
}

#[test]
fn direct_messages_and_their_read_mark_cross_nodes() {
    let (a, b, url) = two_nodes();
    let mut priya = a.connect_as("/ws/v1/chat/", json!(7), "Priya Patel");
    let mut aarav = b.connect_as("/ws/v1/chat/", json!(5), "Aarav Sharma");
    // Aarav's first session is recorded by node b; node a must know him to send to him.
    eventually("node a knows user 5", || shared().psql(&url, "SELECT count(*) FROM users WHERE id = '5'").1 == "1");
    priya.send_json(json!({"type": "chat_message", "message": "Hello, are you available?", "recipient_id": 5}));
    let message = aarav.recv_type("chat_message");
    assert_eq!(
        (message["message"].as_str(), message["sender_id"].as_i64()),
        (Some("Hello, are you available?"), Some(7))
    );
    aarav.send_json(json!({"type": "mark_read", "sender_id": 7}));
    let read = priya.recv_type("messages_read");
    assert_eq!(read["reader_id"], 5, "{read}");
}

#[test]
fn notifications_and_a_logout_from_one_node_reach_the_users_sessions_on_the_other() {
    let (a, b, _) = two_nodes();
    let mut app = b.connect_as("/ws/notifications/", json!(7), "ann");
    assert_eq!(app.recv_type("unread_count")["count"], 0);
    let mut erp = b.connect_as("/ws/v1/notifications/", json!(7), "ann");
    erp.recv_type("unread_count");
    let (status, body) =
        a.api("POST", "/api/notifications", Some(&json!({"user_id": 7, "title": "t", "message": "m"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.recv_type("notification")["data"]["title"], "t");
    assert_eq!(app.recv(), json!({"type": "unread_count", "count": 1}));
    assert_eq!(erp.recv_type("notification")["title"], "t");
    assert_eq!(erp.recv_type("unread_count")["count"], 1);

    // The backend logs the user out through node a: node b closes every session of theirs.
    let (status, body) = a.api("POST", "/api/users/7/disconnect", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(erp.expect_close(), Some(4003));
    assert!(app.expect_close().is_some());

    // A user whose only session on node b is in a room (which follows a conversation,
    // not the user's stream) is logged out there too, once.
    let mut room = b.connect_as("/ws/rooms/r/", json!(8), "bo");
    room.recv_type("room_users_list");
    let (status, body) = a.api("POST", "/api/users/8/disconnect", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(room.expect_close(), Some(4001));
    let mut again = b.connect_as("/ws/rooms/r/", json!(8), "bo");
    again.recv_type("room_users_list");
    again.expect_silence(Duration::from_millis(500));
}

// ---- Faults under load.

use std::thread::JoinHandle;
use std::time::Instant;

/// A client in room `load` that sends `sends` messages (`<name>-<i>`) while it reads,
/// then reads until 5 s of silence (a batch waiting for PostgreSQL to come back takes a
/// few) or until its connection ends.
/// Returns every `chat_message` it saw as (text, seq), how many sends succeeded, and how
/// many error frames came back.
type Seen = (Vec<(String, i64)>, usize, usize);
fn load_client(server: &Server, user: i64, name: &str, sends: usize) -> JoinHandle<Seen> {
    let mut client = server.connect_as("/ws/rooms/load/", json!(user), name);
    client.recv_type("room_users_list");
    let name = name.to_string();
    std::thread::spawn(move || {
        let (mut seen, mut sent, mut errors) = (Vec::new(), 0, 0);
        client.ws.get_mut().set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut quiet_since = Instant::now();
        loop {
            if sent < sends {
                let text = json!({"message": format!("{name}-{sent}")}).to_string();
                if client.ws.send(tungstenite::Message::Text(text.into())).is_err() {
                    break;
                }
                sent += 1;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() > Duration::from_secs(5) {
                break;
            }
            match client.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "chat_message" {
                        seen.push((frame["message"].as_str().unwrap().to_string(), frame["seq"].as_i64().unwrap()));
                        quiet_since = Instant::now();
                    } else if frame["error"].is_string() {
                        errors += 1;
                        quiet_since = Instant::now();
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (seen, sent, errors)
    })
}

/// The stored messages of room `load`: text → seqs (a text stored twice has two).
fn stored(pg: &util::pg::Postgres, url: &str) -> std::collections::HashMap<String, Vec<i64>> {
    let (ok, rows) = pg.psql(url, "SELECT content, seq FROM messages ORDER BY seq");
    assert!(ok, "{rows}");
    let mut stored = std::collections::HashMap::<String, Vec<i64>>::new();
    for row in rows.lines().filter(|l| !l.is_empty()) {
        let (content, seq) = row.rsplit_once('|').unwrap();
        stored.entry(content.to_string()).or_default().push(seq.parse().unwrap());
    }
    stored
}

/// Every message a client saw is stored exactly once, with the seq it was seen with;
/// the stored seqs are 1..=n without gaps.
fn check_seen_against_stored(seen: &[(String, i64)], stored: &std::collections::HashMap<String, Vec<i64>>) {
    for (text, seq) in seen {
        assert_eq!(stored.get(text), Some(&vec![*seq]), "{text} was seen with seq {seq}");
    }
    let mut seqs: Vec<i64> = stored.values().flatten().copied().collect();
    seqs.sort();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "stored seqs are gap-free and unique");
}

/// A client's view: seqs strictly rising by one (each once, in order) from its first.
fn check_in_order(who: &str, seen: &[(String, i64)]) {
    let seqs: Vec<i64> = seen.iter().map(|(_, seq)| *seq).collect();
    if let Some(at) = seqs.windows(2).position(|w| w[1] != w[0] + 1) {
        panic!("{who} saw a gap or a repeat: ... {:?} ...", &seqs[at.saturating_sub(3)..(at + 4).min(seqs.len())]);
    }
}

#[test]
fn a_node_killed_under_load_loses_nothing_any_client_saw() {
    let url = shared().database();
    let settings = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_POLL_INTERVAL_MS", "50"),
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"),
    ];
    let (mut a, b) = (Server::start(&settings), Server::start(&settings));
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_a.push(load_client(&a, 10 + i, &format!("a{i}"), 400));
        on_b.push(load_client(&b, 20 + i, &format!("b{i}"), 400));
    }
    std::thread::sleep(Duration::from_millis(700));
    a.kill();
    let (mut seen, mut sent_b) = (Vec::new(), 0);
    for (i, handle) in on_a.into_iter().enumerate() {
        let (got, _, _) = handle.join().unwrap();
        check_in_order(&format!("a{i}"), &got);
        seen.extend(got);
    }
    for (i, handle) in on_b.into_iter().enumerate() {
        let (got, sent, _) = handle.join().unwrap();
        check_in_order(&format!("b{i}"), &got);
        sent_b += sent;
        // Node b's clients keep being served after node a died: everything node b's
        // writers sent reached them (each sends 400).
        let from_b = got.iter().filter(|(text, _)| text.starts_with('b')).count();
        assert_eq!(from_b, 1200, "b{i} saw every message of node b's writers");
        seen.extend(got);
    }
    assert_eq!(sent_b, 1200);
    let stored = stored(shared(), &url);
    check_seen_against_stored(&seen, &stored);
    assert!(stored.keys().filter(|t| t.starts_with('a')).count() > 0, "node a stored something before it died");
    drop(b);
}

#[test]
fn postgresql_restarted_under_load_loses_nothing_acknowledged_and_service_resumes() {
    let pg = util::pg::Postgres::private();
    let url = pg.database();
    let settings = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_POLL_INTERVAL_MS", "50"),
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"),
    ];
    let (a, b) = (Server::start(&settings), Server::start(&settings));
    let mut clients = Vec::new();
    for i in 0..2 {
        clients.push(load_client(&a, 10 + i, &format!("a{i}"), 800));
        clients.push(load_client(&b, 20 + i, &format!("b{i}"), 800));
    }
    std::thread::sleep(Duration::from_millis(800));
    pg.stop();
    eventually("/healthz says 503 while PostgreSQL is down", || a.api("GET", "/healthz", None).0 == 503);
    std::thread::sleep(Duration::from_millis(1000));
    pg.start_again();
    eventually("/healthz says 200 again", || {
        a.api("GET", "/healthz", None).0 == 200 && b.api("GET", "/healthz", None).0 == 200
    });
    // The first read on a lane whose connection PostgreSQL cut runs again on a new one.
    for node in [&a, &b] {
        let (status, body) = node.api("GET", "/api/conversations/consultation/none", None);
        assert_eq!(status, 404, "{body}");
    }
    let (mut seen, mut refused) = (Vec::new(), Vec::new());
    for (i, handle) in clients.into_iter().enumerate() {
        let (got, sent, errors) = handle.join().unwrap();
        assert_eq!(sent, 800);
        check_in_order(&format!("client {i}"), &got);
        seen.extend(got);
        refused.push(errors);
    }
    let stored = stored(&pg, &url);
    check_seen_against_stored(&seen, &stored);
    // Every message sent was stored once, or its sender was told it was not.
    for (i, name) in ["a0", "b0", "a1", "b1"].iter().enumerate() {
        let kept = stored.keys().filter(|text| text.starts_with(&format!("{name}-"))).count();
        assert_eq!(kept + refused[i], 800, "{name}: {kept} stored, {} refused", refused[i]);
    }
    // Service resumed by itself: new clients on both nodes open and talk across nodes.
    let mut ann = a.connect_as("/ws/rooms/after/", json!(1), "ann");
    ann.recv_type("room_users_list");
    let mut bo = b.connect_as("/ws/rooms/after/", json!(2), "bo");
    bo.recv_type("room_users_list");
    ann.send_json(json!({"message": "still here"}));
    assert_eq!(said(&mut bo), ("still here".to_string(), 1));
    assert!(a.log_text().contains("PostgreSQL answers again"), "{}", a.log_text());
}

// ---- Backpressure.

#[test]
fn past_max_pending_writes_frames_wait_and_the_api_answers_503() {
    let pg = util::pg::Postgres::private();
    let url = pg.database();
    let settings = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_MAX_PENDING_WRITES", "1"),
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"),
    ];
    let node = Server::start(&settings);
    let mut ann = node.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    ann.recv_type("room_users_list");
    // One write at a time: a burst still arrives whole, in order.
    for i in 0..100 {
        ann.send_json(json!({"message": format!("m{i}")}));
    }
    let got: Vec<(String, i64)> = (0..100).map(|_| said(&mut ann)).collect();
    assert_eq!(got, (0..100).map(|i| (format!("m{i}"), i + 1)).collect::<Vec<_>>());
    let (_, metrics) = node.api("GET", "/metrics", None);
    assert!(metric(metrics.as_str().unwrap(), "switchboard_backpressure_turns_total") > 0.0, "frames waited");

    // While PostgreSQL is gone, a write waits for it; the next API write is refused with
    // a 503 and a JSON body, reads still answer; and once it is back, writes work again.
    pg.stop();
    ann.send_json(json!({"message": "while it is down"}));
    eventually("the API refuses writes while one waits", || {
        let (status, body) =
            node.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "from the backend"})));
        status == 503 && body["error"].is_string()
    });
    assert_eq!(node.api("GET", "/metrics", None).0, 200);
    pg.start_again();
    eventually("writes are stored again", || {
        node.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "back"}))).0 == 201
    });
    // The message sent while it was down was stored late or refused with an error frame.
    let mut next = said(&mut ann).0;
    if next == "while it is down" {
        next = said(&mut ann).0;
    }
    assert_eq!(next, "back");
}

#[test]
fn a_session_whose_missed_events_were_pruned_before_its_node_read_them_is_told_to_reconnect() {
    let url = shared().database();
    // Node b looks for other nodes' writes every 8 s; events are kept 1 s.
    let common = [("SWITCHBOARD_DATABASE_URL", url.as_str()), ("SWITCHBOARD_EVENT_RETENTION_SECS", "1")];
    let a = Server::start(&[common[0], common[1], ("SWITCHBOARD_POLL_INTERVAL_MS", "50")]);
    let b = Server::start(&[common[0], common[1], ("SWITCHBOARD_POLL_INTERVAL_MS", "8000")]);
    let mut app = b.connect_as("/ws/notifications/", json!(7), "ann");
    app.recv_type("unread_count");
    let (status, body) =
        a.api("POST", "/api/notifications", Some(&json!({"user_id": 7, "title": "t", "message": "m"})));
    assert_eq!(status, 201, "{body}");
    // The client reads all along (a close it does not answer within 2 s becomes a reset).
    let closed = std::thread::spawn(move || app.expect_close());
    let pruned_at = Instant::now();
    eventually("node a prunes the event", || {
        shared().psql(&url, "SELECT count(*) FROM events WHERE stream = 'u:7'").1 == "0"
    });
    let code = closed.join().expect("the session is closed, not sent the notification");
    let log = b.log_text();
    let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).rev().take(20).collect();
    assert_eq!(
        code,
        Some(1012),
        "the session cannot be sent what it missed (waited {:?} for the pruning); node b's log ends:\n{tail:#?}",
        pruned_at.elapsed()
    );
    // Reconnecting gives the fresh snapshot, the notification included.
    let mut again = b.connect_as("/ws/notifications/", json!(7), "ann");
    assert_eq!(again.recv_type("notification")["data"]["title"], "t");
    assert_eq!(again.recv_type("unread_count")["count"], 1);
}

// ---- The Redis bus.

use util::redis::Redis;

/// Two nodes on one fresh database and the Redis at `redis`, polling every `poll_ms`
/// while the bus is down.
fn two_nodes_with_bus(redis: &Redis, poll_ms: &str) -> (Server, Server) {
    let url = shared().database();
    let redis_url = redis.url();
    let settings = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_REDIS_URL", redis_url.as_str()),
        ("SWITCHBOARD_POLL_INTERVAL_MS", poll_ms),
    ];
    let (a, b) = (Server::start(&settings), Server::start(&settings));
    for node in [&a, &b] {
        eventually("the node's bus is up", || node.api("GET", "/healthz", None).1["bus"] == "ok");
    }
    (a, b)
}

fn node_metric(node: &Server, name: &str) -> f64 {
    let (_, body) = node.api("GET", "/metrics", None);
    metric(body.as_str().unwrap(), name)
}

/// Both in room `lobby`, one per node, once node b has subscribed to it.
fn pair_in_lobby(a: &Server, b: &Server, redis: &Redis) -> (Client, Client) {
    let mut ann = a.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    ann.recv_type("room_users_list");
    let mut bo = b.connect_as("/ws/rooms/lobby/", json!(2), "bo");
    bo.recv_type("room_users_list");
    eventually("both nodes subscribed to the room", || {
        let (_, channels) = redis.cli(&["PUBSUB", "NUMSUB", "sb:s:c:1"]);
        channels.lines().nth(1) == Some("2")
    });
    (ann, bo)
}

#[test]
fn with_redis_the_bus_carries_events_across_nodes_and_polls_only_check() {
    let redis = Redis::start();
    // Polling every minute: what arrives in the test's time came by the bus.
    let (a, b) = two_nodes_with_bus(&redis, "60000");
    let (mut ann, mut bo) = pair_in_lobby(&a, &b, &redis);
    for i in 0..20 {
        ann.send_json(json!({"message": format!("m{i}")}));
    }
    let got: Vec<(String, i64)> = (0..20).map(|_| said(&mut bo)).collect();
    assert_eq!(got, (0..20).map(|i| (format!("m{i}"), i + 1)).collect::<Vec<_>>());
    assert!(node_metric(&b, "switchboard_bus_events_total") >= 20.0);
    assert_eq!(node_metric(&b, "switchboard_stream_fills_total"), 0.0, "nothing had to be read from the store");
    // And the other way.
    for _ in 0..20 {
        said(&mut ann);
    }
    bo.send_json(json!({"message": "back"}));
    assert_eq!(said(&mut ann), ("back".to_string(), 21));
}

#[test]
fn a_redis_url_without_a_database_url_or_a_bad_one_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let out = util::switchboard_command(&[], env, dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string())
    };
    let (code, line) = run(&[("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:6379")]);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("SWITCHBOARD_REDIS_URL") && line.contains("SWITCHBOARD_DATABASE_URL"), "{line}");
    let url = shared().database();
    let (code, line) = run(&[("SWITCHBOARD_DATABASE_URL", &url), ("SWITCHBOARD_REDIS_URL", "http://x")]);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("SWITCHBOARD_REDIS_URL"), "{line}");
    let (code, line) = run(&[
        ("SWITCHBOARD_DATABASE_URL", &url),
        ("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:1"),
        ("SWITCHBOARD_REDIS_PREFIX", "a b"),
    ]);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("SWITCHBOARD_REDIS_PREFIX"), "{line}");
}

#[test]
fn redis_killed_and_started_again_costs_latency_not_messages() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes_with_bus(&redis, "100");
    let (mut ann, mut bo) = pair_in_lobby(&a, &b, &redis);
    let send = |from: &mut Client, range: std::ops::Range<i64>| {
        for i in range {
            from.send_json(json!({"message": format!("m{i}")}));
        }
    };
    send(&mut ann, 0..10);
    redis.kill();
    // Node a may not know yet; it publishes into the void, and node b polls.
    send(&mut ann, 10..20);
    for node in [&a, &b] {
        eventually("the bus is reported degraded, still 200", || {
            let (status, body) = node.api("GET", "/healthz", None);
            status == 200 && body["bus"] == "degraded"
        });
    }
    send(&mut ann, 20..30);
    redis.start_again();
    for node in [&a, &b] {
        eventually("the bus is up again", || node.api("GET", "/healthz", None).1["bus"] == "ok");
    }
    eventually("node b subscribed again", || {
        redis.cli(&["PUBSUB", "NUMSUB", "sb:s:c:1"]).1.lines().nth(1) == Some("2")
    });
    send(&mut ann, 30..40);
    let got: Vec<(String, i64)> = (0..40).map(|_| said(&mut bo)).collect();
    assert_eq!(got, (0..40).map(|i| (format!("m{i}"), i + 1)).collect::<Vec<_>>(), "every message once, in order");
    assert!(node_metric(&b, "switchboard_bus_reconnects_total") >= 1.0);
    assert!(node_metric(&b, "switchboard_stream_fills_total") >= 1.0, "polling carried the messages meanwhile");
}

// ---- Presence, caps and rate limits across nodes (design/cluster.md §5.8).

/// Nodes on one fresh database and the Redis at `redis`, with `extra` settings.
fn nodes_with_redis(redis: &Redis, count: usize, extra: &[(&str, &str)]) -> Vec<Server> {
    let url = shared().database();
    let redis_url = redis.url();
    let mut settings = vec![("SWITCHBOARD_DATABASE_URL", url.as_str()), ("SWITCHBOARD_REDIS_URL", redis_url.as_str())];
    settings.extend_from_slice(extra);
    let nodes: Vec<Server> = (0..count).map(|_| Server::start(&settings)).collect();
    for node in &nodes {
        eventually("the node's bus is up", || node.api("GET", "/healthz", None).1["bus"] == "ok");
    }
    nodes
}

/// The ids `GET /api/online` lists on a node, with their connection counts.
fn online(node: &Server) -> Vec<(String, i64)> {
    let (_, body) = node.api("GET", "/api/online", None);
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user_id"].to_string().trim_matches('"').to_string(), u["connections"].as_i64().unwrap()))
        .collect()
}

#[test]
fn who_is_online_and_in_a_room_is_the_same_on_every_node() {
    let redis = Redis::start();
    let nodes = nodes_with_redis(&redis, 2, &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut watcher = b.connect_as("/ws/presence/", json!(9), "watcher");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "9");
    // ann's first tab on node a: node b's watcher hears of her once; a second tab on
    // node b changes nothing but her count.
    let mut ann = a.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    ann.recv_type("room_users_list");
    let online_frame = watcher.recv_type("user_online");
    assert_eq!((online_frame["user_id"].as_str(), online_frame["user_name"].as_str()), (Some("1"), Some("ann")));
    let mut ann2 = b.connect_as("/ws/notifications/", json!(1), "ann");
    ann2.recv_type("unread_count");
    eventually("both nodes count ann's two connections", || {
        online(a).contains(&("1".into(), 2)) && online(b).contains(&("1".into(), 2))
    });
    watcher.expect_silence(Duration::from_millis(300));
    // The room: bo on node b is told ann is there (in the list, or joined once the
    // room's presence loaded), and ann is told bo joined.
    let mut bo = b.connect_as("/ws/rooms/lobby/", json!(2), "bo");
    let list = bo.recv_type("room_users_list");
    let listed = list["users"].as_array().unwrap().iter().any(|u| u["id"] == "1");
    if !listed {
        let join = bo.recv_type("user_join");
        assert_eq!(join["user_id"], "1");
    }
    let join = ann.recv_type("user_join");
    assert_eq!((join["user_id"].as_str(), join["username"].as_str()), (Some("2"), Some("bo")));
    assert_eq!(watcher.recv_type("user_online")["user_id"], "2");
    // Leaving: bo's last socket in the room closes, ann hears it once.
    bo.close();
    let leave = ann.recv_type("user_leave");
    assert_eq!(leave["user_id"], "2");
    assert_eq!(watcher.recv_type("user_offline")["user_id"], "2");
    // ann's tabs close one by one: offline only after the last, once.
    ann.close();
    watcher.expect_silence(Duration::from_millis(300));
    ann2.close();
    let offline = watcher.recv_type("user_offline");
    assert_eq!(offline["user_id"], "1");
    for node in [a, b] {
        eventually("ann is offline everywhere", || !online(node).iter().any(|(id, _)| id == "1"));
        // Heard as changes on the bus, not found by reloading the whole topic.
        assert!(node_metric(node, "switchboard_presence_changes_total") >= 4.0);
    }
}

#[test]
fn the_per_user_cap_counts_connections_on_every_node() {
    let redis = Redis::start();
    let nodes = nodes_with_redis(&redis, 2, &[("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "3")]);
    let mut open = Vec::new();
    for node in [&nodes[0], &nodes[0], &nodes[1]] {
        let mut client = node.connect_as("/ws/notifications/", json!(5), "cap");
        client.recv_type("unread_count");
        open.push(client);
    }
    let mut fourth = nodes[1].connect_as("/ws/notifications/", json!(5), "cap");
    assert_eq!(fourth.expect_close(), Some(1013), "the 4th connection over two nodes");
    // One closes: a new one fits again, on either node.
    open.pop().unwrap().close();
    eventually("a place is free again", || online(&nodes[1]).contains(&("5".into(), 2)));
    let mut again = nodes[1].connect_as("/ws/notifications/", json!(5), "cap");
    again.recv_type("unread_count");
}

#[test]
fn a_killed_nodes_users_go_offline_after_its_lease_and_a_stopped_one_comes_back() {
    let redis = Redis::start();
    let mut nodes = nodes_with_redis(&redis, 2, &[("SWITCHBOARD_NODE_LEASE_MS", "1000")]);
    let mut watcher = nodes[1].connect_as("/ws/presence/", json!(9), "watcher");
    watcher.recv_type("user_online");
    let mut ann = nodes[0].connect_as("/ws/presence/", json!(1), "ann");
    ann.recv_type("user_online");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "1");
    // SIGSTOP for twice the lease: node b reaps it; after SIGCONT it registers again and
    // ann is online again.
    let pid = nodes[0].pid().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert_eq!(watcher.recv_type("user_offline")["user_id"], "1", "reaped after the lease");
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert_eq!(watcher.recv_type("user_online")["user_id"], "1", "told again by the node that came back");
    // kill -9: offline within the lease and a second.
    let killed = std::time::Instant::now();
    nodes[0].kill();
    assert_eq!(watcher.recv_type("user_offline")["user_id"], "1");
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(2500), "offline after {took:?}");
    assert!(node_metric(&nodes[1], "switchboard_reaped_nodes_total") >= 1.0);
    eventually("node b lists only its own", || online(&nodes[1]) == vec![("9".to_string(), 1)]);
    drop(ann);
    nodes.truncate(1);
}

#[test]
fn redis_restarted_empty_presence_is_told_again_without_a_storm() {
    let mut redis = Redis::start();
    let nodes = nodes_with_redis(&redis, 2, &[]);
    let mut watcher = nodes[1].connect_as("/ws/presence/", json!(9), "watcher");
    watcher.recv_type("user_online");
    let mut ann = nodes[0].connect_as("/ws/presence/", json!(1), "ann");
    ann.recv_type("user_online");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "1");
    redis.kill();
    redis.start_again();
    for node in &nodes {
        eventually("presence told again", || node_metric(node, "switchboard_presence_rebuilds_total") >= 1.0);
    }
    for node in &nodes {
        eventually("both users listed again", || online(node).len() == 2);
    }
    // Nobody was connected or gone meanwhile: nothing to tell the watcher.
    watcher.expect_silence(Duration::from_millis(500));
    ann.close();
    assert_eq!(watcher.recv_type("user_offline")["user_id"], "1");
}

#[test]
fn the_rate_limit_of_stored_messages_holds_over_two_nodes() {
    let redis = Redis::start();
    let nodes = nodes_with_redis(&redis, 2, &[("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "60")]);
    let (mut one, mut two) = (
        nodes[0].connect_as("/ws/rooms/limits/", json!(4), "fast"),
        nodes[1].connect_as("/ws/rooms/limits/", json!(4), "fast"),
    );
    one.recv_type("room_users_list");
    two.recv_type("room_users_list");
    // 50 from each node at once, from a full bucket of 60: about 60 are stored (one
    // more per second of the test), not 100.
    for i in 0..50 {
        one.send_json(json!({"message": format!("one-{i}")}));
        two.send_json(json!({"message": format!("two-{i}")}));
    }
    // Each socket hears, for each of its 50, the message stored or an error frame.
    let mut refused = 0;
    for (client, mine) in [(&mut one, "one-"), (&mut two, "two-")] {
        let mut outcomes = 0;
        while outcomes < 50 {
            let frame = client.recv();
            if frame.get("error").is_some() {
                assert!(frame["error"].as_str().unwrap().starts_with("Rate limit exceeded"), "{frame}");
                refused += 1;
                outcomes += 1;
            } else if frame["type"] == "chat_message" && frame["message"].as_str().unwrap().starts_with(mine) {
                outcomes += 1;
            }
        }
    }
    let url = nodes[0].env.iter().find(|(k, _)| k == "SWITCHBOARD_DATABASE_URL").unwrap().1.clone();
    let (_, count) = shared().psql(&url, "SELECT count(*) FROM messages");
    let count: i64 = count.parse().unwrap();
    assert!((60..=63).contains(&count), "{count} of 100 stored with a limit of 60/min over two nodes");
    assert_eq!(refused, 100 - count, "every message not stored was refused with an error frame");
}

#[test]
fn through_sentinel_nodes_find_the_master_and_follow_a_failover() {
    let first = Redis::start();
    let second = Redis::replica_of(first.port);
    let dir = tempfile::tempdir().unwrap();
    let sentinel = Redis::sentinel(first.port, "main", dir.path());
    let master_port = || -> Option<String> {
        sentinel.cli(&["SENTINEL", "get-master-addr-by-name", "main"]).1.lines().nth(1).map(str::to_string)
    };
    eventually("the Sentinel knows the replica", || {
        sentinel.cli(&["SENTINEL", "replicas", "main"]).1.contains(&second.port.to_string())
    });
    let url = shared().database();
    let redis_url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port);
    // Polling every minute: what crosses in the test's time comes by the bus.
    let settings = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_REDIS_URL", redis_url.as_str()),
        ("SWITCHBOARD_POLL_INTERVAL_MS", "60000"),
    ];
    let (a, b) = (Server::start(&settings), Server::start(&settings));
    for node in [&a, &b] {
        eventually("the node's bus is up", || node.api("GET", "/healthz", None).1["bus"] == "ok");
    }
    let mut watcher = b.connect_as("/ws/presence/", json!(9), "watcher");
    watcher.recv_type("user_online");
    let mut ann = a.connect_as("/ws/presence/", json!(1), "ann");
    ann.recv_type("user_online");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "1", "presence through the master the Sentinel named");
    // The failover: the replica becomes the master; both nodes follow it.
    let (ok, answer) = sentinel.cli(&["SENTINEL", "FAILOVER", "main"]);
    assert!(ok && answer == "OK", "{answer}");
    eventually("the Sentinel names the replica", || master_port() == Some(second.port.to_string()));
    eventually("both nodes' presence is on the new master", || second.cli(&["HLEN", "sb:{t:online}:count"]).1 == "2");
    let mut bo = a.connect_as("/ws/presence/", json!(2), "bo");
    bo.recv_type("user_online");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "2", "presence after the failover");
    let (mut cy, mut dee) =
        (a.connect_as("/ws/rooms/after/", json!(3), "cy"), b.connect_as("/ws/rooms/after/", json!(4), "dee"));
    cy.recv_type("room_users_list");
    dee.recv_type("room_users_list");
    eventually("both nodes subscribed on the new master", || {
        second.cli(&["PUBSUB", "NUMSUB", "sb:s:c:1"]).1.lines().nth(1) == Some("2")
    });
    cy.send_json(json!({"message": "after the failover"}));
    assert_eq!(said(&mut dee), ("after the failover".to_string(), 1), "by the bus on the new master");
}

#[test]
fn a_node_stopped_cleanly_takes_its_users_out_at_once_and_prefixes_keep_clusters_apart() {
    let redis = Redis::start();
    // A ten-second lease: what the watcher hears within a second is the clean stop.
    let mut nodes = nodes_with_redis(&redis, 2, &[("SWITCHBOARD_REDIS_PREFIX", "east")]);
    let mut watcher = nodes[1].connect_as("/ws/presence/", json!(9), "watcher");
    watcher.recv_type("user_online");
    let mut ann = nodes[0].connect_as("/ws/presence/", json!(1), "ann");
    ann.recv_type("user_online");
    assert_eq!(watcher.recv_type("user_online")["user_id"], "1");
    // Another cluster on the same Redis, under the default prefix, sees none of it.
    let other = nodes_with_redis(&redis, 1, &[]);
    assert_eq!(online(&other[0]), vec![]);
    assert_eq!(redis.cli(&["EXISTS", "sb:{t:online}:count"]).1, "0");
    let stopped = std::time::Instant::now();
    assert!(nodes[0].stop().success());
    assert_eq!(watcher.recv_type("user_offline")["user_id"], "1");
    eprintln!("offline after {:?}", stopped.elapsed());
    assert!(stopped.elapsed() < Duration::from_secs(5), "not the lease: {:?}", stopped.elapsed());
    assert_eq!(redis.cli(&["ZCARD", "east:nodes"]).1, "1", "the stopped node left");
    drop(ann);
}

// ---- Webhooks over several nodes (docs/webhooks.md, "Several nodes").

const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";

/// The events of a type the receiver got, for a user.
fn hooks_for(receiver: &receiver::Receiver, kind: &str, user: &str) -> usize {
    receiver.events().iter().filter(|e| e["type"] == kind && e["data"]["user_id"] == user).count()
}

/// Per stream, the seqs of the `message.created` events received, without repeats.
fn created_seqs(receiver: &receiver::Receiver) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut seqs = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for event in receiver.events().iter().filter(|e| e["type"] == "message.created") {
        let seq = event["seq"].as_i64().unwrap();
        let stream = seqs.entry(event["stream"].as_str().unwrap().to_string()).or_default();
        if !stream.contains(&seq) {
            stream.push(seq);
        }
    }
    seqs
}

#[test]
fn with_webhooks_one_node_delivers_another_takes_over_and_presence_is_the_clusters() {
    let redis = Redis::start();
    let receiver = receiver::Receiver::start(HOOK_SECRET);
    let url = receiver.url();
    let settings = [
        ("SWITCHBOARD_WEBHOOK_URL", url.as_str()),
        ("SWITCHBOARD_WEBHOOK_SECRET", HOOK_SECRET),
        ("SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "500"),
        ("SWITCHBOARD_NODE_LEASE_MS", "1500"),
    ];
    let mut nodes = nodes_with_redis(&redis, 2, &settings);
    let delivering = |nodes: &[Server]| -> Vec<usize> {
        (0..nodes.len()).filter(|i| node_metric(&nodes[*i], "switchboard_webhook_delivering") == 1.0).collect()
    };
    eventually("one node delivers", || delivering(&nodes).len() == 1);

    // A user with a socket on each node is reported online once, and offline only when
    // the last one closes, whichever node delivers.
    let first = nodes[0].connect_as("/ws/presence/", json!(5), "Aarav");
    let second = nodes[1].connect_as("/ws/notifications/", json!(5), "Aarav");
    eventually("user 5 reported online", || hooks_for(&receiver, "user.online", "5") >= 1);
    std::thread::sleep(Duration::from_millis(500));
    first.close();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(hooks_for(&receiver, "user.online", "5"), 1, "{:?}", receiver.events());
    assert_eq!(hooks_for(&receiver, "user.offline", "5"), 0, "still connected on the other node");
    second.close();
    eventually("user 5 reported offline", || hooks_for(&receiver, "user.offline", "5") == 1);

    // Messages stored by both nodes arrive once each at least, in seq order per stream.
    for i in 0..20 {
        for node in &nodes {
            let (status, body) =
                node.api("POST", "/api/rooms/hooks/messages", Some(&json!({"message": format!("m{i}")})));
            assert_eq!(status, 201, "{body}");
        }
    }
    eventually("40 messages reported", || created_seqs(&receiver).values().map(Vec::len).sum::<usize>() == 40);

    // A user connected to the node that delivers only; then that node is killed. The
    // other takes the lease over once it runs out, delivers what was left, and reports
    // the user offline (their node is reaped).
    let leader = delivering(&nodes)[0];
    let survivor = 1 - leader;
    let _held = nodes[leader].connect_as("/ws/presence/", json!(8), "Mira");
    eventually("user 8 reported online", || hooks_for(&receiver, "user.online", "8") == 1);
    nodes[leader].kill();
    for i in 20..40 {
        let (status, body) =
            nodes[survivor].api("POST", "/api/rooms/hooks/messages", Some(&json!({"message": format!("m{i}")})));
        assert_eq!(status, 201, "{body}");
    }
    eventually("60 messages reported", || created_seqs(&receiver).values().map(Vec::len).sum::<usize>() == 60);
    for (stream, seqs) in created_seqs(&receiver) {
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{stream}: in order, none missing");
    }
    assert_eq!(delivering(&nodes[survivor..=survivor]), vec![0], "the survivor delivers");
    eventually("user 8 reported offline", || hooks_for(&receiver, "user.offline", "8") == 1);
    assert_eq!(hooks_for(&receiver, "user.online", "5"), 1);
    let survivor = nodes.remove(survivor);
    let metrics = survivor.api("GET", "/metrics", None).1.as_str().unwrap().to_string();
    assert!(metrics.contains("switchboard_webhook_events_pending 0"), "{metrics}");
    assert_eq!(receiver.forged(), 0);
}
