//! HS256 JWTs, hand-rolled with `hmac` + `sha2`: what a SimpleJWT backend would issue.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct Minter {
    mac: Hmac<Sha256>,
    header: String,
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str) -> Minter {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        Minter {
            mac: Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length"),
            header: B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            exp: now + 3600,
        }
    }

    /// `{"user_id": N, "name": "u N", "exp": now+3600, "token_type": "access"}`.
    pub fn token(&self, user_id: u64) -> String {
        let claims =
            format!(r#"{{"user_id":{user_id},"name":"u {user_id}","exp":{},"token_type":"access"}}"#, self.exp);
        let signing_input = format!("{}.{}", self.header, B64URL.encode(claims));
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let sig = B64URL.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_has_three_parts_and_the_claims() {
        let t = Minter::new("0123456789abcdef").token(7);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = String::from_utf8(B64URL.decode(parts[1]).unwrap()).unwrap();
        assert!(claims.contains(r#""user_id":7"#) && claims.contains(r#""name":"u 7""#));
        assert!(claims.contains(r#""token_type":"access""#));
    }

    #[test]
    fn hs256_matches_rfc_4231_style_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
    }
}
