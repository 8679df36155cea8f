//! Document 001, presence: `/ws/presence/`.
//!
//! A user is online while they have an open session on any endpoint. A subscriber first
//! gets `user_online` for everyone online now (itself included), then `user_online` when
//! a user's first session opens and `user_offline` when their last one closes. Ids are
//! strings, as document 001 shows them. Frames from the client are ignored.

use serde::Serialize;

use std::sync::Arc;

use crate::cluster::{ONLINE, room_of};
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
    for (id, name, _) in ctx.online_users() {
        listed_me |= id == me.user_id;
        frames.push(online_frame(id.as_str(), &name));
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
    if ctx.cluster.is_some() {
        return refresh(ctx, &identity.user_id, except);
    }
    let frame = online_frame(identity.user_id.as_str(), &identity.name);
    ctx.publish(&Topic::Presence, frame, except, false);
}

/// A user's last session closed.
pub fn user_offline(ctx: &mut Ctx, user: &UserId) {
    if ctx.cluster.is_some() {
        return refresh(ctx, user, None);
    }
    let frame = to_frame(&UserOffline { r#type: "user_offline", user_id: user.as_str() });
    ctx.publish(&Topic::Presence, frame, None, false);
}

pub fn close(ctx: &mut Ctx, session: &Session) {
    for topic in &session.topics {
        ctx.hub.unsubscribe(topic, session.conn, &session.identity.user_id);
    }
}

/// With Redis (`cluster`): a user's place in what this node's clients see of a presence
/// topic may have changed (a session here, a change on another node, a reload). The
/// view is the users with sessions here plus those Redis counts on any node; a
/// difference from what was shown is returned, once, and from then on shown: whether
/// the user joined (else left), with their name. The endpoint tells its clients
/// (`user_online`/`user_offline` here, `user_join`/`user_leave` in `rooms`).
pub fn view_change(ctx: &mut Ctx, topic: &str, user: &UserId) -> Option<(bool, Arc<str>)> {
    let here: Option<Arc<str>> = match room_of(topic) {
        None => ctx.online.get(user).map(|u| u.name.clone()),
        Some(room) => ctx.hub.user_name(&Topic::Conversation(room), user),
    };
    let cluster = ctx.cluster.as_mut()?;
    let up = cluster.up;
    let mirror = cluster.get_mut(topic)?;
    if here.is_none() && !up {
        // Redis cannot say whether another node has them: a user gone from here is
        // shown gone, and shown again if Redis says so when it is back.
        mirror.remote.remove(user);
    }
    let now = here.or_else(|| mirror.remote.get(user).map(|(name, _)| name.clone()));
    match (now, mirror.shown.contains_key(user)) {
        (Some(name), false) => {
            mirror.shown.insert(user.clone(), name.clone());
            Some((true, name))
        }
        (None, true) => mirror.shown.remove(user).map(|name| (false, name)),
        _ => None,
    }
}

/// With Redis: who is online may have changed for `user` (see `view_change`). The
/// node that delivers webhooks reports it too: that view is the cluster's, so a user is
/// reported online once whatever their nodes and tabs.
pub fn refresh(ctx: &mut Ctx, user: &UserId, except: Option<ConnId>) {
    let change = view_change(ctx, ONLINE, user);
    match &change {
        Some((true, name)) => {
            let frame = online_frame(user.as_str(), name);
            ctx.publish(&Topic::Presence, frame, except, false);
        }
        Some((false, _)) => {
            let frame = to_frame(&UserOffline { r#type: "user_offline", user_id: user.as_str() });
            ctx.publish(&Topic::Presence, frame, None, false);
        }
        None => {}
    }
    if let Some((online, name)) = change
        && ctx.webhooks.as_ref().is_some_and(|w| w.delivery.leading())
    {
        ctx.hook(crate::webhook::presence_hook(user, online.then_some(&*name), online));
    }
}

/// With Redis: the users this node's clients see in a topic, ordered by id.
pub fn shown(ctx: &Ctx, topic: &str) -> Option<Vec<(UserId, Arc<str>)>> {
    let mirror = ctx.cluster.as_ref()?.get(topic)?;
    let mut users: Vec<_> = mirror.shown.iter().map(|(u, n)| (u.clone(), n.clone())).collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    Some(users)
}
