//! The Redis bus of a cluster (design/cluster.md §5.5, §5.7), sans IO: what a node
//! subscribes to and what it reads from its subscription, as bytes in and bytes out. The
//! server owns the socket (`server/`), the writer lane publishes (`engine::writer`).
//!
//! After a batch commits, each of its events is published on its stream's channel,
//! `<prefix>:s:<stream key>`, as `{"seq": …, "body": …}`. A node subscribes to the
//! streams it follows. Redis may lose anything at any time: a message missed is found by
//! the next position check (the poll of `engine::postgres`), so the bus only ever saves
//! latency; it is never the only way an event arrives.

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBody};
use crate::model::{Seq, StreamId, UserId};

/// A RESP2 value (what Redis answers and pushes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Frame>>),
}

/// The largest value the bus accepts from Redis (an event is at most 64 KiB of text plus
/// its envelope); past it the connection is dropped as broken.
const MAX_VALUE: usize = 1 << 20;

/// A command as RESP: an array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One value from the front of `buf` and the bytes it took, `None` while incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_VALUE { Err("a line too long".into()) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[1..end]).map_err(|_| "a line that is not UTF-8".to_string())?;
    let after = end + 2;
    let number = || line.parse::<i64>().map_err(|_| format!("not a number: {line:?}"));
    match buf.first() {
        Some(b'+') => Ok(Some((Frame::Simple(line.to_string()), after))),
        Some(b'-') => Ok(Some((Frame::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Frame::Integer(number()?), after))),
        Some(b'$') => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Frame::Bulk(None), after)));
            }
            let len = len as usize;
            if len > MAX_VALUE {
                return Err(format!("a value of {len} bytes"));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            Ok(Some((Frame::Bulk(Some(buf[after..after + len].to_vec())), after + len + 2)))
        }
        Some(b'*') => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Frame::Array(None), after)));
            }
            let mut items = Vec::with_capacity((count as usize).min(16));
            let mut used = after;
            for _ in 0..count {
                match decode(&buf[used..])? {
                    Some((item, n)) => {
                        items.push(item);
                        used += n;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Frame::Array(Some(items)), used)))
        }
        Some(other) => Err(format!("unexpected type byte {other}")),
        None => Ok(None),
    }
}

/// What travels on a stream's channel.
#[derive(Serialize, Deserialize)]
struct Published<B> {
    seq: Seq,
    body: B,
}

/// A stream's channel.
pub fn channel(prefix: &str, stream: &StreamId) -> String {
    format!("{prefix}:s:{}", stream.key())
}

/// An event as published.
pub fn payload(event: &Event) -> String {
    serde_json::to_string(&Published { seq: event.seq, body: &event.body }).expect("events are plain JSON values")
}

/// The stream of a channel, if it is one of ours.
fn stream_of(prefix: &str, channel: &[u8]) -> Option<StreamId> {
    let channel = std::str::from_utf8(channel).ok()?;
    StreamId::from_key(channel.strip_prefix(prefix)?.strip_prefix(":s:")?)
}

/// An event as read from a channel, if it is one of ours.
pub fn event_of(prefix: &str, channel: &[u8], payload: &[u8]) -> Option<Event> {
    let stream = stream_of(prefix, channel)?;
    let published: Published<EventBody> = serde_json::from_slice(payload).ok()?;
    Some(Event { stream, seq: published.seq, body: published.body, except: None })
}

/// A key of a presence topic (`online`, `room:<id>`; design/cluster.md §5.8): the hash
/// tag keeps a topic's keys together.
pub fn topic_key(prefix: &str, topic: &str, what: &str) -> String {
    format!("{prefix}:{{t:{topic}}}:{what}")
}

/// The topic of a presence event channel, if it is one of ours.
fn topic_of<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a str> {
    let channel = std::str::from_utf8(channel).ok()?;
    channel.strip_prefix(prefix)?.strip_prefix(":{t:")?.strip_suffix("}:ev")
}

/// A change of one user's connection count in a presence topic, cluster-wide, as the
/// presence scripts publish it: `[ver, kind, user, name, total]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub topic: String,
    /// The topic's version after the change (one more than before it).
    pub ver: i64,
    pub user: UserId,
    pub name: String,
    /// The user's connections in the topic over all nodes; 0 is a leave.
    pub total: u32,
}

fn presence_event(topic: &str, payload: &[u8]) -> Option<PresenceEvent> {
    let (ver, _kind, user, name, total): (i64, String, String, String, i64) = serde_json::from_slice(payload).ok()?;
    Some(PresenceEvent { topic: topic.to_string(), ver, user: UserId::new(&user), name, total: total.max(0) as u32 })
}

/// The subscription's side of the bus, in the loop: which streams are wanted, what is
/// to be written to Redis, and what was read from it.
pub struct Subscriber {
    prefix: String,
    password: Option<String>,
    wanted: HashSet<StreamId>,
    /// Presence topics followed here (their event channels).
    topics: HashSet<String>,
    /// Streams subscribed while up, not confirmed yet.
    confirming: HashSet<StreamId>,
    /// Bytes to write; emptied by the server as the socket takes them.
    pub out: Vec<u8>,
    inbuf: Vec<u8>,
    /// Connected and subscribed (the first confirmation came back).
    up: bool,
    /// The last bytes read, to notice a subscription gone silent.
    pub heard: Instant,
}

/// What the subscription read.
#[derive(Debug, Default)]
pub struct Heard {
    pub events: Vec<Event>,
    /// The subscription started working (after a connect): a position check is due.
    pub came_up: bool,
    /// Streams subscribed while up, now confirmed: what was published on them before
    /// is to be read from the store (their sessions' snapshots were read before).
    pub subscribed: Vec<StreamId>,
    /// Presence changes, in the order Redis pushed them.
    pub presence: Vec<PresenceEvent>,
}

impl Heard {
    /// What a later read heard, after this.
    pub fn add(&mut self, more: Heard) {
        let Heard { events, came_up, subscribed, presence } = more;
        self.events.extend(events);
        self.came_up |= came_up;
        self.subscribed.extend(subscribed);
        self.presence.extend(presence);
    }
}

impl Subscriber {
    pub fn new(prefix: &str, password: Option<String>) -> Subscriber {
        Subscriber {
            prefix: prefix.to_string(),
            password,
            wanted: HashSet::new(),
            topics: HashSet::new(),
            confirming: HashSet::new(),
            out: Vec::new(),
            inbuf: Vec::new(),
            up: false,
            heard: Instant::now(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// A stream followed here from now on: subscribed (now, or when connected).
    pub fn want(&mut self, stream: &StreamId) {
        if self.wanted.insert(stream.clone()) && self.up {
            let channel = channel(&self.prefix, stream);
            self.out.extend(encode(&[b"SUBSCRIBE", channel.as_bytes()]));
            self.confirming.insert(stream.clone());
        }
    }

    /// A stream no longer followed here.
    pub fn drop_stream(&mut self, stream: &StreamId) {
        self.confirming.remove(stream);
        if self.wanted.remove(stream) && self.up {
            let channel = channel(&self.prefix, stream);
            self.out.extend(encode(&[b"UNSUBSCRIBE", channel.as_bytes()]));
        }
    }

    /// A presence topic followed here from now on.
    pub fn want_topic(&mut self, topic: &str) {
        if self.topics.insert(topic.to_string()) && self.up {
            self.out.extend(encode(&[b"SUBSCRIBE", topic_key(&self.prefix, topic, "ev").as_bytes()]));
        }
    }

    /// A presence topic no longer followed here.
    pub fn drop_topic(&mut self, topic: &str) {
        if self.topics.remove(topic) && self.up {
            self.out.extend(encode(&[b"UNSUBSCRIBE", topic_key(&self.prefix, topic, "ev").as_bytes()]));
        }
    }

    /// A new connection: authenticate, then subscribe to everything wanted (in commands
    /// of up to 512 channels) and a channel of our own, so that a confirmation comes
    /// back even when nothing is wanted yet.
    pub fn connected(&mut self, now: Instant) {
        self.out.clear();
        self.inbuf.clear();
        self.confirming.clear();
        self.up = false;
        self.heard = now;
        if let Some(password) = &self.password {
            self.out.extend(encode(&[b"AUTH", password.as_bytes()]));
        }
        let own = format!("{}:node", self.prefix);
        let mut channels: Vec<String> = vec![own];
        channels.extend(self.wanted.iter().map(|s| channel(&self.prefix, s)));
        channels.extend(self.topics.iter().map(|t| topic_key(&self.prefix, t, "ev")));
        for chunk in channels.chunks(512) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(chunk.iter().map(|c| c.as_bytes()));
            self.out.extend(encode(&args));
        }
    }

    /// The connection is gone.
    pub fn disconnected(&mut self) {
        self.up = false;
        self.confirming.clear();
        self.out.clear();
        self.inbuf.clear();
    }

    /// A keep-alive: a subscribed connection answers PING too.
    pub fn ping(&mut self) {
        if self.up {
            self.out.extend(encode(&[b"PING"]));
        }
    }

    /// Bytes read from the connection. An error means the connection is broken.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> Result<Heard, String> {
        self.heard = now;
        self.inbuf.extend_from_slice(bytes);
        let mut heard = Heard::default();
        let mut used = 0;
        while let Some((frame, n)) = decode(&self.inbuf[used..])? {
            used += n;
            match frame {
                Frame::Array(Some(items)) => match items.as_slice() {
                    [Frame::Bulk(Some(kind)), Frame::Bulk(Some(channel)), Frame::Bulk(Some(payload))]
                        if kind == b"message" =>
                    {
                        if let Some(topic) = topic_of(&self.prefix, channel) {
                            match presence_event(topic, payload) {
                                Some(event) => heard.presence.push(event),
                                None => log::warn!("bus: a presence message not understood on topic {topic}"),
                            }
                            continue;
                        }
                        match event_of(&self.prefix, channel, payload) {
                            Some(event) => heard.events.push(event),
                            None => log::warn!(
                                "bus: a message that is not an event on {:?}",
                                String::from_utf8_lossy(channel)
                            ),
                        }
                    }
                    [Frame::Bulk(Some(kind)), ..] if kind == b"subscribe" && !self.up => {
                        self.up = true;
                        heard.came_up = true;
                    }
                    [Frame::Bulk(Some(kind)), Frame::Bulk(Some(channel)), ..] if kind == b"subscribe" => {
                        if let Some(stream) = stream_of(&self.prefix, channel)
                            && self.confirming.remove(&stream)
                        {
                            heard.subscribed.push(stream);
                        }
                    }
                    _ => {}
                },
                Frame::Error(e) => return Err(format!("Redis said: {e}")),
                _ => {}
            }
        }
        self.inbuf.drain(..used);
        Ok(heard)
    }
}

/// A blocking connection to Redis, for a helper thread (the writer lane publishes and
/// asks the rate limit; the presence lane runs its scripts): commands go in one write
/// and their answers are read in order, with short timeouts.
pub struct Conn {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    /// Where it is connected (`host:port`).
    pub addr: String,
}

/// Where Redis is now: the URL's address or, with Sentinel, the master the first
/// Sentinel that answers names (remembered in the URL for the loop's subscription).
pub fn resolve(url: &crate::config::RedisUrl, timeout: std::time::Duration) -> Result<String, String> {
    let Some(sentinel) = &url.sentinel else { return Ok(url.addr.clone()) };
    let mut errors = Vec::new();
    for addr in &sentinel.addrs {
        let asked = Conn::open(addr, timeout)
            .and_then(|mut conn| conn.call(&[b"SENTINEL", b"get-master-addr-by-name", sentinel.master.as_bytes()]));
        match asked {
            Ok(Frame::Array(Some(items))) => {
                if let [Frame::Bulk(Some(host)), Frame::Bulk(Some(port))] = items.as_slice() {
                    let master = format!("{}:{}", String::from_utf8_lossy(host), String::from_utf8_lossy(port));
                    if let Ok(mut known) = url.master.lock() {
                        *known = Some(master.clone());
                    }
                    return Ok(master);
                }
                errors.push(format!("{addr}: {items:?}"));
            }
            Ok(other) => errors.push(format!("{addr} does not know master {:?}: {other:?}", sentinel.master)),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(format!("no Sentinel names the master: {}", errors.join("; ")))
}

impl Conn {
    /// Connects to Redis (with Sentinel, to the master they name now) and authenticates.
    pub fn connect(url: &crate::config::RedisUrl, timeout: std::time::Duration) -> Result<Conn, String> {
        let addr = resolve(url, timeout)?;
        let mut conn = Conn::open(&addr, timeout)?;
        if let Some(password) = &url.password {
            match conn.call(&[b"AUTH", password.as_bytes()])? {
                Frame::Simple(_) => {}
                other => return Err(format!("AUTH refused: {other:?}")),
            }
        }
        Ok(conn)
    }

    fn open(addr: &str, timeout: std::time::Duration) -> Result<Conn, String> {
        use std::net::ToSocketAddrs;
        let socket = addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
        let stream = std::net::TcpStream::connect_timeout(&socket, timeout).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: Vec::new(), addr: addr.to_string() })
    }

    /// Sends the commands (each `encode`d) at once and reads their answers, in order. An
    /// error answer is an answer; a broken connection is an error.
    pub fn pipeline(&mut self, commands: &[Vec<u8>]) -> Result<Vec<Frame>, String> {
        self.send(commands)?;
        self.receive(commands.len())
    }

    /// Sends commands without waiting for their answers (`receive` reads them).
    pub fn send(&mut self, commands: &[Vec<u8>]) -> Result<(), String> {
        use std::io::Write;
        self.stream.write_all(&commands.concat()).map_err(|e| e.to_string())
    }

    /// The next `count` answers.
    pub fn receive(&mut self, count: usize) -> Result<Vec<Frame>, String> {
        use std::io::Read;
        let mut answers = Vec::with_capacity(count);
        let mut chunk = [0u8; 8192];
        loop {
            let mut used = 0;
            while answers.len() < count
                && let Some((frame, n)) = decode(&self.buf[used..])?
            {
                used += n;
                answers.push(frame);
            }
            self.buf.drain(..used);
            if answers.len() == count {
                return Ok(answers);
            }
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("Redis closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One command and its answer; an error answer is an error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Frame, String> {
        match self.pipeline(&[encode(args)])?.pop() {
            Some(Frame::Error(e)) => Err(format!("Redis said: {e}")),
            Some(frame) => Ok(frame),
            None => Err("no answer".into()),
        }
    }
}

/// GCRA, the per-user rate limit of stored messages across nodes (design/cluster.md
/// §5.8): how many of each user's `n` messages they may send now, with the per-minute
/// limit as both rate and burst, all users of a batch in one call. A key holds its
/// user's theoretical arrival time and expires once the bucket would be full again.
/// KEYS: the users' keys; ARGV: the rate, then each user's n. Returns each user's count.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local interval = 60000 / rate
local fits = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local room = math.floor((now + rate * interval - tat) / interval + 1e-9)
  local k = math.max(0, math.min(n, room))
  if k > 0 then
    tat = tat + k * interval
    redis.call('SET', key, tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  end
  fits[i] = k
end
return fits
"#;

/// A rate-limit question sent, its answers not read yet.
#[must_use = "its answers must be read, or the connection is out of step"]
pub struct Asked {
    answers: usize,
    users: usize,
}

/// The writer lane's side: publishes what a batch committed, and asks the rate limit of
/// a batch's messages, on a blocking connection with short timeouts. A failure costs
/// latency only (the position checks find what was not heard; the rate limit falls back
/// to each node's own): the connection is dropped and tried again a second later.
pub struct Publisher {
    url: crate::config::RedisUrl,
    prefix: String,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    /// The GCRA script's SHA-1, once loaded on this connection.
    gcra: Option<String>,
}

const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

impl Publisher {
    pub fn new(url: crate::config::RedisUrl) -> Publisher {
        Publisher { prefix: url.prefix.clone(), url, conn: None, retry_at: None, gcra: None }
    }

    /// Publishes each event on its stream's channel, in order, in one round trip.
    pub fn publish(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let commands: Vec<Vec<u8>> = events
            .iter()
            .map(|event| {
                encode(&[b"PUBLISH", channel(&self.prefix, &event.stream).as_bytes(), payload(event).as_bytes()])
            })
            .collect();
        let _ = self.run(&commands, "publish");
    }

    /// Asks how many of each user's `n` messages fit the per-minute `rate` now, without
    /// waiting for the answer (the writer lane begins its transaction meanwhile): `admitted`
    /// reads it. `None` if Redis cannot be asked.
    pub fn ask_admit(&mut self, users: &[(&UserId, u32)], rate: u32) -> Option<Asked> {
        let keys: Vec<String> =
            users.iter().map(|(user, _)| format!("{}:rl:{{{}}}", self.prefix, user.as_str())).collect();
        let mut argv: Vec<String> = vec![rate.to_string()];
        argv.extend(users.iter().map(|(_, n)| n.to_string()));
        let count = keys.len().to_string();
        let command = |eval: &[u8], script: &[u8]| {
            let mut args: Vec<&[u8]> = vec![eval, script, count.as_bytes()];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            args.extend(argv.iter().map(|a| a.as_bytes()));
            encode(&args)
        };
        self.connect("ask the rate limit")?;
        // The script is sent whole once per connection, then named by its SHA-1.
        let commands = match &self.gcra {
            Some(sha) => vec![command(b"EVALSHA", sha.as_bytes())],
            None => vec![encode(&[b"SCRIPT", b"LOAD", GCRA.as_bytes()]), command(b"EVAL", GCRA.as_bytes())],
        };
        let sent = self.conn.as_mut().expect("connected").send(&commands);
        match sent {
            Ok(()) => Some(Asked { answers: commands.len(), users: users.len() }),
            Err(e) => self.failed("ask the rate limit", e),
        }
    }

    /// The answer to `ask_admit`: each user's count that fits, or `None` if Redis could
    /// not say (then the loop's own buckets were the limit).
    pub fn admitted(&mut self, asked: Asked) -> Option<Vec<u32>> {
        let conn = self.conn.as_mut()?;
        let mut answers = match conn.receive(asked.answers) {
            Ok(answers) => answers,
            Err(e) => return self.failed("ask the rate limit", e),
        };
        if asked.answers == 2
            && let Frame::Bulk(Some(sha)) = answers.remove(0)
        {
            self.gcra = Some(String::from_utf8_lossy(&sha).into_owned());
        }
        match answers.pop()? {
            Frame::Array(Some(fits)) if fits.len() == asked.users => {
                fits.into_iter().map(|k| if let Frame::Integer(k) = k { Some(k.max(0) as u32) } else { None }).collect()
            }
            Frame::Error(e) => {
                // NOSCRIPT after a restart of Redis behind the same connection: sent
                // whole next time.
                log::warn!("bus: Redis refused to ask the rate limit: {e}");
                self.gcra = None;
                None
            }
            _ => None,
        }
    }

    /// A connection, made if there is none and it is time to try.
    fn connect(&mut self, what: &str) -> Option<()> {
        if let Some(conn) = &self.conn
            && self.url.current().is_some_and(|master| master != conn.addr)
        {
            // The Sentinels named another master (the presence lane asked them).
            self.conn = None;
        }
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match Conn::connect(&self.url, PUBLISH_TIMEOUT) {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.gcra = None;
                }
                Err(e) => {
                    self.failed::<()>(what, e);
                    return None;
                }
            }
            self.retry_at = None;
        }
        Some(())
    }

    fn run(&mut self, commands: &[Vec<u8>], what: &str) -> Option<Vec<Frame>> {
        self.connect(what)?;
        let conn = self.conn.as_mut().expect("connected");
        match conn.pipeline(commands) {
            Ok(answers) => match answers.iter().find_map(|a| if let Frame::Error(e) = a { Some(e) } else { None }) {
                Some(e) => {
                    log::warn!("bus: Redis refused to {what}: {e}");
                    None
                }
                None => Some(answers),
            },
            Err(e) => self.failed(what, e),
        }
    }

    fn failed<T>(&mut self, what: &str, e: String) -> Option<T> {
        if self.retry_at.is_none() || self.conn.is_some() {
            log::warn!("bus: cannot {what} on Redis ({e}); other nodes hear of it by polling");
        }
        self.conn = None;
        self.retry_at = Some(Instant::now() + std::time::Duration::from_secs(1));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_whole_or_wait_for_more() {
        let push = b"*3\r\n$7\r\nmessage\r\n$6\r\nsb:s:x\r\n$2\r\nhi\r\n:5\r\n";
        for cut in 0..push.len() - 4 {
            assert_eq!(decode(&push[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (frame, used) = decode(push).unwrap().unwrap();
        assert_eq!(used, push.len() - 4);
        let bulk = |s: &[u8]| Frame::Bulk(Some(s.to_vec()));
        assert_eq!(frame, Frame::Array(Some(vec![bulk(b"message"), bulk(b"sb:s:x"), bulk(b"hi")])));
        assert_eq!(decode(&push[used..]).unwrap(), Some((Frame::Integer(5), 4)));
        assert_eq!(decode(b"-ERR no\r\n").unwrap(), Some((Frame::Error("ERR no".into()), 9)));
        assert_eq!(decode(b"$-1\r\n").unwrap(), Some((Frame::Bulk(None), 5)));
        assert!(decode(b"?x\r\n").is_err());
        assert!(decode(b"$99999999\r\n").is_err());
        assert_eq!(encode(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn a_subscription_comes_up_and_reads_events_of_its_channels() {
        let mut bus = Subscriber::new("sb", None);
        let room = StreamId::Conversation(7);
        bus.want(&room);
        assert!(bus.out.is_empty(), "nothing is written before a connection");
        bus.connected(Instant::now());
        let out = String::from_utf8(std::mem::take(&mut bus.out)).unwrap();
        assert!(out.contains("SUBSCRIBE") && out.contains("sb:node") && out.contains("sb:s:c:7"), "{out}");
        let confirm = encode(&[b"subscribe", b"sb:node", b"1"]);
        // (Redis sends the count as an integer; a bulk string is read the same way here.)
        let heard = bus.receive(&confirm, Instant::now()).unwrap();
        assert!(heard.came_up && bus.is_up());
        let event = Event { stream: room.clone(), seq: 3, body: EventBody::Logout, except: None };
        let message = encode(&[b"message", channel("sb", &room).as_bytes(), payload(&event).as_bytes()]);
        let (first, second) = message.split_at(10);
        assert!(bus.receive(first, Instant::now()).unwrap().events.is_empty());
        let heard = bus.receive(second, Instant::now()).unwrap();
        assert_eq!(heard.events.len(), 1);
        assert_eq!((heard.events[0].stream.clone(), heard.events[0].seq), (room.clone(), 3));
        // Streams wanted or dropped while up are (un)subscribed at once.
        let user = StreamId::User(UserId::new("u"));
        bus.want(&user);
        bus.drop_stream(&room);
        let out = String::from_utf8(std::mem::take(&mut bus.out)).unwrap();
        assert!(out.contains("sb:s:u:u") && out.contains("UNSUBSCRIBE"), "{out}");
        // A stream subscribed while up is reported once confirmed (its events before
        // then are read from the store); those of a (re)connect are not.
        let confirm = |c: &StreamId| {
            [
                b"*3\r\n$9\r\nsubscribe\r\n".as_slice(),
                format!("${}\r\n{}\r\n:2\r\n", channel("sb", c).len(), channel("sb", c)).as_bytes(),
            ]
            .concat()
        };
        let heard = bus.receive(&confirm(&user), Instant::now()).unwrap();
        assert_eq!(heard.subscribed, vec![user.clone()]);
        assert!(bus.receive(&confirm(&user), Instant::now()).unwrap().subscribed.is_empty(), "once");
        assert!(bus.receive(b"-ERR wrong\r\n", Instant::now()).is_err());
    }
}
