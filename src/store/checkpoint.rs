//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside a commit once the WAL passes 1,000 pages,
//! copying pages into the database file and calling fsync, on the event loop's thread:
//! measured in a chat load, 9% of the server's CPU and a stall for every client at that
//! moment. The main connection turns it off; this thread, with its own connection, runs
//! a PASSIVE checkpoint (it never blocks the writer) every `INTERVAL`. A page rewritten
//! by many commits in between is copied once. The WAL is reused from its start after
//! each complete checkpoint, so it stays the size of what one interval writes.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

const INTERVAL: Duration = Duration::from_millis(500);

pub struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (which must be a file in WAL mode).
    pub fn start(path: &Path) -> Result<Checkpointer, String> {
        let conn = Connection::open(path).map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        log::warn!("WAL checkpoint failed: {e}");
                    }
                }
            })
            .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
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
