//! Authentication rules of PRODUCT.md, each accepted and refused over a real socket.
//! A refused token on the room endpoint closes with 4001 after the upgrade.

mod util;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use util::*;

const ROOM: &str = "/ws/chat/auth/";

fn accepted(server: &Server, token: &str) -> bool {
    let mut client = server.try_connect(&format!("{ROOM}?token={token}"), &[]).expect("upgrade");
    match client.ws.read() {
        Ok(tungstenite::Message::Text(text)) => text.contains("room_users_list"),
        Ok(tungstenite::Message::Close(frame)) => {
            assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001), "a refusal closes with 4001");
            false
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn hs256_tokens_from_query_or_header() {
    let server = Server::start(&[]);
    let good = token(json!({"user_id": 1, "exp": in_secs(60), "token_type": "access"}));
    assert!(accepted(&server, &good));
    let mut client = server.try_connect(ROOM, &[("Authorization", &format!("Bearer {good}"))]).expect("header");
    assert_eq!(client.recv()["type"], "room_users_list");
    // `sub` instead of `user_id`, `username` instead of `name`.
    let sub =
        token(json!({"sub": "8f14e45f-ceea-467f-a0e6-a5d3b1f0c8e2", "username": "uuid-user", "exp": in_secs(60)}));
    let mut client = server.connect(&format!("{ROOM}?token={sub}"));
    let list = client.recv();
    assert!(list["users"].as_array().unwrap().iter().any(|u| u["username"] == "uuid-user"), "{list}");
}

#[test]
fn bad_tokens_close_with_4001_and_are_counted() {
    let server = Server::start(&[]);
    let wrong_key = EncodingKey::from_secret(b"some-other-secret-entirely");
    let cases = [
        ("expired", token(json!({"user_id": 1, "exp": in_secs(-3600)}))),
        ("bad signature", token_with(Algorithm::HS256, &wrong_key, json!({"user_id": 1, "exp": in_secs(60)}))),
        ("refresh token", token(json!({"user_id": 1, "exp": in_secs(60), "token_type": "refresh"}))),
        ("no exp", token(json!({"user_id": 1}))),
        ("not yet valid", token(json!({"user_id": 1, "exp": in_secs(600), "nbf": in_secs(300)}))),
        ("no user id", token(json!({"exp": in_secs(60)}))),
        ("garbage", "not-a-token".to_string()),
        ("alg none", alg_none(json!({"user_id": 1, "exp": in_secs(60)}))),
        ("HS384 instead of HS256", {
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            token_with(Algorithm::HS384, &key, json!({"user_id": 1, "exp": in_secs(60)}))
        }),
    ];
    for (what, token) in &cases {
        assert!(!accepted(&server, token), "{what} must be refused");
    }
    assert_eq!(close_code_of(&server, ROOM, &[]), Some(4001), "no token at all");
    assert_eq!(close_code_of(&server, ROOM, &[("Authorization", "Basic dXNlcjpwYXNz")]), Some(4001));
    let (_, metrics) = server.api("GET", "/metrics", None);
    let text = metrics.as_str().unwrap();
    assert_eq!(metric(text, "switchboard_auth_failures_total{reason=\"expired\"}"), 1.0);
    assert_eq!(metric(text, "switchboard_auth_failures_total{reason=\"not_access_token\"}"), 1.0);
    assert_eq!(metric(text, "switchboard_auth_failures_total{reason=\"missing\"}"), 2.0);
    // The token itself never reaches the log.
    let log = server.log_text();
    for (what, token) in &cases {
        if token.len() > 20 {
            assert!(!log.contains(token.as_str()), "{what}: token in log");
        }
    }
}

/// A token with `alg: none` and no signature.
fn alg_none(claims: serde_json::Value) -> String {
    format!("{}.{}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#), base64_url(claims.to_string().as_bytes()))
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let server =
        Server::start(&[("SWITCHBOARD_JWT_ISSUER", "https://auth.example"), ("SWITCHBOARD_JWT_AUDIENCE", "chat")]);
    let good = token(json!({"user_id": 1, "exp": in_secs(60), "iss": "https://auth.example", "aud": "chat"}));
    assert!(accepted(&server, &good));
    for claims in [
        json!({"user_id": 1, "exp": in_secs(60), "iss": "https://evil.example", "aud": "chat"}),
        json!({"user_id": 1, "exp": in_secs(60), "iss": "https://auth.example", "aud": "billing"}),
        json!({"user_id": 1, "exp": in_secs(60), "aud": "chat"}),
        json!({"user_id": 1, "exp": in_secs(60), "iss": "https://auth.example"}),
    ] {
        assert!(!accepted(&server, &token(claims.clone())), "{claims}");
    }
}

#[test]
fn rs256_es256_and_eddsa_with_a_public_key_file() {
    let cases = [
        ("RS256", "rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
        ("ES256", "ec_public.pem", "ec_private.pem", Algorithm::ES256),
        ("EdDSA", "ed_public.pem", "ed_private.pem", Algorithm::EdDSA),
    ];
    for (name, public, private, algorithm) in cases {
        let public_path = fixture(public).display().to_string();
        let server =
            Server::start(&[("SWITCHBOARD_JWT_ALGORITHM", name), ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", &public_path)]);
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let good = token_with(algorithm, &key, json!({"user_id": 1, "exp": in_secs(60)}));
        assert!(accepted(&server, &good), "{name}");
        // HS/RS confusion: an HS256 token whose secret is the public key file itself.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let confused = token_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            json!({"user_id": 1, "exp": in_secs(60)}),
        );
        assert!(!accepted(&server, &confused), "{name}: HS256 signed with the public key");
        // And the configured test secret means nothing to a public-key server.
        assert!(!accepted(&server, &token(json!({"user_id": 1, "exp": in_secs(60)}))), "{name}: HS256 token");
    }
}
