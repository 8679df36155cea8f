//! Token extraction and verification: the only code that knows JWT.
//!
//! A token comes from `?token=` or `Authorization: Bearer`. The algorithm is fixed by
//! configuration, never read from the token, so `alg: none` and HS/RS confusion fail
//! like any bad signature. The user id is SimpleJWT's `user_id` or else `sub`; the
//! display name is `name` or else `username`. `exp` is required and `token_type`, when
//! present, must be `access` (a SimpleJWT refresh token is refused). Tokens are never
//! logged: errors carry a reason, not the token.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::{JwtAlgorithm, JwtConfig};
use crate::model::{Identity, MAX_USER_ID_LEN, UserId};

/// Why a token was refused. Every variant closes the connection with the endpoint's
/// authentication close code (4001, or 4003 for document 003); the reason goes to the
/// log and the `auth_failures` metric only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    WrongAlgorithm,
    Expired,
    NotYetValid,
    MissingExpiry,
    WrongIssuer,
    WrongAudience,
    NotAccessToken,
    NoUserId,
}

impl AuthError {
    pub const ALL: [AuthError; 11] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::WrongAlgorithm,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::MissingExpiry,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::NotAccessToken,
        AuthError::NoUserId,
    ];

    /// A short stable name, used in logs and as the metric label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::NotAccessToken => "not_access_token",
            AuthError::NoUserId => "no_user_id",
        }
    }
}

/// Verifies tokens with the configured algorithm and key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// `secret` is the HS256 secret (configured or kept in the database); it is unused
    /// for the public-key algorithms.
    pub fn new(config: &JwtConfig, secret: &str) -> Result<Verifier, String> {
        let (algorithm, key) = match config.algorithm {
            JwtAlgorithm::Hs256 => (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes())),
            other => {
                let path = config.public_key_file.as_ref().ok_or("no public key file")?;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read SWITCHBOARD_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
                let parsed = match other {
                    JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem).map(|k| (Algorithm::RS256, k)),
                    JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)),
                    _ => DecodingKey::from_ed_pem(&pem).map(|k| (Algorithm::EdDSA, k)),
                };
                parsed.map_err(|e| format!("invalid SWITCHBOARD_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?
            }
        };
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp"];
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        required.extend(config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        Ok(Verifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| classify(e.kind()))?;
        identity_from_claims(&data.claims)
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            AuthError::WrongAlgorithm
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExpiry,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
        ErrorKind::InvalidClaimFormat(claim) if claim == "exp" => AuthError::MissingExpiry,
        _ => AuthError::Malformed,
    }
}

fn identity_from_claims(claims: &Map<String, Value>) -> Result<Identity, AuthError> {
    if let Some(token_type) = claims.get("token_type")
        && token_type.as_str() != Some("access")
    {
        return Err(AuthError::NotAccessToken);
    }
    let id = claims.get("user_id").or_else(|| claims.get("sub")).ok_or(AuthError::NoUserId)?;
    let user_id = UserId::from_json(id).ok_or(AuthError::NoUserId)?;
    if user_id.as_str().len() > MAX_USER_ID_LEN {
        return Err(AuthError::NoUserId);
    }
    let name = ["name", "username"]
        .iter()
        .find_map(|key| claims.get(*key).and_then(Value::as_str).filter(|s| !s.is_empty()))
        .map(|name| Arc::from(truncate(name, MAX_NAME_LEN)))
        .unwrap_or_else(|| Arc::from(user_id.as_str()));
    Ok(Identity { user_id, name })
}

/// Longest display name kept from a token; a longer one is cut at a character boundary.
pub const MAX_NAME_LEN: usize = 200;

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Finds the token of a WebSocket request: the `token` query parameter, else an
/// `Authorization: Bearer` header.
pub fn token_from_request(query: Option<&str>, authorization: Option<&[u8]>) -> Option<String> {
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                let token = crate::http::decode_query(value);
                if !token.is_empty() {
                    return Some(token);
                }
            }
        }
    }
    let header = std::str::from_utf8(authorization?).ok()?.trim();
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// Mints an HS256 access token, for `switchboard token` and the first-run hint.
pub fn mint_token(secret: &str, user_id: &str, name: Option<&str>, ttl_secs: u64) -> String {
    mint(secret, user_id, name, ttl_secs).token
}

/// A minted token and its `exp` (Unix seconds).
pub struct Minted {
    pub token: String,
    pub expires_at: u64,
}

/// Mints an HS256 access token: the one `switchboard token` prints, and the server
/// API's `POST /api/tokens` answers with (the console's "try it" panel).
pub fn mint(secret: &str, user_id: &str, name: Option<&str>, ttl_secs: u64) -> Minted {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    let id = UserId::new(user_id).to_json();
    claims.insert("user_id".into(), id);
    if let Some(name) = name {
        claims.insert("name".into(), Value::from(name));
    }
    claims.insert("token_type".into(), Value::from("access"));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl_secs));
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("HS256 signing with a byte secret cannot fail");
    Minted { token, expires_at: now + ttl_secs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &str) -> Verifier {
        let config = JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 0,
        };
        Verifier::new(&config, secret).unwrap()
    }

    fn sign(secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .unwrap()
    }

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn simplejwt_and_sub_tokens_are_accepted() {
        let v = hs256("0123456789abcdef");
        let token = sign(
            "0123456789abcdef",
            serde_json::json!({"user_id": 7, "exp": later(), "token_type": "access", "username": "ann"}),
        );
        let identity = v.verify(&token).unwrap();
        assert_eq!(identity.user_id.as_str(), "7");
        assert_eq!(&*identity.name, "ann");
        let token = sign("0123456789abcdef", serde_json::json!({"sub": "u-1", "exp": later()}));
        let identity = v.verify(&token).unwrap();
        assert_eq!(identity.user_id.as_str(), "u-1");
        assert_eq!(&*identity.name, "u-1");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let v = hs256("0123456789abcdef");
        let expired = sign("0123456789abcdef", serde_json::json!({"user_id": 1, "exp": 1000}));
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let refresh =
            sign("0123456789abcdef", serde_json::json!({"user_id": 1, "exp": later(), "token_type": "refresh"}));
        assert_eq!(v.verify(&refresh), Err(AuthError::NotAccessToken));
        let no_exp = sign("0123456789abcdef", serde_json::json!({"user_id": 1}));
        assert_eq!(v.verify(&no_exp), Err(AuthError::MissingExpiry));
        let other_key = sign("another-secret-entirely", serde_json::json!({"user_id": 1, "exp": later()}));
        assert_eq!(v.verify(&other_key), Err(AuthError::BadSignature));
        let no_user = sign("0123456789abcdef", serde_json::json!({"exp": later()}));
        assert_eq!(v.verify(&no_user), Err(AuthError::NoUserId));
        assert_eq!(v.verify("not.a.token"), Err(AuthError::Malformed));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let v = hs256("0123456789abcdef");
        let long = "é".repeat(150);
        let token = sign("0123456789abcdef", serde_json::json!({"user_id": 1, "exp": later(), "name": long}));
        let name = v.verify(&token).unwrap().name;
        assert_eq!(name.len(), 200);
        assert!(long.starts_with(&*name));
    }

    #[test]
    fn minted_tokens_verify_until_they_expire() {
        let v = hs256("0123456789abcdef");
        let minted = mint("0123456789abcdef", "42", Some("Ada"), 300);
        let identity = v.verify(&minted.token).unwrap();
        assert_eq!((identity.user_id.as_str(), &*identity.name), ("42", "Ada"));
        let left = minted.expires_at - jsonwebtoken::get_current_timestamp();
        assert!((299..=300).contains(&left), "{left}");
        assert_eq!(mint_token("0123456789abcdef", "ann", None, 60).split('.').count(), 3);
        let other = hs256("another-secret-entirely");
        assert_eq!(other.verify(&minted.token), Err(AuthError::BadSignature));
    }

    #[test]
    fn tokens_come_from_query_or_bearer_header() {
        assert_eq!(token_from_request(Some("a=1&token=abc%2Edef"), None).as_deref(), Some("abc.def"));
        assert_eq!(token_from_request(None, Some(b"Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_from_request(None, Some(b"Basic xyz")), None);
        assert_eq!(token_from_request(Some("token="), None), None);
    }
}
