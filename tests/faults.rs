//! What faults and careless clients do to connections: a close while the client is still
//! sending (browsers report 1006 when the close turns into a reset), a dropped slow
//! consumer that would hold kernel memory for minutes, the kernel send buffer, and a
//! stall of the whole process.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;
use util::*;

/// A masked client text frame.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    masked_frame(0x1, payload)
}

/// Upgrades a raw socket on `path`, returning it with the 101 answer read.
fn raw_upgrade(server: &Server, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Reads server frames until a close frame; returns its code, then checks that the
/// stream ends with a FIN (read returns 0), not a reset.
fn close_code_then_clean_end(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let code = loop {
        // Parse complete unmasked server frames from the front of `buf`.
        let mut at = 0;
        let mut found = None;
        while buf.len() >= at + 2 {
            let opcode = buf[at] & 0x0f;
            let (len, header) = match buf[at + 1] & 0x7f {
                126 if buf.len() >= at + 4 => (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4),
                127 if buf.len() >= at + 10 => {
                    (u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + header + len {
                break;
            }
            if opcode == 0x8 {
                let payload = &buf[at + header..at + header + len];
                found = Some(u16::from_be_bytes([payload[0], payload[1]]));
                break;
            }
            at += header + len;
        }
        if let Some(code) = found {
            break code;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the stream ended before a close frame".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read error before the close frame: {e}")),
        }
    };
    // Answer the close, as a browser does once it has sent what it was sending. A reset
    // shows here first (and a read after it would then find a plain end).
    if let Err(e) = stream.write_all(&[0x88, 0x82, 0, 0, 0, 0, (code >> 8) as u8, code as u8]) {
        return Err(format!("close {code}, then {e} when answering it"));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(code),
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => return Err("the server kept sending after its close frame".into()),
            Err(e) => return Err(format!("close {code}, then {e} instead of a clean end")),
        }
    }
}

#[test]
fn a_message_over_the_limit_closes_with_1009_and_no_reset_while_the_client_is_still_sending() {
    // A browser sends the whole message before it reads the close; if the server drops
    // the socket with the rest unread, the kernel resets the connection and the browser
    // reports 1006. So the close frame must be followed by a clean end, every time.
    let server = Server::start(&[]);
    let token = server.token(json!(1), "ann");
    for size in [65_537usize, 1 << 20, 3 << 20] {
        for attempt in 0..5 {
            let mut stream = raw_upgrade(&server, &format!("/ws/rooms/big/?token={token}"));
            let frame = masked_text_frame(&vec![b'x'; size]);
            let mut writer = stream.try_clone().unwrap();
            let sending = std::thread::spawn(move || writer.write_all(&frame).is_ok());
            let result = close_code_then_clean_end(&mut stream);
            let _ = sending.join();
            assert_eq!(result, Ok(1009), "{size} bytes, attempt {attempt}");
        }
    }
    // The server is fine and nothing of them was stored.
    let mut other = server.connect_as("/ws/rooms/big/", json!(2), "bob");
    other.recv_type("room_users_list");
    other.expect_silence(Duration::from_millis(200));
    assert!(server.log_text().contains("1009 message too big"));
}

#[test]
fn invalid_utf8_closes_with_1007_and_a_clean_end() {
    let server = Server::start(&[]);
    let token = server.token(json!(1), "ann");
    for attempt in 0..5 {
        let mut stream = raw_upgrade(&server, &format!("/ws/rooms/utf/?token={token}"));
        let mut bad = masked_text_frame(&[b'{', 0xff, 0xfe, b'}']);
        // More behind it, as a client that goes on sending would: more than the kernel
        // buffers hold, so the server must read it for the close to end cleanly.
        bad.extend(masked_text_frame(&vec![b'y'; 3 << 20]));
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || writer.write_all(&bad).is_ok());
        let result = close_code_then_clean_end(&mut stream);
        let _ = sending.join();
        assert_eq!(result, Ok(1007), "attempt {attempt}");
    }
}

/// The kernel's view of the server's end of a connection: its TCP state (see
/// include/net/tcp_states.h: 1 established, 4 FIN-WAIT-1) and bytes queued to send.
fn server_side(server_port: u16, client_port: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if port(fields[1])? != server_port || port(fields[2])? != client_port {
            return None;
        }
        let state = u8::from_str_radix(fields[3], 16).ok()?;
        let tx_queue = u64::from_str_radix(fields[4].split(':').next()?, 16).ok()?;
        Some((state, tx_queue))
    })
}

#[test]
fn a_dropped_slow_consumer_is_reset_and_holds_no_kernel_memory() {
    let server = Server::start(&[
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "100000"),
        ("SWITCHBOARD_OUTBOUND_BUFFER_BYTES", "262144"),
    ]);
    let stuck = server.connect_as("/ws/rooms/flood/", json!(1), "stuck");
    let stuck_port = stuck.ws.get_ref().local_addr().unwrap().port();
    let mut sender = server.connect_as("/ws/rooms/flood/", json!(2), "sender");
    sender.recv_type("room_users_list");
    let payload = "z".repeat(60_000);
    let mut sent = 0;
    while !server.log_text().contains("slow consumer") {
        assert!(sent < 2_000, "the stuck client was never dropped");
        sender.send_json(json!({ "message": format!("{sent} {payload}") }));
        sender.recv_type("chat_message");
        sent += 1;
    }
    // Without the reset the server's socket sits in FIN-WAIT-1 with megabytes queued,
    // trickled to a client that reads nothing, for minutes.
    eventually("the server's socket toward the slow consumer is gone", || {
        server_side(server.ws.port(), stuck_port).is_none()
    });
    drop(stuck);
}

#[test]
fn the_kernel_send_buffer_of_a_websocket_is_bounded_by_the_setting() {
    // `ss -m` shows a socket's send buffer as `tb` (twice what SO_SNDBUF asked for).
    let server = Server::start(&[("SWITCHBOARD_SOCKET_SEND_BUFFER_BYTES", "65536")]);
    let mut client = server.connect_as("/ws/rooms/buf/", json!(1), "ann");
    client.recv_type("room_users_list");
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", &format!("( sport = :{} )", server.ws.port())])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let tb: u64 = text
        .split([',', '(', ')'])
        .find_map(|f| f.strip_prefix("tb"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no send buffer in {text:?}"));
    assert_eq!(tb, 2 * 65536, "{text}");
}

#[test]
fn after_a_stall_quiet_clients_are_pinged_before_they_are_judged() {
    // Idle timeout 4 s, pings after 2 s. Stop the whole process for 6 s: every client is
    // then "idle" by the wall clock, but the loop could not hear anyone meanwhile.
    let server = Server::start(&[("SWITCHBOARD_IDLE_TIMEOUT_SECS", "4")]);
    let mut clients: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = server.connect_as(&format!("/ws/rooms/stall-{i}/"), json!(i), "u");
            c.recv_type("room_users_list");
            c
        })
        .collect();
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(server.pid().to_string()).status();
        assert!(ok.unwrap().success());
    };
    signal("STOP");
    std::thread::sleep(Duration::from_secs(6));
    signal("CONT");
    // Each client gets a ping first, answers it (tungstenite does so when reading), and
    // is still served afterwards.
    for client in &mut clients {
        client.ws.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match client.ws.read() {
            Ok(Message::Ping(_)) => {}
            other => panic!("expected a ping after the stall, got {other:?}"),
        }
        client.ws.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    for (i, client) in clients.iter_mut().enumerate() {
        client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        client.send_json(json!({"message": format!("still here {i}")}));
        assert_eq!(client.recv_type("chat_message")["message"], format!("still here {i}"));
    }
    assert!(server.log_text().contains("stalled"), "{}", server.log_text());
    assert!(!server.log_text().contains("idle timeout"));
}
