//! The server API for the application backend, on its own (private) listener: JSON over
//! HTTP, authenticated with the API key as a Bearer token. Every error is a JSON body
//! `{"error": "..."}` with a fitting status. A request that reads or writes stored data
//! is asked of the engine as a `Request`, its reply rendered when the answer comes
//! (`Then::Api`); what it creates is stored in the turn's transaction, all or nothing,
//! and the reply and the pushes go out only after the commit.
//!
//! Routes (see README.md for curl examples):
//! - `GET /healthz` (no key)
//! - `GET /metrics` (Prometheus text)
//! - `GET /api/online`
//! - `POST /api/rooms/{room}/messages`
//! - `POST /api/conversations`, `GET /api/conversations/{kind}/{id}`,
//!   `PUT /api/conversations/{kind}/{id}/members`
//! - `POST /api/inbound` (a customer message from an external platform)
//! - `POST /api/notifications`, `POST /api/fraud-alerts`,
//!   `POST /api/fraud-alerts/{id}/resolve`, `POST /api/messages`
//! - `POST /api/users/{user_id}/disconnect`
//! - `GET /api/stats` (the `/metrics` counters as JSON, users online, the WebSocket URL)
//! - `GET /api/conversations?limit=N` (rooms and conversations, newest activity first)
//! - `POST /api/tokens` (a short-lived HS256 access token, as `switchboard token` mints)
//! - `GET /console` and its script and style (no key; the page asks for it)
//! - `PUT /api/users/{user_id}` (a display name, for tokens that carry none)

use serde_json::{Value, json};

use crate::console;
use crate::context::{ApiRender, ApiReply, Ctx, Then};
use crate::endpoints;
use crate::http::{HttpError, Request, json_response, response, response_with_headers};
use crate::hub::{ConnId, Topic};
use crate::model::{Identity, MAX_USER_ID_LEN, UserId};
use crate::request::{
    self, Answer, CustomerFields, Done, Failed, Idempotent, Inbound, NewBankingMessage, NewMemberConversation,
    NewNotification, Read, ReplyFn, Write,
};
use crate::store::{Conversation, ConversationKind};

/// A webhook receiver failing for this long is mentioned by `/healthz`.
const WEBHOOK_FAILING_REPORTED: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What a route does with a request: reply now, or ask the engine and reply with what
/// `render` makes of its answer.
enum Step {
    Reply(u16, Value),
    /// A read, and how its answer becomes the reply.
    Ask(request::Request, fn(&mut Ctx, Answer) -> ApiReply),
    /// A write, and how its answer becomes the reply: with an `Idempotency-Key`, that is
    /// made where the write runs and kept with it (`Write::Idempotent`).
    Write(Write, ReplyFn),
}

type Routed = Result<Step, HttpError>;

/// Handles one request: the whole HTTP response now, or `None` when it was asked of the
/// engine (the reply then goes out with its answer, `App::answer`).
pub fn handle(ctx: &mut Ctx, conn: ConnId, request: &Request) -> Option<Vec<u8>> {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if request.method == "GET" && path == "/healthz" {
        // A bus that is down is degraded service (delivery across nodes polls), not an
        // outage.
        let bus = ctx.bus.as_ref().map(|bus| if bus.is_up() { "ok" } else { "degraded" });
        let mut body = match (ctx.engine.health(), bus) {
            (Ok(()), None) => json!({"status": "ok"}),
            (Ok(()), Some(bus)) => json!({"status": "ok", "bus": bus}),
            (Err(store), None) => json!({"status": "error", "store": store}),
            (Err(store), Some(bus)) => json!({"status": "error", "store": store, "bus": bus}),
        };
        // A failing webhook receiver is the backend's outage, not this server's: it is
        // said, and the status stays (events wait in the outbox).
        if let Some(webhooks) = &ctx.webhooks {
            body["webhook"] = match webhooks.delivery.stats.failing_for() {
                Some(failing) if failing >= WEBHOOK_FAILING_REPORTED => {
                    json!(format!("the receiver has been failing for {} s", failing.as_secs()))
                }
                _ => json!("ok"),
            };
        }
        let status = if body["status"] == "ok" { 200 } else { 503 };
        return Some(json_response(status, &body));
    }
    if console::is_console_path(path) {
        return Some(console_asset(ctx, request, path));
    }
    if let Err(e) = authorize(ctx, request) {
        return Some(e.to_response());
    }
    let routed: Routed = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => {
            let body = ctx.metrics.render();
            return Some(response(200, "text/plain; version=0.0.4", body.as_bytes()));
        }
        ("GET", ["api", "online"]) => Ok(Step::Reply(200, online(ctx))),
        ("POST", ["api", "rooms", room, "messages"]) => post_room_message(room, request),
        ("POST", ["api", "conversations"]) => create_conversation(request),
        ("GET", ["api", "conversations", kind, id]) => get_conversation(kind, id),
        ("PUT", ["api", "conversations", kind, id, "members"]) => set_members(kind, id, request),
        ("POST", ["api", "inbound"]) => inbound(request),
        ("POST", ["api", "notifications"]) => create_notification(request),
        ("POST", ["api", "fraud-alerts"]) => create_fraud_alert(request),
        ("POST", ["api", "fraud-alerts", id, "resolve"]) => resolve_fraud_alert(id),
        ("POST", ["api", "messages"]) => create_banking_message(request),
        ("POST", ["api", "users", user, "disconnect"]) => disconnect_user(ctx, user),
        ("GET", ["api", "stats"]) => Ok(Step::Reply(200, stats(ctx, request))),
        ("GET", ["api", "conversations"]) => recent_conversations(request),
        ("POST", ["api", "tokens"]) => mint_token(ctx, request),
        ("PUT", ["api", "users", user]) => set_display_name(user, request),
        (
            _,
            ["metrics"]
            | ["api", "online"]
            | ["api", "rooms", _, "messages"]
            | ["api", "conversations"]
            | ["api", "conversations", _, _]
            | ["api", "conversations", _, _, "members"]
            | ["api", "inbound"]
            | ["api", "notifications"]
            | ["api", "fraud-alerts"]
            | ["api", "fraud-alerts", _, "resolve"]
            | ["api", "messages"]
            | ["api", "users", _, "disconnect"]
            | ["api", "stats"]
            | ["api", "tokens"]
            | ["api", "users", _],
        ) => Err(HttpError::new(405, "method not allowed")),
        _ => Err(HttpError::new(404, "no such API route")),
    };
    match routed {
        Ok(Step::Reply(status, body)) => Some(json_response(status, &body)),
        Ok(Step::Ask(asked, render)) => {
            let durable = matches!(asked, request::Request::Write(_));
            ctx.ask(Then::Api { conn, render: ApiRender::Read(render), durable }, asked);
            None
        }
        Ok(Step::Write(write, reply)) => {
            let (write, reply) = match idempotency_key(request) {
                Ok(None) => (write, reply),
                Ok(Some(key)) => {
                    let fingerprint = fingerprint(request);
                    (Write::Idempotent(Box::new(Idempotent { key, fingerprint, write, reply })), replied as ReplyFn)
                }
                Err(e) => return Some(e.to_response()),
            };
            ctx.ask(Then::Api { conn, render: ApiRender::Write(reply), durable: true }, request::Request::Write(write));
            None
        }
        Err(e) => Some(e.to_response()),
    }
}

/// The longest `Idempotency-Key` accepted (a UUID is 36 characters).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The `Idempotency-Key` of a write, if it has one: 1 to 255 visible ASCII characters.
fn idempotency_key(request: &Request) -> Result<Option<String>, HttpError> {
    let Some(key) = request.header("Idempotency-Key") else { return Ok(None) };
    let key = std::str::from_utf8(key).map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::new(
            400,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters (a UUID, say)"),
        ));
    }
    Ok(Some(key.to_string()))
}

/// What makes two requests the same for their `Idempotency-Key`: method, path, query
/// and body (SHA-256, hex).
fn fingerprint(request: &Request) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [request.method.as_bytes(), request.path.as_bytes(), request.query.as_deref().unwrap_or("").as_bytes()]
    {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(&request.body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The reply of an idempotent write: made where it ran, or kept from its first run.
fn replied(answer: Answer) -> ApiReply {
    match answer? {
        Done::Replied { status, body } => Ok((status, body)),
        other => Err(failure(other.unexpected("idempotent write"))),
    }
}

/// The whole HTTP response for a rendered reply.
pub fn response_of(reply: ApiReply) -> Vec<u8> {
    match reply {
        Ok((status, body)) => json_response(status, &body),
        Err(e) => e.to_response(),
    }
}

fn authorize(ctx: &Ctx, request: &Request) -> Result<(), HttpError> {
    let presented = request
        .header_str("Authorization")
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), ctx.api_key.as_bytes()) => Ok(()),
        Some(_) => Err(HttpError::new(401, "invalid API key")),
        None => Err(HttpError::new(401, "missing API key: send Authorization: Bearer <SWITCHBOARD_API_KEY>")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON object body.
pub fn json_body(request: &Request) -> Result<serde_json::Map<String, Value>, HttpError> {
    if let Some(content_type) = request.header_str("Content-Type")
        && !content_type.to_ascii_lowercase().starts_with("application/json")
    {
        return Err(HttpError::new(415, "send Content-Type: application/json"));
    }
    match serde_json::from_slice::<Value>(&request.body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(HttpError::new(400, "the body must be a JSON object")),
        Err(e) => Err(HttpError::new(400, format!("invalid JSON body: {e}"))),
    }
}

/// A required, non-empty string field.
pub fn required_str<'a>(body: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, HttpError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(HttpError::new(422, format!("\"{field}\" must not be empty"))),
        Some(_) => Err(HttpError::new(422, format!("\"{field}\" must be a string"))),
        None => Err(HttpError::new(422, format!("\"{field}\" is required"))),
    }
}

fn online(ctx: &Ctx) -> Value {
    let users: Vec<Value> = ctx
        .online_users()
        .into_iter()
        .map(|(id, name, connections)| json!({"user_id": id.to_json(), "name": &*name, "connections": connections}))
        .collect();
    json!({ "users": users })
}

/// Publishes a message into a room as a given sender (default: "system").
fn post_room_message(room: &str, request: &Request) -> Routed {
    let room = crate::http::decode_path(room);
    if !crate::model::valid_room_name(&room) {
        return Err(HttpError::new(422, "room name must be 1-100 letters, digits, _, - or ."));
    }
    let body = json_body(request)?;
    let message = required_str(&body, "message")?;
    let sender_id = match body.get("sender_id") {
        None => UserId::new("system"),
        Some(value) => UserId::from_json(value)
            .ok_or_else(|| HttpError::new(422, "\"sender_id\" must be a non-empty string or an integer"))?,
    };
    let sender_name = match body.get("sender_name") {
        None => sender_id.as_str().to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(HttpError::new(422, "\"sender_name\" must be a non-empty string")),
    };
    let sender = Identity { user_id: sender_id, name: sender_name.into() };
    let post = Write::PostToRoom { room, sender, content: message.to_string() };
    Ok(Step::Write(post, room_posted))
}

fn room_posted(answer: Answer) -> ApiReply {
    match answer {
        Ok(Done::PostedToRoom { room, posted }) => Ok((
            201,
            json!({"id": posted.id, "room": room, "created_at": crate::model::format_timestamp(posted.created_at)}),
        )),
        Ok(other) => Err(failure(other.unexpected("room message"))),
        Err(Failed::Empty) => Err(HttpError::new(422, "\"message\" must not be empty")),
        Err(e) => Err(failure(e)),
    }
}

/// Conversation ids in paths: the same rule as room names.
fn valid_key(key: &str) -> bool {
    crate::model::valid_room_name(key)
}

fn optional_str<'a>(body: &'a serde_json::Map<String, Value>, field: &str) -> Result<Option<&'a str>, HttpError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(HttpError::new(422, format!("\"{field}\" must be a string"))),
    }
}

fn parse_kind(kind: &str) -> Result<ConversationKind, HttpError> {
    match kind {
        "consultation" => Ok(ConversationKind::Consultation),
        "support" => Ok(ConversationKind::Support),
        _ => Err(HttpError::new(422, "\"kind\" must be \"consultation\" or \"support\"")),
    }
}

fn parse_members(value: Option<&Value>) -> Result<Vec<UserId>, HttpError> {
    let Some(Value::Array(items)) = value else {
        return Err(HttpError::new(422, "\"members\" must be an array of user ids"));
    };
    let mut members = Vec::with_capacity(items.len());
    for item in items {
        let user = UserId::from_json(item)
            .ok_or_else(|| HttpError::new(422, "each member must be a non-empty string or an integer user id"))?;
        if !members.contains(&user) {
            members.push(user);
        }
    }
    Ok(members)
}

fn parse_customer(value: Option<&Value>, source: Option<&str>) -> Result<Option<CustomerFields>, HttpError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let Value::Object(object) = value else {
        return Err(HttpError::new(422, "\"customer\" must be an object"));
    };
    let source = match (optional_str(object, "source")?, source) {
        (Some(s), _) | (None, Some(s)) if !s.trim().is_empty() => s.to_string(),
        _ => return Err(HttpError::new(422, "the customer's \"source\" is required (telegram, instagram, ...)")),
    };
    let external_id = match object.get("external_id").or_else(|| object.get("id")) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(HttpError::new(422, "\"customer.external_id\" is required (the platform's user id)")),
    };
    Ok(Some(CustomerFields {
        source,
        external_id,
        first_name: optional_str(object, "first_name")?.map(str::to_string),
        last_name: optional_str(object, "last_name")?.map(str::to_string),
        profile_picture: optional_str(object, "profile_picture")?.map(str::to_string),
    }))
}

/// The answer to a request that could not be stored: 503 with `Retry-After`, since a
/// full disk or a failed write passes, in words of our own (the log has SQLite's).
/// Too many writes wait for their commit to take this one now.
pub fn busy() -> HttpError {
    HttpError::new(503, "too many writes are waiting to be stored; try again shortly")
}

pub fn unavailable() -> HttpError {
    HttpError::new(503, "could not store the request; try again later")
}

impl From<Failed> for HttpError {
    fn from(failed: Failed) -> HttpError {
        failure(failed)
    }
}

/// A failed request's reply: what the domain refused in its words, a storage failure
/// as 503 (the log has the cause).
fn failure(failed: Failed) -> HttpError {
    match failed {
        Failed::NoConversation { .. } | Failed::NotFound | Failed::UnknownUser => {
            HttpError::new(404, failed.to_string())
        }
        Failed::Exists { .. } => HttpError::new(409, failed.to_string()),
        Failed::RateLimited => HttpError::new(429, failed.to_string()),
        Failed::Conflict(_) => HttpError::new(409, failed.to_string()),
        Failed::Empty | Failed::Refused(_) => HttpError::new(422, failed.to_string()),
        Failed::Store(e) => {
            log::error!("server API: {e}");
            unavailable()
        }
    }
}

fn conversation_json(conversation: &Conversation, members: &[UserId]) -> Value {
    let members: Vec<Value> = members.iter().map(UserId::to_json).collect();
    let customer = conversation.customer.as_ref().map(|c| {
        json!({"id": c.id, "source": c.source, "external_id": c.external_id, "first_name": c.first_name,
               "last_name": c.last_name, "profile_picture": c.profile_picture})
    });
    json!({"conversation": {
        "id": conversation.key,
        "kind": conversation.kind.as_sql(),
        "title": conversation.title,
        "status": conversation.status,
        "priority": conversation.priority,
        "members": members,
        "customer": customer,
        "created_at": crate::model::format_timestamp(conversation.created_at),
        "updated_at": crate::model::format_timestamp(conversation.updated_at),
    }})
}

fn random_key() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut bytes);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mixed = u64::from_le_bytes(bytes) ^ (nanos as u64);
    format!("{mixed:016x}")
}

/// `POST /api/conversations`: a consultation or support conversation with its members.
fn create_conversation(request: &Request) -> Routed {
    let body = json_body(request)?;
    let kind = parse_kind(body.get("kind").and_then(Value::as_str).unwrap_or(""))?;
    let key = match optional_str(&body, "id")? {
        Some(key) if valid_key(key) => key.to_string(),
        Some(_) => return Err(HttpError::new(422, "\"id\" must be 1-100 letters, digits, _, - or .")),
        None => random_key(),
    };
    let members = parse_members(body.get("members"))?;
    let customer = parse_customer(body.get("customer"), None)?;
    let status = optional_str(&body, "status")?.unwrap_or("active").to_string();
    if status.is_empty() || status.len() > 50 {
        return Err(HttpError::new(422, "\"status\" must be 1-50 characters"));
    }
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => value.as_i64().ok_or_else(|| HttpError::new(422, "\"priority\" must be an integer"))?,
    };
    let title = optional_str(&body, "title")?.map(str::to_string);
    let new = NewMemberConversation { kind, key, title, status, priority, customer, members };
    Ok(Step::Write(Write::CreateConversation(Box::new(new)), conversation_created))
}

fn conversation_created(answer: Answer) -> ApiReply {
    match answer? {
        Done::Conversation { conversation, members } => Ok((201, conversation_json(&conversation, &members))),
        other => Err(failure(other.unexpected("conversation created"))),
    }
}

/// A conversation kind and key from a path.
fn conversation_path(kind: &str, id: &str) -> Result<(ConversationKind, String), HttpError> {
    let kind = parse_kind(kind).map_err(|_| HttpError::new(404, "no such conversation kind"))?;
    Ok((kind, crate::http::decode_path(id)))
}

fn get_conversation(kind: &str, id: &str) -> Routed {
    let (kind, key) = conversation_path(kind, id)?;
    Ok(Step::Ask(request::Request::Read(Read::Conversation { kind, key }), |_, answer| conversation_found(answer)))
}

fn conversation_found(answer: Answer) -> ApiReply {
    match answer? {
        Done::Conversation { conversation, members } => Ok((200, conversation_json(&conversation, &members))),
        other => Err(failure(other.unexpected("conversation found"))),
    }
}

/// `PUT /api/conversations/{kind}/{id}/members`: replaces the member set. Removed
/// members' open sockets on the conversation close with 4003.
fn set_members(kind: &str, id: &str, request: &Request) -> Routed {
    let (kind, key) = conversation_path(kind, id)?;
    let body = json_body(request)?;
    let members = parse_members(body.get("members"))?;
    // Removed members' sessions close when the change is delivered (`MembersChanged`).
    Ok(Step::Write(Write::SetMembers { kind, key, members }, conversation_found))
}

/// `POST /api/inbound`: a customer's message from an external platform.
fn inbound(request: &Request) -> Routed {
    let body = json_body(request)?;
    let source = required_str(&body, "source")?.to_string();
    let content = required_str(&body, "content")?.to_string();
    let Some(customer) = parse_customer(body.get("customer"), Some(&source))? else {
        return Err(HttpError::new(422, "\"customer\" is required"));
    };
    let members = match body.get("members") {
        None | Some(Value::Null) => None,
        value => Some(parse_members(value)?),
    };
    let conversation = optional_str(&body, "conversation_id")?.map(str::to_string);
    let inbound =
        Inbound { customer, content, conversation, new_key: random_key(), members: members.unwrap_or_default() };
    Ok(Step::Write(Write::Inbound(Box::new(inbound)), inbound_stored))
}

fn inbound_stored(answer: Answer) -> ApiReply {
    match answer? {
        Done::Inbound { conversation, created, message, customer } => {
            let object = serde_json::to_value(endpoints::support::MessageObject::new(&message, Some(&customer)))
                .unwrap_or(Value::Null);
            Ok((201, json!({"conversation_id": conversation, "created_conversation": created, "message": object})))
        }
        other => Err(failure(other.unexpected("inbound message"))),
    }
}

/// Severities a fraud alert may have.
pub const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];
/// Longest title, subject or category accepted; bodies are bounded by the request size.
const MAX_SHORT_TEXT: usize = 500;

fn required_user(body: &serde_json::Map<String, Value>) -> Result<UserId, HttpError> {
    match body.get("user_id") {
        None => Err(HttpError::new(422, "\"user_id\" is required")),
        Some(value) => UserId::from_json(value)
            .ok_or_else(|| HttpError::new(422, "\"user_id\" must be a non-empty string or an integer")),
    }
}

fn short_text<'a>(body: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, HttpError> {
    let value = required_str(body, field)?;
    if value.len() > MAX_SHORT_TEXT {
        return Err(HttpError::new(422, format!("\"{field}\" is longer than {MAX_SHORT_TEXT} bytes")));
    }
    Ok(value)
}

fn path_id(id: &str) -> Result<i64, HttpError> {
    id.parse().map_err(|_| HttpError::new(404, "no such id"))
}

/// `POST /api/notifications`: stored, then pushed to the user's three notification
/// endpoints, each in its document's shape.
fn create_notification(request: &Request) -> Routed {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let title = short_text(&body, "title")?;
    let message = required_str(&body, "message")?;
    let category = match (optional_str(&body, "category")?, optional_str(&body, "type")?) {
        (Some(c), _) | (None, Some(c)) if !c.trim().is_empty() && c.len() <= MAX_SHORT_TEXT => c,
        (None, None) => "system",
        _ => return Err(HttpError::new(422, "\"category\" (or \"type\") must be a short non-empty string")),
    };
    let new = NewNotification {
        user,
        category: category.to_string(),
        title: title.to_string(),
        message: message.to_string(),
        link: optional_str(&body, "link")?.map(str::to_string),
    };
    Ok(Step::Write(Write::Notify(Box::new(new)), notified))
}

fn notified(answer: Answer) -> ApiReply {
    match answer? {
        Done::Notification(notification) => Ok((
            201,
            json!({"notification": {
                "id": notification.id, "user_id": notification.user_id.to_json(), "category": notification.category,
                "title": notification.title, "message": notification.message, "link": notification.link,
                "is_read": false, "created_at": crate::model::format_timestamp(notification.created_at),
            }}),
        )),
        other => Err(failure(other.unexpected("notification"))),
    }
}

fn alert_json(alert: &crate::store::FraudAlert) -> Value {
    json!({"alert": {
        "id": alert.id, "user": alert.user_id.to_json(), "message": alert.message, "severity": alert.severity,
        "is_resolved": alert.is_resolved, "resolved_at": alert.resolved_at.map(crate::model::format_timestamp),
        "created_at": crate::model::format_timestamp(alert.created_at),
    }})
}

/// `POST /api/fraud-alerts`.
fn create_fraud_alert(request: &Request) -> Routed {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let message = required_str(&body, "message")?;
    let severity = required_str(&body, "severity")?;
    if !SEVERITIES.contains(&severity) {
        return Err(HttpError::new(422, format!("\"severity\" must be one of {}", SEVERITIES.join(", "))));
    }
    let raise = Write::RaiseFraudAlert { user, message: message.to_string(), severity: severity.to_string() };
    Ok(Step::Write(raise, |answer| match answer? {
        Done::FraudAlert(alert) => Ok((201, alert_json(&alert))),
        other => Err(failure(other.unexpected("fraud alert"))),
    }))
}

/// `POST /api/fraud-alerts/{id}/resolve`: resolves once; resolving again changes nothing.
fn resolve_fraud_alert(id: &str) -> Routed {
    let id = path_id(id)?;
    Ok(Step::Write(Write::ResolveFraudAlert { id }, |answer| match answer {
        Ok(Done::FraudAlert(alert)) => Ok((200, alert_json(&alert))),
        Ok(other) => Err(failure(other.unexpected("fraud alert resolved"))),
        Err(Failed::NotFound) => Err(HttpError::new(404, "no such alert")),
        Err(e) => Err(failure(e)),
    }))
}

/// `POST /api/messages`: a banking message, optionally a reply in a thread.
fn create_banking_message(request: &Request) -> Routed {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let subject = short_text(&body, "subject")?;
    let text = required_str(&body, "body")?;
    let parent = match body.get("parent_message").or_else(|| body.get("parent_id")) {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(value.as_i64().ok_or_else(|| HttpError::new(422, "\"parent_message\" must be a message id"))?)
        }
    };
    let thread = match optional_str(&body, "thread_id")? {
        Some(thread) if !thread.trim().is_empty() && thread.len() <= 100 => Some(thread.to_string()),
        Some(_) => return Err(HttpError::new(422, "\"thread_id\" must be 1-100 characters")),
        None => None,
    };
    let new = NewBankingMessage {
        user,
        subject: subject.to_string(),
        body: text.to_string(),
        parent,
        thread,
        new_thread: random_key(),
    };
    Ok(Step::Write(Write::PostBankingMessage(Box::new(new)), |answer| match answer? {
        Done::BankingMessage(message) => {
            let object = serde_json::to_value(endpoints::banking::MessageObject::new(&message)).unwrap_or(Value::Null);
            Ok((201, json!({ "message": object })))
        }
        other => Err(failure(other.unexpected("banking message"))),
    }))
}

/// `POST /api/users/{user_id}/disconnect`: closes every connection of the user with
/// each endpoint's authentication close code (a logout).
fn disconnect_user(ctx: &mut Ctx, user: &str) -> Routed {
    let user = UserId::new(&crate::http::decode_path(user));
    // This node's sessions close whatever the store does (a logout must work while it
    // fails); the event on the user's stream is what tells any other listener, in order.
    let conns = ctx.user_conns(&user).to_vec();
    let connections = ctx.connections_of(&user).max(conns.len());
    for conn in &conns {
        ctx.logout_conn(*conn);
    }
    let logout = Write::Logout { user, connections };
    Ok(Step::Write(logout, |answer| match answer? {
        Done::LoggedOut { user, connections } => {
            Ok((200, json!({"user_id": user.to_json(), "disconnected": connections})))
        }
        other => Err(failure(other.unexpected("logout"))),
    }))
}

/// The console's page, script or style, with its Content-Security-Policy; only `GET`.
fn console_asset(ctx: &Ctx, request: &Request, path: &str) -> Vec<u8> {
    let Some(asset) = console::asset(path).filter(|_| request.method == "GET") else {
        return HttpError::new(405, "method not allowed").to_response();
    };
    let policy = console::content_security_policy(ctx.ws_addr, request.header_str("Host"));
    let headers = [
        ("Content-Security-Policy", policy.as_str()),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    ];
    response_with_headers(200, asset.content_type, &headers, asset.body.as_bytes())
}

/// `GET /api/stats`: what the console shows live. The counters are `/metrics`' own;
/// rates are the client's to compute from two readings.
fn stats(ctx: &Ctx, request: &Request) -> Value {
    let mut body = ctx.metrics.to_json();
    let open: i64 = ctx.metrics.open_connections.values().sum();
    body["version"] = json!(env!("CARGO_PKG_VERSION"));
    body["storage"] = json!(ctx.engine.storage_name());
    body["now"] = json!(crate::model::format_timestamp(ctx.now));
    body["uptime_secs"] = json!((ctx.now - ctx.started_at).max(0) / 1_000_000);
    body["users_online"] = json!(ctx.online_users().len());
    body["connections_open"] = json!(open);
    body["ws_url"] = json!(ctx.ws_addr.map(|ws| console::ws_url(ws, request.header_str("Host"))));
    body["mints_tokens"] = json!(ctx.token_secret.is_some());
    body["chat_protocol"] = json!(match ctx.config.chat_protocol {
        crate::config::ChatProtocol::Rooms => "rooms",
        crate::config::ChatProtocol::Consultation => "consultation",
        crate::config::ChatProtocol::Support => "support",
    });
    body
}

/// Conversations a recent list shows unless asked for another number.
const DEFAULT_RECENT_CONVERSATIONS: usize = 20;

/// `GET /api/conversations?limit=N`: rooms and conversations of every kind, newest
/// activity first, with their member counts and who is connected to them here.
fn recent_conversations(request: &Request) -> Routed {
    let mut limit = DEFAULT_RECENT_CONVERSATIONS;
    for (name, value) in request.query.as_deref().unwrap_or("").split('&').filter_map(|p| p.split_once('=')) {
        if name == "limit" {
            limit = crate::http::decode_query(value)
                .parse()
                .ok()
                .filter(|n| (1..=crate::store::MAX_RECENT_CONVERSATIONS).contains(n))
                .ok_or_else(|| {
                    HttpError::new(
                        422,
                        format!("\"limit\" must be a number from 1 to {}", crate::store::MAX_RECENT_CONVERSATIONS),
                    )
                })?;
        }
    }
    Ok(Step::Ask(request::Request::Read(Read::Recent { limit }), recent_found))
}

fn recent_found(ctx: &mut Ctx, answer: Answer) -> ApiReply {
    let recent = match answer? {
        Done::Recent(recent) => recent,
        other => return Err(failure(other.unexpected("recent conversations"))),
    };
    let conversations: Vec<Value> = recent
        .iter()
        .map(|recent| {
            let conversation = &recent.conversation;
            let topic = Topic::Conversation(conversation.id);
            json!({
                "kind": conversation.kind.as_sql(),
                "id": conversation.key,
                "title": conversation.title,
                "status": conversation.status,
                "members": recent.members,
                "online": ctx.hub.users(&topic).len(),
                "connections": ctx.hub.conns(&topic).len(),
                "created_at": crate::model::format_timestamp(conversation.created_at),
                "updated_at": crate::model::format_timestamp(conversation.updated_at),
            })
        })
        .collect();
    Ok((200, json!({ "conversations": conversations })))
}

/// Lifetime of a token from `POST /api/tokens` unless asked otherwise, and the longest
/// it may ask for: tokens for trying things out, not for clients.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 300;
pub const MAX_TOKEN_TTL_SECS: u64 = 3600;

/// `POST /api/tokens`: `{"user_id", "user_name"?, "ttl_secs"?}` → a short-lived HS256
/// access token, the same `switchboard token` prints (`auth::mint`).
fn mint_token(ctx: &Ctx, request: &Request) -> Routed {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    if user.as_str().len() > MAX_USER_ID_LEN {
        return Err(HttpError::new(422, format!("\"user_id\" is longer than {MAX_USER_ID_LEN} bytes")));
    }
    let name = match body.get("user_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= crate::auth::MAX_NAME_LEN => Some(s.as_str()),
        Some(_) => {
            let max = crate::auth::MAX_NAME_LEN;
            return Err(HttpError::new(
                422,
                format!("\"user_name\" must be a non-empty string of at most {max} bytes"),
            ));
        }
    };
    let ttl = match body.get("ttl_secs") {
        None | Some(Value::Null) => DEFAULT_TOKEN_TTL_SECS,
        Some(value) => value.as_u64().filter(|t| (1..=MAX_TOKEN_TTL_SECS).contains(t)).ok_or_else(|| {
            HttpError::new(
                422,
                format!("\"ttl_secs\" must be a whole number of seconds from 1 to {MAX_TOKEN_TTL_SECS}"),
            )
        })?,
    };
    let Some(secret) = &ctx.token_secret else {
        return Err(HttpError::new(
            501,
            "switchboard mints HS256 tokens only; with a public-key SWITCHBOARD_JWT_ALGORITHM tokens come from your backend",
        ));
    };
    let minted = crate::auth::mint(secret, user.as_str(), name, ttl);
    let expires_at = crate::model::format_timestamp(minted.expires_at as i64 * 1_000_000);
    Ok(Step::Reply(
        201,
        json!({"token": minted.token, "expires_at": expires_at, "ttl_secs": ttl, "user_id": user.to_json()}),
    ))
}

/// `PUT /api/users/{user_id}`: the name shown for a user whose token carries none (a
/// default SimpleJWT access token has only `user_id`), from their next connection on. A
/// name in the token still wins.
fn set_display_name(user: &str, request: &Request) -> Routed {
    let user = crate::http::decode_path(user);
    if user.is_empty() || user.len() > crate::model::MAX_USER_ID_LEN {
        return Err(HttpError::new(422, "the user id must be 1-200 bytes"));
    }
    let body = json_body(request)?;
    let name = required_str(&body, "name")?;
    if name.len() > crate::auth::MAX_NAME_LEN {
        return Err(HttpError::new(422, format!("\"name\" is longer than {} bytes", crate::auth::MAX_NAME_LEN)));
    }
    let set = Write::SetDisplayName { user: UserId::new(&user), name: name.to_string() };
    Ok(Step::Write(set, |answer| match answer? {
        Done::User { user, name } => Ok((200, json!({"user": {"id": user.to_json(), "name": name}}))),
        other => Err(failure(other.unexpected("display name"))),
    }))
}
