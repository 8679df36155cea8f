//! The signature of every webhook request, as Stripe signs its own: the header
//! `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over `"<t>.<raw
//! body>"` with `SWITCHBOARD_WEBHOOK_SECRET`. A receiver recomputes it over the bytes it
//! got, compares in constant time, and refuses a `t` too far from its clock (a replay).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The request header that carries the signature.
pub const HEADER: &str = "Switchboard-Signature";

/// The header's value for `body` sent at `timestamp` (Unix seconds).
pub fn header(secret: &str, timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `header` signs `body` with `secret` at a time within `tolerance_secs` of
/// `now`: what a receiver does (the tests' receiver uses it; docs/webhooks.md has it in
/// Python).
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64, tolerance_secs: u64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else { return false };
    if now.abs_diff(timestamp) > tolerance_secs {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    signatures.iter().any(|v| {
        let bytes: Option<Vec<u8>> =
            (0..v.len()).step_by(2).map(|i| v.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        bytes.is_some_and(|b| b.len() == expected.len() && constant_time_eq(&b, &expected))
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_time_or_secret_does_not() {
        let body = br#"{"events":[]}"#;
        let signed = header("s3cret", 1_700_000_000, body);
        assert!(signed.starts_with("t=1700000000,v1="));
        assert!(verify("s3cret", &signed, body, 1_700_000_010, 300));
        assert!(!verify("s3cret", &signed, br#"{"events":[1]}"#, 1_700_000_010, 300));
        assert!(!verify("other", &signed, body, 1_700_000_010, 300));
        assert!(!verify("s3cret", &signed, body, 1_700_001_000, 300), "a replay long after");
        assert!(!verify("s3cret", "t=1700000000,v1=00", body, 1_700_000_000, 300));
    }

    #[test]
    fn the_mac_is_hmac_sha256_of_time_dot_body() {
        // RFC 4231 test case 2's key and message, framed as "<t>.<body>" would be.
        let mac = mac("Jefe", 0, b"what do ya want for nothing?");
        let mut plain = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        plain.update(b"0.what do ya want for nothing?");
        assert_eq!(mac, plain.finalize().into_bytes().to_vec());
    }
}
