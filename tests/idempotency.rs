//! `Idempotency-Key` on the server API's writes (README, "Server API"): a retry with the
//! same key gets the first reply and creates nothing; the same key with another request
//! is refused (422); a failure is not kept, so its retry runs again; a key is kept a day.
//! On both engines, real binary, real sockets.

mod util;

use serde_json::{Value, json};
use util::*;

/// A server API call with an `Idempotency-Key`.
fn call(server: &Server, method: &str, path: &str, body: &Value, key: &str) -> (u16, Value) {
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {API_KEY}\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = raw_http(server.api, request.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn count(server: &Server, table: &str) -> i64 {
    server.query(&format!("SELECT count(*) FROM {table}"))[0].parse().unwrap()
}

#[test]
fn a_retry_with_the_same_key_gets_the_same_reply_and_creates_nothing() {
    let server = Server::start(&[]);
    let mut notes = server.connect_as("/ws/notifications/", json!(7), "Priya");
    notes.recv();
    notes.recv();
    let body = json!({"user_id": 7, "title": "Invoice paid", "message": "€12"});
    let first = call(&server, "POST", "/api/notifications", &body, "6f1c0d2e-retry-1");
    assert_eq!(first.0, 201, "{}", first.1);
    let again = call(&server, "POST", "/api/notifications", &body, "6f1c0d2e-retry-1");
    assert_eq!(again, first, "the same reply, byte for byte");
    assert_eq!(count(&server, "notifications"), 1);
    // The user heard of it once.
    let heard = notes.recv_type("notification");
    assert!(heard.to_string().contains("Invoice paid"), "{heard}");
    assert_eq!(notes.recv(), json!({"type": "unread_count", "count": 1}));
    notes.expect_silence(std::time::Duration::from_millis(300));

    // Without a key, a retry is a new request.
    assert_eq!(server.api("POST", "/api/notifications", Some(&body)).0, 201);
    assert_eq!(count(&server, "notifications"), 2);

    // Every write route keeps its reply: a room message, a member-only conversation and
    // its members, a fraud alert.
    let message = json!({"message": "deploy done"});
    let posted = call(&server, "POST", "/api/rooms/ops/messages", &message, "room-1");
    assert_eq!(posted.0, 201, "{}", posted.1);
    assert_eq!(call(&server, "POST", "/api/rooms/ops/messages", &message, "room-1"), posted);
    assert_eq!(count(&server, "messages"), 1);
    let conversation = json!({"kind": "consultation", "id": "c-1", "title": "t", "members": [5, 7]});
    let created = call(&server, "POST", "/api/conversations", &conversation, "conv-1");
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(call(&server, "POST", "/api/conversations", &conversation, "conv-1"), created);
    let members = json!({"members": [5]});
    let set = call(&server, "PUT", "/api/conversations/consultation/c-1/members", &members, "members-1");
    assert_eq!(set.0, 200, "{}", set.1);
    assert_eq!(call(&server, "PUT", "/api/conversations/consultation/c-1/members", &members, "members-1"), set);
    let alert = json!({"user_id": 7, "message": "card used abroad", "severity": "high"});
    let raised = call(&server, "POST", "/api/fraud-alerts", &alert, "alert-1");
    assert_eq!(raised.0, 201, "{}", raised.1);
    assert_eq!(call(&server, "POST", "/api/fraud-alerts", &alert, "alert-1"), raised);
    assert_eq!(count(&server, "fraud_alerts"), 1);
    assert_eq!(count(&server, "idempotency_keys"), 5);
}

#[test]
fn the_same_key_with_another_request_is_refused_and_a_bad_key_is_named() {
    let server = Server::start(&[]);
    let body = json!({"user_id": 7, "title": "a", "message": "m"});
    assert_eq!(call(&server, "POST", "/api/notifications", &body, "k-1").0, 201);
    let other = json!({"user_id": 7, "title": "b", "message": "m"});
    let (status, reply) = call(&server, "POST", "/api/notifications", &other, "k-1");
    assert_eq!(status, 422, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("Idempotency-Key was used with another request"), "{reply}");
    // The same body on another route is another request too.
    let (status, _) = call(&server, "POST", "/api/rooms/x/messages", &json!({"message": "m"}), "k-1");
    assert_eq!(status, 422);
    assert_eq!(count(&server, "notifications"), 1);
    assert_eq!(count(&server, "messages"), 0);

    for bad in ["", &"k".repeat(256), "two words"] {
        let (status, reply) = call(&server, "POST", "/api/notifications", &body, bad);
        assert_eq!(status, 400, "{bad:?}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains("Idempotency-Key"), "{reply}");
    }
    assert_eq!(count(&server, "notifications"), 1);
}

#[test]
fn a_failure_is_not_kept_and_a_key_older_than_a_day_is_a_new_request() {
    let server = Server::start(&[]);
    // No such conversation: 404, and nothing kept, so the retry runs again.
    let members = json!({"members": [5]});
    let path = "/api/conversations/consultation/later/members";
    assert_eq!(call(&server, "PUT", path, &members, "m-1").0, 404);
    assert_eq!(count(&server, "idempotency_keys"), 0);
    let conversation = json!({"kind": "consultation", "id": "later", "title": "t", "members": [5, 7]});
    assert_eq!(server.api("POST", "/api/conversations", Some(&conversation)).0, 201);
    let (status, reply) = call(&server, "PUT", path, &members, "m-1");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["conversation"]["members"], json!([5]));

    // A day later the key is free again.
    let body = json!({"user_id": 7, "title": "a", "message": "m"});
    assert_eq!(call(&server, "POST", "/api/notifications", &body, "d-1").0, 201);
    server.query("UPDATE idempotency_keys SET created_at = created_at - 86400000001 WHERE key = 'd-1'");
    assert_eq!(call(&server, "POST", "/api/notifications", &body, "d-1").0, 201);
    assert_eq!(count(&server, "notifications"), 2);
    assert_eq!(call(&server, "POST", "/api/notifications", &body, "d-1").0, 201);
    assert_eq!(count(&server, "notifications"), 2, "kept again from the second");
}
