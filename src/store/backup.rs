//! `switchboard backup FILE`: a consistent copy of the SQLite database while a server
//! runs on it, from this (second) process.
//!
//! SQLite's online backup API copies the pages a few at a time with a short pause in
//! between, so the copy takes a share of the disk and a core rather than all of them.
//! The source connection holds one read transaction for the whole copy: in WAL mode a
//! reader never blocks the server's writes (the serving loop does not wait for this
//! process at all), and the copy is the database as of the moment that transaction
//! began. Without it, every commit of the server would restart the backup from the
//! first page, and under steady chat it would never end. The price is the WAL: while
//! the snapshot is held, neither the checkpoint thread nor the loop (`checkpoint.rs`)
//! can copy frames past it into the database, so the WAL grows by what the server
//! writes during the backup, and is written from its start again once the backup ends.
//!
//! The copy goes to a temporary name beside FILE (mode 0600: it holds the JWT secret
//! and the API key), is switched to a rollback journal (a standalone file: no `-wal`
//! belongs to it), checked with `PRAGMA integrity_check`, fsynced, renamed to FILE, and
//! the directory fsynced. Any failure removes the temporary file and leaves FILE as it
//! was.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// Pages copied per step (1 MiB of 4 KiB pages), then `PAUSE`: about half the time
/// copying, half pausing.
const PAGES_PER_STEP: i32 = 256;
const PAUSE: Duration = Duration::from_millis(2);

/// What a finished backup did.
#[derive(Debug)]
pub struct Copied {
    pub bytes: u64,
    pub pages: i64,
    pub elapsed: Duration,
}

/// Copies the database at `source` to `target`. `Err` is one line for the operator.
pub fn backup(source: &Path, target: &Path, overwrite: bool) -> Result<Copied, String> {
    let started = Instant::now();
    step_aside();
    if !source.is_file() {
        return Err(format!("no database at {} (set SWITCHBOARD_DB to the server's file)", source.display()));
    }
    if target.exists() && !overwrite {
        return Err(format!("{} exists; give --overwrite to replace it", target.display()));
    }
    if target.is_dir() {
        return Err(format!("{} is a directory; give a file name", target.display()));
    }
    if same_file(source, target) {
        return Err(format!("{} is the database itself", target.display()));
    }
    let dir = match target.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    let name = target.file_name().ok_or_else(|| format!("{} is not a file name", target.display()))?;
    let mut temporary = name.to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = dir.join(temporary);
    let copied = copy(source, &temporary).and_then(|pages| {
        finish(&temporary, target, &dir)?;
        Ok(pages)
    });
    match copied {
        Ok(pages) => {
            let bytes = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
            Ok(Copied { bytes, pages, elapsed: started.elapsed() })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            let _ = std::fs::remove_file(side(&temporary, "-journal"));
            Err(e)
        }
    }
}

/// The server comes first: this process runs SCHED_BATCH at nice 10, so on a shared
/// core its wake-ups never preempt the event loop (as the checkpoint thread does).
fn step_aside() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is this process; `param` is a valid sched_param for the call.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The online backup into `temporary`, from one read snapshot; returns the pages copied.
fn copy(source: &Path, temporary: &Path) -> Result<i64, String> {
    // Read-write without CREATE: a WAL database needs its shared-memory file, which a
    // read-only connection may not be able to create; nothing is written through it.
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("cannot open database {}: {e}", source.display()))?;
    from.busy_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let is_ours: bool = from
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n == 1)
        .map_err(|e| format!("{} is not a readable SQLite database: {e}", source.display()))?;
    if !is_ours {
        return Err(format!("{} is not a switchboard database", source.display()));
    }
    // The snapshot: held until the copy is complete (see the module's comment).
    from.execute_batch("BEGIN DEFERRED; SELECT count(*) FROM sqlite_master;")
        .map_err(|e| format!("cannot read database {}: {e}", source.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temporary)
        .map_err(|e| format!("cannot create {}: {e}", temporary.display()))?;
    let mut to = Connection::open(temporary).map_err(|e| format!("cannot open {}: {e}", temporary.display()))?;
    let pages = {
        let backup = Backup::new(&from, &mut to).map_err(|e| format!("cannot start the backup: {e}"))?;
        loop {
            match backup.step(PAGES_PER_STEP) {
                Ok(StepResult::Done) => break,
                Ok(StepResult::More | StepResult::Busy | StepResult::Locked) => std::thread::sleep(PAUSE),
                Ok(_) => std::thread::sleep(PAUSE),
                Err(e) => return Err(format!("the backup failed: {e}")),
            }
        }
        backup.progress().pagecount as i64
    };
    let _ = from.execute_batch("COMMIT");
    drop(from);
    // The copy's header says WAL, as the source's does; a rollback journal makes it one
    // standalone file that needs no -wal or -shm to be read.
    to.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(|e| format!("cannot finish {}: {e}", temporary.display()))?;
    let problems: Vec<String> = to
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |row| row.get::<_, String>(0))?.collect())
        .map_err(|e| format!("cannot check the copy {}: {e}", temporary.display()))?;
    if problems.first().map(String::as_str) != Some("ok") {
        return Err(format!(
            "the copy failed its integrity check ({} problems, the first: {}); the database itself may be damaged: check it with SWITCHBOARD_DB_CHECK=full",
            problems.len(),
            problems.first().map_or("none reported", String::as_str)
        ));
    }
    to.close().map_err(|(_, e)| format!("cannot close {}: {e}", temporary.display()))?;
    Ok(pages)
}

/// fsync the copy, rename it over `target`, fsync the directory.
fn finish(temporary: &Path, target: &Path, dir: &Path) -> Result<(), String> {
    let file = std::fs::File::open(temporary).map_err(|e| format!("cannot open {}: {e}", temporary.display()))?;
    file.sync_all().map_err(|e| format!("cannot sync {}: {e}", temporary.display()))?;
    std::fs::rename(temporary, target)
        .map_err(|e| format!("cannot rename {} to {}: {e}", temporary.display(), target.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_complete_standalone_and_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut store = crate::store::Store::open(&db, false).unwrap();
        store.put_setting_now("k", "v").unwrap();
        let target = dir.path().join("copy.db");
        let copied = backup(&db, &target, false).unwrap();
        assert!(copied.bytes > 0 && copied.pages > 0);
        assert!(!side(&target, "-wal").exists());
        let conn = Connection::open_with_flags(&target, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let value: String = conn.query_row("SELECT value FROM settings WHERE key = 'k'", [], |r| r.get(0)).unwrap();
        assert_eq!(value, "v");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete");
        assert!(backup(&db, &target, false).unwrap_err().contains("--overwrite"));
        backup(&db, &target, true).unwrap();
        assert!(backup(&db, &db, true).unwrap_err().contains("the database itself"));
        assert!(
            backup(&dir.path().join("none.db"), &dir.path().join("x.db"), false).unwrap_err().contains("no database")
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
