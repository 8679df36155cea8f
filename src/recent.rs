//! The recent history of active rooms, rendered: what a socket joining a room is sent on
//! open (and what one resuming after `since` missed, when it is recent enough), kept so that a room's hundredth socket after a deploy gets the same frames as
//! its first without a query and without rendering them again (a reconnect storm is
//! every socket of every room opening at once).
//!
//! Kept only while a room has listeners and some history, so an idle connection in an
//! empty room costs nothing here; and at most `MAX_KEPT_BYTES` in all, the rooms kept
//! longest going first, so that many rooms with one listener each (every user in a room
//! of their own) cannot grow memory by their whole history each. It holds frames of the current turn before they are
//! committed, exactly as the history query inside the turn's transaction would see
//! them; if the commit fails, everything here is dropped (`clear`).

use std::collections::{HashMap, VecDeque};

use crate::model::Seq;

/// Most bytes of rendered history kept over all rooms (what each frame costs, roughly).
pub const MAX_KEPT_BYTES: usize = 32 << 20;

/// What one kept frame costs besides its text: the deque slot and the shared buffer's
/// header.
const FRAME_OVERHEAD: usize = 48;

fn cost(frame: &Utf8Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

use tungstenite::Utf8Bytes;

/// A room's id and its last `limit` messages, rendered, oldest first.
struct Room {
    conversation: i64,
    frames: VecDeque<Utf8Bytes>,
    /// Each frame's message's seq on the room's stream (`None` before seqs were kept).
    seqs: VecDeque<Option<Seq>>,
    bytes: usize,
    /// Which `keep` of the room this is (its place in `order`).
    kept: u64,
}

pub struct Recent {
    /// By room name.
    rooms: HashMap<String, Room>,
    /// Room name by conversation id, for messages that arrive by id.
    names: HashMap<i64, String>,
    /// Room names in the order they were kept, with which keep it was (a room forgotten
    /// or kept again since leaves a stale entry, skipped when its turn comes).
    order: VecDeque<(String, u64)>,
    keeps: u64,
    bytes: usize,
    budget: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::with_budget(MAX_KEPT_BYTES)
    }
}

impl Recent {
    pub fn with_budget(budget: usize) -> Recent {
        Recent { rooms: HashMap::new(), names: HashMap::new(), order: VecDeque::new(), keeps: 0, bytes: 0, budget }
    }

    /// The room's conversation id and rendered history, if kept.
    pub fn get(&self, room: &str) -> Option<(i64, &VecDeque<Utf8Bytes>)> {
        self.rooms.get(room).map(|r| (r.conversation, &r.frames))
    }

    /// The frames of the room's messages after `since`, when the kept history reaches
    /// back that far and `since` is not past its newest message: what a client resuming
    /// a room after `since` missed (a room's stream carries only its messages).
    pub fn since(&self, room: &str, since: Seq) -> Option<(i64, Vec<Utf8Bytes>)> {
        let kept = self.rooms.get(room)?;
        let (first, last) = (kept.seqs.front().copied()??, kept.seqs.back().copied()??);
        if since > last || since + 1 < first {
            return None;
        }
        let skip = (since + 1 - first) as usize;
        Some((kept.conversation, kept.frames.iter().skip(skip).cloned().collect()))
    }

    /// Keeps a room's history as just read and rendered (nothing for an empty history),
    /// each frame with its message's seq.
    pub fn keep(&mut self, room: &str, conversation: i64, history: Vec<(Option<Seq>, Utf8Bytes)>) {
        let (seqs, frames): (VecDeque<Option<Seq>>, VecDeque<Utf8Bytes>) = history.into_iter().unzip();
        let bytes: usize = frames.iter().map(cost).sum();
        if frames.is_empty() || bytes > self.budget {
            return;
        }
        self.forget(room);
        while self.bytes + bytes > self.budget {
            let Some((oldest, kept)) = self.order.pop_front() else { break };
            if self.rooms.get(&oldest).is_some_and(|r| r.kept == kept) {
                self.forget(&oldest);
            }
        }
        self.keeps += 1;
        self.names.insert(conversation, room.to_string());
        self.rooms.insert(room.to_string(), Room { conversation, frames, seqs, bytes, kept: self.keeps });
        self.order.push_back((room.to_string(), self.keeps));
        self.bytes += bytes;
        // Stale entries of rooms forgotten or kept again; dropped once they dominate.
        if self.order.len() > 2 * self.rooms.len() + 64 {
            let rooms = &self.rooms;
            self.order.retain(|(name, kept)| rooms.get(name).is_some_and(|r| r.kept == *kept));
        }
    }

    /// A new message in a room: its frame joins the kept history, if any, which keeps
    /// its last `limit` frames.
    pub fn push(&mut self, conversation: i64, seq: Option<Seq>, frame: &Utf8Bytes, limit: usize) {
        let Some(room) = self.names.get(&conversation).and_then(|name| self.rooms.get_mut(name)) else { return };
        room.frames.push_back(frame.clone());
        room.seqs.push_back(seq);
        room.bytes += cost(frame);
        self.bytes += cost(frame);
        while room.frames.len() > limit {
            room.seqs.pop_front();
            if let Some(old) = room.frames.pop_front() {
                room.bytes -= cost(&old);
                self.bytes -= cost(&old);
            }
        }
    }

    /// The room's last listener left.
    pub fn forget(&mut self, room: &str) {
        if let Some(kept) = self.rooms.remove(room) {
            self.names.remove(&kept.conversation);
            self.bytes -= kept.bytes;
        }
    }

    /// Drops everything (a failed commit: what is kept may not be stored).
    pub fn clear(&mut self) {
        self.rooms.clear();
        self.names.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Bytes kept, as `MAX_KEPT_BYTES` counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// Frames "i" for messages with seq i.
    fn frames(range: std::ops::Range<u32>) -> Vec<(Option<Seq>, Utf8Bytes)> {
        range.map(|i| (Some(Seq::from(i)), Utf8Bytes::from(i.to_string()))).collect()
    }

    #[test]
    fn keeps_the_last_messages_of_active_rooms_only() {
        let mut recent = Recent::default();
        recent.keep("empty", 1, Vec::new());
        assert!(recent.get("empty").is_none(), "an empty history is not kept");
        recent.keep("lobby", 2, frames(0..3));
        recent.push(2, Some(3), &Utf8Bytes::from("3"), 3);
        recent.push(9, Some(1), &Utf8Bytes::from("other"), 3);
        let (id, kept) = recent.get("lobby").unwrap();
        assert_eq!(id, 2);
        assert_eq!(kept.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
        recent.forget("lobby");
        assert!(recent.get("lobby").is_none());
        recent.push(2, Some(4), &Utf8Bytes::from("4"), 3);
        assert!(recent.is_empty());
        assert_eq!(recent.bytes(), 0);
    }

    #[test]
    fn past_the_budget_the_rooms_kept_longest_go_first() {
        // Room of three one-byte frames: 3 * (1 + 48) bytes; a budget for two such rooms.
        let mut recent = Recent::with_budget(2 * 3 * 49);
        for (i, room) in ["a", "b", "c"].into_iter().enumerate() {
            recent.keep(room, i as i64, frames(0..3));
        }
        assert!(recent.get("a").is_none(), "the oldest went");
        assert!(recent.get("b").is_some() && recent.get("c").is_some());
        assert_eq!(recent.bytes(), 2 * 3 * 49);
        // Keeping a room again replaces it, and its new frames are counted.
        recent.keep("b", 1, frames(0..3));
        recent.push(1, Some(3), &Utf8Bytes::from("x"), 3);
        assert_eq!(recent.bytes(), 2 * 3 * 49);
        recent.keep("d", 3, frames(0..3));
        assert!(recent.get("c").is_none() && recent.get("b").is_some() && recent.get("d").is_some());
        // A history larger than the whole budget is not kept at all.
        let mut small = Recent::with_budget(10);
        small.keep("big", 1, frames(0..3));
        assert!(small.is_empty());
    }

    #[test]
    fn what_a_resuming_client_missed_comes_from_the_kept_history_when_it_reaches_back() {
        let mut recent = Recent::default();
        recent.keep("lobby", 7, frames(5..10)); // seqs 5..=9
        let texts = |got: Option<(i64, Vec<Utf8Bytes>)>| {
            got.map(|(id, frames)| (id, frames.iter().map(|f| f.to_string()).collect::<Vec<_>>()))
        };
        assert_eq!(texts(recent.since("lobby", 7)), Some((7, vec!["8".to_string(), "9".to_string()])));
        assert_eq!(texts(recent.since("lobby", 9)), Some((7, vec![])), "up to date: nothing");
        assert_eq!(texts(recent.since("lobby", 4)).map(|(_, f)| f.len()), Some(5), "right before the first kept");
        assert_eq!(recent.since("lobby", 3), None, "further back than kept: the store answers");
        assert_eq!(recent.since("lobby", 10), None, "ahead: the store answers (and refuses)");
        recent.push(7, Some(10), &Utf8Bytes::from("10"), 5);
        assert_eq!(texts(recent.since("lobby", 9)), Some((7, vec!["10".to_string()])));
        let mut old = Recent::default();
        old.keep("old", 1, vec![(None, Utf8Bytes::from("a")), (Some(1), Utf8Bytes::from("b"))]);
        assert_eq!(old.since("old", 0), None, "messages from before seqs were kept");
    }
}
