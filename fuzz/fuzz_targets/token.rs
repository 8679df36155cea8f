//! Token extraction and verification. One input is used three ways:
//! 1. split at the first 0xFF byte into a query string (lossy UTF-8) and an
//!    `Authorization` header value (raw bytes): `auth::token_from_request`, then
//!    `Verifier::verify` on whatever token comes out;
//! 2. the whole input (lossy UTF-8) as a token string: `verify`;
//! 3. the whole input as the *claims* of a correctly signed HS256 token: `verify`. A
//!    fuzzer cannot forge signatures, so this is what reaches the claim checks (`exp`,
//!    `nbf`, `iss`, `aud`, `token_type`, `user_id`/`sub`, `name`/`username`).
//!
//! The verifier is HS256 with a fixed secret, a required issuer and audience, and no
//! leeway. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use switchboard::auth::{Verifier, token_from_request};
use switchboard::config::{JwtAlgorithm, JwtConfig};
use switchboard::model::MAX_USER_ID_LEN;
use switchboard_fuzz::{AUDIENCE, ISSUER, JWT_SECRET, debug};

struct Keys {
    verifier: Verifier,
    signing: EncodingKey,
    /// base64url of `{"alg":"HS256","typ":"JWT"}`.
    header: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let config = JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret: None,
            public_key_file: None,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway_secs: 0,
        };
        Keys {
            verifier: Verifier::new(&config, JWT_SECRET).expect("HS256 verifier"),
            signing: EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            header: URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        }
    })
}

fn verify(what: &str, token: &str) {
    let result = keys().verifier.verify(token);
    if debug() {
        eprintln!("{what}: {result:?}");
    }
    if let Ok(identity) = result {
        let id = identity.user_id.as_str();
        assert!(!id.is_empty() && id.len() <= MAX_USER_ID_LEN, "accepted user id {id:?}");
        assert!(!identity.name.is_empty(), "accepted an empty display name");
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // 1. query string + Authorization header.
    let (query, header) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let query = String::from_utf8_lossy(query);
    if let Some(token) = token_from_request(Some(&query), header) {
        assert!(!token.is_empty());
        verify("from the request", &token);
    }
    // 2. the raw input as a token.
    verify("the input as a token", &String::from_utf8_lossy(data));
    // 3. the raw input as the claims of a validly signed token.
    let message = format!("{}.{}", keys.header, URL_SAFE_NO_PAD.encode(data));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &keys.signing, Algorithm::HS256).expect("HS256 signs");
    verify("the input as signed claims", &format!("{message}.{signature}"));
});
