//! Direct 1:1 chat (document 003) at `/ws/v1/chat/`, end to end over real sockets against
//! the real binary. The document's client frames are sent as it prints them (it names
//! user 5, so the users here are 5, Aarav, and 7, Priya); every server frame is checked
//! key by key and type by type against the document's example.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

const CHAT: &str = "/ws/v1/chat/";

// The document's client frames, exactly as it prints them.
const SEND_CHAT_MESSAGE: &str = r#"{
  "type": "chat_message",
  "message": "Hello, are you available?",
  "recipient_id": 5
}"#;
const SEND_MARK_READ: &str = r#"{
  "type": "mark_read",
  "sender_id": 5
}"#;
const SEND_TYPING: &str = r#"{
  "type": "typing",
  "recipient_id": 5
}"#;

// The document's server frames.
const RECEIVE_MESSAGE: &str = r#"{
  "type": "chat_message",
  "id": 1024,
  "sender_id": 5,
  "sender_name": "Aarav Sharma",
  "message": "Hello, are you available?",
  "timestamp": "2026-01-06T12:30:00Z"
}"#;
const MESSAGES_READ: &str = r#"{
  "type": "messages_read",
  "reader_id": 5,
  "timestamp": "2026-01-06T12:35:00Z"
}"#;
const USER_TYPING: &str = r#"{
  "type": "user_typing",
  "sender_id": 5
}"#;
const ERROR: &str = r#"{
  "type": "error",
  "message": "User not found or offline."
}"#;

const QUIET: Duration = Duration::from_millis(250);

fn aarav(server: &Server) -> Client {
    server.connect_as(CHAT, json!(5), "Aarav Sharma")
}

fn priya(server: &Server) -> Client {
    server.connect_as(CHAT, json!(7), "Priya Patel")
}

/// Reads one incoming `chat_message`, checked against the document's example.
fn recv_message(client: &mut Client) -> Value {
    recv_message_like(client, &doc(RECEIVE_MESSAGE))
}

/// The same from a sender whose user id is not an integer, so a JSON string.
fn recv_message_from_string_id(client: &mut Client) -> Value {
    let mut example = doc(RECEIVE_MESSAGE);
    example["sender_id"] = json!("user-id");
    let frame = recv_message_like(client, &example);
    assert!(frame["sender_id"].as_str().is_some_and(|id| id.parse::<i64>().is_err()), "{frame}");
    frame
}

fn recv_message_like(client: &mut Client, example: &Value) -> Value {
    let frame = client.recv();
    assert_shape(&frame, example);
    assert_eq!(frame["type"], "chat_message");
    assert_timestamp(&frame["timestamp"]);
    frame
}

fn recv_error(client: &mut Client) -> Value {
    let frame = client.recv();
    assert_shape(&frame, &doc(ERROR));
    assert_eq!(frame["type"], "error");
    assert!(!frame["message"].as_str().unwrap().is_empty(), "{frame}");
    frame
}

fn send_to(client: &mut Client, recipient: Value, message: &str) {
    client.send_json(json!({"type": "chat_message", "message": message, "recipient_id": recipient}));
}

#[test]
fn the_documents_frames_between_two_users() {
    let server = Server::start(&[]);
    let mut aarav = aarav(&server);
    let mut priya = priya(&server);
    aarav.expect_silence(QUIET);
    priya.expect_silence(QUIET);

    // Send Message: to the recipient, nothing to the sender.
    priya.send_text(SEND_CHAT_MESSAGE);
    let message = recv_message(&mut aarav);
    assert_eq!(message["sender_id"], 7);
    assert_eq!(message["sender_name"], "Priya Patel");
    assert_eq!(message["message"], "Hello, are you available?");
    priya.expect_silence(QUIET);

    // Typing Indicator.
    priya.send_text(SEND_TYPING);
    let typing = aarav.recv();
    assert_shape(&typing, &doc(USER_TYPING));
    assert_eq!(typing, json!({"type": "user_typing", "sender_id": 7}));
    priya.expect_silence(QUIET);

    // Aarav answers; then Priya marks Aarav's messages read, as the document's frame does.
    send_to(&mut aarav, json!(7), "Yes, I am.");
    let answer = recv_message(&mut priya);
    assert_eq!(answer["sender_id"], 5);
    assert_eq!(answer["sender_name"], "Aarav Sharma");
    assert_eq!(answer["message"], "Yes, I am.");
    assert_ne!(answer["id"], message["id"]);
    aarav.expect_silence(QUIET);

    priya.send_text(SEND_MARK_READ);
    let read = aarav.recv();
    assert_shape(&read, &doc(MESSAGES_READ));
    assert_eq!(read["type"], "messages_read");
    assert_eq!(read["reader_id"], 7);
    assert_timestamp(&read["timestamp"]);
}

#[test]
fn a_message_reaches_every_chat_connection_of_the_recipient_and_none_of_the_sender() {
    let server = Server::start(&[]);
    let mut aarav_tab1 = aarav(&server);
    let mut aarav_tab2 = aarav(&server);
    let mut aarav_room = server.connect_as("/ws/rooms/lobby/", json!(5), "Aarav Sharma");
    aarav_room.recv_type("room_users_list");
    let mut priya_tab1 = priya(&server);
    let mut priya_tab2 = priya(&server);

    priya_tab1.send_text(SEND_CHAT_MESSAGE);
    let first = recv_message(&mut aarav_tab1);
    assert_eq!(recv_message(&mut aarav_tab2), first);
    assert_eq!(first["sender_id"], 7);
    aarav_room.expect_silence(QUIET);
    priya_tab1.expect_silence(QUIET);
    priya_tab2.expect_silence(QUIET);

    priya_tab2.send_text(SEND_TYPING);
    for tab in [&mut aarav_tab1, &mut aarav_tab2] {
        assert_eq!(tab.recv(), json!({"type": "user_typing", "sender_id": 7}));
    }
    priya_tab1.expect_silence(QUIET);

    // String user ids stay strings.
    let mut uma = server.connect_as(CHAT, json!("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"), "Uma Uuid");
    uma.send_text(SEND_CHAT_MESSAGE);
    let from_uma = recv_message_from_string_id(&mut aarav_tab1);
    assert_eq!(recv_message_from_string_id(&mut aarav_tab2), from_uma);
    assert_eq!(from_uma["sender_id"], "8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2");
    send_to(&mut aarav_tab1, json!("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"), "Hi Uma");
    let to_uma = recv_message(&mut uma);
    assert_eq!(to_uma["sender_id"], 5);
    assert_eq!(to_uma["message"], "Hi Uma");
}

#[test]
fn errors_for_an_unknown_recipient_oneself_and_bad_frames_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut aarav = aarav(&server);
    let mut priya = priya(&server);

    send_to(&mut priya, json!(999), "anyone?");
    assert_eq!(priya.recv(), json!({"type": "error", "message": "User not found."}));
    send_to(&mut priya, json!(7), "talking to myself");
    recv_error(&mut priya);
    for bad in [
        r#"{"type": "chat_message", "recipient_id": 5}"#,
        r#"{"type": "chat_message", "message": "", "recipient_id": 5}"#,
        "not json",
        r#"{"type": "chat_message", "message": "Hello, are you available?", "recipient_id": 5"#,
    ] {
        priya.send_text(bad);
        recv_error(&mut priya);
    }
    aarav.expect_silence(QUIET);

    // The connection stays, and none of it was stored: Aarav's next connection brings
    // only the one good message.
    priya.send_text(SEND_CHAT_MESSAGE);
    let good = recv_message(&mut aarav);
    aarav.close();
    let mut aarav = self::aarav(&server);
    assert_eq!(recv_message(&mut aarav), good);
    aarav.expect_silence(QUIET);
}

#[test]
fn refused_tokens_close_with_4003_before_any_frame() {
    let server = Server::start(&[]);
    let expired = token(json!({"user_id": 7, "exp": in_secs(-3600), "token_type": "access"}));
    let refresh = token(json!({"user_id": 7, "exp": in_secs(600), "token_type": "refresh"}));
    for (what, path) in [
        ("garbage", "/ws/v1/chat/?token=not-a-token".to_string()),
        ("expired", format!("/ws/v1/chat/?token={expired}")),
        ("refresh token", format!("/ws/v1/chat/?token={refresh}")),
        ("no token", "/ws/v1/chat/".to_string()),
        ("no trailing slash", "/ws/v1/chat?token=not-a-token".to_string()),
    ] {
        assert_eq!(refused_before_any_frame(&server, &path), Some(4003), "{what}");
    }
    let good = server.token(json!(7), "Priya Patel");
    let mut header = server.try_connect("/ws/v1/chat", &[("Authorization", &format!("Bearer {good}"))]).unwrap();
    header.expect_silence(QUIET);
}

#[test]
fn offline_messages_arrive_on_every_connect_until_marked_read() {
    let server = Server::start(&[]);
    // Aarav connects once, so switchboard knows him, and leaves.
    aarav(&server).close();
    let mut priya = priya(&server);
    priya.send_text(SEND_CHAT_MESSAGE);
    send_to(&mut priya, json!(5), "Call me when you are back.");
    priya.expect_silence(QUIET);

    let mut aarav_tab1 = aarav(&server);
    let first = recv_message(&mut aarav_tab1);
    let second = recv_message(&mut aarav_tab1);
    assert_eq!(first["message"], "Hello, are you available?");
    assert_eq!(second["message"], "Call me when you are back.");
    for message in [&first, &second] {
        assert_eq!(message["sender_id"], 7);
        assert_eq!(message["sender_name"], "Priya Patel");
    }
    aarav_tab1.expect_silence(QUIET);

    // Not read yet: they arrive again on the next connect, with a live one after them.
    send_to(&mut priya, json!(5), "live");
    let live = recv_message(&mut aarav_tab1);
    let mut aarav_tab2 = aarav(&server);
    assert_eq!(recv_message(&mut aarav_tab2), first);
    assert_eq!(recv_message(&mut aarav_tab2), second);
    assert_eq!(recv_message(&mut aarav_tab2), live);
    aarav_tab2.expect_silence(QUIET);
    aarav_tab1.expect_silence(QUIET);

    // Marked read: Priya hears of it, and they stop arriving.
    aarav_tab1.send_json(json!({"type": "mark_read", "sender_id": 7}));
    let read = priya.recv();
    assert_shape(&read, &doc(MESSAGES_READ));
    assert_eq!(read["reader_id"], 5);
    aarav_tab1.close();
    aarav_tab2.close();
    let mut aarav_again = aarav(&server);
    aarav_again.expect_silence(QUIET);

    // Only messages from the sender that was marked are read.
    let mut uma = server.connect_as(CHAT, json!("uma"), "Uma");
    send_to(&mut uma, json!(5), "from Uma");
    assert_eq!(recv_message_from_string_id(&mut aarav_again)["message"], "from Uma");
    aarav_again.close();
    send_to(&mut priya, json!(5), "after the read");
    priya.expect_silence(QUIET);
    let mut aarav_last = aarav(&server);
    // Oldest first: Uma's unread message, then Priya's new one.
    assert_eq!(recv_message_from_string_id(&mut aarav_last)["message"], "from Uma");
    assert_eq!(recv_message(&mut aarav_last)["message"], "after the read");
    aarav_last.expect_silence(QUIET);
}

#[test]
fn users_named_as_members_through_the_api_are_known() {
    let server = Server::start(&[]);
    let (status, body) = server.api(
        "POST",
        "/api/conversations",
        Some(&json!({"kind": "consultation", "id": "c-1", "title": "reading", "members": [5, 42]})),
    );
    assert_eq!(status, 201, "{body}");
    let mut priya = priya(&server);
    send_to(&mut priya, json!(42), "Welcome aboard");
    priya.expect_silence(QUIET);
    send_to(&mut priya, json!(43), "Never heard of you");
    assert_eq!(priya.recv(), json!({"type": "error", "message": "User not found."}));

    let mut newcomer = server.connect_as(CHAT, json!(42), "Newcomer");
    let message = recv_message(&mut newcomer);
    assert_eq!(message["message"], "Welcome aboard");
    assert_eq!(message["sender_id"], 7);
    newcomer.expect_silence(QUIET);
}

#[test]
fn offline_messages_survive_a_restart() {
    let server = Server::start(&[]);
    aarav(&server).close();
    let mut priya = priya(&server);
    priya.send_text(SEND_CHAT_MESSAGE);
    priya.expect_silence(QUIET);
    drop(priya);

    let server = server.restart();
    let mut aarav = aarav(&server);
    let message = recv_message(&mut aarav);
    assert_eq!(message["message"], "Hello, are you available?");
    assert_eq!(message["sender_id"], 7);
    assert_eq!(message["sender_name"], "Priya Patel");
    aarav.expect_silence(QUIET);

    // Users stay known, and a read survives the next restart too.
    let mut priya = self::priya(&server);
    send_to(&mut priya, json!(5), "after the restart");
    assert_eq!(recv_message(&mut aarav)["message"], "after the restart");
    aarav.send_json(json!({"type": "mark_read", "sender_id": 7}));
    assert_eq!(priya.recv()["type"], "messages_read");
    drop((aarav, priya));
    let server = server.restart();
    let mut aarav = self::aarav(&server);
    aarav.expect_silence(QUIET);
}
