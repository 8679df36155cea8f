//! Document 001, presence: `/ws/presence/`.
//!
//! A user is online while they have an open session on any endpoint. A subscriber first
//! gets `user_online` for everyone online now (itself included), then `user_online` when
//! a user's first session opens and `user_offline` when their last one closes. Ids are
//! strings, as document 001 shows them. Frames from the client are ignored.

use serde::Serialize;

use crate::context::{Ctx, Refusal, Session, to_frame};
use crate::hub::{ConnId, Topic};
use crate::model::{Identity, UserId};

#[derive(Serialize)]
struct UserOnline<'a> {
    r#type: &'static str,
    user_id: &'a str,
    user_name: &'a str,
}

#[derive(Serialize)]
struct UserOffline<'a> {
    r#type: &'static str,
    user_id: &'a str,
}

pub fn open(ctx: &mut Ctx, session: &mut Session) -> Result<(), Refusal> {
    ctx.hub.subscribe(Topic::Presence, session.conn, &session.identity);
    session.topics.push(Topic::Presence);
    let me = &session.identity;
    let mut frames = Vec::new();
    let mut listed_me = false;
    for (id, user) in ctx.online_users() {
        listed_me |= *id == me.user_id;
        frames.push(online_frame(id.as_str(), &user.name));
    }
    if !listed_me {
        frames.push(online_frame(me.user_id.as_str(), &me.name));
    }
    for frame in frames {
        ctx.send(session.conn, frame);
    }
    Ok(())
}

fn online_frame(user_id: &str, user_name: &str) -> crate::context::Frame {
    to_frame(&UserOnline { r#type: "user_online", user_id, user_name })
}

/// A user's first session opened; `except` is that session (it has its own snapshot).
pub fn user_online(ctx: &mut Ctx, identity: &Identity, except: Option<ConnId>) {
    let frame = online_frame(identity.user_id.as_str(), &identity.name);
    ctx.publish(&Topic::Presence, frame, except, false);
}

/// A user's last session closed.
pub fn user_offline(ctx: &mut Ctx, user: &UserId) {
    let frame = to_frame(&UserOffline { r#type: "user_offline", user_id: user.as_str() });
    ctx.publish(&Topic::Presence, frame, None, false);
}

pub fn close(ctx: &mut Ctx, session: &Session) {
    for topic in &session.topics {
        ctx.hub.unsubscribe(topic, session.conn, &session.identity.user_id);
    }
}
