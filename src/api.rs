//! The server API for the application backend, on its own (private) listener: JSON over
//! HTTP, authenticated with the API key as a Bearer token. Every error is a JSON body
//! `{"error": "..."}` with a fitting status. What a request creates is stored in the
//! turn's transaction and pushed through the outbox, so the answer and the pushes go
//! out only after the commit.
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

use serde_json::{Value, json};

use crate::context::{Ctx, close_code};
use crate::endpoints;
use crate::features::chat::{self, ChatError};
use crate::features::conversations::{self, CreateError, NewMemberConversation};
use crate::features::{inbox, support};
use crate::http::{HttpError, Request, json_response, response};
use crate::hub::Topic;
use crate::model::{Identity, UserId};
use crate::store::{Conversation, ConversationKind, Customer, NewBankingMessage, NewCustomer, NewNotification};

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

type Answer = Result<(u16, Value), HttpError>;

/// What a request came to.
pub struct ApiAnswer {
    /// The whole HTTP response.
    pub response: Vec<u8>,
    /// It succeeded: a failed request's writes and pushes are undone by the caller.
    pub ok: bool,
    /// It reports stored data, so it becomes a 503 if the turn's commit fails.
    pub durable: bool,
}

impl ApiAnswer {
    fn read(response: Vec<u8>) -> ApiAnswer {
        ApiAnswer { response, ok: true, durable: false }
    }

    fn failed(error: &HttpError) -> ApiAnswer {
        ApiAnswer { response: error.to_response(), ok: false, durable: false }
    }
}

/// Handles one request.
pub fn handle(ctx: &mut Ctx, request: &Request) -> ApiAnswer {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if request.method == "GET" && path == "/healthz" {
        return ApiAnswer::read(match ctx.store.health() {
            Ok(()) => json_response(200, &json!({"status": "ok"})),
            Err(store) => json_response(503, &json!({"status": "error", "store": store})),
        });
    }
    if let Err(e) = authorize(ctx, request) {
        return ApiAnswer::failed(&e);
    }
    let answer: Answer = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => {
            let body = ctx.metrics.render();
            return ApiAnswer::read(response(200, "text/plain; version=0.0.4", body.as_bytes()));
        }
        ("GET", ["api", "online"]) => Ok((200, online(ctx))),
        ("POST", ["api", "rooms", room, "messages"]) => post_room_message(ctx, room, request),
        ("POST", ["api", "conversations"]) => create_conversation(ctx, request),
        ("GET", ["api", "conversations", kind, id]) => get_conversation(ctx, kind, id),
        ("PUT", ["api", "conversations", kind, id, "members"]) => set_members(ctx, kind, id, request),
        ("POST", ["api", "inbound"]) => inbound(ctx, request),
        ("POST", ["api", "notifications"]) => create_notification(ctx, request),
        ("POST", ["api", "fraud-alerts"]) => create_fraud_alert(ctx, request),
        ("POST", ["api", "fraud-alerts", id, "resolve"]) => resolve_fraud_alert(ctx, id),
        ("POST", ["api", "messages"]) => create_banking_message(ctx, request),
        ("POST", ["api", "users", user, "disconnect"]) => disconnect_user(ctx, user),
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
            | ["api", "users", _, "disconnect"],
        ) => Err(HttpError::new(405, "method not allowed")),
        _ => Err(HttpError::new(404, "no such API route")),
    };
    match answer {
        Ok((status, body)) => {
            ApiAnswer { response: json_response(status, &body), ok: true, durable: request.method != "GET" }
        }
        Err(e) => ApiAnswer::failed(&e),
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
        .map(|(id, user)| json!({"user_id": id.to_json(), "name": &*user.name, "connections": user.conns.len()}))
        .collect();
    json!({ "users": users })
}

/// Publishes a message into a room as a given sender (default: "system").
fn post_room_message(ctx: &mut Ctx, room: &str, request: &Request) -> Answer {
    let room = crate::http::decode_path(room);
    if !chat::valid_room_name(&room) {
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
    let stored = match chat::post_to_room(&mut ctx.tx(), &room, &sender, message) {
        Ok(stored) => stored,
        Err(ChatError::Empty) => return Err(HttpError::new(422, "\"message\" must not be empty")),
        Err(ChatError::Store(e)) => return Err(store_error(e)),
    };
    Ok((201, json!({"id": stored.id, "room": room, "created_at": crate::model::format_timestamp(stored.created_at)})))
}

/// Conversation ids in paths: the same rule as room names.
fn valid_key(key: &str) -> bool {
    chat::valid_room_name(key)
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

fn parse_customer(
    value: Option<&Value>,
    source: Option<&str>,
) -> Result<Option<(String, NewCustomerFields)>, HttpError> {
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
    let fields = NewCustomerFields {
        external_id,
        first_name: optional_str(object, "first_name")?.map(str::to_string),
        last_name: optional_str(object, "last_name")?.map(str::to_string),
        profile_picture: optional_str(object, "profile_picture")?.map(str::to_string),
    };
    Ok(Some((source, fields)))
}

/// Owned customer fields from a request body.
struct NewCustomerFields {
    external_id: String,
    first_name: Option<String>,
    last_name: Option<String>,
    profile_picture: Option<String>,
}

impl NewCustomerFields {
    /// The customer to store, from this request's fields and the platform.
    fn on<'a>(&'a self, source: &'a str) -> NewCustomer<'a> {
        NewCustomer {
            source,
            external_id: &self.external_id,
            first_name: self.first_name.as_deref(),
            last_name: self.last_name.as_deref(),
            profile_picture: self.profile_picture.as_deref(),
        }
    }
}

fn upsert_customer(ctx: &mut Ctx, source: &str, fields: &NewCustomerFields) -> Result<Customer, HttpError> {
    conversations::upsert_customer(&mut ctx.tx(), &fields.on(source)).map_err(store_error)
}

/// The answer to a request that could not be stored: 503 with `Retry-After`, since a
/// full disk or a failed write passes, in words of our own (the log has SQLite's).
pub fn unavailable() -> HttpError {
    HttpError::new(503, "could not store the request; try again later")
}

fn store_error(e: crate::store::StoreError) -> HttpError {
    log::error!("server API: {e}");
    unavailable()
}

fn conversation_json(ctx: &mut Ctx, conversation: &Conversation) -> Result<Value, HttpError> {
    let members: Vec<Value> =
        conversations::members(&ctx.tx(), conversation.id).map_err(store_error)?.iter().map(UserId::to_json).collect();
    let customer = conversation.customer.as_ref().map(|c| {
        json!({"id": c.id, "source": c.source, "external_id": c.external_id, "first_name": c.first_name,
               "last_name": c.last_name, "profile_picture": c.profile_picture})
    });
    Ok(json!({"conversation": {
        "id": conversation.key,
        "kind": conversation.kind.as_sql(),
        "title": conversation.title,
        "status": conversation.status,
        "priority": conversation.priority,
        "members": members,
        "customer": customer,
        "created_at": crate::model::format_timestamp(conversation.created_at),
        "updated_at": crate::model::format_timestamp(conversation.updated_at),
    }}))
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
fn create_conversation(ctx: &mut Ctx, request: &Request) -> Answer {
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
    let title = optional_str(&body, "title")?;
    let new = NewMemberConversation {
        kind,
        key: &key,
        title,
        status: &status,
        priority,
        customer: customer.as_ref().map(|(source, fields)| fields.on(source)),
        members: &members,
    };
    let conversation = match conversations::create(&mut ctx.tx(), &new) {
        Ok(conversation) => conversation,
        Err(CreateError::Exists) => {
            return Err(HttpError::new(409, format!("a {} conversation with id {key:?} exists", kind.as_sql())));
        }
        Err(CreateError::Store(e)) => return Err(store_error(e)),
    };
    Ok((201, conversation_json(ctx, &conversation)?))
}

fn find_conversation(ctx: &mut Ctx, kind: &str, id: &str) -> Result<Conversation, HttpError> {
    let kind = parse_kind(kind).map_err(|_| HttpError::new(404, "no such conversation kind"))?;
    let id = crate::http::decode_path(id);
    conversations::find(&ctx.tx(), kind, &id)
        .map_err(store_error)?
        .ok_or_else(|| HttpError::new(404, format!("no {} conversation with id {id:?}", kind.as_sql())))
}

fn get_conversation(ctx: &mut Ctx, kind: &str, id: &str) -> Answer {
    let conversation = find_conversation(ctx, kind, id)?;
    Ok((200, conversation_json(ctx, &conversation)?))
}

/// `PUT /api/conversations/{kind}/{id}/members`: replaces the member set. Removed
/// members' open sockets on the conversation close with 4003.
fn set_members(ctx: &mut Ctx, kind: &str, id: &str, request: &Request) -> Answer {
    let conversation = find_conversation(ctx, kind, id)?;
    let body = json_body(request)?;
    let members = parse_members(body.get("members"))?;
    let removed = conversations::set_members(&mut ctx.tx(), conversation.id, &members).map_err(store_error)?;
    let topic = Topic::Conversation(conversation.id);
    for user in &removed {
        for conn in ctx.hub.user_conns(&topic, user).to_vec() {
            ctx.close_conn(conn, close_code::FORBIDDEN, "removed from the conversation");
        }
    }
    Ok((200, conversation_json(ctx, &conversation)?))
}

/// `POST /api/inbound`: a customer's message from an external platform.
fn inbound(ctx: &mut Ctx, request: &Request) -> Answer {
    let body = json_body(request)?;
    let source = required_str(&body, "source")?.to_string();
    let content = required_str(&body, "content")?.to_string();
    let Some((source, fields)) = parse_customer(body.get("customer"), Some(&source))? else {
        return Err(HttpError::new(422, "\"customer\" is required"));
    };
    let members = match body.get("members") {
        None | Some(Value::Null) => None,
        value => Some(parse_members(value)?),
    };
    let conversation_id = optional_str(&body, "conversation_id")?.map(str::to_string);
    let existing = match &conversation_id {
        Some(id) => Some(find_conversation(ctx, "support", id)?),
        None => None,
    };
    let customer = upsert_customer(ctx, &source, &fields)?;
    let (conversation, created) = match existing {
        Some(conversation) if conversation.customer.as_ref().is_some_and(|c| c.id != customer.id) => {
            return Err(HttpError::new(422, "that conversation belongs to another customer"));
        }
        Some(conversation) => (conversation, false),
        None => support::conversation_for(&mut ctx.tx(), &customer, &random_key(), members.as_deref().unwrap_or(&[]))
            .map_err(store_error)?,
    };
    let message =
        support::post_customer_message(&mut ctx.tx(), &conversation, &customer, &content).map_err(store_error)?;
    let object =
        serde_json::to_value(endpoints::support::MessageObject::new(&message, Some(&customer))).unwrap_or(Value::Null);
    Ok((201, json!({"conversation_id": conversation.key, "created_conversation": created, "message": object})))
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
fn create_notification(ctx: &mut Ctx, request: &Request) -> Answer {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let title = short_text(&body, "title")?;
    let message = required_str(&body, "message")?;
    let category = match (optional_str(&body, "category")?, optional_str(&body, "type")?) {
        (Some(c), _) | (None, Some(c)) if !c.trim().is_empty() && c.len() <= MAX_SHORT_TEXT => c,
        (None, None) => "system",
        _ => return Err(HttpError::new(422, "\"category\" (or \"type\") must be a short non-empty string")),
    };
    let link = optional_str(&body, "link")?;
    let new = NewNotification { user_id: &user, category, title, message, link };
    let notification = inbox::notify(&mut ctx.tx(), &new).map_err(store_error)?;
    Ok((
        201,
        json!({"notification": {
            "id": notification.id, "user_id": user.to_json(), "category": notification.category,
            "title": notification.title, "message": notification.message, "link": notification.link,
            "is_read": false, "created_at": crate::model::format_timestamp(notification.created_at),
        }}),
    ))
}

fn alert_json(alert: &crate::store::FraudAlert) -> Value {
    json!({"alert": {
        "id": alert.id, "user": alert.user_id.to_json(), "message": alert.message, "severity": alert.severity,
        "is_resolved": alert.is_resolved, "resolved_at": alert.resolved_at.map(crate::model::format_timestamp),
        "created_at": crate::model::format_timestamp(alert.created_at),
    }})
}

/// `POST /api/fraud-alerts`.
fn create_fraud_alert(ctx: &mut Ctx, request: &Request) -> Answer {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let message = required_str(&body, "message")?;
    let severity = required_str(&body, "severity")?;
    if !SEVERITIES.contains(&severity) {
        return Err(HttpError::new(422, format!("\"severity\" must be one of {}", SEVERITIES.join(", "))));
    }
    let alert = inbox::raise_fraud_alert(&mut ctx.tx(), &user, message, severity).map_err(store_error)?;
    Ok((201, alert_json(&alert)))
}

/// `POST /api/fraud-alerts/{id}/resolve`: resolves once; resolving again changes nothing.
fn resolve_fraud_alert(ctx: &mut Ctx, id: &str) -> Answer {
    let id = path_id(id)?;
    let alert = inbox::resolve_fraud_alert(&mut ctx.tx(), id)
        .map_err(store_error)?
        .ok_or_else(|| HttpError::new(404, "no such alert"))?;
    Ok((200, alert_json(&alert)))
}

/// `POST /api/messages`: a banking message, optionally a reply in a thread.
fn create_banking_message(ctx: &mut Ctx, request: &Request) -> Answer {
    let body = json_body(request)?;
    let user = required_user(&body)?;
    let subject = short_text(&body, "subject")?;
    let text = required_str(&body, "body")?;
    let parent = match body.get("parent_message").or_else(|| body.get("parent_id")) {
        None | Some(Value::Null) => None,
        Some(value) => {
            let id = value.as_i64().ok_or_else(|| HttpError::new(422, "\"parent_message\" must be a message id"))?;
            let parent = inbox::banking_message(&ctx.tx(), id).map_err(store_error)?;
            match parent {
                Some(parent) if parent.user_id == user => Some(parent),
                _ => return Err(HttpError::new(422, "\"parent_message\" is not a message of this user")),
            }
        }
    };
    let thread_id = match (optional_str(&body, "thread_id")?, &parent) {
        (Some(thread), Some(parent)) if thread != parent.thread_id => {
            return Err(HttpError::new(422, "\"thread_id\" differs from the parent message's thread"));
        }
        (Some(thread), _) if !thread.trim().is_empty() && thread.len() <= 100 => thread.to_string(),
        (Some(_), _) => return Err(HttpError::new(422, "\"thread_id\" must be 1-100 characters")),
        (None, Some(parent)) => parent.thread_id.clone(),
        (None, None) => random_key(),
    };
    let new = NewBankingMessage {
        user_id: &user,
        subject,
        body: text,
        thread_id: &thread_id,
        parent_id: parent.as_ref().map(|p| p.id),
    };
    let message = inbox::post_banking_message(&mut ctx.tx(), &new).map_err(store_error)?;
    let object = serde_json::to_value(endpoints::banking::MessageObject::new(&message)).unwrap_or(Value::Null);
    Ok((201, json!({ "message": object })))
}

/// `POST /api/users/{user_id}/disconnect`: closes every connection of the user with
/// each endpoint's authentication close code (a logout).
fn disconnect_user(ctx: &mut Ctx, user: &str) -> Answer {
    let user = UserId::new(&crate::http::decode_path(user));
    let conns = ctx.user_conns(&user).to_vec();
    for conn in &conns {
        ctx.logout_conn(*conn);
    }
    Ok((200, json!({"user_id": user.to_json(), "disconnected": conns.len()})))
}
