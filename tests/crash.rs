//! Crash durability: clients chat while switchboard is killed with SIGKILL at random
//! moments and restarted on the same database, many times. Afterwards every message any
//! client saw broadcast is in the database exactly once, and SQLite's integrity check
//! passes. Bounded: a fixed number of kills, each within a second.

mod util;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use util::*;

const KILLS: usize = 25;
const CLIENTS: usize = 4;

/// A small xorshift generator: random enough for kill timing, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn every_message_a_client_saw_survives_sigkill() {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let settings = [("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000000"), ("SWITCHBOARD_LOG", "warn")];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut sent_total = 0usize;

    for round in 0..KILLS {
        let mut server = Server::start_in(dir.clone(), &settings);
        let mut threads = Vec::new();
        for client in 0..CLIENTS {
            let token = server.token(json!(client + 1), &format!("c{client}"));
            let addr = server.ws;
            let seen = seen.clone();
            threads.push(std::thread::spawn(move || {
                let mut sent = 0;
                let url = format!("ws://{addr}/ws/chat/crash/?token={token}");
                let Ok(stream) = std::net::TcpStream::connect(addr) else { return 0 };
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let Ok((mut ws, _)) = tungstenite::client(url.as_str(), stream) else { return 0 };
                for seq in 0.. {
                    let text = format!("r{round}-c{client}-m{seq}");
                    if ws.send(tungstenite::Message::Text(json!({ "message": text }).to_string().into())).is_err() {
                        return sent;
                    }
                    sent += 1;
                    // Read until this message comes back; record every broadcast seen.
                    loop {
                        match ws.read() {
                            Ok(tungstenite::Message::Text(frame)) => {
                                let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
                                if frame["type"] == "chat_message" {
                                    let message = frame["message"].as_str().unwrap().to_string();
                                    let mine = message == text;
                                    seen.lock().unwrap().insert(message);
                                    if mine {
                                        break;
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return sent,
                        }
                    }
                }
                sent
            }));
        }
        // Kill at a random moment while the clients are busy.
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 450));
        server.kill();
        for thread in threads {
            sent_total += thread.join().unwrap();
        }
    }

    let seen = seen.lock().unwrap();
    if !util::on_postgres() {
        assert_eq!(util::query_store(dir.path(), "PRAGMA integrity_check"), ["ok"]);
    }
    let stored: Vec<(String, i64)> =
        util::query_store(dir.path(), "SELECT content, count(*) FROM messages GROUP BY content")
            .iter()
            .map(|row| {
                let (content, count) = row.rsplit_once('|').unwrap();
                (content.to_string(), count.parse().unwrap())
            })
            .collect();
    let duplicates: Vec<_> = stored.iter().filter(|(_, n)| *n > 1).collect();
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
    let stored: HashSet<&str> = stored.iter().map(|(c, _)| c.as_str()).collect();
    let lost: Vec<&String> = seen.iter().filter(|m| !stored.contains(m.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} messages seen by clients but not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(seen.len() > KILLS * CLIENTS, "the clients chatted ({} messages seen)", seen.len());
    println!(
        "crash durability: {KILLS} SIGKILLs survived, {sent_total} messages sent, {} seen by clients and all stored once, {} rows, integrity ok",
        seen.len(),
        stored.len()
    );
}
