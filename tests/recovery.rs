//! Recovery on reconnect (docs/protocols.md, "Recovery"): every frame that delivers a
//! stored event carries its stream's `seq`, and a client that reconnects with
//! `?since=<seq>` gets exactly the events it missed, in order, then live frames.
//!
//! Each endpoint that delivers stored events is checked the same way: a *witness*
//! socket stays connected while another socket of the same user goes away; 1,000 events
//! happen; the one that went away comes back with `since` and must receive exactly the
//! frames the witness received, in the same order with the same seqs, and then the next
//! live event once, like the witness.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

/// Events produced while a client is away.
const MISSED: usize = 1_000;

/// Frame types that report state rather than deliver one event: skipped when reading
/// events (`recent_messages` and `conversations_list` carry the stream position as `seq`).
const STATE_FRAMES: &[&str] = &[
    "room_users_list",
    "user_join",
    "user_leave",
    "connection_established",
    "unread_count",
    "recent_messages",
    "conversations_list",
];

fn server() -> Server {
    Server::start(&[("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000000")])
}

/// The next frame that delivers a stored event (state frames are skipped).
fn next_event(client: &mut Client) -> Value {
    loop {
        let frame = client.recv();
        if !STATE_FRAMES.contains(&frame["type"].as_str().unwrap_or("")) {
            assert!(frame["seq"].is_i64(), "a frame that delivers a stored event has no seq: {frame}");
            return frame;
        }
    }
}

/// Reads frames until none comes for a moment; returns them.
fn drain(client: &mut Client) -> Vec<Value> {
    let mut frames = Vec::new();
    client.ws.get_mut().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Ok(tungstenite::Message::Text(text)) = client.ws.read() {
        frames.push(serde_json::from_str(&text).unwrap());
    }
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    frames
}

fn seq(frame: &Value) -> i64 {
    frame["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {frame}"))
}

/// The check described at the top, for one endpoint. `produce(i)` makes the i-th event
/// (or events) happen; `per_produce` is how many event frames each call gives.
fn resumes_with_exactly_what_was_missed(
    server: &Server,
    path: &str,
    user: Value,
    name: &str,
    per_produce: usize,
    mut produce: impl FnMut(usize),
) {
    let mut witness = server.connect_as(path, user.clone(), name);
    let mut away = server.connect_as(path, user.clone(), name);
    drain(&mut witness);
    drain(&mut away);

    produce(0);
    let mut last_seen = Value::Null;
    for _ in 0..per_produce {
        last_seen = next_event(&mut away);
        assert_eq!(next_event(&mut witness), last_seen);
    }
    let since = seq(&last_seen);
    away.close();

    let produces = MISSED / per_produce;
    for i in 1..=produces {
        produce(i);
    }
    let missed: Vec<Value> = (0..produces * per_produce).map(|_| next_event(&mut witness)).collect();
    let seqs: Vec<i64> = missed.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{path}: seqs not increasing: {seqs:?}");
    assert!(seqs[0] > since, "{path}: a missed event at or before since");

    let mut back = server.connect_as(&format!("{path}?since={since}"), user.clone(), name);
    let recovered: Vec<Value> = (0..missed.len()).map(|_| next_event(&mut back)).collect();
    for (i, (got, want)) in recovered.iter().zip(&missed).enumerate() {
        assert_eq!(got, want, "{path}: recovered frame {i} differs from what the witness got live");
    }
    // Nothing more: no duplicate, no replay of the usual opening.
    for frame in drain(&mut back) {
        assert!(STATE_FRAMES.contains(&frame["type"].as_str().unwrap_or("")), "{path}: after recovery: {frame}");
    }

    // Then live, once, to both.
    produce(produces + 1);
    for _ in 0..per_produce {
        let live = next_event(&mut witness);
        assert_eq!(next_event(&mut back), live);
        assert!(seq(&live) > *seqs.last().unwrap());
    }
    for frame in drain(&mut back) {
        assert!(frame.get("seq").is_none(), "{path}: a second copy of an event: {frame}");
    }
}

#[test]
fn rooms_resume_after_since() {
    let server = server();
    resumes_with_exactly_what_was_missed(&server, "/ws/rooms/lobby/", json!(1), "ann", 1, |i| {
        let (status, body) =
            server.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": format!("m{i}")})));
        assert_eq!(status, 201, "{body}");
    });
}

#[test]
fn room_seqs_count_every_message_without_gaps() {
    let server = server();
    let mut ann = server.connect_as("/ws/rooms/count/", json!(1), "ann");
    drain(&mut ann);
    for i in 0..20 {
        if i % 2 == 0 {
            ann.send_json(json!({"message": format!("m{i}")}));
        } else {
            server.api("POST", "/api/rooms/count/messages", Some(&json!({"message": format!("m{i}")})));
        }
        let frame = next_event(&mut ann);
        assert_eq!((frame["message"].as_str(), seq(&frame)), (Some(format!("m{i}").as_str()), i + 1));
    }
    // History carries the seqs too.
    let mut bob = server.connect_as("/ws/rooms/count/", json!(2), "bob");
    bob.recv_type("room_users_list");
    let history: Vec<i64> = (0..20).map(|_| seq(&bob.recv())).collect();
    assert_eq!(history, (1..=20).collect::<Vec<i64>>());
}

#[test]
fn consultation_messages_and_read_receipts_resume_after_since() {
    let server = server();
    let body = json!({"kind": "consultation", "id": "c1", "title": "t", "members": [1, 2]});
    assert_eq!(server.api("POST", "/api/conversations", Some(&body)).0, 201);
    let mut other = server.connect_as("/ws/consultations/c1/", json!(2), "bo");
    drain(&mut other);
    resumes_with_exactly_what_was_missed(&server, "/ws/consultations/c1/", json!(1), "ann", 2, |i| {
        other.send_json(json!({"type": "chat_message", "message": format!("m{i}")}));
        let echo = next_event(&mut other);
        let id = echo["data"]["id"].as_str().unwrap().to_string();
        other.send_json(json!({"type": "read_receipt", "message_id": id}));
    });
}

#[test]
fn support_chat_and_conversation_list_resume_after_since() {
    let server = server();
    let customer = json!({"external_id": "tg-1", "first_name": "John", "last_name": "Doe"});
    let inbound = |i: usize| {
        let body = json!({"source": "telegram", "customer": customer, "content": format!("m{i}"), "members": [5]});
        let (status, answer) = server.api("POST", "/api/inbound", Some(&body));
        assert_eq!(status, 201, "{answer}");
        answer["conversation_id"].as_str().unwrap().to_string()
    };
    let key = inbound(0);
    resumes_with_exactly_what_was_missed(&server, &format!("/ws/conversations/{key}/"), json!(5), "ann", 1, |i| {
        inbound(i + 1);
    });
    resumes_with_exactly_what_was_missed(&server, "/ws/conversations/", json!(5), "ann", 1, |i| {
        inbound(i + 10_000);
    });
}

#[test]
fn direct_chat_resumes_after_since() {
    let server = server();
    // The recipient must be known before anyone writes to them.
    drain(&mut server.connect_as("/ws/v1/chat/", json!(1), "ann"));
    let mut sender = server.connect_as("/ws/v1/chat/", json!(2), "bo");
    resumes_with_exactly_what_was_missed(&server, "/ws/v1/chat/", json!(1), "ann", 1, |i| {
        sender.send_json(json!({"type": "chat_message", "recipient_id": 1, "message": format!("m{i}")}));
    });
}

#[test]
fn the_three_notification_documents_resume_after_since() {
    let server = server();
    for (path, user) in [("/ws/notifications/", 1), ("/ws/v1/notifications/", 2), ("/ws/notifications/3/", 3)] {
        resumes_with_exactly_what_was_missed(&server, path, json!(user), "ann", 1, |i| {
            let body = json!({"user_id": user, "title": format!("t{i}"), "message": "m", "type": "hr"});
            assert_eq!(server.api("POST", "/api/notifications", Some(&body)).0, 201);
        });
    }
}

#[test]
fn fraud_alerts_and_banking_messages_resume_after_since() {
    let server = server();
    resumes_with_exactly_what_was_missed(&server, "/ws/fraud-alerts/4/", json!(4), "ann", 1, |i| {
        let body = json!({"user_id": 4, "message": format!("alert {i}"), "severity": "high"});
        assert_eq!(server.api("POST", "/api/fraud-alerts", Some(&body)).0, 201);
    });
    resumes_with_exactly_what_was_missed(&server, "/ws/messages/4/", json!(4), "ann", 1, |i| {
        let body = json!({"user_id": 4, "subject": format!("s{i}"), "body": "b"});
        assert_eq!(server.api("POST", "/api/messages", Some(&body)).0, 201);
    });
}

#[test]
fn recovery_works_across_a_crash_and_seqs_go_on_where_they_were() {
    let mut server = server();
    let post = |server: &Server, i: usize| {
        let (status, _) = server.api("POST", "/api/rooms/r/messages", Some(&json!({"message": format!("m{i}")})));
        assert_eq!(status, 201);
    };
    let mut ann = server.connect_as("/ws/rooms/r/", json!(1), "ann");
    drain(&mut ann);
    for i in 0..3 {
        post(&server, i);
    }
    let seen: Vec<i64> = (0..3).map(|_| seq(&next_event(&mut ann))).collect();
    assert_eq!(seen, [1, 2, 3]);
    drop(ann);
    server.kill();
    let server = server.restart();
    for i in 3..10 {
        post(&server, i);
    }
    let mut back = server.connect_as("/ws/rooms/r/?since=3", json!(1), "ann");
    back.recv_type("room_users_list");
    let recovered: Vec<(i64, String)> = (0..7)
        .map(|_| {
            let frame = next_event(&mut back);
            (seq(&frame), frame["message"].as_str().unwrap().to_string())
        })
        .collect();
    let expected: Vec<(i64, String)> = (3..10).map(|i| (i as i64 + 1, format!("m{i}"))).collect();
    assert_eq!(recovered, expected);
    assert!(drain(&mut back).is_empty());
}

#[test]
fn a_since_older_than_the_retention_gets_one_frame_saying_so_then_the_usual_snapshot() {
    let server = Server::start(&[("SWITCHBOARD_EVENT_RETENTION_SECS", "1")]);
    for i in 0..5 {
        let body = json!({"user_id": 1, "title": format!("t{i}"), "message": "m"});
        assert_eq!(server.api("POST", "/api/notifications", Some(&body)).0, 201);
        server.api("POST", "/api/rooms/old/messages", Some(&json!({"message": format!("m{i}")})));
    }
    // The sweep prunes events older than a second, twice a second.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut late = server.connect_as("/ws/v1/notifications/?since=2", json!(1), "ann");
    let notice = late.recv();
    assert_eq!(notice["type"], "recovery_not_possible", "{notice}");
    assert_eq!((notice["since"].as_i64(), notice["seq"].as_i64()), (Some(2), Some(5)));
    assert!(notice["message"].is_string());
    // The usual opening: the unread notifications, then the count.
    let titles: Vec<String> = (0..5).map(|_| late.recv()["title"].as_str().unwrap().to_string()).collect();
    assert_eq!(titles, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(late.recv(), json!({"type": "unread_count", "count": 5}));
    assert!(drain(&mut late).is_empty());
    // A client that is up to date needs no pruned event: nothing to say.
    let mut current = server.connect_as("/ws/v1/notifications/?since=5", json!(1), "ann");
    assert_eq!(current.recv(), json!({"type": "unread_count", "count": 5}));
    assert!(drain(&mut current).is_empty());
    assert!(server.log_text().contains("pruned"), "no pruning logged:\n{}", server.log_text());
    // A conversation's messages are its own events and are kept: a room resumes from any
    // of its seqs, however old.
    let mut room = server.connect_as("/ws/rooms/old/?since=2", json!(2), "bo");
    assert_eq!(room.recv()["type"], "room_users_list");
    let resumed: Vec<i64> = (0..3).map(|_| seq(&next_event(&mut room))).collect();
    assert_eq!(resumed, [3, 4, 5]);
    assert!(drain(&mut room).is_empty());
}

#[test]
fn a_since_from_the_future_or_not_a_number_is_refused_with_1008() {
    let server = server();
    server.api("POST", "/api/rooms/f/messages", Some(&json!({"message": "m"})));
    let token = server.token(json!(1), "ann");
    for query in ["since=2", "since=999999", "since=abc", "since=-1", "since="] {
        let path = format!("/ws/rooms/f/?{query}&token={token}");
        assert_eq!(refused_before_any_frame(&server, &path), Some(1008), "{query}");
    }
    let path = format!("/ws/rooms/f/?since=1&token={token}");
    let mut fine = server.connect(&path);
    assert_eq!(fine.recv()["type"], "room_users_list");
    assert!(drain(&mut fine).is_empty());
}

#[test]
fn an_active_room_resumes_from_its_kept_history_exactly_as_from_the_store() {
    let server = server();
    let post = |i: usize| {
        let (status, _) = server.api("POST", "/api/rooms/busy/messages", Some(&json!({"message": format!("m{i}")})));
        assert_eq!(status, 201);
    };
    // The witness keeps the room active, so its last 50 messages are kept rendered.
    let mut witness = server.connect_as("/ws/rooms/busy/", json!(1), "ann");
    drain(&mut witness);
    for i in 0..60 {
        post(i);
    }
    let seen: Vec<Value> = (0..60).map(|_| next_event(&mut witness)).collect();
    for back in [59, 30, 12, 9, 0] {
        let since = seq(&seen[back]);
        let mut client = server.connect_as(&format!("/ws/rooms/busy/?since={since}"), json!(2), "bo");
        assert_eq!(client.recv()["type"], "room_users_list");
        let missed: Vec<Value> = (back + 1..60).map(|_| next_event(&mut client)).collect();
        assert_eq!(missed, seen[back + 1..].to_vec(), "since {since}");
        assert!(drain(&mut client).iter().all(|f| f.get("seq").is_none()), "since {since}: more than missed");
        client.close();
        drain(&mut witness);
    }
    let token = server.token(json!(2), "bo");
    let ahead = format!("/ws/rooms/busy/?since={}&token={token}", seq(&seen[59]) + 1);
    assert_eq!(refused_before_any_frame(&server, &ahead), Some(1008));
}
