//! Presence across nodes (design/cluster.md §5.8), the loop's side: what this node's
//! clients are shown of who is online and who is in a room, when users connect to other
//! nodes too. A node with Redis holds, per presence topic it follows (`online`, a
//! room's `room:<id>`), a *mirror*: the users Redis counts connected on any node,
//! loaded once and kept by the changes the presence scripts publish (`bus.rs`), and
//! reloaded whenever one may have been missed (a version skipped, a reconnect, Redis
//! lost its data).
//!
//! What a node's clients are shown of a topic is its *view*: the users with sessions
//! here, plus the mirror's. Every change (a session here, a change heard, a reload) is
//! a difference between the view and what was shown (`Mirror::shown`); only a
//! difference is told, so a user is joined or left once per node whatever the tabs,
//! the nodes and the duplicate announcements after a Redis restart.
//!
//! The presence lane (`lane.rs`) keeps this node's share in Redis; the caps and the
//! rate limit of stored messages are decided there too (see `Job::Set`, and the writer
//! lane's `bus::Publisher::admit`).

pub mod lane;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::bus::PresenceEvent;
use crate::config::RedisUrl;
use crate::hub::ConnId;
use crate::model::UserId;
pub use lane::Said;
use lane::{Job, PresenceLane};

/// The topic of everyone online (presence, `/api/online`, the per-user cap).
pub const ONLINE: &str = "online";

/// A room's presence topic (its users list, `user_join`, `user_leave`).
pub fn room_topic(conversation: i64) -> String {
    format!("room:{conversation}")
}

/// The room of a room's presence topic.
pub fn room_of(topic: &str) -> Option<i64> {
    topic.strip_prefix("room:")?.parse().ok()
}

/// One presence topic as this node knows it.
#[derive(Default)]
pub struct Mirror {
    /// Users connected to the topic on any node, as Redis counts them: name and count.
    pub remote: HashMap<UserId, (Arc<str>, u32)>,
    ver: i64,
    /// A load is under way: changes heard meanwhile wait for it.
    loading: Option<Vec<PresenceEvent>>,
    /// What this node's clients were shown: the topic's users with their names.
    pub shown: HashMap<UserId, Arc<str>>,
    /// The version Redis held at the last check (see `Cluster::versions`).
    checked: Option<i64>,
    /// Loaded since a reconnect, while other nodes may still be telling Redis their
    /// sessions again: a load adds users, and takes nobody away (see `Cluster::settle`).
    additive: bool,
}

/// How long after a reconnect loads only add users, at least: other nodes tell a Redis
/// that lost its data their sessions again within about a second of its return. The
/// node lease bounds it (`Cluster::settle_for`): a node that has not told Redis again
/// within a lease is taken for dead, as the reaper would.
const SETTLE: Duration = Duration::from_secs(3);

pub struct Cluster {
    lane: PresenceLane,
    said: Receiver<Said>,
    mirrors: HashMap<String, Mirror>,
    /// The presence lane reaches Redis: the mirrors are current.
    pub up: bool,
    /// When the mirrors loaded since a reconnect load again, whole (`settle`), and how
    /// long after a reconnect that is.
    settle_at: Option<std::time::Instant>,
    settle_for: Duration,
}

impl Cluster {
    pub fn start(url: RedisUrl, lease: Duration, wake: Box<dyn Fn() + Send>) -> Cluster {
        let (tell, said) = std::sync::mpsc::channel();
        let lane = PresenceLane::start(url, lease, tell, wake);
        let settle_for = lease.max(SETTLE);
        let mut cluster = Cluster { lane, said, mirrors: HashMap::new(), up: false, settle_at: None, settle_for };
        cluster.mirror(ONLINE);
        cluster
    }

    /// This node now holds `count` connections of `user` in `topic`. With `admit`, the
    /// count is an increase that the user's cap may refuse, and that connection hears
    /// the decision (`Said::Admitted`).
    pub fn set(&self, topic: &str, user: &UserId, name: &Arc<str>, count: u32, admit: Option<(ConnId, u32)>) {
        let (conn, cap) = admit.map_or((None, 0), |(conn, cap)| (Some(conn), cap));
        let job = Job::Set { topic: topic.to_string(), user: user.clone(), name: name.clone(), count, cap, conn };
        self.lane.send(job);
    }

    /// Follows a topic (its mirror loads); whether it is new here (then its channel is
    /// to be subscribed).
    pub fn mirror(&mut self, topic: &str) -> bool {
        if self.mirrors.contains_key(topic) {
            return false;
        }
        self.mirrors.insert(topic.to_string(), Mirror { loading: Some(Vec::new()), ..Mirror::default() });
        self.lane.send(Job::Load(topic.to_string()));
        true
    }

    /// Stops following a topic.
    pub fn unmirror(&mut self, topic: &str) {
        if self.mirrors.remove(topic).is_some() {
            self.lane.send(Job::Unload(topic.to_string()));
        }
    }

    pub fn get(&self, topic: &str) -> Option<&Mirror> {
        self.mirrors.get(topic)
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut Mirror> {
        self.mirrors.get_mut(topic)
    }

    /// The topics followed here.
    pub fn topics(&self) -> Vec<String> {
        self.mirrors.keys().cloned().collect()
    }

    /// What the presence lane said since the last call.
    pub fn said(&self) -> Vec<Said> {
        self.said.try_iter().collect()
    }

    /// Loads a mirror again (changes heard meanwhile wait for it).
    pub fn reload(&mut self, topic: &str) {
        if let Some(mirror) = self.mirrors.get_mut(topic)
            && mirror.loading.is_none()
        {
            mirror.loading = Some(Vec::new());
            self.lane.send(Job::Load(topic.to_string()));
        }
    }

    /// Loads every mirror again, loads under way included (one asked while Redis was
    /// away is never answered): after a reconnect of the lane or of the subscription.
    /// Redis may have lost its data and not be told every node's sessions again yet, so
    /// these loads only add users for a while; then every mirror loads again, whole
    /// (`settle`). Nobody still connected is shown gone in between.
    pub fn reload_all(&mut self) {
        self.settle_at = Some(std::time::Instant::now() + self.settle_for);
        for (topic, mirror) in &mut self.mirrors {
            mirror.loading = Some(mirror.loading.take().unwrap_or_default());
            mirror.additive = true;
            self.lane.send(Job::Load(topic.clone()));
        }
    }

    /// Whether the view of who is online is whole: Redis reached, the `online` mirror
    /// loaded, and no reconnect still settling.
    pub fn settled(&self) -> bool {
        self.up && self.settle_at.is_none() && self.mirrors.get(ONLINE).is_some_and(|m| m.loading.is_none())
    }

    /// From the sweep: once a reconnect has settled, the mirrors load whole again.
    pub fn settle(&mut self, now: std::time::Instant) {
        if self.settle_at.is_some_and(|at| now >= at) {
            self.settle_at = None;
            for (topic, mirror) in &mut self.mirrors {
                mirror.additive = false;
                mirror.loading = Some(mirror.loading.take().unwrap_or_default());
                self.lane.send(Job::Load(topic.clone()));
            }
        }
    }

    /// A change heard on the bus; the user whose view may have changed. A version
    /// skipped means a change was missed: the mirror reloads.
    pub fn heard(&mut self, event: PresenceEvent) -> Option<UserId> {
        let mirror = self.mirrors.get_mut(&event.topic)?;
        if let Some(waiting) = &mut mirror.loading {
            waiting.push(event);
            return None;
        }
        if event.ver <= mirror.ver {
            return None;
        }
        let skipped = event.ver > mirror.ver + 1;
        let topic = event.topic.clone();
        let user = mirror.apply(event);
        if skipped {
            self.reload(&topic);
        }
        Some(user)
    }

    /// A mirror's load came: the users whose view may have changed.
    pub fn loaded(&mut self, topic: &str, ver: i64, users: Vec<(UserId, Arc<str>, u32)>) -> Vec<UserId> {
        let Some(mirror) = self.mirrors.get_mut(topic) else { return Vec::new() };
        let waiting = mirror.loading.take().unwrap_or_default();
        let mut changed: Vec<UserId> = mirror.remote.keys().cloned().collect();
        let loaded: std::collections::HashSet<UserId> = users.iter().map(|(user, _, _)| user.clone()).collect();
        let users = users.into_iter().map(|(user, name, count)| (user, (name, count)));
        if mirror.additive {
            mirror.remote.extend(users);
        } else {
            mirror.remote = users.collect();
        }
        mirror.ver = ver;
        changed.extend(mirror.remote.keys().cloned());
        for event in waiting {
            if event.ver > mirror.ver {
                changed.push(mirror.apply(event));
            } else if mirror.additive && event.total == 0 && !loaded.contains(&event.user) {
                // A leave heard while loading, which the load agrees with: adding the
                // loaded users to the old ones must not bring the user back.
                mirror.remote.remove(&event.user);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// The versions Redis holds now. A mirror still behind the version of the check
    /// before missed a change (one only on its way when Redis was asked is not missed:
    /// under steady changes a mirror is always a little behind), and one ahead of Redis
    /// follows a Redis that started again: they reload.
    pub fn versions(&mut self, versions: Vec<(String, i64)>) {
        for (topic, ver) in versions {
            let Some(mirror) = self.mirrors.get_mut(&topic) else { continue };
            let missed = mirror.ver > ver || mirror.checked.is_some_and(|before| mirror.ver < before);
            mirror.checked = Some(ver);
            if missed && mirror.loading.is_none() {
                mirror.checked = None;
                self.reload(&topic);
            }
        }
    }
}

impl Mirror {
    fn apply(&mut self, event: PresenceEvent) -> UserId {
        self.ver = event.ver;
        if event.total > 0 {
            self.remote.insert(event.user.clone(), (Arc::from(event.name.as_str()), event.total));
        } else {
            self.remote.remove(&event.user);
        }
        event.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ver: i64, user: &str, total: u32) -> PresenceEvent {
        PresenceEvent { topic: ONLINE.into(), ver, user: UserId::new(user), name: user.into(), total }
    }

    fn cluster() -> Cluster {
        // A lane that never reaches Redis (nothing listens on port 1).
        let url = RedisUrl::direct("127.0.0.1:1", None);
        Cluster::start(url, Duration::from_secs(10), Box::new(|| {}))
    }

    #[test]
    fn a_mirror_applies_changes_in_order_and_reloads_when_one_was_missed() {
        let mut c = cluster();
        // Heard while loading: applied after the load, if newer than it.
        assert_eq!(c.heard(event(5, "ann", 1)), None);
        assert_eq!(c.heard(event(6, "bo", 1)), None);
        let changed = c.loaded(ONLINE, 5, vec![(UserId::new("ann"), "ann".into(), 1)]);
        assert_eq!(changed, vec![UserId::new("ann"), UserId::new("bo")]);
        let mirror = c.get(ONLINE).unwrap();
        assert_eq!(mirror.remote.len(), 2);
        assert_eq!(mirror.ver, 6);
        // Old and repeated changes change nothing.
        assert_eq!(c.heard(event(6, "bo", 0)), None);
        assert_eq!(c.heard(event(7, "bo", 0)), Some(UserId::new("bo")));
        assert!(!c.get(ONLINE).unwrap().remote.contains_key(&UserId::new("bo")));
        // A skipped version: applied, and the mirror loads again.
        assert_eq!(c.heard(event(9, "cy", 2)), Some(UserId::new("cy")));
        assert!(c.get(ONLINE).unwrap().loading.is_some());
        let changed = c.loaded(ONLINE, 9, vec![(UserId::new("cy"), "cy".into(), 2)]);
        assert_eq!(changed, vec![UserId::new("ann"), UserId::new("cy")]);
        // A version check: a change on its way is not missed; one still missing at the
        // next check is, and so is a Redis behind the mirror (it started again).
        c.versions(vec![(ONLINE.into(), 10)]);
        assert!(c.get(ONLINE).unwrap().loading.is_none());
        assert_eq!(c.heard(event(10, "dee", 1)), Some(UserId::new("dee")));
        c.versions(vec![(ONLINE.into(), 12)]);
        assert!(c.get(ONLINE).unwrap().loading.is_none(), "10 arrived; 11 and 12 may be on their way");
        c.versions(vec![(ONLINE.into(), 12)]);
        assert!(c.get(ONLINE).unwrap().loading.is_some(), "12 did not come");
        c.loaded(ONLINE, 12, Vec::new());
        c.versions(vec![(ONLINE.into(), 3)]);
        assert!(c.get(ONLINE).unwrap().loading.is_some(), "Redis is behind");
    }

    #[test]
    fn after_a_reconnect_loads_add_users_until_the_reconnect_settled() {
        let mut c = cluster();
        let user = |id: &str| (UserId::new(id), Arc::from(id), 1);
        c.loaded(ONLINE, 3, vec![user("ann"), user("bo")]);
        // Redis came back empty: ann's node told it again, bo's not yet.
        c.reload_all();
        c.loaded(ONLINE, 1, vec![user("ann")]);
        assert_eq!(c.get(ONLINE).unwrap().remote.len(), 2, "bo is not taken away yet");
        // A leave heard is a leave, also one heard while a load was on its way.
        assert_eq!(c.heard(event(2, "ann", 0)), Some(UserId::new("ann")));
        c.reload_all();
        assert_eq!(c.heard(event(3, "cy", 1)), None);
        assert_eq!(c.heard(event(4, "cy", 0)), None);
        c.loaded(ONLINE, 4, vec![user("bo")]);
        assert!(!c.get(ONLINE).unwrap().remote.contains_key(&UserId::new("cy")), "cy left");
        assert_eq!(c.get(ONLINE).unwrap().remote.len(), 1);
        c.settle(std::time::Instant::now());
        assert!(c.get(ONLINE).unwrap().loading.is_none(), "not settled yet");
        c.settle(std::time::Instant::now() + c.settle_for);
        assert!(c.get(ONLINE).unwrap().loading.is_some());
        c.loaded(ONLINE, 2, Vec::new());
        assert!(c.get(ONLINE).unwrap().remote.is_empty(), "bo never came back");
    }
}
