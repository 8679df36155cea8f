//! Document 002, the customer-support inbox.
//!
//! Conversation chat at `/ws/conversations/{id}/` (and `/ws/chat/{id}/` when
//! `SWITCHBOARD_CHAT_PROTOCOL=support`): member-only; `recent_messages` on connect;
//! `chat_message{content}` is stored as an agent (`support`) message and sent to every
//! connection of the conversation; `typing` → `typing_indicator` to the others;
//! `mark_read` moves the user's read position and sends `messages_read` to everyone.
//!
//! Conversation list at `/ws/conversations/`: `conversations_list` on connect and on
//! `get_conversations` / `refresh_conversations`; `new_customer_message` whenever a
//! customer writes in one of the user's conversations (`post_customer_message`, used by
//! the server API). Errors are `{"error": ...}`; invalid JSON is exactly
//! `{"error": "Invalid JSON format"}`.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{member_conversation, parse_object};
use crate::context::{Ctx, Frame, Refusal, Session, to_frame};
use crate::hub::Topic;
use crate::model::{UserId, format_timestamp};
use crate::store::{
    Conversation, ConversationKind, ConversationSummary, Customer, NewMessage, StoreError, StoredMessage,
};

pub const INVALID_JSON: &str = "Invalid JSON format";

#[derive(Serialize)]
struct MessageCustomer<'a> {
    id: i64,
    first_name: &'a str,
    last_name: &'a str,
    source: &'a str,
}

#[derive(Serialize)]
pub struct MessageObject<'a> {
    id: String,
    content: &'a str,
    r#type: &'a str,
    customer: Option<MessageCustomer<'a>>,
    is_ai_response: bool,
    is_answered: bool,
    created_at: String,
}

impl<'a> MessageObject<'a> {
    pub fn new(message: &'a StoredMessage, customer: Option<&'a Customer>) -> MessageObject<'a> {
        MessageObject {
            id: message.id.to_string(),
            content: &message.content,
            r#type: &message.message_type,
            customer: customer.map(|c| MessageCustomer {
                id: c.id,
                first_name: &c.first_name,
                last_name: &c.last_name,
                source: &c.source,
            }),
            is_ai_response: message.is_ai_response,
            is_answered: message.is_answered,
            created_at: format_timestamp(message.created_at),
        }
    }
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    r#type: &'static str,
    message: MessageObject<'a>,
}

#[derive(Serialize)]
struct RecentMessages<'a> {
    r#type: &'static str,
    messages: Vec<MessageObject<'a>>,
}

#[derive(Serialize)]
struct TypingIndicator<'a> {
    r#type: &'static str,
    username: &'a str,
    is_typing: bool,
}

#[derive(Serialize)]
struct MessagesRead<'a> {
    r#type: &'static str,
    user_id: &'a UserId,
}

#[derive(Serialize)]
struct ListCustomer<'a> {
    id: i64,
    first_name: &'a str,
    last_name: &'a str,
    source: &'a str,
    profile_picture: Option<&'a str>,
}

#[derive(Serialize)]
struct LastMessage<'a> {
    id: String,
    content: &'a str,
    r#type: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct ConversationObject<'a> {
    id: &'a str,
    title: &'a str,
    status: &'a str,
    customer: Option<ListCustomer<'a>>,
    priority: i64,
    created_at: String,
    updated_at: String,
    last_message: Option<LastMessage<'a>>,
    unread_count: i64,
}

#[derive(Serialize)]
struct ConversationsList<'a> {
    r#type: &'static str,
    conversations: Vec<ConversationObject<'a>>,
}

#[derive(Serialize)]
struct NewCustomerMessage<'a> {
    r#type: &'static str,
    conversation_id: &'a str,
    message: MessageObject<'a>,
}

pub fn error_frame(message: &str) -> Frame {
    super::bare_error(message)
}

fn chat_message_frame(message: &StoredMessage, customer: Option<&Customer>) -> Frame {
    to_frame(&ChatMessage { r#type: "chat_message", message: MessageObject::new(message, customer) })
}

/// Parses a frame; invalid JSON gets the document's exact error.
fn parse(ctx: &mut Ctx, session: &Session, text: &str) -> Option<Map<String, Value>> {
    match parse_object(text) {
        Ok(object) => Some(object),
        Err(super::NOT_JSON) => {
            ctx.send(session.conn, error_frame(INVALID_JSON));
            None
        }
        Err(message) => {
            ctx.send(session.conn, error_frame(message));
            None
        }
    }
}

pub fn open_chat(ctx: &mut Ctx, session: &mut Session, id: &str) -> Result<(), Refusal> {
    let conversation = member_conversation(ctx, session, ConversationKind::Support, id)?;
    let history = ctx.store.recent_messages(conversation.id, ctx.config.history_limit).map_err(super::internal)?;
    let topic = Topic::Conversation(conversation.id);
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    session.conversation = Some(conversation.id);
    let customer = conversation.customer.as_ref();
    let recent = RecentMessages {
        r#type: "recent_messages",
        messages: history.iter().map(|m| MessageObject::new(m, customer)).collect(),
    };
    ctx.send(session.conn, to_frame(&recent));
    Ok(())
}

pub fn on_chat_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let Some(conversation_id) = session.conversation else { return };
    let Some(object) = parse(ctx, session, text) else { return };
    let topic = Topic::Conversation(conversation_id);
    match object.get("type").and_then(Value::as_str) {
        Some("chat_message") => {
            let content = match object.get("content") {
                Some(Value::String(content)) if !content.trim().is_empty() => content.as_str(),
                Some(Value::String(_)) => return ctx.send(session.conn, error_frame("Message content is empty.")),
                _ => return ctx.send(session.conn, error_frame("\"content\" must be a string.")),
            };
            match post_agent_message(ctx, session, conversation_id, content) {
                Ok((message, conversation)) => {
                    ctx.metrics.messages_stored += 1;
                    let frame = chat_message_frame(&message, conversation.customer.as_ref());
                    ctx.publish(&topic, frame, None, true);
                }
                Err(e) => {
                    log::error!("cannot store a support message: {e}");
                    ctx.send(session.conn, error_frame("Message could not be stored."));
                }
            }
        }
        Some("typing") => {
            let is_typing = object.get("is_typing").and_then(Value::as_bool).unwrap_or(true);
            let frame =
                to_frame(&TypingIndicator { r#type: "typing_indicator", username: &session.identity.name, is_typing });
            ctx.publish(&topic, frame, Some(session.conn), false);
        }
        Some("mark_read") => {
            let result = ctx
                .store
                .latest_message_id(conversation_id)
                .and_then(|latest| ctx.store.advance_read(conversation_id, &session.identity.user_id, latest));
            match result {
                Ok(()) => {
                    let frame = to_frame(&MessagesRead { r#type: "messages_read", user_id: &session.identity.user_id });
                    ctx.publish(&topic, frame, None, true);
                }
                Err(e) => {
                    log::error!("cannot store a read position: {e}");
                    ctx.send(session.conn, error_frame("Could not mark messages as read."));
                }
            }
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

/// Stores an agent's reply; the customer's earlier messages become answered.
fn post_agent_message(
    ctx: &mut Ctx,
    session: &Session,
    conversation_id: i64,
    content: &str,
) -> Result<(StoredMessage, Conversation), StoreError> {
    let conversation = ctx.store.existing_conversation(conversation_id)?;
    ctx.store.mark_customer_messages_answered(conversation_id)?;
    let message = ctx.store.insert_message(
        NewMessage {
            conversation_id,
            sender: Some((&session.identity.user_id, &session.identity.name)),
            content,
            message_type: "support",
            customer_id: conversation.customer.as_ref().map(|c| c.id),
            is_ai_response: false,
            is_answered: true,
        },
        ctx.now,
    )?;
    Ok((message, conversation))
}

pub fn open_list(ctx: &mut Ctx, session: &mut Session) -> Result<(), Refusal> {
    let topic = Topic::ConversationList(session.identity.user_id.clone());
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    send_list(ctx, session);
    Ok(())
}

pub fn on_list_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let Some(object) = parse(ctx, session, text) else { return };
    match object.get("type").and_then(Value::as_str) {
        Some("get_conversations" | "refresh_conversations") => send_list(ctx, session),
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

fn send_list(ctx: &mut Ctx, session: &Session) {
    match ctx.store.conversations_of(&session.identity.user_id, ConversationKind::Support) {
        Ok(summaries) => {
            let frame = to_frame(&ConversationsList {
                r#type: "conversations_list",
                conversations: summaries.iter().map(conversation_object).collect(),
            });
            ctx.send(session.conn, frame);
        }
        Err(e) => {
            log::error!("cannot list conversations: {e}");
            ctx.send(session.conn, error_frame("Could not load conversations."));
        }
    }
}

fn conversation_object(summary: &ConversationSummary) -> ConversationObject<'_> {
    let conversation = &summary.conversation;
    ConversationObject {
        id: &conversation.key,
        title: &conversation.title,
        status: &conversation.status,
        customer: conversation.customer.as_ref().map(|c| ListCustomer {
            id: c.id,
            first_name: &c.first_name,
            last_name: &c.last_name,
            source: &c.source,
            profile_picture: c.profile_picture.as_deref(),
        }),
        priority: conversation.priority,
        created_at: format_timestamp(conversation.created_at),
        updated_at: format_timestamp(conversation.updated_at),
        last_message: summary.last_message.as_ref().map(|m| LastMessage {
            id: m.id.to_string(),
            content: &m.content,
            r#type: &m.message_type,
            created_at: format_timestamp(m.created_at),
        }),
        unread_count: summary.unread_count,
    }
}

/// A customer's message from an external platform reaches the conversation's sockets
/// as `chat_message` and every member's list sockets as `new_customer_message`.
pub fn deliver_customer_message(
    ctx: &mut Ctx,
    conversation: &Conversation,
    customer: &Customer,
    message: &StoredMessage,
) {
    ctx.publish(&Topic::Conversation(conversation.id), chat_message_frame(message, Some(customer)), None, true);
    let notice = to_frame(&NewCustomerMessage {
        r#type: "new_customer_message",
        conversation_id: &conversation.key,
        message: MessageObject::new(message, Some(customer)),
    });
    match ctx.store.members(conversation.id) {
        Ok(members) => {
            for member in members {
                ctx.publish_to_user(&Topic::ConversationList(member.clone()), &member, notice.clone(), true);
            }
        }
        Err(e) => log::error!("cannot read the members of conversation {}: {e}", conversation.id),
    }
}
