//! HTTP/1.1 as switchboard needs it: parse one request from bytes (with httparse), check
//! a WebSocket upgrade and write its 101 answer, and write plain responses with JSON
//! bodies. Works on byte buffers only; it never touches a socket.

use serde_json::Value;

/// Largest request head (request line plus headers) accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers a request may carry.
const MAX_HEADERS: usize = 48;

/// One parsed request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-decoding not applied.
    pub path: String,
    pub query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// An HTTP-level refusal: a status and a message that becomes `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into() }
    }

    pub fn to_response(&self) -> Vec<u8> {
        json_response(self.status, &serde_json::json!({ "error": self.message }))
    }
}

/// What parsing the bytes received so far gave.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Complete(Request),
    Invalid(HttpError),
}

/// Parses a request head and, when `Content-Length` says so, its body of at most
/// `max_body` bytes. Chunked bodies are refused with 411.
pub fn parse_request(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Invalid(HttpError::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(HttpError::new(431, "too many headers"));
        }
        Err(e) => return Parsed::Invalid(HttpError::new(400, format!("malformed request: {e}"))),
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Invalid(HttpError::new(431, "request head too large"));
    }
    let target = parsed.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (target.to_string(), None),
    };
    let mut request = Request {
        method: parsed.method.unwrap_or("").to_string(),
        path,
        query,
        headers: parsed.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        body: Vec::new(),
    };
    // RFC 9112 §6: a body's length is known only from Content-Length here. Chunked is
    // the one transfer coding a server must know: it gets 411 (send a length instead);
    // any other coding is not implemented (501); a coding sent with a Content-Length is
    // how requests are smuggled past proxies that pick the other one (400).
    let codings: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Transfer-Encoding"))
        .map(|(_, v)| v.as_slice())
        .collect();
    if !codings.is_empty() {
        if request.header("Content-Length").is_some() {
            return Parsed::Invalid(HttpError::new(400, "Transfer-Encoding and Content-Length together"));
        }
        if request.header_has_token("Transfer-Encoding", "chunked") {
            return Parsed::Invalid(HttpError::new(411, "chunked bodies are not accepted; send Content-Length"));
        }
        return Parsed::Invalid(HttpError::new(501, "unknown Transfer-Encoding"));
    }
    let content_length = match content_length(&request) {
        Ok(n) => n,
        Err(error) => return Parsed::Invalid(error),
    };
    if content_length > max_body {
        return Parsed::Invalid(HttpError::new(413, format!("body larger than {max_body} bytes")));
    }
    let body = &buf[head_len..];
    if body.len() < content_length {
        return Parsed::Incomplete;
    }
    request.body = body[..content_length].to_vec();
    Parsed::Complete(request)
}

/// The body length from `Content-Length` (0 without one). RFC 9112 §6.3: the value is
/// digits only (no sign, no spaces inside); several values, in one header as a list or
/// in several headers, are accepted only when they are all the same.
fn content_length(request: &Request) -> Result<usize, HttpError> {
    let mut length = None;
    for (_, value) in request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length")) {
        for item in value.split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::new(400, "invalid Content-Length"));
            }
            let n = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| HttpError::new(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::new(400, "differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}

/// Checks that a request asks for a WebSocket upgrade and returns the
/// `Sec-WebSocket-Key` to answer.
pub fn websocket_key(request: &Request) -> Result<String, HttpError> {
    if request.method != "GET" {
        return Err(HttpError::new(405, "WebSocket endpoints take GET with an Upgrade"));
    }
    if !request.header_has_token("Upgrade", "websocket") || !request.header_has_token("Connection", "upgrade") {
        return Err(HttpError::new(426, "this endpoint speaks WebSocket only"));
    }
    if request.header_str("Sec-WebSocket-Version") != Some("13") {
        return Err(HttpError::new(426, "unsupported WebSocket version; use 13"));
    }
    match request.header_str("Sec-WebSocket-Key") {
        Some(key) if !key.is_empty() => Ok(key.to_string()),
        _ => Err(HttpError::new(400, "missing Sec-WebSocket-Key")),
    }
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

pub fn json_response(status: u16, body: &Value) -> Vec<u8> {
    response(status, "application/json", body.to_string().as_bytes())
}

/// A complete response; the connection closes after it.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with_headers(status, content_type, &[], body)
}

/// A complete response with headers of its own (`name`, `value`: both are the caller's
/// constants or checked by it, never a client's bytes unchecked).
pub fn response_with_headers(status: u16, content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    if status == 503 {
        out.extend_from_slice(b"Retry-After: 5\r\n");
    }
    if status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Decodes a path segment: `%XX` escapes only. A `+` in a path is a plus (RFC 3986):
/// `/api/users/ann+work@example.com/` names "ann+work@example.com". Invalid escapes are
/// kept as written; invalid UTF-8 becomes U+FFFD.
pub fn decode_path(input: &str) -> String {
    decode(input, false)
}

/// Decodes a query value (`application/x-www-form-urlencoded`): `%XX` escapes, and `+`
/// as a space.
pub fn decode_query(input: &str) -> String {
    decode(input, true)
}

fn decode(input: &str, plus_is_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_upgrade() {
        let raw = b"GET /ws/chat/lobby/?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let Parsed::Complete(request) = parse_request(raw, 0) else { panic!() };
        assert_eq!(request.path, "/ws/chat/lobby/");
        assert_eq!(request.query.as_deref(), Some("token=abc"));
        assert_eq!(websocket_key(&request).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        let response = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn incomplete_and_oversized_requests() {
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nHost", 0), Parsed::Incomplete));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        assert!(matches!(parse_request(&big, 0), Parsed::Invalid(HttpError { status: 431, .. })));
        let body = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert!(matches!(parse_request(body, 10), Parsed::Incomplete));
        assert!(matches!(parse_request(body, 4), Parsed::Invalid(HttpError { status: 413, .. })));
        let body = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        let Parsed::Complete(r) = parse_request(body, 10) else { panic!() };
        assert_eq!(r.body, b"ab");
    }

    #[test]
    fn plain_get_is_not_an_upgrade() {
        let Parsed::Complete(request) = parse_request(b"GET /ws/chat/x/ HTTP/1.1\r\n\r\n", 0) else { panic!() };
        assert_eq!(websocket_key(&request).unwrap_err().status, 426);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode_query("a%2Eb+c"), "a.b c");
        assert_eq!(decode_path("a%2Eb+c"), "a.b+c");
        assert_eq!(decode_path("ann+work@example.com"), "ann+work@example.com");
        assert_eq!(decode_path("ann%2Bwork%40example.com"), "ann+work@example.com");
        assert_eq!(decode_path("100%"), "100%");
        assert_eq!(decode_path("%zz"), "%zz");
        assert_eq!(decode_path("%C3%A9"), "é");
    }

    fn status_of(raw: &[u8]) -> Option<u16> {
        match parse_request(raw, 100) {
            Parsed::Invalid(e) => Some(e.status),
            _ => None,
        }
    }

    #[test]
    fn content_length_is_digits_and_agrees_with_itself() {
        // RFC 9112 §6.3: differing lengths, signs and junk are errors; the same value
        // twice is one value.
        let two = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nabcde";
        assert_eq!(status_of(two), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length: 2, 5\r\n\r\nabcde"), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length: +2\r\n\r\nab"), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length: -2\r\n\r\nab"), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length: 0x2\r\n\r\nab"), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length: 1 1\r\n\r\nab"), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nContent-Length:\r\n\r\nab"), Some(400));
        let same = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nab";
        let Parsed::Complete(r) = parse_request(same, 100) else { panic!() };
        assert_eq!(r.body, b"ab");
    }

    #[test]
    fn transfer_codings_are_refused() {
        // RFC 9112 §6.1: a coding with a Content-Length is refused (request smuggling);
        // chunked alone asks for a length; anything else is not implemented.
        let both = b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(status_of(both), Some(400));
        let both = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(status_of(both), Some(400));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Some(411));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(501));
        assert_eq!(status_of(b"POST /x HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"), Some(501));
    }
}
