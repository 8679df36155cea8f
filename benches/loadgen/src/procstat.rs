//! The server process as /proc shows it: resident memory, CPU time, open descriptors.

use std::fs;

pub struct Proc {
    pid: u32,
    ticks_per_sec: f64,
}

impl Proc {
    pub fn new(pid: u32) -> Result<Proc, String> {
        fs::metadata(format!("/proc/{pid}/stat")).map_err(|e| format!("--pid {pid}: no such process ({e})"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(Proc { pid, ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 } })
    }

    pub fn alive(&self) -> bool {
        fs::metadata(format!("/proc/{}/stat", self.pid)).is_ok()
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// utime + stime of the whole process (all threads), in microseconds.
    pub fn cpu_us(&self) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name (field 2) may hold spaces; fields after its ')' are plain.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(((utime + stime) as f64 * 1e6 / self.ticks_per_sec) as u64)
    }

    /// Seconds since the process started (field 22 of /proc/PID/stat against /proc/uptime).
    pub fn age_secs(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let start: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        let uptime: f64 = fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
        Some(uptime - start / self.ticks_per_sec)
    }

    pub fn fd_count(&self) -> Option<u64> {
        Some(fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?.count() as u64)
    }
}

/// Size of a SQLite database with its write-ahead log (`PATH` + `PATH-wal`).
pub fn db_bytes(path: &str) -> Option<u64> {
    let main = fs::metadata(path).ok()?.len();
    let wal = fs::metadata(format!("{path}-wal")).map(|m| m.len()).unwrap_or(0);
    Some(main + wal)
}

/// System-wide `TcpExt: ListenOverflows` (connections dropped because a listener's
/// accept queue was full). Their SYNs are retried after 1 s, 3 s, ..., which shows up as
/// a low connection rate: worth printing next to it.
pub fn listen_overflows() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// utime + stime of a process, and with `reaped` its waited-for children's too (cutime +
/// cstime), in clock ticks; `None` when it is gone.
fn ticks(pid: u32, reaped: bool) -> Option<(u64, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let mut t = n(11)? + n(12)?;
    if reaped {
        t += n(13)? + n(14)?;
    }
    Some((t, n(1)? as u32))
}

/// Named processes whose CPU time is summed over a window: plain ones (`--cpu
/// NAME=PID,...`: that process, all its threads) and trees (`--cpu-tree NAME=PID,...`:
/// the process, its live children and what its reaped children used; PostgreSQL's
/// postmaster and its backends).
pub struct CpuSet {
    procs: Vec<(String, u32, bool)>,
    ticks_per_sec: f64,
}

impl CpuSet {
    /// From `NAME=PID,NAME=PID` lists; `None` when both are empty.
    pub fn parse(plain: Option<&str>, trees: Option<&str>) -> Result<Option<CpuSet>, String> {
        let mut procs = Vec::new();
        for (list, tree, option) in [(plain, false, "--cpu"), (trees, true, "--cpu-tree")] {
            for item in list.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
                let (name, pid) =
                    item.split_once('=').ok_or_else(|| format!("usage: {option}: {item:?} is not NAME=PID"))?;
                let pid: u32 = pid.parse().map_err(|_| format!("usage: {option}: {pid:?} is not a PID"))?;
                procs.push((name.to_string(), pid, tree));
            }
        }
        if procs.is_empty() {
            return Ok(None);
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(Some(CpuSet { procs, ticks_per_sec: if hz > 0 { hz as f64 } else { 100.0 } }))
    }

    /// Each process's CPU so far in µs (`None`: gone), in the order given.
    pub fn sample(&self) -> Vec<(String, Option<u64>)> {
        let children: Vec<(u32, u64)> = if self.procs.iter().any(|p| p.2) {
            fs::read_dir("/proc")
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                        .filter_map(|pid| ticks(pid, false).map(|(t, ppid)| (ppid, t)))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.procs
            .iter()
            .map(|(name, pid, tree)| {
                let own = ticks(*pid, *tree).map(|(t, _)| t);
                let kids: u64 =
                    if *tree { children.iter().filter(|(pp, _)| pp == pid).map(|(_, t)| t).sum() } else { 0 };
                (name.clone(), own.map(|t| ((t + kids) as f64 * 1e6 / self.ticks_per_sec) as u64))
            })
            .collect()
    }
}
