//! The recent history of active rooms, rendered: what a socket joining a room is sent on
//! open, kept so that a room's hundredth socket after a deploy gets the same frames as
//! its first without a query and without rendering them again (a reconnect storm is
//! every socket of every room opening at once).
//!
//! Kept only while a room has listeners and some history, so an idle connection in an
//! empty room costs nothing here. It holds frames of the current turn before they are
//! committed, exactly as the history query inside the turn's transaction would see
//! them; if the commit fails, everything here is dropped (`clear`).

use std::collections::{HashMap, VecDeque};

use tungstenite::Utf8Bytes;

/// A room's id and its last `limit` messages, rendered, oldest first.
struct Room {
    conversation: i64,
    frames: VecDeque<Utf8Bytes>,
}

#[derive(Default)]
pub struct Recent {
    /// By room name.
    rooms: HashMap<String, Room>,
    /// Room name by conversation id, for messages that arrive by id.
    names: HashMap<i64, String>,
}

impl Recent {
    /// The room's conversation id and rendered history, if kept.
    pub fn get(&self, room: &str) -> Option<(i64, &VecDeque<Utf8Bytes>)> {
        self.rooms.get(room).map(|r| (r.conversation, &r.frames))
    }

    /// Keeps a room's history as just read and rendered (nothing for an empty history).
    pub fn keep(&mut self, room: &str, conversation: i64, frames: VecDeque<Utf8Bytes>) {
        if frames.is_empty() {
            return;
        }
        self.names.insert(conversation, room.to_string());
        self.rooms.insert(room.to_string(), Room { conversation, frames });
    }

    /// A new message in a room: its frame joins the kept history, if any, which keeps
    /// its last `limit` frames.
    pub fn push(&mut self, conversation: i64, frame: &Utf8Bytes, limit: usize) {
        let Some(room) = self.names.get(&conversation).and_then(|name| self.rooms.get_mut(name)) else { return };
        room.frames.push_back(frame.clone());
        while room.frames.len() > limit {
            room.frames.pop_front();
        }
    }

    /// The room's last listener left.
    pub fn forget(&mut self, room: &str) {
        if let Some(kept) = self.rooms.remove(room) {
            self.names.remove(&kept.conversation);
        }
    }

    /// Drops everything (a failed commit: what is kept may not be stored).
    pub fn clear(&mut self) {
        self.rooms.clear();
        self.names.clear();
    }

    /// Rooms kept, for tests and metrics.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(range: std::ops::Range<u32>) -> VecDeque<Utf8Bytes> {
        range.map(|i| Utf8Bytes::from(i.to_string())).collect()
    }

    #[test]
    fn keeps_the_last_messages_of_active_rooms_only() {
        let mut recent = Recent::default();
        recent.keep("empty", 1, VecDeque::new());
        assert!(recent.get("empty").is_none(), "an empty history is not kept");
        recent.keep("lobby", 2, frames(0..3));
        recent.push(2, &Utf8Bytes::from("3"), 3);
        recent.push(9, &Utf8Bytes::from("other"), 3);
        let (id, kept) = recent.get("lobby").unwrap();
        assert_eq!(id, 2);
        assert_eq!(kept.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
        recent.forget("lobby");
        assert!(recent.get("lobby").is_none());
        recent.push(2, &Utf8Bytes::from("4"), 3);
        assert!(recent.is_empty());
    }
}
