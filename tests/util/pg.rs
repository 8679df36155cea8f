//! A throwaway PostgreSQL for the tests: `initdb` and `postgres` from Debian's
//! `postgresql` package (`.ci/run` installs it when missing), run as the `postgres` user
//! when the tests run as root (initdb refuses root), listening on a free loopback port,
//! with its data in a temporary directory. One server per test binary, started on first
//! use; each test gets a database of its own (`Postgres::database`).
//!
//! Statics are never dropped, so the server is not stopped by a destructor: a watchdog
//! shell started with it stops it (fast shutdown) and removes its directory once the test
//! process is gone, however that process ended.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// The test binary's server, started on first use.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

/// The newest PostgreSQL server binaries installed (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: apt-get install -y postgresql (.ci/run does)",
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Postgres {
    fn start() -> Postgres {
        let pg = Postgres::init();
        let data = pg.dir.join("data");
        // A few tries: the port is free when picked, but another process may take it.
        for _ in 0..5 {
            let port = free_port();
            if pg.launch(&data, port) {
                return Postgres { port, ..pg };
            }
        }
        panic!(
            "PostgreSQL did not start; its log: {}",
            std::fs::read_to_string(pg.dir.join("log")).unwrap_or_default()
        );
    }

    /// A server of the caller's own, which it may stop and start again (`stop`,
    /// `start_again`): started with `pg_ctl`, and a watchdog that stops it and removes
    /// its directory once the test process is gone. Unlike the shared one it commits
    /// synchronously (`synchronous_commit` on), so that a commit it confirmed survives
    /// its crash; `fsync` stays off, as the machine itself does not crash in a test.
    pub fn private() -> Postgres {
        let mut pg = Postgres::init();
        pg.port = free_port();
        let watchdog = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf {dir}",
            test = std::process::id(),
            stop = pg.shell("pg_ctl", &["-D", path(&pg.dir.join("data")), "-m", "immediate", "stop"]),
            dir = path(&pg.dir),
        );
        let started = Command::new("sh")
            .arg("-c")
            .arg(format!("({watchdog}) </dev/null >/dev/null 2>&1 &"))
            .stdin(Stdio::null())
            .status()
            .expect("start the watchdog");
        assert!(started.success());
        pg.start_again();
        pg
    }

    /// Starts a private server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            path(&self.dir)
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let out = self
            .command("pg_ctl", &["-D", path(&data), "-l", path(&log), "-o", &options, "-w", "-t", "30", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops a private server the way a crash or a restart does: at once, every
    /// connection cut (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        let out =
            self.command("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "stop"]).output().expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A command line for `sh`, run as the server's user.
    fn shell(&self, program: &str, args: &[&str]) -> String {
        let program = self.bin.join(program);
        let line = format!("{} {}", path(&program), args.join(" "));
        if self.as_postgres { format!("runuser -u postgres -- {line}") } else { line }
    }

    /// A new cluster directory (`initdb`), not started.
    fn init() -> Postgres {
        let bin = bin_dir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("switchboard-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("PostgreSQL's directory");
        if as_postgres {
            let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status().expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let pg = Postgres { port: 0, dir, bin, as_postgres };
        let data = pg.dir.join("data");
        let out = pg
            .command("initdb", &["-D", path(&data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    /// Starts the server on `port` under a watchdog; true once it accepts connections.
    fn launch(&self, data: &Path, port: u16) -> bool {
        let postgres = self.bin.join("postgres");
        let server = format!(
            "{} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            path(&postgres),
            path(data),
            path(&self.dir),
        );
        let server = if self.as_postgres { format!("runuser -u postgres -- {server}") } else { server };
        // The watchdog: runs the server, and stops it once the test process is gone (the
        // postmaster itself: runuser does not pass signals on).
        let script = format!(
            "{server} >>{log} 2>&1 & pg=$!; \
             while kill -0 {test} 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.5; done; \
             kill -INT $(head -n 1 {pidfile} 2>/dev/null) 2>/dev/null; wait $pg; rm -rf {dir}",
            log = path(&self.dir.join("log")),
            pidfile = path(&data.join("postmaster.pid")),
            test = std::process::id(),
            dir = path(&self.dir),
        );
        // Detached (the outer shell returns at once), so that it outlives this process.
        let started = Command::new("sh")
            .arg("-c")
            .arg(format!("({script}) </dev/null >/dev/null 2>&1 &"))
            .stdin(Stdio::null())
            .status()
            .expect("start PostgreSQL");
        assert!(started.success(), "sh could not start PostgreSQL");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            if std::fs::read_to_string(self.dir.join("log")).is_ok_and(|l| l.contains("could not bind")) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(&self.dir);
        command
    }

    /// The URL of an administrative connection (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database of its own, and its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = self.psql(&self.admin_url(), &format!("CREATE DATABASE {name}"));
        assert!(out.0, "CREATE DATABASE {name}: {}", out.1);
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL with `psql` on `url`: whether it succeeded, and its output (or error),
    /// a row per line with its columns joined by `|`.
    pub fn psql(&self, url: &str, sql: &str) -> (bool, String) {
        let out = Command::new("psql")
            .args([url, "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        let text = if out.status.success() { out.stdout } else { out.stderr };
        (out.status.success(), String::from_utf8_lossy(&text).trim().to_string())
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
