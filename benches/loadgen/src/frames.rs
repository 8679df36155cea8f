//! Reading the room protocol's server frames, with a fast path for `chat_message`.
//!
//! Servers format JSON differently (switchboard and Node write `{"a":1}`, Python's
//! json.dumps `{"a": 1}`), so the fast path allows white space around `:`. Anything it
//! cannot read plainly (escapes) goes through serde_json.

use std::borrow::Cow;

#[allow(dead_code)] // the payloads show up in Debug output and tests
pub enum Frame<'a> {
    Chat { message: Cow<'a, str> },
    UsersList { users: usize },
    Join,
    Leave,
    Error(String),
    Other(String),
}

/// The string value of the top-level-looking key `key`, when it is a plain string.
/// `None` when absent; `Some(None)` when present but not plain (escapes, not a string).
fn plain_str_field<'a>(text: &'a str, key: &str) -> Option<Option<&'a str>> {
    let pat = format!("\"{key}\"");
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let mut j = from + i + pat.len();
        from = j;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b':' {
            continue; // a string value equal to the key, not the key
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'"' {
            return Some(None);
        }
        let start = j + 1;
        let end = start + text[start..].find('"')?;
        let value = &text[start..end];
        if value.contains('\\') {
            return Some(None);
        }
        return Some(Some(value));
    }
    None
}

fn slow<'a>(text: &'a str) -> Frame<'a> {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Frame::Other(text.to_string()),
    };
    if let Some(e) = v.get("error") {
        return Frame::Error(e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string()));
    }
    match v.get("type").and_then(|t| t.as_str()) {
        Some("chat_message") => match v.get("message").and_then(|m| m.as_str()) {
            Some(m) => Frame::Chat { message: Cow::Owned(m.to_string()) },
            None => Frame::Other(text.to_string()),
        },
        Some("room_users_list") => {
            Frame::UsersList { users: v.get("users").and_then(|u| u.as_array()).map_or(0, |a| a.len()) }
        }
        Some("user_join") => Frame::Join,
        Some("user_leave") => Frame::Leave,
        _ => Frame::Other(text.to_string()),
    }
}

pub fn classify(text: &str) -> Frame<'_> {
    match plain_str_field(text, "type") {
        Some(Some("chat_message")) => match plain_str_field(text, "message") {
            Some(Some(m)) => Frame::Chat { message: Cow::Borrowed(m) },
            _ => slow(text),
        },
        Some(Some("user_join")) => Frame::Join,
        Some(Some("user_leave")) => Frame::Leave,
        _ => slow(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_both_styles() {
        for t in [
            r#"{"type":"chat_message","message":"1 2","sender_username":"u 2","sender_id":"2","timestamp":"x"}"#,
            r#"{"type": "chat_message", "message": "1 2", "sender_username": "message", "sender_id": 2, "timestamp": "x"}"#,
            r#"{"sender_username":"message","message" : "1 2","type" : "chat_message"}"#,
        ] {
            match classify(t) {
                Frame::Chat { message } => assert_eq!(message, "1 2"),
                _ => panic!("{t}"),
            }
        }
        match classify(r#"{"type":"chat_message","message":"a \"q\" b"}"#) {
            Frame::Chat { message } => assert_eq!(message, "a \"q\" b"),
            _ => panic!(),
        }
    }

    #[test]
    fn others() {
        assert!(matches!(
            classify(r#"{"type": "room_users_list", "users": [{"id": 1, "username": "u 1"}]}"#),
            Frame::UsersList { users: 1 }
        ));
        assert!(matches!(classify(r#"{"type":"user_join","user_id":"2","username":"u 2"}"#), Frame::Join));
        assert!(matches!(classify(r#"{"error": "message is required"}"#), Frame::Error(_)));
        assert!(matches!(classify("nope"), Frame::Other(_)));
    }
}
