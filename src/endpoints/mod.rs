//! The seed protocols: which path speaks which document, and the dispatch of a
//! session's events to the module of its document. Each module under here is the only
//! code that knows its document's JSON shapes.

pub mod rooms;

use crate::app::{App, Frame, Refusal, Session};
use crate::config::ChatProtocol;

/// Close code for a refused token unless a document names another (PRODUCT.md).
pub const AUTH_FAILED: u16 = 4001;

/// A WebSocket endpoint with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// 004: `/ws/chat/{room}/` (by default) and `/ws/rooms/{room}/`.
    Rooms { room: String },
}

impl Endpoint {
    /// Stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Rooms { .. } => "rooms",
        }
    }

    /// The close code its document gives for a refused token.
    pub fn auth_close_code(&self) -> u16 {
        match self {
            Endpoint::Rooms { .. } => rooms::AUTH_FAILED,
        }
    }
}

/// Maps a request path (without query) to an endpoint. Paths match with and without
/// the trailing slash; path parameters are percent-decoded but not validated here.
pub fn route(path: &str, chat_protocol: ChatProtocol) -> Option<Endpoint> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let param = |s: &str| crate::http::percent_decode(s);
    match segments.as_slice() {
        ["ws", "rooms", room] => Some(Endpoint::Rooms { room: param(room) }),
        ["ws", "chat", room] => match chat_protocol {
            ChatProtocol::Rooms => Some(Endpoint::Rooms { room: param(room) }),
            ChatProtocol::Consultation | ChatProtocol::Support => None,
        },
        _ => None,
    }
}

pub fn open(app: &mut App, session: &mut Session) -> Result<(), Refusal> {
    match session.endpoint.clone() {
        Endpoint::Rooms { room } => rooms::open(app, session, &room),
    }
}

pub fn on_text(app: &mut App, session: &mut Session, text: &str) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::on_text(app, session, text),
    }
}

pub fn close(app: &mut App, session: &Session) {
    match session.endpoint {
        Endpoint::Rooms { .. } => rooms::close(app, session),
    }
}

/// The endpoint's error frame for a message it cannot act on.
pub fn error_frame(endpoint: &Endpoint, message: &str) -> Frame {
    match endpoint {
        Endpoint::Rooms { .. } => rooms::error_frame(message),
    }
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
}
