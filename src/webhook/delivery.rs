//! The delivery thread: reads the outbox after the cursor (its own read-only SQLite
//! connection, `store::WebhookLog`), posts a batch as one signed JSON request with a
//! blocking client (ureq: no async runtime, nothing on the event loop's thread), and
//! moves on after a 2xx. Anything else — another status, a timeout, a refused
//! connection — is retried with exponential backoff and jitter; once a batch's oldest
//! events are older than `max_age`, they are counted as dropped (the metric, one log
//! line) and skipped, never silently. At least once: the loop stores how far the
//! receiver acknowledged (`delivered`) between turns, so a crash repeats the batches
//! after it, with the same ids.
//!
//! The thread tells the loop nothing directly: the loop reads `Stats::delivered` in its
//! sweep, twice a second, and wakes this thread (`nudge`) after a commit that stored
//! outbox rows, so that an event leaves within a turn of its commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::now_micros;
use crate::store::pg::{Lead, PgOutbox};
use crate::store::{HookRow, WebhookLog};

/// How often an idle thread looks at the outbox without being nudged (a nudge lost to a
/// race costs at most this).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The first wait after a failure; each failure doubles it up to `Settings::retry_max`.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Largest response body read (and thrown away) from the receiver.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Upper bounds of the delivery-latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// Where and how to post (`SWITCHBOARD_WEBHOOK_*`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub secret: String,
    pub timeout: Duration,
    pub max_age: Duration,
    pub retry_max: Duration,
    pub batch_max: usize,
    pub batch_bytes: usize,
}

/// Where the thread reads the outbox and keeps its cursor.
pub enum Outbox {
    /// SQLite: a read-only connection; the loop stores the cursor (`Stats::delivered_up_to`)
    /// in its sweep. This process alone delivers.
    Sqlite(WebhookLog),
    /// PostgreSQL: the node holding the lease delivers and stores the cursor itself.
    Postgres(Box<PgOutbox>),
}

impl Outbox {
    /// Whether this thread delivers now, and from where if it has just begun to.
    fn lead(&mut self) -> Result<Lead, String> {
        match self {
            Outbox::Sqlite(_) => Ok(Lead::Held),
            Outbox::Postgres(pg) => pg.lead(),
        }
    }

    fn newest(&mut self) -> Result<i64, String> {
        match self {
            Outbox::Sqlite(log) => log.newest(),
            Outbox::Postgres(pg) => pg.newest(),
        }
    }

    fn after(&mut self, after: i64, limit: usize, max_bytes: usize) -> Result<Vec<HookRow>, String> {
        match self {
            Outbox::Sqlite(log) => log.after(after, limit, max_bytes),
            Outbox::Postgres(pg) => pg.after(after, limit, max_bytes),
        }
    }

    /// The receiver acknowledged up to `cursor` (or they were dropped); false when this
    /// node no longer delivers.
    fn acknowledged(&mut self, cursor: i64) -> bool {
        match self {
            Outbox::Sqlite(_) => true,
            Outbox::Postgres(pg) => match pg.acknowledged(cursor) {
                Ok(held) => held,
                Err(e) => {
                    // Sent again by whoever delivers next: at least once.
                    log::warn!("webhooks: cannot store the cursor ({e})");
                    true
                }
            },
        }
    }

    fn release(&mut self) {
        if let Outbox::Postgres(pg) = self {
            pg.release();
        }
    }
}

/// What the thread did, read by the loop (cursor, `/metrics`, `/healthz`).
#[derive(Default)]
pub struct Stats {
    /// This node delivers (always, on SQLite; the lease holder's, on PostgreSQL).
    pub leading: AtomicBool,
    /// The last id the receiver acknowledged or that was dropped.
    pub delivered_up_to: AtomicI64,
    /// The newest outbox id the thread saw committed.
    pub newest: AtomicI64,
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
    /// Unix seconds since the receiver has been failing; 0 while it answers.
    pub failing_since: AtomicU64,
    /// Delivery latency (commit to acknowledgement), a histogram per event.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub latency_micros_sum: AtomicU64,
}

impl Stats {
    /// Events committed and not acknowledged, as the node that delivers sees them (0
    /// on the others).
    pub fn pending(&self) -> i64 {
        if !self.leading.load(Ordering::Relaxed) {
            return 0;
        }
        (self.newest.load(Ordering::Relaxed) - self.delivered_up_to.load(Ordering::Relaxed)).max(0)
    }

    /// For how long the receiver has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_secs(unix_secs().saturating_sub(since))),
        }
    }

    fn observe(&self, created_at: i64, now: i64) {
        let micros = (now - created_at).max(0) as u64;
        self.latency_micros_sum.fetch_add(micros, Ordering::Relaxed);
        let secs = micros as f64 / 1e6;
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running thread. Dropping it stops the thread after its request in flight.
pub struct Delivery {
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Delivery {
    /// Starts the thread. `lease` is how long a PostgreSQL node's hold on delivery
    /// lasts unrenewed (it renews it every third of that).
    pub fn start(outbox: Outbox, settings: Settings, lease: Duration) -> Result<Delivery, String> {
        let stats = Arc::new(Stats::default());
        let cursor = match &outbox {
            Outbox::Sqlite(log) => {
                stats.leading.store(true, Ordering::Relaxed);
                log.cursor()?
            }
            Outbox::Postgres(_) => 0,
        };
        stats.delivered_up_to.store(cursor, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop) = (Arc::clone(&stats), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || run(outbox, settings, lease, cursor, &thread_stats, &thread_stop))
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Delivery { stats, stop, thread: Some(thread) })
    }

    /// New rows were committed: look now.
    pub fn nudge(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// The last id acknowledged (or dropped).
    pub fn delivered(&self) -> i64 {
        self.stats.delivered_up_to.load(Ordering::Relaxed)
    }

    /// Whether this node delivers (see `Stats::leading`).
    pub fn leading(&self) -> bool {
        self.stats.leading.load(Ordering::Relaxed)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.nudge();
        // Joined for a moment only, so that a PostgreSQL node gives up its lease (another
        // takes over at once): a request in flight may take up to the timeout, and what it
        // delivers is sent again by whoever delivers next anyway.
        let Some(thread) = self.thread.take() else { return };
        let until = Instant::now() + Duration::from_millis(500);
        while !thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What one post came to.
enum Posted {
    Acknowledged,
    Failed(String),
}

fn run(mut outbox: Outbox, settings: Settings, lease: Duration, mut cursor: i64, stats: &Stats, stop: &AtomicBool) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut backoff = FIRST_RETRY;
    let mut jitter = Jitter::new();
    let mut failures_logged = 0u32;
    // The lease is renewed every third of its length, so it never runs out while this
    // node works (a request in flight longer than that may be sent again by another).
    let renew_every = lease / 3;
    let mut renewed: Option<Instant> = None;
    let idle = IDLE_POLL.min(renew_every.max(Duration::from_millis(50)));
    while !stop.load(Ordering::Relaxed) {
        if renewed.is_none_or(|at| at.elapsed() >= renew_every) {
            match outbox.lead() {
                Ok(Lead::Held) => renewed = Some(Instant::now()),
                Ok(Lead::Took(stored)) => {
                    log::info!("webhooks: this node delivers now, after event {stored}");
                    cursor = stored;
                    stats.delivered_up_to.store(cursor, Ordering::Relaxed);
                    stats.leading.store(true, Ordering::Relaxed);
                    renewed = Some(Instant::now());
                }
                Ok(Lead::Elsewhere) => {
                    stats.leading.store(false, Ordering::Relaxed);
                    renewed = None;
                    sleep_unless_stopped(renew_every.min(IDLE_POLL * 2), stop);
                    continue;
                }
                Err(e) => {
                    log::warn!("webhooks: cannot reach the outbox: {e}");
                    renewed = None;
                    sleep_unless_stopped(IDLE_POLL, stop);
                    continue;
                }
            }
        }
        if let Ok(newest) = outbox.newest() {
            stats.newest.store(newest, Ordering::Relaxed);
        }
        let rows = match outbox.after(cursor, settings.batch_max, settings.batch_bytes) {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("webhooks: cannot read the outbox: {e}");
                std::thread::park_timeout(idle);
                continue;
            }
        };
        if rows.is_empty() {
            std::thread::park_timeout(idle);
            continue;
        }
        match post(&agent, &settings, &rows) {
            Posted::Acknowledged => {
                let now = now_micros();
                for row in &rows {
                    stats.observe(row.created_at, now);
                }
                cursor = rows.last().map_or(cursor, |r| r.id);
                stats.delivered.fetch_add(rows.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.delivered_up_to.store(cursor, Ordering::Relaxed);
                if stats.failing_since.swap(0, Ordering::Relaxed) != 0 {
                    log::info!("webhooks: the receiver acknowledges again");
                }
                backoff = FIRST_RETRY;
                failures_logged = 0;
                if outbox.acknowledged(cursor) {
                    renewed = Some(Instant::now());
                } else {
                    log::warn!("webhooks: another node delivers now");
                    stats.leading.store(false, Ordering::Relaxed);
                    renewed = None;
                }
            }
            Posted::Failed(why) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let _ = stats.failing_since.compare_exchange(0, unix_secs(), Ordering::Relaxed, Ordering::Relaxed);
                // One line for the first failures of a run and then every 32nd, so a
                // receiver down for hours does not fill the journal.
                if failures_logged < 3 || failures_logged.is_multiple_of(32) {
                    log::warn!("webhooks: delivery failed ({why}); retrying in up to {} ms", backoff.as_millis());
                }
                failures_logged += 1;
                let too_old = now_micros() - settings.max_age.as_micros() as i64;
                let expired = rows.iter().take_while(|r| r.created_at < too_old).count();
                if expired > 0 {
                    cursor = rows[expired - 1].id;
                    stats.dropped.fetch_add(expired as u64, Ordering::Relaxed);
                    stats.delivered_up_to.store(cursor, Ordering::Relaxed);
                    log::error!(
                        "webhooks: dropped {expired} events (ids {} to {cursor}) undelivered after {} s: {why}",
                        rows[0].id,
                        settings.max_age.as_secs()
                    );
                    if !outbox.acknowledged(cursor) {
                        stats.leading.store(false, Ordering::Relaxed);
                        renewed = None;
                    }
                    continue;
                }
                let wait = backoff / 2 + jitter.below(backoff / 2);
                // Waits in slices, so that the lease is renewed while the receiver is down.
                let until = Instant::now() + wait;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    sleep_unless_stopped(until.saturating_duration_since(Instant::now()).min(renew_every), stop);
                    if renewed.is_some_and(|at| at.elapsed() >= renew_every) && Instant::now() < until {
                        match outbox.lead() {
                            Ok(Lead::Held) => renewed = Some(Instant::now()),
                            _ => break,
                        }
                    }
                }
                backoff = (backoff * 2).min(settings.retry_max);
            }
        }
    }
    outbox.release();
}

fn post(agent: &ureq::Agent, settings: &Settings, rows: &[HookRow]) -> Posted {
    let events: Vec<serde_json::Value> = rows.iter().map(super::event_json).collect();
    let body = serde_json::to_vec(&serde_json::json!({"events": events})).expect("plain JSON");
    let signature = super::sign::header(&settings.secret, unix_secs(), &body);
    let sent = agent
        .post(&settings.url)
        .header("Content-Type", "application/json")
        .header(super::sign::HEADER, &signature)
        .send(&body[..]);
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read (a bounded part of) the answer, so that the connection can be kept.
            let _ = response.into_body().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec();
            if (200..300).contains(&status) { Posted::Acknowledged } else { Posted::Failed(format!("HTTP {status}")) }
        }
        Err(e) => Posted::Failed(e.to_string()),
    }
}

fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // A nudge (new rows) does not cut a backoff short: only time does.
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A small xorshift generator for the backoff's jitter: spreads retries of several
/// nodes apart; nothing depends on its quality.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        Jitter(seed ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn below(&mut self, limit: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let micros = limit.as_micros() as u64;
        if micros == 0 { Duration::ZERO } else { Duration::from_micros(self.0 % micros) }
    }
}
