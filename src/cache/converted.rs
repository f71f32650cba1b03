//! Which blob a layer became when it was compressed for export, so that exporting the same
//! layer again (pushing an image twice, or to a second repository) reuses that blob instead
//! of compressing the layer again; the push can then ask the registry whether it has the blob
//! (or mount it) before sending a byte.
//!
//! One small file per layer and compression, `converted/<compression>-<diff ID hex>`, holding
//! `<digest> <size>`. Written atomically without fsync: a lost or stale entry only costs a
//! compression. An entry is used only while its blob is in the content store (blobs there
//! were verified when committed, and the blob was made from a tar with that diff ID, checked
//! then), so GC removing the blob just makes the entry a miss.

use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::layer::Compression;
use super::lock::write_replace;

fn entry_path(root: &Path, diff_id: &Digest, to: Compression) -> PathBuf {
    let kind = match to {
        Compression::Uncompressed => "tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    root.join("converted")
        .join(format!("{kind}-{}", diff_id.hex()))
}

/// The blob (digest, size) the layer with `diff_id` became compressed as `to`, if recorded.
pub fn lookup(root: &Path, diff_id: &Digest, to: Compression) -> Option<(Digest, u64)> {
    let text = std::fs::read_to_string(entry_path(root, diff_id, to)).ok()?;
    let (digest, size) = text.trim().split_once(' ')?;
    let digest = Digest::parse(digest).ok()?;
    Some((digest, size.parse().ok()?))
}

/// Records that the layer with `diff_id`, compressed as `to`, is blob `digest` of `size`
/// bytes. Best effort: a failure is logged and forgotten.
pub fn record(root: &Path, diff_id: &Digest, to: Compression, digest: &Digest, size: u64) {
    let path = entry_path(root, diff_id, to);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| write_replace(&path, format!("{digest} {size}\n").as_bytes()));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), error = %e, "cannot record a converted layer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_finds_per_compression() {
        let dir = tempfile::tempdir().unwrap();
        let diff_id = Digest::of(b"tar");
        let blob = Digest::of(b"gz");
        assert_eq!(lookup(dir.path(), &diff_id, Compression::Gzip), None);
        record(dir.path(), &diff_id, Compression::Gzip, &blob, 42);
        assert_eq!(
            lookup(dir.path(), &diff_id, Compression::Gzip),
            Some((blob, 42))
        );
        assert_eq!(lookup(dir.path(), &diff_id, Compression::Zstd), None);
        // A damaged entry is a miss, not an error.
        std::fs::write(entry_path(dir.path(), &diff_id, Compression::Zstd), "junk").unwrap();
        assert_eq!(lookup(dir.path(), &diff_id, Compression::Zstd), None);
    }
}
