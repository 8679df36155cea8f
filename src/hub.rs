//! Who is subscribed to what. A topic (a conversation, a user's inbox) maps to the
//! connections that receive its frames, and to the users behind them with a count of
//! their connections, so that "first connection of this user opened" and "last one
//! closed" are answered here and not per tab.
//!
//! The hub holds ids only; it never writes to a socket and never serializes. Fan-out
//! is the caller's: render a frame once, then hand the hub's connection list and the
//! shared frame to the outbox.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

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
    /// One user's notification sockets of one endpoint (named by `Endpoint::name`), so
    /// that a notification is rendered once per document, not once per socket.
    Notifications(UserId, &'static str),
    /// One user's fraud-alert sockets.
    FraudAlerts(UserId),
    /// One user's banking-message sockets.
    BankingMessages(UserId),
}

#[derive(Default)]
struct Members {
    conns: Vec<ConnId>,
    /// Per user: display name and their connections in this topic.
    users: BTreeMap<UserId, (Rc<str>, Vec<ConnId>)>,
}

#[derive(Default)]
pub struct Hub {
    topics: HashMap<Topic, Members>,
}

impl Hub {
    /// Adds a connection. Returns true when it is the user's first in this topic.
    pub fn subscribe(&mut self, topic: Topic, conn: ConnId, identity: &Identity) -> bool {
        let members = self.topics.entry(topic).or_default();
        members.conns.push(conn);
        let entry =
            members.users.entry(identity.user_id.clone()).or_insert_with(|| (identity.name.clone(), Vec::new()));
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

    /// The users connected to a topic, ordered by id, with their display names.
    pub fn users(&self, topic: &Topic) -> impl Iterator<Item = (&UserId, &str)> {
        self.topics.get(topic).into_iter().flat_map(|m| m.users.iter().map(|(id, (name, _))| (id, &**name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str) -> Identity {
        Identity { user_id: UserId::new(id), name: Rc::from(id) }
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
        assert_eq!(hub.users(&topic).map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["bob"]);
        assert!(hub.unsubscribe(&topic, c, &UserId::new("bob")));
        assert!(hub.conns(&topic).is_empty());
    }
}
