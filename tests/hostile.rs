//! Hostile and careless clients: invalid UTF-8, deeply nested and huge JSON, unknown
//! types and wrong field types on every endpoint, SQL metacharacters and Unicode in every
//! text field, binary frames, and a connection flood past the cap.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use util::*;

/// Text that has broken naive SQL, JSON and terminal handling somewhere.
const NASTY: &str = "Robert'); DROP TABLE messages;-- \" \\ % _ ' OR 1=1 -- \u{0}\u{7f} \u{202e}édé 漢字 🎉👩‍👩‍👧 \n\t\r <script>alert(1)</script>";

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = Server::start(&[]);
    let mut client = server.connect_as("/ws/chat/utf8/", json!(1), "ann");
    client.recv_type("room_users_list");
    client.ws.get_mut().write_all(&masked_frame(0x1, &[b'{', 0xff, 0xfe, b'}'])).unwrap();
    assert_eq!(client.expect_close(), Some(1007));
    // The server is fine.
    let mut other = server.connect_as("/ws/chat/utf8/", json!(2), "bob");
    assert_eq!(other.recv()["type"], "room_users_list");
}

/// Sets up one session on every endpoint for user 5 and returns them with the
/// frames each endpoint sends on connect already read.
fn every_endpoint(server: &Server) -> Vec<(&'static str, Client)> {
    for (kind, id) in [("consultation", "c1"), ("support", "s1")] {
        let (status, body) =
            server.api("POST", "/api/conversations", Some(&json!({"kind": kind, "id": id, "members": [5, 6]})));
        assert_eq!(status, 201, "{body}");
    }
    let paths = [
        "/ws/chat/hostile/",
        "/ws/consultations/c1/",
        "/ws/conversations/s1/",
        "/ws/conversations/",
        "/ws/v1/chat/",
        "/ws/presence/",
        "/ws/notifications/",
        "/ws/v1/notifications/",
        "/ws/notifications/5/",
        "/ws/messages/5/",
        "/ws/fraud-alerts/5/",
    ];
    paths
        .into_iter()
        .map(|path| {
            let mut client = server.connect_as(path, json!(5), "eve");
            drain(&mut client);
            (path, client)
        })
        .collect()
}

/// Reads and drops whatever arrives within 150 ms.
fn drain(client: &mut Client) {
    client.ws.get_mut().set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    while client.ws.read().is_ok() {}
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
}

fn is_error(frame: &Value) -> bool {
    frame.get("error").is_some_and(Value::is_string) || (frame["type"] == "error" && frame["message"].is_string())
}

#[test]
fn garbage_on_every_endpoint_gets_an_error_frame_and_the_connection_stays() {
    let server = Server::start(&[("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000")]);
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let wide = {
        let fields: Vec<String> = (0..3000).map(|i| format!("\"k{i}\": {i}")).collect();
        format!("{{{}}}", fields.join(","))
    };
    let garbage = [
        "not json".to_string(),
        deep.clone(),
        "{\"type\": 5}".to_string(),
        "{\"type\": \"no_such_type\"}".to_string(),
        "{\"type\": \"chat_message\", \"message\": {\"nested\": true}, \"content\": [1], \"recipient_id\": {}}"
            .to_string(),
        "{\"type\": \"mark_read\", \"message_id\": [1], \"notification_id\": null, \"sender_id\": 1.5}".to_string(),
        "{\"type\": \"read_receipt\", \"message_id\": \"'; DROP TABLE messages; --\"}".to_string(),
        "{\"type\": \"typing\", \"recipient_id\": \"nobody-at-all\"}".to_string(),
        "\"just a string\"".to_string(),
        "null".to_string(),
        wide,
    ];
    for (path, mut client) in every_endpoint(&server) {
        for text in &garbage {
            client.send_text(text);
        }
        client.ws.send(tungstenite::Message::Binary(vec![0, 159, 146, 150].into())).unwrap();
        // Presence and fraud alerts ignore what clients send; everyone else answers each
        // frame that is not a valid request with an error (and the wide object, a valid
        // but meaningless request, with an error or nothing).
        let mut errors = 0;
        loop {
            client.ws.get_mut().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            match client.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if is_error(&frame) {
                        errors += 1;
                    }
                }
                Ok(tungstenite::Message::Close(frame)) => panic!("{path}: closed: {frame:?}"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !matches!(path, "/ws/presence/" | "/ws/fraud-alerts/5/") {
            assert!(errors >= garbage.len() - 1, "{path}: {errors} error frames");
        }
        // Still connected and served.
        client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        client.ws.send(tungstenite::Message::Ping(vec![1].into())).unwrap();
        loop {
            match client.ws.read().unwrap_or_else(|e| panic!("{path}: {e}")) {
                tungstenite::Message::Pong(_) => break,
                _ => continue,
            }
        }
    }
    let (status, _) = server.api("GET", "/healthz", None);
    assert_eq!(status, 200);
}

#[test]
fn every_text_field_is_stored_and_returned_byte_for_byte() {
    let server = Server::start(&[]);
    // Rooms.
    let mut room = server.connect_as("/ws/chat/nasty/", json!(5), NASTY);
    assert_eq!(room.recv()["users"][0]["username"], NASTY);
    room.send_json(json!({ "message": NASTY }));
    let frame = room.recv();
    assert_eq!((frame["message"].as_str(), frame["sender_username"].as_str()), (Some(NASTY), Some(NASTY)));
    // Consultation and support chats, and the customer's fields.
    server.api("POST", "/api/conversations", Some(&json!({"kind": "consultation", "id": "c1", "members": [5]})));
    let (status, body) = server.api(
        "POST",
        "/api/conversations",
        Some(&json!({"kind": "support", "id": "s1", "title": NASTY, "status": "active", "members": [5],
                     "customer": {"source": "telegram", "external_id": NASTY, "first_name": NASTY, "last_name": NASTY, "profile_picture": NASTY}})),
    );
    assert_eq!(status, 201, "{body}");
    let mut consultation = server.connect_as("/ws/consultations/c1/", json!(5), "eve");
    consultation.recv_type("connection_established");
    consultation.send_json(json!({"type": "chat_message", "message": NASTY}));
    assert_eq!(consultation.recv()["data"]["content"], NASTY);
    let mut support = server.connect_as("/ws/conversations/s1/", json!(5), "eve");
    support.recv_type("recent_messages");
    support.send_json(json!({"type": "chat_message", "content": NASTY}));
    let message = support.recv()["message"].clone();
    assert_eq!((message["content"].as_str(), message["customer"]["first_name"].as_str()), (Some(NASTY), Some(NASTY)));
    let (_, inbound) = server.api(
        "POST",
        "/api/inbound",
        Some(&json!({"source": "telegram", "customer": {"external_id": NASTY}, "content": NASTY, "conversation_id": "s1"})),
    );
    assert_eq!(inbound["message"]["content"], NASTY);
    let mut list = server.connect_as("/ws/conversations/", json!(5), "eve");
    let conversation = list.recv()["conversations"][0].clone();
    assert_eq!(conversation["title"], NASTY);
    assert_eq!(conversation["customer"]["profile_picture"], NASTY);
    assert_eq!(conversation["last_message"]["content"], NASTY);
    // Direct chat.
    let mut bob = server.connect_as("/ws/v1/chat/", json!(6), NASTY);
    let mut eve = server.connect_as("/ws/v1/chat/", json!(5), "eve");
    eve.send_json(json!({"type": "chat_message", "message": NASTY, "recipient_id": 6}));
    assert_eq!(bob.recv()["message"], NASTY);
    bob.send_json(json!({"type": "chat_message", "message": "hi", "recipient_id": 5}));
    assert_eq!(eve.recv()["sender_name"], NASTY);
    // Notifications, alerts, banking messages through the API.
    // (A thread id is at most 100 characters.)
    let thread = "t'; DROP TABLE banking_messages;-- 🎉 \"";
    for (path, body) in [
        (
            "/api/notifications",
            json!({"user_id": 5, "title": NASTY, "message": NASTY, "category": NASTY, "link": NASTY}),
        ),
        ("/api/fraud-alerts", json!({"user_id": 5, "message": NASTY, "severity": "low"})),
        ("/api/messages", json!({"user_id": 5, "subject": NASTY, "body": NASTY, "thread_id": thread})),
    ] {
        let (status, answer) = server.api("POST", path, Some(&body));
        assert_eq!(status, 201, "{path}: {answer}");
    }
    drop((room, consultation, support, list, bob, eve));
    // All of it after a restart, from the database.
    let server = server.restart();
    let mut n = server.connect_as("/ws/v1/notifications/", json!(5), "eve");
    let notification = n.recv();
    for field in ["title", "message", "category", "link"] {
        assert_eq!(notification[field], NASTY, "{field}");
    }
    let mut a = server.connect_as("/ws/fraud-alerts/5/", json!(5), "eve");
    assert_eq!(a.recv()["alert"]["message"], NASTY);
    let mut m = server.connect_as("/ws/messages/5/", json!(5), "eve");
    let message = m.recv()["message"].clone();
    for field in ["subject", "body"] {
        assert_eq!(message[field], NASTY, "{field}");
    }
    assert_eq!(message["thread_id"], thread);
    let mut room = server.connect_as("/ws/chat/nasty/", json!(7), "zed");
    room.recv_type("room_users_list");
    let history = room.recv();
    assert_eq!((history["message"].as_str(), history["sender_username"].as_str()), (Some(NASTY), Some(NASTY)));
    let mut support = server.connect_as("/ws/conversations/s1/", json!(5), "eve");
    let recent = support.recv();
    assert!(recent["messages"].as_array().unwrap().iter().all(|m| m["content"] == NASTY), "{recent}");
}

#[test]
fn a_connection_flood_past_the_cap_is_refused_and_existing_clients_carry_on() {
    let server = Server::start(&[("SWITCHBOARD_MAX_CONNECTIONS", "60")]);
    let mut resident = server.connect_as("/ws/chat/flood/", json!(1), "resident");
    resident.recv_type("room_users_list");
    let token = server.token(json!(2), "flood");
    let request = format!(
        "GET /ws/chat/flood-{{}}/?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // 300 connections at once, most of them past the cap.
    let mut flood: Vec<TcpStream> = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(server.ws).unwrap();
        stream.write_all(request.replace("{}", &i.to_string()).as_bytes()).unwrap();
        flood.push(stream);
    }
    let (mut upgraded, mut refused) = (0, 0);
    for stream in &mut flood {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = [0u8; 12];
        let n = stream.read(&mut head).unwrap_or(0);
        match &head[..n.min(12)] {
            b"HTTP/1.1 101" => upgraded += 1,
            b"HTTP/1.1 503" => refused += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert!(refused >= 240, "{upgraded} upgraded, {refused} refused");
    assert!(upgraded <= 59);
    resident.send_json(json!({"message": "still here"}));
    assert_eq!(resident.recv_type("chat_message")["message"], "still here");
    drop(flood);
    eventually("the flood is gone and new clients get in", || {
        server
            .try_connect(&format!("/ws/chat/flood/?token={token}"), &[])
            .is_ok_and(|mut c| c.recv()["type"] == "room_users_list")
    });
}

/// A client that sends its last message and shuts its socket in the same breath: the
/// FIN can arrive with the data, and then no further readiness event comes (the server
/// stops reading after a short read unless the event said the peer hung up). The message
/// must still be stored and delivered, and the connection let go, every time.
#[test]
fn a_last_message_with_the_fin_right_behind_it_is_delivered_and_the_connection_released() {
    let server = Server::start(&[]);
    let mut watcher = server.connect_as("/ws/rooms/fin/", json!(1), "watcher");
    watcher.recv_type("room_users_list");
    for i in 0..30 {
        let name = format!("leaver{i}");
        let mut leaver = server.connect_as("/ws/rooms/fin/", json!(100 + i), &name);
        leaver.recv_type("room_users_list");
        assert_eq!(watcher.recv_type("user_join")["username"], name.as_str());
        leaver.send_json(json!({"message": format!("last words {i}")}));
        leaver.ws.get_mut().shutdown(std::net::Shutdown::Write).expect("shutdown");
        let said = watcher.recv_type("chat_message");
        assert_eq!(said["message"], format!("last words {i}"));
        assert_eq!(said["sender_username"], name.as_str());
        assert_eq!(watcher.recv_type("user_leave")["username"], name.as_str());
    }
    // Everyone who left is gone from the room, and every last message was stored.
    let mut later = server.connect_as("/ws/rooms/fin/", json!(2), "later");
    let users = later.recv_type("room_users_list");
    assert_eq!(users["users"].as_array().map(Vec::len), Some(2), "only watcher and later: {users}");
    let history: Vec<Value> = (0..30).map(|_| later.recv_type("chat_message")).collect();
    assert_eq!(history.last().unwrap()["message"], "last words 29");
}

#[test]
fn a_plus_in_a_path_is_a_plus_not_a_space() {
    // Paths decode %XX only; `+` means a space in query strings alone (RFC 3986).
    let server = Server::start(&[]);
    let user = "ann+work@example.com";
    let mut own = server.connect_as(&format!("/ws/notifications/{user}/"), json!(user), "ann");
    // The owner is let in (not closed 4003).
    own.expect_silence(Duration::from_millis(300));
    let mut spaced = server.connect_as("/ws/rooms/plus/", json!("ann work@example.com"), "other ann");
    spaced.recv_type("room_users_list");
    let (status, body) = server.api("POST", &format!("/api/users/{user}/disconnect"), None);
    assert_eq!((status, body["user_id"].as_str()), (200, Some(user)), "{body}");
    assert_eq!(body["disconnected"], 1, "{body}");
    assert_eq!(own.expect_close(), Some(4001));
    // The user whose id has a space is untouched.
    spaced.send_json(json!({"message": "still here"}));
    assert_eq!(spaced.recv_type("chat_message")["message"], "still here");
    // `%2B` is a plus too.
    let mut again = server.connect_as("/ws/notifications/ann%2Bwork%40example.com/", json!(user), "ann");
    again.expect_silence(Duration::from_millis(300));
}

#[test]
fn ambiguous_request_lengths_are_refused_on_both_listeners() {
    // RFC 9112 §6: differing Content-Length values, a signed one, and a transfer coding
    // beside a length are how requests are smuggled; each is refused with an error body.
    let server = Server::start(&[]);
    let auth = format!("Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n");
    let cases = [
        (
            format!(
                "POST /api/rooms/x/messages HTTP/1.1\r\n{auth}Content-Length: 15\r\nContent-Length: 2\r\n\r\n{{\"message\":\"a\"}}"
            ),
            400,
        ),
        (format!("POST /api/rooms/x/messages HTTP/1.1\r\n{auth}Content-Length: +15\r\n\r\n{{\"message\":\"a\"}}"), 400),
        (
            format!(
                "POST /api/rooms/x/messages HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\nContent-Length: 15\r\n\r\n{{\"message\":\"a\"}}"
            ),
            400,
        ),
        (format!("POST /api/rooms/x/messages HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"), 501),
    ];
    for (request, expected) in cases {
        let (status, body) = raw_http(server.api, request.as_bytes());
        assert_eq!(status, expected, "{request}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    }
    let ws_request = "GET /ws/rooms/x/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(raw_http(server.ws, ws_request.as_bytes()).0, 400);
    // Nothing was stored by any of them.
    let mut client = server.connect_as("/ws/rooms/x/", json!(1), "ann");
    client.recv_type("room_users_list");
    client.expect_silence(Duration::from_millis(200));
}
