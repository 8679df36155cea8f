//! The console: one page on the server API listener (`GET /console`), compiled into the
//! binary (`include_str!`: plain HTML, CSS and JS, nothing fetched from elsewhere), and
//! the Content-Security-Policy it is served with. The page needs no key to load; it asks
//! for the API key once and sends it with every call it makes (`/api/stats`,
//! `/api/conversations`, `/api/tokens`), and connects to the WebSocket listener for its
//! "try it" panel. Nothing here reads state: the routes it calls are in `api.rs`.

use std::net::SocketAddr;

const HTML: &str = include_str!("console.html");
const JS: &str = include_str!("console.js");
const CSS: &str = include_str!("console.css");
const ICON: &str = include_str!("icon.svg");

/// A file of the console: its content type and its text.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The console's file at `path` (without a trailing slash), if it is one.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/console" => ("text/html; charset=utf-8", HTML),
        "/console/console.js" => ("text/javascript; charset=utf-8", JS),
        "/console/console.css" => ("text/css; charset=utf-8", CSS),
        "/console/icon.svg" => ("image/svg+xml", ICON),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// Whether `path` is one of the console's (for the 405 of another method).
pub fn is_console_path(path: &str) -> bool {
    asset(path).is_some()
}

/// The policy: scripts, styles and fetches from this origin only, no inline code, no
/// frames, and WebSockets only to the WebSocket listener, as the page reaches it (the
/// host the browser used for this page, with the listener's port) and as it is bound
/// (when bound to one address), over `ws:` or `wss:` (a TLS proxy in front).
pub fn content_security_policy(ws: Option<SocketAddr>, host: Option<&str>) -> String {
    let mut connect = vec!["'self'".to_string()];
    if let Some(ws) = ws {
        let mut hosts = Vec::new();
        if let Some(host) = host.and_then(hostname) {
            hosts.push(host);
        }
        if !ws.ip().is_unspecified() {
            hosts.push(bracketed(ws));
        }
        hosts.dedup();
        for host in hosts {
            for scheme in ["ws", "wss"] {
                connect.push(format!("{scheme}://{host}:{}", ws.port()));
            }
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// The WebSocket URL the console connects to: the listener's address when it is bound
/// to one, else the host this page was asked on with the listener's port.
pub fn ws_url(ws: SocketAddr, host: Option<&str>) -> String {
    match host.and_then(hostname) {
        Some(host) if ws.ip().is_unspecified() => format!("ws://{host}:{}", ws.port()),
        _ => format!("ws://{}:{}", bracketed(ws), ws.port()),
    }
}

fn bracketed(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

/// The host name of a `Host` header (its port dropped), if it is made only of what a
/// host name or an IP literal may hold: it goes into a response header.
fn hostname(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!name.is_empty() && name.len() <= 253 && name.chars().all(allowed)).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_websocket_listener_only() {
        let ws: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let policy = content_security_policy(Some(ws), Some("localhost:8001"));
        assert!(policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"));
        assert!(policy.contains(
            "connect-src 'self' ws://localhost:8000 wss://localhost:8000 ws://127.0.0.1:8000 wss://127.0.0.1:8000;"
        ));
        assert!(!policy.contains("unsafe"));
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let policy = content_security_policy(Some(any), Some("10.1.2.3:8001"));
        assert!(policy.contains("connect-src 'self' ws://10.1.2.3:9000 wss://10.1.2.3:9000;"));
        assert!(!policy.contains("0.0.0.0"));
    }

    #[test]
    fn a_hostile_host_header_stays_out_of_the_policy() {
        let ws: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let policy = content_security_policy(Some(ws), Some("evil; script-src *"));
        assert!(policy.contains("connect-src 'self' ws://127.0.0.1:8000 wss://127.0.0.1:8000;"));
        assert!(!policy.contains("evil"));
    }

    #[test]
    fn the_websocket_url() {
        let ws: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(ws_url(ws, Some("localhost:8001")), "ws://127.0.0.1:8000");
        let any: SocketAddr = "[::]:8000".parse().unwrap();
        assert_eq!(ws_url(any, Some("[::1]:8001")), "ws://[::1]:8000");
        assert_eq!(ws_url(any, Some("chat.example.com")), "ws://chat.example.com:8000");
        let v6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(ws_url(v6, None), "ws://[::1]:8000");
    }

    #[test]
    fn the_assets() {
        assert!(asset("/console").unwrap().body.contains("console.js"));
        assert!(asset("/console/console.css").is_some());
        assert!(asset("/console/other").is_none());
        // No inline script or style: the policy would refuse them.
        assert!(!HTML.contains("<script>") && !HTML.contains("style="));
    }
}
