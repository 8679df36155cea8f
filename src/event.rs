//! Stored events in the domain's terms: what features record on a stream (and the
//! store keeps in `events`), what endpoints render for those who listen, live or to a
//! client resuming with `?since=`. Each has its stream's seq; the JSON form is the
//! `events` row's payload, so any document can be rendered from it again later.

use serde::{Deserialize, Serialize};

use crate::hub::ConnId;
use crate::model::{Micros, Seq, StreamId, UserId};
use crate::store::{BankingMessage, ConversationKind, Customer, FraudAlert, Notification, StoredMessage};

/// What happened, as stored. Conversation streams (`c:<id>`) carry `Message`,
/// `ReadReceipt`, `MessagesRead` and `MembersChanged`; user streams (`u:<id>`) carry the
/// rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A message in a room, consultation or support conversation (with the customer for
    /// a support conversation, whose messages show them).
    Message { conversation: ConversationKind, message: StoredMessage, customer: Option<Customer> },
    /// 001: a user read one message of a consultation.
    ReadReceipt { message_id: i64, user_id: UserId, user_name: String, read_at: Micros },
    /// 002: a user read a support conversation up to its newest message.
    MessagesRead { user_id: UserId },
    /// 003: a 1:1 message, on the recipient's stream.
    DirectMessage { message: StoredMessage },
    /// 003: the other user of a pair read it, on the sender's stream.
    DirectRead { reader_id: UserId, at: Micros },
    /// 002: a customer wrote in one of the user's support conversations (their list).
    CustomerMessage { conversation_key: String, message: StoredMessage, customer: Customer },
    /// A notification for the user (every notification document), with the user's
    /// unread count right after it (001 and 003 send it along).
    Notification { notification: Notification, unread_count: i64 },
    /// 000: a fraud alert raised or resolved.
    FraudAlert { alert: FraudAlert },
    /// 000: a banking message stored or changed (read, or a reply in its thread).
    BankingMessage { message: BankingMessage },
    /// The backend changed a member-only conversation's members: sessions of removed
    /// members on it close (4003). No document shows it as a frame.
    MembersChanged { added: Vec<UserId>, removed: Vec<UserId> },
    /// The backend logged the user out: every session of theirs closes with its
    /// endpoint's authentication code. No document shows it as a frame.
    Logout,
}

impl EventBody {
    /// The `events.kind` column: the tag of the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Message { .. } => "message",
            EventBody::ReadReceipt { .. } => "read_receipt",
            EventBody::MessagesRead { .. } => "messages_read",
            EventBody::DirectMessage { .. } => "direct_message",
            EventBody::DirectRead { .. } => "direct_read",
            EventBody::CustomerMessage { .. } => "customer_message",
            EventBody::Notification { .. } => "notification",
            EventBody::FraudAlert { .. } => "fraud_alert",
            EventBody::BankingMessage { .. } => "banking_message",
            EventBody::MembersChanged { .. } => "members_changed",
            EventBody::Logout => "logout",
        }
    }
}

/// An event with its place: the stream, its seq there, and the connection that caused
/// it when that one must not hear of it live (a read receipt's reader).
#[derive(Debug, Clone)]
pub struct Event {
    pub stream: StreamId,
    pub seq: Seq,
    pub body: EventBody,
    pub except: Option<ConnId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_reads_back_and_names_its_kind() {
        let bodies = [
            EventBody::MessagesRead { user_id: UserId::new("7") },
            EventBody::DirectRead { reader_id: UserId::new("ann"), at: 5 },
            EventBody::MembersChanged { added: vec![UserId::new("7")], removed: vec![UserId::new("bo")] },
            EventBody::Logout,
            EventBody::Message {
                conversation: ConversationKind::Room,
                message: StoredMessage {
                    id: 1,
                    conversation_id: 2,
                    sender_id: Some(UserId::new("9")),
                    sender_name: "bo".into(),
                    content: "hi \"there\"".into(),
                    message_type: "text".into(),
                    created_at: 4,
                    customer_id: None,
                    is_ai_response: false,
                    is_answered: false,
                    seq: Some(3),
                },
                customer: None,
            },
        ];
        for body in bodies {
            let json = serde_json::to_string(&body).unwrap();
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value["kind"], body.kind());
            assert_eq!(serde_json::from_str::<EventBody>(&json).unwrap(), body);
        }
    }
}
