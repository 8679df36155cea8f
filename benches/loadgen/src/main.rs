//! loadgen: drives switchboard's room protocol (document 004) — or a benchmark peer that
//! speaks it — with real WebSocket connections over loopback, and measures the server
//! process from /proc. See `loadgen --help` and benches/README.md.

mod floor;
mod frames;
mod jwt;
mod procstat;
mod scenarios;
mod ws;

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::jwt::Minter;
use crate::procstat::Proc;
use crate::ws::{Ev, Net};

const USAGE: &str = "\
usage: loadgen SCENARIO --url ws://127.0.0.1:PORT --secret SECRET [--pid PID] [options]

scenarios:
  idle   --connections N [--settle-seconds 2]
         N authenticated connections, one room each (idle-{i}); connection rate,
         server RSS before / when all are open / after settling, RSS and CPU per connection.
  fanout --subscribers N --rate R --messages M [--window 64] [--subscriber-url URL]
         N subscribers (all user 1) in one fresh room, one sender (user 2) publishing M
         messages at R messages/s (0 = flat out, at most --window un-echoed). Every
         subscriber must get every message in order. Deliveries/s, latency, CPU/delivery.
         The server's per-user connection cap must be at least N
         (switchboard: SWITCHBOARD_MAX_CONNECTIONS_PER_USER).
         --subscriber-url: the subscribers connect there, the sender to --url (default:
         both to --url). With two switchboard nodes on one PostgreSQL database this is
         cross-node delivery; the latency then includes the other node's polling.
         --pid is then one of the two servers (CPU per delivery is that server's).
         A comma-separated list of URLs splits the subscribers over them (contiguous
         groups, as even as can be); each group's latency is reported, and over the
         groups on another server than --url's as remote_latency_*.
         [--cpu NAME=PID,...] [--cpu-tree NAME=PID,...]: those processes' CPU while
         publishing (--cpu-tree: with the process's children, live and reaped: a
         PostgreSQL postmaster), their sum per delivery and per message.
         [--fault-at S --fault-cmd CMD [--fault-window 3] [--degraded-ms 20]]: runs
         `sh -c CMD` S seconds after the first send; latency (the remote groups', if
         any) by send time before it, in the window after it and later, and how long
         after it until a second of --timeline-ms buckets all had their p99 under
         --degraded-ms (or twice the p99 before the fault, if higher).
         [--timeline-ms 250]: latency per bucket of send time (with a fault: always).
         [--warmup-seconds W]: latency of the sends in the first W s (a fresh room) and
         after, apart (warmup_all_*, steady_all_*; with other nodes also _remote_, _local_).
  chat   --pairs K --rate R --seconds S
         K pairs, each in its own room; each user sends, waits for its echo, sends again
         (paced to R messages/s in total, 0 = closed loop flat out). Messages/s,
         round trip, CPU per message.
  soak   --connections N --seconds S [--rooms 200] [--msg-interval 10] [--db PATH]
         churning connections (each lives 1-20 s) chatting at a low rate; every 10 s the
         server's RSS, open fds and DB size (PATH + PATH-wal); first vs last at the end.
  storm  --connections N --rooms R --history M [--phase all|seed|reconnect] [--history-wait 5]
         reconnect storm after a deploy. seed: one client per room (/ws/rooms/storm-{r}/)
         stores M messages and waits for their echoes. reconnect: N clients (room i % R)
         connect at once; each must get room_users_list, then exactly the M stored
         messages in order. Time from the first attempt until the last client has its
         history, server CPU in that window (per reconnect), reconnects/s, RSS after.
         Run seed, restart the server on the same database, then reconnect --pid NEWPID;
         all (the default) does both against one server process: no restart, warm caches.
         M is at most 50 (the servers' history limit); seed needs a fresh database.

  floor  --sockets N --messages M [--rate 50] [--bytes 160] [--writer-cpu 0]
         no server: a thread pinned to --writer-cpu writes one --bytes segment per message
         to each of N loopback TCP connections that this process reads. Its CPU per
         write is the least a fanout delivery can cost on this machine (over loopback
         the sender's `send` also runs the receiver's TCP path). Needs no --url.

common options:
  --url URL              target base, ws://HOST:PORT (loopback only); paths are appended
  --secret S             HS256 secret for the tokens the load generator mints
  --pid PID              server process, for /proc figures (RSS, CPU, fds); optional
  --max-seconds T        hard limit for the whole run; exceeding it fails the run
                         (default 300; chat and soak: their --seconds + 120)
  --stall-seconds T      fail when nothing progresses for this long (default 30)
  --concurrency C        handshakes in flight at once (default 512)
  --sources K            loopback source addresses 127.0.0.2.. to bind to (default 16)
  --handshake-timeout T  seconds before an unanswered handshake counts as failed (60)
  --max-failures F       connection failures tolerated (default max(5, N/1000))
  --label NAME           server name copied into the JSON line

Output: human-readable lines, then one JSON line (starts with '{') with \"scenario\",
every figure and \"ok\". Exit status 0 when ok, 1 when the run failed, 2 on bad usage.
";

pub struct Args {
    scenario: String,
    values: BTreeMap<String, String>,
    used: std::cell::RefCell<HashSet<String>>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let scenario = it.next().ok_or("missing scenario")?;
        if scenario == "--help" || scenario == "-h" {
            return Err(String::new());
        }
        let mut values = BTreeMap::new();
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                return Err(String::new());
            }
            let Some(name) = arg.strip_prefix("--") else { return Err(format!("unexpected argument {arg:?}")) };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (name.to_string(), it.next().ok_or_else(|| format!("--{name} needs a value"))?),
            };
            values.insert(name, value);
        }
        Ok(Args { scenario, values, used: Default::default() })
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.used.borrow_mut().insert(name.to_string());
        self.values.get(name).map(|s| s.as_str())
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("usage: --{name}: not a valid number: {v:?}")),
        }
    }

    pub fn required<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let v = self.str(name).ok_or_else(|| format!("usage: --{name} is required for {}", self.scenario))?;
        v.parse().map_err(|_| format!("usage: --{name}: not a valid number: {v:?}"))
    }

    fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.values.keys().filter(|k| !used.contains(*k)).cloned().collect()
    }
}

/// Figures collected so far; printed as the JSON line even when the run fails half-way.
pub struct Report {
    pub map: Map<String, Value>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.map.insert(key.to_string(), value.into());
    }
    pub fn opt(&mut self, key: &str, value: Option<impl Into<Value>>) {
        self.map.insert(key.to_string(), value.map_or(Value::Null, Into::into));
    }
}

/// What every scenario works with.
pub struct Ctx {
    pub net: Net,
    pub minter: Minter,
    pub base: String,
    pub proc: Option<Proc>,
    pub start: Instant,
    pub max: Duration,
    pub stall: Duration,
    pub concurrency: usize,
    pub tag: String,
    /// This process's open-file limit: the bound on connections at once.
    pub nofile: usize,
    events: Vec<Ev>,
}

impl Ctx {
    /// Refuses a scenario that would need more sockets than this process may open.
    pub fn budget(&self, connections: usize) -> Result<(), String> {
        if connections + 64 > self.nofile {
            return Err(format!(
                "usage: {connections} connections need more descriptors than this process may open ({}; see ulimit -n)",
                self.nofile
            ));
        }
        Ok(())
    }

    pub fn check_time(&self) -> Result<(), String> {
        if self.start.elapsed() > self.max {
            return Err(format!("time limit exceeded: the run took more than --max-seconds {}", self.max.as_secs()));
        }
        Ok(())
    }

    /// `{base}/ws/chat/{room}/?token=...` for user `user_id`.
    pub fn path(&self, room: &str, user_id: u64) -> String {
        self.path_on(&self.base, room, user_id)
    }

    /// As `path`, on another server whose URL has the base path `base`.
    pub fn path_on(&self, base: &str, room: &str, user_id: u64) -> String {
        format!("{base}/ws/chat/{room}/?token={}", self.minter.token(user_id))
    }

    /// `{base}/ws/rooms/{room}/?token=...` for user `user_id` (the path that names the
    /// room protocol whatever switchboard's SWITCHBOARD_CHAT_PROTOCOL says).
    pub fn rooms_path(&self, room: &str, user_id: u64) -> String {
        format!("{}/ws/rooms/{room}/?token={}", self.base, self.minter.token(user_id))
    }

    /// One event-loop turn; checks the time limit too.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Ev>, String> {
        self.check_time()?;
        let mut out = std::mem::take(&mut self.events);
        out.clear();
        self.net.turn(Some(timeout), &mut out).map_err(|e| format!("poll: {e}"))?;
        Ok(out)
    }

    /// Gives an events buffer back for reuse.
    pub fn recycle(&mut self, events: Vec<Ev>) {
        self.events = events;
    }

    pub fn rss(&self) -> Option<u64> {
        self.proc.as_ref().and_then(|p| p.rss_kib())
    }
    pub fn cpu_us(&self) -> Option<u64> {
        self.proc.as_ref().and_then(|p| p.cpu_us())
    }
    pub fn fds(&self) -> Option<u64> {
        self.proc.as_ref().and_then(|p| p.fd_count())
    }
    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let scenario = args.scenario.clone();
    if scenario == "floor" {
        let mut rep = Report { map: Map::new(), errors: Vec::new() };
        rep.set("scenario", "floor");
        rep.opt("server", args.str("label"));
        if let Err(e) = floor::floor(&args, &mut rep) {
            if let Some(usage) = e.strip_prefix("usage: ") {
                eprintln!("loadgen: {usage}");
                return ExitCode::from(2);
            }
            rep.errors.push(e);
        }
        let ok = rep.errors.is_empty();
        rep.set("errors", json!(rep.errors.clone()));
        rep.set("ok", ok);
        for e in &rep.errors {
            println!("floor: FAILED: {e}");
        }
        println!("floor: {}", if ok { "ok" } else { "failed" });
        println!("{}", Value::Object(rep.map));
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    if !["idle", "fanout", "chat", "soak", "storm"].contains(&scenario.as_str()) {
        eprintln!("loadgen: unknown scenario {scenario:?}\n\n{USAGE}");
        return ExitCode::from(2);
    }
    raise_nofile_limit();

    let setup = || -> Result<Ctx, String> {
        let url = args.str("url").ok_or("--url is required")?;
        let (addr, host, base) = ws::parse_ws_url(url, "--url")?;
        let secret = args.str("secret").ok_or("--secret is required")?.to_string();
        let proc = match args.str("pid") {
            None => None,
            Some(p) => Some(Proc::new(p.parse().map_err(|_| format!("--pid: not a number: {p}"))?)?),
        };
        let default_max = match scenario.as_str() {
            "chat" | "soak" => args.num::<f64>("seconds", 10.0)? + 120.0,
            _ => 300.0,
        };
        let max = args.num::<f64>("max-seconds", default_max)?;
        let stall = args.num::<f64>("stall-seconds", 30.0)?;
        let sources = args.num::<usize>("sources", 16)?;
        let hs_timeout = args.num::<f64>("handshake-timeout", 60.0)?;
        let concurrency = args.num::<usize>("concurrency", 512)?.max(1);
        let start = Instant::now();
        let mut net =
            Net::new(addr, host, sources, Duration::from_secs_f64(hs_timeout), start).map_err(|e| e.to_string())?;
        let tag = format!("{:x}{:04x}", std::process::id(), net.rng.next_u64() & 0xFFFF);
        Ok(Ctx {
            net,
            minter: Minter::new(&secret),
            base,
            proc,
            start,
            max: Duration::from_secs_f64(max),
            stall: Duration::from_secs_f64(stall),
            concurrency,
            tag,
            nofile: nofile_limit() as usize,
            events: Vec::new(),
        })
    };
    let mut ctx = match setup() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {}", e.strip_prefix("usage: ").unwrap_or(&e));
            return ExitCode::from(2);
        }
    };

    let mut rep = Report { map: Map::new(), errors: Vec::new() };
    rep.set("scenario", scenario.as_str());
    rep.opt("server", args.str("label"));
    rep.set("url", args.str("url").unwrap_or_default());
    rep.opt("pid", ctx.proc.as_ref().map(|_| args.str("pid").unwrap_or_default().parse::<u64>().unwrap_or(0)));
    rep.set("nofile_limit", nofile_limit());
    // Other work on the machine skews every figure: measure how much there was.
    let busy0 = machine_busy_us();
    let server0 = ctx.cpu_us();
    let wall0 = Instant::now();
    let result = match scenario.as_str() {
        "idle" => scenarios::idle(&mut ctx, &args, &mut rep),
        "fanout" => scenarios::fanout(&mut ctx, &args, &mut rep),
        "chat" => scenarios::chat(&mut ctx, &args, &mut rep),
        "storm" => scenarios::storm(&mut ctx, &args, &mut rep),
        _ => scenarios::soak(&mut ctx, &args, &mut rep),
    };
    if let Err(e) = result {
        if let Some(usage) = e.strip_prefix("usage: ") {
            eprintln!("loadgen: {usage}");
            return ExitCode::from(2);
        }
        rep.errors.push(e);
    }
    let unused = args.unused();
    if !unused.is_empty() {
        eprintln!("loadgen: warning: options not used by {scenario}: {}", unused.join(", "));
    }
    ctx.net.drop_all();
    if ctx.proc.as_ref().is_some_and(|p| !p.alive()) {
        rep.errors.push("the server process is gone".into());
    }
    let ok = rep.errors.is_empty();
    rep.set("run_seconds", round3(ctx.secs()));
    rep.set("loadgen_bytes_in", ctx.net.stats.bytes_in);
    rep.set("loadgen_bytes_out", ctx.net.stats.bytes_out);
    rep.set("pings_answered", ctx.net.stats.pings);
    // The load generator's own CPU: near its wall time means it, not the server, was the limit.
    let own = own_cpu_us();
    rep.set("loadgen_cpu_us", own);
    // CPU time used on this machine by everything but the server and the load generator,
    // as a share of all CPUs over the run: well above 0 means the figures are noisy.
    let other = match (machine_busy_us(), busy0, ctx.cpu_us(), server0) {
        (Some(b1), Some(b0), Some(s1), Some(s0)) => Some(b1.saturating_sub(b0) as f64 - (s1 - s0) as f64 - own as f64),
        (Some(b1), Some(b0), _, None) => Some(b1.saturating_sub(b0) as f64 - own as f64),
        _ => None,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let wall_us = wall0.elapsed().as_secs_f64() * 1e6;
    rep.opt("other_cpu_pct", other.map(|o| round3((o.max(0.0) / (wall_us * cpus) * 100.0).min(100.0))));
    rep.set("errors", json!(rep.errors.clone()));
    rep.set("ok", ok);
    for e in &rep.errors {
        println!("{scenario}: FAILED: {e}");
    }
    println!("{scenario}: {}", if ok { "ok" } else { "failed" });
    println!("{}", Value::Object(rep.map));
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Busy time of all CPUs (everything but idle and iowait) from /proc/stat, in µs.
pub fn machine_busy_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((total - idle) * 1_000_000 / hz)
}

pub fn own_cpu_us() -> u64 {
    // SAFETY: getrusage fills a zeroed local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
