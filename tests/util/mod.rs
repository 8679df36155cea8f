//! Shared by the integration tests: start the real `switchboard` binary on port 0 with
//! a temporary database, mint tokens, and drive it with tungstenite's client over
//! loopback. Every blocking read has a timeout, so a test that waits for a frame that
//! never comes fails instead of hanging.

#![allow(dead_code)]

pub mod pg;
pub mod redis;
#[allow(unused_imports)]
mod shape;
#[allow(unused_imports)]
pub use shape::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const API_KEY: &str = "test-api-key-0123456789abcdef";
/// Longest a test waits for one expected frame or event.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    child: Option<Child>,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub env: Vec<(String, String)>,
    /// Everything the server wrote to stderr (its log), collected by a thread.
    pub log: Arc<Mutex<String>>,
    pub stdout: Vec<String>,
}

/// The binary under test: the one cargo built, or `SWITCHBOARD_TEST_BIN` (to run the
/// suite against another build, such as the static release binary or an older one).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SWITCHBOARD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchboard").into())
    })
}

impl Server {
    /// Starts a server with the test secret and API key plus `extra` settings.
    pub fn start(extra: &[(&str, &str)]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Server::start_in(dir, extra)
    }

    /// Starts a server whose database lives in `dir` (to restart on the same data).
    pub fn start_in(dir: Arc<tempfile::TempDir>, extra: &[(&str, &str)]) -> Server {
        let mut env: Vec<(String, String)> = vec![
            ("SWITCHBOARD_LISTEN".into(), "127.0.0.1:0".into()),
            ("SWITCHBOARD_API_LISTEN".into(), "127.0.0.1:0".into()),
            ("SWITCHBOARD_DB".into(), dir.path().join("switchboard.db").display().to_string()),
            ("SWITCHBOARD_JWT_SECRET".into(), SECRET.into()),
            ("SWITCHBOARD_API_KEY".into(), API_KEY.into()),
            ("SWITCHBOARD_LOG".into(), "debug".into()),
        ];
        if on_postgres() {
            env.push(("SWITCHBOARD_DATABASE_URL".into(), pg_database_for(dir.path())));
        }
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        Server::spawn(dir, env)
    }

    fn spawn(dir: Arc<tempfile::TempDir>, env: Vec<(String, String)>) -> Server {
        let mut command = Command::new(bin());
        command.current_dir(dir.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD_") && k != DEFERRED_ENGINE {
                command.env_remove(k);
            }
        }
        for (k, v) in &env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start switchboard");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read banner");
        let (ws, api) = parse_banner(&line).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("no banner from switchboard: {line:?}\nlog:\n{}", log.lock().unwrap());
        });
        let mut lines = vec![line.trim_end().to_string()];
        // Keep reading stdout in the background so the pipe never fills.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        lines.retain(|l| !l.is_empty());
        Server { child: Some(child), ws, api, dir, env, log, stdout: lines }
    }

    /// Stops this process and starts a new one on the same database and settings
    /// (new ports).
    pub fn restart(mut self) -> Server {
        if self.child.is_some() {
            self.stop();
        }
        let dir = self.dir.clone();
        let env = self.env.clone();
        Server::spawn(dir, env)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("switchboard.db")
    }

    /// The rows of a query on this server's store (SQLite's file, or its PostgreSQL
    /// database), each row's columns joined by `|`.
    pub fn query(&self, sql: &str) -> Vec<String> {
        query_store(self.dir.path(), sql)
    }

    /// Every row in the store, over all tables: a schema-agnostic way to see whether an
    /// action stored something. The server commits before it sends, so once the frame
    /// that answers an action has arrived, what the action stored is visible here. Not
    /// counted: `users` (a session's first open keeps its user, on PostgreSQL in a later
    /// batch) and PostgreSQL's batch markers (one per committed batch, whatever it held).
    pub fn stored_rows(&self) -> i64 {
        let tables = if on_postgres() {
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN ('users', 'batches')"
        } else {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'users'"
        };
        self.query(tables)
            .iter()
            .map(|t| self.query(&format!("SELECT count(*) FROM \"{t}\""))[0].parse::<i64>().unwrap())
            .sum()
    }

    /// Sends SIGTERM and waits (at most `WAIT`) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe_kill(child.id(), "TERM");
        wait_with_deadline(&mut child, WAIT).expect("switchboard did not exit after SIGTERM")
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn token(&self, user: Value, name: &str) -> String {
        token(json!({"user_id": user, "name": name, "exp": in_secs(600), "token_type": "access"}))
    }

    /// Opens a WebSocket to `path` (with its query), with a read timeout.
    pub fn connect(&self, path: &str) -> Client {
        self.try_connect(path, &[]).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    pub fn connect_as(&self, path: &str, user: Value, name: &str) -> Client {
        let token = self.token(user, name);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.connect(&format!("{path}{sep}token={token}"))
    }

    pub fn try_connect(&self, path: &str, headers: &[(&str, &str)]) -> Result<Client, tungstenite::Error> {
        let url = format!("ws://{}{}", self.ws, path);
        let mut request = url.into_client_request()?;
        for (k, v) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                tungstenite::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let stream = TcpStream::connect(self.ws).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client(request, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        Ok(Client { ws })
    }

    /// A server API call; returns the status and the parsed JSON (or text) body.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.api_with_key(method, path, body, Some(API_KEY))
    }

    pub fn api_with_key(&self, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, body) = raw_http(self.api, request.as_bytes());
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, value)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_banner(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let ws = line.split("ws://").nth(1)?.split_whitespace().next()?.parse().ok()?;
    let api = line.split("http://").nth(1)?.trim_end().trim_end_matches(')').parse().ok()?;
    Some((ws, api))
}

fn unsafe_kill(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success());
}

pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes and reads the whole HTTP response (the server closes after it).
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let (status, response) = raw_http_response(addr, request);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Like `raw_http`, with the whole response (status line and headers too).
pub fn raw_http_response(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Whether the servers tests start store in PostgreSQL (`SWITCHBOARD_TEST_POSTGRES=1`);
/// tests of SQLite itself (its file, its disk, its checks) then have nothing to test.
pub fn on_postgres() -> bool {
    std::env::var_os("SWITCHBOARD_TEST_POSTGRES").is_some_and(|v| v == "1")
}

/// True (and says so) when the servers store in PostgreSQL: a test of SQLite's own
/// behaviour (`what`) has nothing to test then.
pub fn sqlite_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("not run with SWITCHBOARD_TEST_POSTGRES=1: {what}");
    }
    on_postgres()
}

/// The rows of a query on the store of the server directory `dir` (see `Server::query`).
pub fn query_store(dir: &Path, sql: &str) -> Vec<String> {
    if on_postgres() {
        let (ok, out) = pg::shared().psql(&pg_database_for(dir), sql);
        assert!(ok, "{sql}: {out}");
        return out.lines().map(str::to_string).collect();
    }
    let db = rusqlite::Connection::open(dir.join("switchboard.db")).expect("open the database");
    let mut statement = db.prepare(sql).expect("a query");
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            let values: Vec<String> = (0..columns)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                })
                .collect();
            Ok(values.join("|"))
        })
        .expect("rows");
    rows.map(Result::unwrap).collect()
}

/// With `SWITCHBOARD_TEST_POSTGRES=1` every server a test starts stores in PostgreSQL
/// (the throwaway server of `pg.rs`): a database per server directory, so a server
/// started again in the same directory finds its data.
fn pg_database_for(dir: &Path) -> String {
    static DATABASES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().unwrap();
    if let Some((_, url)) = databases.iter().find(|(d, _)| d == dir) {
        return url.clone();
    }
    let url = pg::shared().database();
    databases.push((dir.to_path_buf(), url.clone()));
    url
}

/// Kept for every server a test starts: `SWITCHBOARD_TEST_DEFERRED_ENGINE=1` runs the
/// suite against an engine that answers a turn late (`.ci/run` does, once).
const DEFERRED_ENGINE: &str = "SWITCHBOARD_TEST_DEFERRED_ENGINE";

/// The binary with `args`, run in `dir`, with no `SWITCHBOARD_*` variable but `env`
/// (for start-ups a test watches itself).
pub fn switchboard_command(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Command {
    let mut command = Command::new(bin());
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") && k != DEFERRED_ENGINE {
            command.env_remove(k);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// A masked client frame (RFC 6455 §5.2) with the FIN bit and `opcode`, written raw by
/// tests that need what tungstenite's client would refuse to send.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

pub fn in_secs(secs: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    now + secs
}

/// An HS256 token over `claims` with the test secret.
pub fn token(claims: Value) -> String {
    token_with(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

pub fn token_with(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).expect("send");
    }

    pub fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    /// The next text frame as JSON, answering pings on the way; panics on timeout.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).expect("JSON frame"),
                Ok(Message::Close(frame)) => panic!("closed while waiting for a frame: {frame:?}"),
                Ok(_) => continue,
                Err(e) => panic!("no frame: {e}"),
            }
        }
    }

    /// The next frame, which must deliver a stored event, without its `seq` (`sequenced`).
    pub fn recv_event(&mut self) -> Value {
        sequenced(self.recv())
    }

    /// The next frame whose `type` is `kind`, skipping others.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv();
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads until the server closes; returns the close code (None for a bare TCP close).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("server did not close within {WAIT:?}")
                }
                Err(_) => return None,
            }
        }
    }

    /// Asserts that no text frame arrives within `window`.
    pub fn expect_silence(&mut self, window: Duration) {
        self.ws.get_mut().set_read_timeout(Some(window)).unwrap();
        let result = self.ws.read();
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        match result {
            Ok(Message::Text(text)) => panic!("unexpected frame: {text}"),
            Ok(Message::Close(frame)) => panic!("unexpected close: {frame:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        // Wait for the server's answer so the close is processed before we return.
        for _ in 0..100 {
            match self.ws.read() {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
}

/// A frame that delivers a stored event, without its `seq` (which it must have: an
/// integer, its stream's number; docs/protocols.md, "Recovery"), to compare with a
/// document's frame.
pub fn sequenced(mut frame: Value) -> Value {
    let seq = frame.as_object_mut().and_then(|o| o.remove("seq"));
    assert!(seq.as_ref().is_some_and(Value::is_i64), "no integer seq in a frame that delivers a stored event: {frame}");
    frame
}

/// The close code a connection attempt ends with, for refusals after the upgrade.
pub fn close_code_of(server: &Server, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    let mut client = server.try_connect(path, headers).expect("upgrade");
    client.expect_close()
}

pub fn code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// Reads one metric value from Prometheus text (the line `name value`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

/// Polls `check` until it is true or `WAIT` passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for: {what}");
}
