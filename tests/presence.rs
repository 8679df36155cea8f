//! Presence (document 001) at `/ws/presence/`, end to end over real sockets against the
//! real binary: who is online on connect, then `user_online` on a user's first open
//! WebSocket on any endpoint and `user_offline` when their last one closes, checked key by
//! key and type by type against the document's examples.

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;
use util::*;

const PRESENCE: &str = "/ws/presence/";

// The document's server frames.
const USER_ONLINE: &str = r#"{
  "type": "user_online",
  "user_id": "uuid",
  "user_name": "John Doe"
}"#;
const USER_OFFLINE: &str = r#"{
  "type": "user_offline",
  "user_id": "uuid"
}"#;

const QUIET: Duration = Duration::from_millis(250);

fn online(user_id: &str, user_name: &str) -> Value {
    json!({"type": "user_online", "user_id": user_id, "user_name": user_name})
}

fn offline(user_id: &str) -> Value {
    json!({"type": "user_offline", "user_id": user_id})
}

/// Reads one presence frame and checks it against the document's example of its type.
fn recv_presence(client: &mut Client) -> Value {
    let frame = client.recv();
    match frame["type"].as_str() {
        Some("user_online") => assert_shape(&frame, &doc(USER_ONLINE)),
        Some("user_offline") => assert_shape(&frame, &doc(USER_OFFLINE)),
        _ => panic!("not a presence frame: {frame}"),
    }
    frame
}

/// Subscribes and reads the `user_online` frames of who is online now, `expected` of
/// them in any order, then requires silence: one frame per user.
fn subscribe(server: &Server, user: Value, name: &str, expected: usize) -> (Client, BTreeSet<String>) {
    let mut client = server.connect_as(PRESENCE, user, name);
    let mut seen = BTreeSet::new();
    for _ in 0..expected {
        let frame = recv_presence(&mut client);
        assert_eq!(frame["type"], "user_online", "{frame}");
        assert!(seen.insert(frame.to_string()), "a user announced twice: {frame}");
    }
    client.expect_silence(QUIET);
    (client, seen)
}

fn set(frames: &[Value]) -> BTreeSet<String> {
    frames.iter().map(Value::to_string).collect()
}

fn room(server: &Server, user: Value, name: &str) -> Client {
    let mut client = server.connect_as("/ws/rooms/lobby/", user, name);
    client.recv_type("room_users_list");
    client
}

#[test]
fn a_subscriber_first_learns_who_is_online_itself_included() {
    let server = Server::start(&[]);
    // Alone: just itself.
    let (alone, seen) = subscribe(&server, json!(1), "Watcher", 1);
    assert_eq!(seen, set(&[online("1", "Watcher")]));
    alone.close();

    // Online on other endpoints, one with two tabs, one with a string id.
    let _john_room = room(&server, json!(5), "John Doe");
    let _john_chat = server.connect_as("/ws/v1/chat/", json!(5), "John Doe");
    let _uma = server.connect_as("/ws/v1/chat/", json!("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"), "Uma Uuid");
    let (_watcher, seen) = subscribe(&server, json!(1), "Watcher", 3);
    assert_eq!(
        seen,
        set(&[
            online("1", "Watcher"),
            online("5", "John Doe"),
            online("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2", "Uma Uuid"),
        ])
    );
}

#[test]
fn online_on_the_first_connection_and_offline_after_the_last_on_any_endpoint() {
    let server = Server::start(&[]);
    let (mut watcher, _) = subscribe(&server, json!(1), "Watcher", 1);

    let tab1 = room(&server, json!(5), "John Doe");
    assert_eq!(recv_presence(&mut watcher), online("5", "John Doe"));
    watcher.expect_silence(QUIET);

    // More tabs, on other endpoints: nothing new.
    let tab2 = server.connect_as("/ws/v1/chat/", json!(5), "John Doe");
    watcher.expect_silence(QUIET);
    let (tab3, _) = subscribe(&server, json!(5), "John Doe", 2);
    watcher.expect_silence(QUIET);

    // Closing all but the last: nothing; the last: offline, once.
    tab1.close();
    watcher.expect_silence(QUIET);
    tab2.close();
    watcher.expect_silence(QUIET);
    tab3.close();
    assert_eq!(recv_presence(&mut watcher), offline("5"));
    watcher.expect_silence(QUIET);

    // Back again: online again.
    let _tab4 = server.connect_as("/ws/v1/chat/", json!(5), "John Doe");
    assert_eq!(recv_presence(&mut watcher), online("5", "John Doe"));
    watcher.expect_silence(QUIET);
}

#[test]
fn every_subscriber_is_told_and_frames_sent_to_presence_are_ignored() {
    let server = Server::start(&[]);
    let (mut first, _) = subscribe(&server, json!(1), "First Watcher", 1);
    // A subscriber is itself a user with an open WebSocket.
    let (mut second, seen) = subscribe(&server, json!(2), "Second Watcher", 2);
    assert_eq!(seen, set(&[online("1", "First Watcher"), online("2", "Second Watcher")]));
    assert_eq!(recv_presence(&mut first), online("2", "Second Watcher"));

    for ignored in ["hello", r#"{"type": "user_online", "user_id": "99"}"#, "{not json"] {
        first.send_text(ignored);
    }
    first.expect_silence(QUIET);
    second.expect_silence(QUIET);

    let uma = server.connect_as("/ws/v1/chat/", json!("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"), "Uma Uuid");
    for watcher in [&mut first, &mut second] {
        assert_eq!(recv_presence(watcher), online("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2", "Uma Uuid"));
    }
    uma.close();
    for watcher in [&mut first, &mut second] {
        assert_eq!(recv_presence(watcher), offline("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"));
    }

    second.close();
    assert_eq!(recv_presence(&mut first), offline("2"));
    first.expect_silence(QUIET);
}

#[test]
fn the_server_api_lists_who_is_online_with_connection_counts() {
    let server = Server::start(&[]);
    let connections = |server: &Server| -> Vec<(Value, i64)> {
        let (status, body) = server.api("GET", "/api/online", None);
        assert_eq!(status, 200, "{body}");
        let mut users: Vec<(Value, i64)> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u["user_id"].clone(), u["connections"].as_i64().unwrap()))
            .collect();
        users.sort_by_key(|(id, _)| id.to_string());
        users
    };
    assert_eq!(connections(&server), []);
    let tab1 = room(&server, json!(5), "John Doe");
    let (_tab2, _) = subscribe(&server, json!(5), "John Doe", 1);
    let _bob = server.connect_as("/ws/v1/chat/", json!(7), "Bob");
    eventually("5 with two connections, 7 with one", || connections(&server) == [(json!(5), 2), (json!(7), 1)]);
    tab1.close();
    eventually("5 with one connection", || connections(&server) == [(json!(5), 1), (json!(7), 1)]);
}

#[test]
fn a_refused_token_closes_with_4001_before_any_frame() {
    let server = Server::start(&[]);
    let expired = token(json!({"user_id": 5, "exp": in_secs(-3600), "token_type": "access"}));
    for path in
        ["/ws/presence/?token=not-a-token".to_string(), format!("/ws/presence/?token={expired}"), PRESENCE.into()]
    {
        let mut client = server.try_connect(&path, &[]).expect("upgrade");
        match client.ws.read() {
            Ok(Message::Close(frame)) => assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001), "{path}"),
            other => panic!("{path}: expected a close first, got {other:?}"),
        }
    }
    // Refused connections put nobody online.
    let (_watcher, seen) = subscribe(&server, json!(1), "Watcher", 1);
    assert_eq!(seen, set(&[online("1", "Watcher")]));
}
