//! Consultation chat (document 001) end to end, over real sockets against the real binary:
//! `/ws/consultations/{id}/`, and `/ws/chat/{id}/` while
//! `SWITCHBOARD_CHAT_PROTOCOL=consultation`. Every client frame of the document is sent as
//! the document prints it, and every server frame is checked key by key and type by type
//! against the document's example (docs/protocols.md for the frames the document lacks).

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

// The document's client frames, exactly as it prints them.
const SEND_CHAT_MESSAGE: &str = r#"{
  "type": "chat_message",
  "message": "Hello, how can I help?"
}"#;
const SEND_TYPING: &str = r#"{
  "type": "typing",
  "is_typing": true
}"#;
const SEND_READ_RECEIPT: &str = r#"{
  "type": "read_receipt",
  "message_id": "uuid"
}"#;

// The document's server frames.
const CONNECTION_ESTABLISHED: &str = r#"{
  "type": "connection_established",
  "message": "Connected to chat",
  "consultation_id": "uuid"
}"#;
const CHAT_MESSAGE: &str = r#"{
  "type": "chat_message",
  "data": {
    "id": "uuid",
    "sender_id": "uuid",
    "sender_name": "John Doe",
    "content": "Hello!",
    "created_at": "2024-01-15T10:00:00Z",
    "message_type": "text"
  }
}"#;
const TYPING_INDICATOR: &str = r#"{
  "type": "typing_indicator",
  "user_id": "uuid",
  "user_name": "Jane Doe",
  "is_typing": true
}"#;
// The two the document does not show, from docs/protocols.md.
const READ_RECEIPT: &str = r#"{"type": "read_receipt", "message_id": "17", "user_id": "5", "user_name": "Jane Doe", "read_at": "2024-03-14T12:00:00.123456Z"}"#;
const ERROR: &str = r#"{"type": "error", "message": "..."}"#;

const QUIET: Duration = Duration::from_millis(250);

fn create_conversation(server: &Server, body: Value) -> Value {
    let (status, answer) = server.api("POST", "/api/conversations", Some(&body));
    assert_eq!(status, 201, "create {body}: {answer}");
    answer["conversation"].clone()
}

fn consultation(server: &Server, id: &str, members: Value) {
    create_conversation(
        server,
        json!({"kind": "consultation", "id": id, "title": "Numerology reading", "status": "active", "priority": 1, "members": members}),
    );
}

/// Connects and checks the `connection_established` frame that opens every session.
fn join(server: &Server, path: &str, id: &str, user: Value, name: &str) -> Client {
    let mut client = server.connect_as(path, user, name);
    let hello = client.recv();
    assert_shape(&hello, &doc(CONNECTION_ESTABLISHED));
    assert_eq!(hello, json!({"type": "connection_established", "message": "Connected to chat", "consultation_id": id}));
    client
}

/// Reads one `chat_message` and checks it against the document's example.
fn recv_chat_message(client: &mut Client) -> Value {
    let frame = client.recv();
    assert_shape(&frame, &doc(CHAT_MESSAGE));
    assert_eq!(frame["type"], "chat_message");
    assert_timestamp(&frame["data"]["created_at"]);
    assert!(!frame["data"]["id"].as_str().unwrap().is_empty(), "{frame}");
    frame["data"].clone()
}

fn stored_rows(server: &Server) -> i64 {
    server.stored_rows()
}

/// The document's whole exchange between two members, John (5) and Jane (7).
fn document_flow(server: &Server, base: &str) {
    consultation(server, "c-100", json!([5, 7]));
    let path = format!("{base}/c-100/");
    let mut john = join(server, &path, "c-100", json!(5), "John Doe");
    john.expect_silence(QUIET);
    let mut jane = join(server, &path, "c-100", json!(7), "Jane Doe");
    jane.expect_silence(QUIET);

    // Chat message: stored, then to every member, sender included.
    john.send_text(SEND_CHAT_MESSAGE);
    let to_john = recv_chat_message(&mut john);
    let to_jane = recv_chat_message(&mut jane);
    assert_eq!(to_john, to_jane);
    assert_eq!(to_john["sender_id"], "5");
    assert_eq!(to_john["sender_name"], "John Doe");
    assert_eq!(to_john["content"], "Hello, how can I help?");
    assert_eq!(to_john["message_type"], "text");
    let message_id = to_john["id"].as_str().unwrap().to_string();

    // Typing: to the other member only.
    jane.send_text(SEND_TYPING);
    let typing = john.recv();
    assert_shape(&typing, &doc(TYPING_INDICATOR));
    assert_eq!(typing, json!({"type": "typing_indicator", "user_id": "7", "user_name": "Jane Doe", "is_typing": true}));
    jane.expect_silence(QUIET);

    // The document's read receipt names the placeholder "uuid", which is no message of
    // this consultation: an error frame to the sender, nothing to the other member.
    jane.send_text(SEND_READ_RECEIPT);
    let error = jane.recv();
    assert_shape(&error, &doc(ERROR));
    assert_eq!(error["type"], "error");
    assert!(!error["message"].as_str().unwrap().is_empty());
    john.expect_silence(QUIET);

    // The same frame naming the real message: the other member sees the receipt.
    jane.send_text(&SEND_READ_RECEIPT.replace("uuid", &message_id));
    let receipt = john.recv();
    assert_shape(&receipt, &doc(READ_RECEIPT));
    assert_eq!(receipt["type"], "read_receipt");
    assert_eq!(receipt["message_id"], message_id.as_str());
    assert_eq!(receipt["user_id"], "7");
    assert_eq!(receipt["user_name"], "Jane Doe");
    assert_timestamp(&receipt["read_at"]);
    jane.expect_silence(QUIET);
    john.expect_silence(QUIET);
}

#[test]
fn the_documents_frames_between_two_members_at_the_consultations_path() {
    let server = Server::start(&[]);
    document_flow(&server, "/ws/consultations");
}

#[test]
fn the_documents_frames_at_the_chat_path_when_the_chat_protocol_is_consultation() {
    let server = Server::start(&[("SWITCHBOARD_CHAT_PROTOCOL", "consultation")]);
    document_flow(&server, "/ws/chat");
    // The chat path now speaks consultations: a room name is no consultation.
    let token = server.token(json!(5), "John Doe");
    assert_eq!(refused_before_any_frame(&server, &format!("/ws/chat/lobby/?token={token}")), Some(4003));
    // Both paths reach the same consultation.
    let mut john = join(&server, "/ws/consultations/c-100", "c-100", json!(5), "John Doe");
    let history = recv_chat_message(&mut john);
    assert_eq!(history["content"], "Hello, how can I help?");
    john.expect_silence(QUIET);
}

#[test]
fn chat_messages_reach_every_connection_of_every_member_and_no_other_consultation() {
    let server = Server::start(&[]);
    consultation(&server, "c-1", json!([5, 7, "8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"]));
    consultation(&server, "c-2", json!([5, 7]));
    let mut john_tab1 = join(&server, "/ws/consultations/c-1/", "c-1", json!(5), "John Doe");
    let mut john_tab2 = join(&server, "/ws/consultations/c-1", "c-1", json!(5), "John Doe");
    let mut jane = join(&server, "/ws/consultations/c-1/", "c-1", json!(7), "Jane Doe");
    let mut uma =
        join(&server, "/ws/consultations/c-1/", "c-1", json!("8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2"), "Uma Uuid");
    let mut elsewhere = join(&server, "/ws/consultations/c-2/", "c-2", json!(7), "Jane Doe");

    john_tab1.send_text(SEND_CHAT_MESSAGE);
    let first = recv_chat_message(&mut john_tab1);
    for client in [&mut john_tab2, &mut jane, &mut uma] {
        assert_eq!(recv_chat_message(client), first);
    }
    elsewhere.expect_silence(QUIET);

    // A member with a string user id: the id is the string itself.
    uma.send_json(json!({"type": "chat_message", "message": "Hi from a uuid"}));
    for client in [&mut john_tab1, &mut john_tab2, &mut jane, &mut uma] {
        let data = recv_chat_message(client);
        assert_eq!(data["sender_id"], "8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2");
        assert_eq!(data["sender_name"], "Uma Uuid");
        assert_eq!(data["content"], "Hi from a uuid");
        assert_ne!(data["id"], first["id"]);
    }
    elsewhere.expect_silence(QUIET);
}

#[test]
fn typing_goes_to_the_other_member_and_not_back_to_the_sender() {
    let server = Server::start(&[]);
    consultation(&server, "c-typing", json!([5, 7]));
    let mut john = join(&server, "/ws/consultations/c-typing/", "c-typing", json!(5), "John Doe");
    let mut jane = join(&server, "/ws/consultations/c-typing/", "c-typing", json!(7), "Jane Doe");

    john.send_text(SEND_TYPING);
    let frame = jane.recv();
    assert_shape(&frame, &doc(TYPING_INDICATOR));
    assert_eq!(frame, json!({"type": "typing_indicator", "user_id": "5", "user_name": "John Doe", "is_typing": true}));
    john.expect_silence(QUIET);

    john.send_text(&SEND_TYPING.replace("true", "false"));
    assert_eq!(
        jane.recv(),
        json!({"type": "typing_indicator", "user_id": "5", "user_name": "John Doe", "is_typing": false})
    );
    john.expect_silence(QUIET);

    // Typing is not stored: a new connection gets no history.
    jane.close();
    let mut jane = join(&server, "/ws/consultations/c-typing/", "c-typing", json!(7), "Jane Doe");
    jane.expect_silence(QUIET);
}

#[test]
fn refusals_close_before_any_frame() {
    let server = Server::start(&[]);
    consultation(&server, "c-private", json!([5, 7]));
    create_conversation(&server, json!({"kind": "support", "id": "s-1", "title": "support", "members": [5]}));
    let member = server.token(json!(5), "John Doe");
    let outsider = server.token(json!(9), "Mallory");
    let expired = token(json!({"user_id": 5, "exp": in_secs(-3600), "token_type": "access"}));

    let cases: [(&str, String, u16); 8] = [
        ("a user who is not a member", format!("/ws/consultations/c-private/?token={outsider}"), 4003),
        ("an unknown consultation", format!("/ws/consultations/c-nowhere/?token={member}"), 4003),
        ("a support conversation is no consultation", format!("/ws/consultations/s-1/?token={member}"), 4003),
        ("a garbage token", "/ws/consultations/c-private/?token=not-a-token".to_string(), 4001),
        ("an expired token", format!("/ws/consultations/c-private/?token={expired}"), 4001),
        ("no token at all", "/ws/consultations/c-private/".to_string(), 4001),
        ("a bad token on an unknown consultation", "/ws/consultations/c-nowhere/?token=x".to_string(), 4001),
        ("a non-member without the trailing slash", format!("/ws/consultations/c-private?token={outsider}"), 4003),
    ];
    for (what, path, code) in &cases {
        assert_eq!(refused_before_any_frame(&server, path), Some(*code), "{what}");
    }
    // The member is let in, with the token in the query or in the header.
    join(&server, "/ws/consultations/c-private/", "c-private", json!(5), "John Doe");
    let mut header = server
        .try_connect("/ws/consultations/c-private/", &[("Authorization", &format!("Bearer {member}"))])
        .expect("header auth");
    assert_eq!(header.recv()["type"], "connection_established");
}

#[test]
fn read_receipts_are_stored_once_and_seen_by_the_other_member() {
    let server = Server::start(&[]);
    consultation(&server, "c-read", json!([5, 7]));
    consultation(&server, "c-other", json!([5, 7]));
    let mut john = join(&server, "/ws/consultations/c-read/", "c-read", json!(5), "John Doe");
    let mut jane = join(&server, "/ws/consultations/c-read/", "c-read", json!(7), "Jane Doe");
    let mut other = join(&server, "/ws/consultations/c-other/", "c-other", json!(5), "John Doe");

    john.send_text(SEND_CHAT_MESSAGE);
    let message = recv_chat_message(&mut john);
    recv_chat_message(&mut jane);
    let message_id = message["id"].as_str().unwrap().to_string();
    other.send_json(json!({"type": "chat_message", "message": "in another consultation"}));
    let foreign_id = recv_chat_message(&mut other)["id"].as_str().unwrap().to_string();

    let before = stored_rows(&server);
    // A message of another consultation is not a message of this one.
    jane.send_json(json!({"type": "read_receipt", "message_id": foreign_id}));
    let error = jane.recv();
    assert_shape(&error, &doc(ERROR));
    assert_eq!(error["type"], "error");
    // Nor is an id that names no message at all.
    jane.send_json(json!({"type": "read_receipt", "message_id": "999999"}));
    assert_eq!(jane.recv()["type"], "error");
    john.expect_silence(QUIET);
    assert_eq!(stored_rows(&server), before, "nothing is stored for a refused read receipt");

    // `message_id` may be a number; the receipt names it as a string.
    let numeric: i64 = message_id.parse().expect("switchboard's message ids are numbers written as strings");
    jane.send_json(json!({"type": "read_receipt", "message_id": numeric}));
    let receipt = john.recv();
    assert_shape(&receipt, &doc(READ_RECEIPT));
    assert_eq!(receipt["message_id"], message_id.as_str());
    assert_eq!(receipt["user_id"], "7");
    assert_eq!(receipt["user_name"], "Jane Doe");
    assert_timestamp(&receipt["read_at"]);
    jane.expect_silence(QUIET);
    let after = stored_rows(&server);
    assert!(after > before, "the read receipt is stored ({before} rows before, {after} after)");

    // Once per user and message: the same receipt again stores nothing new.
    jane.send_text(&SEND_READ_RECEIPT.replace("uuid", &message_id));
    jane.send_text(SEND_TYPING);
    john.recv_type("typing_indicator");
    assert_eq!(stored_rows(&server), after, "a second receipt for the same message is not stored again");
}

#[test]
fn bad_frames_get_error_frames_nothing_is_stored_and_the_connection_stays() {
    let server = Server::start(&[]);
    consultation(&server, "c-errors", json!([5, 7]));
    let mut john = join(&server, "/ws/consultations/c-errors/", "c-errors", json!(5), "John Doe");
    let mut jane = join(&server, "/ws/consultations/c-errors/", "c-errors", json!(7), "Jane Doe");
    let before = stored_rows(&server);
    for bad in [
        "not json",
        "{\"type\": \"chat_message\"",
        r#"{"type": "shout", "message": "hi"}"#,
        r#"{"type": "chat_message"}"#,
        r#"{"type": "chat_message", "message": ""}"#,
    ] {
        john.send_text(bad);
        let frame = john.recv();
        assert_shape(&frame, &doc(ERROR));
        assert_eq!(frame["type"], "error", "{bad} -> {frame}");
        assert!(!frame["message"].as_str().unwrap().is_empty(), "{bad} -> {frame}");
    }
    jane.expect_silence(QUIET);
    assert_eq!(stored_rows(&server), before, "nothing is stored for an error");

    john.send_text(SEND_CHAT_MESSAGE);
    assert_eq!(recv_chat_message(&mut john)["content"], "Hello, how can I help?");
    assert_eq!(recv_chat_message(&mut jane)["content"], "Hello, how can I help?");
    // The history holds the one good message.
    let mut again = join(&server, "/ws/consultations/c-errors/", "c-errors", json!(7), "Jane Doe");
    assert_eq!(recv_chat_message(&mut again)["content"], "Hello, how can I help?");
    again.expect_silence(QUIET);
}

#[test]
fn history_is_replayed_oldest_first_on_reconnect_and_after_a_restart() {
    let server = Server::start(&[("SWITCHBOARD_HISTORY_LIMIT", "3")]);
    consultation(&server, "c-history", json!([5, 7]));
    let mut john = join(&server, "/ws/consultations/c-history/", "c-history", json!(5), "John Doe");
    let mut sent = Vec::new();
    for i in 0..5 {
        john.send_json(
            json!({"type": "chat_message", "message": format!("m{i} ' \"; DROP TABLE messages; -- ünï 🎉")}),
        );
        sent.push(recv_chat_message(&mut john));
    }
    john.close();

    // Reconnect: the newest three (the history limit), oldest first, as sent.
    let mut jane = join(&server, "/ws/consultations/c-history/", "c-history", json!(7), "Jane Doe");
    for expected in &sent[2..] {
        assert_eq!(&recv_chat_message(&mut jane), expected);
    }
    jane.expect_silence(QUIET);
    drop(jane);

    let server = server.restart();
    let mut jane = join(&server, "/ws/consultations/c-history/", "c-history", json!(7), "Jane Doe");
    for expected in &sent[2..] {
        assert_eq!(&recv_chat_message(&mut jane), expected, "after the restart");
    }
    jane.expect_silence(QUIET);
    // Membership survived too.
    let outsider = server.token(json!(9), "Mallory");
    assert_eq!(
        refused_before_any_frame(&server, &format!("/ws/consultations/c-history/?token={outsider}")),
        Some(4003)
    );
}

#[test]
fn a_member_removed_through_the_api_is_closed_with_4003() {
    let server = Server::start(&[]);
    consultation(&server, "c-members", json!([5, 7]));
    let mut john = join(&server, "/ws/consultations/c-members/", "c-members", json!(5), "John Doe");
    let mut jane = join(&server, "/ws/consultations/c-members/", "c-members", json!(7), "Jane Doe");

    let (status, body) =
        server.api("PUT", "/api/conversations/consultation/c-members/members", Some(&json!({"members": [5]})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(jane.expect_close(), Some(4003));
    let (status, body) = server.api("GET", "/api/conversations/consultation/c-members", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["members"], json!([5]));

    // John stays, and Jane is refused from now on. The change is an event of the
    // conversation's stream (shown to nobody), so John's message is its second.
    john.send_text(SEND_CHAT_MESSAGE);
    let frame = john.recv();
    assert_eq!((frame["data"]["content"].as_str(), frame["seq"].as_i64()), (Some("Hello, how can I help?"), Some(2)));
    // Setting the same members again changes nothing and records nothing.
    let (status, _) =
        server.api("PUT", "/api/conversations/consultation/c-members/members", Some(&json!({"members": [5]})));
    assert_eq!(status, 200);
    john.send_text(SEND_CHAT_MESSAGE);
    assert_eq!(john.recv()["seq"], 3);
    let token = server.token(json!(7), "Jane Doe");
    assert_eq!(refused_before_any_frame(&server, &format!("/ws/consultations/c-members/?token={token}")), Some(4003));
}
