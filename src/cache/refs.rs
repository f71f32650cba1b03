//! Image references: the "image store" index mapping names such as
//! `docker.io/library/app:latest` to the digest of a manifest (or index) in the content store.
//! Refs are GC roots: a blob reachable from a ref is never collected.
//!
//! Names arrive already normalized (the caller owns reference parsing); this module only
//! stores them. The whole index is one small JSON file, `root/refs.json`:
//!
//! ```json
//! { "version": 1, "refs": { "docker.io/library/app:latest": { "digest": "sha256:…", "updated": 1700000000 } } }
//! ```
//!
//! Concurrency across processes: readers take a shared lock on `root/refs.lock`; writers
//! take it exclusively and do read-modify-write ([`RefStore::update`]), so concurrent updates
//! from several kiln processes are serialised and none is lost. The file is replaced
//! atomically (temp file, fsync, rename, fsync dir), so even a reader that skips the lock
//! never sees a torn file. The lock lives in a separate file because `refs.json` is replaced
//! by rename: a lock on it would be held on an inode that no longer has the name.
//!
//! A corrupt `refs.json` is an error naming the file, never silently reset: it is the only
//! record of which images exist, and resetting it would let GC delete every image.
//!
//! Lock order: do not create blob writers or run GC inside an [`RefStore::update`] closure
//! (GC takes `gc.lock` and then reads refs; the reverse order here could deadlock).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::lock::{write_atomic, FileLock, LockError};

/// The current on-disk format version of `refs.json`.
const FORMAT_VERSION: u32 = 1;

/// Errors of the ref store; each names the file or the ref involved.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image reference index {path} is corrupt (fix or remove it by hand; kiln will not reset it): {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image reference index {path} has format version {found}, this kiln understands {FORMAT_VERSION}")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("cannot encode image reference index {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid image reference name {name:?}: must be non-empty without control characters")]
    InvalidName { name: String },
    #[error(transparent)]
    Lock(#[from] LockError),
}

pub type Result<T> = std::result::Result<T, RefError>;

/// What a name points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    /// The manifest (or index) digest.
    pub digest: Digest,
    /// When the ref was last set, in unix seconds.
    pub updated: i64,
}

#[derive(Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, RefEntry>,
}

/// The ref index of one store root. Cheap to clone; every call goes to disk, so several
/// processes see each other's changes.
#[derive(Debug, Clone)]
pub struct RefStore {
    file: PathBuf,
    lock: PathBuf,
}

impl RefStore {
    /// Opens the index under `root` (creating `root` if needed; a missing `refs.json` is an
    /// empty index).
    pub fn open(root: &Path) -> Result<RefStore> {
        std::fs::create_dir_all(root).map_err(|source| RefError::Io {
            op: "create directory",
            path: root.to_path_buf(),
            source,
        })?;
        Ok(RefStore {
            file: root.join("refs.json"),
            lock: root.join("refs.lock"),
        })
    }

    /// `root/refs.json`.
    pub fn path(&self) -> &Path {
        &self.file
    }

    pub fn get(&self, name: &str) -> Result<Option<RefEntry>> {
        Ok(self.list()?.remove(name))
    }

    /// All refs, sorted by name.
    pub fn list(&self) -> Result<BTreeMap<String, RefEntry>> {
        let _lock = FileLock::shared(&self.lock)?;
        self.load()
    }

    /// Points `name` at `digest`; returns the previous entry.
    pub fn set(&self, name: &str, digest: &Digest) -> Result<Option<RefEntry>> {
        validate_name(name)?;
        let entry = RefEntry {
            digest: digest.clone(),
            updated: super::image::unix_now(),
        };
        self.update(|refs| refs.insert(name.to_string(), entry))
    }

    /// Removes `name`; returns the entry it had.
    pub fn remove(&self, name: &str) -> Result<Option<RefEntry>> {
        self.update(|refs| refs.remove(name))
    }

    /// Atomic read-modify-write of the whole index under the exclusive lock. The file is
    /// rewritten only if `f` changed something. Names added by `f` are validated; if one is
    /// invalid nothing is written.
    pub fn update<R>(&self, f: impl FnOnce(&mut BTreeMap<String, RefEntry>) -> R) -> Result<R> {
        let _lock = FileLock::exclusive(&self.lock)?;
        let before = self.load()?;
        let mut refs = before.clone();
        let out = f(&mut refs);
        if refs != before {
            for name in refs.keys().filter(|k| !before.contains_key(*k)) {
                validate_name(name)?;
            }
            self.store(refs)?;
        }
        Ok(out)
    }

    /// Reads the index; the caller holds the lock.
    fn load(&self) -> Result<BTreeMap<String, RefEntry>> {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(RefError::Io {
                    op: "read",
                    path: self.file.clone(),
                    source,
                })
            }
        };
        let parsed: RefsFile = serde_json::from_slice(&bytes).map_err(|source| {
            tracing::error!(path = %self.file.display(), %source, "corrupt refs index");
            RefError::Corrupt {
                path: self.file.clone(),
                source,
            }
        })?;
        if parsed.version != FORMAT_VERSION {
            return Err(RefError::UnsupportedVersion {
                path: self.file.clone(),
                found: parsed.version,
            });
        }
        Ok(parsed.refs)
    }

    /// Replaces the index atomically; the caller holds the exclusive lock.
    fn store(&self, refs: BTreeMap<String, RefEntry>) -> Result<()> {
        let file = RefsFile {
            version: FORMAT_VERSION,
            refs,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|source| RefError::Encode {
            path: self.file.clone(),
            source,
        })?;
        bytes.push(b'\n');
        write_atomic(&self.file, &bytes).map_err(|source| RefError::Io {
            op: "write",
            path: self.file.clone(),
            source,
        })
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(RefError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set in the environment of a child test process that acts as a concurrent writer:
    /// `<root>|<worker id>|<iterations>`.
    const WORKER_ENV: &str = "KILN_TEST_REFS_WORKER";
    const COUNTER: &str = "test/counter";

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn set_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let refs = RefStore::open(dir.path()).unwrap();
        assert_eq!(refs.list().unwrap(), BTreeMap::new());
        assert_eq!(refs.get("docker.io/library/app:latest").unwrap(), None);
        assert_eq!(
            refs.set("docker.io/library/app:latest", &d("one")).unwrap(),
            None
        );
        let prev = refs
            .set("docker.io/library/app:latest", &d("two"))
            .unwrap()
            .unwrap();
        assert_eq!(prev.digest, d("one"));
        assert!(prev.updated > 1_600_000_000);
        refs.set("docker.io/library/app:1.0", &d("one")).unwrap();
        let all = refs.list().unwrap();
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["docker.io/library/app:1.0", "docker.io/library/app:latest"]
        );
        assert_eq!(
            refs.get("docker.io/library/app:latest")
                .unwrap()
                .unwrap()
                .digest,
            d("two")
        );
        assert_eq!(
            refs.remove("docker.io/library/app:1.0")
                .unwrap()
                .unwrap()
                .digest,
            d("one")
        );
        assert_eq!(refs.remove("docker.io/library/app:1.0").unwrap(), None);
        // A second handle (another process, in effect) sees the same state.
        let again = RefStore::open(dir.path()).unwrap();
        assert_eq!(again.list().unwrap().len(), 1);
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn update_returns_value_and_skips_noop_writes() {
        let dir = tempfile::tempdir().unwrap();
        let refs = RefStore::open(dir.path()).unwrap();
        let n = refs.update(|m| m.len()).unwrap();
        assert_eq!(n, 0);
        assert!(!refs.path().exists(), "a no-op update writes nothing");
        refs.update(|m| {
            m.insert(
                "a".into(),
                RefEntry {
                    digest: d("a"),
                    updated: 1,
                },
            );
            m.insert(
                "b".into(),
                RefEntry {
                    digest: d("b"),
                    updated: 2,
                },
            );
        })
        .unwrap();
        assert_eq!(refs.list().unwrap().len(), 2);
        let err = refs
            .update(|m| {
                m.insert(
                    String::new(),
                    RefEntry {
                        digest: d("c"),
                        updated: 3,
                    },
                )
            })
            .unwrap_err();
        assert!(matches!(err, RefError::InvalidName { .. }));
        assert_eq!(
            refs.list().unwrap().len(),
            2,
            "an invalid update writes nothing"
        );
    }

    #[test]
    fn corrupt_index_is_an_error_naming_the_file_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let refs = RefStore::open(dir.path()).unwrap();
        refs.set("a", &d("a")).unwrap();
        std::fs::write(refs.path(), b"{\"version\":1,\"refs\":{\"a\":").unwrap();
        for err in [
            refs.list().unwrap_err(),
            refs.get("a").unwrap_err(),
            refs.set("b", &d("b")).unwrap_err(),
        ] {
            assert!(matches!(err, RefError::Corrupt { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&refs.path().display().to_string()),
                "{err}"
            );
        }
        assert_eq!(
            std::fs::read(refs.path()).unwrap(),
            b"{\"version\":1,\"refs\":{\"a\":",
            "never reset"
        );
        std::fs::write(refs.path(), b"{\"version\":9,\"refs\":{}}").unwrap();
        assert!(matches!(
            refs.list(),
            Err(RefError::UnsupportedVersion { found: 9, .. })
        ));
        // A bad digest inside is corruption too, not a panic.
        std::fs::write(
            refs.path(),
            br#"{"version":1,"refs":{"a":{"digest":"sha256:nothex","updated":1}}}"#,
        )
        .unwrap();
        assert!(matches!(refs.list(), Err(RefError::Corrupt { .. })));
    }

    /// One writer's share of the concurrency test: distinct keys (lost inserts would show as
    /// missing keys) and increments of one shared counter kept in `updated` (a lost
    /// read-modify-write would show as a short count).
    fn work(root: &Path, worker: &str, iterations: usize) {
        let refs = RefStore::open(root).unwrap();
        for i in 0..iterations {
            refs.set(&format!("{worker}/img:{i}"), &d(&format!("{worker}{i}")))
                .unwrap();
            refs.update(|m| {
                let e = m.entry(COUNTER.to_string()).or_insert(RefEntry {
                    digest: d("counter"),
                    updated: 0,
                });
                e.updated += 1;
            })
            .unwrap();
        }
    }

    /// Entry point of the worker processes; a no-op in a normal test run.
    #[test]
    fn refs_worker_process() {
        let Ok(spec) = std::env::var(WORKER_ENV) else {
            return;
        };
        let parts: Vec<&str> = spec.split('|').collect();
        assert_eq!(parts.len(), 3, "bad {WORKER_ENV}={spec}");
        work(Path::new(parts[0]), parts[1], parts[2].parse().unwrap());
    }

    #[test]
    fn concurrent_updates_from_threads_and_processes_lose_nothing() {
        const THREADS: usize = 8;
        const PROCESSES: usize = 3;
        const ITERATIONS: usize = 30;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let test_name = concat!(module_path!(), "::refs_worker_process");
        // Test names omit the crate name.
        let test_name = test_name
            .split_once("::")
            .map_or(test_name, |(_, rest)| rest);
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..PROCESSES)
            .map(|p| {
                Command::new(&exe)
                    .args([test_name, "--exact", "--test-threads=1", "--nocapture"])
                    .env(
                        WORKER_ENV,
                        format!("{}|proc{p}|{ITERATIONS}", root.display()),
                    )
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A lock-free reader: the file must parse whenever it exists.
            let reader = s.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) {
                    if let Ok(bytes) = std::fs::read(root.join("refs.json")) {
                        serde_json::from_slice::<RefsFile>(&bytes).expect("torn refs.json");
                        reads += 1;
                    }
                }
                reads
            });
            let writers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let root = &root;
                    s.spawn(move || work(root, &format!("thread{t}"), ITERATIONS))
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            for mut c in children {
                assert!(c.wait().unwrap().success(), "worker process failed");
            }
            done.store(true, Ordering::SeqCst);
            assert!(reader.join().unwrap() > 0);
        });
        let refs = RefStore::open(&root).unwrap().list().unwrap();
        let workers = (0..THREADS)
            .map(|t| format!("thread{t}"))
            .chain((0..PROCESSES).map(|p| format!("proc{p}")));
        for w in workers {
            for i in 0..ITERATIONS {
                let e = refs
                    .get(&format!("{w}/img:{i}"))
                    .unwrap_or_else(|| panic!("lost {w}/img:{i}"));
                assert_eq!(e.digest, d(&format!("{w}{i}")));
            }
        }
        assert_eq!(refs.len(), (THREADS + PROCESSES) * ITERATIONS + 1);
        assert_eq!(
            refs[COUNTER].updated,
            ((THREADS + PROCESSES) * ITERATIONS) as i64
        );
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "refs.json" && n != "refs.lock")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
}
