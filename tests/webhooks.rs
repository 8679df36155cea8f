//! Webhooks (docs/webhooks.md) end to end: the real binary posts to a real HTTP
//! receiver started here (`util/receiver.rs`), which checks the signature of every
//! request. Every event type with its fields; a receiver down, failing, hanging; the
//! server killed mid-delivery; the Python (Django) check of the docs against a real
//! request; the unread timers; a burst of 20,000 events.

#[path = "util/receiver.rs"]
mod receiver;
mod util;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use receiver::{Mode, Receiver};
use serde_json::{Value, json};
use util::*;

const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";

fn start(receiver: &Receiver, extra: &[(&str, &str)]) -> Server {
    let url = receiver.url();
    let mut env = vec![
        ("SWITCHBOARD_WEBHOOK_URL", url.as_str()),
        ("SWITCHBOARD_WEBHOOK_SECRET", HOOK_SECRET),
        ("SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "1000"),
        ("SWITCHBOARD_WEBHOOK_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

/// Waits (up to `limit`) until `check` holds for the events received so far.
fn wait_for(receiver: &Receiver, limit: Duration, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let events = receiver.events();
        if check(&events) {
            return events;
        }
        if Instant::now() >= deadline {
            let types: Vec<String> = events
                .iter()
                .map(|e| format!("{} {}", e["type"].as_str().unwrap_or("?"), e["data"]["user_id"]))
                .collect();
            panic!(
                "timed out waiting for {what}; received {} events: {types:?}; the last: {:?}",
                events.len(),
                events.last()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn has(events: &[Value], kind: &str, check: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(|e| e["type"] == kind && check(&e["data"]))
}

/// Every event has its id, type, stream, seq (a number or null) and time stamp.
fn assert_envelope(event: &Value) {
    assert!(event["id"].as_i64().is_some_and(|id| id > 0), "{event}");
    assert!(event["type"].is_string() && event["stream"].is_string(), "{event}");
    assert!(event["seq"].is_i64() || event["seq"].is_null(), "{event}");
    assert!(event["created_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 27), "{event}");
    assert!(event["data"].is_object(), "{event}");
}

#[test]
fn every_type_arrives_signed_with_its_fields() {
    let receiver = Receiver::start(HOOK_SECRET);
    let server = start(&receiver, &[("SWITCHBOARD_WEBHOOK_UNREAD_AFTER_SECS", "1")]);

    // Presence: first socket, not per tab.
    let mut aarav = server.connect_as("/ws/v1/chat/", json!(5), "Aarav");
    let aarav_tab = server.connect_as("/ws/v1/chat/", json!(5), "Aarav");
    let mut priya = server.connect_as("/ws/v1/chat/", json!(7), "Priya");
    let mut priya_notes = server.connect_as("/ws/notifications/", json!(7), "Priya");
    priya_notes.recv();
    priya_notes.recv();
    // A direct message, read by Priya.
    aarav.send_json(json!({"type": "chat_message", "message": "Hello, Priya", "recipient_id": 7}));
    priya.recv_type("chat_message");
    priya.send_json(json!({"type": "mark_read", "sender_id": 5}));
    // A consultation: a message, a read receipt, members removed and added again.
    let body = json!({"kind": "consultation", "id": "c-9", "title": "t", "members": [5, 7]});
    assert_eq!(server.api("POST", "/api/conversations", Some(&body)).0, 201);
    let mut john = server.connect_as("/ws/consultations/c-9/", json!(5), "Aarav");
    john.recv();
    john.send_json(json!({"type": "chat_message", "message": "In the consultation"}));
    let message = john.recv_type("chat_message");
    let mut jane = server.connect_as("/ws/consultations/c-9/", json!(7), "Priya");
    jane.send_json(json!({"type": "read_receipt", "message_id": message["data"]["id"]}));
    // Stored before the members change (on PostgreSQL the two could commit in either order).
    john.recv_type("read_receipt");
    let members =
        |m: Value| server.api("PUT", "/api/conversations/consultation/c-9/members", Some(&json!({"members": m})));
    assert_eq!(members(json!([5])).0, 200);
    assert_eq!(members(json!([5, 7])).0, 200);
    // A room: joined, a message from the backend, left.
    let mut room = server.connect_as("/ws/rooms/lobby/", json!(5), "Aarav");
    // Opened (on PostgreSQL a session closed before its open completes never joined).
    room.recv_type("room_users_list");
    let posted = json!({"message": "Deploy finished", "sender_id": "ci", "sender_name": "CI bot"});
    assert_eq!(server.api("POST", "/api/rooms/lobby/messages", Some(&posted)).0, 201);
    room.close();
    // Notifications: one read in time, one not.
    let note = |title: &str| {
        let (status, body) =
            server.api("POST", "/api/notifications", Some(&json!({"user_id": 7, "title": title, "message": "m"})));
        assert_eq!(status, 201, "{body}");
        body["notification"]["id"].as_i64().unwrap()
    };
    let read_in_time = note("read in time");
    let left_unread = note("left unread");
    priya_notes.send_json(json!({"type": "mark_read", "notification_id": read_in_time.to_string()}));
    // Read again: reported once.
    priya_notes.send_json(json!({"type": "mark_read", "notification_id": read_in_time.to_string()}));
    // Everyone leaves: offline once per user, when their last socket closes.
    for client in [aarav, aarav_tab, priya, priya_notes, john, jane] {
        client.close();
    }

    wait_for(&receiver, Duration::from_secs(10), "every type", |events| {
        ["notification.unread", "notification.read", "message.read"].iter().all(|t| !of_type(events, t).is_empty())
            && of_type(events, "user.offline").len() >= 2
            && of_type(events, "member.left").len() >= 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    let events = receiver.events();
    assert_eq!(receiver.forged(), 0);
    for event in &events {
        assert_envelope(event);
    }
    let mut ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "no duplicates without a failure");

    let online = of_type(&events, "user.online");
    assert_eq!(online.len(), 2, "once per user, not per tab: {online:?}");
    assert_eq!(online[0]["data"], json!({"user_id": "5", "user_name": "Aarav"}));
    assert_eq!(online[0]["stream"], "u:5");
    let offline = of_type(&events, "user.offline");
    assert_eq!(offline.len(), 2, "{offline:?}");

    let direct =
        of_type(&events, "message.created").into_iter().find(|e| e["data"]["conversation"]["kind"] == "direct");
    let direct = direct.expect("a direct message.created");
    assert_eq!(direct["stream"], "u:7");
    assert!(direct["seq"].as_i64().is_some());
    let data = &direct["data"];
    assert_eq!((data["recipient_id"].as_str(), data["message"]["sender_id"].as_str()), (Some("7"), Some("5")));
    assert_eq!(data["message"]["content"], "Hello, Priya");
    assert!(data["message"]["id"].is_i64() && data["message"]["sender_name"] == "Aarav");
    assert!(has(&events, "message.read", |d| d["conversation"]["kind"] == "direct"
        && d["user_id"] == "7"
        && d["unread_count"] == 0));

    let consultation = of_type(&events, "message.created")
        .into_iter()
        .find(|e| e["data"]["conversation"] == json!({"kind": "consultation", "id": "c-9"}))
        .expect("a consultation message.created");
    assert!(consultation["stream"].as_str().unwrap().starts_with("c:"));
    assert!(has(&events, "message.read", |d| d["conversation"]["id"] == "c-9"
        && d["user_id"] == "7"
        && d["message_id"] == consultation["data"]["message"]["id"]
        && d["unread_count"] == 0));
    assert!(has(&events, "member.left", |d| d["conversation"]["id"] == "c-9" && d["user_id"] == "7"));
    assert!(has(&events, "member.joined", |d| d["conversation"]["id"] == "c-9" && d["user_id"] == "7"));

    assert!(has(&events, "member.joined", |d| d
        == &json!({"conversation": {"kind": "room", "id": "lobby"}, "user_id": "5", "user_name": "Aarav"})));
    assert!(has(&events, "member.left", |d| d["conversation"]["id"] == "lobby" && d["user_id"] == "5"));
    assert!(has(&events, "message.created", |d| d["conversation"]["id"] == "lobby"
        && d["message"]["sender_id"] == "ci"
        && d["message"]["content"] == "Deploy finished"));

    let read = of_type(&events, "notification.read");
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["data"], json!({"user_id": "7", "notification_id": read_in_time, "unread_count": 1}));
    let unread = of_type(&events, "notification.unread");
    assert_eq!(unread.len(), 1, "only the one left unread: {unread:?}");
    assert_eq!(unread[0]["data"]["notification"]["id"], left_unread);
    assert_eq!(unread[0]["data"]["user_id"], "7");

    // Unread messages: the consultation message, for nobody (Priya read it, Aarav
    // wrote it); the room message, never (rooms have no unread timer); the direct one
    // was read in time. What is unread after the timer: nothing of those.
    let unread_messages = of_type(&events, "message.unread");
    assert!(unread_messages.is_empty(), "everything was read in time: {unread_messages:?}");
}

#[test]
fn the_unread_timer_fires_once_for_an_unread_direct_message_and_not_for_one_read_in_time() {
    let receiver = Receiver::start(HOOK_SECRET);
    let server = start(
        &receiver,
        &[
            ("SWITCHBOARD_WEBHOOK_UNREAD_AFTER_SECS", "1"),
            ("SWITCHBOARD_WEBHOOK_EVENTS", "message.created,message.unread"),
        ],
    );
    let mut aarav = server.connect_as("/ws/v1/chat/", json!(5), "Aarav");
    let mut priya = server.connect_as("/ws/v1/chat/", json!(7), "Priya");
    aarav.send_json(json!({"type": "chat_message", "message": "read me now", "recipient_id": 7}));
    priya.recv_type("chat_message");
    priya.send_json(json!({"type": "mark_read", "sender_id": 5}));
    aarav.recv_type("messages_read");
    aarav.send_json(json!({"type": "chat_message", "message": "left unread", "recipient_id": 7}));
    priya.recv_type("chat_message");
    let events =
        wait_for(&receiver, Duration::from_secs(5), "message.unread", |e| !of_type(e, "message.unread").is_empty());
    // Three sweeps later, still once.
    std::thread::sleep(Duration::from_millis(1600));
    let events = if receiver.events().len() > events.len() { receiver.events() } else { events };
    let unread = of_type(&events, "message.unread");
    assert_eq!(unread.len(), 1, "{unread:?}");
    assert_eq!(unread[0]["data"]["message"]["content"], "left unread");
    assert_eq!(unread[0]["data"]["user_id"], "7");
    assert_eq!(unread[0]["stream"], "u:7");
    let created = of_type(&events, "message.created");
    assert_eq!(created.len(), 2);
    assert_eq!(unread[0]["seq"], created[1]["seq"], "the unread event names the message's place");
    assert!(of_type(&events, "user.online").is_empty(), "SWITCHBOARD_WEBHOOK_EVENTS filters");
}

/// Posts `n` messages into `room` through the server API.
fn post_room_messages(server: &Server, room: &str, n: usize) {
    for i in 0..n {
        let body = json!({"message": format!("m{i}")});
        assert_eq!(server.api("POST", &format!("/api/rooms/{room}/messages"), Some(&body)).0, 201);
    }
}

/// Each stream's seqs as received, first arrival of each event id only.
fn seqs_by_stream(events: &[Value]) -> BTreeMap<String, Vec<i64>> {
    let mut seen = std::collections::HashSet::new();
    let mut streams: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in events {
        if seen.insert(event["id"].as_i64().unwrap()) {
            streams
                .entry(event["stream"].as_str().unwrap().to_string())
                .or_default()
                .push(event["seq"].as_i64().unwrap());
        }
    }
    streams
}

fn assert_complete_in_order(events: &[Value], per_stream: usize, streams: usize) {
    let by_stream = seqs_by_stream(events);
    assert_eq!(by_stream.len(), streams, "{by_stream:?}");
    for (stream, seqs) in by_stream {
        assert_eq!(seqs, (1..=per_stream as i64).collect::<Vec<_>>(), "{stream}: every event, in order");
    }
}

#[test]
fn a_receiver_down_for_ten_seconds_gets_everything_in_order_once_up() {
    let receiver = Receiver::down(HOOK_SECRET);
    let server = start(&receiver, &[("SWITCHBOARD_WEBHOOK_EVENTS", "message.created")]);
    let started = Instant::now();
    post_room_messages(&server, "a", 30);
    post_room_messages(&server, "b", 30);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let metrics = server.api("GET", "/metrics", None).1.as_str().unwrap().to_string();
    assert_eq!(metric(&metrics, "switchboard_webhook_events_pending"), 60.0);
    assert!(metric(&metrics, "switchboard_webhook_retries_total") >= 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "switchboard_webhook_events_delivered_total"), 0.0);
    receiver.up();
    let events = wait_for(&receiver, Duration::from_secs(5), "60 events", |e| {
        seqs_by_stream(e).values().map(Vec::len).sum::<usize>() == 60
    });
    assert_complete_in_order(&events, 30, 2);
    eventually("the cursor stored and the outbox emptied", || {
        server.query("SELECT count(*) FROM webhook_events") == ["0"]
            && server.query("SELECT delivered FROM webhook_cursor")[0].parse::<i64>().unwrap() > 0
    });
    let metrics = server.api("GET", "/metrics", None).1.as_str().unwrap().to_string();
    assert_eq!(metric(&metrics, "switchboard_webhook_events_pending"), 0.0);
    assert_eq!(metric(&metrics, "switchboard_webhook_events_delivered_total"), 60.0);
    assert_eq!(metric(&metrics, "switchboard_webhook_delivery_seconds_count"), 60.0);
}

#[test]
fn a_receiver_answering_500_for_a_while_then_200_gets_everything() {
    let receiver = Receiver::start(HOOK_SECRET);
    receiver.set_mode(Mode::Fail);
    let server = start(&receiver, &[("SWITCHBOARD_WEBHOOK_EVENTS", "message.created")]);
    post_room_messages(&server, "a", 20);
    eventually("a few refusals", || receiver.refused() >= 3);
    post_room_messages(&server, "a", 20);
    receiver.set_mode(Mode::Ok);
    let events = wait_for(&receiver, Duration::from_secs(5), "40 events", |e| e.len() >= 40);
    assert_complete_in_order(&events, 40, 1);
    let metrics = server.api("GET", "/metrics", None).1.as_str().unwrap().to_string();
    assert!(metric(&metrics, "switchboard_webhook_retries_total") >= 3.0);
    assert!(server.log_text().contains("webhooks: delivery failed (HTTP 500)"), "{}", server.log_text());
}

#[test]
fn a_receiver_hanging_past_the_timeout_is_tried_again() {
    let receiver = Receiver::start(HOOK_SECRET);
    receiver.set_mode(Mode::Hang);
    let server = start(
        &receiver,
        &[("SWITCHBOARD_WEBHOOK_EVENTS", "message.created"), ("SWITCHBOARD_WEBHOOK_TIMEOUT_MS", "500")],
    );
    post_room_messages(&server, "a", 10);
    eventually("two hung requests", || receiver.refused() >= 2);
    // The loop is not held up by the hanging receiver: clients are served meanwhile.
    let started = Instant::now();
    post_room_messages(&server, "a", 10);
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    receiver.set_mode(Mode::Ok);
    let events = wait_for(&receiver, Duration::from_secs(5), "20 events", |e| e.len() >= 20);
    assert_complete_in_order(&events, 20, 1);
    assert!(server.log_text().contains("webhooks: delivery failed"), "{}", server.log_text());
}

#[test]
fn kill_9_mid_delivery_loses_nothing() {
    let receiver = Receiver::start(HOOK_SECRET);
    // A slow receiver, so that the kill comes while it has part of the events.
    receiver.set_mode(Mode::Slow(40));
    // On PostgreSQL the new process is another node: it delivers once the killed one's
    // lease on delivery runs out (2 s here).
    let server = start(
        &receiver,
        &[
            ("SWITCHBOARD_WEBHOOK_EVENTS", "message.created"),
            ("SWITCHBOARD_WEBHOOK_BATCH_MAX", "7"),
            ("SWITCHBOARD_NODE_LEASE_MS", "2000"),
        ],
    );
    let total = 400;
    let poster = {
        let (api, key) = (server.api, API_KEY);
        std::thread::spawn(move || {
            for i in 0..total {
                let body = json!({"message": format!("m{i}")}).to_string();
                let request = format!(
                    "POST /api/rooms/k/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                assert_eq!(raw_http(api, request.as_bytes()).0, 201);
            }
        })
    };
    poster.join().unwrap();
    // Killed while the receiver has part of it.
    wait_for(&receiver, Duration::from_secs(10), "some events", |e| e.len() >= 50);
    let mut server = server;
    let before = receiver.events().len();
    server.kill();
    assert!(before < total, "killed mid-delivery ({before} of {total} delivered)");
    let server = server.restart();
    let events = wait_for(&receiver, Duration::from_secs(10), "everything", |e| {
        seqs_by_stream(e).values().map(Vec::len).sum::<usize>() == total
    });
    assert_complete_in_order(&events, total, 1);
    // Duplicates are allowed, with the same id for the same event.
    let mut by_id: HashMap<i64, &Value> = HashMap::new();
    for event in &events {
        if let Some(first) = by_id.insert(event["id"].as_i64().unwrap(), event) {
            assert_eq!(
                (first["stream"].clone(), first["seq"].clone()),
                (event["stream"].clone(), event["seq"].clone())
            );
        }
    }
    eprintln!("kill -9: {} events received for {total} (duplicates: {})", events.len(), events.len() - total);
    drop(server);
}

/// The Python of docs/webhooks.md (a Django view), run against a real request with
/// Django's few names stubbed: it accepts the request, and refuses it with the body
/// changed, signed with another secret, or replayed an hour later.
#[test]
fn the_documented_python_check_accepts_a_real_request_and_refuses_forgeries() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md")).unwrap();
    let snippet = docs.split("```python\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a python block");
    let receiver = Receiver::start(HOOK_SECRET);
    let server = start(&receiver, &[]);
    server.connect_as("/ws/presence/", json!(5), "Aarav").close();
    wait_for(&receiver, Duration::from_secs(5), "a request", |e| !e.is_empty());
    let delivered = receiver.state.lock().unwrap().requests[0].clone();
    // A forged request: the receiver refuses it too.
    let forged = switchboard::webhook::sign::header("not-the-secret-0123456789", unix_now(), &delivered.body);
    let request = format!(
        "POST /hooks/switchboard/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nSwitchboard-Signature: {forged}\r\nContent-Length: {}\r\n\r\n",
        delivered.body.len()
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&delivered.body);
    assert_eq!(raw_http(receiver.addr, &bytes).0, 400);
    assert_eq!(receiver.forged(), 1);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snippet.py"), snippet).unwrap();
    std::fs::write(dir.path().join("body.json"), &delivered.body).unwrap();
    std::fs::write(dir.path().join("check.py"), PYTHON_HARNESS).unwrap();
    let output = std::process::Command::new("python3")
        .arg(dir.path().join("check.py"))
        .arg(dir.path())
        .arg(&delivered.signature)
        .arg(&forged)
        .env("SWITCHBOARD_WEBHOOK_SECRET", HOOK_SECRET)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: Value = serde_json::from_str(stdout.trim()).unwrap();
    // Every event of the genuine request is handled (user.online, and user.offline too
    // when both were stored before the first request left).
    let events = serde_json::from_slice::<Value>(&delivered.body).unwrap()["events"].as_array().unwrap().len();
    assert_eq!(
        results,
        json!({"genuine": 204, "handled": events, "body_changed": 400, "other_secret": 400, "replayed_later": 400})
    );
    drop(server);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Runs the docs' snippet with stand-ins for the three Django names it imports.
const PYTHON_HARNESS: &str = r#"
import json, sys, time, types

here, signature, forged = sys.argv[1], sys.argv[2], sys.argv[3]

class HttpResponse:
    def __init__(self, content=b"", status=200):
        self.status_code = status
class HttpResponseBadRequest(HttpResponse):
    def __init__(self, content=b""):
        super().__init__(content, 400)
django = types.ModuleType("django")
http = types.ModuleType("django.http")
http.HttpResponse, http.HttpResponseBadRequest = HttpResponse, HttpResponseBadRequest
views = types.ModuleType("django.views")
decorators = types.ModuleType("django.views.decorators")
csrf = types.ModuleType("django.views.decorators.csrf")
csrf.csrf_exempt = lambda view: view
sys.modules.update({"django": django, "django.http": http, "django.views": views,
                    "django.views.decorators": decorators, "django.views.decorators.csrf": csrf})

handled = []
scope = {"__name__": "snippet", "handle": handled.append}
exec(open(here + "/snippet.py").read(), scope)
scope["handle"] = handled.append
view = scope["switchboard_webhook"]
body = open(here + "/body.json", "rb").read()

class Request:
    def __init__(self, header, body):
        self.headers = {"Switchboard-Signature": header}
        self.body = body

results = {"genuine": view(Request(signature, body)).status_code}
results["handled"] = len(handled)
results["body_changed"] = view(Request(signature, body.replace(b'"user_id"', b'"user_iD"'))).status_code
results["other_secret"] = view(Request(forged, body)).status_code
real_time = time.time
time.time = lambda: real_time() + 3600
results["replayed_later"] = view(Request(signature, body)).status_code
print(json.dumps(results))
"#;

#[test]
fn a_burst_of_20000_events_is_delivered_in_batches() {
    const TOTAL: usize = 20_000;
    let receiver = Receiver::start(HOOK_SECRET);
    let server = start(
        &receiver,
        &[("SWITCHBOARD_WEBHOOK_EVENTS", "message.created"), ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000000")],
    );
    let mut client = server.connect_as("/ws/rooms/burst/", json!(5), "Aarav");
    client.recv_type("room_users_list");
    let started = Instant::now();
    // In chunks, reading the room's echoes between them: a client that never reads is
    // dropped as a slow consumer.
    for chunk in 0..TOTAL / 500 {
        for i in 0..500 {
            client.send_text(&json!({"message": format!("burst {}", chunk * 500 + i)}).to_string());
        }
        for _ in 0..500 {
            client.recv_type("chat_message");
        }
    }
    let stored = started.elapsed();
    let events = wait_for(&receiver, Duration::from_secs(60), "20,000 events", |e| e.len() >= TOTAL);
    let elapsed = started.elapsed();
    assert_complete_in_order(&events, TOTAL, 1);
    let requests = receiver.requests();
    assert!(requests <= TOTAL / 10, "in batches: {requests} requests");
    let rate = TOTAL as f64 / elapsed.as_secs_f64();
    eprintln!(
        "webhook burst: {TOTAL} events stored in {:.2} s, all delivered after {:.2} s ({rate:.0} events/s) in {requests} requests",
        stored.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!("webhook burst: {rate:.0} events/s, {requests} requests");
}
