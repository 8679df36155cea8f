//! Room chat (document 004) end to end, over real sockets against the real binary.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

fn keys(frame: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = frame.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    keys
}

#[test]
fn the_documents_example_flow() {
    let server = Server::start(&[]);
    // 1. Connect with a JWT in the Authorization header (the recommended way).
    let token = server.token(json!("user-id"), "user123");
    let mut alice =
        server.try_connect("/ws/chat/general/", &[("Authorization", &format!("Bearer {token}"))]).expect("header auth");
    // 2. On connect: the users list, then history (none yet).
    let list = alice.recv();
    assert_eq!(list, json!({"type": "room_users_list", "users": [{"id": "user-id", "username": "user123"}]}));

    let mut bob = server.connect_as("/ws/chat/general/", json!("user-id2"), "user456");
    let list = bob.recv();
    assert_eq!(list["type"], "room_users_list");
    let mut ids: Vec<&str> = list["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["user-id", "user-id2"]);
    // 4. Everyone else learns that bob joined.
    assert_eq!(alice.recv(), json!({"type": "user_join", "user_id": "user-id2", "username": "user456"}));

    // 3. A message goes to everyone in the room, sender included.
    alice.send_text(r#"{ "message": "Hi!" }"#);
    for client in [&mut alice, &mut bob] {
        let frame = client.recv();
        // The document's keys, and the message's seq on the room's stream (docs/protocols.md, "Recovery").
        assert_eq!(keys(&frame), ["message", "sender_id", "sender_username", "seq", "timestamp", "type"]);
        assert_eq!(frame["seq"], 1);
        assert_eq!(frame["type"], "chat_message");
        assert_eq!(frame["message"], "Hi!");
        assert_eq!(frame["sender_username"], "user123");
        assert_eq!(frame["sender_id"], "user-id");
        let timestamp = frame["timestamp"].as_str().unwrap();
        assert!(timestamp.ends_with('Z') && timestamp.len() == "2024-03-14T12:00:00.000000Z".len(), "{timestamp}");
    }

    bob.close();
    assert_eq!(alice.recv(), json!({"type": "user_leave", "user_id": "user-id2", "username": "user456"}));
}

#[test]
fn join_and_leave_are_per_user_not_per_tab() {
    let server = Server::start(&[]);
    let mut watcher = server.connect_as("/ws/rooms/tabs/", json!(1), "watcher");
    watcher.recv_type("room_users_list");

    let mut tab1 = server.connect_as("/ws/rooms/tabs/", json!(2), "ann");
    tab1.recv_type("room_users_list");
    assert_eq!(watcher.recv(), json!({"type": "user_join", "user_id": "2", "username": "ann"}));

    let mut tab2 = server.connect_as("/ws/rooms/tabs", json!(2), "ann");
    let list = tab2.recv_type("room_users_list");
    assert_eq!(list["users"].as_array().unwrap().len(), 2, "ann is listed once: {list}");
    watcher.expect_silence(Duration::from_millis(300));

    tab1.close();
    watcher.expect_silence(Duration::from_millis(300));
    tab2.close();
    assert_eq!(watcher.recv(), json!({"type": "user_leave", "user_id": "2", "username": "ann"}));
}

#[test]
fn bad_frames_get_error_frames_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut client = server.connect_as("/ws/chat/errors/", json!(1), "ann");
    client.recv_type("room_users_list");
    for bad in
        ["not json", "{\"message\": \"\"}", "{\"message\": \"   \"}", "{\"text\": \"hi\"}", "{\"message\": 5}", "[1,2]"]
    {
        client.send_text(bad);
        let frame = client.recv();
        assert_eq!(keys(&frame), ["error"], "{bad} -> {frame}");
        assert!(!frame["error"].as_str().unwrap().is_empty());
    }
    client.ws.send(tungstenite::Message::Binary(vec![1, 2, 3].into())).unwrap();
    assert_eq!(keys(&client.recv()), ["error"]);
    client.send_json(json!({"message": "still here"}));
    assert_eq!(client.recv()["message"], "still here");
    // Nothing invalid was stored: a new connection's history is the one good message.
    let mut again = server.connect_as("/ws/chat/errors/", json!(2), "bob");
    again.recv_type("room_users_list");
    assert_eq!(again.recv()["message"], "still here");
    again.expect_silence(Duration::from_millis(200));
}

#[test]
fn room_names_outside_the_rules_close_with_4000() {
    let server = Server::start(&[]);
    let token = server.token(json!(1), "ann");
    let too_long = "x".repeat(101);
    for room in ["bad%20room", "caf%C3%A9", "a!b", too_long.as_str(), ""] {
        let code = close_code_of(&server, &format!("/ws/chat/{room}/?token={token}"), &[]);
        assert_eq!(code, Some(4000), "room {room:?}");
    }
    let ok = "y".repeat(100);
    let mut client = server.connect(&format!("/ws/chat/{ok}/?token={token}"));
    assert_eq!(client.recv()["type"], "room_users_list");
}

#[test]
fn unknown_paths_get_404_before_any_upgrade() {
    let server = Server::start(&[]);
    let token = server.token(json!(1), "ann");
    let request = format!(
        "GET /ws/nowhere/?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (status, body) = raw_http(server.ws, request.as_bytes());
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, _) = raw_http(server.ws, b"GET /ws/chat/lobby/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 426, "a plain GET on a WebSocket path asks for an upgrade");
}

#[test]
fn history_is_replayed_oldest_first_and_survives_a_restart() {
    let server = Server::start(&[("SWITCHBOARD_HISTORY_LIMIT", "50")]);
    let mut client = server.connect_as("/ws/chat/history/", json!(1), "ann");
    client.recv_type("room_users_list");
    for i in 0..55 {
        client.send_json(json!({"message": format!("m{i} ' \"; DROP TABLE messages; -- ünïcödé 🎉")}));
        client.recv_type("chat_message");
    }
    drop(client);
    let server = server.restart();
    let mut client = server.connect_as("/ws/chat/history/", json!(2), "bob");
    client.recv_type("room_users_list");
    for i in 5..55 {
        let frame = client.recv();
        assert_eq!(frame["type"], "chat_message");
        assert_eq!(frame["message"], format!("m{i} ' \"; DROP TABLE messages; -- ünïcödé 🎉"));
        assert_eq!(frame["sender_id"], "1");
        assert_eq!(frame["sender_username"], "ann");
    }
    client.expect_silence(Duration::from_millis(200));
}

#[test]
fn the_server_api_publishes_into_a_room() {
    let server = Server::start(&[]);
    let mut client = server.connect_as("/ws/chat/news/", json!(1), "ann");
    client.recv_type("room_users_list");
    let (status, body) =
        server.api("POST", "/api/rooms/news/messages", Some(&json!({"message": "deploy done", "sender_name": "ci"})));
    assert_eq!(status, 201, "{body}");
    assert!(body["id"].is_i64());
    let frame = client.recv();
    assert_eq!(frame["message"], "deploy done");
    assert_eq!(frame["sender_username"], "ci");
    assert_eq!(frame["sender_id"], "system");

    let (status, _) = server.api_with_key("POST", "/api/rooms/news/messages", Some(&json!({"message": "x"})), None);
    assert_eq!(status, 401);
    let (status, _) =
        server.api_with_key("POST", "/api/rooms/news/messages", Some(&json!({"message": "x"})), Some("wrong-key"));
    assert_eq!(status, 401);
    let (status, body) = server.api("POST", "/api/rooms/news/messages", Some(&json!({"message": 7})));
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("message"));
    let (status, _) = server.api("POST", "/api/rooms/bad%20room/messages", Some(&json!({"message": "x"})));
    assert_eq!(status, 422);
    client.expect_silence(Duration::from_millis(200));
    let (status, body) = server.api_with_key("GET", "/healthz", None, None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

/// The history a joining socket gets while its room is active (kept rendered, see
/// src/recent.rs) is the stored one: the newest `HISTORY_LIMIT` messages, oldest first,
/// whether they came from clients or from the server API, the same as a socket that
/// joins after everyone left (read from the database) gets.
#[test]
fn a_busy_rooms_history_is_the_stored_history() {
    let server = Server::start(&[("SWITCHBOARD_HISTORY_LIMIT", "5")]);
    let texts = |client: &mut Client| -> Vec<String> {
        client.recv_type("room_users_list");
        let mut texts = Vec::new();
        while texts.len() < 5 {
            let frame = client.recv();
            if frame["type"] == "chat_message" {
                texts.push(frame["message"].as_str().unwrap().to_string());
            }
        }
        client.expect_silence(Duration::from_millis(200));
        texts
    };
    let mut ann = server.connect_as("/ws/rooms/busy/", json!(1), "ann");
    ann.recv_type("room_users_list");
    // An older message, so that the room has a history when bob joins and it is kept.
    ann.send_json(json!({"message": "m0"}));
    ann.recv_type("chat_message");
    let mut bob = server.connect_as("/ws/rooms/busy/", json!(2), "bob");
    bob.recv_type("room_users_list");
    assert_eq!(bob.recv()["message"], "m0");
    for i in 1..=8 {
        if i % 2 == 0 {
            let (status, _) =
                server.api("POST", "/api/rooms/busy/messages", Some(&json!({"message": format!("m{i}")})));
            assert_eq!(status, 201);
        } else {
            ann.send_json(json!({"message": format!("m{i}")}));
        }
        assert_eq!(ann.recv_type("chat_message")["message"], format!("m{i}"));
    }
    let expected: Vec<String> = (4..=8).map(|i| format!("m{i}")).collect();
    let mut cy = server.connect_as("/ws/rooms/busy/", json!(3), "cy");
    assert_eq!(texts(&mut cy), expected, "while the room is active");
    drop((ann, bob, cy));
    std::thread::sleep(Duration::from_millis(300));
    let mut dee = server.connect_as("/ws/rooms/busy/", json!(4), "dee");
    assert_eq!(texts(&mut dee), expected, "after everyone left");
}
