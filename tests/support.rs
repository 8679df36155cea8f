//! Support conversations (document 002) end to end, over real sockets against the real
//! binary: the chat at `/ws/conversations/{id}/` (and `/ws/chat/{id}/` while
//! `SWITCHBOARD_CHAT_PROTOCOL=support`), the list at `/ws/conversations/`, and the server
//! API that creates conversations and posts inbound customer messages. The document's
//! client frames are sent as its `JSON.stringify` calls write them; server frames are
//! checked key by key and type by type against the document's objects.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

// The document's client frames: what its `JSON.stringify({...})` calls put on the wire.
const SEND_CHAT_MESSAGE: &str = r#"{"type":"chat_message","content":"Hello, how can I help you?"}"#;
const SEND_TYPING: &str = r#"{"type":"typing","is_typing":true}"#;
const SEND_MARK_READ: &str = r#"{"type":"mark_read"}"#;
const SEND_GET_CONVERSATIONS: &str = r#"{"type":"get_conversations"}"#;
const SEND_REFRESH_CONVERSATIONS: &str = r#"{"type":"refresh_conversations"}"#;

// The document's Chat Message Object and Conversation Object (its `// or ...` comments
// removed so they parse as JSON).
const CHAT_MESSAGE_OBJECT: &str = r#"{
    "id": "msg123",
    "content": "Hello, how can I help you?",
    "type": "support",
    "customer": {
        "id": 1,
        "first_name": "John",
        "last_name": "Doe",
        "source": "telegram"
    },
    "is_ai_response": false,
    "is_answered": true,
    "created_at": "2024-01-15T10:30:00Z"
}"#;
const CONVERSATION_OBJECT: &str = r#"{
    "id": "conv123",
    "title": "telegram - John Doe",
    "status": "active",
    "customer": {
        "id": 1,
        "first_name": "John",
        "last_name": "Doe",
        "source": "telegram",
        "profile_picture": "https://example.com/profile.jpg"
    },
    "priority": 1,
    "created_at": "2024-01-15T09:00:00Z",
    "updated_at": "2024-01-15T10:30:00Z",
    "last_message": {
        "id": "msg123",
        "content": "Hello, how can I help you?",
        "type": "customer",
        "created_at": "2024-01-15T10:30:00Z"
    },
    "unread_count": 3
}"#;
// The frames around them, as the document reads them (`data.message`, `data.username`,
// ...) and docs/protocols.md spells them out.
const CHAT_MESSAGE_FRAME: &str = r#"{"type": "chat_message", "message": {}}"#;
const NEW_CUSTOMER_MESSAGE_FRAME: &str =
    r#"{"type": "new_customer_message", "conversation_id": "conv123", "message": {}}"#;

const PICTURE: &str = "https://example.com/p.jpg";
const QUIET: Duration = Duration::from_millis(250);

/// A Chat Message Object, checked against the document's (`customer` is null in a
/// conversation without one, as docs/protocols.md says).
fn assert_message(message: &Value) {
    let mut example = doc(CHAT_MESSAGE_OBJECT);
    if message["customer"].is_null() {
        example["customer"] = Value::Null;
    }
    assert_shape(message, &example);
    assert_timestamp(&message["created_at"]);
    assert!(!message["id"].as_str().unwrap().is_empty(), "{message}");
}

/// A Conversation Object, checked against the document's. `last_message` is null for an
/// empty conversation; the document and docs/protocols.md do not say what a conversation
/// without a customer, or a customer without a picture, shows: null is taken for both.
/// (Where the test gave a customer and a picture, it checks them by value.)
fn assert_conversation(conversation: &Value) {
    let mut example = doc(CONVERSATION_OBJECT);
    if conversation["customer"].is_null() {
        example["customer"] = Value::Null;
    } else if conversation["customer"]["profile_picture"].is_null() {
        example["customer"]["profile_picture"] = Value::Null;
    }
    if conversation["last_message"].is_null() {
        example["last_message"] = Value::Null;
    } else {
        assert_timestamp(&conversation["last_message"]["created_at"]);
    }
    assert_shape(conversation, &example);
    assert_timestamp(&conversation["created_at"]);
    assert_timestamp(&conversation["updated_at"]);
}

fn customer(external_id: &str, first_name: &str, last_name: &str) -> Value {
    json!({"source": "telegram", "external_id": external_id, "first_name": first_name, "last_name": last_name,
           "profile_picture": PICTURE})
}

/// Creates a support conversation with a customer through the server API.
fn support_conversation(server: &Server, id: &str, priority: i64, members: Value, customer: Value) -> Value {
    let body = json!({"kind": "support", "id": id, "title": format!("telegram - {id}"), "status": "active",
                      "priority": priority, "members": members, "customer": customer});
    let (status, answer) = server.api("POST", "/api/conversations", Some(&body));
    assert_eq!(status, 201, "create {body}: {answer}");
    answer["conversation"].clone()
}

/// Posts an inbound customer message; returns the answer.
fn inbound(server: &Server, body: Value) -> Value {
    let (status, answer) = server.api("POST", "/api/inbound", Some(&body));
    assert_eq!(status, 201, "inbound {body}: {answer}");
    assert_message(&answer["message"]);
    assert!(answer["created_conversation"].is_boolean(), "{answer}");
    answer
}

/// An inbound message from customer `external_id` (John Doe) into `conversation`.
fn customer_says(server: &Server, conversation: &str, external_id: &str, content: &str) -> Value {
    let answer = inbound(
        server,
        json!({"source": "telegram", "customer": customer(external_id, "John", "Doe"), "content": content,
               "conversation_id": conversation}),
    );
    assert_eq!(answer["conversation_id"], conversation);
    assert_eq!(answer["created_conversation"], false);
    answer["message"].clone()
}

/// Opens a chat and returns it with its `recent_messages`.
fn open_chat(server: &Server, path: &str, user: Value, name: &str) -> (Client, Vec<Value>) {
    let mut client = server.connect_as(path, user, name);
    let frame = client.recv();
    assert_shape(&frame, &json!({"type": "recent_messages", "messages": []}));
    assert_eq!(frame["type"], "recent_messages");
    let messages = frame["messages"].as_array().unwrap().clone();
    messages.iter().for_each(assert_message);
    (client, messages)
}

/// Reads one `chat_message` frame and returns its message object.
fn recv_chat_message(client: &mut Client) -> Value {
    let frame = client.recv();
    assert_shape(&frame, &doc(CHAT_MESSAGE_FRAME));
    assert_eq!(frame["type"], "chat_message");
    assert_message(&frame["message"]);
    frame["message"].clone()
}

/// Reads one `conversations_list` frame and returns its conversations.
fn recv_list(client: &mut Client) -> Vec<Value> {
    let frame = client.recv_type("conversations_list");
    assert_shape(&frame, &json!({"type": "conversations_list", "conversations": []}));
    let conversations = frame["conversations"].as_array().unwrap().clone();
    conversations.iter().for_each(assert_conversation);
    conversations
}

fn open_list(server: &Server, user: Value, name: &str) -> (Client, Vec<Value>) {
    let mut client = server.connect_as("/ws/conversations/", user, name);
    let list = recv_list(&mut client);
    (client, list)
}

fn get_list(client: &mut Client) -> Vec<Value> {
    client.send_text(SEND_GET_CONVERSATIONS);
    recv_list(client)
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter().map(|c| c["id"].as_str().unwrap()).collect()
}

fn unread(list: &[Value], id: &str) -> i64 {
    let conversation = list.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("{id} not listed: {list:?}"));
    conversation["unread_count"].as_i64().unwrap()
}

/// Reads one `new_customer_message` frame, checked against the document.
fn recv_new_customer_message(client: &mut Client) -> Value {
    let frame = client.recv();
    assert_shape(&frame, &doc(NEW_CUSTOMER_MESSAGE_FRAME));
    assert_eq!(frame["type"], "new_customer_message");
    assert_message(&frame["message"]);
    frame
}

/// The document's chat exchange between two agents, Ann (5) and Bob (7), in a
/// conversation with a Telegram customer.
fn chat_flow(server: &Server, base: &str) {
    support_conversation(server, "abc123", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let path = format!("{base}/abc123/");
    let hi = customer_says(server, "abc123", "tg-1", "Hi there");
    assert_eq!(hi["type"], "customer");
    assert_eq!(hi["content"], "Hi there");
    assert_eq!(hi["is_answered"], false);
    assert_eq!(hi["is_ai_response"], false);
    assert_eq!(hi["customer"]["first_name"], "John");
    assert_eq!(hi["customer"]["last_name"], "Doe");
    assert_eq!(hi["customer"]["source"], "telegram");

    let (mut ann, recent) = open_chat(server, &path, json!(5), "Ann Agent");
    assert_eq!(recent, std::slice::from_ref(&hi));
    let (mut bob, recent) = open_chat(server, &path, json!(7), "Bob Agent");
    assert_eq!(recent, std::slice::from_ref(&hi));

    // A chat message from an agent: a support message, to everyone, sender included.
    ann.send_text(SEND_CHAT_MESSAGE);
    let reply = recv_chat_message(&mut ann);
    assert_eq!(recv_chat_message(&mut bob), reply);
    assert_eq!(reply["type"], "support");
    assert_eq!(reply["content"], "Hello, how can I help you?");
    assert_eq!(reply["is_ai_response"], false);
    assert_eq!(reply["customer"], hi["customer"], "the conversation's customer");
    assert_ne!(reply["id"], hi["id"]);

    // Typing goes to the others.
    bob.send_text(SEND_TYPING);
    assert_eq!(ann.recv(), json!({"type": "typing_indicator", "username": "Bob Agent", "is_typing": true}));
    bob.expect_silence(QUIET);

    // Mark read: every connection of the conversation hears of it.
    bob.send_text(SEND_MARK_READ);
    assert_eq!(ann.recv_event(), json!({"type": "messages_read", "user_id": 7}));
    assert_eq!(bob.recv_event(), json!({"type": "messages_read", "user_id": 7}));

    // Invalid JSON gets exactly the document's error, and the connection stays.
    ann.send_text("{'type': 'chat_message'");
    assert_eq!(ann.recv(), json!({"error": "Invalid JSON format"}));
    bob.expect_silence(QUIET);

    // A customer message arriving while the chat is open.
    let again = customer_says(server, "abc123", "tg-1", "Are you there?");
    assert_eq!(recv_chat_message(&mut ann), again);
    assert_eq!(recv_chat_message(&mut bob), again);
    assert_eq!(again["type"], "customer");

    // A new connection gets everything, oldest first; the first customer message has
    // been answered since.
    let (_carol, recent) = open_chat(server, &path, json!(5), "Ann Agent");
    let contents: Vec<&str> = recent.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["Hi there", "Hello, how can I help you?", "Are you there?"]);
    assert_eq!(recent[0]["id"], hi["id"]);
    assert_eq!(recent[0]["is_answered"], true, "answered by the agent's reply");
    assert_eq!(recent[1], reply);
}

#[test]
fn the_documents_chat_frames_between_two_agents_at_the_conversations_path() {
    let server = Server::start(&[]);
    chat_flow(&server, "/ws/conversations");
}

#[test]
fn the_documents_chat_frames_at_the_chat_path_when_the_chat_protocol_is_support() {
    let server = Server::start(&[("SWITCHBOARD_CHAT_PROTOCOL", "support")]);
    chat_flow(&server, "/ws/chat");
    let token = server.token(json!(5), "Ann Agent");
    assert_eq!(refused_before_any_frame(&server, &format!("/ws/chat/lobby/?token={token}")), Some(4003));
}

#[test]
fn the_conversation_list_holds_the_documents_objects_newest_activity_first() {
    let server = Server::start(&[]);
    // Created first and never written to: the oldest activity.
    support_conversation(&server, "conv-d", 4, json!([5]), customer("tg-d", "John", "Doe"));
    support_conversation(&server, "conv-a", 2, json!([5, 7]), customer("tg-a", "John", "Doe"));
    support_conversation(&server, "conv-b", 1, json!([5]), customer("tg-b", "John", "Doe"));
    support_conversation(&server, "conv-c", 3, json!([5]), customer("tg-c", "John", "Doe"));
    // Not listed for user 5: someone else's, and a consultation.
    support_conversation(&server, "conv-other", 1, json!([7]), customer("tg-o", "John", "Doe"));
    let (status, _) = server.api(
        "POST",
        "/api/conversations",
        Some(&json!({"kind": "consultation", "id": "consult-1", "title": "reading", "members": [5]})),
    );
    assert_eq!(status, 201);
    customer_says(&server, "conv-b", "tg-b", "b says hi");
    customer_says(&server, "conv-c", "tg-c", "c says hi");
    let newest = customer_says(&server, "conv-a", "tg-a", "a says hi");

    let (mut list_socket, list) = open_list(&server, json!(5), "Ann Agent");
    assert_eq!(ids(&list), ["conv-a", "conv-c", "conv-b", "conv-d"]);
    let a = &list[0];
    assert_eq!(a["title"], "telegram - conv-a");
    assert_eq!(a["status"], "active");
    assert_eq!(a["priority"], 2);
    assert_eq!(
        a["customer"],
        json!({"id": newest["customer"]["id"], "first_name": "John", "last_name": "Doe", "source": "telegram",
               "profile_picture": PICTURE})
    );
    assert_eq!(
        a["last_message"],
        json!({"id": newest["id"], "content": "a says hi", "type": "customer", "created_at": newest["created_at"]})
    );
    assert_eq!(a["unread_count"], 1);
    let d = &list[3];
    assert_eq!(d["last_message"], Value::Null, "an empty conversation has no last message");
    assert_eq!(d["unread_count"], 0);
    assert_eq!(d["priority"], 4);

    // get_conversations and refresh_conversations both answer with the list.
    assert_eq!(get_list(&mut list_socket), list);
    list_socket.send_text(SEND_REFRESH_CONVERSATIONS);
    assert_eq!(recv_list(&mut list_socket), list);

    // An agent's reply is activity too: conv-d moves to the front.
    let (mut chat, _) = open_chat(&server, "/ws/conversations/conv-d/", json!(5), "Ann Agent");
    chat.send_json(json!({"type": "chat_message", "content": "Following up"}));
    let reply = recv_chat_message(&mut chat);
    let list = get_list(&mut list_socket);
    assert_eq!(ids(&list), ["conv-d", "conv-a", "conv-c", "conv-b"]);
    assert_eq!(list[0]["last_message"]["content"], "Following up");
    assert_eq!(list[0]["last_message"]["type"], "support");
    assert_eq!(list[0]["last_message"]["id"], reply["id"]);
    assert_eq!(list[0]["unread_count"], 0, "one's own messages are not unread");

    // Bad JSON on the list gets an error frame, and the connection stays.
    list_socket.send_text("not json");
    let error = list_socket.recv();
    assert_shape(&error, &json!({"error": "..."}));
    assert_eq!(ids(&get_list(&mut list_socket)), ["conv-d", "conv-a", "conv-c", "conv-b"]);

    // A user with no conversations gets an empty list.
    let (_, list) = open_list(&server, json!(42), "Nobody");
    assert!(list.is_empty());
}

#[test]
fn new_customer_messages_reach_the_members_list_sockets_only() {
    let server = Server::start(&[]);
    support_conversation(&server, "abc123", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let (mut ann_tab1, _) = open_list(&server, json!(5), "Ann Agent");
    let (mut ann_tab2, _) = open_list(&server, json!(5), "Ann Agent");
    let (mut bob, _) = open_list(&server, json!(7), "Bob Agent");
    let (mut outsider, _) = open_list(&server, json!(9), "Mallory");

    let answer = inbound(
        &server,
        json!({"source": "telegram", "customer": {"external_id": "tg-1", "first_name": "John", "last_name": "Doe"},
               "content": "Hi there", "conversation_id": "abc123"}),
    );
    for client in [&mut ann_tab1, &mut ann_tab2, &mut bob] {
        let frame = recv_new_customer_message(client);
        assert_eq!(frame["conversation_id"], "abc123");
        assert_eq!(frame["message"], answer["message"]);
        assert_eq!(frame["message"]["type"], "customer");
        assert_eq!(frame["message"]["content"], "Hi there");
    }
    outsider.expect_silence(QUIET);

    // An agent's message is not a customer message: no notification.
    let (mut chat, _) = open_chat(&server, "/ws/conversations/abc123/", json!(7), "Bob Agent");
    chat.send_text(SEND_CHAT_MESSAGE);
    recv_chat_message(&mut chat);
    ann_tab1.expect_silence(QUIET);
    bob.expect_silence(QUIET);

    // A conversation created by an inbound message notifies the members it names.
    let answer = inbound(
        &server,
        json!({"source": "telegram", "customer": {"external_id": "tg-2", "first_name": "Jane", "last_name": "Roe"},
               "content": "New here", "members": [7]}),
    );
    assert_eq!(answer["created_conversation"], true);
    let frame = recv_new_customer_message(&mut bob);
    assert_eq!(frame["conversation_id"], answer["conversation_id"]);
    assert_eq!(frame["message"], answer["message"]);
    ann_tab1.expect_silence(QUIET);
    outsider.expect_silence(QUIET);
    let list = get_list(&mut bob);
    assert_eq!(list[0]["id"], answer["conversation_id"]);
    assert_eq!(list[0]["title"], "telegram - Jane Roe");
    assert_eq!(list[0]["unread_count"], 1);
}

#[test]
fn unread_counts_rise_with_customer_messages_and_mark_read_clears_them() {
    let server = Server::start(&[]);
    support_conversation(&server, "u1", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let (mut ann_list, list) = open_list(&server, json!(5), "Ann Agent");
    assert_eq!(unread(&list, "u1"), 0);
    let (mut bob_list, _) = open_list(&server, json!(7), "Bob Agent");

    customer_says(&server, "u1", "tg-1", "one");
    customer_says(&server, "u1", "tg-1", "two");
    for client in [&mut ann_list, &mut bob_list] {
        recv_new_customer_message(client);
        recv_new_customer_message(client);
    }
    assert_eq!(unread(&get_list(&mut ann_list), "u1"), 2);
    assert_eq!(unread(&get_list(&mut bob_list), "u1"), 2);

    // Ann reads in the chat: her count is 0 on the next get_conversations, Bob's is not.
    let (mut ann_chat, recent) = open_chat(&server, "/ws/conversations/u1/", json!(5), "Ann Agent");
    assert_eq!(recent.len(), 2);
    assert_eq!(unread(&get_list(&mut ann_list), "u1"), 2, "opening the chat alone reads nothing");
    ann_chat.send_text(SEND_MARK_READ);
    assert_eq!(ann_chat.recv_event(), json!({"type": "messages_read", "user_id": 5}));
    assert_eq!(unread(&get_list(&mut ann_list), "u1"), 0);
    assert_eq!(unread(&get_list(&mut bob_list), "u1"), 2);

    // Ann's own reply is not unread for her, but is for Bob.
    ann_chat.send_text(SEND_CHAT_MESSAGE);
    recv_chat_message(&mut ann_chat);
    assert_eq!(unread(&get_list(&mut ann_list), "u1"), 0);
    assert_eq!(unread(&get_list(&mut bob_list), "u1"), 3);

    // A new customer message counts again.
    customer_says(&server, "u1", "tg-1", "three");
    recv_chat_message(&mut ann_chat);
    recv_new_customer_message(&mut ann_list);
    recv_new_customer_message(&mut bob_list);
    assert_eq!(unread(&get_list(&mut ann_list), "u1"), 1);
    assert_eq!(unread(&get_list(&mut bob_list), "u1"), 4);
}

#[test]
fn messages_and_read_positions_survive_a_restart() {
    let server = Server::start(&[]);
    support_conversation(&server, "r1", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let first = customer_says(&server, "r1", "tg-1", "before the restart");
    let (mut ann_chat, _) = open_chat(&server, "/ws/conversations/r1/", json!(5), "Ann Agent");
    ann_chat.send_text(SEND_MARK_READ);
    ann_chat.recv_type("messages_read");
    ann_chat.send_text(SEND_CHAT_MESSAGE);
    let reply = recv_chat_message(&mut ann_chat);
    let second = customer_says(&server, "r1", "tg-1", "still there?");
    recv_chat_message(&mut ann_chat);
    drop(ann_chat);

    let server = server.restart();
    let (_, recent) = open_chat(&server, "/ws/conversations/r1/", json!(7), "Bob Agent");
    let ids: Vec<&Value> = recent.iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&first["id"], &reply["id"], &second["id"]]);
    assert_eq!(recent[1], reply);
    assert_eq!(recent[0]["is_answered"], true);
    assert_eq!(recent[2]["is_answered"], false);

    let (_, list) = open_list(&server, json!(5), "Ann Agent");
    assert_eq!(unread(&list, "r1"), 1, "Ann read up to her reply before the restart");
    assert_eq!(list[0]["last_message"]["id"], second["id"]);
    let (mut bob_list, list) = open_list(&server, json!(7), "Bob Agent");
    assert_eq!(unread(&list, "r1"), 3);

    let (mut bob_chat, _) = open_chat(&server, "/ws/conversations/r1/", json!(7), "Bob Agent");
    bob_chat.send_text(SEND_MARK_READ);
    assert_eq!(bob_chat.recv_event(), json!({"type": "messages_read", "user_id": 7}));
    assert_eq!(unread(&get_list(&mut bob_list), "r1"), 0);
}

#[test]
fn refusals_close_before_any_frame() {
    let server = Server::start(&[]);
    support_conversation(&server, "private", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let (status, _) = server.api(
        "POST",
        "/api/conversations",
        Some(&json!({"kind": "consultation", "id": "consult-1", "title": "reading", "members": [5]})),
    );
    assert_eq!(status, 201);
    let member = server.token(json!(5), "Ann Agent");
    let outsider = server.token(json!(9), "Mallory");
    let expired = token(json!({"user_id": 5, "exp": in_secs(-3600), "token_type": "access"}));

    let cases: [(&str, String, u16); 8] = [
        ("a user who is not a member", format!("/ws/conversations/private/?token={outsider}"), 4003),
        ("an unknown conversation", format!("/ws/conversations/nowhere/?token={member}"), 4003),
        ("a consultation is no support conversation", format!("/ws/conversations/consult-1/?token={member}"), 4003),
        ("a garbage token", "/ws/conversations/private/?token=not-a-token".to_string(), 4001),
        ("an expired token", format!("/ws/conversations/private/?token={expired}"), 4001),
        ("no token at all", "/ws/conversations/private/".to_string(), 4001),
        ("a garbage token on the list", "/ws/conversations/?token=not-a-token".to_string(), 4001),
        ("no token on the list", "/ws/conversations/".to_string(), 4001),
    ];
    for (what, path, code) in &cases {
        assert_eq!(refused_before_any_frame(&server, path), Some(*code), "{what}");
    }
    open_chat(&server, "/ws/conversations/private", json!(5), "Ann Agent");
    let mut list = server
        .try_connect("/ws/conversations", &[("Authorization", &format!("Bearer {member}"))])
        .expect("header auth");
    assert_eq!(ids(&recv_list(&mut list)), ["private"]);
}

#[test]
fn a_member_removed_through_the_api_is_closed_with_4003_and_loses_the_conversation() {
    let server = Server::start(&[]);
    support_conversation(&server, "team", 1, json!([5, 7]), customer("tg-1", "John", "Doe"));
    let (mut ann, _) = open_chat(&server, "/ws/conversations/team/", json!(5), "Ann Agent");
    let (mut bob, _) = open_chat(&server, "/ws/conversations/team/", json!(7), "Bob Agent");

    let (status, body) =
        server.api("PUT", "/api/conversations/support/team/members", Some(&json!({"members": [5, 9]})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.expect_close(), Some(4003));
    ann.send_text(SEND_CHAT_MESSAGE);
    recv_chat_message(&mut ann);

    let bob_token = server.token(json!(7), "Bob Agent");
    assert_eq!(refused_before_any_frame(&server, &format!("/ws/conversations/team/?token={bob_token}")), Some(4003));
    let (_, list) = open_list(&server, json!(7), "Bob Agent");
    assert!(list.is_empty(), "{list:?}");
    let (_, recent) = open_chat(&server, "/ws/conversations/team/", json!(9), "Cy Agent");
    assert_eq!(recent.len(), 1);
    let (_, list) = open_list(&server, json!(9), "Cy Agent");
    assert_eq!(ids(&list), ["team"]);
}

#[test]
fn inbound_creates_customer_and_conversation_and_reuses_the_newest_open_one() {
    let server = Server::start(&[]);
    let john = json!({"external_id": "tg-7", "first_name": "John", "last_name": "Doe"});
    let first =
        inbound(&server, json!({"source": "telegram", "customer": john, "content": "Hi there", "members": [5]}));
    assert_eq!(first["created_conversation"], true);
    let created = first["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(first["message"]["type"], "customer");
    assert_eq!(first["message"]["is_answered"], false);
    assert_eq!(first["message"]["customer"]["first_name"], "John");
    assert_eq!(first["message"]["customer"]["source"], "telegram");

    let (status, body) = server.api("GET", &format!("/api/conversations/support/{created}"), None);
    assert_eq!(status, 200, "{body}");
    let conversation = &body["conversation"];
    assert_eq!(conversation["id"], created.as_str());
    assert_eq!(conversation["kind"], "support");
    assert_eq!(conversation["title"], "telegram - John Doe");
    assert_eq!(conversation["members"], json!([5]));
    assert_eq!(conversation["customer"]["source"], "telegram");
    assert_eq!(conversation["customer"]["external_id"], "tg-7");
    assert_eq!(conversation["customer"]["first_name"], "John");
    assert_eq!(conversation["customer"]["last_name"], "Doe");

    // No conversation_id: the customer's conversation is reused.
    let second = inbound(&server, json!({"source": "telegram", "customer": john, "content": "Anyone?"}));
    assert_eq!(second["created_conversation"], false);
    assert_eq!(second["conversation_id"], created.as_str());
    assert_eq!(second["message"]["customer"]["id"], first["message"]["customer"]["id"], "the same customer");

    // A newer but closed conversation of the customer is passed over...
    let closed = json!({"kind": "support", "id": "closed-1", "title": "old", "status": "closed", "priority": 1,
                        "members": [5], "customer": {"source": "telegram", "external_id": "tg-7",
                        "first_name": "John", "last_name": "Doe"}});
    assert_eq!(server.api("POST", "/api/conversations", Some(&closed)).0, 201);
    let third = inbound(&server, json!({"source": "telegram", "customer": john, "content": "Hello?"}));
    assert_eq!(third["conversation_id"], created.as_str());
    // ...and a newer open one is taken.
    let mut open = closed.clone();
    open["id"] = json!("open-2");
    open["status"] = json!("active");
    assert_eq!(server.api("POST", "/api/conversations", Some(&open)).0, 201);
    let fourth = inbound(&server, json!({"source": "telegram", "customer": john, "content": "Still here"}));
    assert_eq!(fourth["conversation_id"], "open-2");
    assert_eq!(fourth["created_conversation"], false);

    // Another customer gets their own conversation.
    let other = inbound(
        &server,
        json!({"source": "telegram", "customer": {"external_id": "tg-8", "first_name": "Jane", "last_name": "Roe"},
               "content": "Hi", "members": [5]}),
    );
    assert_eq!(other["created_conversation"], true);
    assert_ne!(other["conversation_id"], created.as_str());
    assert_ne!(other["message"]["customer"]["id"], first["message"]["customer"]["id"]);

    let (_, list) = open_list(&server, json!(5), "Ann Agent");
    assert_eq!(unread(&list, &created), 3);
    assert_eq!(unread(&list, "open-2"), 1);
    let (_, recent) = open_chat(&server, &format!("/ws/conversations/{created}/"), json!(5), "Ann Agent");
    let contents: Vec<&str> = recent.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["Hi there", "Anyone?", "Hello?"]);
}

#[test]
fn api_refusals_answer_401_404_409_422_and_create_nothing() {
    let server = Server::start(&[]);
    let good = json!({"kind": "support", "id": "k1", "title": "first", "status": "active", "priority": 1,
                      "members": [5, "uuid-user"]});
    let missing = |kind: &str, id: &str| {
        let (status, body) = server.api("GET", &format!("/api/conversations/{kind}/{id}"), None);
        assert_eq!(status, 404, "{kind}/{id} must not exist: {body}");
        assert!(body["error"].is_string(), "{body}");
    };

    // Without the key, or with a wrong one: 401, and nothing is created.
    for key in [None, Some("wrong-key")] {
        let (status, _) = server.api_with_key("POST", "/api/conversations", Some(&good), key);
        assert_eq!(status, 401);
        let (status, _) = server.api_with_key("GET", "/api/conversations/support/k1", None, key);
        assert_eq!(status, 401);
    }
    missing("support", "k1");

    let (status, body) = server.api("POST", "/api/conversations", Some(&good));
    assert_eq!(status, 201, "{body}");
    let created = &body["conversation"];
    assert_shape(
        created,
        &json!({"id": "k1", "kind": "support", "title": "first", "status": "active", "priority": 1,
                "members": [], "customer": null, "created_at": "", "updated_at": ""}),
    );
    assert_eq!(created["id"], "k1");
    assert_eq!(created["members"], json!([5, "uuid-user"]));
    assert_timestamp(&created["created_at"]);
    let (status, fetched) = server.api("GET", "/api/conversations/support/k1", None);
    assert_eq!(status, 200);
    assert_eq!(&fetched["conversation"], created);

    // The same kind and id again: 409, and the first is unchanged.
    let mut again = good.clone();
    again["title"] = json!("second");
    let (status, body) = server.api("POST", "/api/conversations", Some(&again));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(server.api("GET", "/api/conversations/support/k1", None).1["conversation"]["title"], "first");
    // The same id under another kind is another conversation.
    let mut consultation = good.clone();
    consultation["kind"] = json!("consultation");
    assert_eq!(server.api("POST", "/api/conversations", Some(&consultation)).0, 201);

    // Missing or wrong-typed fields: 422, nothing created.
    let too_long = "x".repeat(101);
    let bad_bodies = [
        json!({"kind": "support", "id": "k2", "title": "t", "members": 5}),
        json!({"kind": "support", "id": "k2", "title": "t", "members": "5"}),
        json!({"kind": "meeting", "id": "k2", "title": "t", "members": [5]}),
        json!({"id": "k2", "title": "t", "members": [5]}),
        json!({"kind": 7, "id": "k2", "title": "t", "members": [5]}),
        json!({"kind": "support", "id": "k2", "title": "t", "priority": "high", "members": [5]}),
        json!({"kind": "support", "id": "bad id!", "title": "t", "members": [5]}),
        json!({"kind": "support", "id": too_long, "title": "t", "members": [5]}),
    ];
    for body in &bad_bodies {
        let (status, answer) = server.api("POST", "/api/conversations", Some(body));
        assert_eq!(status, 422, "{body} -> {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    missing("support", "k2");
    missing("consultation", "k2");
    missing("support", "bad%20id!");
    let (_, list) = open_list(&server, json!(5), "Ann Agent");
    assert_eq!(ids(&list), ["k1"], "only the good request created a conversation");

    // An id is generated when absent.
    let (status, body) = server.api("POST", "/api/conversations", Some(&json!({"kind": "support", "members": [5]})));
    assert_eq!(status, 201, "{body}");
    let generated = body["conversation"]["id"].as_str().unwrap();
    assert!(
        !generated.is_empty()
            && generated.len() <= 100
            && generated.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
        "{generated}"
    );
    assert_eq!(server.api("GET", &format!("/api/conversations/support/{generated}"), None).0, 200);
    missing("support", "nowhere");

    // Inbound refusals: nothing stored, nobody told.
    let (mut list_socket, _) = open_list(&server, json!(5), "Ann Agent");
    let (mut chat, recent) = open_chat(&server, "/ws/conversations/k1/", json!(5), "Ann Agent");
    assert!(recent.is_empty());
    let customer = json!({"external_id": "tg-1", "first_name": "John", "last_name": "Doe"});
    let inbound_ok =
        json!({"source": "telegram", "customer": customer, "content": "Hi there", "conversation_id": "k1"});
    let (status, _) = server.api_with_key("POST", "/api/inbound", Some(&inbound_ok), None);
    assert_eq!(status, 401);
    let mut refused = Vec::new();
    for field in ["content", "source", "customer"] {
        let mut body = inbound_ok.clone();
        body.as_object_mut().unwrap().remove(field);
        refused.push((422, body));
    }
    let mut body = inbound_ok.clone();
    body["customer"].as_object_mut().unwrap().remove("external_id");
    refused.push((422, body));
    let mut body = inbound_ok.clone();
    body.as_object_mut().unwrap().remove("conversation_id");
    body.as_object_mut().unwrap().remove("content");
    body["members"] = json!([5]);
    refused.push((422, body));
    let mut body = inbound_ok.clone();
    body["conversation_id"] = json!("nowhere");
    body["members"] = json!([5]);
    refused.push((404, body));
    for (expected, body) in &refused {
        let (status, answer) = server.api("POST", "/api/inbound", Some(body));
        assert_eq!(status, *expected, "{body} -> {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    chat.expect_silence(QUIET);
    list_socket.expect_silence(QUIET);
    missing("support", "nowhere");
    let list = get_list(&mut list_socket);
    assert_eq!(list.len(), 2, "no conversation was created: {list:?}");
    assert!(list.iter().all(|c| c["last_message"].is_null() && c["unread_count"] == 0), "{list:?}");
    let (_, recent) = open_chat(&server, "/ws/conversations/k1/", json!(5), "Ann Agent");
    assert!(recent.is_empty(), "nothing was stored: {recent:?}");
}

#[test]
fn an_inbound_message_cannot_land_in_another_customers_conversation() {
    let server = Server::start(&[]);
    let (status, _) = server.api(
        "POST",
        "/api/conversations",
        Some(&json!({"kind": "support", "id": "conv-john", "members": [5],
                     "customer": {"source": "telegram", "external_id": "tg-john", "first_name": "John"}})),
    );
    assert_eq!(status, 201);
    let (status, body) = server.api(
        "POST",
        "/api/inbound",
        Some(&json!({"source": "telegram", "customer": {"external_id": "tg-mallory"}, "content": "hi", "conversation_id": "conv-john"})),
    );
    assert_eq!(status, 422, "{body}");
    let mut chat = server.connect_as("/ws/conversations/conv-john/", json!(5), "agent");
    let recent = chat.recv();
    assert_eq!(recent["messages"], json!([]), "nothing was stored: {recent}");
    // Not even the new customer: a failed request's writes are undone.
    assert_eq!(server.query("SELECT count(*) FROM customers WHERE external_id = 'tg-mallory'"), ["0"]);
}
