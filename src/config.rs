//! Every setting switchboard has: its name, default, environment variable and
//! command-line flag, and the typed `Config` they are parsed into.
//!
//! One table (`SETTINGS`) drives parsing, validation and `--help`, so a setting cannot
//! exist in one place and be missing from another. A flag wins over the environment,
//! which wins over the default. A bad value stops start-up with one line naming the
//! setting. This module does not open files or sockets; `cli` does that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One configurable setting.
pub struct Setting {
    /// The flag without its leading dashes, e.g. `listen` for `--listen`.
    pub flag: &'static str,
    /// The environment variable, e.g. `SWITCHBOARD_LISTEN`.
    pub env: &'static str,
    /// The default, or `None` when unset means "not configured".
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// The table of settings, in the order `--help` lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        flag: "listen",
        env: "SWITCHBOARD_LISTEN",
        default: Some("127.0.0.1:8000"),
        help: "address of the WebSocket listener",
    },
    Setting {
        flag: "api-listen",
        env: "SWITCHBOARD_API_LISTEN",
        default: Some("127.0.0.1:8001"),
        help: "address of the server API listener (keep it private)",
    },
    Setting {
        flag: "db",
        env: "SWITCHBOARD_DB",
        default: Some("./switchboard.db"),
        help: "SQLite database file (created when missing)",
    },
    Setting {
        flag: "db-sync",
        env: "SWITCHBOARD_DB_SYNC",
        default: Some("normal"),
        help: "SQLite synchronous mode: normal (survives a process crash) or full (also a power loss)",
    },
    Setting {
        flag: "db-check",
        env: "SWITCHBOARD_DB_CHECK",
        default: Some("off"),
        help: "integrity check of the database at start: off, quick (PRAGMA quick_check) or full (PRAGMA integrity_check); a damaged database stops start-up",
    },
    Setting {
        flag: "jwt-secret",
        env: "SWITCHBOARD_JWT_SECRET",
        default: None,
        help: "HS256 secret shared with the application backend (generated and kept in the database when unset)",
    },
    Setting {
        flag: "jwt-public-key-file",
        env: "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
        default: None,
        help: "PEM public key for RS256, ES256 or EdDSA tokens",
    },
    Setting {
        flag: "jwt-algorithm",
        env: "SWITCHBOARD_JWT_ALGORITHM",
        default: Some("HS256"),
        help: "HS256, RS256, ES256 or EdDSA; tokens signed otherwise are refused",
    },
    Setting {
        flag: "jwt-issuer",
        env: "SWITCHBOARD_JWT_ISSUER",
        default: None,
        help: "required `iss` claim, when set",
    },
    Setting {
        flag: "jwt-audience",
        env: "SWITCHBOARD_JWT_AUDIENCE",
        default: None,
        help: "required `aud` claim, when set",
    },
    Setting {
        flag: "jwt-leeway-secs",
        env: "SWITCHBOARD_JWT_LEEWAY_SECS",
        default: Some("30"),
        help: "clock skew allowed on exp and nbf",
    },
    Setting {
        flag: "api-key",
        env: "SWITCHBOARD_API_KEY",
        default: None,
        help: "Bearer key of the server API (generated and kept in the database when unset)",
    },
    Setting {
        flag: "idle-timeout-secs",
        env: "SWITCHBOARD_IDLE_TIMEOUT_SECS",
        default: Some("60"),
        help: "close a connection after this long with nothing from the client (quiet clients are pinged at half of it)",
    },
    Setting {
        flag: "handshake-timeout-secs",
        env: "SWITCHBOARD_HANDSHAKE_TIMEOUT_SECS",
        default: Some("10"),
        help: "drop a connection that has not finished its HTTP request and upgrade by then",
    },
    Setting {
        flag: "max-message-bytes",
        env: "SWITCHBOARD_MAX_MESSAGE_BYTES",
        default: Some("65536"),
        help: "largest message a client may send; larger closes with 1009",
    },
    Setting {
        flag: "rate-limit-per-minute",
        env: "SWITCHBOARD_RATE_LIMIT_PER_MINUTE",
        default: Some("300"),
        help: "messages a user may send per minute over all their connections",
    },
    Setting {
        flag: "max-connections",
        env: "SWITCHBOARD_MAX_CONNECTIONS",
        default: Some("10000"),
        help: "connections held at once, over both listeners",
    },
    Setting {
        flag: "max-connections-per-user",
        env: "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
        default: Some("64"),
        help: "WebSocket connections one user may hold at once",
    },
    Setting {
        flag: "outbound-buffer-bytes",
        env: "SWITCHBOARD_OUTBOUND_BUFFER_BYTES",
        default: Some("1048576"),
        help: "unsent bytes held for one connection before it is dropped as a slow consumer",
    },
    Setting {
        flag: "socket-send-buffer-bytes",
        env: "SWITCHBOARD_SOCKET_SEND_BUFFER_BYTES",
        default: Some("131072"),
        help: "kernel send buffer of each WebSocket (SO_SNDBUF; 0 leaves the kernel's autotuning, which grows it to 4 MiB)",
    },
    Setting {
        flag: "history-limit",
        env: "SWITCHBOARD_HISTORY_LIMIT",
        default: Some("50"),
        help: "messages replayed to a client when it joins a room or conversation",
    },
    Setting {
        flag: "database-url",
        env: "SWITCHBOARD_DATABASE_URL",
        default: None,
        help: "a postgres:// URL: keep everything in PostgreSQL instead of the SQLite file, shared by several nodes (without Redis, presence, per-user caps and rate limits are per node)",
    },
    Setting {
        flag: "redis-url",
        env: "SWITCHBOARD_REDIS_URL",
        default: None,
        help: "with PostgreSQL: a redis://[:password@]host[:port] or redis+sentinel://[:password@]host:port[,host:port]/master URL; nodes hear each other's events at once (polling stays the fallback), and presence, per-user caps and rate limits hold over all nodes",
    },
    Setting {
        flag: "redis-prefix",
        env: "SWITCHBOARD_REDIS_PREFIX",
        default: Some("sb"),
        help: "with Redis: what this cluster's keys and channels start with (several clusters may share one Redis)",
    },
    Setting {
        flag: "node-lease-ms",
        env: "SWITCHBOARD_NODE_LEASE_MS",
        default: Some("10000"),
        help: "with Redis: a node that stops renewing its lease for this long (killed, stalled, cut off from Redis) is taken out of presence by the others",
    },
    Setting {
        flag: "poll-interval-ms",
        env: "SWITCHBOARD_POLL_INTERVAL_MS",
        default: Some("250"),
        help: "with PostgreSQL: how often a node looks for what other nodes stored (the delay of cross-node delivery)",
    },
    Setting {
        flag: "max-pending-writes",
        env: "SWITCHBOARD_MAX_PENDING_WRITES",
        default: Some("50000"),
        help: "with PostgreSQL: writes waiting for their commit at most; past it clients' frames wait and the server API answers 503",
    },
    Setting {
        flag: "event-retention-secs",
        env: "SWITCHBOARD_EVENT_RETENTION_SECS",
        default: Some("604800"),
        help: "how long events other than messages are kept for clients that reconnect with ?since= (the records themselves are kept)",
    },
    Setting {
        flag: "retention-days",
        env: "SWITCHBOARD_RETENTION_DAYS",
        default: None,
        help: "delete what is older than this many days (fractions allowed, e.g. 0.5): messages, read notifications, resolved fraud alerts, read banking messages, then rooms and users with nothing left (on SQLite); unread items stay (see --retention-unread); unset: keep everything",
    },
    Setting {
        flag: "room-history-max",
        env: "SWITCHBOARD_ROOM_HISTORY_MAX",
        default: None,
        help: "keep only the newest this many messages of each room (rooms only: not consultations, support or 1:1 conversations); unset: no limit",
    },
    Setting {
        flag: "retention-unread",
        env: "SWITCHBOARD_RETENTION_UNREAD",
        default: Some("keep"),
        help: "with --retention-days: keep (unread messages, notifications, banking messages and unresolved fraud alerts are never deleted by age) or prune (they go by age too)",
    },
    Setting {
        flag: "webhook-url",
        env: "SWITCHBOARD_WEBHOOK_URL",
        default: None,
        help: "an http:// or https:// URL of the backend that hears, signed and at least once, who came online or went offline, what was stored and read, and what stays unread (docs/webhooks.md); unset: no webhooks",
    },
    Setting {
        flag: "webhook-secret",
        env: "SWITCHBOARD_WEBHOOK_SECRET",
        default: None,
        help: "the HMAC-SHA256 key that signs every webhook request (generated and kept in the database when unset)",
    },
    Setting {
        flag: "webhook-events",
        env: "SWITCHBOARD_WEBHOOK_EVENTS",
        default: None,
        help: "comma-separated webhook event types to send (unset: all): user.online, user.offline, message.created, message.read, notification.read, member.joined, member.left, message.unread, notification.unread",
    },
    Setting {
        flag: "webhook-unread-after-secs",
        env: "SWITCHBOARD_WEBHOOK_UNREAD_AFTER_SECS",
        default: None,
        help: "send message.unread and notification.unread for a direct, consultation or support message or a notification still unread this long after it was stored (unset: never)",
    },
    Setting {
        flag: "webhook-max-age-secs",
        env: "SWITCHBOARD_WEBHOOK_MAX_AGE_SECS",
        default: Some("86400"),
        help: "how long undelivered webhook events are retried before they are counted as dropped",
    },
    Setting {
        flag: "webhook-timeout-ms",
        env: "SWITCHBOARD_WEBHOOK_TIMEOUT_MS",
        default: Some("10000"),
        help: "how long one webhook request may take (connect, send, answer) before it counts as failed",
    },
    Setting {
        flag: "webhook-retry-max-ms",
        env: "SWITCHBOARD_WEBHOOK_RETRY_MAX_MS",
        default: Some("60000"),
        help: "the longest wait between two tries of a failing webhook request (the wait doubles from 250 ms, with jitter)",
    },
    Setting {
        flag: "webhook-batch-max",
        env: "SWITCHBOARD_WEBHOOK_BATCH_MAX",
        default: Some("500"),
        help: "webhook events per request at most (and 1 MiB of them)",
    },
    Setting {
        flag: "chat-protocol",
        env: "SWITCHBOARD_CHAT_PROTOCOL",
        default: Some("rooms"),
        help: "what /ws/chat/{id}/ speaks: rooms (004), consultation (001) or support (002)",
    },
    Setting {
        flag: "allowed-origins",
        env: "SWITCHBOARD_ALLOWED_ORIGINS",
        default: None,
        help: "comma-separated Origin values browsers may connect from (unset: any)",
    },
    Setting {
        flag: "log",
        env: "SWITCHBOARD_LOG",
        default: Some("info"),
        help: "log level: off, error, warn, info, debug or trace",
    },
];

/// Which seed protocol `/ws/chat/{id}/` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatProtocol {
    Rooms,
    Consultation,
    Support,
}

/// Which JWT algorithm verifies tokens; never taken from the token itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256 secret; `None` means "use the one kept in the database".
    pub secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
}

/// Limits enforced per connection and per user.
#[derive(Clone, Debug)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_message_bytes: usize,
    pub rate_limit_per_minute: u32,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub outbound_buffer_bytes: usize,
    /// SO_SNDBUF of each WebSocket; `None` leaves the kernel's autotuning.
    pub socket_send_buffer_bytes: Option<usize>,
}

/// The integrity check run on the database at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbCheck {
    Off,
    Quick,
    Full,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub db_path: PathBuf,
    /// PostgreSQL instead of the SQLite file at `db_path`.
    pub database_url: Option<String>,
    pub db_sync_full: bool,
    pub db_check: DbCheck,
    pub jwt: JwtConfig,
    /// `None` means "use the one kept in the database".
    pub api_key: Option<String>,
    pub limits: Limits,
    pub history_limit: usize,
    /// How long `events` rows are kept for recovery with `?since=`.
    pub event_retention: std::time::Duration,
    /// What is deleted by age or by count (`SWITCHBOARD_RETENTION_*`,
    /// `SWITCHBOARD_ROOM_HISTORY_MAX`).
    pub retention: Retention,
    /// With PostgreSQL: the Redis bus.
    pub redis: Option<RedisUrl>,
    /// With Redis: how long a node's presence lasts without renewal.
    pub node_lease: Duration,
    /// With PostgreSQL: how often the node polls for other nodes' writes.
    pub poll_interval: Duration,
    /// With PostgreSQL: writes waiting for their commit at most (backpressure).
    pub max_pending_writes: usize,
    /// Webhooks to the backend, when a URL is set.
    pub webhook: Option<WebhookConfig>,
    pub chat_protocol: ChatProtocol,
    /// Empty means any origin is accepted.
    pub allowed_origins: Vec<String>,
    pub log_level: log::LevelFilter,
}

/// What the store deletes between turns (`store/retention.rs`); nothing when both
/// limits are unset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Retention {
    /// Messages, read notifications, resolved alerts and read banking messages older than
    /// this go, then rooms and users with nothing left.
    pub max_age: Option<Duration>,
    /// Messages kept per room, the newest.
    pub room_history_max: Option<u64>,
    /// Unread items go by age too.
    pub prune_unread: bool,
}

impl Retention {
    /// Whether anything is ever deleted.
    pub fn is_on(&self) -> bool {
        self.max_age.is_some() || self.room_history_max.is_some()
    }
}

/// `SWITCHBOARD_WEBHOOK_*`: where webhooks go and what they carry (docs/webhooks.md).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub url: String,
    /// `None` means "use the one kept in the database".
    pub secret: Option<String>,
    /// `HookType::bit`s of the types sent.
    pub types: u16,
    pub unread_after: Option<Duration>,
    pub max_age: Duration,
    pub timeout: Duration,
    pub retry_max: Duration,
    pub batch_max: usize,
}

/// A setting that could not be used, named so that the operator can fix it.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// What switchboard's keys and channels in Redis start with, unless
/// `SWITCHBOARD_REDIS_PREFIX` says otherwise.
pub const REDIS_PREFIX: &str = "sb";

/// Where Redis is: `redis://[:password@]host[:port][/db]` (the db does not matter to
/// Pub/Sub, nor to the presence keys), or `redis+sentinel://[:password@]host:port
/// [,host:port…]/master`, the master that those Sentinels name (asked again at each
/// connect; the password is the master's).
#[derive(Debug, Clone)]
pub struct RedisUrl {
    /// `host:port` (without Sentinel).
    pub addr: String,
    pub password: Option<String>,
    pub sentinel: Option<Sentinel>,
    /// With Sentinel: the master's `host:port` as last named, shared by every clone (the
    /// loop's subscription connects there; the lanes ask the Sentinels themselves).
    pub master: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// What every key and channel of this cluster starts with (`SWITCHBOARD_REDIS_PREFIX`),
    /// so that several clusters can share one Redis.
    pub prefix: String,
}

/// The Sentinels to ask, and the name of the master they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    pub addrs: Vec<String>,
    pub master: String,
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &RedisUrl) -> bool {
        (&self.addr, &self.password, &self.sentinel, &self.prefix)
            == (&other.addr, &other.password, &other.sentinel, &other.prefix)
    }
}

impl Eq for RedisUrl {}

impl RedisUrl {
    /// A Redis at `addr`, without Sentinel.
    pub fn direct(addr: &str, password: Option<&str>) -> RedisUrl {
        RedisUrl {
            addr: addr.to_string(),
            password: password.map(str::to_string),
            sentinel: None,
            master: Default::default(),
            prefix: REDIS_PREFIX.to_string(),
        }
    }

    pub fn parse(url: &str) -> Option<RedisUrl> {
        let (sentinel, rest) = match url.strip_prefix("redis+sentinel://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("redis://")?),
        };
        let (hostports, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (password, hostports) = match hostports.rsplit_once('@') {
            Some((user_info, hostports)) => {
                let password = user_info.split_once(':').map_or(user_info, |(_, p)| p);
                (Some(password).filter(|p| !p.is_empty()), hostports)
            }
            None => (None, hostports),
        };
        let with_port = |hostport: &str, default: u16| -> Option<String> {
            if hostport.is_empty() {
                return None;
            }
            Some(match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => hostport.to_string(),
                _ => format!("{hostport}:{default}"),
            })
        };
        if !sentinel {
            return Some(RedisUrl::direct(&with_port(hostports, 6379)?, password));
        }
        let addrs: Option<Vec<String>> = hostports.split(',').map(|h| with_port(h, 26379)).collect();
        let master = path.split('/').next().filter(|m| !m.is_empty())?;
        Some(RedisUrl {
            sentinel: Some(Sentinel { addrs: addrs?, master: master.to_string() }),
            ..RedisUrl::direct("", password)
        })
    }

    /// Where to connect now: the address, or the master last named by the Sentinels.
    pub fn current(&self) -> Option<String> {
        match &self.sentinel {
            None => Some(self.addr.clone()),
            Some(_) => self.master.lock().ok().and_then(|m| m.clone()),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Raw values gathered from flags and the environment, before typing.
pub struct RawSettings {
    values: HashMap<&'static str, String>,
}

impl RawSettings {
    /// Collects values: flags (`--name value` or `--name=value`) win over the environment.
    /// Returns the arguments that are not settings (the subcommand's own) untouched.
    pub fn gather(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(RawSettings, Vec<String>), ConfigError> {
        let mut values = HashMap::new();
        for setting in SETTINGS {
            if let Some(value) = env(setting.env) {
                values.insert(setting.flag, value);
            }
        }
        let mut rest = Vec::new();
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index];
            index += 1;
            let Some(body) = arg.strip_prefix("--") else {
                rest.push(arg.clone());
                continue;
            };
            let (name, inline_value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (body, None),
            };
            let Some(setting) = SETTINGS.iter().find(|s| s.flag == name) else {
                rest.push(arg.clone());
                continue;
            };
            let value = match inline_value {
                Some(value) => value,
                None => {
                    let value = args
                        .get(index)
                        .ok_or_else(|| ConfigError(format!("--{} ({}) needs a value", setting.flag, setting.env)))?;
                    index += 1;
                    value.clone()
                }
            };
            values.insert(setting.flag, value);
        }
        Ok((RawSettings { values }, rest))
    }

    fn get(&self, flag: &str) -> Option<&str> {
        let configured = self.values.get(flag).map(String::as_str);
        let default = SETTINGS.iter().find(|s| s.flag == flag).and_then(|s| s.default);
        configured.or(default)
    }

    fn optional(&self, flag: &str) -> Option<String> {
        self.get(flag).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
    }

    fn parsed<T: std::str::FromStr>(&self, flag: &str, what: &str) -> Result<T, ConfigError> {
        let raw = self.get(flag).unwrap_or_default();
        raw.trim().parse().map_err(|_| invalid(flag, raw, what))
    }

    fn positive(&self, flag: &str) -> Result<u64, ConfigError> {
        let value: u64 = self.parsed(flag, "a positive whole number")?;
        if value == 0 {
            return Err(invalid(flag, "0", "a positive whole number"));
        }
        Ok(value)
    }

    fn retention(&self) -> Result<Retention, ConfigError> {
        let max_age = match self.optional("retention-days") {
            None => None,
            Some(raw) => {
                let days: f64 = raw.parse().map_err(|_| invalid("retention-days", &raw, "a number of days"))?;
                let secs = days * 86_400.0;
                if !secs.is_finite() || secs < 1.0 {
                    return Err(invalid("retention-days", &raw, "a number of days of at least one second (0.00002)"));
                }
                Some(Duration::from_secs_f64(secs))
            }
        };
        let room_history_max = match self.optional("room-history-max") {
            None => None,
            Some(_) => Some(self.positive("room-history-max")?),
        };
        let prune_unread = match self.get("retention-unread").unwrap_or_default().trim() {
            "keep" => false,
            "prune" => true,
            other => return Err(invalid("retention-unread", other, "keep or prune")),
        };
        if prune_unread && max_age.is_none() {
            return Err(ConfigError(
                "SWITCHBOARD_RETENTION_UNREAD=prune (--retention-unread) needs SWITCHBOARD_RETENTION_DAYS: the age past which unread items go".into(),
            ));
        }
        Ok(Retention { max_age, room_history_max, prune_unread })
    }

    fn webhook(&self) -> Result<Option<WebhookConfig>, ConfigError> {
        let Some(url) = self.optional("webhook-url") else { return Ok(None) };
        let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            return Err(invalid("webhook-url", "(not shown)", "an http:// or https:// URL"));
        }
        let secret = self.optional("webhook-secret");
        if secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError(
                "invalid SWITCHBOARD_WEBHOOK_SECRET (--webhook-secret): use at least 16 characters".into(),
            ));
        }
        let types = match self.optional("webhook-events") {
            None => crate::model::HookType::ALL.iter().fold(0, |bits, t| bits | t.bit()),
            Some(list) => {
                let mut bits = 0;
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let kind = crate::model::HookType::parse(name).ok_or_else(|| {
                        invalid("webhook-events", name, "types such as user.online,message.created (see --help)")
                    })?;
                    bits |= kind.bit();
                }
                bits
            }
        };
        let unread_after = match self.optional("webhook-unread-after-secs") {
            None => None,
            Some(_) => Some(Duration::from_secs(self.positive("webhook-unread-after-secs")?)),
        };
        Ok(Some(WebhookConfig {
            url,
            secret,
            types,
            unread_after,
            max_age: Duration::from_secs(self.positive("webhook-max-age-secs")?),
            timeout: Duration::from_millis(self.positive("webhook-timeout-ms")?),
            retry_max: Duration::from_millis(self.positive("webhook-retry-max-ms")?.max(250)),
            batch_max: self.positive("webhook-batch-max")? as usize,
        }))
    }

    /// Types and checks every value.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let algorithm = match self.get("jwt-algorithm").unwrap_or_default().trim() {
            "HS256" => JwtAlgorithm::Hs256,
            "RS256" => JwtAlgorithm::Rs256,
            "ES256" => JwtAlgorithm::Es256,
            "EdDSA" => JwtAlgorithm::EdDsa,
            other => return Err(invalid("jwt-algorithm", other, "HS256, RS256, ES256 or EdDSA")),
        };
        let public_key_file = self.optional("jwt-public-key-file").map(PathBuf::from);
        if algorithm != JwtAlgorithm::Hs256 && public_key_file.is_none() {
            return Err(ConfigError(format!(
                "SWITCHBOARD_JWT_PUBLIC_KEY_FILE (--jwt-public-key-file) is required with SWITCHBOARD_JWT_ALGORITHM={}",
                self.get("jwt-algorithm").unwrap_or_default()
            )));
        }
        let secret = self.optional("jwt-secret");
        if let Some(secret) = &secret
            && secret.len() < 16
        {
            return Err(ConfigError(
                "invalid SWITCHBOARD_JWT_SECRET (--jwt-secret): use at least 16 characters".into(),
            ));
        }
        let api_key = self.optional("api-key");
        if let Some(key) = &api_key
            && key.len() < 16
        {
            return Err(ConfigError("invalid SWITCHBOARD_API_KEY (--api-key): use at least 16 characters".into()));
        }
        let chat_protocol = match self.get("chat-protocol").unwrap_or_default().trim() {
            "rooms" => ChatProtocol::Rooms,
            "consultation" => ChatProtocol::Consultation,
            "support" => ChatProtocol::Support,
            other => return Err(invalid("chat-protocol", other, "rooms, consultation or support")),
        };
        let log_level = match self.get("log").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => return Err(invalid("log", other, "off, error, warn, info, debug or trace")),
        };
        let db_sync_full = match self.get("db-sync").unwrap_or_default().trim() {
            "normal" => false,
            "full" => true,
            other => return Err(invalid("db-sync", other, "normal or full")),
        };
        let db_check = match self.get("db-check").unwrap_or_default().trim() {
            "off" => DbCheck::Off,
            "quick" => DbCheck::Quick,
            "full" => DbCheck::Full,
            other => return Err(invalid("db-check", other, "off, quick or full")),
        };
        let max_message_bytes = self.positive("max-message-bytes")? as usize;
        let outbound_buffer_bytes = self.positive("outbound-buffer-bytes")? as usize;
        if outbound_buffer_bytes < max_message_bytes * 2 {
            return Err(ConfigError(format!(
                "invalid SWITCHBOARD_OUTBOUND_BUFFER_BYTES (--outbound-buffer-bytes): {outbound_buffer_bytes} must be at least twice SWITCHBOARD_MAX_MESSAGE_BYTES ({max_message_bytes}), so one largest message fits"
            )));
        }
        let webhook = self.webhook()?;
        let db = self.get("db").unwrap_or_default().trim().to_string();
        if db.is_empty() {
            return Err(invalid("db", "", "a file path"));
        }
        Ok(Config {
            listen: self.parsed("listen", "an address such as 127.0.0.1:8000")?,
            api_listen: self.parsed("api-listen", "an address such as 127.0.0.1:8001")?,
            db_path: PathBuf::from(db),
            database_url: match self.optional("database-url") {
                Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url),
                Some(_) => return Err(invalid("database-url", "(not shown)", "a postgres:// URL")),
                None => None,
            },
            db_sync_full,
            db_check,
            jwt: JwtConfig {
                algorithm,
                secret,
                public_key_file,
                issuer: self.optional("jwt-issuer"),
                audience: self.optional("jwt-audience"),
                leeway_secs: self.parsed("jwt-leeway-secs", "a whole number of seconds")?,
            },
            api_key,
            limits: Limits {
                idle_timeout: Duration::from_secs(self.positive("idle-timeout-secs")?),
                handshake_timeout: Duration::from_secs(self.positive("handshake-timeout-secs")?),
                max_message_bytes,
                rate_limit_per_minute: self.positive("rate-limit-per-minute")? as u32,
                max_connections: self.positive("max-connections")? as usize,
                max_connections_per_user: self.positive("max-connections-per-user")? as usize,
                outbound_buffer_bytes,
                socket_send_buffer_bytes: match self
                    .parsed::<usize>("socket-send-buffer-bytes", "a whole number of bytes")?
                {
                    0 => None,
                    n => Some(n),
                },
            },
            history_limit: self.parsed("history-limit", "a whole number")?,
            event_retention: std::time::Duration::from_secs(self.positive("event-retention-secs")?),
            retention: self.retention()?,
            redis: match self.optional("redis-url") {
                None => None,
                Some(_) if self.optional("database-url").is_none() => {
                    return Err(ConfigError(
                        "SWITCHBOARD_REDIS_URL (--redis-url) needs SWITCHBOARD_DATABASE_URL: the bus joins nodes that share a PostgreSQL database".into(),
                    ));
                }
                Some(url) => {
                    let mut url = RedisUrl::parse(&url).ok_or_else(|| {
                        invalid(
                            "redis-url",
                            "(not shown)",
                            "a redis://[:password@]host[:port] or redis+sentinel://[:password@]host:port[,host:port]/master URL",
                        )
                    })?;
                    url.prefix = self.optional("redis-prefix").unwrap_or_else(|| REDIS_PREFIX.into());
                    let fits = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
                    if url.prefix.is_empty() || url.prefix.len() > 32 || !url.prefix.chars().all(fits) {
                        return Err(invalid("redis-prefix", &url.prefix, "1-32 letters, digits, -, _, . or :"));
                    }
                    Some(url)
                }
            },
            node_lease: Duration::from_millis(self.positive("node-lease-ms")?.max(300)),
            poll_interval: Duration::from_millis(self.positive("poll-interval-ms")?),
            max_pending_writes: self.positive("max-pending-writes")? as usize,
            webhook,
            chat_protocol,
            allowed_origins: self
                .optional("allowed-origins")
                .map(|v| {
                    v.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect()
                })
                .unwrap_or_default(),
            log_level,
        })
    }
}

fn invalid(flag: &str, value: &str, what: &str) -> ConfigError {
    let env = SETTINGS.iter().find(|s| s.flag == flag).map(|s| s.env).unwrap_or("?");
    ConfigError(format!("invalid {env} (--{flag}): {value:?} is not {what}"))
}

/// The settings part of `--help`.
pub fn settings_help() -> String {
    let mut out = String::from("Settings (flag, environment variable, default):\n");
    for s in SETTINGS {
        let default = s.default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
        out.push_str(&format!("  --{:<26} {}{}\n  {:28} {}\n", s.flag, s.env, default, "", s.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_gives_its_address_and_password() {
        let url = |s: &str| RedisUrl::parse(s);
        assert_eq!(url("redis://127.0.0.1:7000"), Some(RedisUrl::direct("127.0.0.1:7000", None)));
        assert_eq!(url("redis://cache/2"), Some(RedisUrl::direct("cache:6379", None)));
        assert_eq!(url("redis://:s3cret@cache:7000/0"), Some(RedisUrl::direct("cache:7000", Some("s3cret"))));
        assert_eq!(url("rediss://x"), None);
        assert_eq!(url("redis://"), None);
        let sentinel = url("redis+sentinel://:pw@s1:5000,s2/main").unwrap();
        assert_eq!(sentinel.password.as_deref(), Some("pw"));
        let expected = Sentinel { addrs: vec!["s1:5000".into(), "s2:26379".into()], master: "main".into() };
        assert_eq!(sentinel.sentinel, Some(expected));
        assert_eq!(sentinel.current(), None, "known once a Sentinel named it");
        assert_eq!(url("redis+sentinel://s1:5000"), None, "the master's name is required");
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (raw, _) = RawSettings::gather(&args, |name| env.get(name).cloned())?;
        raw.into_config()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = parse(&[], &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:8001");
        assert_eq!(config.limits.max_message_bytes, 65536);
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.limits.rate_limit_per_minute, 300);
        assert_eq!(config.chat_protocol, ChatProtocol::Rooms);
    }

    #[test]
    fn flag_wins_over_environment() {
        let config = parse(&["--listen", "127.0.0.1:9"], &[("SWITCHBOARD_LISTEN", "127.0.0.1:7")]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9");
        let config = parse(&["--listen=127.0.0.1:5"], &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:5");
    }

    #[test]
    fn a_bad_setting_names_itself() {
        let err = parse(&[], &[("SWITCHBOARD_MAX_MESSAGE_BYTES", "lots")]).unwrap_err();
        assert!(err.0.contains("SWITCHBOARD_MAX_MESSAGE_BYTES"), "{err}");
        let err = parse(&["--chat-protocol", "irc"], &[]).unwrap_err();
        assert!(err.0.contains("--chat-protocol"), "{err}");
        let err = parse(&[], &[("SWITCHBOARD_JWT_ALGORITHM", "RS256")]).unwrap_err();
        assert!(err.0.contains("SWITCHBOARD_JWT_PUBLIC_KEY_FILE"), "{err}");
        let err = parse(&["--idle-timeout-secs", "0"], &[]).unwrap_err();
        assert!(err.0.contains("SWITCHBOARD_IDLE_TIMEOUT_SECS"), "{err}");
    }

    #[test]
    fn retention_takes_days_a_count_and_what_to_do_with_unread_items() {
        assert_eq!(parse(&[], &[]).unwrap().retention, Retention::default());
        let config = parse(&["--retention-days", "0.5", "--room-history-max", "100"], &[]).unwrap();
        assert_eq!(config.retention.max_age, Some(Duration::from_secs(43_200)));
        assert_eq!(config.retention.room_history_max, Some(100));
        assert!(!config.retention.prune_unread);
        let config = parse(&[], &[("SWITCHBOARD_RETENTION_DAYS", "30"), ("SWITCHBOARD_RETENTION_UNREAD", "prune")]);
        assert!(config.unwrap().retention.prune_unread);
        for (flag, value, named) in [
            ("--retention-days", "0", "SWITCHBOARD_RETENTION_DAYS"),
            ("--retention-days", "-3", "SWITCHBOARD_RETENTION_DAYS"),
            ("--retention-days", "a week", "SWITCHBOARD_RETENTION_DAYS"),
            ("--room-history-max", "0", "SWITCHBOARD_ROOM_HISTORY_MAX"),
            ("--retention-unread", "yes", "SWITCHBOARD_RETENTION_UNREAD"),
        ] {
            let err = parse(&[flag, value], &[]).unwrap_err();
            assert!(err.0.contains(named), "{err}");
        }
        let err = parse(&["--retention-unread", "prune"], &[]).unwrap_err();
        assert!(err.0.contains("needs SWITCHBOARD_RETENTION_DAYS"), "{err}");
    }

    #[test]
    fn every_setting_is_in_help() {
        let help = settings_help();
        for s in SETTINGS {
            assert!(help.contains(s.env) && help.contains(s.flag));
        }
    }
}
