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

use super::parse_object;
use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, close_code, to_frame};
use crate::engine::{OpenLoad, Opened, Replay, Snapshot, Target};
use crate::hub::Topic;
use crate::model::{Seq, UserId, format_timestamp};
use crate::request::{Answer, Done, Read, Request, Write};
use crate::store::{ConversationKind, ConversationSummary, Customer, StoredMessage};

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
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct RecentMessages<'a> {
    r#type: &'static str,
    messages: Vec<MessageObject<'a>>,
    /// The stream position the session joined at.
    seq: Seq,
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
    seq: Seq,
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
    /// The position of the user's stream the list reflects.
    seq: Seq,
}

#[derive(Serialize)]
struct NewCustomerMessage<'a> {
    r#type: &'static str,
    conversation_id: &'a str,
    message: MessageObject<'a>,
    seq: Seq,
}

pub fn error_frame(message: &str) -> Frame {
    super::bare_error(message)
}

pub fn chat_message_frame(message: &StoredMessage, customer: Option<&Customer>) -> Frame {
    to_frame(&ChatMessage { r#type: "chat_message", message: MessageObject::new(message, customer), seq: message.seq })
}

/// A stored event of a conversation's stream as the chat shows it: messages, and a
/// member having read them.
pub fn render_chat(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::Message { message, customer, .. } => Some(chat_message_frame(message, customer.as_ref())),
        EventBody::MessagesRead { user_id } => {
            Some(to_frame(&MessagesRead { r#type: "messages_read", user_id, seq: event.seq }))
        }
        _ => None,
    }
}

/// A stored event of the user's stream as the conversation list shows it.
pub fn render_list(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::CustomerMessage { conversation_key, message, customer } => Some(to_frame(&NewCustomerMessage {
            r#type: "new_customer_message",
            conversation_id: conversation_key,
            message: MessageObject::new(message, Some(customer)),
            seq: event.seq,
        })),
        _ => None,
    }
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

/// What opening a conversation chat needs: membership and history.
pub fn load_chat(ctx: &Ctx, session: &Session, id: &str) -> OpenLoad {
    super::member_history(ctx, session, ConversationKind::Support, id)
}

/// On connect: `recent_messages` (or what was missed).
pub fn opened_chat(ctx: &mut Ctx, session: &mut Session, opened: Opened) -> Result<(), Refusal> {
    let Some(conversation) = opened.conversation else {
        return Err(Refusal::new(close_code::INTERNAL_ERROR, "internal error"));
    };
    let position = opened.position;
    let mut frames = super::start_frames(session, opened.start, position, |snapshot| match snapshot {
        Snapshot::History(history) => {
            let customer = conversation.customer.as_ref();
            let recent = RecentMessages {
                r#type: "recent_messages",
                messages: history.iter().map(|m| MessageObject::new(m, customer)).collect(),
                seq: position,
            };
            vec![to_frame(&recent)]
        }
        _ => Vec::new(),
    });
    frames.extend(super::join(ctx, session, opened.stream, position));
    let topic = Topic::Conversation(conversation.id);
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    session.conversation = Some(conversation.id);
    ctx.send_all(session.conn, frames);
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
            let (agent, content) = (session.identity.clone(), content.to_string());
            let post = Write::PostAgentMessage { conversation: conversation_id, agent, content };
            ctx.ask(Then::Session { conn: session.conn, render: super::posted }, Request::Write(post));
        }
        Some("typing") => {
            let is_typing = object.get("is_typing").and_then(Value::as_bool).unwrap_or(true);
            let frame =
                to_frame(&TypingIndicator { r#type: "typing_indicator", username: &session.identity.name, is_typing });
            ctx.publish(&topic, frame, Some(session.conn), false);
        }
        Some("mark_read") => {
            let read = Write::ReadAll { conversation: conversation_id, user: session.identity.user_id.clone() };
            ctx.ask(Then::Session { conn: session.conn, render: marked_read }, Request::Write(read));
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

/// What opening the conversation list needs: the user's support conversations.
pub fn load_list(session: &Session) -> OpenLoad {
    OpenLoad {
        user: session.identity.user_id.clone(),
        target: Target::User,
        since: None,
        replay: Replay::ConversationList,
        unread_count: false,
        display_name: false,
    }
}

/// On connect: `conversations_list` (or what was missed).
pub fn opened_list(ctx: &mut Ctx, session: &mut Session, opened: Opened) -> Result<(), Refusal> {
    let position = opened.position;
    let mut frames = super::start_frames(session, opened.start, position, |snapshot| match snapshot {
        Snapshot::ConversationList(summaries) => vec![conversations_list(&summaries, position)],
        _ => Vec::new(),
    });
    frames.extend(super::join(ctx, session, opened.stream, position));
    let topic = Topic::ConversationList(session.identity.user_id.clone());
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    ctx.send_all(session.conn, frames);
    Ok(())
}

pub fn on_list_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let Some(object) = parse(ctx, session, text) else { return };
    match object.get("type").and_then(Value::as_str) {
        Some("get_conversations" | "refresh_conversations") => {
            let list = Read::ConversationList(session.identity.user_id.clone());
            ctx.ask(Then::Session { conn: session.conn, render: listed }, Request::Read(list));
        }
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

fn marked_read(ctx: &mut Ctx, session: &Session, answer: Answer) {
    if let Err(e) = answer {
        log::error!("cannot store a read position: {e}");
        ctx.send(session.conn, error_frame("Could not mark messages as read."));
    }
}

/// `conversations_list` asked for again.
fn listed(ctx: &mut Ctx, session: &Session, answer: Answer) {
    let frame = match answer {
        Ok(Done::ConversationList { summaries, position }) => conversations_list(&summaries, position),
        Ok(other) => error_frame(&other.unexpected("conversation list").to_string()),
        Err(e) => {
            log::error!("cannot list conversations: {e}");
            error_frame("Could not load conversations.")
        }
    };
    ctx.send(session.conn, frame);
}

fn conversations_list(summaries: &[ConversationSummary], position: Seq) -> Frame {
    to_frame(&ConversationsList {
        r#type: "conversations_list",
        conversations: summaries.iter().map(conversation_object).collect(),
        seq: position,
    })
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
