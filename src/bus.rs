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
use crate::model::{Seq, StreamId};

/// The prefix of every channel and key switchboard uses in Redis.
pub const PREFIX: &str = "sb";

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

/// The subscription's side of the bus, in the loop: which streams are wanted, what is
/// to be written to Redis, and what was read from it.
pub struct Subscriber {
    prefix: String,
    password: Option<String>,
    wanted: HashSet<StreamId>,
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
}

impl Subscriber {
    pub fn new(prefix: &str, password: Option<String>) -> Subscriber {
        Subscriber {
            prefix: prefix.to_string(),
            password,
            wanted: HashSet::new(),
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

/// The writer lane's side: publishes what a batch committed, on a blocking connection
/// with short timeouts. A failure costs latency only (the position checks find what was
/// not heard): the connection is dropped and tried again a second later.
pub struct Publisher {
    url: crate::config::RedisUrl,
    prefix: String,
    conn: Option<std::net::TcpStream>,
    retry_at: Option<Instant>,
}

const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

impl Publisher {
    pub fn new(url: crate::config::RedisUrl, prefix: &str) -> Publisher {
        Publisher { url, prefix: prefix.to_string(), conn: None, retry_at: None }
    }

    /// Publishes each event on its stream's channel, in order, in one round trip.
    pub fn publish(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.try_publish(events) {
            if self.retry_at.is_none() || self.conn.is_some() {
                log::warn!("bus: cannot publish to Redis ({e}); other nodes hear of it by polling");
            }
            self.conn = None;
            self.retry_at = Some(Instant::now() + std::time::Duration::from_secs(1));
        }
    }

    fn try_publish(&mut self, events: &[Event]) -> Result<(), String> {
        use std::io::{Read, Write};
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Ok(());
            }
            self.conn = Some(self.connect()?);
            self.retry_at = None;
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut out = Vec::new();
        for event in events {
            out.extend(encode(&[
                b"PUBLISH",
                channel(&self.prefix, &event.stream).as_bytes(),
                payload(event).as_bytes(),
            ]));
        }
        conn.write_all(&out).map_err(|e| e.to_string())?;
        // One answer (the number of subscribers) per event.
        let (mut buf, mut answered, mut chunk) = (Vec::new(), 0, [0u8; 4096]);
        while answered < events.len() {
            let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("Redis closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some((frame, len)) = decode(&buf[used..])? {
                used += len;
                answered += 1;
                if let Frame::Error(e) = frame {
                    return Err(format!("Redis said: {e}"));
                }
            }
            buf.drain(..used);
        }
        Ok(())
    }

    fn connect(&self) -> Result<std::net::TcpStream, String> {
        use std::io::Write;
        use std::net::ToSocketAddrs;
        let addr = self.url.addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
        let mut conn = std::net::TcpStream::connect_timeout(&addr, PUBLISH_TIMEOUT).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(PUBLISH_TIMEOUT)).map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(PUBLISH_TIMEOUT)).map_err(|e| e.to_string())?;
        let _ = conn.set_nodelay(true);
        if let Some(password) = &self.url.password {
            conn.write_all(&encode(&[b"AUTH", password.as_bytes()])).map_err(|e| e.to_string())?;
            let mut reply = [0u8; 256];
            let n = std::io::Read::read(&mut conn, &mut reply).map_err(|e| e.to_string())?;
            if !reply[..n].starts_with(b"+OK") {
                return Err(format!("AUTH refused: {}", String::from_utf8_lossy(&reply[..n]).trim()));
            }
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;

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
