//! Content digests of context entries, for COPY/ADD cache keys (ARCHITECTURE.md convention 5:
//! a COPY key includes a content hash of the selected source files).
//!
//! The digest covers, per entry: its relative path, its type, its permission bits (including
//! setuid/setgid/sticky), a symlink's target and a file's content digest. It never covers
//! mtime, ctime, owners or inode numbers, so `touch`, a fresh checkout or an unpacked tar with
//! other timestamps give the same key.
//!
//! File contents go through a [`FileHasher`], so a persistent cache (keyed by inode, size,
//! mtime and ctime, say) can be slotted in later without touching the digest format.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use rayon::prelude::*;

use crate::cache::digest::{Digest, DigestWriter};

use super::walk::cmp_rel;
use super::{ContextEntry, ContextError, EntryKind, Result};

/// Computes the content digest of a regular file of the context.
pub trait FileHasher: Send + Sync {
    /// The sha256 of the content of `entry` (an [`EntryKind::File`]).
    fn hash_file(&self, entry: &ContextEntry) -> Result<Digest>;
}

/// Reads and hashes the file every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFileHasher;

impl FileHasher for PlainFileHasher {
    fn hash_file(&self, entry: &ContextEntry) -> Result<Digest> {
        let io_err = |source| ContextError::Io {
            op: "hash",
            path: entry.path.clone(),
            source,
        };
        // O_NOFOLLOW: if the file was swapped for a symlink since the walk, fail rather than
        // read whatever the link points at.
        let mut file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&entry.path)
            .map_err(io_err)?;
        hash_reader(&mut file).map_err(io_err)
    }
}

/// The sha256 of everything `r` yields.
pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<Digest> {
    thread_local! {
        // One buffer per thread: allocating (and zeroing) 256 KiB per small file costs more
        // than hashing it.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut w = DigestWriter::new(io::sink());
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => w.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(w.finish().1)
    })
}

/// Version tag at the start of the hashed stream; change it if the record format changes.
const FORMAT: &[u8] = b"kiln.context-digest.v1\n";

/// The digest of a set of entries: sorted by path (so the caller's order does not matter),
/// duplicates dropped, file contents hashed in parallel. Only the files in `entries` are read.
pub(crate) fn digest_entries(hasher: &dyn FileHasher, entries: &[ContextEntry]) -> Result<Digest> {
    let mut sorted: Vec<&ContextEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| cmp_rel(&a.rel, &b.rel));
    sorted.dedup_by(|a, b| a.rel == b.rel);
    let contents = sorted
        .par_iter()
        .map(|e| match e.kind {
            EntryKind::File => hasher.hash_file(e).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<Option<Digest>>>>()?;
    let mut w = DigestWriter::new(io::sink());
    let result = (|| -> io::Result<()> {
        w.write_all(FORMAT)?;
        for (e, content) in sorted.iter().zip(&contents) {
            let tag: &[u8] = match e.kind {
                EntryKind::File => b"f",
                EntryKind::Dir => b"d",
                EntryKind::Symlink(_) => b"l",
            };
            w.write_all(tag)?;
            put(&mut w, e.rel.as_bytes())?;
            w.write_all(&(e.mode & 0o7777).to_be_bytes())?;
            if let EntryKind::Symlink(target) = &e.kind {
                put(&mut w, target.as_os_str().as_bytes())?;
            }
            if let Some(d) = content {
                put(&mut w, d.as_str().as_bytes())?;
            }
        }
        Ok(())
    })();
    // Writing into a sink cannot fail; keep the error path honest anyway.
    result.map_err(|source| ContextError::Io {
        op: "hash",
        path: Default::default(),
        source,
    })?;
    Ok(w.finish().1)
}

/// A length-prefixed byte string, so records cannot run into each other.
fn put(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_be_bytes())?;
    w.write_all(bytes)
}
