//! Shared fixtures of the fuzz targets: the fixed secrets, and a real `switchboard::app::App`
//! on a temporary SQLite file with conversations, notifications, alerts and banking
//! messages created through the server API, and one open session on every endpoint.
//!
//! A fixture is made once per process and lives in a `thread_local!` of the target
//! (libFuzzer runs the target on one thread).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard::app::App;
use switchboard::auth::Verifier;
use switchboard::config::RawSettings;
use switchboard::context::{Out, Session};
use switchboard::engine::Engine;
use switchboard::endpoints::Endpoint;
use switchboard::http::{self, Parsed};
use switchboard::hub::ConnId;
use switchboard::model::{Identity, UserId};
use switchboard::store::Store;

/// The HS256 secret every fixture and seed token uses.
pub const JWT_SECRET: &str = "fuzz-jwt-secret-0123456789abcdef";
/// The server API key of the fixture's `App` (the `api_request` seeds carry it).
pub const API_KEY: &str = "fuzz-api-key-0123456789abcdef";
/// `iss` and `aud` the `token` target's verifier requires.
pub const ISSUER: &str = "https://backend.example";
pub const AUDIENCE: &str = "switchboard";

/// Whether `SWITCHBOARD_FUZZ_DEBUG` is set: the targets then print what each input did
/// (for triage with `cargo fuzz run TARGET some/input`).
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("SWITCHBOARD_FUZZ_DEBUG").is_some())
}

/// Prints one outbox entry (debug mode).
pub fn print_out(out: &Out) {
    match out {
        Out::Frame { to, frame, durable } => {
            let to: Vec<usize> = to.iter().map(|c| c.slot).collect();
            eprintln!("  frame to {to:?} durable={durable}: {}", frame.as_str());
        }
        Out::Frames { to, frames } => {
            for frame in frames {
                eprintln!("  frame to [{}] (history): {}", to.slot, frame.as_str());
            }
        }
        Out::Binary { to, data } => eprintln!("  binary to {} ({} bytes)", to.slot, data.len()),
        Out::Close { to, code, reason } => eprintln!("  close {} with {code} {reason:?}", to.slot),
        Out::Logout { to } => eprintln!("  logout {}", to.slot),
        Out::Http { response, durable, .. } => {
            eprintln!("  http durable={durable}: {}", String::from_utf8_lossy(response).replace("\r\n", " | "))
        }
    }
}

/// Inputs handled by one `App` before it is rebuilt on a fresh database file, so that
/// the database (and the per-input cost of queries over it) stays bounded.
pub const REBUILD_EVERY: usize = 10_000;

/// The sessions of the fixture, in selector order: the first byte of an
/// `endpoint_frames` input, modulo `SESSIONS.len()`, picks one. User "1" (Ann) has one
/// session on every endpoint; user "5" (Bob) is the other party of the direct chat and
/// a member of the consultation and the support conversation.
pub const SESSIONS: &[(&str, &str)] = &[
    ("rooms general", "1"),        // 0: 004 /ws/chat/general/
    ("consultation c-1001", "1"),  // 1: 001 /ws/consultations/c-1001/
    ("support conv123", "1"),      // 2: 002 /ws/conversations/conv123/
    ("conversation list", "1"),    // 3: 002 /ws/conversations/
    ("direct chat", "1"),          // 4: 003 /ws/v1/chat/
    ("presence", "1"),             // 5: 001 /ws/presence/
    ("banking messages 1", "1"),   // 6: 000 /ws/messages/1/
    ("fraud alerts 1", "1"),       // 7: 000 /ws/fraud-alerts/1/
    ("user notifications 1", "1"), // 8: 000 /ws/notifications/1/
    ("notifications", "1"),        // 9: 001 /ws/notifications/
    ("v1 notifications", "1"),     // 10: 003 /ws/v1/notifications/
    ("direct chat", "5"),          // 11: 003 /ws/v1/chat/ (Bob)
    ("rooms general", "5"),        // 12: 004 /ws/chat/general/ (Bob)
    ("consultation c-1001", "5"),  // 13: 001 (Bob)
    ("support conv123", "5"),      // 14: 002 (Bob)
    ("conversation list", "5"),    // 15: 002 (Bob)
];

fn endpoint(index: usize) -> Endpoint {
    let user = SESSIONS[index].1.to_string();
    match SESSIONS[index].0 {
        "rooms general" => Endpoint::Rooms { room: "general".into() },
        "consultation c-1001" => Endpoint::Consultation { id: "c-1001".into() },
        "support conv123" => Endpoint::SupportChat { id: "conv123".into() },
        "conversation list" => Endpoint::ConversationList,
        "direct chat" => Endpoint::DirectChat,
        "presence" => Endpoint::Presence,
        "banking messages 1" => Endpoint::BankingMessages { user_id: user },
        "fraud alerts 1" => Endpoint::FraudAlerts { user_id: user },
        "user notifications 1" => Endpoint::UserNotifications { user_id: user },
        "notifications" => Endpoint::Notifications,
        "v1 notifications" => Endpoint::V1Notifications,
        other => unreachable!("unknown fixture session {other}"),
    }
}

fn identity(user: &str) -> Identity {
    let name = if user == "1" { "Ann" } else { "Bob" };
    Identity { user_id: UserId::new(user), name: Arc::from(name) }
}

/// Server API requests run (and required to succeed) when a fixture is built.
const SETUP: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/api/conversations",
        r#"{"kind": "consultation", "id": "c-1001", "title": "Reading with Ann", "members": [1, 5]}"#,
    ),
    (
        "POST",
        "/api/conversations",
        r#"{"kind": "support", "id": "conv123", "priority": 1, "members": [1, 5], "customer": {"source": "telegram", "external_id": "tg-555", "first_name": "John", "last_name": "Doe"}}"#,
    ),
    (
        "POST",
        "/api/inbound",
        r#"{"source": "telegram", "customer": {"external_id": "tg-555", "first_name": "John", "last_name": "Doe"}, "content": "Hi, my order has not arrived", "conversation_id": "conv123"}"#,
    ),
    (
        "POST",
        "/api/rooms/general/messages",
        r#"{"message": "Deploy finished", "sender_id": "ci", "sender_name": "CI bot"}"#,
    ),
    (
        "POST",
        "/api/notifications",
        r#"{"user_id": 1, "title": "Leave Approved", "message": "Approved.", "category": "hr", "link": "/hr/leave-applications/12"}"#,
    ),
    (
        "POST",
        "/api/notifications",
        r#"{"user_id": 1, "title": "Daily Reading Ready", "message": "Your daily reading is available"}"#,
    ),
    (
        "POST",
        "/api/fraud-alerts",
        r#"{"user_id": 1, "message": "Suspicious transaction detected", "severity": "high"}"#,
    ),
    (
        "POST",
        "/api/messages",
        r#"{"user_id": 1, "subject": "Account Update", "body": "Your account balance has changed", "thread_id": "abc123"}"#,
    ),
    (
        "POST",
        "/api/messages",
        r#"{"user_id": 1, "subject": "Re: Account Update", "body": "Thank you", "parent_message": 1}"#,
    ),
];

/// A raw server API request with the fixture's key.
pub fn api_request_bytes(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A real `App` with one open session per entry of `SESSIONS`.
pub struct Fixture {
    pub app: App,
    /// Indexed like `SESSIONS`. `None` when the app closed the session (a server API
    /// request removed the user from the conversation) and reopening it was refused.
    pub sessions: Vec<Option<Session>>,
    db: PathBuf,
    serial: u64,
    /// Inputs handled by this fixture.
    pub runs: usize,
}

impl Fixture {
    pub fn new() -> Fixture {
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let db = std::env::temp_dir().join(format!("switchboard-fuzz-{}-{n}.db", std::process::id()));
        remove_db(&db);
        let db_setting = db.to_string_lossy().into_owned();
        // Defaults, except the rate limit: at thousands of inputs per second the default
        // 300 per minute would turn nearly every frame into the rate-limit error.
        let (raw, _) = RawSettings::gather(&[], |name| match name {
            "SWITCHBOARD_DB" => Some(db_setting.clone()),
            "SWITCHBOARD_RATE_LIMIT_PER_MINUTE" => Some("1000000000".into()),
            _ => None,
        })
        .expect("settings");
        let config = raw.into_config().expect("config");
        let verifier = Verifier::new(&config.jwt, JWT_SECRET).expect("verifier");
        let store = Store::open(&db, false).expect("store");
        let app = App::new(config, verifier, API_KEY.to_string(), Engine::Local(store));
        let sessions = (0..SESSIONS.len()).map(|_| None).collect();
        let mut fixture = Fixture { app, sessions, db, serial: 0, runs: 0 };
        for (method, path, body) in SETUP {
            let response = fixture.api(&api_request_bytes(method, path, body)).expect("complete setup request");
            assert!(
                response.starts_with(b"HTTP/1.1 201") || response.starts_with(b"HTTP/1.1 200"),
                "setup request {method} {path} failed: {}",
                String::from_utf8_lossy(&response)
            );
        }
        // Bob's sessions first, so that user 5 exists before Ann's direct chat opens.
        let mut order: Vec<usize> = (0..SESSIONS.len()).collect();
        order.sort_by_key(|&i| SESSIONS[i].1 != "5");
        for index in order {
            fixture.open(index);
            assert!(fixture.sessions[index].is_some(), "fixture session {index} was refused");
        }
        fixture
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Opens (or reopens, as a reconnecting client would) the session `index`, as one
    /// turn. A refusal leaves it `None`.
    fn open(&mut self, index: usize) {
        let conn = ConnId { slot: index, serial: self.next_serial() };
        self.app.begin_turn();
        let opened = self.app.open(conn, endpoint(index), identity(SESSIONS[index].1), None);
        if debug() {
            eprintln!(
                "open session {index} ({} as user {}): {}",
                SESSIONS[index].0,
                SESSIONS[index].1,
                match &opened {
                    Ok(_) => "ok".to_string(),
                    Err(refusal) => format!("refused {refusal:?}"),
                }
            );
        }
        self.sessions[index] = opened.ok();
        let outbox = self.app.end_turn();
        self.apply(outbox);
    }

    /// The open session picked by an input's selector byte, if it is open.
    pub fn session(&mut self, selector: u8) -> Option<(usize, &mut App, &mut Session)> {
        let index = usize::from(selector) % SESSIONS.len();
        let session = self.sessions[index].as_mut()?;
        Some((index, &mut self.app, session))
    }

    fn conns(&self) -> Vec<ConnId> {
        self.sessions.iter().flatten().map(|s| s.conn).collect()
    }

    /// Checks what a turn handed the server and does what the server would: closes
    /// (`App::close`) sessions the app asked to close, then reopens them. Returns the
    /// HTTP answers of the turn.
    pub fn apply(&mut self, outbox: Vec<Out>) -> Vec<(ConnId, Vec<u8>)> {
        let conns = self.conns();
        let mut answers = Vec::new();
        let mut closing = Vec::new();
        for out in outbox {
            if debug() {
                print_out(&out);
            }
            check_out(&out, &conns);
            match out {
                Out::Http { to, response, .. } => answers.push((to, response)),
                Out::Close { to, .. } | Out::Logout { to } => closing.push(to),
                Out::Frame { .. } | Out::Frames { .. } | Out::Binary { .. } => {}
            }
        }
        for conn in closing {
            let Some(index) = self.sessions.iter().position(|s| s.as_ref().is_some_and(|s| s.conn == conn)) else {
                continue; // closed twice in one turn
            };
            let session = self.sessions[index].take().expect("open session");
            self.app.begin_turn();
            self.app.close(session);
            let outbox = self.app.end_turn();
            self.apply(outbox);
            self.open(index);
        }
        answers
    }

    /// Parses `raw` as a server API request and, when it is complete, runs it as one
    /// turn. Returns the HTTP answer, or `None` for an incomplete or invalid request.
    pub fn api(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let Parsed::Complete(request) = http::parse_request(raw, switchboard::api::MAX_BODY_BYTES) else {
            return None;
        };
        let conn = ConnId { slot: 100_000, serial: self.next_serial() };
        self.app.begin_turn();
        self.app.on_api(conn, request);
        let outbox = self.app.end_turn();
        let mut answers = self.apply_api(outbox, conn);
        assert_eq!(answers.len(), 1, "an API request got {} answers", answers.len());
        answers.pop()
    }

    fn apply_api(&mut self, outbox: Vec<Out>, conn: ConnId) -> Vec<Vec<u8>> {
        // The API caller's connection is a valid recipient of exactly its answer.
        let mut answers = Vec::new();
        let mut rest = Vec::new();
        for out in outbox {
            match out {
                Out::Http { to, response, durable } => {
                    if debug() {
                        print_out(&Out::Http { to, response: response.clone(), durable });
                    }
                    assert_eq!(to, conn, "an API answer went to another connection");
                    answers.push(response);
                }
                other => rest.push(other),
            }
        }
        let stray = self.apply(rest);
        assert!(stray.is_empty(), "an HTTP answer outside an API request");
        answers
    }
}

/// Properties of what the app hands the server: frames are JSON and everything goes
/// only to connections that are open.
fn check_out(out: &Out, conns: &[ConnId]) {
    match out {
        Out::Frame { to, frame, .. } => {
            assert!(!to.is_empty(), "a frame with no recipient");
            for conn in to {
                assert!(conns.contains(conn), "a frame to a connection that is not open: {conn:?}");
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(frame.as_str()) {
                panic!("a frame that is not JSON ({e}): {:?}", frame.as_str());
            }
        }
        Out::Frames { to, frames } => {
            assert!(conns.contains(to), "frames to a connection that is not open: {to:?}");
            for frame in frames {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(frame.as_str()) {
                    panic!("a frame that is not JSON ({e}): {:?}", frame.as_str());
                }
            }
        }
        Out::Binary { to, .. } | Out::Close { to, .. } | Out::Logout { to } => {
            assert!(conns.contains(to), "an action on a connection that is not open: {to:?}");
        }
        Out::Http { .. } => {}
    }
}

impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The store's connection closes when `app` is dropped, after this body; removing
        // the files first is fine on Unix (the open descriptors keep them alive).
        remove_db(&self.db);
    }
}
