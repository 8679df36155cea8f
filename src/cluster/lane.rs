//! The presence lane (design/cluster.md §5.8): a helper thread with a blocking Redis
//! connection that keeps this node's share of presence in Redis, with one script per
//! change, its lease, and the reaping of nodes whose lease ran out.
//!
//! The lane keeps a ledger of what this node contributes (per topic and user, its
//! connection count) and tells Redis absolute counts, never deltas: a command repeated
//! after a lost answer changes nothing, and after Redis lost its data (or this node's
//! lease, to a stall or a partition) the whole ledger is told again. While Redis cannot
//! be reached, changes go to the ledger only, admissions are granted (fail open) and
//! the loop shows presence from its own sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::bus::{Conn, Frame, encode, topic_key};
use crate::config::RedisUrl;
use crate::hub::ConnId;
use crate::model::UserId;

/// What the loop asks of the lane.
#[derive(Debug)]
pub enum Job {
    /// This node now holds `count` connections of `user` in `topic`. With a `cap`, an
    /// increase past it (over all nodes) is refused, and `conn` hears the decision.
    Set { topic: String, user: UserId, name: Arc<str>, count: u32, cap: u32, conn: Option<ConnId> },
    /// The topic's users over all nodes, and its version (a mirror loads or reloads).
    Load(String),
    /// The topic is no longer mirrored here (its version is no longer checked).
    Unload(String),
}

/// What the lane tells the loop.
#[derive(Debug)]
pub enum Said {
    /// An opening connection may open (`ok`) or is past its user's cap.
    Admitted { conn: ConnId, ok: bool },
    /// A topic's users (with their connection counts over all nodes) at version `ver`.
    Loaded { topic: String, ver: i64, users: Vec<(UserId, Arc<str>, u32)> },
    /// The versions of the mirrored topics now: a mirror behind missed an event.
    Versions(Vec<(String, i64)>),
    /// Redis answers (again), or does not.
    Up(bool),
    /// The ledger was told again (Redis lost its data, or this node its lease): every
    /// mirror reloads.
    Rebuilt,
    /// Nodes whose lease ran out, reaped by this node.
    Reaped(u32),
}

const TIMEOUT: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_secs(1);
const REAP_EVERY: Duration = Duration::from_millis(500);

/// `set_count`: this node's count of a user in a topic becomes `ARGV[2]`; the total over
/// all nodes changes by the difference, and a change is published with the topic's next
/// version. A 0→1 total is a join, 1→0 a leave. Refused past a cap, and for a node
/// whose lease is gone (its share was reaped: a late close changes nothing).
/// KEYS: count, this node's hash, names, ver, channel, node-topics, nodes.
/// ARGV: user, count, name, cap (0: none), topic, node. Returns {1 | 0 refused | -1 no
/// lease, total}.
const SET_COUNT: &str = r#"
local user, want, name, cap = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[7], ARGV[6]) then return {-1, 0} end
local total = tonumber(redis.call('HGET', KEYS[1], user) or '0')
local mine = tonumber(redis.call('HGET', KEYS[2], user) or '0')
local delta = want - mine
if delta == 0 then return {1, total} end
if delta > 0 and cap > 0 and total + delta > cap then return {0, total} end
if want > 0 then
  redis.call('HSET', KEYS[2], user, want)
  redis.call('SADD', KEYS[6], ARGV[5])
else
  redis.call('HDEL', KEYS[2], user)
end
local new = total + delta
local kind = 'count'
if new > 0 then redis.call('HSET', KEYS[1], user, new) else redis.call('HDEL', KEYS[1], user) end
if total <= 0 and new > 0 then
  redis.call('HSET', KEYS[3], user, name)
  kind = 'join'
elseif new <= 0 then
  name = redis.call('HGET', KEYS[3], user) or name
  redis.call('HDEL', KEYS[3], user)
  kind = 'leave'
  new = 0
end
local ver = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', KEYS[5], cjson.encode({ver, kind, user, name, new}))
return {1, new}
"#;

/// `snapshot`: a topic's version, names and counts. KEYS: ver, names, count.
const SNAPSHOT: &str = r#"
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"#;

/// `lease`: this node's lease runs to Redis's now + ARGV[2] ms. Unless registering
/// (ARGV[3] = 1), a lease that is gone or ran out is not renewed (0): the node may have
/// been reaped, and registers again under a new id. KEYS: nodes.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] ~= '1' and (not score or tonumber(score) < now) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"#;

/// `expired`: up to 10 nodes whose lease ran out. KEYS: nodes.
const EXPIRED: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 10)
"#;

/// `reap`: subtracts a node's share from up to 100 of its topics, publishing a leave
/// where a total reaches 0; once none is left, the node is forgotten. KEYS: the node's
/// topics, nodes. ARGV: node, prefix. Returns {topics reaped, 1 when done}.
const REAP: &str = r#"
local node, p = ARGV[1], ARGV[2]
local topics = redis.call('SPOP', KEYS[1], 100)
for _, topic in ipairs(topics) do
  local base = p .. ':{t:' .. topic .. '}'
  local mine = base .. ':node:' .. node
  local entries = redis.call('HGETALL', mine)
  for i = 1, #entries, 2 do
    local user = entries[i]
    local new = redis.call('HINCRBY', base .. ':count', user, -tonumber(entries[i + 1]))
    local kind, name = 'count', redis.call('HGET', base .. ':name', user) or ''
    if new <= 0 then
      redis.call('HDEL', base .. ':count', user)
      redis.call('HDEL', base .. ':name', user)
      kind, new = 'leave', 0
    end
    local ver = redis.call('INCR', base .. ':ver')
    redis.call('PUBLISH', base .. ':ev', cjson.encode({ver, kind, user, name, new}))
  end
  redis.call('DEL', mine)
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], node)
  return {#topics, 1}
end
return {#topics, 0}
"#;

struct Scripts {
    set_count: String,
    snapshot: String,
    lease: String,
    expired: String,
    reap: String,
}

/// The loop's handle: dropping it ends the thread, which first takes this node's share
/// out of Redis (a clean stop is not a crash: nobody waits for a lease).
pub struct PresenceLane {
    jobs: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PresenceLane {
    pub fn start(url: RedisUrl, lease: Duration, said: Sender<Said>, wake: Box<dyn Fn() + Send>) -> PresenceLane {
        let (jobs, inbox) = std::sync::mpsc::channel();
        let mut lane = Lane::new(url, lease);
        let thread = std::thread::Builder::new()
            .name("presence".into())
            .spawn(move || lane.run(inbox, said, wake))
            .unwrap_or_else(|e| panic!("cannot start the presence thread: {e}"));
        PresenceLane { jobs: Some(jobs), thread: Some(thread) }
    }

    pub fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

impl Drop for PresenceLane {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A new node id: a fresh one per process start, and after a lost lease.
fn node_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (nanos.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Lane {
    url: RedisUrl,
    prefix: String,
    lease: Duration,
    node: String,
    conn: Option<Conn>,
    scripts: Option<Scripts>,
    retry_at: Instant,
    /// This node's share: per (topic, user), its name and connection count.
    ledger: HashMap<(String, UserId), (Arc<str>, u32)>,
    /// Entries changed while Redis could not be told.
    dirty: HashSet<(String, UserId)>,
    /// Topics mirrored by the loop: their versions are checked with each lease.
    mirrored: HashSet<String>,
    /// The id Redis was started with, as this node last saw it.
    epoch: Option<String>,
    registered: bool,
    next_lease: Instant,
    next_reap: Instant,
}

impl Lane {
    fn new(url: RedisUrl, lease: Duration) -> Lane {
        let now = Instant::now();
        Lane {
            prefix: url.prefix.clone(),
            url,
            lease,
            node: node_id(),
            conn: None,
            scripts: None,
            retry_at: now,
            ledger: HashMap::new(),
            dirty: HashSet::new(),
            mirrored: HashSet::new(),
            epoch: None,
            registered: false,
            next_lease: now,
            next_reap: now,
        }
    }

    /// How often the lease is renewed: a third of it, at most every 2 s.
    fn renew_every(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(2))
    }

    fn run(&mut self, inbox: Receiver<Job>, said: Sender<Said>, wake: Box<dyn Fn() + Send>) {
        let mut out = Vec::new();
        loop {
            let next = if self.conn.is_some() { self.next_lease.min(self.next_reap) } else { self.retry_at };
            let mut jobs = Vec::new();
            match inbox.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            jobs.extend(inbox.try_iter());
            self.turn(jobs, &mut out);
            if !out.is_empty() {
                for s in out.drain(..) {
                    if said.send(s).is_err() {
                        return;
                    }
                }
                wake();
            }
        }
        self.leave();
    }

    fn turn(&mut self, jobs: Vec<Job>, out: &mut Vec<Said>) {
        let now = Instant::now();
        if self.conn.is_none() && now >= self.retry_at {
            self.connect(out);
        }
        if !jobs.is_empty() {
            self.handle(jobs, out);
        }
        if self.conn.is_some() && Instant::now() >= self.next_lease {
            self.next_lease = Instant::now() + self.renew_every();
            if let Err(e) = self.renew(out) {
                self.lost(&e, out);
            }
        }
        if self.conn.is_some() && Instant::now() >= self.next_reap {
            self.next_reap = Instant::now() + REAP_EVERY;
            if let Err(e) = self.reap_expired(out) {
                self.lost(&e, out);
            }
        }
    }

    fn lost(&mut self, e: &str, out: &mut Vec<Said>) {
        if self.conn.take().is_some() {
            log::warn!("presence: lost Redis ({e}); presence is this node's own until it is back");
            out.push(Said::Up(false));
        }
        self.retry_at = self.retry_at.max(Instant::now()).min(Instant::now() + RETRY);
    }

    fn key(&self, topic: &str, what: &str) -> String {
        topic_key(&self.prefix, topic, what)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn topics_key(&self, node: &str) -> String {
        format!("{}:node-topics:{node}", self.prefix)
    }

    /// Connects, loads the scripts, checks Redis's epoch and this node's lease, and
    /// tells Redis what it missed: the whole ledger if Redis lost its data or the lease,
    /// else what changed meanwhile.
    fn connect(&mut self, out: &mut Vec<Said>) {
        let connected = (|| -> Result<(), String> {
            let mut conn = Conn::connect(&self.url, TIMEOUT)?;
            let mut load = |script: &str| -> Result<String, String> {
                match conn.call(&[b"SCRIPT", b"LOAD", script.as_bytes()])? {
                    Frame::Bulk(Some(sha)) => Ok(String::from_utf8_lossy(&sha).into_owned()),
                    other => Err(format!("SCRIPT LOAD answered {other:?}")),
                }
            };
            self.scripts = Some(Scripts {
                set_count: load(SET_COUNT)?,
                snapshot: load(SNAPSHOT)?,
                lease: load(LEASE)?,
                expired: load(EXPIRED)?,
                reap: load(REAP)?,
            });
            let epoch_key = format!("{}:epoch", self.prefix);
            conn.call(&[b"SET", epoch_key.as_bytes(), node_id().as_bytes(), b"NX"])?;
            let epoch = match conn.call(&[b"GET", epoch_key.as_bytes()])? {
                Frame::Bulk(Some(epoch)) => String::from_utf8_lossy(&epoch).into_owned(),
                other => return Err(format!("GET epoch answered {other:?}")),
            };
            self.conn = Some(conn);
            let lost_data = self.epoch.as_ref().is_some_and(|known| *known != epoch);
            if lost_data {
                log::warn!("presence: Redis lost its data; telling it this node's sessions again");
            }
            self.epoch = Some(epoch);
            out.push(Said::Up(true));
            let renewed = self.registered && !lost_data && self.lease_call(false)?;
            if !renewed {
                self.register(out)?;
            } else {
                let dirty: Vec<_> = self.dirty.iter().cloned().collect();
                self.tell(&dirty)?;
            }
            Ok(())
        })();
        match connected {
            Ok(()) => {
                log::info!("presence: Redis answers; node {}", self.node);
                self.next_lease = Instant::now() + self.renew_every();
            }
            Err(e) => {
                if self.retry_at.elapsed() < RETRY * 2 || self.epoch.is_none() {
                    log::warn!("presence: cannot reach Redis ({e}); trying again every second");
                }
                self.conn = None;
                self.retry_at = Instant::now() + RETRY;
            }
        }
    }

    fn scripts(&self) -> &Scripts {
        self.scripts.as_ref().expect("scripts are loaded when connected")
    }

    fn conn(&mut self) -> Result<&mut Conn, String> {
        self.conn.as_mut().ok_or_else(|| "not connected".to_string())
    }

    fn lease_call(&mut self, register: bool) -> Result<bool, String> {
        let (sha, nodes, node) = (self.scripts().lease.clone(), self.nodes_key(), self.node.clone());
        let ms = self.lease.as_millis().to_string();
        let flag: &[u8] = if register { b"1" } else { b"0" };
        let answer = self.conn()?.call(&[
            b"EVALSHA",
            sha.as_bytes(),
            b"1",
            nodes.as_bytes(),
            node.as_bytes(),
            ms.as_bytes(),
            flag,
        ])?;
        Ok(answer == Frame::Integer(1))
    }

    /// Registers (a first time, or under a new id after the lease was lost) and tells
    /// Redis the whole ledger; the loop's mirrors reload.
    fn register(&mut self, out: &mut Vec<Said>) -> Result<(), String> {
        if self.registered {
            self.node = node_id();
            log::warn!("presence: this node's lease was lost; registered again as node {}", self.node);
        }
        self.lease_call(true)?;
        let was_registered = std::mem::replace(&mut self.registered, true);
        let all: Vec<_> = self.ledger.keys().cloned().collect();
        self.tell(&all)?;
        if was_registered {
            out.push(Said::Rebuilt);
        }
        Ok(())
    }

    fn renew(&mut self, out: &mut Vec<Said>) -> Result<(), String> {
        if self.url.sentinel.is_some() {
            // A failover: the master is elsewhere now (and this one a replica).
            let master = crate::bus::resolve(&self.url, TIMEOUT)?;
            if self.conn.as_ref().is_some_and(|c| c.addr != master) {
                self.retry_at = Instant::now();
                return Err(format!("the Sentinels name a new master, {master}"));
            }
        }
        if !self.lease_call(false)? {
            self.register(out)?;
        }
        if !self.mirrored.is_empty() {
            let topics: Vec<String> = self.mirrored.iter().cloned().collect();
            let keys: Vec<String> = topics.iter().map(|t| self.key(t, "ver")).collect();
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            if let Frame::Array(Some(vers)) = self.conn()?.call(&args)? {
                let versions = topics.into_iter().zip(vers).map(|(topic, ver)| (topic, integer(&ver))).collect();
                out.push(Said::Versions(versions));
            }
        }
        Ok(())
    }

    /// Tells Redis the ledger's entries `keys` (absolute counts, no cap).
    fn tell(&mut self, keys: &[(String, UserId)]) -> Result<(), String> {
        for chunk in keys.chunks(256) {
            let commands: Vec<Vec<u8>> = chunk
                .iter()
                .map(|key| {
                    let (name, count) = self.ledger.get(key).cloned().unwrap_or_else(|| (Arc::from(""), 0));
                    self.set_command(&key.0, &key.1, &name, count, 0)
                })
                .collect();
            let answers = self.conn()?.pipeline(&commands)?;
            if let Some(Frame::Error(e)) = answers.iter().find(|a| matches!(a, Frame::Error(_))) {
                return Err(format!("Redis said: {e}"));
            }
            for key in chunk {
                self.dirty.remove(key);
                if self.ledger.get(key).is_some_and(|(_, count)| *count == 0) {
                    self.ledger.remove(key);
                }
            }
        }
        Ok(())
    }

    fn set_command(&self, topic: &str, user: &UserId, name: &str, count: u32, cap: u32) -> Vec<u8> {
        let keys = [
            self.key(topic, "count"),
            self.key(topic, &format!("node:{}", self.node)),
            self.key(topic, "name"),
            self.key(topic, "ver"),
            self.key(topic, "ev"),
            self.topics_key(&self.node),
            self.nodes_key(),
        ];
        let (count, cap) = (count.to_string(), cap.to_string());
        let mut args: Vec<&[u8]> = vec![b"EVALSHA", self.scripts().set_count.as_bytes(), b"7"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([user.as_str().as_bytes(), count.as_bytes(), name.as_bytes(), cap.as_bytes()]);
        args.extend([topic.as_bytes(), self.node.as_bytes()]);
        encode(&args)
    }

    fn handle(&mut self, jobs: Vec<Job>, out: &mut Vec<Said>) {
        // The ledger first: it is this node's truth whatever Redis says.
        let mut sets = Vec::new();
        let mut loads = Vec::new();
        for job in jobs {
            match job {
                Job::Set { topic, user, name, count, cap, conn } => {
                    let key = (topic, user);
                    let before = self.ledger.get(&key).map_or(0, |(_, c)| *c);
                    self.ledger.insert(key.clone(), (name, count));
                    self.dirty.insert(key.clone());
                    sets.push((key, count, if count > before { cap } else { 0 }, conn, before));
                }
                Job::Load(topic) => {
                    self.mirrored.insert(topic.clone());
                    loads.push(topic);
                }
                Job::Unload(topic) => {
                    self.mirrored.remove(&topic);
                }
            }
        }
        let mut told = false;
        if self.conn.is_some() {
            let mut commands: Vec<Vec<u8>> = sets
                .iter()
                .map(|((topic, user), count, cap, _, _)| {
                    let name = self.ledger.get(&(topic.clone(), user.clone())).map(|(n, _)| n.clone());
                    self.set_command(topic, user, name.as_deref().unwrap_or(""), *count, *cap)
                })
                .collect();
            let sha = self.scripts().snapshot.clone();
            for topic in &loads {
                let keys = [self.key(topic, "ver"), self.key(topic, "name"), self.key(topic, "count")];
                let mut args: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), b"3"];
                args.extend(keys.iter().map(|k| k.as_bytes()));
                commands.push(encode(&args));
            }
            match self.conn.as_mut().expect("connected").pipeline(&commands) {
                Ok(answers) => {
                    told = true;
                    let mut answers = answers.into_iter();
                    let mut lease_gone = false;
                    let mut broken = None;
                    for ((key, count, _, conn, before), answer) in sets.iter().zip(answers.by_ref()) {
                        let status = match &answer {
                            Frame::Array(Some(items)) => items.first().map(integer).unwrap_or(-2),
                            _ => -2,
                        };
                        match status {
                            1 => {
                                if self.ledger.get(key).is_some_and(|(_, c)| c == count) {
                                    self.dirty.remove(key);
                                }
                            }
                            0 => {
                                // Past the cap: this node's count stays what it was.
                                if let Some(entry) = self.ledger.get_mut(key) {
                                    entry.1 = *before;
                                }
                                self.dirty.remove(key);
                            }
                            -1 => lease_gone = true,
                            _ => {
                                // READONLY (a master demoted by a failover), NOSCRIPT: a
                                // new connection sorts it out, and the entry stays dirty.
                                log::warn!("presence: Redis answered {answer:?}");
                                broken = Some(format!("Redis answered {answer:?}"));
                            }
                        }
                        if let Some(conn) = conn {
                            out.push(Said::Admitted { conn: *conn, ok: status != 0 });
                        }
                    }
                    for (topic, answer) in loads.iter().zip(answers) {
                        match loaded(topic, answer) {
                            Ok(said) => out.push(said),
                            Err(e) => broken = Some(e),
                        }
                    }
                    if let Some(e) = broken {
                        // Connected again, every mirror reloads (`Said::Up`).
                        self.lost(&e, out);
                    } else if lease_gone && let Err(e) = self.register(out) {
                        self.lost(&e, out);
                    }
                }
                Err(e) => self.lost(&e, out),
            }
        }
        if !told {
            // Fail open: this node's own sessions are what it shows.
            for (_, _, _, conn, _) in sets {
                if let Some(conn) = conn {
                    out.push(Said::Admitted { conn, ok: true });
                }
            }
        }
        self.ledger.retain(|key, (_, count)| *count > 0 || self.dirty.contains(key));
    }

    /// Reaps nodes whose lease ran out, each by one node only (`SET … NX`).
    fn reap_expired(&mut self, out: &mut Vec<Said>) -> Result<(), String> {
        let (expired, nodes) = (self.scripts().expired.clone(), self.nodes_key());
        let Frame::Array(Some(dead)) = self.conn()?.call(&[b"EVALSHA", expired.as_bytes(), b"1", nodes.as_bytes()])?
        else {
            return Ok(());
        };
        let mut reaped = 0;
        for node in dead {
            let Frame::Bulk(Some(node)) = node else { continue };
            let node = String::from_utf8_lossy(&node).into_owned();
            if node == self.node {
                continue; // renewed at the next lease, or registered again
            }
            let claim = format!("{}:reap:{node}", self.prefix);
            if self.conn()?.call(&[b"SET", claim.as_bytes(), b"1", b"NX", b"PX", b"30000"])? == Frame::Bulk(None) {
                continue;
            }
            if self.reap(&node)? {
                reaped += 1;
                log::warn!("presence: node {node}'s lease ran out; its users were taken out of presence");
            }
        }
        if reaped > 0 {
            out.push(Said::Reaped(reaped));
        }
        Ok(())
    }

    /// Takes a node's share out of Redis, 100 topics per call. Whether it is done.
    fn reap(&mut self, node: &str) -> Result<bool, String> {
        let (sha, topics, nodes, prefix) =
            (self.scripts().reap.clone(), self.topics_key(node), self.nodes_key(), self.prefix.clone());
        for _ in 0..1000 {
            let answer = self.conn()?.call(&[
                b"EVALSHA",
                sha.as_bytes(),
                b"2",
                topics.as_bytes(),
                nodes.as_bytes(),
                node.as_bytes(),
                prefix.as_bytes(),
            ])?;
            if let Frame::Array(Some(items)) = answer
                && items.get(1).map(integer) == Some(1)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A clean stop: this node's share leaves Redis at once.
    fn leave(&mut self) {
        if self.conn.is_some() && self.registered {
            let node = self.node.clone();
            match self.reap(&node) {
                Ok(_) => log::info!("presence: node {node} left"),
                Err(e) => log::warn!("presence: cannot leave cleanly ({e}); the lease runs out instead"),
            }
        }
    }
}

fn integer(frame: &Frame) -> i64 {
    match frame {
        Frame::Integer(n) => *n,
        Frame::Bulk(Some(bytes)) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

fn loaded(topic: &str, answer: Frame) -> Result<Said, String> {
    let mut users = Vec::new();
    let Frame::Array(Some(items)) = answer else { return Err(format!("a snapshot answered {answer:?}")) };
    let [v, Frame::Array(Some(names)), Frame::Array(Some(counts))] = items.as_slice() else {
        return Err(format!("a snapshot answered {items:?}"));
    };
    let ver = integer(v);
    {
        let counts: HashMap<&[u8], i64> = counts
            .chunks(2)
            .filter_map(|pair| match pair {
                [Frame::Bulk(Some(user)), count] => Some((user.as_slice(), integer(count))),
                _ => None,
            })
            .collect();
        for pair in names.chunks(2) {
            if let [Frame::Bulk(Some(user)), Frame::Bulk(Some(name))] = pair {
                let total = counts.get(user.as_slice()).copied().unwrap_or(0);
                if total > 0 {
                    let user = UserId::new(&String::from_utf8_lossy(user));
                    users.push((user, Arc::from(String::from_utf8_lossy(name).as_ref()), total as u32));
                }
            }
        }
    }
    Ok(Said::Loaded { topic: topic.to_string(), ver, users })
}
