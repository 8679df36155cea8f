//! The Redis bus's socket in the event loop (design/cluster.md §5.7): a non-blocking
//! connection registered like a listener, whose bytes go to the sans-IO
//! `bus::Subscriber` in `Ctx`. Connected (again) from the sweep with a backoff, kept
//! alive with a PING every 5 s, and dropped when Redis says nothing for 15 s (a wedged
//! subscription must not look healthy).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::bus::{Heard, Subscriber};

pub const BUS: Token = Token(usize::MAX - 5);

const PING_EVERY: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Link {
    url: crate::config::RedisUrl,
    /// Where the connection goes (or went): with Sentinel, the master named then.
    addr: String,
    stream: Option<TcpStream>,
    /// The connection is established (a non-blocking connect finished).
    connected: bool,
    retry_at: Instant,
    backoff: Duration,
    pinged: Instant,
    /// Connections made so far (the first is not a reconnect).
    connections: u64,
}

impl Link {
    pub fn new(url: crate::config::RedisUrl) -> Link {
        let now = Instant::now();
        Link {
            url,
            addr: String::new(),
            stream: None,
            connected: false,
            retry_at: now,
            backoff: Duration::from_millis(250),
            pinged: now,
            connections: 0,
        }
    }

    /// From the sweep: connect when it is time, ping, and give up on a silent link.
    pub fn tick(&mut self, registry: &Registry, bus: &mut Subscriber, now: Instant) {
        if self.stream.is_none() {
            if now >= self.retry_at {
                self.connect(registry, now);
            }
            return;
        }
        if bus.is_up() && now.duration_since(self.pinged) >= PING_EVERY {
            bus.ping();
            self.pinged = now;
            self.flush(registry, bus, now);
        }
        if now.duration_since(bus.heard) >= SILENCE {
            log::warn!("bus: Redis said nothing for {} s; connecting again", SILENCE.as_secs());
            self.down(registry, bus, now);
        } else if self.url.current().is_some_and(|master| master != self.addr) {
            log::warn!(
                "bus: the Sentinels name a new master, {}; connecting there",
                self.url.current().unwrap_or_default()
            );
            self.down(registry, bus, now);
            self.retry_at = now;
        }
    }

    fn connect(&mut self, registry: &Registry, now: Instant) {
        let Some(current) = self.url.current() else {
            // With Sentinel: the presence lane asks them, and says where the master is.
            return self.later(now);
        };
        self.addr = current;
        let addr: Option<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&self.addr).ok().and_then(|mut a| a.next());
        let Some(addr) = addr else {
            log::warn!("bus: cannot resolve {}", self.addr);
            return self.later(now);
        };
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                if let Err(e) = registry.register(&mut stream, super::bus::BUS, Interest::READABLE | Interest::WRITABLE)
                {
                    log::warn!("bus: {e}");
                    return self.later(now);
                }
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
                self.connected = false;
            }
            Err(e) => {
                log::debug!("bus: cannot connect to {addr}: {e}");
                self.later(now);
            }
        }
    }

    fn later(&mut self, now: Instant) {
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Readiness of the socket: what was heard (`None` while there is no link or it is
    /// still connecting). The subscriber says whether it is up.
    pub fn ready(
        &mut self,
        registry: &Registry,
        bus: &mut Subscriber,
        metrics: &mut crate::metrics::Metrics,
    ) -> Option<Heard> {
        let now = Instant::now();
        let stream = self.stream.as_mut()?;
        if !self.connected {
            match stream.take_error() {
                Ok(None) if stream.peer_addr().is_ok() => {
                    self.connected = true;
                    self.connections += 1;
                    if self.connections > 1 {
                        metrics.bus_reconnects += 1;
                    }
                    self.backoff = Duration::from_millis(250);
                    self.pinged = now;
                    log::info!("bus: connected to Redis at {}", self.addr);
                    bus.connected(now);
                }
                Ok(None) => return None,
                Ok(Some(e)) | Err(e) => {
                    log::debug!("bus: cannot connect to {}: {e}", self.addr);
                    self.down(registry, bus, now);
                    return None;
                }
            }
        }
        let mut heard = Heard::default();
        let mut chunk = [0u8; 16384];
        loop {
            let stream = self.stream.as_mut()?;
            match stream.read(&mut chunk) {
                Ok(0) => {
                    log::warn!("bus: Redis closed the connection");
                    self.down(registry, bus, now);
                    return Some(heard);
                }
                Ok(n) => match bus.receive(&chunk[..n], now) {
                    Ok(more) => heard.add(more),
                    Err(e) => {
                        log::warn!("bus: {e}; connecting again");
                        self.down(registry, bus, now);
                        return Some(heard);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("bus: {e}; connecting again");
                    self.down(registry, bus, now);
                    return Some(heard);
                }
            }
        }
        self.flush(registry, bus, now);
        Some(heard)
    }

    /// Writes what the subscriber has to say (at the end of a turn, and when writable).
    pub fn flush(&mut self, registry: &Registry, bus: &mut Subscriber, now: Instant) {
        if !self.connected || bus.out.is_empty() {
            return;
        }
        let Some(stream) = self.stream.as_mut() else { return };
        let mut written = 0;
        while written < bus.out.len() {
            match stream.write(&bus.out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("bus: {e}; connecting again");
                    bus.out.drain(..written);
                    return self.down(registry, bus, now);
                }
            }
        }
        bus.out.drain(..written);
    }

    fn down(&mut self, registry: &Registry, bus: &mut Subscriber, now: Instant) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        self.connected = false;
        bus.disconnected();
        self.later(now);
    }
}
