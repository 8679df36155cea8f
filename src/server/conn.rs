//! One connection and its lifecycle: reading the HTTP request, waiting for the app's
//! answer (server API), writing an HTTP response, or open as a WebSocket; then gone.
//! Each phase owns what it needs, and the connection moves between them by value.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::WebSocket;

use super::wire::Wire;
use crate::context::Session;

/// Which listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    WebSocket,
    Api,
}

/// Open is the phase almost every connection is in, so it is kept inline rather than
/// boxed: boxing would add an allocation per connection to save space only for the
/// short-lived phases.
#[derive(Default)]
#[allow(clippy::large_enum_variant)]
pub enum Phase {
    /// Reading the request head (and, for the API, its body).
    Request { stream: TcpStream, buf: Vec<u8> },
    /// A server API request is with the app; its answer comes through the outbox.
    Waiting { stream: TcpStream },
    /// Writing an HTTP response; the connection closes after it.
    Respond { stream: TcpStream, out: Vec<u8>, written: usize },
    /// Upgraded (the 101 answer is the first thing in the wire's buffer). `session` is
    /// `None` while a refused connection closes. `closing_since` is set once the server
    /// has sent its close frame.
    Open { ws: WebSocket<Wire>, session: Option<Session>, closing_since: Option<Instant> },
    /// The server closed (its close frame is sent and its side shut) while the client may
    /// still be sending, e.g. the rest of a message over the limit. Closing the socket
    /// with unread data would make the kernel reset the connection, and a browser that
    /// sees the reset reports 1006 instead of the close code. So what arrives is read
    /// and thrown away until the client closes too, or `until`, or `budget` bytes.
    Linger { stream: TcpStream, until: Instant, budget: usize },
    /// Finished; removed from the slab at the end of the turn.
    #[default]
    Gone,
}

pub struct Conn {
    pub serial: u64,
    pub peer: SocketAddr,
    pub listener: Listener,
    /// The request path, without the query (which may hold a token).
    pub path: String,
    pub opened: Instant,
    /// When the client last sent anything (any frame, pongs included).
    pub last_seen: Instant,
    /// A ping went out since `last_seen`.
    pub pinged: bool,
    /// Queued for the end-of-turn flush.
    pub dirty: bool,
    /// Stop reading frames once the close frame is flushed, and linger (after a
    /// protocol violation or a message over the limit).
    pub linger_after_flush: bool,
    /// Why the server closed it, for the log line.
    pub close_reason: Option<String>,
    pub phase: Phase,
}

impl Phase {
    /// The socket, in every phase that still has one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Phase::Request { stream, .. }
            | Phase::Waiting { stream }
            | Phase::Respond { stream, .. }
            | Phase::Linger { stream, .. } => Some(stream),
            Phase::Open { ws, .. } => Some(&ws.get_ref().tcp),
            Phase::Gone => None,
        }
    }
}

impl Conn {
    pub fn new(serial: u64, peer: SocketAddr, listener: Listener, stream: TcpStream) -> Conn {
        let now = Instant::now();
        Conn {
            serial,
            peer,
            listener,
            path: String::new(),
            opened: now,
            last_seen: now,
            pinged: false,
            dirty: false,
            linger_after_flush: false,
            close_reason: None,
            phase: Phase::Request { stream, buf: Vec::new() },
        }
    }
}
