//! `PUT /api/users/{id}`: the display name the backend sets for a user whose token
//! carries none (a default SimpleJWT access token has only `user_id`), as rooms show it.
//! Over real sockets against the real binary, on SQLite and on PostgreSQL.

mod util;

use serde_json::{Value, json};
use util::*;

/// A SimpleJWT-like access token with no name claim.
fn nameless_token(user: Value) -> String {
    token(json!({"user_id": user, "exp": in_secs(600), "token_type": "access"}))
}

fn connect_nameless(server: &Server, path: &str, user: Value) -> Client {
    server.connect(&format!("{path}?token={}", nameless_token(user)))
}

fn users_of(list: &Value) -> Vec<(String, String)> {
    assert_eq!(list["type"], "room_users_list", "{list}");
    let mut users: Vec<(String, String)> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["id"].as_str().unwrap().to_string(), u["username"].as_str().unwrap().to_string()))
        .collect();
    users.sort();
    users
}

fn pair(id: &str, name: &str) -> (String, String) {
    (id.to_string(), name.to_string())
}

#[test]
fn a_room_shows_the_name_the_backend_set_when_the_token_has_none() {
    let server = Server::start(&[]);
    let (status, body) = server.api("PUT", "/api/users/42", Some(&json!({"name": "Ada Lovelace"})));
    assert_eq!((status, &body), (200, &json!({"user": {"id": 42, "name": "Ada Lovelace"}})));

    // Ada's token has no name: the room lists her by the name set, her messages carry it.
    let mut ada = connect_nameless(&server, "/ws/rooms/lobby/", json!(42));
    assert_eq!(users_of(&ada.recv()), [pair("42", "Ada Lovelace")]);

    // Bob has neither: he is shown by his id, as before.
    let mut bob = connect_nameless(&server, "/ws/rooms/lobby/", json!(7));
    assert_eq!(users_of(&bob.recv()), [pair("42", "Ada Lovelace"), pair("7", "7")]);
    assert_eq!(ada.recv(), json!({"type": "user_join", "user_id": "7", "username": "7"}));

    ada.send_json(json!({"message": "hello"}));
    for client in [&mut ada, &mut bob] {
        let frame = client.recv();
        assert_eq!(frame["type"], "chat_message");
        assert_eq!(frame["sender_username"], "Ada Lovelace");
        assert_eq!(frame["sender_id"], "42");
    }
    let (_, online) = server.api("GET", "/api/online", None);
    let mut names: Vec<String> =
        online["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["7", "Ada Lovelace"]);

    // A name in the token still wins over the one set.
    let mut named = server.connect_as("/ws/rooms/other/", json!(42), "ada (token)");
    assert_eq!(users_of(&named.recv()), [pair("42", "ada (token)")]);
    named.close();

    // The name is the backend's until it changes it: a reconnect (which records the
    // token's name) keeps it, and a new one shows from the next connection on.
    ada.close();
    bob.recv_type("user_leave");
    let mut ada = connect_nameless(&server, "/ws/rooms/lobby/", json!(42));
    assert_eq!(users_of(&ada.recv()), [pair("42", "Ada Lovelace"), pair("7", "7")]);
    ada.close();
    bob.recv_type("user_leave");
    let (status, _) = server.api("PUT", "/api/users/42", Some(&json!({"name": "Countess of Lovelace"})));
    assert_eq!(status, 200);
    let ada = connect_nameless(&server, "/ws/rooms/lobby/", json!(42));
    assert_eq!(bob.recv(), json!({"type": "user_join", "user_id": "42", "username": "Countess of Lovelace"}));
    ada.close();
    bob.close();

    // Stored: a restart keeps it, for a user who never connected too.
    let (status, body) = server.api("PUT", "/api/users/u-9", Some(&json!({"name": "Grace"})));
    assert_eq!((status, &body), (200, &json!({"user": {"id": "u-9", "name": "Grace"}})));
    let server = server.restart();
    let mut grace = connect_nameless(&server, "/ws/chat/fresh/", json!("u-9"));
    assert_eq!(users_of(&grace.recv()), [pair("u-9", "Grace")]);
    let mut ada = connect_nameless(&server, "/ws/chat/fresh/", json!(42));
    assert_eq!(users_of(&ada.recv()), [pair("42", "Countess of Lovelace"), pair("u-9", "Grace")]);
    assert_eq!(grace.recv(), json!({"type": "user_join", "user_id": "42", "username": "Countess of Lovelace"}));
}

#[test]
fn bad_display_name_requests_get_a_clear_error() {
    let server = Server::start(&[]);
    let error = |method: &str, path: &str, body: Option<&Value>| {
        let (status, body) = server.api(method, path, body);
        (status, body["error"].as_str().unwrap_or_else(|| panic!("no error message: {body}")).to_string())
    };
    assert_eq!(error("PUT", "/api/users/1", Some(&json!({}))), (422, "\"name\" is required".into()));
    assert_eq!(error("PUT", "/api/users/1", Some(&json!({"name": " "}))), (422, "\"name\" must not be empty".into()));
    assert_eq!(error("PUT", "/api/users/1", Some(&json!({"name": 5}))), (422, "\"name\" must be a string".into()));
    let long = "é".repeat(101);
    assert_eq!(
        error("PUT", "/api/users/1", Some(&json!({"name": long}))),
        (422, "\"name\" is longer than 200 bytes".into())
    );
    let long_id = format!("/api/users/{}", "x".repeat(201));
    assert_eq!(error("PUT", &long_id, Some(&json!({"name": "A"}))), (422, "the user id must be 1-200 bytes".into()));
    assert_eq!(error("PUT", "/api/users/1", Some(&json!(["A"]))).0, 400);
    assert_eq!(error("GET", "/api/users/1", None), (405, "method not allowed".into()));
    let (status, _) = server.api_with_key("PUT", "/api/users/1", Some(&json!({"name": "A"})), None);
    assert_eq!(status, 401);
    // Nothing was stored by any of them.
    let mut one = connect_nameless(&server, "/ws/rooms/r/", json!(1));
    assert_eq!(users_of(&one.recv()), [pair("1", "1")]);
}
