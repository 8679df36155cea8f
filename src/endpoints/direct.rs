//! Document 003, 1:1 direct chat: `/ws/v1/chat/`. A refused token closes with 4003.
//!
//! `chat_message{message, recipient_id}` is stored in the pair's conversation and sent to
//! every direct-chat connection of the recipient (not the sender: the document's frame is
//! a message *from another user*). Unread messages are delivered on connect, so nothing
//! sent while the recipient was offline is lost. `mark_read{sender_id}` moves the reader's
//! position and tells the sender (`messages_read`); `typing{recipient_id}` becomes
//! `user_typing` for the recipient. Errors are `{"type": "error", "message": ...}`. User
//! ids are numbers when they are integers, as in the document.

use serde::Serialize;
use serde_json::{Map, Value};

use super::parse_object;
use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, to_frame};
use crate::engine::{OpenLoad, Opened, Replay, Snapshot, Target};
use crate::hub::Topic;
use crate::model::{Seq, UserId, format_timestamp};
use crate::request::{Answer, Done, Failed, Read, Request, Write};
use crate::store::StoredMessage;

/// Unread messages delivered on connect, at most.
const OFFLINE_DELIVERY_LIMIT: usize = 500;

#[derive(Serialize)]
struct ChatMessage<'a> {
    r#type: &'static str,
    id: i64,
    sender_id: Option<&'a UserId>,
    sender_name: &'a str,
    message: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct MessagesRead<'a> {
    r#type: &'static str,
    reader_id: &'a UserId,
    timestamp: String,
    seq: Seq,
}

#[derive(Serialize)]
struct UserTyping<'a> {
    r#type: &'static str,
    sender_id: &'a UserId,
}

pub fn error_frame(message: &str) -> Frame {
    super::typed_error(message)
}

fn chat_message_frame(message: &StoredMessage) -> Frame {
    to_frame(&ChatMessage {
        r#type: "chat_message",
        id: message.id,
        sender_id: message.sender_id.as_ref(),
        sender_name: &message.sender_name,
        message: &message.content,
        timestamp: format_timestamp(message.created_at),
        seq: message.seq,
    })
}

/// A stored event of the user's stream as this document shows it: messages to them, and
/// the other user having read theirs.
pub fn render(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::DirectMessage { message } => Some(chat_message_frame(message)),
        EventBody::DirectRead { reader_id, at } => Some(to_frame(&MessagesRead {
            r#type: "messages_read",
            reader_id,
            timestamp: format_timestamp(*at),
            seq: event.seq,
        })),
        _ => None,
    }
}

/// What opening needs: the unread messages to this user.
pub fn load(session: &Session) -> OpenLoad {
    OpenLoad {
        user: session.identity.user_id.clone(),
        target: Target::User,
        since: None,
        replay: Replay::UnreadDirect { limit: OFFLINE_DELIVERY_LIMIT },
        unread_count: false,
        display_name: false,
    }
}

/// On connect: the unread messages (or what was missed).
pub fn opened(ctx: &mut Ctx, session: &mut Session, opened: Opened) -> Result<(), Refusal> {
    let mut frames = super::start_frames(session, opened.start, opened.position, |snapshot| match snapshot {
        Snapshot::UnreadDirect(unread) => unread.iter().map(chat_message_frame).collect(),
        _ => Vec::new(),
    });
    frames.extend(super::join(ctx, session, opened.stream, opened.position));
    let topic = Topic::DirectInbox(session.identity.user_id.clone());
    ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic);
    ctx.send_all(session.conn, frames);
    Ok(())
}

/// The other user named by `field`, who must not be oneself (and must be known, which
/// the request that names them checks).
fn other_user(session: &Session, object: &Map<String, Value>, field: &str) -> Result<UserId, String> {
    let user = object.get(field).and_then(UserId::from_json).ok_or(format!("\"{field}\" must be a user id."))?;
    if user == session.identity.user_id {
        return Err("You cannot message yourself.".into());
    }
    Ok(user)
}

pub fn on_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let object = match parse_object(text) {
        Ok(object) => object,
        Err(message) => return ctx.send(session.conn, error_frame(message)),
    };
    let result = match object.get("type").and_then(Value::as_str) {
        Some("chat_message") => send_message(ctx, session, &object),
        Some("mark_read") => mark_read(ctx, session, &object),
        Some("typing") => other_user(session, &object, "recipient_id").map(|recipient| {
            let then = Then::Session { conn: session.conn, render: typing };
            ctx.ask(then, Request::Read(Read::UserKnown(recipient)));
        }),
        Some(other) => Err(format!("Unknown message type: {other}")),
        None => Err("Missing \"type\".".into()),
    };
    if let Err(message) = result {
        ctx.send(session.conn, error_frame(&message));
    }
}

fn send_message(ctx: &mut Ctx, session: &Session, object: &Map<String, Value>) -> Result<(), String> {
    let content = object.get("message").and_then(Value::as_str).ok_or("\"message\" must be a string.")?;
    let recipient = other_user(session, object, "recipient_id")?;
    let send = Write::SendDirect { sender: session.identity.clone(), recipient, content: content.to_string() };
    ctx.ask(Then::Session { conn: session.conn, render: super::posted }, Request::Write(send));
    Ok(())
}

fn mark_read(ctx: &mut Ctx, session: &Session, object: &Map<String, Value>) -> Result<(), String> {
    let sender = other_user(session, object, "sender_id")?;
    let read = Write::ReadDirect { reader: session.identity.user_id.clone(), sender };
    ctx.ask(Then::Session { conn: session.conn, render: marked_read }, Request::Write(read));
    Ok(())
}

fn marked_read(ctx: &mut Ctx, session: &Session, answer: Answer) {
    let words = match answer {
        Ok(_) => return,
        Err(Failed::UnknownUser) => "User not found.",
        Err(e) => {
            log::error!("cannot store a read position: {e}");
            "Could not mark messages as read."
        }
    };
    ctx.send(session.conn, error_frame(words));
}

/// `user_typing` for a known recipient.
fn typing(ctx: &mut Ctx, session: &Session, answer: Answer) {
    match answer {
        Ok(Done::UserKnown(recipient)) => {
            let frame = to_frame(&UserTyping { r#type: "user_typing", sender_id: &session.identity.user_id });
            ctx.publish_to_user(&Topic::DirectInbox(recipient.clone()), &recipient, frame, false);
        }
        Ok(other) => {
            other.unexpected("typing");
        }
        Err(Failed::UnknownUser) => ctx.send(session.conn, error_frame("User not found.")),
        Err(e) => {
            log::error!("cannot look up a user: {e}");
            ctx.send(session.conn, error_frame("User lookup failed."));
        }
    }
}
