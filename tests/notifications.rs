//! Documents 000, 001 and 003: banking messages, fraud alerts and notifications, fed by
//! the server API; the cross-endpoint unread count; offline creation; `/metrics`.

mod util;

use std::time::Duration;

use serde_json::json;
use util::*;

/// The document's example frames, verbatim.
const MESSAGE_UPDATE: &str = r#"{
    "type": "message_update",
    "message": {
      "id": 123,
      "user": 1,
      "subject": "Account Update",
      "body": "Your account balance has changed",
      "is_read": false,
      "read_at": null,
      "thread_id": "abc123",
      "parent_message": null,
      "replies": [],
      "created_at": "2023-12-01T10:00:00Z"
    }
  }"#;
const FRAUD_ALERT_UPDATE: &str = r#"{
    "type": "fraud_alert_update",
    "alert": {
      "id": 456,
      "user": 1,
      "message": "Suspicious transaction detected",
      "severity": "high",
      "is_resolved": false,
      "resolved_at": null,
      "created_at": "2023-12-01T10:00:00Z"
    }
  }"#;
const NOTIFICATION_UPDATE: &str = r#"{
    "type": "notification_update",
    "notification": {
      "id": 789,
      "type": "system",
      "title": "System Maintenance",
      "message": "Scheduled maintenance tonight",
      "created_at": "2023-12-01T10:00:00Z"
    }
  }"#;
const APP_NOTIFICATION: &str = r#"{
  "type": "notification",
  "data": {
    "id": "uuid",
    "title": "Daily Reading Ready",
    "message": "Your daily reading is available",
    "notification_type": "daily_reading",
    "is_read": false,
    "created_at": "2024-01-15T10:00:00Z"
  }
}"#;
const UNREAD_COUNT: &str = r#"{
  "type": "unread_count",
  "count": 5
}"#;
const V1_NOTIFICATION: &str = r#"{
  "type": "notification",
  "id": 501,
  "title": "Leave Approved",
  "message": "Your leave request for Jan 10th has been approved.",
  "category": "hr",
  "link": "/hr/leave-applications/12",
  "timestamp": "2026-01-06T14:00:00Z",
  "is_read": false
}"#;
const APP_CONNECTED: &str = r#"{
  "type": "connection_established",
  "message": "Connected to notifications"
}"#;

#[test]
fn banking_messages_threads_and_mark_read() {
    let server = Server::start(&[]);
    let mut ws = server.connect_as("/ws/messages/1/", json!(1), "ann");
    let (status, created) = server.api(
        "POST",
        "/api/messages",
        Some(&json!({"user_id": 1, "subject": "Account Update", "body": "Your account balance has changed", "thread_id": "abc123"})),
    );
    assert_eq!(status, 201, "{created}");
    let update = ws.recv();
    assert_shape(&update, &doc(MESSAGE_UPDATE));
    let parent_id = update["message"]["id"].as_i64().unwrap();
    assert_eq!(update["message"]["user"], 1);
    assert_eq!(update["message"]["thread_id"], "abc123");
    assert_eq!(created["message"], update["message"]);

    // A reply: its own update, then the parent with the reply serialized inside.
    let (status, _) = server.api(
        "POST",
        "/api/messages",
        Some(&json!({"user_id": 1, "subject": "Re: Account Update", "body": "Thanks", "parent_message": parent_id})),
    );
    assert_eq!(status, 201);
    let reply = ws.recv();
    assert_shape(&reply, &doc(MESSAGE_UPDATE));
    assert_eq!(reply["message"]["parent_message"], parent_id);
    assert_eq!(reply["message"]["thread_id"], "abc123", "a reply joins its parent's thread");
    let parent = ws.recv();
    assert_eq!(parent["message"]["id"], parent_id);
    assert_eq!(parent["message"]["replies"].as_array().unwrap().len(), 1);
    assert_shape(&parent["message"]["replies"][0], &doc(MESSAGE_UPDATE)["message"]);

    // The document's mark_read, with this message's id.
    ws.send_text(&format!("{{\n    \"type\": \"mark_read\",\n    \"message_id\": {parent_id}\n  }}"));
    let read = ws.recv();
    assert_eq!(read["message"]["is_read"], true);
    let read_at = read["message"]["read_at"].as_str().unwrap().to_string();
    // Read once: a second mark_read changes nothing.
    std::thread::sleep(Duration::from_millis(5));
    ws.send_json(json!({"type": "mark_read", "message_id": parent_id}));
    assert_eq!(ws.recv()["message"]["read_at"], read_at.as_str());

    // Another user's message, or no message: an error frame, nothing changes.
    let (_, theirs) = server.api("POST", "/api/messages", Some(&json!({"user_id": 2, "subject": "s", "body": "b"})));
    let their_id = theirs["message"]["id"].as_i64().unwrap();
    for id in [json!(their_id), json!(999_999), json!("abc")] {
        ws.send_json(json!({"type": "mark_read", "message_id": id}));
        let error = ws.recv();
        assert_eq!(error["type"], "error", "{error}");
        assert!(error["message"].is_string());
    }
    let mut bob = server.connect_as("/ws/messages/2/", json!(2), "bob");
    assert_eq!(bob.recv()["message"]["is_read"], false, "bob's unread message is replayed, still unread");

    // A reply's parent must be the same user's.
    let (status, body) = server.api(
        "POST",
        "/api/messages",
        Some(&json!({"user_id": 2, "subject": "x", "body": "y", "parent_message": parent_id})),
    );
    assert_eq!(status, 422, "{body}");
    bob.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_foreign_user_id_in_the_path_closes_with_4003() {
    let server = Server::start(&[]);
    let token = server.token(json!(1), "ann");
    for path in ["/ws/messages/2/", "/ws/fraud-alerts/2/", "/ws/notifications/2/"] {
        assert_eq!(close_code_of(&server, &format!("{path}?token={token}"), &[]), Some(4003), "{path}");
    }
    assert_eq!(close_code_of(&server, "/ws/messages/1/?token=bad", &[]), Some(4001));
    assert_eq!(close_code_of(&server, "/ws/v1/notifications/?token=bad", &[]), Some(4003));
    assert_eq!(close_code_of(&server, "/ws/notifications/?token=bad", &[]), Some(4001));
}

#[test]
fn fraud_alerts_on_creation_and_resolution() {
    let server = Server::start(&[]);
    let mut ws = server.connect_as("/ws/fraud-alerts/1/", json!(1), "ann");
    let (status, created) = server.api(
        "POST",
        "/api/fraud-alerts",
        Some(&json!({"user_id": 1, "message": "Suspicious transaction detected", "severity": "high"})),
    );
    assert_eq!(status, 201, "{created}");
    let alert = ws.recv();
    assert_shape(&alert, &doc(FRAUD_ALERT_UPDATE));
    assert_eq!(alert["alert"]["severity"], "high");
    let id = alert["alert"]["id"].as_i64().unwrap();
    let (status, resolved) = server.api("POST", &format!("/api/fraud-alerts/{id}/resolve"), None);
    assert_eq!(status, 200, "{resolved}");
    let update = ws.recv();
    assert_shape(&update, &doc(FRAUD_ALERT_UPDATE));
    assert_eq!(update["alert"]["is_resolved"], true);
    assert!(update["alert"]["resolved_at"].is_string());
    // Resolving again changes and pushes nothing.
    let (status, _) = server.api("POST", &format!("/api/fraud-alerts/{id}/resolve"), None);
    assert_eq!(status, 200);
    ws.expect_silence(Duration::from_millis(200));
    for bad in [
        json!({"user_id": 1, "message": "x", "severity": "apocalyptic"}),
        json!({"user_id": 1, "message": "x"}),
        json!({"user_id": 1, "severity": "low"}),
        json!({"user_id": [1], "message": "x", "severity": "low"}),
        json!({"message": "x", "severity": "low"}),
    ] {
        let (status, body) = server.api("POST", "/api/fraud-alerts", Some(&bad));
        assert_eq!(status, 422, "{bad} -> {body}");
        assert!(body["error"].is_string());
    }
    assert_eq!(server.api("POST", "/api/fraud-alerts/999999/resolve", None).0, 404);
    ws.expect_silence(Duration::from_millis(200));
    // Unresolved alerts are replayed on connect; resolved ones are not.
    server.api("POST", "/api/fraud-alerts", Some(&json!({"user_id": 1, "message": "second", "severity": "low"})));
    ws.recv();
    let mut again = server.connect_as("/ws/fraud-alerts/1/", json!(1), "ann");
    assert_eq!(again.recv()["alert"]["message"], "second");
    again.expect_silence(Duration::from_millis(200));
}

#[test]
fn one_notification_reaches_all_three_endpoints_and_reads_move_every_count() {
    let server = Server::start(&[]);
    let mut banking = server.connect_as("/ws/notifications/7/", json!(7), "ann");
    let mut app = server.connect_as("/ws/notifications/", json!(7), "ann");
    assert_shape(&app.recv(), &doc(APP_CONNECTED));
    let count = app.recv();
    assert_shape(&count, &doc(UNREAD_COUNT));
    assert_eq!(count["count"], 0);
    let mut erp = server.connect_as("/ws/v1/notifications/", json!(7), "ann");
    assert_eq!(erp.recv()["count"], 0);

    let (status, body) = server.api(
        "POST",
        "/api/notifications",
        Some(&json!({"user_id": 7, "title": "Leave Approved", "message": "Your leave request for Jan 10th has been approved.", "category": "hr", "link": "/hr/leave-applications/12"})),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["notification"]["id"].as_i64().unwrap();

    let n = banking.recv();
    assert_shape(&n, &doc(NOTIFICATION_UPDATE));
    assert_eq!(n["notification"]["type"], "hr");
    assert_eq!(n["notification"]["id"], id);
    let n = app.recv();
    assert_shape(&n, &doc(APP_NOTIFICATION));
    assert_eq!(n["data"]["notification_type"], "hr");
    assert_eq!(n["data"]["id"], id.to_string());
    assert_eq!(app.recv(), json!({"type": "unread_count", "count": 1}));
    let n = erp.recv();
    assert_shape(&n, &doc(V1_NOTIFICATION));
    assert_eq!((n["id"].as_i64(), n["link"].as_str()), (Some(id), Some("/hr/leave-applications/12")));
    assert_eq!(erp.recv(), json!({"type": "unread_count", "count": 1}));

    // The document's mark_read on 001 (with this id as the string the 001 frame gave).
    app.send_text(&format!("{{\n  \"type\": \"mark_read\",\n  \"notification_id\": \"{id}\"\n}}"));
    assert_eq!(app.recv(), json!({"type": "unread_count", "count": 0}));
    assert_eq!(erp.recv(), json!({"type": "unread_count", "count": 0}), "the other endpoint's count moves too");
    banking.expect_silence(Duration::from_millis(200));
    // Someone else's notification cannot be marked.
    let (_, other) =
        server.api("POST", "/api/notifications", Some(&json!({"user_id": 8, "title": "t", "message": "m"})));
    erp.send_json(json!({"type": "mark_read", "notification_id": other["notification"]["id"]}));
    assert_eq!(erp.recv()["type"], "error");
    let mut eight = server.connect_as("/ws/v1/notifications/", json!(8), "bob");
    assert_eq!(eight.recv()["is_read"], false);
    assert_eq!(eight.recv(), json!({"type": "unread_count", "count": 1}));
}

#[test]
fn what_arrives_while_offline_is_there_on_connect() {
    let server = Server::start(&[]);
    for i in 0..3 {
        let (status, _) = server.api(
            "POST",
            "/api/notifications",
            Some(&json!({"user_id": "u-9", "title": format!("t{i}"), "message": "m", "type": "system"})),
        );
        assert_eq!(status, 201);
    }
    let mut app = server.connect_as("/ws/notifications/", json!("u-9"), "zed");
    assert_eq!(app.recv()["type"], "connection_established");
    for i in 0..3 {
        let n = app.recv();
        assert_eq!(
            (n["type"].as_str(), n["data"]["title"].as_str()),
            (Some("notification"), Some(format!("t{i}").as_str()))
        );
    }
    assert_eq!(app.recv(), json!({"type": "unread_count", "count": 3}));
    let mut banking = server.connect_as("/ws/notifications/u-9/", json!("u-9"), "zed");
    assert_eq!(banking.recv()["notification"]["title"], "t0");

    // The same after a restart.
    drop((app, banking));
    let server = server.restart();
    let mut erp = server.connect_as("/ws/v1/notifications/", json!("u-9"), "zed");
    assert_eq!(erp.recv()["title"], "t0");
    assert_eq!(erp.recv()["title"], "t1");
    assert_eq!(erp.recv()["title"], "t2");
    assert_eq!(erp.recv()["count"], 3);
}

#[test]
fn bad_api_input_gets_the_right_status_and_stores_nothing() {
    let server = Server::start(&[]);
    let cases = [
        (json!({"title": "t", "message": "m"}), 422),
        (json!({"user_id": 1, "message": "m"}), 422),
        (json!({"user_id": 1, "title": "t"}), 422),
        (json!({"user_id": 1, "title": 5, "message": "m"}), 422),
        (json!({"user_id": {"id": 1}, "title": "t", "message": "m"}), 422),
        (json!({"user_id": "", "title": "t", "message": "m"}), 422),
        (json!({"user_id": 1.5, "title": "t", "message": "m"}), 422),
        (json!({"user_id": 1, "title": "t", "message": "m", "link": 3}), 422),
        (json!([1, 2]), 400),
    ];
    for (body, expected) in &cases {
        let (status, answer) = server.api("POST", "/api/notifications", Some(body));
        assert_eq!(status, *expected, "{body} -> {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
    }
    let (status, _) = raw_http(
        server.api,
        format!("POST /api/notifications HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 9\r\n\r\n{{\"user_id").as_bytes(),
    );
    assert_eq!(status, 400, "truncated JSON");
    let huge = "x".repeat(300 * 1024);
    let (status, body) =
        server.api("POST", "/api/notifications", Some(&json!({"user_id": 1, "title": "t", "message": huge})));
    assert_eq!(status, 413, "{body}");
    let (status, _) = server.api_with_key(
        "POST",
        "/api/notifications",
        Some(&json!({"user_id": 1, "title": "t", "message": "m"})),
        Some("not-the-key"),
    );
    assert_eq!(status, 401);
    assert_eq!(server.api("DELETE", "/api/notifications", None).0, 405);
    assert_eq!(server.api("GET", "/api/nothing-here", None).0, 404);
    // Nothing was stored for user 1.
    let mut app = server.connect_as("/ws/notifications/", json!(1), "ann");
    app.recv_type("connection_established");
    assert_eq!(app.recv(), json!({"type": "unread_count", "count": 0}));
}

#[test]
fn disconnect_logs_a_user_out_everywhere() {
    let server = Server::start(&[]);
    let mut room = server.connect_as("/ws/rooms/r/", json!(5), "ann");
    room.recv_type("room_users_list");
    let mut erp = server.connect_as("/ws/v1/notifications/", json!(5), "ann");
    erp.recv_type("unread_count");
    let mut other = server.connect_as("/ws/rooms/r/", json!(6), "bob");
    other.recv_type("room_users_list");
    let (status, body) = server.api("POST", "/api/users/5/disconnect", None);
    assert_eq!((status, body["disconnected"].as_i64()), (200, Some(2)), "{body}");
    assert_eq!(room.expect_close(), Some(4001));
    assert_eq!(erp.expect_close(), Some(4003));
    assert_eq!(other.recv_type("user_leave")["user_id"], "5");
    // The logout is the first event of the user's stream; no document shows it, and the
    // next notification is the stream's second.
    let mut again = server.connect_as("/ws/v1/notifications/", json!(5), "ann");
    again.recv_type("unread_count");
    let (status, _) =
        server.api("POST", "/api/notifications", Some(&json!({"user_id": 5, "title": "t", "message": "m"})));
    assert_eq!(status, 201);
    assert_eq!(again.recv_type("notification")["seq"], 2);
    let mut resumed = server.connect_as("/ws/v1/notifications/?since=0", json!(5), "ann");
    assert_eq!(resumed.recv_type("notification")["seq"], 2, "resuming skips the logout");
}

fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let (status, body) = server.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = body.as_str().expect("text body").to_string();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let server = Server::start(&[]);
    let before = scrape(&server);
    assert_eq!(sample(&before, "switchboard_frames_in_total", None), 0.0);
    let mut a = server.connect_as("/ws/rooms/m/", json!(1), "ann");
    a.recv_type("room_users_list");
    let mut n = server.connect_as("/ws/notifications/", json!(1), "ann");
    n.recv_type("unread_count");
    for i in 0..3 {
        a.send_json(json!({"message": format!("m{i}")}));
        a.recv_type("chat_message");
    }
    assert_eq!(close_code_of(&server, "/ws/rooms/m/?token=expired.garbage.token", &[]), Some(4001));
    let after = scrape(&server);
    assert_eq!(sample(&after, "switchboard_frames_in_total", None), 3.0);
    assert!(sample(&after, "switchboard_frames_out_total", None) >= 5.0);
    assert!(sample(&after, "switchboard_bytes_in_total", None) > 0.0);
    assert_eq!(sample(&after, "switchboard_messages_stored_total", None), 3.0);
    assert!(sample(&after, "switchboard_commits_total", None) >= 3.0);
    assert_eq!(sample(&after, "switchboard_open_connections", Some(("endpoint", "rooms"))), 1.0);
    assert_eq!(sample(&after, "switchboard_open_connections", Some(("endpoint", "notifications"))), 1.0);
    assert_eq!(sample(&after, "switchboard_auth_failures_total", Some(("reason", "malformed"))), 1.0);
    assert_eq!(sample(&after, "switchboard_slow_consumer_disconnects_total", None), 0.0);
    assert_eq!(sample(&after, "switchboard_rate_limited_total", None), 0.0);
    let batches = after.samples.iter().find(|s| s.metric == "switchboard_commit_batch_size").expect("histogram");
    assert!(matches!(batches.value, prometheus_parse::Value::Histogram(_)));
    // /metrics needs the key; /healthz does not.
    assert_eq!(server.api_with_key("GET", "/metrics", None, None).0, 401);
    assert_eq!(server.api_with_key("GET", "/healthz", None, None).0, 200);
}
