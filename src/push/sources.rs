//! Which repositories a blob is known to exist in (`root/registry/blob-sources.json`), so a
//! push to another repository of the same registry can mount it instead of uploading it
//! (docker's "Mounted from …"). Filled by pull and push; a hint only: a failed mount falls
//! back to an upload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::client::{RegistryError, Result};
use crate::cache::lock::{write_atomic, FileLock};
use crate::cache::Digest;

/// Repositories remembered per blob.
const MAX_SOURCES: usize = 4;

/// The blob → repositories index of one root.
pub struct BlobSources {
    path: PathBuf,
}

impl BlobSources {
    pub fn open(root: &Path) -> BlobSources {
        BlobSources {
            path: root.join("registry").join("blob-sources.json"),
        }
    }

    fn read(&self) -> BTreeMap<String, Vec<String>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring corrupt blob source index");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Repositories (`domain/path`) known to hold `digest`, most recent first.
    pub fn sources(&self, digest: &Digest) -> Vec<String> {
        self.read().remove(digest.as_str()).unwrap_or_default()
    }

    /// Notes that `repository` (`domain/path`) holds `digests`.
    pub fn record<'a>(
        &self,
        repository: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| RegistryError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let _lock = FileLock::exclusive(&self.path.with_extension("lock"))?;
        let mut map = self.read();
        for d in digests {
            let list = map.entry(d.to_string()).or_default();
            list.retain(|r| r != repository);
            list.insert(0, repository.to_string());
            list.truncate(MAX_SOURCES);
        }
        let bytes = serde_json::to_vec(&map).unwrap_or_default();
        write_atomic(&self.path, &bytes).map_err(|source| RegistryError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobSources::open(dir.path());
        let d = Digest::of(b"x");
        assert!(s.sources(&d).is_empty());
        s.record("h/a", [&d]).unwrap();
        s.record("h/b", [&d]).unwrap();
        s.record("h/a", [&d]).unwrap();
        assert_eq!(s.sources(&d), vec!["h/a".to_string(), "h/b".to_string()]);
    }
}
