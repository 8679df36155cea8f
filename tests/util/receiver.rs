//! A webhook receiver for the tests: a real HTTP/1.1 server on a loopback port, one
//! thread per connection (keep-alive), that checks the signature of every request with
//! the documented rule and keeps what arrived. It can be told to answer 500, to hang
//! (read the request and never answer), or to be down (its port closed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answers 204 after this many milliseconds (a slow receiver).
    Slow(u64),
    Fail,
    Hang,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub signature: String,
    pub body: Vec<u8>,
    pub events: Vec<Value>,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Delivered>,
    /// Requests whose signature did not verify (answered 400).
    pub forged: usize,
    /// Requests answered with something else than 2xx (500, or never).
    pub refused: usize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    secret: String,
    mode: Arc<Mutex<Mode>>,
    pub state: Arc<Mutex<State>>,
    up: Arc<AtomicBool>,
}

impl Receiver {
    /// Listening on a free loopback port.
    pub fn start(secret: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            addr,
            secret: secret.to_string(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            state: Arc::default(),
            up: Arc::new(AtomicBool::new(false)),
        };
        receiver.serve(listener);
        receiver
    }

    /// A receiver whose port is chosen now but that is down until `up`.
    pub fn down(secret: &str) -> Receiver {
        let receiver = Receiver::start(secret);
        receiver.stop();
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/switchboard/", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the port (connections open now are dropped at their next request).
    pub fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so that it sees it is down and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Opens the same port again.
    pub fn up(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        self.up.store(true, Ordering::SeqCst);
        let (up, mode, state, secret) = (self.up.clone(), self.mode.clone(), self.state.clone(), self.secret.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (up, mode, state, secret) = (up.clone(), mode.clone(), state.clone(), secret.clone());
                std::thread::spawn(move || connection(stream, &up, &mode, &state, &secret));
            }
        });
    }

    /// Every event received, in arrival order (duplicates included).
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.iter().flat_map(|r| r.events.clone()).collect()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn forged(&self) -> usize {
        self.state.lock().unwrap().forged
    }

    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn connection(stream: TcpStream, up: &AtomicBool, mode: &Mutex<Mode>, state: &Mutex<State>, secret: &str) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !up.load(Ordering::SeqCst) {
            return;
        }
        assert!(request_line.starts_with("POST /hooks/switchboard/ "), "{request_line}");
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        let signature = header("switchboard-signature").unwrap_or_default();
        if !switchboard::webhook::sign::verify(secret, &signature, &body, unix_now(), 300) {
            state.lock().unwrap().forged += 1;
            let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        let current = *mode.lock().unwrap();
        match current {
            Mode::Ok | Mode::Slow(_) => {
                if let Mode::Slow(ms) = current {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                let parsed: Value = serde_json::from_slice(&body).expect("a JSON body");
                let events = parsed["events"].as_array().expect("an events array").clone();
                state.lock().unwrap().requests.push(Delivered { signature, body, events });
                let _ = writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
            Mode::Fail => {
                state.lock().unwrap().refused += 1;
                let _ = writer.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops\n");
            }
            Mode::Hang => {
                state.lock().unwrap().refused += 1;
                // Never answers: the client gives up at its timeout and closes.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                return;
            }
        }
    }
}
