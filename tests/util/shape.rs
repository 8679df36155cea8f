//! Checks that frames have the shape of a seed document's example: the same keys, and
//! the same JSON type for each value, recursively.

use serde_json::Value;

use super::{Server, WAIT};
use tungstenite::Message;

/// Parses an example copied from a document.
pub fn doc(text: &str) -> Value {
    serde_json::from_str(text).expect("the example is JSON")
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Asserts that `actual` has exactly the keys of `example`, each value of the same JSON
/// type, recursively into nested objects (and array items, against the example's first).
/// A `null` in an example stands for a value that is set later: it admits `null`, a
/// string (a time stamp) or an integer (an id). An empty example object (`{}`) only asks
/// for an object (its shape is checked elsewhere). The one key a frame may have beyond
/// its document's is a top-level integer `seq` (docs/protocols.md, "Recovery").
pub fn assert_shape(actual: &Value, example: &Value) {
    match (actual, example) {
        (Value::Object(got), Value::Object(want)) if got.contains_key("seq") && !want.contains_key("seq") => {
            assert!(got["seq"].is_i64(), "seq of {actual} is not an integer");
            let mut got = got.clone();
            got.remove("seq");
            shape_at(&Value::Object(got), example, "$", actual);
        }
        _ => shape_at(actual, example, "$", actual),
    }
}

fn shape_at(actual: &Value, example: &Value, at: &str, whole: &Value) {
    match (actual, example) {
        (Value::Object(_), Value::Object(want)) if want.is_empty() => {}
        (Value::Object(got), Value::Object(want)) => {
            let mut got_keys: Vec<&str> = got.keys().map(String::as_str).collect();
            let mut want_keys: Vec<&str> = want.keys().map(String::as_str).collect();
            got_keys.sort();
            want_keys.sort();
            assert_eq!(got_keys, want_keys, "keys of {at} in {whole}");
            for (key, want) in want {
                shape_at(&got[key], want, &format!("{at}.{key}"), whole);
            }
        }
        (Value::Array(items), Value::Array(want)) => {
            if let Some(first) = want.first() {
                for (i, item) in items.iter().enumerate() {
                    shape_at(item, first, &format!("{at}[{i}]"), whole);
                }
            }
        }
        (Value::Null | Value::String(_), Value::Null) => {}
        (Value::Number(n), Value::Null) if n.is_i64() => {}
        _ => assert_eq!(json_type(actual), json_type(example), "type of {at} in {whole}"),
    }
}

/// RFC 3339 in UTC with microseconds, as docs/protocols.md promises.
pub fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("time stamp is not a string: {value}"));
    let pattern = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    let ok = text.len() == pattern.len()
        && text.chars().zip(pattern.chars()).all(|(c, p)| if p == 'd' { c.is_ascii_digit() } else { c == p });
    assert!(ok, "not an RFC 3339 UTC time stamp with microseconds: {text}");
}

/// Reads the first thing the server sends and requires it to be a close: a refusal must
/// come before any frame. Returns the close code.
pub fn refused_before_any_frame(server: &Server, path: &str) -> Option<u16> {
    let mut client = server.try_connect(path, &[]).expect("upgrade");
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => panic!("{path}: a frame before the refusal: {text}"),
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => return None,
            Err(e) => panic!("{path}: no close: {e}"),
        }
    }
}
