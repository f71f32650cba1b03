//! The build cache index: step cache key → the layer that step produced (or "no layer").
//!
//! One JSON file, `root/cache/index.json`, read under a shared lock and rewritten atomically
//! under an exclusive one (read-modify-write), so concurrent builds sharing a root never lose
//! entries. The layers it names are GC roots (see [`BuildCache::blobs`]); `kiln builder prune`
//! removes entries, least recently used first, then GC reclaims their blobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::image::Descriptor;
use super::lock::{write_atomic, FileLock, LockError};

/// Errors of the build cache index.
#[derive(Debug, thiserror::Error)]
pub enum BuildCacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "build cache index {path} is corrupt: {source} (remove it with `kiln builder prune --all`)"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
}

pub type Result<T, E = BuildCacheError> = std::result::Result<T, E>;

/// A layer in the cache: its uncompressed digest and its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub diff_id: Digest,
    pub blob: Descriptor,
    /// The snapshot (chain ID) holding the layer: the only copy of a layer built here until
    /// an export writes its blob (see `cache::layer_blob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Digest>,
}

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// None: the step changed no file.
    pub layer: Option<CachedLayer>,
    /// The instruction, for `kiln builder prune` and `--explain` messages.
    pub description: String,
    pub created: i64,
    pub last_used: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    entries: BTreeMap<Digest, CacheRecord>,
}

/// The build cache index of one root. Lookups during a build use one snapshot of the index
/// (read once); uses are recorded in memory and written by [`BuildCache::flush_uses`].
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
    snapshot: std::sync::Arc<std::sync::OnceLock<BTreeMap<Digest, CacheRecord>>>,
    used: std::sync::Arc<std::sync::Mutex<Vec<Digest>>>,
    /// Every key this build hit or recorded (what `--cache-to` exports).
    touched: std::sync::Arc<std::sync::Mutex<Vec<Digest>>>,
}

impl BuildCache {
    pub fn open(root: &Path) -> Result<BuildCache> {
        let dir = root.join("cache");
        std::fs::create_dir_all(&dir).map_err(|source| BuildCacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(BuildCache {
            dir,
            snapshot: Default::default(),
            used: Default::default(),
            touched: Default::default(),
        })
    }

    /// A cached record for `key`, from the snapshot of the index taken at the first lookup
    /// (plus what this build recorded since).
    pub fn lookup(&self, key: &Digest) -> Result<Option<CacheRecord>> {
        if self.snapshot.get().is_none() {
            let entries = self.entries()?;
            let _ = self.snapshot.set(entries);
        }
        Ok(self.snapshot.get().and_then(|m| m.get(key).cloned()))
    }

    /// Notes that a record was used (written to the index by [`flush_uses`](Self::flush_uses)).
    pub fn mark_used(&self, key: &Digest) {
        if let Ok(mut u) = self.used.lock() {
            u.push(key.clone());
        }
        self.touch_key(key);
    }

    fn touch_key(&self, key: &Digest) {
        if let Ok(mut t) = self.touched.lock() {
            if !t.contains(key) {
                t.push(key.clone());
            }
        }
    }

    /// The keys this value hit ([`mark_used`](Self::mark_used)) or recorded
    /// ([`put`](Self::put)), in order: the steps of the build that used it.
    pub fn touched(&self) -> Vec<Digest> {
        self.touched.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Writes the last-used times of the records used since the last flush.
    pub fn flush_uses(&self) -> Result<()> {
        let keys = match self.used.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return Ok(()),
        };
        self.touch(&keys)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("index.lock")
    }

    fn read(&self) -> Result<IndexFile> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| BuildCacheError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile {
                version: 1,
                entries: BTreeMap::new(),
            }),
            Err(source) => Err(BuildCacheError::Io { path, source }),
        }
    }

    /// Every entry (a consistent snapshot).
    pub fn entries(&self) -> Result<BTreeMap<Digest, CacheRecord>> {
        let _lock = FileLock::shared(&self.lock_path())?;
        Ok(self.read()?.entries)
    }

    /// Applies `f` to the entries under the exclusive lock and writes the result atomically.
    pub fn update<R>(&self, f: impl FnOnce(&mut BTreeMap<Digest, CacheRecord>) -> R) -> Result<R> {
        let _lock = FileLock::exclusive(&self.lock_path())?;
        let mut index = self.read()?;
        let r = f(&mut index.entries);
        index.version = 1;
        let bytes = serde_json::to_vec(&index).map_err(|source| BuildCacheError::Corrupt {
            path: self.index_path(),
            source,
        })?;
        write_atomic(&self.index_path(), &bytes).map_err(|source| BuildCacheError::Io {
            path: self.index_path(),
            source,
        })?;
        Ok(r)
    }

    /// Records what a step produced.
    /// `created` is the step's time as its image history records it (unix seconds), so that a
    /// later build that takes the step from the cache records the same time (a fully cached
    /// rebuild gives the same image ID, as with docker).
    pub fn put(
        &self,
        key: &Digest,
        layer: Option<CachedLayer>,
        description: &str,
        created: i64,
    ) -> Result<()> {
        self.touch_key(key);
        let t = super::image::unix_now();
        self.update(|entries| {
            entries.insert(
                key.clone(),
                CacheRecord {
                    layer,
                    description: description.to_string(),
                    created,
                    last_used: t,
                },
            );
        })
    }

    /// Marks entries as used now (for least-recently-used pruning).
    pub fn touch(&self, keys: &[Digest]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let t = super::image::unix_now();
        self.update(|entries| {
            for k in keys {
                if let Some(r) = entries.get_mut(k) {
                    r.last_used = t;
                }
            }
        })
    }

    /// The snapshots the cache refers to: garbage collection keeps them.
    pub fn chains(&self) -> Result<Vec<Digest>> {
        Ok(self
            .entries()?
            .into_values()
            .filter_map(|r| r.layer.and_then(|l| l.chain))
            .collect())
    }

    /// The blobs the cache refers to: roots for garbage collection.
    pub fn blobs(&self) -> Result<Vec<Digest>> {
        Ok(self
            .entries()?
            .into_values()
            .filter_map(|r| r.layer.map(|l| l.blob.digest))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> CachedLayer {
        CachedLayer {
            chain: None,
            diff_id: Digest::of(&[n]),
            blob: Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: Digest::of(&[n]),
                size: 1,
                platform: None,
                annotations: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn put_get_and_concurrent_updates() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BuildCache::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let cache = cache.clone();
                s.spawn(move || {
                    for i in 0..10u8 {
                        cache
                            .put(&Digest::of(&[t, i]), Some(layer(t)), "COPY", 1)
                            .unwrap();
                    }
                });
            }
        });
        let entries = cache.entries().unwrap();
        assert_eq!(entries.len(), 80);
        assert_eq!(cache.blobs().unwrap().len(), 80);
        std::fs::write(dir.path().join("cache/index.json"), "{").unwrap();
        assert!(matches!(
            cache.entries(),
            Err(BuildCacheError::Corrupt { .. })
        ));
    }
}
