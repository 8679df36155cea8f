//! Document 004, room chat: `/ws/chat/{room_name}/` and `/ws/rooms/{room_name}/`.
//!
//! On connect: `room_users_list` (everyone in the room, this user included), then the
//! room's recent history as `chat_message` frames, oldest first. `{"message": ...}` is
//! stored, then broadcast to everyone in the room, sender included. `user_join` goes to
//! the others when a user's first connection to the room opens, `user_leave` to those
//! left when their last one closes. Errors are `{"error": ...}` frames. A refused token
//! closes with 4001, a bad room name with 4000. Ids are JSON strings, as the document
//! shows them.

use serde::Serialize;
use serde_json::Value;

use crate::context::{Ctx, Event, EventBody, Frame, Refusal, Session, Then, close_code, to_frame};
use crate::engine::{OpenLoad, Opened, Replay, Snapshot, Target};
use crate::hub::{ConnId, Topic};
use crate::model::{HookType, Seq, StreamId, UserId, format_timestamp};
use crate::request::{Request, Write};
use crate::route::Endpoint;
use crate::store::{ConversationKind, StoredMessage};

/// "Room not found or could not be created".
pub const BAD_ROOM: u16 = 4000;

#[derive(Serialize)]
struct ChatMessage<'a> {
    r#type: &'static str,
    message: &'a str,
    sender_username: &'a str,
    sender_id: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

#[derive(Serialize)]
struct UserEvent<'a> {
    r#type: &'static str,
    user_id: &'a str,
    username: &'a str,
}

#[derive(Serialize)]
struct RoomUser<'a> {
    id: &'a str,
    username: &'a str,
}

#[derive(Serialize)]
struct RoomUsersList<'a> {
    r#type: &'static str,
    users: Vec<RoomUser<'a>>,
}

pub fn error_frame(message: &str) -> Frame {
    super::bare_error(message)
}

/// `chat_message`, with the message's seq on the room's stream.
pub fn chat_message_frame(message: &StoredMessage) -> Frame {
    to_frame(&ChatMessage {
        r#type: "chat_message",
        message: &message.content,
        sender_username: &message.sender_name,
        sender_id: message.sender_id.as_ref().map_or("", |id| id.as_str()),
        timestamp: format_timestamp(message.created_at),
        seq: message.seq,
    })
}

/// A stored event as this document shows it (a resuming client's frames).
pub fn render(event: &Event) -> Option<Frame> {
    match &event.body {
        EventBody::Message { message, .. } => Some(chat_message_frame(message)),
        _ => None,
    }
}

/// What opening a room needs: the room (created on its first open) and its history,
/// unless the room's history is kept rendered (`recent.rs`): then the frames wait in the
/// session, and the sockets of a room that all reconnect at once get them without a
/// query or a render each.
/// A client resuming after `since` gets what it missed from the kept history too, when
/// that reaches back far enough (else the engine reads it).
pub fn load(ctx: &Ctx, session: &mut Session, room: &str, since: Option<Seq>) -> Result<OpenLoad, Refusal> {
    if !crate::model::valid_room_name(room) {
        return Err(Refusal::new(BAD_ROOM, "invalid room name"));
    }
    let kept = match since {
        None => ctx.recent.get(room).map(|(conversation, frames)| (conversation, frames.iter().cloned().collect())),
        Some(since) => ctx.recent.since(room, since),
    };
    let (known, replay, since) = match kept {
        Some((conversation, frames)) => {
            let opening = session.opening_mut();
            opening.kept = frames;
            // The kept history is what this node delivered: the session joins there, and
            // anything committed since reaches it (`endpoints::join`).
            opening.kept_position = ctx.sequencer.position(&StreamId::Conversation(conversation));
            (Some(conversation), Replay::Nothing, None)
        }
        None => (None, Replay::History { limit: ctx.config.history_limit }, since),
    };
    Ok(OpenLoad {
        user: session.identity.user_id.clone(),
        target: Target::Room { name: room.to_string(), known },
        since,
        replay,
        unread_count: false,
        display_name: false,
    })
}

/// On connect: `room_users_list`, then the history (or what was missed), and `user_join`
/// for the others when this is the user's first connection to the room.
pub fn opened(ctx: &mut Ctx, session: &mut Session, room: &str, opened: Opened) -> Result<(), Refusal> {
    let StreamId::Conversation(conversation) = opened.stream else {
        return Err(Refusal::new(close_code::INTERNAL_ERROR, "internal error"));
    };
    let (kept, kept_position) = match session.opening.as_mut() {
        Some(o) => (std::mem::take(&mut o.kept), o.kept_position.take()),
        None => (Vec::new(), None),
    };
    let position = kept_position.unwrap_or(opened.position);
    // A snapshot read while this node delivered other events of the room (another node
    // stored them) is not what the kept history must be: the kept one stays.
    let current = ctx.sequencer.position(&opened.stream).is_none_or(|delivered| delivered == opened.position);
    let mut history = super::start_frames(session, opened.start, position, |snapshot| match snapshot {
        Snapshot::History(messages) => {
            let history: Vec<(Option<Seq>, Frame)> = messages.iter().map(|m| (m.seq, chat_message_frame(m))).collect();
            let frames = history.iter().map(|(_, frame)| frame.clone()).collect();
            if current {
                ctx.recent.keep(room, conversation, history);
            }
            frames
        }
        _ => kept,
    });
    history.extend(super::join(ctx, session, opened.stream, position));
    let topic = Topic::Conversation(conversation);
    let first = ctx.hub.subscribe(topic.clone(), session.conn, &session.identity);
    session.topics.push(topic.clone());
    session.conversation = Some(conversation);
    if first {
        let (user, name) = (&session.identity.user_id, &session.identity.name);
        ctx.hook(crate::webhook::room_hook(HookType::MemberJoined, room, conversation, user, name));
    }
    if ctx.cluster.is_some() {
        // Who is in the room on every node (`cluster`): this node's share is told to
        // Redis, and the room's presence followed here.
        let presence = crate::cluster::room_topic(conversation);
        ctx.mirror_topic(&presence);
        if first && let Some(cluster) = &ctx.cluster {
            cluster.set(&presence, &session.identity.user_id, &session.identity.name, 1, None);
        }
        refresh(ctx, conversation, &session.identity.user_id, Some(session.conn));
        let users = super::presence::shown(ctx, &presence).unwrap_or_default();
        let users = users.iter().map(|(id, name)| RoomUser { id: id.as_str(), username: name }).collect();
        ctx.send(session.conn, to_frame(&RoomUsersList { r#type: "room_users_list", users }));
        ctx.send_all(session.conn, history);
        return Ok(());
    }

    let users = to_frame(&RoomUsersList {
        r#type: "room_users_list",
        users: ctx
            .hub
            .users(&topic)
            .into_iter()
            .map(|(id, name)| RoomUser { id: id.as_str(), username: name })
            .collect(),
    });
    ctx.send(session.conn, users);
    ctx.send_all(session.conn, history);
    if first {
        user_event(
            ctx,
            conversation,
            "user_join",
            &session.identity.user_id,
            &session.identity.name,
            Some(session.conn),
        );
    }
    Ok(())
}

/// With Redis: whether `user` is in the room may have changed, as this node's clients
/// see it (`presence::view_change`); they are told.
pub fn refresh(ctx: &mut Ctx, conversation: i64, user: &UserId, except: Option<ConnId>) {
    let topic = crate::cluster::room_topic(conversation);
    match super::presence::view_change(ctx, &topic, user) {
        Some((true, name)) => user_event(ctx, conversation, "user_join", user, &name, except),
        Some((false, name)) => user_event(ctx, conversation, "user_leave", user, &name, None),
        None => {}
    }
}

/// `user_join` or `user_leave` to the room's sessions here (but `except`).
pub fn user_event(
    ctx: &mut Ctx,
    conversation: i64,
    kind: &'static str,
    user: &UserId,
    name: &str,
    except: Option<ConnId>,
) {
    let frame = to_frame(&UserEvent { r#type: kind, user_id: user.as_str(), username: name });
    ctx.publish(&Topic::Conversation(conversation), frame, except, false);
}

pub fn on_text(ctx: &mut Ctx, session: &mut Session, text: &str) {
    let Some(conversation) = session.conversation else { return };
    let content = match serde_json::from_str::<Value>(text) {
        Err(_) => return ctx.send(session.conn, error_frame("Invalid JSON.")),
        Ok(Value::Object(object)) => match object.get("message") {
            Some(Value::String(content)) => content.clone(),
            Some(_) => return ctx.send(session.conn, error_frame("\"message\" must be a string.")),
            None => return ctx.send(session.conn, error_frame("Missing \"message\".")),
        },
        Ok(_) => return ctx.send(session.conn, error_frame("Expected a JSON object with a \"message\".")),
    };
    let sender = session.identity.clone();
    let post = Write::Post { kind: ConversationKind::Room, conversation, sender, content };
    ctx.ask(Then::Session { conn: session.conn, render: super::posted }, Request::Write(post));
}

/// A message stored in a room reaches everyone in it, and the room's kept history.
pub fn deliver_message(ctx: &mut Ctx, message: &StoredMessage) {
    let frame = chat_message_frame(message);
    ctx.recent.push(message.conversation_id, message.seq, &frame, ctx.config.history_limit);
    ctx.publish(&Topic::Conversation(message.conversation_id), frame, None, true);
}

pub fn close(ctx: &mut Ctx, session: &Session) {
    ctx.leave_stream(session);
    let user = &session.identity.user_id;
    for topic in &session.topics {
        let last = ctx.hub.unsubscribe(topic, session.conn, user);
        let Topic::Conversation(conversation) = topic else { continue };
        if last && let Endpoint::Rooms { room } = &session.endpoint {
            let hook =
                crate::webhook::room_hook(HookType::MemberLeft, room, *conversation, user, &session.identity.name);
            ctx.hook(hook);
        }
        if ctx.cluster.is_some() {
            let presence = crate::cluster::room_topic(*conversation);
            if last && let Some(cluster) = &ctx.cluster {
                cluster.set(&presence, user, &session.identity.name, 0, None);
            }
            if ctx.hub.conns(topic).is_empty() {
                ctx.unmirror_topic(&presence);
            } else {
                refresh(ctx, *conversation, user, None);
            }
        } else if last {
            user_event(ctx, *conversation, "user_leave", user, &session.identity.name, None);
        }
        if ctx.hub.conns(topic).is_empty()
            && let Endpoint::Rooms { room } = &session.endpoint
        {
            ctx.recent.forget(room);
        }
    }
}
