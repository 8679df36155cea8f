//! The database file itself, apart from what is in it: one server at a time (an
//! exclusive lock), private permissions (it holds the JWT secret and the API key), and
//! noticing when the file is removed or replaced under a running server.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Held for the life of the server: an exclusive `flock` on the database file. A second
/// server on the same file would split every room in two (each has its own hub) and
/// keep the WAL from ever restarting; it is refused at start instead. The lock is on
/// the open file description, independent of SQLite's own (POSIX) locks, and goes with
/// the process, however it ends.
pub struct DbFile {
    _lock: File,
    path: PathBuf,
    /// (device, inode) of the file when it was locked.
    identity: (u64, u64),
}

impl DbFile {
    /// Creates the file when missing (mode 0600: SQLite gives the WAL and shared-memory
    /// files the database's mode), tightens a group- or world-readable one to 0600,
    /// and takes the lock. Errors name the file and say what to do.
    pub fn lock(path: &Path) -> Result<DbFile, String> {
        let file =
            create_private(path).map_err(|e| format!("cannot open database {} for writing: {e}", path.display()))?;
        // SAFETY: a plain flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                format!("database {} is in use by another switchboard process; stop it first", path.display())
            } else {
                format!("cannot lock database {}: {e}", path.display())
            });
        }
        let meta = file.metadata().map_err(|e| format!("cannot stat database {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            // It holds the JWT secret and the API key: anyone who can read it can mint
            // tokens for any user.
            match file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {
                    for suffix in ["-wal", "-shm"] {
                        let side = side_file(path, suffix);
                        if side.exists() {
                            let _ = std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600));
                        }
                    }
                    log::warn!("database {} was readable by others (mode {mode:o}); made it 0600", path.display());
                }
                // Not ours to change (another owner): say so, and run as configured.
                Err(e) => log::warn!(
                    "database {} is readable by others (mode {mode:o}) and cannot be made private: {e}; it holds the JWT secret and the API key",
                    path.display()
                ),
            }
        }
        Ok(DbFile { _lock: file, path: path.to_path_buf(), identity: (meta.dev(), meta.ino()) })
    }

    /// Whether the path still names the file that was opened; `Err` says what happened
    /// (removed with its directory, or replaced by another file).
    pub fn still_there(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => Ok(()),
            Ok(_) => Err(format!("database {} was replaced by another file", self.path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(format!("database {} was removed", self.path.display()))
            }
            Err(e) => Err(format!("database {} cannot be checked: {e}", self.path.display())),
        }
    }
}

/// For a reader that needs the file at rest (`switchboard migrate`): opens it read-only
/// and takes a shared `flock`, which a running server's exclusive one refuses (and which
/// keeps a server from starting on it meanwhile). Held until the `File` is dropped.
pub fn lock_shared(path: &Path) -> Result<File, String> {
    let file = File::open(path).map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
    // SAFETY: a plain flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            format!("database {} is in use by a running switchboard; stop it first", path.display())
        } else {
            format!("cannot lock database {}: {e}", path.display())
        });
    }
    Ok(file)
}

/// Opens the database file for writing, creating it with mode 0600 when missing: it holds
/// the JWT secret and the API key, and SQLite gives the WAL and shared-memory files the
/// database's mode.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let first = DbFile::lock(&path).unwrap();
        let error = DbFile::lock(&path).err().unwrap();
        assert!(error.contains("in use by another switchboard"), "{error}");
        drop(first);
        DbFile::lock(&path).unwrap();
    }

    #[test]
    fn a_reader_at_rest_and_a_server_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = DbFile::lock(&path).unwrap();
        assert!(lock_shared(&path).unwrap_err().contains("in use by a running switchboard"));
        drop(server);
        let reader = lock_shared(&path).unwrap();
        assert!(lock_shared(&path).is_ok(), "readers share");
        assert!(DbFile::lock(&path).err().unwrap().contains("in use by another switchboard"));
        drop(reader);
    }

    #[test]
    fn the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(DbFile::lock(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(DbFile::lock(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_removed_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let file = DbFile::lock(&path).unwrap();
        assert!(file.still_there().is_ok());
        std::fs::remove_file(&path).unwrap();
        assert!(file.still_there().unwrap_err().contains("was removed"));
        std::fs::write(&path, b"").unwrap();
        assert!(file.still_there().unwrap_err().contains("replaced"));
    }
}
