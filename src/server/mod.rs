//! The event loop: one thread, one mio `Poll`, every socket non-blocking. The only code
//! that touches mio or a socket.
//!
//! A turn: wait for readiness (at most until the next sweep), accept until WouldBlock,
//! read requests and frames until WouldBlock, a short read (see `Wire::read`) or a
//! per-turn budget (for fairness), let the app handle them, then `end_turn`: the app
//! commits the turn's writes and returns its outbox, the frames go into the
//! connections' write buffers, and every connection with pending output is flushed. A flush that would block waits for a writable event.
//! Every 500 ms a sweep drops handshakes past their deadline, pings quiet connections,
//! closes idle ones and ends close handshakes that the peer never finished.
//!
//! It does not know JSON, SQL or any seed document: sessions belong to the app.

mod bus;
mod conn;
mod wire;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::app::{Admission, App};
use crate::context::{Frame, Out, Session, close_code};
use crate::http::{self, HttpError, Parsed};
use crate::hub::ConnId;

use conn::{Conn, Listener, Phase};
use wire::{Flushed, Wire};

const WS_LISTENER: Token = Token(usize::MAX - 1);
const API_LISTENER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// An engine's lane has answers (nothing to do but run a turn).
const WAKER: Token = Token(usize::MAX - 4);

/// How often the sweep runs (deadlines are checked at this granularity).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a close handshake the server started may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long, after a close the server started while the client may still be sending,
/// what arrives is read and thrown away so the close is not turned into a reset (see
/// `Phase::Linger`), and how much at most: a browser finishes sending the message it
/// was in before it answers the close.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// A sweep later than its interval by more than this means the loop was stopped (a
/// SIGSTOP, a paused VM, an overloaded box): time it could not hear anyone in.
const STALL_SLACK: Duration = Duration::from_secs(1);
/// How long shutdown waits for clients to answer the close before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Frames read from one connection per turn before others get their turn.
const MAX_FRAMES_PER_READ: usize = 64;
/// tungstenite's read buffer per connection, allocated up front for every connection:
/// small, since idle memory is a headline figure. It bounds one `read` call, so a message
/// larger than this takes several; chat messages are far smaller.
const READ_BUFFER_BYTES: usize = 512;
const EVENTS_CAPACITY: usize = 1024;

/// Addresses the listeners are bound to (port 0 resolved).
pub struct Bound {
    pub ws: SocketAddr,
    pub api: SocketAddr,
}

pub struct Server {
    poll: Poll,
    ws_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    next_serial: u64,
    app: App,
    ws_config: WebSocketConfig,
    /// Connections with output waiting for the end-of-turn flush.
    dirty: Vec<usize>,
    /// Connections that stopped reading at the per-turn budget and must be read again.
    backlog: Vec<usize>,
    /// Connections finished this turn, removed from the slab at its end.
    gone: Vec<usize>,
    /// Kept open so that when the process runs out of file descriptors one can be freed
    /// to accept and refuse a connection cleanly instead of leaving it in the backlog.
    reserve_fd: Option<std::fs::File>,
    next_sweep: Instant,
    /// When the last sweep ran, to notice a stall of the whole loop.
    last_sweep: Instant,
    shutdown_deadline: Option<Instant>,
    /// The Redis bus's connection, on a node that has one (`bus.rs`).
    bus: Option<bus::Link>,
}

impl Server {
    pub fn bind(mut app: App) -> io::Result<(Server, Bound)> {
        let poll = Poll::new()?;
        app.ctx.engine.set_waker(mio::Waker::new(poll.registry(), WAKER)?);
        let mut ws_listener = listen(app.config().listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {} (SWITCHBOARD_LISTEN): {e}", app.config().listen))
        })?;
        let mut api_listener = listen(app.config().api_listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {} (SWITCHBOARD_API_LISTEN): {e}", app.config().api_listen),
            )
        })?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry().register(&mut ws_listener, WS_LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut api_listener, API_LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let bound = Bound { ws: ws_listener.local_addr()?, api: api_listener.local_addr()? };
        app.ctx.ws_addr = Some(bound.ws);
        let limits = &app.config().limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            // Every frame moves on at once into the connection's `Wire` buffer (which
            // never refuses), so tungstenite's own buffer stays one frame small; the wire
            // is flushed at the end of the turn and bounded by the server.
            .write_buffer_size(0)
            .max_write_buffer_size(limits.outbound_buffer_bytes)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        let link = app.config().redis.clone().map(|redis| {
            let mut subscriber = crate::bus::Subscriber::new(&redis.prefix, redis.password.clone());
            for topic in app.ctx.cluster.as_ref().map(|c| c.topics()).unwrap_or_default() {
                subscriber.want_topic(&topic);
            }
            app.ctx.bus = Some(subscriber);
            bus::Link::new(redis)
        });
        let server = Server {
            poll,
            ws_listener: Some(ws_listener),
            api_listener: Some(api_listener),
            signals,
            conns: Slab::new(),
            next_serial: 1,
            app,
            ws_config,
            dirty: Vec::new(),
            backlog: Vec::new(),
            gone: Vec::new(),
            reserve_fd: std::fs::File::open("/dev/null").ok(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            last_sweep: Instant::now(),
            shutdown_deadline: None,
            bus: link,
        };
        Ok((server, bound))
    }

    /// Runs until SIGTERM or SIGINT, then closes every connection with 1001, commits
    /// what is pending and returns.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.is_empty() || now >= deadline)
            {
                break;
            }
            // Frames left unread, or answers an engine still owes: look again at once.
            // While the engine is saturated, frames left unread wait for its answers,
            // which wake the loop.
            let saturated = self.app.ctx.engine.saturated();
            let timeout = if (self.backlog.is_empty() || saturated) && !self.app.ctx.engine.pending() {
                let wake_at = self.app.ctx.engine.next_poll().map_or(self.next_sweep, |at| at.min(self.next_sweep));
                wake_at.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.app.begin_turn();
            self.finish_opens();
            if saturated {
                // Connections are put back each turn and by every readiness event.
                self.backlog.sort_unstable();
                self.backlog.dedup();
                self.app.metrics().backpressure_turns += 1;
            }
            for key in std::mem::take(&mut self.backlog) {
                self.on_readable(key, None);
            }
            for event in events.iter() {
                match event.token() {
                    WS_LISTENER => self.accept(Listener::WebSocket),
                    API_LISTENER => self.accept(Listener::Api),
                    SIGNALS => self.on_signal(),
                    WAKER => {}
                    bus::BUS => self.on_bus(),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, Some(event.is_read_closed() || event.is_error()));
                        }
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                    }
                }
            }
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
            self.app.poll();
            self.end_turn();
        }
        for key in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.finish(key, "server stopped");
        }
        self.end_turn();
        // What was asked and not answered yet is answered and committed before the end
        // (an engine that answers later; the local engine owes nothing).
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while self.app.ctx.engine.owes() && Instant::now() < deadline {
            if !self.app.ctx.engine.pending() {
                let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            }
            self.app.begin_turn();
            self.finish_opens();
            self.end_turn();
        }
        if self.app.ctx.engine.owes() {
            log::warn!("stopped with requests the engine did not answer in {} s", SHUTDOWN_DRAIN.as_secs());
        }
        log::info!("switchboard stopped");
        Ok(())
    }

    /// Sessions whose engine answered since the last turn open now (see `engine.rs`).
    fn finish_opens(&mut self) {
        for (id, ok) in self.app.presence_said() {
            if let Some(session) = session_mut(&mut self.conns, id) {
                self.app.admitted(session, ok);
            }
        }
        for (id, answer) in self.app.ready_opens() {
            if let Some(session) = session_mut(&mut self.conns, id) {
                self.app.finish_open(session, answer);
            }
        }
        for (then, answer, write) in self.app.ready_answers() {
            let session = then.session().and_then(|conn| session_mut(&mut self.conns, conn)).map(|s| &*s);
            self.app.answer_later(session, then, answer, write);
        }
        self.app.finish_closing();
    }

    fn on_signal(&mut self) {
        let received: Vec<i32> = self.signals.pending().collect();
        if received.is_empty() || self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("signal {} received: closing {} connections and stopping", received[0], self.conns.len());
        self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        for listener in [self.ws_listener.take(), self.api_listener.take()].into_iter().flatten() {
            let mut listener = listener;
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].phase {
                Phase::Open { .. } => self.close_ws(key, close_code::GOING_AWAY, "server shutting down"),
                // Ends by itself within LINGER_TIME, inside the shutdown grace.
                Phase::Linger { .. } => {}
                _ => self.finish(key, "server shutting down"),
            }
        }
    }

    fn accept(&mut self, which: Listener) {
        loop {
            let listener = match which {
                Listener::WebSocket => self.ws_listener.as_ref(),
                Listener::Api => self.api_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.register(stream, peer, which),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE) | Some(ENFILE)) => {
                    if !self.refuse_with_reserve_fd(which) {
                        log::warn!("out of file descriptors; connections wait in the backlog");
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Out of descriptors: free the reserve, accept one connection, refuse it with 503,
    /// and take the reserve back. Returns false when there was no reserve to free.
    fn refuse_with_reserve_fd(&mut self, which: Listener) -> bool {
        if self.reserve_fd.take().is_none() {
            return false;
        }
        let listener = match which {
            Listener::WebSocket => self.ws_listener.as_ref(),
            Listener::Api => self.api_listener.as_ref(),
        };
        if let Some(Ok((mut stream, _))) = listener.map(|l| l.accept()) {
            self.app.metrics().connections_refused += 1;
            let _ = stream.write(&HttpError::new(503, "server is at its connection limit").to_response());
        }
        self.reserve_fd = std::fs::File::open("/dev/null").ok();
        log::warn!("out of file descriptors: refused a connection with 503");
        true
    }

    fn register(&mut self, mut stream: TcpStream, peer: SocketAddr, listener: Listener) {
        if listener == Listener::WebSocket {
            self.app.metrics().connections_accepted += 1;
        }
        if self.conns.len() >= self.app.config().limits.max_connections {
            // Refuse before reading anything: a best-effort 503 and close. Existing
            // connections are untouched.
            self.app.metrics().connections_refused += 1;
            let _ = stream.write(&HttpError::new(503, "server is at its connection limit").to_response());
            log::warn!("refused {peer}: {} connections open (SWITCHBOARD_MAX_CONNECTIONS)", self.conns.len());
            return;
        }
        let _ = stream.set_nodelay(true);
        if listener == Listener::WebSocket
            && let Some(bytes) = self.app.config().limits.socket_send_buffer_bytes
        {
            // A fixed kernel buffer instead of autotuning's (up to 4 MiB): what a client
            // that stops reading pins in the kernel, on top of the outbound buffer.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot register {peer}: {e}");
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        entry.insert(Conn::new(serial, peer, listener, stream));
        // Edge-triggered: a request that arrived with the connection must be read now.
        self.on_readable(key, None);
    }

    fn conn_id(&self, key: usize) -> ConnId {
        ConnId { slot: key, serial: self.conns[key].serial }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Reads what the connection has. `event` is `Some(hung_up)` when a readiness event
    /// brought us here (the wire then asks the kernel again, see `Wire::readiness`), and
    /// `None` for a connection carried over from the last turn's budget or just accepted.
    fn on_readable(&mut self, key: usize, event: Option<bool>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match &mut conn.phase {
            Phase::Request { .. } => self.read_request(key),
            Phase::Open { ws, .. } => {
                if let Some(hung_up) = event {
                    ws.get_mut().readiness(hung_up);
                }
                self.read_frames(key)
            }
            Phase::Linger { .. } => self.discard(key),
            Phase::Waiting { .. } | Phase::Respond { .. } | Phase::Gone => {}
        }
    }

    /// Reads the HTTP request until it is complete, then upgrades or answers it.
    fn read_request(&mut self, key: usize) {
        let max_body = match self.conns[key].listener {
            Listener::WebSocket => 0,
            Listener::Api => crate::api::MAX_BODY_BYTES,
        };
        let mut chunk = [0u8; 4096];
        loop {
            let conn = &mut self.conns[key];
            let Phase::Request { stream, buf } = &mut conn.phase else { return };
            match stream.read(&mut chunk) {
                Ok(0) => return self.finish(key, "closed before the request was complete"),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    match http::parse_request(buf, max_body) {
                        Parsed::Incomplete => continue,
                        Parsed::Invalid(error) => return self.respond(key, error.to_response()),
                        Parsed::Complete(request) => {
                            return match conn.listener {
                                Listener::WebSocket => self.upgrade(key, request),
                                Listener::Api => {
                                    let id = self.conn_id(key);
                                    let conn = &mut self.conns[key];
                                    conn.phase = match std::mem::take(&mut conn.phase) {
                                        Phase::Request { stream, .. } => Phase::Waiting { stream },
                                        other => other,
                                    };
                                    self.app.on_api(id, request);
                                }
                            };
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.finish(key, "connection reset before the request was complete"),
            }
        }
    }

    /// Switches the connection to sending an HTTP response, then closing.
    fn respond(&mut self, key: usize, response: Vec<u8>) {
        let conn = &mut self.conns[key];
        conn.phase = match std::mem::take(&mut conn.phase) {
            Phase::Request { stream, .. } | Phase::Waiting { stream } => {
                Phase::Respond { stream, out: response, written: 0 }
            }
            other => other,
        };
        if let Phase::Respond { out, .. } = &conn.phase {
            conn.close_reason = Some(format!("HTTP {}", status_of(out)));
        }
        self.mark_dirty(key);
    }

    /// Carries out the app's decision about a complete WebSocket request: an HTTP error,
    /// or the 101 answer followed by the session (or, for a refused token or resource, a
    /// close frame with the document's code).
    fn upgrade(&mut self, key: usize, request: http::Request) {
        let id = self.conn_id(key);
        let (accept, session) = match self.app.admit(id, &request) {
            Admission::Refuse(response) => return self.respond(key, response),
            Admission::Upgrade { accept, session } => (accept, session),
        };
        let conn = &mut self.conns[key];
        let Phase::Request { stream, .. } = std::mem::take(&mut conn.phase) else { return };
        let ws = WebSocket::from_raw_socket(Wire::new(stream, accept), Role::Server, Some(self.ws_config));
        conn.path = request.path;
        conn.last_seen = Instant::now();
        match session {
            Ok(session) => {
                log::info!(
                    "open conn={} peer={} path={} user={}",
                    conn.serial,
                    conn.peer,
                    conn.path,
                    session.identity.user_id
                );
                conn.phase = Phase::Open { ws, closing_since: None, session: Some(session) };
                self.mark_dirty(key);
            }
            Err(refusal) => {
                log::info!("refused conn={} peer={} path={}: {}", conn.serial, conn.peer, conn.path, refusal.reason);
                conn.phase = Phase::Open { ws, closing_since: None, session: None };
                self.mark_dirty(key);
                self.close_ws(key, refusal.code, &refusal.reason);
            }
        }
    }

    /// Reads frames until WouldBlock, the per-turn budget, or the end of the connection.
    fn read_frames(&mut self, key: usize) {
        if self.app.ctx.engine.saturated() {
            // Backpressure: too many writes wait for their commit; the frames stay in
            // the socket (and the client's, past its buffer) until they are answered.
            self.backlog.push(key);
            return;
        }
        for _ in 0..MAX_FRAMES_PER_READ {
            let conn = &mut self.conns[key];
            let Phase::Open { ws, session, closing_since } = &mut conn.phase else { return };
            match ws.read() {
                Ok(message) => {
                    conn.last_seen = Instant::now();
                    conn.pinged = false;
                    match (message, session.as_mut(), closing_since.is_some()) {
                        (Message::Text(text), Some(session), false) => self.app.on_text(session, &text),
                        (Message::Binary(data), Some(session), false) => self.app.on_binary(session, &data),
                        _ => {}
                    }
                    // tungstenite may have queued a pong or a close reply.
                    self.mark_dirty(key);
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    let reason = if closing_since.is_some() { "closed" } else { "closed by client" };
                    return self.finish(key, reason);
                }
                Err(WsError::Capacity(e)) => {
                    log::debug!("conn={}: {e}", conn.serial);
                    return self.fail_ws(key, close_code::TOO_BIG, "message too big");
                }
                Err(WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    // The client hung up without a close frame (RFC 6455: 1006, abnormal
                    // closure): nothing to answer, nobody to answer to.
                    return self.finish(key, "closed by client without a close frame");
                }
                Err(WsError::Protocol(e)) => {
                    log::debug!("conn={}: {e}", conn.serial);
                    return self.fail_ws(key, u16::from(CloseCode::Protocol), "protocol error");
                }
                Err(WsError::Utf8(_)) => return self.fail_ws(key, u16::from(CloseCode::Invalid), "invalid UTF-8"),
                Err(WsError::WriteBufferFull(_)) => return self.drop_slow_consumer(key),
                Err(e) => return self.finish(key, &format!("read error: {e}")),
            }
        }
        self.backlog.push(key);
    }

    /// Starts a close handshake with a code; the connection stays until the client
    /// answers or `CLOSE_GRACE` passes. The session ends now.
    fn close_ws(&mut self, key: usize, code: u16, reason: &str) {
        let conn = &mut self.conns[key];
        let Phase::Open { ws, session, closing_since } = &mut conn.phase else { return };
        if closing_since.is_some() {
            return;
        }
        *closing_since = Some(Instant::now());
        conn.close_reason = Some(format!("{code} {reason}"));
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        let _ = ws.close(Some(frame));
        if let Some(session) = session.take() {
            self.app.close(session);
        }
        self.mark_dirty(key);
    }

    /// Closes after a protocol violation or a message over the limit: the close frame is
    /// sent, no more frames are read (the input cannot be trusted, or is the rest of a
    /// message too big to read), and the connection lingers (`Phase::Linger`).
    fn fail_ws(&mut self, key: usize, code: u16, reason: &str) {
        self.close_ws(key, code, reason);
        self.conns[key].linger_after_flush = true;
        self.mark_dirty(key);
    }

    /// The close frame is out: shut our side (the client sees the FIN after the frame)
    /// and read and drop whatever the client still sends, until it closes too.
    fn linger(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Phase::Open { ws, .. } = std::mem::take(&mut conn.phase) else { return };
        let stream = ws.into_inner().tcp;
        let _ = stream.shutdown(std::net::Shutdown::Write);
        conn.phase = Phase::Linger { stream, until: Instant::now() + LINGER_TIME, budget: LINGER_BYTES };
        self.discard(key);
    }

    fn discard(&mut self, key: usize) {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            let Some(Phase::Linger { stream, budget, .. }) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
                return;
            };
            match stream.read(&mut scratch) {
                Ok(0) => return self.finish(key, "closed"),
                Ok(n) if n >= *budget => return self.abort(key, "kept sending after the close"),
                Ok(n) => *budget -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.finish(key, "reset after the close"),
            }
        }
    }

    fn drop_slow_consumer(&mut self, key: usize) {
        self.app.metrics().slow_consumer_disconnects += 1;
        self.abort(key, "slow consumer: outbound buffer full");
    }

    /// Ends a connection that will not finish by itself (a slow consumer, a handshake or
    /// close past its deadline) with a reset: with `SO_LINGER` 0 the kernel drops what
    /// is still queued for the peer at once, instead of trickling it to a client that
    /// does not read for minutes (FIN-WAIT-1) while it holds kernel memory.
    fn abort(&mut self, key: usize, reason: &str) {
        self.end(key, reason, true);
    }

    /// Ends a connection now: its session closes, a log line is written, and the socket
    /// is dropped at the end of the turn.
    fn finish(&mut self, key: usize, reason: &str) {
        self.end(key, reason, false);
    }

    fn end(&mut self, key: usize, reason: &str, reset: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let phase = std::mem::take(&mut conn.phase);
        if matches!(phase, Phase::Gone) {
            return;
        }
        if reset && let Some(tcp) = phase.tcp() {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        }
        let was_open = matches!(phase, Phase::Open { .. } | Phase::Linger { .. });
        if let Phase::Open { mut ws, session, .. } = phase {
            // A close frame (ours, or the answer to the client's) may still be waiting:
            // one last try, without waiting, before the socket goes (not for a reset,
            // which discards whatever is queued anyway).
            if !reset {
                let _ = ws.get_mut().flush_to_socket();
            }
            if let Some(session) = session {
                self.app.close(session);
            }
        }
        let conn = &self.conns[key];
        if was_open {
            let reason = conn.close_reason.as_deref().map_or(reason.to_string(), |r| format!("{r} ({reason})"));
            log::info!(
                "close conn={} peer={} path={} reason=\"{}\" after={:.1}s",
                conn.serial,
                conn.peer,
                conn.path,
                reason,
                conn.opened.elapsed().as_secs_f64()
            );
        } else {
            log::debug!(
                "close conn={} peer={} reason=\"{}\"",
                conn.serial,
                conn.peer,
                conn.close_reason.as_deref().unwrap_or(reason)
            );
        }
        self.gone.push(key);
    }

    /// Writes what is pending: an HTTP response, or the wire's buffer.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.dirty = false;
        match &mut conn.phase {
            Phase::Respond { stream, out, written } => {
                while *written < out.len() {
                    match stream.write(&out[*written..]) {
                        Ok(0) => return self.finish(key, "reset"),
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.finish(key, "reset while answering"),
                    }
                }
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Write);
                self.finish(key, "answered")
            }
            Phase::Open { ws, .. } => match ws.get_mut().flush_to_socket() {
                Ok(Flushed::All) => {
                    if self.conns[key].linger_after_flush {
                        self.linger(key);
                    }
                }
                Ok(Flushed::Partly) => {}
                Err(e) => self.finish(key, &format!("write error: {e}")),
            },
            Phase::Request { .. } | Phase::Waiting { .. } | Phase::Linger { .. } | Phase::Gone => {}
        }
    }

    /// Commits, applies the outbox and flushes. Flushes can end sessions whose closing
    /// queues more frames (a `user_leave`), so this repeats until nothing is left; it
    /// ends because every round either writes or finishes connections.
    fn end_turn(&mut self) {
        loop {
            let outbox = self.app.end_turn();
            if outbox.is_empty() && self.dirty.is_empty() {
                break;
            }
            self.apply(outbox);
            for key in std::mem::take(&mut self.dirty) {
                self.flush(key);
            }
        }
        for key in std::mem::take(&mut self.gone) {
            self.conns.try_remove(key);
        }
        // Subscriptions the turn asked for.
        if let (Some(link), Some(subscriber)) = (self.bus.as_mut(), self.app.ctx.bus.as_mut()) {
            link.flush(self.poll.registry(), subscriber, Instant::now());
        }
        self.app.after_turn();
    }

    fn apply(&mut self, outbox: Vec<Out>) {
        for out in outbox {
            match out {
                Out::Frame { to, frame, .. } => {
                    for id in to {
                        self.write_frame(id, &frame);
                    }
                }
                Out::Frames { to, frames } => {
                    for frame in &frames {
                        self.write_frame(to, frame);
                    }
                }
                Out::Close { to, code, reason } => {
                    if self.is_current(to) {
                        self.close_ws(to.slot, code, &reason);
                    }
                }
                Out::Binary { to, data } => self.write_message(to, Message::Binary(data)),
                Out::Logout { to } => {
                    if self.is_current(to)
                        && let Phase::Open { session: Some(session), .. } = &self.conns[to.slot].phase
                    {
                        let code = session.endpoint.auth_close_code();
                        self.close_ws(to.slot, code, "logged out");
                    }
                }
                Out::Http { to, response, .. } => {
                    if self.is_current(to) {
                        self.respond(to.slot, response);
                    }
                }
            }
        }
    }

    fn is_current(&self, id: ConnId) -> bool {
        self.conns.get(id.slot).is_some_and(|c| c.serial == id.serial && !matches!(c.phase, Phase::Gone))
    }

    fn write_frame(&mut self, id: ConnId, frame: &Frame) {
        self.write_message(id, Message::Text(frame.clone()));
    }

    fn write_message(&mut self, id: ConnId, message: Message) {
        if !self.is_current(id) {
            return;
        }
        let conn = &mut self.conns[id.slot];
        let Phase::Open { ws, closing_since: None, session: Some(_), .. } = &mut conn.phase else { return };
        let len = message.len() as u64;
        match ws.write(message) {
            Ok(()) if ws.get_ref().pending() > self.app.config().limits.outbound_buffer_bytes => {
                self.drop_slow_consumer(id.slot)
            }
            Ok(()) => {
                self.app.metrics().frames_out += 1;
                self.app.metrics().bytes_out += len;
                self.mark_dirty(id.slot);
            }
            Err(WsError::WriteBufferFull(_)) => self.drop_slow_consumer(id.slot),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => self.mark_dirty(id.slot),
            Err(e) => self.finish(id.slot, &format!("write error: {e}")),
        }
    }

    /// Deadlines: handshakes, pings, idle timeouts, unfinished close handshakes.
    /// The bus's socket is ready: what it heard is delivered.
    fn on_bus(&mut self) {
        let ctx = &mut self.app.ctx;
        let (Some(link), Some(subscriber)) = (self.bus.as_mut(), ctx.bus.as_mut()) else { return };
        let heard = link.ready(self.poll.registry(), subscriber, &mut ctx.metrics);
        let up = subscriber.is_up();
        self.app.on_bus(heard.unwrap_or_default(), up);
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.next_sweep = now + SWEEP_INTERVAL;
        if let (Some(link), Some(subscriber)) = (self.bus.as_mut(), self.app.ctx.bus.as_mut()) {
            link.tick(self.poll.registry(), subscriber, now);
            let up = subscriber.is_up();
            self.app.ctx.engine.set_bus(up);
        }
        // Idleness is time the loop could have heard the client in. After a stall (the
        // process stopped, a paused VM) every quiet client would otherwise be past its
        // deadline at once and closed unpinged, and all reconnect together.
        let stalled = now.duration_since(self.last_sweep).saturating_sub(SWEEP_INTERVAL);
        self.last_sweep = now;
        if stalled > STALL_SLACK {
            log::warn!(
                "the event loop was stalled for {:.1} s; idle deadlines moved by as much",
                stalled.as_secs_f64()
            );
            for (_, conn) in self.conns.iter_mut() {
                conn.last_seen = (conn.last_seen + stalled).min(now);
            }
        }
        let limits = self.app.config().limits.clone();
        let ping_after = limits.idle_timeout / 2;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            match &mut conn.phase {
                Phase::Request { .. } | Phase::Waiting { .. } | Phase::Respond { .. } => {
                    if now.duration_since(conn.opened) >= limits.handshake_timeout {
                        self.app.metrics().handshake_timeouts += 1;
                        self.abort(key, "handshake timeout");
                    }
                }
                Phase::Open { closing_since: Some(since), .. } => {
                    if now.duration_since(*since) >= CLOSE_GRACE {
                        self.abort(key, "close handshake timeout");
                    }
                }
                Phase::Linger { until, .. } => {
                    if now >= *until {
                        self.abort(key, "linger timeout");
                    }
                }
                Phase::Open { ws, closing_since: None, .. } => {
                    let quiet = now.duration_since(conn.last_seen);
                    if quiet >= limits.idle_timeout {
                        self.app.metrics().idle_timeouts += 1;
                        self.close_ws(key, close_code::GOING_AWAY, "idle timeout");
                    } else if quiet >= ping_after && !conn.pinged {
                        conn.pinged = true;
                        let _ = ws.write(Message::Ping(Default::default()));
                        self.mark_dirty(key);
                    }
                }
                Phase::Gone => {}
            }
        }
        self.app.sweep();
        if self.reserve_fd.is_none() {
            self.reserve_fd = std::fs::File::open("/dev/null").ok();
            self.accept(Listener::WebSocket);
            self.accept(Listener::Api);
        }
    }
}

/// Connections the kernel may hold for us before `accept`. mio and std bind with 128,
/// which a burst of clients overflows (their SYNs are dropped and retried a second
/// later); the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener with `SO_REUSEADDR` (a restart does not wait for TIME_WAIT)
/// and a deep accept queue.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

fn status_of(response: &[u8]) -> &str {
    std::str::from_utf8(response.get(9..12).unwrap_or(b"???")).unwrap_or("???")
}

/// How long the engine gets at shutdown to answer what it still owes.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// The open session of a connection, if it is still there.
fn session_mut(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Session> {
    match conns.get_mut(id.slot) {
        Some(conn) if conn.serial == id.serial => match &mut conn.phase {
            Phase::Open { session: Some(session), .. } => Some(session),
            _ => None,
        },
        _ => None,
    }
}
