//! The seed protocols: which path speaks which document, and the dispatch of a
//! session's events to the module of its document. Each module under here is the only
//! code that knows its document's JSON shapes and close codes.

pub mod banking;
pub mod consultation;
pub mod direct;
pub mod notifications;
pub mod presence;
pub mod rooms;
pub mod support;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::app::{App, Frame, Refusal, Session, close_code, to_frame};
use crate::config::ChatProtocol;
use crate::store::{Conversation, ConversationKind, StoreError};

/// Close code for a refused token unless a document names another (PRODUCT.md).
pub const AUTH_FAILED: u16 = 4001;

/// A WebSocket endpoint with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// 004: `/ws/chat/{room}/` (by default) and `/ws/rooms/{room}/`.
    Rooms { room: String },
    /// 001: `/ws/consultations/{id}/` (and `/ws/chat/{id}/` by setting).
    Consultation { id: String },
    /// 002: `/ws/conversations/{id}/` (and `/ws/chat/{id}/` by setting).
    SupportChat { id: String },
    /// 002: `/ws/conversations/`.
    ConversationList,
    /// 003: `/ws/v1/chat/`.
    DirectChat,
    /// 001: `/ws/presence/`.
    Presence,
    /// 000: `/ws/messages/{user_id}/`.
    BankingMessages { user_id: String },
    /// 000: `/ws/fraud-alerts/{user_id}/`.
    FraudAlerts { user_id: String },
    /// 000: `/ws/notifications/{user_id}/`.
    UserNotifications { user_id: String },
    /// 001: `/ws/notifications/`.
    Notifications,
    /// 003: `/ws/v1/notifications/`.
    V1Notifications,
    /// `/echo`: every message back, no token (test and benchmark builds only).
    #[cfg(feature = "echo")]
    Echo,
}

impl Endpoint {
    /// Stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Rooms { .. } => "rooms",
            Endpoint::Consultation { .. } => "consultation",
            Endpoint::SupportChat { .. } => "support_chat",
            Endpoint::ConversationList => "conversation_list",
            Endpoint::DirectChat => "direct_chat",
            Endpoint::Presence => "presence",
            Endpoint::BankingMessages { .. } => "banking_messages",
            Endpoint::FraudAlerts { .. } => "fraud_alerts",
            Endpoint::UserNotifications { .. } => "user_notifications",
            Endpoint::Notifications => "notifications",
            Endpoint::V1Notifications => "v1_notifications",
            #[cfg(feature = "echo")]
            Endpoint::Echo => "echo",
        }
    }

    /// The close code its document gives for a refused token.
    pub fn auth_close_code(&self) -> u16 {
        match self {
            Endpoint::Rooms { .. } => rooms::AUTH_FAILED,
            Endpoint::DirectChat => direct::AUTH_FAILED,
            Endpoint::V1Notifications => notifications::V1_AUTH_FAILED,
            _ => AUTH_FAILED,
        }
    }
}

/// Maps a request path (without query) to an endpoint. Paths match with and without
/// the trailing slash; path parameters are percent-decoded but not validated here.
pub fn route(path: &str, chat_protocol: ChatProtocol) -> Option<Endpoint> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let param = |s: &str| crate::http::decode_path(s);
    match segments.as_slice() {
        ["ws", "rooms", room] => Some(Endpoint::Rooms { room: param(room) }),
        ["ws", "chat", id] => Some(match chat_protocol {
            ChatProtocol::Rooms => Endpoint::Rooms { room: param(id) },
            ChatProtocol::Consultation => Endpoint::Consultation { id: param(id) },
            ChatProtocol::Support => Endpoint::SupportChat { id: param(id) },
        }),
        ["ws", "consultations", id] => Some(Endpoint::Consultation { id: param(id) }),
        ["ws", "conversations", id] => Some(Endpoint::SupportChat { id: param(id) }),
        ["ws", "conversations"] => Some(Endpoint::ConversationList),
        ["ws", "presence"] => Some(Endpoint::Presence),
        ["ws", "v1", "chat"] => Some(Endpoint::DirectChat),
        ["ws", "messages", user_id] => Some(Endpoint::BankingMessages { user_id: param(user_id) }),
        ["ws", "fraud-alerts", user_id] => Some(Endpoint::FraudAlerts { user_id: param(user_id) }),
        ["ws", "notifications", user_id] => Some(Endpoint::UserNotifications { user_id: param(user_id) }),
        ["ws", "notifications"] => Some(Endpoint::Notifications),
        ["ws", "v1", "notifications"] => Some(Endpoint::V1Notifications),
        #[cfg(feature = "echo")]
        ["echo"] => Some(Endpoint::Echo),
        _ => None,
    }
}

pub fn open(app: &mut App, session: &mut Session) -> Result<(), Refusal> {
    match session.endpoint.clone() {
        Endpoint::Rooms { room } => rooms::open(app, session, &room),
        Endpoint::Consultation { id } => consultation::open(app, session, &id),
        Endpoint::SupportChat { id } => support::open_chat(app, session, &id),
        Endpoint::ConversationList => support::open_list(app, session),
        Endpoint::DirectChat => direct::open(app, session),
        Endpoint::Presence => presence::open(app, session),
        Endpoint::BankingMessages { user_id } => banking::open_messages(app, session, &user_id),
        Endpoint::FraudAlerts { user_id } => banking::open_fraud_alerts(app, session, &user_id),
        Endpoint::UserNotifications { user_id } => banking::open_notifications(app, session, &user_id),
        Endpoint::Notifications | Endpoint::V1Notifications => notifications::open(app, session),
        #[cfg(feature = "echo")]
        Endpoint::Echo => Ok(()),
    }
}

pub fn on_text(app: &mut App, session: &mut Session, text: &str) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::on_text(app, session, text),
        Endpoint::Consultation { .. } => consultation::on_text(app, session, text),
        Endpoint::SupportChat { .. } => support::on_chat_text(app, session, text),
        Endpoint::ConversationList => support::on_list_text(app, session, text),
        Endpoint::DirectChat => direct::on_text(app, session, text),
        Endpoint::Presence | Endpoint::FraudAlerts { .. } => {}
        Endpoint::BankingMessages { .. } => banking::on_messages_text(app, session, text),
        Endpoint::UserNotifications { .. } | Endpoint::Notifications | Endpoint::V1Notifications => {
            notifications::on_text(app, session, text)
        }
        #[cfg(feature = "echo")]
        Endpoint::Echo => app.send(session.conn, Frame::from(text)),
    }
}

/// A binary frame: no seed protocol has any, so it gets the endpoint's error frame
/// (the echo endpoint sends it back).
pub fn on_binary(app: &mut App, session: &mut Session, data: &tungstenite::Bytes) {
    match session.endpoint {
        #[cfg(feature = "echo")]
        Endpoint::Echo => app.send_binary(session.conn, data.clone()),
        _ => {
            let _ = data;
            let frame = error_frame(&session.endpoint, "Binary frames are not supported; send JSON text.");
            app.send(session.conn, frame);
        }
    }
}

pub fn close(app: &mut App, session: &Session) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::close(app, session),
        _ => {
            for topic in &session.topics {
                app.hub.unsubscribe(topic, session.conn, &session.identity.user_id);
            }
        }
    }
}

/// The endpoint's error frame for a message it cannot act on.
pub fn error_frame(endpoint: &Endpoint, message: &str) -> Frame {
    error_renderer(endpoint)(message)
}

/// The function that renders an endpoint's error frame, kept where rendering is needed
/// only if something fails later (see `App::end_turn`).
pub fn error_renderer(endpoint: &Endpoint) -> crate::app::ErrorRenderer {
    match endpoint {
        Endpoint::Rooms { .. } | Endpoint::SupportChat { .. } | Endpoint::ConversationList | Endpoint::Presence => {
            rooms::error_frame
        }
        Endpoint::Consultation { .. } => consultation::error_frame,
        Endpoint::DirectChat => direct::error_frame,
        Endpoint::BankingMessages { .. }
        | Endpoint::FraudAlerts { .. }
        | Endpoint::UserNotifications { .. }
        | Endpoint::Notifications
        | Endpoint::V1Notifications => notifications::error_frame,
        #[cfg(feature = "echo")]
        Endpoint::Echo => |message| Frame::from(message),
    }
}

#[derive(Serialize)]
struct BareError<'a> {
    error: &'a str,
}

#[derive(Serialize)]
struct TypedError<'a> {
    r#type: &'static str,
    message: &'a str,
}

/// `{"error": "..."}`: the error frame of documents 004 and 002.
pub fn bare_error(message: &str) -> Frame {
    to_frame(&BareError { error: message })
}

/// `{"type": "error", "message": "..."}`: document 003's error frame, also used where a
/// document shows none (001, 000).
pub fn typed_error(message: &str) -> Frame {
    to_frame(&TypedError { r#type: "error", message })
}

/// What `parse_object` says about text that is not JSON at all.
pub const NOT_JSON: &str = "Invalid JSON.";

/// Parses a client frame that must be a JSON object; the error is a message for the
/// endpoint's error frame.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, &'static str> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("Expected a JSON object."),
        Err(_) => Err(NOT_JSON),
    }
}

/// Reads an id a client sent as a JSON integer or a numeric string (documents show both).
pub fn numeric_id(value: Option<&Value>) -> Option<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A member-only conversation the session's user belongs to, or a 4003 refusal.
pub fn member_conversation(
    app: &App,
    session: &Session,
    kind: ConversationKind,
    key: &str,
) -> Result<Conversation, Refusal> {
    let conversation = app
        .store
        .conversation(kind, key)
        .map_err(internal)?
        .ok_or(Refusal::new(close_code::FORBIDDEN, "no such conversation"))?;
    if !app.store.is_member(conversation.id, &session.identity.user_id).map_err(internal)? {
        return Err(Refusal::new(close_code::FORBIDDEN, "not a member of this conversation"));
    }
    Ok(conversation)
}

/// A store failure while opening a session: logged, and the session closes with 1011.
pub fn internal(e: StoreError) -> Refusal {
    log::error!("store error: {e}");
    Refusal::new(close_code::INTERNAL_ERROR, "internal error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_with_and_without_trailing_slash() {
        let rooms = Some(Endpoint::Rooms { room: "lobby".into() });
        assert_eq!(route("/ws/chat/lobby/", ChatProtocol::Rooms), rooms);
        assert_eq!(route("/ws/chat/lobby", ChatProtocol::Rooms), rooms);
        assert_eq!(route("/ws/rooms/lobby/", ChatProtocol::Rooms), rooms);
        assert_eq!(route("/ws/chat/a%20b/", ChatProtocol::Rooms), Some(Endpoint::Rooms { room: "a b".into() }));
        assert_eq!(route("/ws/nope/", ChatProtocol::Rooms), None);
        assert_eq!(route("/ws/chat/a/b/", ChatProtocol::Rooms), None);
        assert_eq!(route("", ChatProtocol::Rooms), None);
    }

    #[test]
    fn chat_paths_follow_the_setting_and_the_others_stay() {
        assert_eq!(route("/ws/chat/c1/", ChatProtocol::Consultation), Some(Endpoint::Consultation { id: "c1".into() }));
        assert_eq!(route("/ws/chat/c1", ChatProtocol::Support), Some(Endpoint::SupportChat { id: "c1".into() }));
        assert_eq!(
            route("/ws/consultations/c1/", ChatProtocol::Rooms),
            Some(Endpoint::Consultation { id: "c1".into() })
        );
        assert_eq!(route("/ws/conversations/", ChatProtocol::Rooms), Some(Endpoint::ConversationList));
        assert_eq!(route("/ws/conversations/x/", ChatProtocol::Rooms), Some(Endpoint::SupportChat { id: "x".into() }));
        assert_eq!(route("/ws/v1/chat", ChatProtocol::Rooms), Some(Endpoint::DirectChat));
        assert_eq!(route("/ws/presence/", ChatProtocol::Rooms), Some(Endpoint::Presence));
        assert_eq!(route("/ws/notifications/", ChatProtocol::Rooms), Some(Endpoint::Notifications));
        assert_eq!(
            route("/ws/notifications/7/", ChatProtocol::Rooms),
            Some(Endpoint::UserNotifications { user_id: "7".into() })
        );
        assert_eq!(route("/ws/v1/notifications", ChatProtocol::Rooms), Some(Endpoint::V1Notifications));
        assert_eq!(
            route("/ws/messages/7", ChatProtocol::Rooms),
            Some(Endpoint::BankingMessages { user_id: "7".into() })
        );
        assert_eq!(
            route("/ws/fraud-alerts/7/", ChatProtocol::Rooms),
            Some(Endpoint::FraudAlerts { user_id: "7".into() })
        );
    }
}
