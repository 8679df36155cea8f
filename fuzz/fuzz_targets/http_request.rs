//! Bytes from a socket → `http::parse_request` (as the WebSocket listener calls it, with
//! no body allowed, and as the server API listener does, with 256 KiB) → for a complete
//! request: the upgrade check, the 101 answer, routing under every chat protocol,
//! percent-decoding and token extraction. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::auth::token_from_request;
use switchboard::config::ChatProtocol;
use switchboard::endpoints::route;
use switchboard::http::{self, HttpError, MAX_HEAD_BYTES, Parsed, Request};

const MAX_BODIES: [usize; 2] = [0, switchboard::api::MAX_BODY_BYTES];

fn exercise(request: &Request, max_body: usize) {
    assert!(request.body.len() <= max_body, "a body of {} bytes passed max_body {max_body}", request.body.len());
    if let Ok(key) = http::websocket_key(request) {
        assert!(!key.is_empty());
        let answer = http::upgrade_response(&key);
        assert!(answer.starts_with(b"HTTP/1.1 101 "));
    }
    for protocol in [ChatProtocol::Rooms, ChatProtocol::Consultation, ChatProtocol::Support] {
        let _ = route(&request.path, protocol);
    }
    let _ = http::decode_path(&request.path);
    if let Some(query) = &request.query {
        let _ = http::decode_query(query);
    }
    for name in ["Host", "Origin", "Authorization", "Sec-WebSocket-Protocol"] {
        let _ = request.header_str(name);
    }
    if let Some(token) = token_from_request(request.query.as_deref(), request.header("Authorization")) {
        assert!(!token.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    for max_body in MAX_BODIES {
        match http::parse_request(data, max_body) {
            Parsed::Complete(request) => exercise(&request, max_body),
            Parsed::Invalid(HttpError { status, message }) => {
                assert!(matches!(status, 400 | 411 | 413 | 431), "unexpected status {status}");
                let answer = HttpError { status, message }.to_response();
                assert!(answer.starts_with(b"HTTP/1.1 4"));
            }
            Parsed::Incomplete => {
                assert!(
                    data.len() <= MAX_HEAD_BYTES
                        || data.windows(4).any(|w| w == b"\r\n\r\n")
                        || data.windows(2).any(|w| w == b"\n\n"),
                    "more than {MAX_HEAD_BYTES} bytes without a complete head were not refused"
                );
            }
        }
    }
    // Decoding arbitrary text: without escapes a path comes back unchanged (a '+' too),
    // and a query too unless it has a '+'.
    let text = String::from_utf8_lossy(data);
    if !text.contains('%') {
        assert_eq!(http::decode_path(&text), text);
    }
    if !text.contains(['%', '+']) {
        assert_eq!(http::decode_query(&text), text);
    }
});
