//! Document 001, consultation chat: `/ws/consultations/{id}/` (and `/ws/chat/{id}/` when
//! `SWITCHBOARD_CHAT_PROTOCOL=consultation`).
//!
//! Member-only. On connect `connection_established`, then history as `chat_message`
//! frames. `chat_message` is stored and sent to every member's connections; `typing`
//! becomes `typing_indicator` for the others; `read_receipt` is stored once and the others
//! get a `read_receipt` frame. Errors are `{"type": "error", "message": ...}`. Ids are
//! JSON strings, as the document shows them.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{numeric_id, parse_object};
use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, close_code, to_frame};
use crate::engine::{OpenLoad, Opened, Snapshot};
use crate::hub::Topic;
use crate::model::{Seq, StreamId, format_timestamp};
use crate::request::{Answer, Failed, Request, Write};
use crate::store::{ConversationKind, StoredMessage};

#[derive(Serialize)]
struct ConnectionEstablished<'a> {
    r#type: &'static str,
    message: &'static str,
    consultation_id: &'a str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    r#type: &'static str,
    data: MessageData<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct MessageData<'a> {
    id: String,
    sender_id: &'a str,
    sender_name: &'a str,
    content: &'a str,
    created_at: String,
    message_type: &'a str,
}

#[derive(Serialize)]
struct TypingIndicator<'a> {
    r#type: &'static str,
    user_id: &'a str,
    user_name: &'a str,
    is_typing: bool,
}

#[derive(Serialize)]
struct ReadReceipt<'a> {
    r#type: &'static str,
    message_id: String,
    user_id: &'a str,
    user_name: &'a str,
    read_at: String,
    seq: Seq,
}

/// The document shows no error frame; document 003's shape serves.
pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
}

pub fn chat_message_frame(message: &StoredMessage) -> Frame {
    to_frame(&ChatMessage {
        r#type: "chat_message",
        data: MessageData {
            id: message.id.to_string(),
            sender_id: message.sender_id.as_ref().map_or("", |id| id.as_str()),
            sender_name: &message.sender_name,
            content: &message.content,
            created_at: format_timestamp(message.created_at),
            message_type: &message.message_type,
        },
        seq: message.seq,
    })
}

/// A stored event as this document shows it: messages and read receipts.
pub fn render(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::Message { message, .. } => Some(chat_message_frame(message)),
        EventBody::ReadReceipt { message_id, user_id, user_name, read_at } => Some(to_frame(&ReadReceipt {
            r#type: "read_receipt",
            message_id: message_id.to_string(),
            user_id: user_id.as_str(),
            user_name,
            read_at: format_timestamp(*read_at),
            seq: event.seq,
        })),
        _ => None,
    }
}

/// What opening a consultation needs: membership and history.
pub fn load(ctx: &Ctx, session: &Session, id: &str) -> OpenLoad {
    super::member_history(ctx, session, ConversationKind::Consultation, id)
}

/// On connect: `connection_established`, then the history (or what was missed).
pub fn opened(ctx: &mut Ctx, session: &mut Session, id: &str, opened: Opened) -> Result<(), Refusal> {
    let StreamId::Conversation(conversation) = opened.stream else {
        return Err(Refusal::new(close_code::INTERNAL_ERROR, "internal error"));
    };
    let mut frames = super::start_frames(session, opened.start, opened.position, |snapshot| match snapshot {
        Snapshot::History(history) => history.iter().map(chat_message_frame).collect(),
        _ => Vec::new(),
    });
    frames.extend(super::join(ctx, session, opened.stream, opened.position));
    let topic = Topic::Conversation(conversation);
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    session.conversation = Some(conversation);
    let established =
        ConnectionEstablished { r#type: "connection_established", message: "Connected to chat", consultation_id: id };
    ctx.send(session.conn, to_frame(&established));
    ctx.send_all(session.conn, frames);
    Ok(())
}

pub fn on_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let Some(conversation) = session.conversation else { return };
    let object = match parse_object(text) {
        Ok(object) => object,
        Err(message) => return ctx.send(session.conn, error_frame(message)),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("chat_message") => post(ctx, session, conversation, &object),
        Some("typing") => {
            let is_typing = object.get("is_typing").and_then(Value::as_bool).unwrap_or(true);
            let frame = to_frame(&TypingIndicator {
                r#type: "typing_indicator",
                user_id: session.identity.user_id.as_str(),
                user_name: &session.identity.name,
                is_typing,
            });
            ctx.publish(&Topic::Conversation(conversation), frame, Some(session.conn), false);
        }
        Some("read_receipt") => read_receipt(ctx, session, conversation, &object),
        Some(other) => ctx.send(session.conn, error_frame(&format!("Unknown message type: {other}"))),
        None => ctx.send(session.conn, error_frame("Missing \"type\".")),
    }
}

fn post(ctx: &mut Ctx, session: &Session, conversation: i64, object: &Map<String, Value>) {
    let Some(content) = object.get("message").and_then(Value::as_str) else {
        return ctx.send(session.conn, error_frame("\"message\" must be a string."));
    };
    let (sender, content) = (session.identity.clone(), content.to_string());
    let post = Write::Post { kind: ConversationKind::Consultation, conversation, sender, content };
    ctx.ask(Then::Session { conn: session.conn, render: super::posted }, Request::Write(post));
}

fn read_receipt(ctx: &mut Ctx, session: &Session, conversation: i64, object: &Map<String, Value>) {
    let Some(message_id) = numeric_id(object.get("message_id")) else {
        return ctx.send(session.conn, error_frame("No such message in this consultation."));
    };
    let read = Write::ReadOne { conversation, message_id, reader: session.identity.clone(), conn: session.conn };
    ctx.ask(Then::Session { conn: session.conn, render: receipt_stored }, Request::Write(read));
}

fn receipt_stored(ctx: &mut Ctx, session: &Session, answer: Answer) {
    match answer {
        Ok(_) => {}
        Err(Failed::NotFound) => ctx.send(session.conn, error_frame("No such message in this consultation.")),
        Err(e) => {
            log::error!("cannot store a read receipt: {e}");
            ctx.send(session.conn, error_frame("Read receipt could not be stored."));
        }
    }
}
