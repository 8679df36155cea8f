//! The limits of PRODUCT.md: message size, idle timeout and pings, rate limit,
//! connection caps, slow consumers and the handshake deadline.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;
use util::*;

#[test]
fn a_message_of_exactly_64_kib_passes_and_one_byte_more_closes_with_1009() {
    let server = Server::start(&[("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000")]);
    let mut client = server.connect_as("/ws/chat/big/", json!(1), "ann");
    client.recv_type("room_users_list");
    let envelope = json!({"message": ""}).to_string().len();
    let content = "x".repeat(65536 - envelope);
    let exact = json!({ "message": content }).to_string();
    assert_eq!(exact.len(), 65536);
    client.send_text(&exact);
    assert_eq!(client.recv()["message"].as_str().unwrap().len(), content.len());

    let over = json!({ "message": format!("{content}y") }).to_string();
    assert_eq!(over.len(), 65537);
    client.send_text(&over);
    assert_eq!(client.expect_close(), Some(1009));
    // Nothing of the oversized message was stored.
    let mut other = server.connect_as("/ws/chat/big/", json!(2), "bob");
    other.recv_type("room_users_list");
    assert_eq!(other.recv()["message"].as_str().unwrap().len(), content.len());
    other.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_declared_huge_frame_is_refused_without_waiting_for_its_payload() {
    let server = Server::start(&[]);
    let mut client = server.connect_as("/ws/chat/huge/", json!(1), "ann");
    client.recv_type("room_users_list");
    // A masked text frame header that announces 2^40 bytes, and no payload.
    let header = [0x81u8, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    client.ws.get_mut().write_all(&header).unwrap();
    assert_eq!(client.expect_close(), Some(1009));
}

#[test]
fn a_silent_client_is_closed_and_a_client_answering_pings_stays() {
    let server = Server::start(&[("SWITCHBOARD_IDLE_TIMEOUT_SECS", "2")]);
    let mut silent = server.connect_as("/ws/chat/idle/", json!(1), "ann");
    silent.recv_type("room_users_list");
    let mut lively = server.connect_as("/ws/chat/idle-2/", json!(2), "bob");
    lively.recv_type("room_users_list");

    // `lively` keeps reading, so tungstenite answers the server's pings for it; `silent`
    // reads nothing, so its pings go unanswered.
    let started = Instant::now();
    let mut pings = 0;
    lively.ws.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while started.elapsed() < Duration::from_secs(5) {
        match lively.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = lively.ws.flush();
            }
            Err(e) => panic!("the lively client was dropped: {e}"),
        }
    }
    assert!(pings >= 2, "quiet connections are pinged ({pings} pings)");
    lively.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    lively.send_json(json!({"message": "still connected"}));
    assert_eq!(lively.recv_type("chat_message")["message"], "still connected");

    // The silent client was sent 1001 and, as it did not answer within the close grace,
    // reset (so the kernel holds nothing for it): reading now finds the close frame or
    // the reset, whichever the kernel kept.
    let code = silent.expect_close();
    assert!(matches!(code, Some(1001) | None), "{code:?}");
    assert!(server.log_text().contains("idle timeout"));
}

#[test]
fn over_the_rate_limit_messages_are_dropped_with_an_error_and_not_stored() {
    let server = Server::start(&[("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "5")]);
    let mut tab1 = server.connect_as("/ws/chat/rate/", json!(1), "ann");
    tab1.recv_type("room_users_list");
    let mut tab2 = server.connect_as("/ws/chat/rate/", json!(1), "ann");
    tab2.recv_type("room_users_list");
    // The limit is per user, over both tabs.
    let mut seen = Vec::new();
    for i in 0..4 {
        tab1.send_json(json!({"message": format!("ok {i}")}));
        seen.push(tab2.recv()["message"].as_str().unwrap().to_string());
    }
    tab2.send_json(json!({"message": "ok 4"}));
    tab2.send_json(json!({"message": "dropped"}));
    let mut errors = 0;
    for _ in 0..2 {
        let frame = tab2.recv();
        if let Some(error) = frame.get("error") {
            assert!(error.as_str().unwrap().contains("Rate limit"), "{frame}");
            errors += 1;
        } else {
            seen.push(frame["message"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(seen, ["ok 0", "ok 1", "ok 2", "ok 3", "ok 4"]);
    let mut reader = server.connect_as("/ws/chat/rate/", json!(2), "bob");
    reader.recv_type("room_users_list");
    for i in 0..5 {
        assert_eq!(reader.recv()["message"], format!("ok {i}"));
    }
    reader.expect_silence(Duration::from_millis(200));
    let (_, metrics) = server.api("GET", "/metrics", None);
    assert_eq!(metric(metrics.as_str().unwrap(), "switchboard_rate_limited_total"), 1.0);
}

#[test]
fn the_total_connection_cap_refuses_cleanly_and_spares_existing_clients() {
    let server = Server::start(&[("SWITCHBOARD_MAX_CONNECTIONS", "3")]);
    let mut clients: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = server.connect_as("/ws/chat/cap/", json!(i), "u");
            c.recv_type("room_users_list");
            c
        })
        .collect();
    let token = server.token(json!(9), "late");
    let request = format!(
        "GET /ws/chat/cap/?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    for _ in 0..5 {
        let (status, body) = raw_http(server.ws, request.as_bytes());
        assert_eq!(status, 503, "{body}");
    }
    clients[0].send_json(json!({"message": "we are fine"}));
    for client in &mut clients {
        assert_eq!(client.recv_type("chat_message")["message"], "we are fine");
    }
    // Room for one more once one leaves.
    clients.pop().unwrap().close();
    eventually("a slot frees", || {
        server
            .try_connect(&format!("/ws/chat/cap/?token={token}"), &[])
            .is_ok_and(|mut c| c.recv()["type"] == "room_users_list")
    });
}

#[test]
fn the_per_user_cap_closes_the_extra_connection_with_1013() {
    let server = Server::start(&[("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "2")]);
    let mut first = server.connect_as("/ws/chat/peruser/", json!(1), "ann");
    first.recv_type("room_users_list");
    let mut second = server.connect_as("/ws/chat/peruser/", json!(1), "ann");
    second.recv_type("room_users_list");
    let token = server.token(json!(1), "ann");
    assert_eq!(close_code_of(&server, &format!("/ws/chat/peruser/?token={token}"), &[]), Some(1013));
    // Another user is not affected, and neither are the first two.
    let mut bob = server.connect_as("/ws/chat/peruser/", json!(2), "bob");
    bob.recv_type("room_users_list");
    first.send_json(json!({"message": "hi"}));
    assert_eq!(second.recv_type("chat_message")["message"], "hi");
    assert_eq!(bob.recv_type("chat_message")["message"], "hi");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_never_reads_is_disconnected_while_others_keep_receiving() {
    let server = Server::start(&[
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"),
        ("SWITCHBOARD_OUTBOUND_BUFFER_BYTES", "262144"),
    ]);
    let mut stuck = server.connect_as("/ws/chat/busy/", json!(1), "stuck");
    stuck.recv_type("room_users_list");
    let mut sender = server.connect_as("/ws/chat/busy/", json!(2), "sender");
    sender.recv_type("room_users_list");
    let mut reader = server.connect_as("/ws/chat/busy/", json!(3), "reader");
    reader.recv_type("room_users_list");
    sender.recv_type("user_join");
    let rss_before = rss_kib(server.pid());

    // ~48 MiB of broadcasts: far more than the kernel buffers of `stuck` can hold.
    let payload = "z".repeat(60_000);
    let count = 800;
    let writer = std::thread::spawn(move || {
        for i in 0..count {
            sender.send_json(json!({"message": format!("{i} {payload}")}));
            // Keep the sender's own socket drained.
            let frame = sender.recv_type("chat_message");
            assert!(frame["message"].as_str().unwrap().starts_with(&format!("{i} ")));
        }
        sender
    });
    for i in 0..count {
        let frame = reader.recv_type("chat_message");
        assert!(frame["message"].as_str().unwrap().starts_with(&format!("{i} ")), "reader got every message in order");
    }
    let _sender = writer.join().unwrap();

    let (_, metrics) = server.api("GET", "/metrics", None);
    assert_eq!(metric(metrics.as_str().unwrap(), "switchboard_slow_consumer_disconnects_total"), 1.0);
    assert!(server.log_text().contains("slow consumer"));
    // The stuck client finds its stream ends without the full flood.
    let mut received = 0usize;
    stuck.ws.get_mut().set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while let Ok(Message::Text(_)) = stuck.ws.read() {
        received += 1;
    }
    assert!(received < count, "the stuck client was cut off ({received} of {count})");
    // Its buffer was freed: the server did not keep tens of MiB for it.
    let rss_after = rss_kib(server.pid());
    assert!(rss_after < rss_before + 16 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
}

#[test]
fn slowloris_handshakes_are_dropped_at_the_deadline_while_others_are_served() {
    let server = Server::start(&[("SWITCHBOARD_HANDSHAKE_TIMEOUT_SECS", "1")]);
    let mut dribblers: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).unwrap();
            s.write_all(b"GET /ws/chat/slow/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    // Meanwhile a normal client is served at once.
    let mut client = server.connect_as("/ws/chat/slow/", json!(1), "ann");
    client.recv_type("room_users_list");
    // One header byte at a time does not extend the deadline.
    for _ in 0..5 {
        for s in &mut dribblers {
            let _ = s.write_all(b"X");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &mut dribblers {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "dropped without a response");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    client.send_json(json!({"message": "served"}));
    assert_eq!(client.recv()["message"], "served");
}
