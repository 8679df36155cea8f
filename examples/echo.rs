//! switchboard's own event loop with an echo endpoint at `/echo` (no token needed), for
//! the Autobahn TestSuite (`.ci/autobahn`) and benchmarks. Built only with
//! `--features echo`; the release binary has no such endpoint.
//!
//! Settings are the server's (`switchboard --help`); this build changes two defaults so
//! a conformance run is not throttled: the rate limit and the per-user cap are lifted.
//! Raise `SWITCHBOARD_MAX_MESSAGE_BYTES` (and `SWITCHBOARD_OUTBOUND_BUFFER_BYTES`) for
//! Autobahn's 9.* cases, which send messages of up to 16 MiB.
//!
//!     cargo run --release --features echo --example echo -- --listen 127.0.0.1:9001

fn main() {
    for (name, value) in [
        ("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", "1000000000"),
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "1000000"),
        ("SWITCHBOARD_DB", ":memory:"),
        ("SWITCHBOARD_JWT_SECRET", "echo-build-secret-not-for-production"),
        ("SWITCHBOARD_API_KEY", "echo-build-api-key-not-for-production"),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: single-threaded at this point, before anything reads the environment.
            unsafe { std::env::set_var(name, value) };
        }
    }
    std::process::exit(switchboard::cli::main(std::env::args().skip(1).collect()));
}
