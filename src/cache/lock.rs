//! Cross-process coordination on a shared store root.
//!
//! Several kiln processes (a `kiln build`, a `kiln pull`, a `kiln prune`, the daemon) may use
//! the same `--root` at once. They coordinate through two primitives, both here:
//!
//! - [`FileLock`]: an advisory `flock(2)` lock on a small lock file, shared or exclusive,
//!   released when the guard is dropped (or when the process dies: the kernel drops `flock`
//!   locks with the last descriptor, so a crashed process never leaves a lock behind).
//!   `flock` locks belong to the *open file description*, so two guards taken in the same
//!   process (on two threads, or twice on one thread) conflict exactly as two processes do.
//!   Blocking acquisition sleeps in the kernel; it never spins.
//! - [`write_atomic`]: replace a small file so that readers see either the old or the new
//!   content, never a torn mix, and the new content survives a crash once the call returns
//!   (temp file in the same directory, fsync, rename, fsync the directory).
//!
//! Lock files are never deleted: deleting a lock file while another process waits on it
//! would let two processes "hold" the same lock on two different inodes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or created.
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `flock` itself failed (not "would block", which try_* report as `Ok(None)`).
    #[error("cannot take {mode} lock on {path}: {source}")]
    Flock {
        path: PathBuf,
        mode: LockMode,
        #[source]
        source: Errno,
    },
}

pub type Result<T> = std::result::Result<T, LockError>;

/// Shared (many holders) or exclusive (one holder, no shared holders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        })
    }
}

/// A held advisory lock on a file; unlocked when dropped.
#[derive(Debug)]
pub struct FileLock {
    // Dropping the `Flock` unlocks, then closes the descriptor.
    _file: Flock<File>,
    path: PathBuf,
    mode: LockMode,
}

impl FileLock {
    /// Waits for an exclusive lock on `path` (created if missing; its directory must exist).
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        Self::wait(path, LockMode::Exclusive)
    }

    /// Waits for a shared lock on `path` (created if missing; its directory must exist).
    pub fn shared(path: &Path) -> Result<FileLock> {
        Self::wait(path, LockMode::Shared)
    }

    /// Takes an exclusive lock if nobody holds a conflicting one; `Ok(None)` otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        Self::acquire(path, LockMode::Exclusive, false)
    }

    /// Takes a shared lock unless an exclusive one is held; `Ok(None)` otherwise.
    pub fn try_shared(path: &Path) -> Result<Option<FileLock>> {
        Self::acquire(path, LockMode::Shared, false)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    fn wait(path: &Path, mode: LockMode) -> Result<FileLock> {
        match Self::acquire(path, mode, true)? {
            Some(lock) => Ok(lock),
            // A blocking flock never reports "would block"; treat it as a failed flock anyway.
            None => Err(LockError::Flock {
                path: path.to_path_buf(),
                mode,
                source: Errno::EWOULDBLOCK,
            }),
        }
    }

    /// `Ok(None)` only when `block` is false and the lock is held elsewhere.
    fn acquire(path: &Path, mode: LockMode, block: bool) -> Result<Option<FileLock>> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let arg = match (mode, block) {
            (LockMode::Shared, true) => FlockArg::LockShared,
            (LockMode::Exclusive, true) => FlockArg::LockExclusive,
            (LockMode::Shared, false) => FlockArg::LockSharedNonblock,
            (LockMode::Exclusive, false) => FlockArg::LockExclusiveNonblock,
        };
        loop {
            match Flock::lock(file, arg) {
                Ok(locked) => {
                    return Ok(Some(FileLock {
                        _file: locked,
                        path: path.to_path_buf(),
                        mode,
                    }))
                }
                // A signal interrupted the wait: wait again.
                Err((f, Errno::EINTR)) => file = f,
                Err((_, Errno::EWOULDBLOCK)) if !block => return Ok(None),
                Err((_, source)) => {
                    return Err(LockError::Flock {
                        path: path.to_path_buf(),
                        mode,
                        source,
                    })
                }
            }
        }
    }
}

/// Fsyncs a directory, making renames and unlinks inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `path` with `bytes` (mode 0644): temp file in the same directory,
/// write, fsync, rename over `path`, fsync the directory. Readers see the old or the new
/// content, never a partial file. On error the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` like [`write_atomic`] (temp file + rename: readers see the old
/// or the new content, never a partial file) but without fsyncs, for state that is worthless
/// after a crash or rebuilt on demand: lease files (a crash makes them stale anyway), the
/// context hash index, `--explain` records. A crash may lose the update.
pub fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let s1 = FileLock::shared(&p).unwrap();
        let s2 = FileLock::try_shared(&p).unwrap();
        assert!(s2.is_some(), "two shared locks coexist");
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(s1);
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(s2);
        let ex = FileLock::try_exclusive(&p).unwrap().expect("free now");
        assert_eq!(ex.mode(), LockMode::Exclusive);
        assert_eq!(ex.path(), p);
        assert!(FileLock::try_shared(&p).unwrap().is_none());
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
    }

    #[test]
    fn blocking_lock_waits_for_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = FileLock::exclusive(&p).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let t = {
            let (p, got) = (p.clone(), got.clone());
            std::thread::spawn(move || {
                let _l = FileLock::shared(&p).unwrap();
                got.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !got.load(Ordering::SeqCst),
            "shared lock granted while exclusive held"
        );
        drop(held);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir/x.lock");
        let err = FileLock::exclusive(&p).unwrap_err();
        assert!(err.to_string().contains("missing-dir/x.lock"), "{err}");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }
}
