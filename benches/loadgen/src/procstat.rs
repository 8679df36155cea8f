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
