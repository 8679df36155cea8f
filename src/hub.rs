//! Who is subscribed to what. A topic (a conversation, a user's inbox) maps to the
//! connections that receive its frames, and to the users behind them with a count of
//! their connections, so that "first connection of this user opened" and "last one
//! closed" are answered here and not per tab.
//!
//! The hub holds ids only; it never writes to a socket and never serializes. Fan-out
//! is the caller's: render a frame once, then hand the hub's connection list and the
//! shared frame to the outbox.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Identity, UserId};

/// A connection as the domain sees it: its slot in the server plus a serial number,
/// so that a slot reused by a later connection never receives an earlier one's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: usize,
    pub serial: u64,
}

/// Something frames are published to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Everyone connected to one conversation (room, consultation, support chat).
    Conversation(i64),
    /// Subscribers of presence events (`/ws/presence/`).
    Presence,
    /// One user's conversation-list sockets (`/ws/conversations/`).
    ConversationList(UserId),
    /// One user's direct-chat sockets (`/ws/v1/chat/`).
    DirectInbox(UserId),
    /// One user's notification sockets of one document, so that a notification is
    /// rendered once per document, not once per socket.
    Notifications(UserId, NotificationFeed),
    /// One user's fraud-alert sockets.
    FraudAlerts(UserId),
    /// One user's banking-message sockets.
    BankingMessages(UserId),
}

/// The three documents notifications are delivered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotificationFeed {
    /// 001: `/ws/notifications/`.
    App,
    /// 003: `/ws/v1/notifications/`.
    V1,
    /// 000: `/ws/notifications/{user_id}/`.
    Banking,
}

#[derive(Default)]
struct Members {
    conns: Vec<ConnId>,
    /// Per user: display name and their connections in this topic. A vector while it is
    /// small (most topics have one or two users, and an idle connection should cost
    /// bytes, not a tree node), a hash map once it grows.
    users: Users,
}

/// Past this many users a topic's user list becomes a hash map.
const SMALL_TOPIC_USERS: usize = 16;

type UserEntry = (Arc<str>, Vec<ConnId>);

enum Users {
    Few(Vec<(UserId, UserEntry)>),
    Many(HashMap<UserId, UserEntry>),
}

impl Default for Users {
    fn default() -> Users {
        Users::Few(Vec::new())
    }
}

impl Users {
    fn get_mut(&mut self, user: &UserId) -> Option<&mut UserEntry> {
        match self {
            Users::Few(users) => users.iter_mut().find(|(id, _)| id == user).map(|(_, entry)| entry),
            Users::Many(users) => users.get_mut(user),
        }
    }

    fn get(&self, user: &UserId) -> Option<&UserEntry> {
        match self {
            Users::Few(users) => users.iter().find(|(id, _)| id == user).map(|(_, entry)| entry),
            Users::Many(users) => users.get(user),
        }
    }

    fn insert(&mut self, user: UserId, entry: UserEntry) -> &mut UserEntry {
        if let Users::Few(users) = self
            && users.len() >= SMALL_TOPIC_USERS
        {
            *self = Users::Many(std::mem::take(users).into_iter().collect());
        }
        match self {
            Users::Few(users) => {
                users.push((user, entry));
                &mut users.last_mut().expect("just pushed").1
            }
            Users::Many(users) => users.entry(user).or_insert(entry),
        }
    }

    fn remove(&mut self, user: &UserId) {
        match self {
            Users::Few(users) => users.retain(|(id, _)| id != user),
            Users::Many(users) => {
                users.remove(user);
            }
        }
    }

    /// Ordered by user id.
    fn sorted(&self) -> Vec<(&UserId, &UserEntry)> {
        let mut all: Vec<(&UserId, &UserEntry)> = match self {
            Users::Few(users) => users.iter().map(|(id, entry)| (id, entry)).collect(),
            Users::Many(users) => users.iter().collect(),
        };
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

#[derive(Default)]
pub struct Hub {
    topics: HashMap<Topic, Members>,
}

impl Hub {
    /// Adds a connection. Returns true when it is the user's first in this topic.
    pub fn subscribe(&mut self, topic: Topic, conn: ConnId, identity: &Identity) -> bool {
        // Vectors start with room for one: most topics hold one connection, and an idle
        // connection's memory is a headline figure.
        let members = self
            .topics
            .entry(topic)
            .or_insert_with(|| Members { conns: Vec::with_capacity(1), users: Users::Few(Vec::with_capacity(1)) });
        members.conns.push(conn);
        let entry = match members.users.get_mut(&identity.user_id) {
            Some(entry) => entry,
            None => members.users.insert(identity.user_id.clone(), (identity.name.clone(), Vec::with_capacity(1))),
        };
        entry.0 = identity.name.clone();
        entry.1.push(conn);
        entry.1.len() == 1
    }

    /// Removes a connection. Returns true when it was the user's last in this topic.
    pub fn unsubscribe(&mut self, topic: &Topic, conn: ConnId, user: &UserId) -> bool {
        let Some(members) = self.topics.get_mut(topic) else { return false };
        if let Some(position) = members.conns.iter().position(|c| *c == conn) {
            members.conns.swap_remove(position);
        } else {
            return false;
        }
        let mut last = false;
        if let Some(entry) = members.users.get_mut(user) {
            entry.1.retain(|c| *c != conn);
            if entry.1.is_empty() {
                members.users.remove(user);
                last = true;
            }
        }
        if members.conns.is_empty() {
            self.topics.remove(topic);
        }
        last
    }

    pub fn conns(&self, topic: &Topic) -> &[ConnId] {
        self.topics.get(topic).map(|m| m.conns.as_slice()).unwrap_or(&[])
    }

    /// One user's connections in a topic.
    pub fn user_conns(&self, topic: &Topic, user: &UserId) -> &[ConnId] {
        self.topics.get(topic).and_then(|m| m.users.get(user)).map(|(_, conns)| conns.as_slice()).unwrap_or(&[])
    }

    /// A user's display name in a topic, if they are connected to it.
    pub fn user_name(&self, topic: &Topic, user: &UserId) -> Option<Arc<str>> {
        self.topics.get(topic).and_then(|m| m.users.get(user)).map(|(name, _)| name.clone())
    }

    /// The users connected to a topic, ordered by id, with their display names.
    pub fn users(&self, topic: &Topic) -> Vec<(&UserId, &str)> {
        let Some(members) = self.topics.get(topic) else { return Vec::new() };
        members.users.sorted().into_iter().map(|(id, (name, _))| (id, &**name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str) -> Identity {
        Identity { user_id: UserId::new(id), name: Arc::from(id) }
    }

    #[test]
    fn first_and_last_connection_of_a_user_are_reported_once() {
        let mut hub = Hub::default();
        let topic = Topic::Conversation(1);
        let (a, b, c) = (ConnId { slot: 0, serial: 1 }, ConnId { slot: 1, serial: 2 }, ConnId { slot: 2, serial: 3 });
        assert!(hub.subscribe(topic.clone(), a, &ident("ann")));
        assert!(!hub.subscribe(topic.clone(), b, &ident("ann")));
        assert!(hub.subscribe(topic.clone(), c, &ident("bob")));
        assert_eq!(hub.conns(&topic).len(), 3);
        assert!(!hub.unsubscribe(&topic, a, &UserId::new("ann")));
        assert!(hub.unsubscribe(&topic, b, &UserId::new("ann")));
        assert!(!hub.unsubscribe(&topic, b, &UserId::new("ann")), "a second removal changes nothing");
        assert_eq!(hub.users(&topic).into_iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["bob"]);
        assert!(hub.unsubscribe(&topic, c, &UserId::new("bob")));
        assert!(hub.conns(&topic).is_empty());
    }

    #[test]
    fn a_topic_with_many_users_lists_them_in_order() {
        let mut hub = Hub::default();
        let topic = Topic::Conversation(2);
        for i in (0..40).rev() {
            let conn = ConnId { slot: i, serial: i as u64 };
            assert!(hub.subscribe(topic.clone(), conn, &ident(&format!("u{i:02}"))));
        }
        let users = hub.users(&topic);
        assert_eq!(users.len(), 40);
        assert_eq!(users[0].0.as_str(), "u00");
        assert_eq!(users[39].0.as_str(), "u39");
        assert!(!hub.subscribe(topic.clone(), ConnId { slot: 99, serial: 99 }, &ident("u07")));
        assert!(!hub.unsubscribe(&topic, ConnId { slot: 7, serial: 7 }, &UserId::new("u07")));
        assert!(hub.unsubscribe(&topic, ConnId { slot: 99, serial: 99 }, &UserId::new("u07")));
        assert_eq!(hub.users(&topic).len(), 39);
    }
}
