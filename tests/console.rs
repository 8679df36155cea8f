//! The console and the server API routes it calls: `GET /console` (no key, a strict
//! Content-Security-Policy, nothing from elsewhere), `POST /api/tokens` (the key, bad
//! input, a minted token that opens a WebSocket and then expires, the same token
//! `switchboard token` prints), `GET /api/stats` and `GET /api/conversations` (their
//! shapes, on either storage engine).

mod util;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use util::*;

/// The claims of an HS256 token signed with the test secret (expiry not checked).
fn claims(token: &str) -> serde_json::Map<String, Value> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.set_required_spec_claims::<&str>(&[]);
    jsonwebtoken::decode::<serde_json::Map<String, Value>>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("a token signed with the test secret")
    .claims
}

fn get(server: &Server, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.api.port());
    raw_http_response(server.api, request.as_bytes())
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn the_console_needs_no_key_and_loads_nothing_from_elsewhere() {
    let server = Server::start(&[]);
    let (status, page) = get(&server, "/console");
    assert_eq!(status, 200, "{page}");
    assert_eq!(header(&page, "Content-Type"), Some("text/html; charset=utf-8"));
    let policy = header(&page, "Content-Security-Policy").expect("a Content-Security-Policy");
    assert!(policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"), "{policy}");
    let ws = server.ws;
    assert!(policy.contains(&format!("connect-src 'self' ws://{ws} wss://{ws};")), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'") && !policy.contains("unsafe"), "{policy}");
    assert_eq!(header(&page, "X-Content-Type-Options"), Some("nosniff"));
    // The page asks for the key itself: no key in it, and every file it loads is its own.
    assert!(!page.contains(API_KEY));
    for (path, content_type) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let (status, response) = get(&server, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&response, "Content-Type"), Some(content_type), "{path}");
        assert!(header(&response, "Content-Security-Policy").is_some(), "{path}");
        // (The SVG's namespace is a name, not something loaded.)
        let body = response.split_once("\r\n\r\n").unwrap().1.replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} names another origin");
    }
    assert!(page.contains(r#"<script src="/console/console.js" defer></script>"#));
    // Only GET; any other path under /console is an API path like the rest (the key first).
    let (status, body) = server.api_with_key("POST", "/console", None, None);
    assert_eq!((status, &body["error"]), (405, &json!("method not allowed")));
    let (status, _) = server.api_with_key("GET", "/console/other.js", None, None);
    assert_eq!(status, 401);
    let (status, _) = server.api("GET", "/console/other.js", None);
    assert_eq!(status, 404);
}

#[test]
fn tokens_need_the_key_and_good_input() {
    let server = Server::start(&[]);
    let good = json!({"user_id": 42, "user_name": "Ada"});
    let (status, body) = server.api_with_key("POST", "/api/tokens", Some(&good), None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("API key"));
    let (status, _) = server.api_with_key("POST", "/api/tokens", Some(&good), Some("not-the-key-0123456789"));
    assert_eq!(status, 401);
    let (status, _) = server.api("GET", "/api/tokens", None);
    assert_eq!(status, 405);
    for (bad, says) in [
        (json!({}), "\"user_id\" is required"),
        (json!({"user_id": ""}), "\"user_id\" must be a non-empty string or an integer"),
        (json!({"user_id": [1]}), "\"user_id\" must be a non-empty string or an integer"),
        (json!({"user_id": 1, "user_name": ""}), "\"user_name\" must be a non-empty string of at most 200 bytes"),
        (json!({"user_id": 1, "user_name": 7}), "\"user_name\" must be a non-empty string of at most 200 bytes"),
        (json!({"user_id": 1, "ttl_secs": 0}), "\"ttl_secs\" must be a whole number of seconds from 1 to 3600"),
        (json!({"user_id": 1, "ttl_secs": 3601}), "\"ttl_secs\" must be a whole number of seconds from 1 to 3600"),
        (json!({"user_id": 1, "ttl_secs": -5}), "\"ttl_secs\" must be a whole number of seconds from 1 to 3600"),
        (json!({"user_id": 1, "ttl_secs": 1.5}), "\"ttl_secs\" must be a whole number of seconds from 1 to 3600"),
        (json!({"user_id": 1, "ttl_secs": "60"}), "\"ttl_secs\" must be a whole number of seconds from 1 to 3600"),
    ] {
        let (status, body) = server.api("POST", "/api/tokens", Some(&bad));
        assert_eq!((status, body["error"].as_str()), (422, Some(says)), "{bad}");
    }
    let long = "x".repeat(201);
    let (status, _) = server.api("POST", "/api/tokens", Some(&json!({"user_id": 1, "user_name": long})));
    assert_eq!(status, 422);
    let (status, body) = server.api("POST", "/api/tokens", Some(&json!([1])));
    assert_eq!((status, body["error"].as_str()), (400, Some("the body must be a JSON object")));
}

#[test]
fn a_minted_token_opens_a_websocket_and_is_what_switchboard_token_prints() {
    let server = Server::start(&[]);
    let (status, minted) = server.api("POST", "/api/tokens", Some(&json!({"user_id": 42, "user_name": "Ada"})));
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["user_id"], json!(42));
    assert_eq!(minted["ttl_secs"], json!(300));
    let token = minted["token"].as_str().unwrap();
    let api_claims = claims(token);
    assert_eq!(api_claims["exp"].as_i64().unwrap() - api_claims["iat"].as_i64().unwrap(), 300);
    // expires_at is exp, as RFC 3339.
    let exp = api_claims["exp"].as_i64().unwrap();
    let expires_at = minted["expires_at"].as_str().unwrap();
    assert!(expires_at.ends_with(".000000Z"), "{expires_at}");
    assert!((exp - in_secs(0) - 300).abs() <= 2);

    let mut client = server.connect(&format!("/ws/rooms/lobby/?token={token}"));
    let users = client.recv_type("room_users_list");
    assert_eq!(users["users"], json!([{"id": "42", "username": "Ada"}]));
    client.send_json(json!({"message": "hello from a minted token"}));
    let echo = client.recv_type("chat_message");
    assert_eq!((echo["sender_id"].as_str(), echo["sender_username"].as_str()), (Some("42"), Some("Ada")));
    client.close();

    // The same claims as `switchboard token --user 42 --name Ada --ttl 300`, from the
    // same code (`auth::mint`).
    let out = switchboard_command(
        &["token", "--user", "42", "--name", "Ada", "--ttl", "300"],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
        server.dir.path(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_claims = claims(String::from_utf8(out.stdout).unwrap().trim());
    let keys = |c: &serde_json::Map<String, Value>| c.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&api_claims), keys(&cli_claims));
    for key in ["user_id", "name", "token_type"] {
        assert_eq!(api_claims[key], cli_claims[key], "{key}");
    }
    assert_eq!(
        cli_claims["exp"].as_i64().unwrap() - cli_claims["iat"].as_i64().unwrap(),
        api_claims["exp"].as_i64().unwrap() - api_claims["iat"].as_i64().unwrap()
    );
    // A string id stays a string, a name is optional (the id stands in for it).
    let (status, minted) = server.api("POST", "/api/tokens", Some(&json!({"user_id": "ann"})));
    assert_eq!(status, 201);
    let ann = claims(minted["token"].as_str().unwrap());
    assert_eq!((ann.get("user_id"), ann.get("name")), (Some(&json!("ann")), None));
}

#[test]
fn a_minted_token_expires() {
    // No leeway, so that a token a second old is refused at once.
    let server = Server::start(&[("SWITCHBOARD_JWT_LEEWAY_SECS", "0")]);
    let (status, minted) = server.api("POST", "/api/tokens", Some(&json!({"user_id": 7, "ttl_secs": 1})));
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    let exp = claims(&token)["exp"].as_i64().unwrap();
    // Past its exp (whole seconds): refused with the document's code.
    while in_secs(0) <= exp {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(close_code_of(&server, &format!("/ws/rooms/lobby/?token={token}"), &[]), Some(4001));
    assert_eq!(close_code_of(&server, &format!("/ws/v1/chat/?token={token}"), &[]), Some(4003));
    let (_, stats) = server.api("GET", "/api/stats", None);
    assert_eq!(stats["auth_failures"]["expired"], json!(2), "{stats}");
}

#[test]
fn stats_are_the_metrics_counters_as_json() {
    let server = Server::start(&[]);
    let (status, body) = server.api_with_key("GET", "/api/stats", None, None);
    assert_eq!(status, 401, "{body}");
    let mut ada = server.connect_as("/ws/rooms/lobby/", json!(1), "Ada");
    ada.recv_type("room_users_list");
    let mut bob = server.connect_as("/ws/rooms/lobby/", json!(2), "Bob");
    bob.recv_type("room_users_list");
    let _presence = server.connect_as("/ws/presence/", json!(2), "Bob");
    ada.send_json(json!({"message": "hi"}));
    ada.recv_type("chat_message");
    bob.recv_type("chat_message");

    let (_, before) = server.api("GET", "/metrics", None);
    let (status, stats) = server.api("GET", "/api/stats", None);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["users_online"], json!(2));
    assert_eq!(stats["connections_open"], json!(3));
    assert_eq!(stats["open_connections"]["rooms"], json!(2));
    assert_eq!(stats["open_connections"]["presence"], json!(1));
    assert_eq!(stats["ws_url"], json!(format!("ws://{}", server.ws)));
    assert_eq!(stats["storage"], json!(if on_postgres() { "postgresql" } else { "sqlite" }));
    assert_eq!((stats["mints_tokens"].clone(), stats["chat_protocol"].clone()), (json!(true), json!("rooms")));
    assert_eq!(stats["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(stats["uptime_secs"].is_u64() && stats["now"].is_string());
    let counters = stats["counters"].as_object().unwrap();
    assert!(counters["messages_stored_total"].as_u64().unwrap() >= 1);
    assert!(counters["frames_out_total"].as_u64().unwrap() >= 2);
    assert_eq!(counters["slow_consumer_disconnects_total"], json!(0));
    assert_eq!(stats["auth_failures"].as_object().unwrap().len(), 11);
    // The same counters as /metrics, by the same names, each between its values just
    // before and just after (counters only grow; the requests themselves move some).
    let (_, after) = server.api("GET", "/metrics", None);
    let (before, text) = (before.as_str().unwrap(), after.as_str().unwrap());
    assert_eq!(
        counters.len(),
        text.lines().filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter")).count() - 1
    );
    for (name, value) in counters {
        let name = format!("switchboard_{name}");
        let value = value.as_f64().unwrap();
        assert!(metric(before, &name) <= value && value <= metric(text, &name), "{name}");
    }
    assert_eq!(
        metric(before, "switchboard_api_requests_total") + 1.0,
        counters["api_requests_total"].as_f64().unwrap()
    );
    assert_eq!(metric(text, "switchboard_open_connections{endpoint=\"rooms\"}"), 2.0);
}

#[test]
fn recent_conversations_newest_first_with_member_counts() {
    let server = Server::start(&[]);
    let (status, body) = server.api("GET", "/api/conversations", None);
    assert_eq!((status, body), (200, json!({"conversations": []})));
    let post = |room: &str| {
        let (status, body) =
            server.api("POST", &format!("/api/rooms/{room}/messages"), Some(&json!({"message": "hi"})));
        assert_eq!(status, 201, "{body}");
    };
    post("older");
    std::thread::sleep(Duration::from_millis(5));
    let consultation = json!({"kind": "consultation", "id": "c-1", "title": "Reading", "members": [1, 2]});
    assert_eq!(server.api("POST", "/api/conversations", Some(&consultation)).0, 201);
    std::thread::sleep(Duration::from_millis(5));
    post("lobby");
    let mut ada = server.connect_as("/ws/rooms/lobby/", json!(1), "Ada");
    ada.recv_type("room_users_list");

    let (status, body) = server.api("GET", "/api/conversations", None);
    assert_eq!(status, 200, "{body}");
    let list = body["conversations"].as_array().unwrap();
    let ids: Vec<(&str, &str)> =
        list.iter().map(|c| (c["kind"].as_str().unwrap(), c["id"].as_str().unwrap())).collect();
    assert_eq!(ids, [("room", "lobby"), ("consultation", "c-1"), ("room", "older")]);
    let lobby = &list[0];
    assert_eq!(
        (lobby["members"].clone(), lobby["online"].clone(), lobby["connections"].clone()),
        (json!(0), json!(1), json!(1))
    );
    let c1 = &list[1];
    assert_eq!(
        (c1["members"].clone(), c1["online"].clone(), c1["title"].clone()),
        (json!(2), json!(0), json!("Reading"))
    );
    assert_eq!(c1["status"], json!("active"));
    for conversation in list {
        for key in ["created_at", "updated_at"] {
            assert!(conversation[key].as_str().is_some_and(|t| t.ends_with('Z')), "{conversation}");
        }
    }

    let (status, body) = server.api("GET", "/api/conversations?limit=2", None);
    assert_eq!(status, 200);
    assert_eq!(body["conversations"].as_array().unwrap().len(), 2);
    for bad in ["0", "101", "abc", "-1", ""] {
        let (status, body) = server.api("GET", &format!("/api/conversations?limit={bad}"), None);
        assert_eq!((status, body["error"].as_str()), (422, Some("\"limit\" must be a number from 1 to 100")), "{bad}");
    }
    let (status, _) = server.api_with_key("GET", "/api/conversations", None, None);
    assert_eq!(status, 401);
    let (status, _) = server.api("DELETE", "/api/conversations", None);
    assert_eq!(status, 405);
}

#[test]
fn no_tokens_are_minted_for_a_public_key_algorithm() {
    let key = fixture("rsa_public.pem");
    let server = Server::start(&[
        ("SWITCHBOARD_JWT_ALGORITHM", "RS256"),
        ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", key.to_str().unwrap()),
    ]);
    let (status, body) = server.api("POST", "/api/tokens", Some(&json!({"user_id": 42})));
    assert_eq!(status, 501, "{body}");
    assert!(body["error"].as_str().unwrap().contains("HS256"), "{body}");
    // Bad input is still named first.
    assert_eq!(server.api("POST", "/api/tokens", Some(&json!({}))).0, 422);
    let (_, stats) = server.api("GET", "/api/stats", None);
    assert_eq!(stats["mints_tokens"], json!(false));
}
