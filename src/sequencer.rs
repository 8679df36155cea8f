//! Delivery in order, exactly once, per stream (design/cluster.md §5.5).
//!
//! Every stored event that must reach someone will belong to a stream (one per
//! conversation, one per user) and carry that stream's gap-free sequence number, given in
//! commit order. Events can reach a node more than once (a bus retry, a gap fill that
//! overlaps what the bus brings) and out of order (a gap fill racing the bus). The
//! sequencer turns that into each event once, in sequence order: per stream it keeps
//! the last delivered number, drops what is at or below it, holds what is ahead of a
//! gap, and says which ranges are missing so they can be read from the store.
//!
//! Pure bookkeeping: no sockets, no store, no clock of its own (callers pass `Instant`s).
//! Wired into delivery by `Ctx::sequence`: every recorded event passes through it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A stream's sequence number: 1 for its first event.
pub use crate::model::Seq;

/// One stream's state: 24 bytes while nothing waits behind a gap (a node follows a
/// stream per room with listeners, so this is per idle connection in the worst case).
struct Stream<T> {
    /// Every event up to this one has been handed out.
    delivered: Seq,
    /// Listeners that joined (`join`) and have not left.
    listeners: u32,
    /// What waits behind a gap, if anything.
    held: Option<Box<Held<T>>>,
}

/// Events after a gap, by sequence number (never empty), and since when the oldest gap
/// has been open.
struct Held<T> {
    ahead: BTreeMap<Seq, T>,
    since: Instant,
}

/// A missing range of one stream, `from..=to`, open since `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap<S> {
    pub stream: S,
    pub from: Seq,
    pub to: Seq,
    pub since: Instant,
}

/// Per stream, the delivered position and what waits behind a gap.
pub struct Sequencer<S, T> {
    streams: HashMap<S, Stream<T>>,
    /// Most events held ahead of a gap per stream; past it the oldest gap is reported
    /// as lost (see `offer`), so a stream that never fills a gap cannot grow memory.
    max_ahead: usize,
}

/// What offering an event gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered<T> {
    /// These events, in order, are next for the stream's listeners (the offered one
    /// and any it unblocked). Empty when it was held behind a gap.
    Deliver(Vec<(Seq, T)>),
    /// Too much waited behind a gap that was never filled: `from..=to` are given up
    /// (their listeners need a fresh snapshot), and `then` are next, in order.
    Lost { from: Seq, to: Seq, then: Vec<(Seq, T)> },
    /// At or below the delivered position, or already held: dropped.
    Duplicate,
    /// The stream is not followed (no `follow` or `join` since its last listener left).
    NotFollowed,
}

impl<S: Clone + Eq + Hash, T> Sequencer<S, T> {
    pub fn new(max_ahead: usize) -> Sequencer<S, T> {
        Sequencer { streams: HashMap::new(), max_ahead: max_ahead.max(1) }
    }

    /// Starts following a stream whose events up to `position` are already known to
    /// the listeners (read together with their opening snapshot). Following it again
    /// keeps the further of the two positions; held events the new position covers are
    /// dropped, and those it makes next are returned, in order.
    pub fn follow(&mut self, stream: S, position: Seq) -> Vec<(Seq, T)> {
        let state = self.streams.entry(stream).or_insert(Stream { delivered: 0, listeners: 0, held: None });
        if position <= state.delivered {
            return Vec::new();
        }
        state.delivered = position;
        let Some(held) = state.held.as_mut() else { return Vec::new() };
        held.ahead = held.ahead.split_off(&(position + 1));
        let since = held.since;
        Self::drain(state, since)
    }

    /// A listener joins a stream whose events up to `position` it knows (`follow`, and
    /// one more listener); returns what that makes next, as `follow` does.
    pub fn join(&mut self, stream: S, position: Seq) -> Vec<(Seq, T)> {
        let next = self.follow(stream.clone(), position);
        if let Some(state) = self.streams.get_mut(&stream) {
            state.listeners += 1;
        }
        next
    }

    /// A listener leaves; with the last one the stream is forgotten.
    pub fn leave(&mut self, stream: &S) {
        if let Some(state) = self.streams.get_mut(stream) {
            state.listeners = state.listeners.saturating_sub(1);
            if state.listeners == 0 {
                self.streams.remove(stream);
            }
        }
    }

    /// The events after `position` were never stored after all (a failed commit): the
    /// stream's delivered position goes back to it, and what was held after it goes.
    /// Its listeners stay.
    pub fn rewind(&mut self, stream: &S, position: Seq) {
        if let Some(state) = self.streams.get_mut(stream)
            && state.delivered > position
        {
            state.delivered = position;
            state.held = None;
        }
    }

    /// The delivered position of a stream, if followed.
    pub fn position(&self, stream: &S) -> Option<Seq> {
        self.streams.get(stream).map(|s| s.delivered)
    }

    /// Offers event `seq` of `stream`, arrived at `now`.
    pub fn offer(&mut self, stream: &S, seq: Seq, event: T, now: Instant) -> Offered<T> {
        let max_ahead = self.max_ahead;
        let Some(state) = self.streams.get_mut(stream) else { return Offered::NotFollowed };
        if seq <= state.delivered || state.held.as_ref().is_some_and(|h| h.ahead.contains_key(&seq)) {
            return Offered::Duplicate;
        }
        if seq > state.delivered + 1 {
            let held = state.held.get_or_insert_with(|| Box::new(Held { ahead: BTreeMap::new(), since: now }));
            held.ahead.insert(seq, event);
            if held.ahead.len() > max_ahead {
                // The gap is not being filled: give it up and go on from the oldest held
                // event, saying what was lost.
                let (&first, _) = held.ahead.iter().next().expect("not empty");
                let from = state.delivered + 1;
                state.delivered = first - 1;
                return Offered::Lost { from, to: first - 1, then: Self::drain(state, now) };
            }
            return Offered::Deliver(Vec::new());
        }
        state.delivered = seq;
        let mut out = vec![(seq, event)];
        out.extend(Self::drain(state, now));
        Offered::Deliver(out)
    }

    /// Hands out held events that now follow the delivered position.
    fn drain(state: &mut Stream<T>, now: Instant) -> Vec<(Seq, T)> {
        let mut out = Vec::new();
        let Some(held) = state.held.as_mut() else { return out };
        while let Some(entry) = held.ahead.first_entry() {
            if *entry.key() != state.delivered + 1 {
                break;
            }
            let (seq, event) = entry.remove_entry();
            state.delivered = seq;
            out.push((seq, event));
        }
        if held.ahead.is_empty() {
            state.held = None;
        } else {
            held.since = now;
        }
        out
    }

    /// The first missing seq of a stream waiting behind a gap, and the last seq held.
    pub fn gap(&self, stream: &S) -> Option<(Seq, Seq)> {
        let state = self.streams.get(stream)?;
        let (&last_held, _) = state.held.as_ref()?.ahead.iter().next_back()?;
        Some((state.delivered + 1, last_held))
    }

    /// Gaps open for at least `older_than`: the ranges to read from the store.
    pub fn gaps(&self, now: Instant, older_than: Duration) -> Vec<Gap<S>> {
        self.streams
            .iter()
            .filter_map(|(stream, state)| {
                let held = state.held.as_ref()?;
                let since = held.since;
                let (&first_held, _) = held.ahead.iter().next()?;
                (now.duration_since(since) >= older_than).then(|| Gap {
                    stream: stream.clone(),
                    from: state.delivered + 1,
                    to: first_held - 1,
                    since,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: enough randomness for shuffles, and reproducible from a seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: Seq) -> Seq {
            (self.next() % n as u64) as Seq
        }
    }

    /// Any interleaving of one stream's events 1..=n, with duplicates and reorderings, in
    /// which every event arrives at least once, yields each event exactly once, in order.
    #[test]
    fn any_interleaving_with_duplicates_and_reorderings_yields_each_seq_once_in_order() {
        let now = Instant::now();
        for seed in 1..=3_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = 1 + rng.below(60);
            let start = rng.below(5);
            // Every event at least once, some several times, then shuffled locally
            // (how far an event can overtake another grows with the seed).
            let mut arrivals: Vec<Seq> = Vec::new();
            for seq in start + 1..=start + n {
                for _ in 0..1 + rng.below(3) {
                    arrivals.push(seq);
                }
            }
            // Stale duplicates from before the join position.
            for _ in 0..rng.below(4) {
                if start > 0 {
                    arrivals.push(1 + rng.below(start));
                }
            }
            let reach = 1 + (seed % 20) as usize;
            for i in 0..arrivals.len() {
                let j = (i + rng.below(reach as Seq) as usize).min(arrivals.len() - 1);
                arrivals.swap(i, j);
            }
            let mut sequencer: Sequencer<u32, Seq> = Sequencer::new(1_000);
            sequencer.follow(7, start);
            let mut delivered = Vec::new();
            for seq in &arrivals {
                match sequencer.offer(&7, *seq, *seq, now) {
                    Offered::Deliver(events) => {
                        for (s, e) in events {
                            assert_eq!(s, e);
                            delivered.push(s);
                        }
                    }
                    Offered::Duplicate => {}
                    Offered::Lost { .. } | Offered::NotFollowed => panic!("seed {seed}: nothing is lost or unfollowed"),
                }
            }
            let expected: Vec<Seq> = (start + 1..=start + n).collect();
            assert_eq!(delivered, expected, "seed {seed}: arrivals {arrivals:?}");
            assert!(sequencer.gaps(now, Duration::ZERO).is_empty(), "seed {seed}");
        }
    }

    /// With some events never arriving, delivery stops before the first missing one, and
    /// `gaps` names exactly the missing range; filling it delivers the rest in order.
    #[test]
    fn a_gap_holds_what_follows_and_is_reported_until_filled() {
        let t0 = Instant::now();
        for seed in 1..=1_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1);
            let n = 3 + rng.below(40);
            let hole_from = 1 + rng.below(n - 1);
            let hole_to = hole_from + rng.below(n - hole_from);
            let mut sequencer: Sequencer<&str, Seq> = Sequencer::new(1_000);
            sequencer.follow("c:1", 0);
            let mut delivered = Vec::new();
            let mut arrivals: Vec<Seq> = (1..=n).filter(|s| *s < hole_from || *s > hole_to).collect();
            for i in 0..arrivals.len() {
                let j = (i + rng.below(3) as usize).min(arrivals.len() - 1);
                arrivals.swap(i, j);
            }
            for seq in arrivals {
                if let Offered::Deliver(events) = sequencer.offer(&"c:1", seq, seq, t0) {
                    delivered.extend(events.into_iter().map(|(s, _)| s));
                }
            }
            assert_eq!(delivered, (1..hole_from).collect::<Vec<_>>(), "seed {seed}");
            let gaps = sequencer.gaps(t0 + Duration::from_millis(20), Duration::from_millis(20));
            if hole_to < n {
                assert_eq!(gaps.len(), 1, "seed {seed}");
                assert_eq!((gaps[0].from, gaps[0].to), (hole_from, hole_to), "seed {seed}");
                assert!(sequencer.gaps(t0 + Duration::from_millis(19), Duration::from_millis(20)).is_empty());
            } else {
                // Nothing after the hole arrived: nothing is known to be missing yet.
                assert!(gaps.is_empty(), "seed {seed}");
            }
            // The fill comes, in any order, with overlaps.
            let mut fill: Vec<Seq> = (hole_from.saturating_sub(2).max(1)..=hole_to).collect();
            for i in 0..fill.len() {
                let j = (i + rng.below(4) as usize).min(fill.len() - 1);
                fill.swap(i, j);
            }
            for seq in fill {
                if let Offered::Deliver(events) = sequencer.offer(&"c:1", seq, seq, t0) {
                    delivered.extend(events.into_iter().map(|(s, _)| s));
                }
            }
            assert_eq!(delivered, (1..=n).collect::<Vec<_>>(), "seed {seed}");
            assert!(sequencer.gaps(t0 + Duration::from_secs(1), Duration::ZERO).is_empty());
        }
    }

    #[test]
    fn streams_are_independent_and_unfollowed_ones_are_refused() {
        let now = Instant::now();
        let mut sequencer: Sequencer<&str, &str> = Sequencer::new(10);
        sequencer.follow("c:1", 0);
        sequencer.follow("u:7", 41);
        assert_eq!(sequencer.offer(&"c:1", 1, "a", now), Offered::Deliver(vec![(1, "a")]));
        assert_eq!(sequencer.offer(&"u:7", 41, "old", now), Offered::Duplicate);
        assert_eq!(sequencer.offer(&"u:7", 42, "b", now), Offered::Deliver(vec![(42, "b")]));
        assert_eq!(sequencer.offer(&"c:2", 1, "x", now), Offered::NotFollowed);
        sequencer.leave(&"c:1");
        assert_eq!(sequencer.offer(&"c:1", 2, "c", now), Offered::NotFollowed);
        assert_eq!(sequencer.position(&"u:7"), Some(42));
    }

    #[test]
    fn following_again_moves_forward_only_and_drops_what_the_position_covers() {
        let now = Instant::now();
        let mut sequencer: Sequencer<u8, Seq> = Sequencer::new(10);
        sequencer.follow(1, 5);
        assert_eq!(sequencer.offer(&1, 8, 8, now), Offered::Deliver(vec![]));
        assert_eq!(sequencer.offer(&1, 9, 9, now), Offered::Deliver(vec![]));
        assert!(sequencer.follow(1, 3).is_empty());
        assert_eq!(sequencer.position(&1), Some(5));
        assert_eq!(sequencer.follow(1, 8), vec![(9, 9)]);
        assert_eq!(sequencer.offer(&1, 10, 10, now), Offered::Deliver(vec![(10, 10)]));
        assert!(sequencer.gaps(now, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_gap_that_is_never_filled_is_given_up_when_too_much_waits_behind_it() {
        let now = Instant::now();
        let mut sequencer: Sequencer<u8, Seq> = Sequencer::new(3);
        sequencer.follow(1, 0);
        for seq in 3..=5 {
            assert_eq!(sequencer.offer(&1, seq, seq, now), Offered::Deliver(vec![]));
        }
        // A fourth held event: 1 and 2 are given up, and everything held goes out.
        assert_eq!(
            sequencer.offer(&1, 6, 6, now),
            Offered::Lost { from: 1, to: 2, then: vec![(3, 3), (4, 4), (5, 5), (6, 6)] }
        );
        assert_eq!(sequencer.offer(&1, 2, 2, now), Offered::Duplicate);
        assert_eq!(sequencer.position(&1), Some(6));
    }

    #[test]
    fn listeners_join_and_leave_and_a_rewind_keeps_them() {
        let now = Instant::now();
        let mut sequencer: Sequencer<&str, Seq> = Sequencer::new(10);
        sequencer.join("c:1", 3);
        sequencer.join("c:1", 2);
        assert_eq!(sequencer.position(&"c:1"), Some(3), "the further position");
        assert_eq!(sequencer.offer(&"c:1", 4, 4, now), Offered::Deliver(vec![(4, 4)]));
        // A failed commit: 4 was never stored; 4 comes again, and is delivered.
        sequencer.rewind(&"c:1", 3);
        assert_eq!(sequencer.offer(&"c:1", 4, 40, now), Offered::Deliver(vec![(4, 40)]));
        sequencer.leave(&"c:1");
        assert_eq!(sequencer.position(&"c:1"), Some(4), "one listener is left");
        sequencer.leave(&"c:1");
        assert_eq!(sequencer.position(&"c:1"), None, "forgotten with the last");
        assert_eq!(sequencer.offer(&"c:1", 5, 5, now), Offered::NotFollowed);
    }
}
