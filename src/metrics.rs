//! Counters and gauges, and their Prometheus text rendering.
//!
//! Plain integers bumped on the event-loop thread; nothing here is atomic because
//! nothing else reads them, but for the webhook delivery thread's counts, which that
//! thread bumps. Rendering happens when the server API is asked for
//! `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::auth::AuthError;

#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections by endpoint name.
    pub open_connections: BTreeMap<&'static str, i64>,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub messages_stored: u64,
    pub commits: u64,
    pub commit_failures: u64,
    pub committed_writes: u64,
    /// Histogram of writes per commit: bucket upper bounds in `COMMIT_BUCKETS`.
    pub commit_batch_buckets: [u64; COMMIT_BUCKETS.len()],
    pub slow_consumer_disconnects: u64,
    pub rate_limited: u64,
    pub auth_failures: BTreeMap<&'static str, u64>,
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub api_requests: u64,
    /// Reads of events another node stored (or that came out of order), for streams
    /// followed here, and events given up because they were no longer kept.
    pub stream_fills: u64,
    pub events_lost: u64,
    /// Turns in which clients' frames were left unread, and server API writes refused
    /// with 503, because too many writes waited for their commit.
    pub backpressure_turns: u64,
    /// The Redis bus: connections made after the first, and events heard on it.
    pub bus_reconnects: u64,
    pub bus_events: u64,
    pub writes_refused: u64,
    /// With Redis: stream fills that a position check found were needed (the bus lost
    /// the event), other nodes' presence taken out when their lease ran out, and
    /// presence told Redis again after it lost its data or this node's lease.
    pub position_repairs: u64,
    /// With Redis: presence changes heard on the bus.
    pub presence_changes: u64,
    pub reaped_nodes: u64,
    pub presence_rebuilds: u64,
    /// With webhooks: what the delivery thread counts (atomics: that thread writes them).
    pub webhooks: Option<std::sync::Arc<crate::webhook::delivery::Stats>>,
}

pub const COMMIT_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 64, 256, 1024];

impl Metrics {
    pub fn auth_failure(&mut self, error: AuthError) {
        *self.auth_failures.entry(error.reason()).or_default() += 1;
    }

    pub fn committed(&mut self, writes: usize) {
        self.commits += 1;
        self.committed_writes += writes as u64;
        for (bucket, bound) in self.commit_batch_buckets.iter_mut().zip(COMMIT_BUCKETS) {
            if writes as u64 <= bound {
                *bucket += 1;
            }
        }
    }

    pub fn connection_opened(&mut self, endpoint: &'static str) {
        *self.open_connections.entry(endpoint).or_default() += 1;
    }

    pub fn connection_closed(&mut self, endpoint: &'static str) {
        *self.open_connections.entry(endpoint).or_default() -= 1;
    }

    /// Every plain counter: its name (after `switchboard_`), its help text and its value.
    /// `/metrics` renders them as Prometheus text, `/api/stats` as JSON.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 24] {
        [
            (
                "connections_accepted_total",
                "TCP connections accepted on the WebSocket listener.",
                self.connections_accepted,
            ),
            ("connections_refused_total", "Connections refused at a connection cap.", self.connections_refused),
            ("frames_in_total", "WebSocket data frames received.", self.frames_in),
            ("bytes_in_total", "Payload bytes of data frames received.", self.bytes_in),
            ("frames_out_total", "WebSocket data frames queued to clients.", self.frames_out),
            ("bytes_out_total", "Payload bytes of data frames queued to clients.", self.bytes_out),
            ("messages_stored_total", "Chat messages and events stored.", self.messages_stored),
            ("commits_total", "SQLite transactions committed (one per busy loop turn).", self.commits),
            ("commit_failures_total", "SQLite commits that failed and were rolled back.", self.commit_failures),
            (
                "slow_consumer_disconnects_total",
                "Connections dropped because their outbound buffer filled.",
                self.slow_consumer_disconnects,
            ),
            ("rate_limited_total", "Client messages dropped by the per-user rate limit.", self.rate_limited),
            (
                "handshake_timeouts_total",
                "Connections dropped before finishing their handshake.",
                self.handshake_timeouts,
            ),
            ("idle_timeouts_total", "Connections closed after the idle timeout.", self.idle_timeouts),
            ("api_requests_total", "Server API requests answered.", self.api_requests),
            (
                "stream_fills_total",
                "Reads of stream events stored by another node or seen out of order (PostgreSQL).",
                self.stream_fills,
            ),
            (
                "bus_reconnects_total",
                "Connections to the Redis bus made again after one was lost.",
                self.bus_reconnects,
            ),
            ("bus_events_total", "Events heard on the Redis bus.", self.bus_events),
            (
                "position_repairs_total",
                "Streams a position check found behind while the Redis bus was up (an event the bus lost).",
                self.position_repairs,
            ),
            ("presence_changes_total", "Presence changes heard on the Redis bus.", self.presence_changes),
            ("reaped_nodes_total", "Other nodes taken out of presence after their lease ran out.", self.reaped_nodes),
            (
                "presence_rebuilds_total",
                "Times this node told Redis its presence again (Redis lost its data, or this node its lease).",
                self.presence_rebuilds,
            ),
            (
                "backpressure_turns_total",
                "Loop turns that left clients' frames unread because too many writes waited for their commit.",
                self.backpressure_turns,
            ),
            (
                "writes_refused_total",
                "Server API writes answered 503 because too many writes waited for their commit.",
                self.writes_refused,
            ),
            (
                "events_lost_total",
                "Stream events a node's listeners missed because they were no longer kept.",
                self.events_lost,
            ),
        ]
    }

    /// The same counters as `render`, as JSON (`GET /api/stats`): plain counters by
    /// name, open connections by endpoint, refused tokens by reason.
    pub fn to_json(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> =
            self.counters().iter().map(|(name, _, value)| (name.to_string(), (*value).into())).collect();
        let open: serde_json::Map<String, serde_json::Value> =
            self.open_connections.iter().map(|(endpoint, count)| (endpoint.to_string(), (*count).into())).collect();
        let auth: serde_json::Map<String, serde_json::Value> = AuthError::ALL
            .iter()
            .map(|error| {
                (error.reason().to_string(), self.auth_failures.get(error.reason()).copied().unwrap_or(0).into())
            })
            .collect();
        serde_json::json!({"counters": counters, "open_connections": open, "auth_failures": auth})
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.counters() {
            let _ = writeln!(
                out,
                "# HELP switchboard_{name} {help}\n# TYPE switchboard_{name} counter\nswitchboard_{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_open_connections Open WebSocket connections by endpoint.\n# TYPE switchboard_open_connections gauge"
        );
        for (endpoint, count) in &self.open_connections {
            let _ = writeln!(out, "switchboard_open_connections{{endpoint=\"{endpoint}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_auth_failures_total Refused tokens by reason.\n# TYPE switchboard_auth_failures_total counter"
        );
        for error in AuthError::ALL {
            let count = self.auth_failures.get(error.reason()).copied().unwrap_or(0);
            let _ = writeln!(out, "switchboard_auth_failures_total{{reason=\"{}\"}} {count}", error.reason());
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_commit_batch_size Writes per SQLite commit.\n# TYPE switchboard_commit_batch_size histogram"
        );
        for (bound, count) in COMMIT_BUCKETS.iter().zip(self.commit_batch_buckets) {
            let _ = writeln!(out, "switchboard_commit_batch_size_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "switchboard_commit_batch_size_bucket{{le=\"+Inf\"}} {}", self.commits);
        let _ = writeln!(out, "switchboard_commit_batch_size_sum {}", self.committed_writes);
        let _ = writeln!(out, "switchboard_commit_batch_size_count {}", self.commits);
        if let Some(stats) = &self.webhooks {
            render_webhooks(&mut out, stats);
        }
        out
    }
}

fn render_webhooks(out: &mut String, stats: &crate::webhook::delivery::Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP switchboard_webhook_events_pending Webhook events committed and not yet acknowledged by the receiver.\n# TYPE switchboard_webhook_events_pending gauge\nswitchboard_webhook_events_pending {}",
        stats.pending()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_webhook_delivering Whether this node delivers webhooks (1; on PostgreSQL the one node holding the lease).\n# TYPE switchboard_webhook_delivering gauge\nswitchboard_webhook_delivering {}",
        u8::from(stats.leading.load(Relaxed))
    );
    for (name, help, value) in [
        ("webhook_events_delivered_total", "Webhook events the receiver acknowledged (2xx).", &stats.delivered),
        ("webhook_requests_total", "Webhook requests the receiver acknowledged (one batch each).", &stats.batches),
        ("webhook_retries_total", "Webhook requests that failed and were tried again.", &stats.retries),
        (
            "webhook_events_dropped_total",
            "Webhook events given up after SWITCHBOARD_WEBHOOK_MAX_AGE_SECS undelivered.",
            &stats.dropped,
        ),
    ] {
        let value = value.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP switchboard_{name} {help}\n# TYPE switchboard_{name} counter\nswitchboard_{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_webhook_delivery_seconds From an event's commit to the receiver's acknowledgement.\n# TYPE switchboard_webhook_delivery_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in crate::webhook::delivery::LATENCY_BUCKETS.iter().zip(&stats.latency_buckets) {
        cumulative += count.load(Relaxed);
        let _ = writeln!(out, "switchboard_webhook_delivery_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let delivered = stats.delivered.load(Relaxed);
    let _ = writeln!(out, "switchboard_webhook_delivery_seconds_bucket{{le=\"+Inf\"}} {delivered}");
    let _ = writeln!(
        out,
        "switchboard_webhook_delivery_seconds_sum {}",
        stats.latency_micros_sum.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "switchboard_webhook_delivery_seconds_count {delivered}");
}
