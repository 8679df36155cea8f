//! A small non-blocking WebSocket client side (RFC 6455) on one mio `Poll`.
//!
//! Each connection is a plain TCP socket bound (before `connect`) to one of several
//! loopback source addresses, round-robin, so ephemeral ports never run out. The client
//! sends the opening handshake with a random `Sec-WebSocket-Key` and checks
//! `Sec-WebSocket-Accept`; it writes masked text frames and reads unmasked ones,
//! reassembles fragments, answers pings with pongs, and answers (or initiates) the
//! closing handshake. Everything it learns comes back from [`Net::turn`] as [`Ev`]s.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sha1::{Digest, Sha1};
use slab::Slab;
use socket2::{Domain, Socket, Type};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Linux `IP_BIND_ADDRESS_NO_PORT`: choose the source port at `connect` (per 4-tuple),
/// not at `bind`, so each source address offers the whole ephemeral range per target.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
/// Largest frame payload accepted from a server (the room protocol's frames are small).
const MAX_FRAME: u64 = 16 << 20;
/// How long a closing handshake that we started may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// xorshift64*: masks, handshake keys and scenario randomness. Not cryptographic.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo) }
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub struct CloseInfo {
    /// Close code of the server's close frame, when there was one.
    pub code: Option<u16>,
    pub reason: String,
    /// We started the close (or dropped the socket) ourselves.
    pub by_us: bool,
    /// Connection-level failure: refused, reset, EOF without a close frame, HTTP status
    /// other than 101, handshake timeout, protocol error.
    pub error: Option<String>,
    /// The WebSocket handshake had completed.
    pub was_open: bool,
}

pub enum Ev {
    /// The server answered 101 and the accept key matched.
    Open(usize),
    /// A complete text (or binary) message and the time (ns since the run's epoch) the
    /// read that completed it returned.
    Text(usize, u64, String),
    /// The connection is gone; its id may be reused by the next `connect`.
    Closed(usize, CloseInfo),
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Handshaking,
    Open,
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    accept: String,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    frag: Option<Vec<u8>>,
    started: Instant,
    closing_since: Option<Instant>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct NetStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub pings: u64,
}

pub struct Net {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    target: SocketAddr,
    host: String,
    sources: Vec<Ipv4Addr>,
    next_source: usize,
    pub rng: Rng,
    epoch: Instant,
    pending: Vec<Ev>,
    scratch: Vec<u8>,
    handshake_timeout: Duration,
    last_sweep: Instant,
    pub stats: NetStats,
}

/// Splits `ws://host:port[/base]` (given as `option`, for the errors) into a socket
/// address, the Host header and a base path.
pub fn parse_ws_url(url: &str, option: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{option} must start with ws:// (got {url})"))?;
    let (authority, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let addr: SocketAddr = authority
        .parse()
        .or_else(|_| authority.replacen("localhost", "127.0.0.1", 1).parse())
        .map_err(|_| format!("{option} needs a numeric loopback HOST:PORT (got {authority})"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{option} {addr} is not a loopback address; this load generator only targets loopback"));
    }
    Ok((addr, authority.to_string(), base))
}

impl Net {
    pub fn new(
        target: SocketAddr,
        host: String,
        n_sources: usize,
        handshake_timeout: Duration,
        epoch: Instant,
    ) -> io::Result<Net> {
        let sources = if target.is_ipv4() {
            (0..n_sources.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, (2 + i) as u8)).collect()
        } else {
            Vec::new()
        };
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::with_capacity(1024),
            target,
            host,
            sources,
            next_source: 0,
            rng: Rng::seeded(),
            epoch,
            pending: Vec::new(),
            scratch: vec![0; 256 * 1024],
            handshake_timeout,
            last_sweep: Instant::now(),
            stats: NetStats::default(),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Starts a connection to `path_and_query` (e.g. `/ws/chat/x/?token=...`) on the
    /// target (`--url`). The result comes later as `Ev::Open` or `Ev::Closed`.
    pub fn connect(&mut self, path_and_query: &str) -> io::Result<usize> {
        let (target, host) = (self.target, std::mem::take(&mut self.host));
        let result = self.connect_to(target, &host, path_and_query);
        self.host = host;
        result
    }

    /// As `connect`, to another server: `target`, with `host` as the Host header.
    pub fn connect_to(&mut self, target: SocketAddr, host: &str, path_and_query: &str) -> io::Result<usize> {
        let socket = Socket::new(if target.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if !self.sources.is_empty() && target.is_ipv4() {
            let src = self.sources[self.next_source % self.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            let one: libc::c_int = 1;
            // SAFETY: a valid fd and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
        }
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        key_bytes[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let key = B64.encode(key_bytes);
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(WS_GUID.as_bytes());
        let accept = B64.encode(sha.finalize());
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Conn {
            stream,
            state: State::Connecting,
            accept,
            rbuf: Vec::new(),
            wbuf: request.into_bytes(),
            frag: None,
            started: Instant::now(),
            closing_since: None,
        });
        Ok(id)
    }

    /// Queues a masked text frame and tries to write it at once.
    pub fn send_text(&mut self, id: usize, text: &str) {
        self.send_frame(id, 0x1, text.as_bytes());
    }

    fn send_frame(&mut self, id: usize, opcode: u8, payload: &[u8]) {
        let mask = self.rng.next_u64() as u32;
        let Some(c) = self.conns.get_mut(id) else { return };
        if c.state != State::Open && !(opcode == 0x8 && c.state == State::Closing) {
            return;
        }
        let mask = mask.to_be_bytes();
        let w = &mut c.wbuf;
        w.push(0x80 | opcode);
        let n = payload.len();
        if n < 126 {
            w.push(0x80 | n as u8);
        } else if n <= 0xFFFF {
            w.push(0x80 | 126);
            w.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            w.push(0x80 | 127);
            w.extend_from_slice(&(n as u64).to_be_bytes());
        }
        w.extend_from_slice(&mask);
        w.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.stats.frames_out += 1;
        self.flush(id);
    }

    /// Starts the closing handshake (or drops a connection that is not open yet). An
    /// `Ev::Closed` with `by_us` follows.
    pub fn close(&mut self, id: usize, code: u16) {
        let Some(c) = self.conns.get_mut(id) else { return };
        match c.state {
            State::Open => {
                c.state = State::Closing;
                c.closing_since = Some(Instant::now());
                self.send_frame(id, 0x8, &code.to_be_bytes());
            }
            State::Closing => {}
            State::Connecting | State::Handshaking => self.finish(id, None, String::new(), true, None),
        }
    }

    fn finish(&mut self, id: usize, code: Option<u16>, reason: String, by_us: bool, error: Option<String>) {
        if !self.conns.contains(id) {
            return;
        }
        let c = self.conns.remove(id);
        let was_open = matches!(c.state, State::Open | State::Closing);
        let by_us = by_us || c.state == State::Closing;
        let error = if c.state == State::Closing { None } else { error };
        drop(c); // closes the socket, which also leaves the epoll set
        self.pending.push(Ev::Closed(id, CloseInfo { code, reason, by_us, error, was_open }));
    }

    fn flush(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else { return };
        if c.state == State::Connecting {
            return;
        }
        let mut written = 0;
        let mut failed = None;
        while written < c.wbuf.len() {
            match c.stream.write(&c.wbuf[written..]) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        if c.wbuf.capacity() > 64 * 1024 && c.wbuf.is_empty() {
            c.wbuf = Vec::new();
        }
        self.stats.bytes_out += written as u64;
        if let Some(e) = failed {
            self.finish(id, None, String::new(), false, Some(e));
        }
    }

    /// Waits up to `timeout` for readiness, handles it, and appends what happened to `out`.
    pub fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Ev>) -> io::Result<()> {
        let timeout = if self.pending.is_empty() { timeout } else { Some(Duration::ZERO) };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (e.token().0, e.is_writable() || e.is_error(), e.is_readable() || e.is_read_closed() || e.is_error())
            })
            .collect();
        for (id, writable, readable) in ready {
            if !self.conns.contains(id) {
                continue;
            }
            if writable {
                self.on_writable(id);
            }
            if readable && self.conns.contains(id) {
                self.on_readable(id);
            }
        }
        if self.last_sweep.elapsed() >= Duration::from_millis(200) {
            self.last_sweep = Instant::now();
            self.sweep();
        }
        out.append(&mut self.pending);
        Ok(())
    }

    fn on_writable(&mut self, id: usize) {
        let c = &mut self.conns[id];
        if c.state == State::Connecting {
            if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                let msg = format!("connect: {e}");
                return self.finish(id, None, String::new(), false, Some(msg));
            }
            match c.stream.peer_addr() {
                Ok(_) => c.state = State::Handshaking,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => {
                    let msg = format!("connect: {e}");
                    return self.finish(id, None, String::new(), false, Some(msg));
                }
            }
        }
        self.flush(id);
    }

    fn on_readable(&mut self, id: usize) {
        let mut eof = false;
        let mut error = None;
        {
            let c = &mut self.conns[id];
            if c.state == State::Connecting {
                // A refused connect shows as readable + error before any writable event.
                if let Ok(Some(e)) = c.stream.take_error() {
                    let msg = format!("connect: {e}");
                    return self.finish(id, None, String::new(), false, Some(msg));
                }
                return;
            }
            loop {
                match c.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.stats.bytes_in += n as u64;
                        c.rbuf.extend_from_slice(&self.scratch[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
        }
        let now = self.now_ns();
        self.process(id, now);
        if !self.conns.contains(id) {
            return;
        }
        if let Some(e) = error {
            return self.finish(id, None, String::new(), false, Some(e));
        }
        if eof {
            let state = self.conns[id].state;
            let msg = match state {
                State::Handshaking => "EOF before the handshake answer".to_string(),
                _ => "EOF without a close frame".to_string(),
            };
            self.finish(id, None, String::new(), false, Some(msg));
        }
    }

    fn process(&mut self, id: usize, now: u64) {
        if self.conns[id].state == State::Handshaking {
            let c = &mut self.conns[id];
            let Some(end) = find(&c.rbuf, b"\r\n\r\n") else {
                if c.rbuf.len() > 16 * 1024 {
                    return self.finish(id, None, String::new(), false, Some("handshake answer too long".into()));
                }
                return;
            };
            let head = String::from_utf8_lossy(&c.rbuf[..end]).into_owned();
            c.rbuf.drain(..end + 4);
            let status_line = head.lines().next().unwrap_or("").to_string();
            let status = status_line.split_whitespace().nth(1).unwrap_or("");
            if status != "101" {
                let msg = format!("HTTP answer {status_line:?} instead of 101");
                return self.finish(id, None, String::new(), false, Some(msg));
            }
            let accept_ok = head.lines().skip(1).any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == c.accept)
            });
            if !accept_ok {
                return self.finish(id, None, String::new(), false, Some("bad Sec-WebSocket-Accept".into()));
            }
            c.state = State::Open;
            c.accept = String::new();
            self.pending.push(Ev::Open(id));
        }
        let mut pos = 0;
        loop {
            let c = &mut self.conns[id];
            let buf = &c.rbuf[pos..];
            if buf.len() < 2 {
                break;
            }
            let fin = buf[0] & 0x80 != 0;
            let opcode = buf[0] & 0x0F;
            let masked = buf[1] & 0x80 != 0;
            let (len, mut hdr) = match buf[1] & 0x7F {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
                126 | 127 => break,
                n => (n as u64, 2),
            };
            if len > MAX_FRAME {
                return self.finish(id, None, String::new(), false, Some(format!("frame of {len} bytes")));
            }
            let mut mask = None;
            if masked {
                if buf.len() < hdr + 4 {
                    break;
                }
                mask = Some([buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]]);
                hdr += 4;
            }
            let total = hdr + len as usize;
            if buf.len() < total {
                break;
            }
            let mut payload = buf[hdr..total].to_vec();
            if let Some(m) = mask {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i & 3]);
            }
            pos += total;
            self.stats.frames_in += 1;
            match opcode {
                0x0..=0x2 => {
                    let c = &mut self.conns[id];
                    let message = if opcode == 0 {
                        match c.frag.as_mut() {
                            Some(f) => {
                                f.extend_from_slice(&payload);
                                if fin { c.frag.take() } else { None }
                            }
                            None => {
                                return self.finish(
                                    id,
                                    None,
                                    String::new(),
                                    false,
                                    Some("stray continuation frame".into()),
                                );
                            }
                        }
                    } else if fin {
                        Some(payload)
                    } else {
                        c.frag = Some(payload);
                        None
                    };
                    if let Some(m) = message {
                        let text =
                            String::from_utf8(m).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                        self.pending.push(Ev::Text(id, now, text));
                    }
                }
                0x8 => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                    if self.conns[id].state == State::Open {
                        // Echo the close, as RFC 6455 asks, then drop the socket.
                        self.conns[id].state = State::Closing;
                        let echo = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                        self.send_frame(id, 0x8, &echo);
                        if let Some(c) = self.conns.get_mut(id) {
                            c.state = State::Open; // so finish() reports "by the server"
                        }
                    }
                    return self.finish(id, code, reason, false, None);
                }
                0x9 => {
                    self.stats.pings += 1;
                    self.send_frame(id, 0xA, &payload);
                    if !self.conns.contains(id) {
                        return;
                    }
                }
                0xA => {}
                _ => return self.finish(id, None, String::new(), false, Some(format!("unknown opcode {opcode}"))),
            }
        }
        let c = &mut self.conns[id];
        c.rbuf.drain(..pos);
        if c.rbuf.is_empty() && c.rbuf.capacity() > 64 * 1024 {
            c.rbuf = Vec::new();
        }
    }

    /// Handshake deadlines and closing handshakes that take too long.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for (id, c) in self.conns.iter() {
            match c.state {
                State::Connecting | State::Handshaking if now.duration_since(c.started) > self.handshake_timeout => {
                    late.push((id, true))
                }
                State::Closing if c.closing_since.is_some_and(|t| now.duration_since(t) > CLOSE_GRACE) => {
                    late.push((id, false))
                }
                _ => {}
            }
        }
        for (id, handshake) in late {
            if handshake {
                let msg = format!("no handshake answer within {} s", self.handshake_timeout.as_secs());
                self.finish(id, None, String::new(), false, Some(msg));
            } else {
                self.finish(id, None, String::new(), true, None);
            }
        }
    }

    /// Drops every connection at once (no closing handshake); no events follow.
    pub fn drop_all(&mut self) {
        self.conns.clear();
        self.pending.clear();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// Reads one client frame (masked) and returns (opcode, unmasked payload).
    fn read_client_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut mask = [0u8; 4];
        s.read_exact(&mut mask).unwrap();
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        p.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i & 3]);
        (h[0] & 0x0F, p)
    }

    #[test]
    fn handshake_fragments_ping_echo_and_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            assert!(peer.ip().to_string().starts_with("127.0.0."), "bound to a loopback source: {peer}");
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut key = String::new();
            let mut first = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if first.is_empty() {
                    first = line.clone();
                }
                if let Some(v) = line.strip_prefix("Sec-WebSocket-Key:") {
                    key = v.trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            assert_eq!(first, "GET /ws/chat/r/?token=t HTTP/1.1\r\n");
            let mut sha = Sha1::new();
            sha.update(key.as_bytes());
            sha.update(WS_GUID.as_bytes());
            let accept = B64.encode(sha.finalize());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&[0x89, 2, b'p', b'i']); // ping "pi"
            out.extend_from_slice(&[0x01, 3, b'{', b'"', b'a']); // text, not final
            out.extend_from_slice(&[0x80, 4, b'"', b':', b'1', b'}']); // continuation, final
            s.write_all(&out).unwrap();
            assert_eq!(read_client_frame(&mut s), (0xA, b"pi".to_vec()));
            let (op, text) = read_client_frame(&mut s);
            assert_eq!((op, text.as_slice()), (0x1, &br#"{"message": "x"}"#[..]));
            let mut echo = vec![0x81, text.len() as u8];
            echo.extend_from_slice(&text);
            s.write_all(&echo).unwrap();
            s.write_all(&[0x88, 2, 0x03, 0xE8]).unwrap(); // close 1000
            assert_eq!(read_client_frame(&mut s), (0x8, vec![0x03, 0xE8]));
        });

        let mut net = Net::new(addr, addr.to_string(), 4, Duration::from_secs(5), Instant::now()).unwrap();
        let id = net.connect("/ws/chat/r/?token=t").unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut closed = None;
        while closed.is_none() && Instant::now() < deadline {
            let mut evs = Vec::new();
            net.turn(Some(Duration::from_millis(20)), &mut evs).unwrap();
            for ev in evs {
                match ev {
                    Ev::Open(i) => assert_eq!(i, id),
                    Ev::Text(_, _, t) => {
                        if got.is_empty() {
                            net.send_text(id, r#"{"message": "x"}"#);
                        }
                        got.push(t);
                    }
                    Ev::Closed(_, info) => closed = Some(info),
                }
            }
        }
        server.join().unwrap();
        assert_eq!(got, vec![r#"{"a":1}"#.to_string(), r#"{"message": "x"}"#.to_string()]);
        let info = closed.expect("closed");
        assert_eq!(info.code, Some(1000));
        assert!(!info.by_us && info.was_open && info.error.is_none());
        assert_eq!(net.stats.pings, 1);
    }
}
