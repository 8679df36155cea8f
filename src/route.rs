//! Which path speaks which seed document: the `Endpoint` a request path names, with its
//! parameters, and the close code its document gives a refused token. Shared by the
//! admission of a request, the sessions and the endpoints; it knows no JSON.

use crate::config::ChatProtocol;

/// Close code for a refused token unless a document names another (PRODUCT.md).
pub const AUTH_FAILED: u16 = 4001;
/// Close code for a refused token on document 003's paths (`/ws/v1/...`).
pub const FORBIDDEN_TOKEN: u16 = 4003;

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
            // 003 closes a refused token with 4003; every other document with 4001.
            Endpoint::DirectChat | Endpoint::V1Notifications => FORBIDDEN_TOKEN,
            Endpoint::Rooms { .. }
            | Endpoint::Consultation { .. }
            | Endpoint::SupportChat { .. }
            | Endpoint::ConversationList
            | Endpoint::Presence
            | Endpoint::BankingMessages { .. }
            | Endpoint::FraudAlerts { .. }
            | Endpoint::UserNotifications { .. }
            | Endpoint::Notifications => AUTH_FAILED,
            #[cfg(feature = "echo")]
            Endpoint::Echo => AUTH_FAILED,
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
    fn a_refused_token_closes_with_the_documents_code() {
        assert_eq!(Endpoint::Rooms { room: "x".into() }.auth_close_code(), 4001);
        assert_eq!(Endpoint::Notifications.auth_close_code(), 4001);
        assert_eq!(Endpoint::DirectChat.auth_close_code(), 4003);
        assert_eq!(Endpoint::V1Notifications.auth_close_code(), 4003);
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
