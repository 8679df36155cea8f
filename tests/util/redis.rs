//! A throwaway Redis for the tests: Debian's `redis-server` (`.ci/test` installs it when
//! missing) on a free loopback port, without persistence, which a test may kill and
//! start again on the same port. A watchdog shell stops it once the test process is
//! gone, however that process ended.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// More arguments for `redis-server` (a replica's `--replicaof`, a Sentinel's).
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(Vec::new())
    }

    fn start_with(args: Vec<String>) -> Redis {
        let mut redis = Redis { port: free_port(), child: None, args };
        redis.start_again();
        redis
    }

    /// A replica of the Redis on `master`.
    pub fn replica_of(master: u16) -> Redis {
        Redis::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), master.to_string()])
    }

    /// A Sentinel watching the master on port `master` as `name`, with a quorum of one,
    /// that calls it down after a second. Its configuration file lives in `dir`.
    pub fn sentinel(master: u16, name: &str, dir: &std::path::Path) -> Redis {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\nsentinel monitor {name} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n"
        );
        std::fs::write(&conf, text).expect("write the Sentinel's configuration");
        let mut sentinel = Redis { port, child: None, args: vec![conf.display().to_string(), "--sentinel".into()] };
        sentinel.start_again();
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port, empty, and waits until it answers. A previous
    /// process that was told to go (`redis-cli SHUTDOWN NOSAVE`) is waited for first, so
    /// that the port is free; one still running after 5 s is killed.
    pub fn start_again(&mut self) {
        if let Some(mut old) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while old.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = old.kill();
            let _ = old.wait();
        }
        let sentinel = self.args.iter().any(|a| a == "--sentinel");
        let mut command = Command::new("redis-server");
        if sentinel {
            command.args(&self.args).args(["--loglevel", "warning"]);
        } else {
            command
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--loglevel", "warning"])
                .args(&self.args);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server; .ci/test does)");
        let watchdog = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null",
            std::process::id(),
            child.id()
        );
        let _ = Command::new("sh").arg("-c").arg(format!("({watchdog}) </dev/null >/dev/null 2>&1 &")).status();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).0 && self.cli(&["PING"]).1 == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Kills it at once (its data is gone: it keeps none).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli` against it: whether it succeeded, and its output.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        match Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output() {
            Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Err(e) => (false, e.to_string()),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
