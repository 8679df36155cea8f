//! The command line: `switchboard [serve]`, `switchboard token`, `switchboard migrate`,
//! `switchboard backup`, `--help`, `--version`. Reads the configuration, opens the store, finds or generates
//! the secrets, binds the listeners and hands over to the event loop. Exit codes: 0 after
//! a clean stop, 2 for a bad setting or command line, 1 when start-up fails otherwise.

use std::io::Read;

use crate::app::App;
use crate::auth::{self, Verifier};
use crate::config::{Config, JwtAlgorithm, RawSettings, settings_help};
use crate::engine::Engine;
use crate::server::Server;
use crate::store::Store;

const JWT_SECRET_SETTING: &str = "jwt_secret";
const API_KEY_SETTING: &str = "api_key";
const WEBHOOK_SECRET_SETTING: &str = "webhook_secret";
/// Lifetime of the token printed at start-up for trying things out.
const HINT_TOKEN_TTL_SECS: u64 = 3600;
const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

fn usage() -> String {
    format!(
        "switchboard {} - a real-time WebSocket server in one binary

Usage:
  switchboard [serve] [SETTINGS]      run the server (the default)
  switchboard token --user ID [--name NAME] [--ttl SECS] [SETTINGS]
                                      print an HS256 access token for trying things out
  switchboard migrate --to postgres://... [SETTINGS]
                                      copy the SQLite database (SWITCHBOARD_DB, with no
                                      server running on it) into an empty PostgreSQL
                                      database, then check every table's row count
  switchboard backup FILE [--overwrite] [SETTINGS]
                                      copy the SQLite database (SWITCHBOARD_DB) to FILE
                                      while the server runs: consistent, checked with
                                      PRAGMA integrity_check, renamed into place at the
                                      end; an existing FILE is replaced only with
                                      --overwrite (PostgreSQL: use pg_dump)
  switchboard --help | --version

Every setting can be given as a flag or as an environment variable; the flag wins.
{}",
        env!("CARGO_PKG_VERSION"),
        settings_help()
    )
}

/// Runs the command line and returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") || args.first().is_some_and(|a| a == "help") {
        print!("{}", usage());
        return 0;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("switchboard {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let (raw, rest) = match RawSettings::gather(&args, |name| std::env::var(name).ok()) {
        Ok(parsed) => parsed,
        Err(e) => return fail(2, &e.to_string()),
    };
    let config = match raw.into_config() {
        Ok(config) => config,
        Err(e) => return fail(2, &e.to_string()),
    };
    match rest.first().map(String::as_str) {
        None | Some("serve") if rest.len() <= 1 => serve(config),
        Some("token") => token(config, &rest[1..]),
        Some("migrate") => migrate(config, &rest[1..]),
        Some("backup") => backup(config, &rest[1..]),
        Some(other) => fail(2, &format!("unknown command or flag {other:?}; see switchboard --help")),
        None => fail(2, "see switchboard --help"),
    }
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("switchboard: {message}");
    code
}

/// Secrets in use, and whether they were kept by switchboard rather than configured.
struct Secrets {
    jwt_secret: String,
    api_key: String,
    jwt_secret_generated: bool,
    api_key_generated: bool,
    /// With webhooks: the key that signs them, and whether it was generated on this run
    /// (it is printed once, then only kept).
    webhook_secret: Option<(String, bool)>,
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where generated settings are kept: the `settings` table of either store.
trait Settings {
    fn get(&mut self, key: &str) -> Result<Option<String>, String>;
    /// Keeps `value` unless a value is kept already (another node's, on PostgreSQL);
    /// returns the one kept.
    fn keep_first(&mut self, key: &str, value: &str) -> Result<String, String>;
}

impl Settings for Store {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        self.setting(key).map_err(|e| e.to_string())
    }

    fn keep_first(&mut self, key: &str, value: &str) -> Result<String, String> {
        self.put_setting_now(key, value).map_err(|e| e.to_string())?;
        Ok(value.to_string())
    }
}

impl Settings for postgres::Client {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        let row = self.query_opt("SELECT value FROM settings WHERE key = $1", &[&key]).map_err(|e| e.to_string())?;
        Ok(row.map(|r| r.get(0)))
    }

    fn keep_first(&mut self, key: &str, value: &str) -> Result<String, String> {
        self.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &value])
            .map_err(|e| e.to_string())?;
        self.get(key)?.ok_or_else(|| format!("the {key} setting vanished"))
    }
}

/// A configured value wins; otherwise the one kept in the database, generated on first
/// use (on PostgreSQL by the first node; the others read it).
fn kept_or_generated(
    store: &mut dyn Settings,
    configured: &Option<String>,
    setting: &str,
) -> Result<(String, bool), String> {
    if let Some(value) = configured {
        return Ok((value.clone(), false));
    }
    if let Some(value) = store.get(setting)? {
        return Ok((value, true));
    }
    let generated = random_hex(32).map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let value = store.keep_first(setting, &generated)?;
    if value == generated {
        log::info!("generated {setting} and kept it in the database");
    }
    Ok((value, true))
}

fn secrets(store: &mut dyn Settings, config: &Config) -> Result<Secrets, String> {
    let (jwt_secret, jwt_secret_generated) = if config.jwt.algorithm == JwtAlgorithm::Hs256 {
        kept_or_generated(store, &config.jwt.secret, JWT_SECRET_SETTING)?
    } else {
        (String::new(), false)
    };
    let (api_key, api_key_generated) = kept_or_generated(store, &config.api_key, API_KEY_SETTING)?;
    let webhook_secret = match &config.webhook {
        None => None,
        Some(webhook) => {
            let kept_before = webhook.secret.is_none() && store.get(WEBHOOK_SECRET_SETTING)?.is_some();
            let (secret, kept) = kept_or_generated(store, &webhook.secret, WEBHOOK_SECRET_SETTING)?;
            Some((secret, kept && !kept_before))
        }
    };
    Ok(Secrets { jwt_secret, api_key, jwt_secret_generated, api_key_generated, webhook_secret })
}

fn serve(config: Config) -> i32 {
    let _ = simple_logger::SimpleLogger::new().with_level(config.log_level).with_utc_timestamps().init();
    // A public key is checked before anything is written, so a bad key file fails alone.
    let public_key_verifier = match config.jwt.algorithm {
        JwtAlgorithm::Hs256 => None,
        _ => match Verifier::new(&config.jwt, "") {
            Ok(verifier) => Some(verifier),
            Err(e) => return fail(2, &e),
        },
    };
    let (engine, secrets, kept_in, webhooks) = match &config.database_url {
        Some(url) => match postgres_engine(url, &config) {
            Ok((engine, secrets, node)) => {
                let webhooks = match (&config.webhook, &secrets.webhook_secret) {
                    (Some(webhook), Some((secret, _))) => {
                        // The node that holds the lease on the cursor delivers; who is
                        // online is reported by it (with Redis) or by each node.
                        let outbox = crate::store::pg::PgOutbox::new(url, &node, config.node_lease);
                        let outbox = crate::webhook::delivery::Outbox::Postgres(Box::new(outbox));
                        match crate::webhook::Webhooks::start(webhook, secret.clone(), outbox, config.node_lease) {
                            Ok(webhooks) => Some(webhooks),
                            Err(e) => return fail(1, &e),
                        }
                    }
                    _ => None,
                };
                (engine, secrets, "PostgreSQL".to_string(), webhooks)
            }
            Err((code, message)) => return fail(code, &message),
        },
        None => {
            let mut store = match Store::open_for_server(&config.db_path, config.db_sync_full, config.db_check) {
                Ok(store) => store,
                Err(e) => return fail(1, &e.to_string()),
            };
            let secrets = match secrets(&mut store, &config) {
                Ok(secrets) => secrets,
                Err(e) => return fail(1, &e),
            };
            if config.retention.is_on() {
                match store.use_incremental_vacuum() {
                    Ok(None) => {}
                    Ok(Some(took)) => log::info!(
                        "retention: the database gives deleted pages back to the file system from now on (one VACUUM, {:.1} s)",
                        took.as_secs_f64()
                    ),
                    Err(e) => {
                        return fail(1, &format!("retention: cannot switch the database to incremental vacuum: {e}"));
                    }
                }
            }
            let engine = if std::env::var_os("SWITCHBOARD_TEST_DEFERRED_ENGINE").is_some_and(|v| v == "1") {
                // For the test suite only (ARCHITECTURE.md, "Storage as data"): every
                // open and request answered a turn later, the shape of an engine on
                // another thread.
                log::warn!("SWITCHBOARD_TEST_DEFERRED_ENGINE=1: answers come a turn late (a test setting)");
                Engine::deferred(store)
            } else {
                Engine::Local(store)
            };
            let mut engine = engine;
            let webhooks = match (&config.webhook, &secrets.webhook_secret) {
                (Some(webhook), Some((secret, _))) => match start_webhooks(&mut engine, webhook, secret, &config) {
                    Ok(webhooks) => Some(webhooks),
                    Err(e) => return fail(1, &e),
                },
                _ => None,
            };
            (engine, secrets, config.db_path.display().to_string(), webhooks)
        }
    };
    let verifier = match public_key_verifier.map_or_else(|| Verifier::new(&config.jwt, &secrets.jwt_secret), Ok) {
        Ok(verifier) => verifier,
        Err(e) => return fail(2, &e),
    };
    let hs256 = config.jwt.algorithm == JwtAlgorithm::Hs256;
    let mut app = App::new(config, verifier, secrets.api_key.clone(), engine);
    app.ctx.token_secret = hs256.then(|| secrets.jwt_secret.clone());
    app.ctx.metrics.webhooks = webhooks.as_ref().map(|w| std::sync::Arc::clone(&w.delivery.stats));
    app.ctx.webhooks = webhooks;
    let (server, bound) = match Server::bind(app) {
        Ok(bound) => bound,
        Err(e) => return fail(1, &e.to_string()),
    };
    println!(
        "switchboard {} listening on ws://{} (server API on http://{})",
        env!("CARGO_PKG_VERSION"),
        bound.ws,
        bound.api
    );
    // Hints for trying things out, only with secrets that switchboard keeps itself: a
    // secret the operator configured is never printed (stdout ends up in the journal),
    // nor is a token signed with it.
    if secrets.jwt_secret_generated {
        let token = auth::mint_token(&secrets.jwt_secret, "1", Some("demo"), HINT_TOKEN_TTL_SECS);
        let what = if secrets.api_key_generated { "JWT secret and API key" } else { "JWT secret" };
        println!("{what} generated and kept in {kept_in}; set SWITCHBOARD_JWT_SECRET to use your backend's.");
        println!("try (token valid 1 h): wscat -c 'ws://{}/ws/chat/lobby/?token={token}'", bound.ws);
    }
    if secrets.api_key_generated {
        println!("server API: curl -H 'Authorization: Bearer {}' http://{}/api/online", secrets.api_key, bound.api);
    }
    println!("console: http://{}/console", bound.api);
    if let Some((secret, true)) = &secrets.webhook_secret {
        println!("webhook secret generated and kept in {kept_in} (it signs every webhook request): {secret}");
    }
    match server.run() {
        Ok(()) => 0,
        Err(e) => fail(1, &format!("event loop failed: {e}")),
    }
}

/// Webhooks on the SQLite store: users left online by a crash are reported offline,
/// then the delivery thread starts from the stored cursor. (On PostgreSQL, `serve`
/// starts it on the database: the node holding the lease delivers.)
fn start_webhooks(
    engine: &mut Engine,
    webhook: &crate::config::WebhookConfig,
    secret: &str,
    config: &Config,
) -> Result<crate::webhook::Webhooks, String> {
    if config.db_path.to_str().is_some_and(|p| p == ":memory:" || p.starts_with("file::memory:")) {
        return Err("SWITCHBOARD_WEBHOOK_URL needs a database file (the delivery thread reads it)".into());
    }
    // Users left online by a crash are reported offline.
    let hooks = crate::webhook::Hooks::of(webhook);
    engine.hook_write(crate::request::Write::ReportOnline(Vec::new()), &hooks, crate::model::now_micros());
    engine.commit().map_err(|e| format!("cannot report the users left online as offline: {e}"))?;
    let log = crate::store::WebhookLog::open(&config.db_path)?;
    let outbox = crate::webhook::delivery::Outbox::Sqlite(log);
    crate::webhook::Webhooks::start(webhook, secret.to_string(), outbox, config.node_lease)
}

/// Tries to reach PostgreSQL for this long at start-up before giving up (exit 1).
const DATABASE_CONNECT_TRIES: u32 = 10;

/// Connects to PostgreSQL at `url`, with a bounded retry while it is unreachable;
/// `what` names the setting or flag in errors: (exit code, one line).
fn connect_postgres(url: &str, what: &str, timeouts: bool) -> Result<postgres::Client, (i32, String)> {
    let parsed: postgres::Config = url.parse().map_err(|e| (2, format!("{what} is not a PostgreSQL URL: {e}")))?;
    let parsed = if timeouts { crate::store::pg::with_timeouts(parsed) } else { parsed };
    let mut wait = std::time::Duration::from_millis(250);
    for attempt in 1..=DATABASE_CONNECT_TRIES {
        match parsed.connect(postgres::NoTls) {
            Ok(connected) => return Ok(connected),
            // The server answered and refused: retrying will not help.
            Err(e) if e.as_db_error().is_some() => {
                let db = e.as_db_error().expect("a server error");
                return Err((2, format!("{what}: PostgreSQL refused the connection: {}", db.message())));
            }
            Err(e) if attempt == DATABASE_CONNECT_TRIES => {
                return Err((1, format!("{what}: cannot reach PostgreSQL ({e}); gave up after {attempt} tries")));
            }
            Err(e) => {
                log::warn!("{what}: cannot reach PostgreSQL yet ({e}); trying again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    unreachable!("the last try returns")
}

/// The PostgreSQL engine: connected (with a bounded retry), migrated, its settings kept
/// by the first node, its lanes started. Errors: (exit code, one line naming the setting).
fn postgres_engine(url: &str, config: &Config) -> Result<(Engine, Secrets, String), (i32, String)> {
    let mut client = connect_postgres(url, "SWITCHBOARD_DATABASE_URL", true)?;
    crate::store::pg::migrations::apply(&mut client).map_err(|e| (1, format!("SWITCHBOARD_DATABASE_URL: {e}")))?;
    let secrets = secrets(&mut client, config).map_err(|e| (1, format!("SWITCHBOARD_DATABASE_URL: {e}")))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let node = format!("{}-{}", host.trim(), random_hex(4).map_err(|e| (1, e.to_string()))?);
    log::info!("storing in PostgreSQL as node {node}");
    let wake = std::sync::Arc::new(std::sync::OnceLock::new());
    let options = crate::engine::postgres::Options {
        poll_interval: config.poll_interval,
        max_pending_writes: config.max_pending_writes,
        redis: config.redis.clone(),
        rate_limit_per_minute: config.limits.rate_limit_per_minute,
        hooks: config.webhook.as_ref().map(crate::webhook::Hooks::of),
        retention: config.retention,
    };
    let engine = crate::engine::postgres::PgEngine::start(url, node.clone(), wake, options);
    Ok((Engine::Postgres(Box::new(engine)), secrets, node))
}

/// `switchboard migrate --to URL`: copies the SQLite database into an empty PostgreSQL
/// database (`store::pg::copy`). The progress goes to stderr, the summary to stdout.
fn migrate(config: Config, args: &[String]) -> i32 {
    let mut to = None;
    let flags = match command_flags(args) {
        Ok(flags) => flags,
        Err(e) => return fail(2, &e),
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--to" => to = Some(value),
            other => return fail(2, &format!("unknown flag {other:?} for migrate; see switchboard --help")),
        }
    }
    let Some(url) = to.map(|u| u.trim().to_string()).filter(|u| !u.is_empty()) else {
        return fail(2, "migrate needs --to postgres://...: the empty PostgreSQL database to copy into");
    };
    // The URL may hold a password: it is never printed.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return fail(2, "--to is not a postgres:// URL");
    }
    // PostgreSQL's notices ("relation ... already exists, skipping") say nothing here.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .with_module_level("postgres", log::LevelFilter::Warn)
        .with_module_level("tokio_postgres", log::LevelFilter::Warn)
        .with_utc_timestamps()
        .init();
    let source = match crate::store::pg::copy::Source::open(&config.db_path) {
        Ok(source) => source,
        Err((code, message)) => return fail(code, &message),
    };
    let mut client = match connect_postgres(&url, "--to", false) {
        Ok(client) => client,
        Err((code, message)) => return fail(code, &message),
    };
    match source.copy_into(&mut client) {
        Ok(copied) => {
            println!(
                "switchboard: migrated {} into PostgreSQL: {} rows in {} tables, row counts verified ({:.1} s)",
                source.path().display(),
                copied.rows,
                copied.tables,
                copied.elapsed.as_secs_f64()
            );
            0
        }
        Err((code, message)) => fail(code, &message),
    }
}

/// `switchboard backup FILE [--overwrite]`: a consistent copy of the SQLite database,
/// taken beside a running server (`store::backup`). The summary goes to stdout.
fn backup(config: Config, args: &[String]) -> i32 {
    let mut overwrite = false;
    let mut target = None;
    for arg in args {
        match arg.as_str() {
            "--overwrite" => overwrite = true,
            flag if flag.starts_with('-') => {
                return fail(2, &format!("unknown flag {flag:?} for backup; see switchboard --help"));
            }
            file if target.is_none() => target = Some(std::path::PathBuf::from(file)),
            extra => return fail(2, &format!("backup takes one FILE; {extra:?} is one too many")),
        }
    }
    if config.database_url.is_some() {
        return fail(
            2,
            "backup copies the SQLite file; with SWITCHBOARD_DATABASE_URL the data is in PostgreSQL: back it up with pg_dump (or your PostgreSQL's own backups)",
        );
    }
    let Some(target) = target.filter(|t| !t.as_os_str().is_empty()) else {
        return fail(2, "backup needs FILE: where to write the copy");
    };
    match crate::store::backup::backup(&config.db_path, &target, overwrite) {
        Ok(copied) => {
            println!(
                "switchboard: backed up {} to {}: {} bytes ({} pages), integrity ok ({:.2} s)",
                config.db_path.display(),
                target.display(),
                copied.bytes,
                copied.pages,
                copied.elapsed.as_secs_f64()
            );
            0
        }
        Err(e) => fail(1, &format!("backup failed: {e}")),
    }
}

/// A command's own flags, `--flag VALUE` or `--flag=VALUE`, in order; every one takes a
/// value.
fn command_flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut flags = Vec::new();
    let mut index = 0;
    while index < args.len() {
        let (flag, value) = match args[index].split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (args[index].clone(), args.get(index + 1).cloned()),
        };
        index += if args[index].contains('=') { 1 } else { 2 };
        flags.push((flag.clone(), value.ok_or_else(|| format!("{flag} needs a value"))?));
    }
    Ok(flags)
}

fn token(config: Config, args: &[String]) -> i32 {
    let mut user = None;
    let mut name = None;
    let mut ttl = DEFAULT_TOKEN_TTL_SECS;
    let flags = match command_flags(args) {
        Ok(flags) => flags,
        Err(e) => return fail(2, &e),
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--user" => user = Some(value),
            "--name" => name = Some(value),
            "--ttl" => match value.parse() {
                Ok(secs) if secs > 0 => ttl = secs,
                _ => return fail(2, "--ttl takes a positive number of seconds"),
            },
            other => return fail(2, &format!("unknown flag {other:?} for token; see switchboard --help")),
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else { return fail(2, "token needs --user ID") };
    if config.jwt.algorithm != JwtAlgorithm::Hs256 {
        return fail(2, "token signs HS256 only; with a public-key algorithm, tokens come from your backend");
    }
    let secret = match &config.jwt.secret {
        Some(secret) => secret.clone(),
        None => {
            let mut store = match Store::open(&config.db_path, config.db_sync_full) {
                Ok(store) => store,
                Err(e) => return fail(1, &e.to_string()),
            };
            match kept_or_generated(&mut store, &None, JWT_SECRET_SETTING) {
                Ok((secret, _)) => secret,
                Err(e) => return fail(1, &e),
            }
        }
    };
    println!("{}", auth::mint_token(&secret, &user, name.as_deref(), ttl));
    0
}
