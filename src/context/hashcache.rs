//! Incremental context hashing: a persistent index `(path, size, mtime, ctime, inode, device) →
//! content digest`, so an unchanged 20,000-file context is verified with one `stat` per file
//! and a changed file costs one read.
//!
//! Racy entries (git's "racily clean" problem): a file modified again within the timestamp
//! granularity of the moment it was hashed would keep its old stat data. Records whose mtime or
//! ctime is not older than the moment the index was written are therefore never trusted; they
//! are re-hashed (and recorded again) on the next build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::hash::{FileHasher, PlainFileHasher};
use super::{ContextEntry, Result};
use crate::cache::digest::Digest;

/// The stat data a record is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stat {
    /// From the `lstat` the walk made (the entry's size is the file's length).
    fn of_entry(e: &ContextEntry) -> Stat {
        Stat {
            size: e.size,
            mtime_ns: e.stat.mtime_ns,
            ctime_ns: e.stat.ctime_ns,
            ino: e.stat.ino,
            dev: e.stat.dev,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    stat: Stat,
    digest: Digest,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// When the index was written (ns since the epoch): records not older are racy.
    written_ns: i128,
    records: HashMap<PathBuf, Record>,
}

/// A [`FileHasher`] backed by a persistent stat → digest index. Call [`save`](Self::save) at
/// the end of a build to keep what was learnt.
#[derive(Debug)]
pub struct CachingFileHasher {
    path: PathBuf,
    written_ns: i128,
    records: RwLock<HashMap<PathBuf, Record>>,
    dirty: AtomicBool,
    /// Paths already verified (or hashed) in this run: asked again, they are answered without
    /// another `stat` (a build asks for the same files for its key and for `--explain`).
    verified: RwLock<HashMap<PathBuf, Digest>>,
    /// Files actually read in this run (for tests and `--debug` statistics).
    reads: std::sync::atomic::AtomicUsize,
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl CachingFileHasher {
    /// Loads the index at `path` (a missing or unreadable index starts empty: it is a cache).
    pub fn open(path: &Path) -> CachingFileHasher {
        let index: IndexFile = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|i: &IndexFile| i.version == 1)
            .unwrap_or_default();
        CachingFileHasher {
            path: path.to_path_buf(),
            written_ns: index.written_ns,
            records: RwLock::new(index.records),
            dirty: AtomicBool::new(false),
            verified: RwLock::new(HashMap::new()),
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The index file for a context directory under a kiln root.
    pub fn index_path(kiln_root: &Path, context_dir: &Path) -> PathBuf {
        let abs = std::fs::canonicalize(context_dir).unwrap_or_else(|_| context_dir.to_path_buf());
        let key = Digest::of(abs.as_os_str().as_encoded_bytes());
        kiln_root
            .join("cache")
            .join("context")
            .join(format!("{}.json", &key.hex()[..32]))
    }

    /// How many files were read (not answered from the index) so far.
    pub fn files_read(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// Writes the index if anything changed (atomically: temp file + rename).
    pub fn save(&self) -> std::io::Result<()> {
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let records = self
            .records
            .read()
            .map_err(|_| std::io::Error::other("hash index lock poisoned"))?;
        let index = IndexFile {
            version: 1,
            written_ns: now_ns(),
            records: records.clone(),
        };
        let bytes = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::cache::lock::write_replace(&self.path, &bytes)
    }
}

impl FileHasher for CachingFileHasher {
    fn hash_file(&self, entry: &ContextEntry) -> Result<Digest> {
        if let Some(d) = self
            .verified
            .read()
            .ok()
            .and_then(|v| v.get(&entry.path).cloned())
        {
            return Ok(d);
        }
        let digest = self.hash_uncached(entry)?;
        if let Ok(mut v) = self.verified.write() {
            v.insert(entry.path.clone(), digest.clone());
        }
        Ok(digest)
    }
}

impl CachingFileHasher {
    fn hash_uncached(&self, entry: &ContextEntry) -> Result<Digest> {
        let stat = Stat::of_entry(entry);
        let trusted = stat.mtime_ns < self.written_ns && stat.ctime_ns < self.written_ns;
        if trusted {
            if let Ok(records) = self.records.read() {
                if let Some(r) = records.get(&entry.path) {
                    if r.stat == stat {
                        return Ok(r.digest.clone());
                    }
                }
            }
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let digest = PlainFileHasher.hash_file(entry)?;
        if let Ok(mut records) = self.records.write() {
            records.insert(
                entry.path.clone(),
                Record {
                    stat,
                    digest: digest.clone(),
                },
            );
            self.dirty.store(true, Ordering::Release);
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{BuildContext, ContextSource};
    use std::sync::Arc;

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let ctx_dir = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx_dir).unwrap();
        for i in 0..50 {
            std::fs::write(ctx_dir.join(format!("f{i}")), format!("content {i}")).unwrap();
        }
        let index = dir.path().join("index.json");
        // Files written "now" are racy for an index written now: age them first.
        let old = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
        for i in 0..50 {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &ctx_dir.join(format!("f{i}")),
                &old,
                &old,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        }
        let digest_with = |hasher: Arc<CachingFileHasher>| {
            let ctx = BuildContext::open(ContextSource::Dir(ctx_dir.clone()), None)
                .unwrap()
                .with_hasher(hasher.clone());
            let entries = ctx.walk(".", None).unwrap();
            let d = ctx.digest_of(&entries).unwrap();
            hasher.save().unwrap();
            d
        };
        let first = Arc::new(CachingFileHasher::open(&index));
        let d1 = digest_with(first.clone());
        assert_eq!(first.files_read(), 50);
        // ctime is "now" (utimensat changed it): the second run still re-reads them once...
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = Arc::new(CachingFileHasher::open(&index));
        let _ = digest_with(second.clone());
        // ...and from then on nothing is read.
        let third = Arc::new(CachingFileHasher::open(&index));
        let d3 = digest_with(third.clone());
        assert_eq!(third.files_read(), 0);
        assert_eq!(d1, d3);
        // One changed file costs one read and changes the digest.
        std::fs::write(ctx_dir.join("f7"), "changed").unwrap();
        let fourth = Arc::new(CachingFileHasher::open(&index));
        let d4 = digest_with(fourth.clone());
        assert_eq!(fourth.files_read(), 1);
        assert_ne!(d4, d3);
    }

    #[test]
    fn a_corrupt_index_is_just_a_cold_cache() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.json");
        std::fs::write(&index, "{not json").unwrap();
        let h = CachingFileHasher::open(&index);
        assert_eq!(h.records.read().unwrap().len(), 0);
    }
}
