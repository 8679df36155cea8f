//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside a commit once the WAL passes 1,000 pages,
//! copying pages into the database file and calling fsync, on the event loop's thread:
//! measured in a chat load, 9% of the server's CPU and a stall for every client at that
//! moment. The main connection turns it off; this thread, with its own connection, runs
//! a PASSIVE checkpoint (it never blocks the writer) every `INTERVAL`. A page rewritten
//! by many commits in between is copied once. The thread is SCHED_BATCH, so that where
//! it shares a core with the loop it takes its turn without preempting it.
//!
//! SQLite writes the WAL from its start again only when a write transaction begins with
//! every frame already copied. Under steady load the loop commits while this thread
//! copies, so the WAL was never complete when a transaction began and grew without end
//! (measured: 1.27 GB for a 29 MB database after 10 s of chat, the kernel zeroing every
//! new page of it). So after a pass over a WAL of `RESTART_FRAMES` or more, this thread
//! raises `behind`; the loop then runs one PASSIVE checkpoint itself between turns
//! (`Store::finish_checkpoint`), which copies only what was committed during this
//! thread's pass, and its next commit writes the WAL from the start. The WAL stays the
//! size of what one interval writes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

const INTERVAL: Duration = Duration::from_millis(500);

/// A WAL of this many frames (64 MiB) is restarted with the loop's help once this thread
/// has copied it. Each restart stalls the loop for the loop's share of the copy and two
/// fsyncs (2-7 ms measured at 10,000 chat messages/s), so it should be rare under load;
/// at that rate the WAL reaches this size about once a second.
pub const RESTART_FRAMES: i64 = 16_384;

pub struct Checkpointer {
    /// Raised by the thread when the WAL should be restarted.
    behind: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (which must be a file in WAL mode),
    /// asking for a restart once the WAL holds `restart_frames` frames.
    pub fn start(path: &Path, restart_frames: i64) -> Result<Checkpointer, String> {
        let conn = Connection::open(path).map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let behind = Arc::new(AtomicBool::new(false));
        let raise = Arc::clone(&behind);
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                yield_to_the_loop();
                let mut failing = Failing::default();
                loop {
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    match pass(&conn) {
                        Ok(frames) if frames >= restart_frames => {
                            // The first pass's fsync covered all the WAL written since the
                            // last one and took a while; a second pass copies what was
                            // committed meanwhile, so what is left for the loop is a few
                            // milliseconds' worth.
                            match pass(&conn) {
                                Ok(_) => failing.ended(),
                                Err(e) => failing.failed(&e),
                            }
                            raise.store(true, Ordering::Relaxed);
                        }
                        Ok(_) => failing.ended(),
                        Err(e) => failing.failed(&e),
                    }
                }
            })
            .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
        Ok(Checkpointer { behind, stop: Some(stop), thread: Some(thread) })
    }

    /// Whether the loop should finish a checkpoint; lowers the flag.
    pub fn take_behind(&self) -> bool {
        self.behind.swap(false, Ordering::Relaxed)
    }
}

/// Marks the calling thread SCHED_BATCH: the scheduler still gives it its fair share
/// of the CPU (so the WAL keeps being copied), but its wake-up never preempts the event
/// loop when both share a core. Measured with 50 chat pairs flat out, everything pinned
/// to one core: round trip p99 5.6 ms -> 4.2-4.6 ms and this thread's CPU 5.1% -> 3.7%.
/// Lower settings starved it: at nice 19 or SCHED_IDLE the WAL reached 0.9-2.1 GB in 15 s.
fn yield_to_the_loop() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log::debug!("checkpoint thread stays SCHED_OTHER: {}", std::io::Error::last_os_error());
    }
}

/// Checkpoint failures are logged when they start and when they end, not twice a second
/// for as long as they last (a full disk can last hours).
#[derive(Default)]
struct Failing {
    since: Option<std::time::Instant>,
    passes: u64,
}

impl Failing {
    fn failed(&mut self, e: &rusqlite::Error) {
        if self.since.is_none() {
            log::warn!("WAL checkpoints are failing: {e}; retrying every {} ms", INTERVAL.as_millis());
            self.since = Some(std::time::Instant::now());
        }
        self.passes += 1;
    }

    fn ended(&mut self) {
        if let Some(since) = self.since.take() {
            log::info!(
                "WAL checkpoints work again, after {} failed passes in {:.1} s",
                std::mem::take(&mut self.passes),
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// One PASSIVE checkpoint; returns the number of frames in the WAL.
fn pass(conn: &Connection) -> rusqlite::Result<i64> {
    // (busy, frames in the WAL, frames copied); -1 when not in WAL mode.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

impl Drop for Checkpointer {
    /// Stops the thread (its connection closes); the main connection's close then does
    /// the final checkpoint.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
