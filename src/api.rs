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

use serde_json::{Value, json};

use crate::app::App;
use crate::endpoints::rooms;
use crate::http::{HttpError, Request, json_response, response};
use crate::model::{Identity, UserId};

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

type Answer = Result<(u16, Value), HttpError>;

/// Handles one request. Returns the response bytes and whether the answer reports
/// stored data (and so must become an error if the commit fails).
pub fn handle(app: &mut App, request: &Request) -> (Vec<u8>, bool) {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if request.method == "GET" && path == "/healthz" {
        return (json_response(200, &json!({"status": "ok"})), false);
    }
    if let Err(e) = authorize(app, request) {
        return (e.to_response(), false);
    }
    let answer: Answer = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => {
            let body = app.metrics.render();
            return (response(200, "text/plain; version=0.0.4", body.as_bytes()), false);
        }
        ("GET", ["api", "online"]) => Ok((200, online(app))),
        ("POST", ["api", "rooms", room, "messages"]) => post_room_message(app, room, request),
        (_, ["metrics"] | ["api", "online"] | ["api", "rooms", _, "messages"]) => {
            Err(HttpError::new(405, "method not allowed"))
        }
        _ => Err(HttpError::new(404, "no such API route")),
    };
    match answer {
        Ok((status, body)) => (json_response(status, &body), status == 201),
        Err(e) => (e.to_response(), false),
    }
}

fn authorize(app: &App, request: &Request) -> Result<(), HttpError> {
    let presented = request
        .header_str("Authorization")
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), app.api_key.as_bytes()) => Ok(()),
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

fn online(app: &App) -> Value {
    let mut users: Vec<&UserId> = app.online_users().collect();
    users.sort();
    json!({ "users": users.iter().map(|u| json!({"user_id": u.to_json(), "connections": app.user_conns(u).len()})).collect::<Vec<_>>() })
}

/// Publishes a message into a room as a given sender (default: "system").
fn post_room_message(app: &mut App, room: &str, request: &Request) -> Answer {
    let room = crate::http::percent_decode(room);
    if !rooms::valid_room_name(&room) {
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
    let stored = rooms::post_from_api(app, &room, &sender, message)
        .map_err(|e| HttpError::new(500, format!("could not store the message: {e}")))?;
    Ok((201, json!({"id": stored.id, "room": room, "created_at": crate::model::format_timestamp(stored.created_at)})))
}
