//! The content-addressed blob store: layers, image configs, manifests and indexes, each stored
//! once under its sha256 digest. Everything kiln keeps long-term is either a blob here or a
//! small index pointing at blobs (refs, cache index), so this is where integrity is enforced.
//!
//! Layout under the store root (containerd's local store, simplified):
//! - `blobs/sha256/<hex>`: committed blobs, read-only (0444), never modified in place.
//! - `ingest/`: temp files of blobs being written; renamed into `blobs/` once verified.
//! - `gc.lock`: the lock that keeps garbage collection ([`super::gc`]) and writers apart.
//!
//! Ingest is atomic: a [`BlobWriter`] hashes and counts while it streams into a temp file;
//! [`BlobWriter::commit`] flushes, fsyncs, checks the size and digest against what the caller
//! expected, makes the file read-only, renames it into place and fsyncs the directory. A
//! mismatch removes the temp file, so nothing partial or unverified ever appears under
//! `blobs/`. Committing a blob that is already present is a success (content addressing
//! makes both copies identical). Dropping a writer without committing discards its temp file.
//!
//! Coordination with GC: every writer holds a *shared* lock on `gc.lock` from
//! [`ContentStore::writer`] until its commit (or drop) returns; GC holds it *exclusively*.
//! So GC never runs while a blob is half-written or being renamed, and any file GC finds in
//! `ingest/` belongs to a crashed process. A commit that must survive until the caller records
//! the digest (in a lease or a ref) uses [`BlobWriter::commit_guarded`] or
//! [`ContentStore::gc_guard`], or commits through a lease; see the [`super::gc`] module doc.
//!
//! Reads are not locked: blobs are immutable, and only unreferenced blobs are ever deleted.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::digest::{Digest, DigestReader, DigestWriter};
use super::lock::{sync_dir, FileLock, LockError};

/// Errors of the content store. Every variant names the blob or the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {digest} not found in the content store")]
    NotFound { digest: Digest },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The expected digest when the caller gave one, else the digest of what was written.
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A committed blob no longer hashes to its name (disk corruption or tampering).
    #[error("blob {digest} at {path} is corrupt: its content hashes to {actual} ({size} bytes)")]
    Corrupt {
        digest: Digest,
        actual: Digest,
        size: u64,
        path: PathBuf,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
}

pub type Result<T> = std::result::Result<T, ContentError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The path of the lock that writers share and GC takes exclusively.
pub(super) fn gc_lock_path(root: &Path) -> PathBuf {
    root.join("gc.lock")
}

/// A content store rooted at a directory. Cheap to clone; safe to share between threads and
/// between processes using the same root.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
}

/// Holds off garbage collection while alive (a shared lock on `gc.lock`). Hold one across
/// "commit a blob, then record its digest in a ref or lease" so that GC sees either neither
/// or both. Do not run GC on a thread that holds one: it would wait for itself. Taking more
/// shared locks (writers) while holding one is fine: Linux `flock` grants a shared lock
/// whenever no exclusive lock is *held*, even if GC is already waiting for one.
#[derive(Debug)]
pub struct GcGuard {
    _lock: FileLock,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let store = ContentStore {
            root: root.to_path_buf(),
            blobs: root.join("blobs").join("sha256"),
            ingest: root.join("ingest"),
        };
        for dir in [&store.blobs, &store.ingest] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        Ok(store)
    }

    /// The store root (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/sha256`.
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Where temp files of in-progress writes live.
    pub fn ingest_dir(&self) -> &Path {
        &self.ingest
    }

    /// Blocks until no GC runs, then keeps GC from starting until the guard is dropped.
    pub fn gc_guard(&self) -> Result<GcGuard> {
        Ok(GcGuard {
            _lock: FileLock::shared(&gc_lock_path(&self.root))?,
        })
    }

    /// Starts a streaming ingest. Waits while a GC runs; keeps GC out until commit or drop.
    pub fn writer(&self) -> Result<BlobWriter> {
        let guard = self.gc_guard()?;
        let tmp = tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(&self.ingest)
            .map_err(io_err("create ingest file in", &self.ingest))?;
        let path = tmp.path().to_path_buf();
        Ok(BlobWriter {
            out: DigestWriter::new(BufWriter::with_capacity(
                128 * 1024,
                Writeback {
                    file: tmp,
                    written: 0,
                    started: 0,
                },
            )),
            path,
            blobs: self.blobs.clone(),
            guard,
        })
    }

    /// Stores `bytes`, returning their digest and size. Present content is not rewritten.
    pub fn put(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(bytes);
        self.put_expected(bytes, &digest)?;
        Ok((digest, bytes.len() as u64))
    }

    /// Stores `bytes`, which must hash to `expected` (else `DigestMismatch`, nothing stored).
    pub fn put_expected(&self, bytes: &[u8], expected: &Digest) -> Result<u64> {
        let size = bytes.len() as u64;
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(ContentError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.size(expected).ok() == Some(size) {
            return Ok(size);
        }
        let mut w = self.writer()?;
        let path = w.ingest_path().to_path_buf();
        w.write_all(bytes)
            .map_err(io_err("write ingest file", &path))?;
        w.commit(Some(expected), Some(size)).map(|(_, n)| n)
    }

    /// Whether a blob is present (not whether it is intact: see [`ContentStore::verify`]).
    pub fn contains(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// `blobs/sha256/<hex>`, whether or not the blob exists.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// Opens a blob for reading, unverified (use [`DigestReader`] to verify while streaming).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| self.not_found_or(d, "open blob", &path, e))
    }

    /// Reads a whole blob and checks that it still hashes to `d`.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let file = self.open_blob(d)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = DigestReader::new(file);
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        reader
            .read_to_end(&mut buf)
            .map_err(io_err("read blob", &path))?;
        let (actual, size) = reader.finish();
        check_intact(d, actual, size, path)?;
        Ok(buf)
    }

    /// Re-hashes a blob from disk; `Corrupt` if it no longer matches its name.
    pub fn verify(&self, d: &Digest) -> Result<()> {
        let path = self.blob_path(d);
        let mut reader = DigestReader::new(self.open_blob(d)?);
        io::copy(&mut reader, &mut io::sink()).map_err(io_err("read blob", &path))?;
        let (actual, size) = reader.finish();
        check_intact(d, actual, size, path)
    }

    /// The size of a stored blob.
    pub fn size(&self, d: &Digest) -> Result<u64> {
        let path = self.blob_path(d);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| self.not_found_or(d, "stat blob", &path, e))
    }

    /// Removes a blob. Not synchronised with readers or GC: callers outside GC must know that
    /// nothing references it.
    pub fn delete(&self, d: &Digest) -> Result<()> {
        let path = self.blob_path(d);
        fs::remove_file(&path).map_err(|e| self.not_found_or(d, "remove blob", &path, e))
    }

    /// Every committed blob with its size, sorted by digest. Files under `blobs/sha256` whose
    /// names are not digests are skipped (and logged), never fatal.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let entries = fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            let name = entry.file_name();
            let digest = match name.to_str().map(|n| Digest::parse(&format!("sha256:{n}"))) {
                Some(Ok(d)) => d,
                _ => {
                    tracing::warn!(path = %entry.path().display(), "ignoring stray file in blob store");
                    continue;
                }
            };
            match entry.metadata() {
                Ok(m) if m.is_file() => out.push((digest, m.len())),
                Ok(_) => {
                    tracing::warn!(path = %entry.path().display(), "ignoring non-file in blob store")
                }
                // Deleted between readdir and stat (a concurrent delete): not listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("stat blob", &entry.path())(e)),
            }
        }
        out.sort();
        Ok(out)
    }

    fn not_found_or(
        &self,
        d: &Digest,
        op: &'static str,
        path: &Path,
        e: io::Error,
    ) -> ContentError {
        if e.kind() == io::ErrorKind::NotFound {
            ContentError::NotFound { digest: d.clone() }
        } else {
            io_err(op, path)(e)
        }
    }
}

fn check_intact(d: &Digest, actual: Digest, size: u64, path: PathBuf) -> Result<()> {
    if &actual == d {
        Ok(())
    } else {
        tracing::error!(digest = %d, %actual, path = %path.display(), "corrupt blob");
        Err(ContentError::Corrupt {
            digest: d.clone(),
            actual,
            size,
            path,
        })
    }
}

/// Bytes of a blob written between two requests to start their writeback.
const WRITEBACK: u64 = 8 << 20;

/// The temp file of an ingest, whose dirty pages are handed to the disk every [`WRITEBACK`]
/// bytes (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts the writes, waits for none), so
/// that the fsync of the commit finds most of a large blob already written instead of
/// writing it all then.
struct Writeback {
    file: tempfile::NamedTempFile,
    written: u64,
    /// Bytes whose writeback was started.
    started: u64,
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an fd this struct owns; no memory is passed.
            // Only a hint: its failure changes nothing (the commit fsyncs).
            unsafe {
                nix::libc::sync_file_range(
                    self.file.as_file().as_raw_fd(),
                    self.started as i64,
                    (self.written - self.started) as i64,
                    nix::libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A blob being written. Implements [`Write`]; every byte is hashed and counted on the way
/// to the temp file. Finish with [`BlobWriter::commit`]; dropping it instead discards the
/// temp file.
pub struct BlobWriter {
    // Field order is drop order: the temp file goes before the GC guard is released.
    out: DigestWriter<BufWriter<Writeback>>,
    path: PathBuf,
    blobs: PathBuf,
    guard: GcGuard,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.path)
            .field("written", &self.written())
            .finish()
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// The temp file being written (under `ingest/`).
    pub fn ingest_path(&self) -> &Path {
        &self.path
    }

    /// Verifies and publishes the blob (see the module doc); returns its digest and size.
    /// After this returns, GC may run again: a caller that still has to record the digest
    /// somewhere GC looks should use [`BlobWriter::commit_guarded`] or a lease.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.commit_guarded(expected, expected_size)
            .map(|(d, n, _guard)| (d, n))
    }

    /// Like [`BlobWriter::commit`], but hands back the writer's GC guard so that GC stays out
    /// until the caller has recorded the digest and drops the guard.
    pub fn commit_guarded(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64, GcGuard)> {
        let BlobWriter {
            out,
            path,
            blobs,
            guard,
        } = self;
        let (buffered, actual, size) = out.finish();
        // Every early return below drops `tmp`, which removes the temp file.
        let tmp = buffered
            .into_inner()
            .map_err(|e| io_err("flush ingest file", &path)(e.into_error()))?
            .file;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync ingest file", &path))?;
        if let Some(expected_size) = expected_size {
            if expected_size != size {
                tracing::warn!(path = %path.display(), expected_size, size, "ingest size mismatch");
                return Err(ContentError::SizeMismatch {
                    digest: expected.cloned().unwrap_or(actual),
                    expected: expected_size,
                    actual: size,
                });
            }
        }
        if let Some(expected) = expected {
            if expected != &actual {
                tracing::warn!(path = %path.display(), %expected, %actual, "ingest digest mismatch");
                return Err(ContentError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let target = blobs.join(actual.hex());
        if let Ok(existing) = fs::symlink_metadata(&target) {
            if existing.is_file() && existing.len() == size {
                // Already stored (content addressing: same bytes). `tmp` is removed on drop.
                return Ok((actual, size, guard));
            }
            // A blob of the wrong size under this name is damaged; the verified temp
            // file replaces it below.
            tracing::warn!(path = %target.display(), "replacing damaged blob");
        }
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("chmod ingest file", &path))?;
        tmp.persist(&target).map_err(|e| ContentError::Io {
            op: "rename ingest file into",
            path: target.clone(),
            source: e.error,
        })?;
        sync_dir(&blobs).map_err(io_err("fsync", &blobs))?;
        tracing::debug!(digest = %actual, size, "committed blob");
        Ok((actual, size, guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(&dir.path().join("root")).unwrap();
        (dir, s)
    }

    fn ingest_files(s: &ContentStore) -> Vec<PathBuf> {
        fs::read_dir(s.ingest_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// A conformance suite in containerd's style: every behaviour callers rely on, against a
    /// store made by `make`. Other store implementations can run the same function.
    fn content_suite(make: impl Fn() -> (tempfile::TempDir, ContentStore)) {
        ingest_and_read(&make());
        reingest_is_idempotent(&make());
        digest_mismatch_leaves_nothing(&make());
        size_mismatch_leaves_nothing(&make());
        read_detects_corruption(&make());
        list_and_delete(&make());
        drop_aborts(&make());
        not_found_names_digest(&make());
        empty_blob(&make());
    }

    #[test]
    fn local_store_conformance() {
        content_suite(store);
    }

    fn ingest_and_read((_d, s): &(tempfile::TempDir, ContentStore)) {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = Digest::of(&data);
        let mut w = s.writer().unwrap();
        for chunk in data.chunks(7_001) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.written(), data.len() as u64);
        let (d, n) = w.commit(Some(&expected), Some(data.len() as u64)).unwrap();
        assert_eq!((d.clone(), n), (expected.clone(), data.len() as u64));
        assert!(s.contains(&d));
        assert_eq!(s.read(&d).unwrap(), data);
        s.verify(&d).unwrap();
        assert_eq!(s.size(&d).unwrap(), data.len() as u64);
        let p = s.blob_path(&d);
        assert_eq!(p, s.root().join("blobs/sha256").join(d.hex()));
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444, "blobs are read-only");
        let mut f = s.open_blob(&d).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(ingest_files(s).is_empty());
        // put/put_expected agree with the streaming writer.
        assert_eq!(s.put(&data).unwrap(), (d.clone(), n));
        assert_eq!(s.put_expected(b"small", &Digest::of(b"small")).unwrap(), 5);
        assert_eq!(s.read(&Digest::of(b"small")).unwrap(), b"small");
    }

    fn reingest_is_idempotent((_d, s): &(tempfile::TempDir, ContentStore)) {
        let (d1, _) = s.put(b"same bytes").unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"same bytes").unwrap();
        let (d2, n) = w.commit(Some(&d1), Some(10)).unwrap();
        assert_eq!((d1.clone(), 10), (d2, n));
        assert_eq!(s.list().unwrap(), vec![(d1, 10)]);
        assert!(ingest_files(s).is_empty());
    }

    fn digest_mismatch_leaves_nothing((_d, s): &(tempfile::TempDir, ContentStore)) {
        let wrong = Digest::of(b"something else");
        let mut w = s.writer().unwrap();
        w.write_all(b"payload").unwrap();
        let err = w.commit(Some(&wrong), None).unwrap_err();
        match &err {
            ContentError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &Digest::of(b"payload"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(wrong.as_str()), "{err}");
        assert!(s.list().unwrap().is_empty());
        assert!(!s.contains(&Digest::of(b"payload")));
        assert!(ingest_files(s).is_empty());
        // The in-memory path refuses before touching the disk.
        assert!(matches!(
            s.put_expected(b"payload", &wrong),
            Err(ContentError::DigestMismatch { .. })
        ));
        assert!(s.list().unwrap().is_empty());
    }

    fn size_mismatch_leaves_nothing((_d, s): &(tempfile::TempDir, ContentStore)) {
        let d = Digest::of(b"payload");
        let mut w = s.writer().unwrap();
        w.write_all(b"payload").unwrap();
        let err = w.commit(Some(&d), Some(8)).unwrap_err();
        assert!(
            matches!(&err, ContentError::SizeMismatch { digest, expected: 8, actual: 7 } if digest == &d),
            "{err:?}"
        );
        assert!(err.to_string().contains(d.as_str()));
        assert!(s.list().unwrap().is_empty());
        assert!(ingest_files(s).is_empty());
    }

    fn read_detects_corruption((_d, s): &(tempfile::TempDir, ContentStore)) {
        let (d, _) = s.put(b"precious layer bytes").unwrap();
        let p = s.blob_path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        bytes[3] ^= 0x20;
        fs::write(&p, &bytes).unwrap();
        for err in [s.read(&d).unwrap_err(), s.verify(&d).unwrap_err()] {
            match &err {
                ContentError::Corrupt {
                    digest,
                    actual,
                    path,
                    ..
                } => {
                    assert_eq!(digest, &d);
                    assert_eq!(actual, &Digest::of(&bytes));
                    assert_eq!(path, &p);
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().contains(d.as_str()));
        }
        // Re-ingesting trusts a present blob of the right size (like containerd, no re-hash
        // on every put): corruption is found by read/verify, not hidden by put.
        s.put(b"precious layer bytes").unwrap();
        assert!(s.verify(&d).is_err());
        // ...but a damaged blob of the wrong size is replaced by a verified ingest.
        fs::write(&p, b"truncated").unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"precious layer bytes").unwrap();
        w.commit(Some(&d), None).unwrap();
        s.verify(&d).unwrap();
    }

    fn list_and_delete((_d, s): &(tempfile::TempDir, ContentStore)) {
        let mut want = vec![
            s.put(b"a").unwrap(),
            s.put(b"bb").unwrap(),
            s.put(b"ccc").unwrap(),
        ];
        want.sort();
        // Stray files are ignored, not fatal.
        fs::write(s.blobs_dir().join("not-a-digest"), b"x").unwrap();
        assert_eq!(s.list().unwrap(), want);
        s.delete(&want[1].0).unwrap();
        assert!(!s.contains(&want[1].0));
        let err = s.delete(&want[1].0).unwrap_err();
        assert!(matches!(&err, ContentError::NotFound { digest } if digest == &want[1].0));
        want.remove(1);
        assert_eq!(s.list().unwrap(), want);
    }

    fn drop_aborts((_d, s): &(tempfile::TempDir, ContentStore)) {
        let mut w = s.writer().unwrap();
        w.write_all(&[7u8; 200_000]).unwrap();
        let tmp = w.ingest_path().to_path_buf();
        assert!(tmp.starts_with(s.ingest_dir()));
        w.flush().unwrap();
        assert!(tmp.exists());
        drop(w);
        assert!(!tmp.exists());
        assert!(ingest_files(s).is_empty());
        assert!(s.list().unwrap().is_empty());
    }

    fn not_found_names_digest((_d, s): &(tempfile::TempDir, ContentStore)) {
        let d = Digest::of(b"never stored");
        for err in [
            s.open_blob(&d).unwrap_err(),
            s.read(&d).unwrap_err(),
            s.verify(&d).unwrap_err(),
            s.size(&d).unwrap_err(),
        ] {
            assert!(matches!(&err, ContentError::NotFound { digest } if digest == &d));
            assert!(err.to_string().contains(d.as_str()), "{err}");
        }
        assert!(!s.contains(&d));
    }

    fn empty_blob((_d, s): &(tempfile::TempDir, ContentStore)) {
        let w = s.writer().unwrap();
        let (d, n) = w.commit(None, Some(0)).unwrap();
        assert_eq!((d.clone(), n), (Digest::of(b""), 0));
        assert_eq!(s.read(&d).unwrap(), b"");
    }

    #[test]
    fn same_blob_from_many_threads_at_once() {
        let (_d, s) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let expected = Digest::of(&data);
        let barrier = std::sync::Barrier::new(16);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        let mut w = s.writer().unwrap();
                        barrier.wait();
                        for chunk in data.chunks(64 * 1024) {
                            w.write_all(chunk).unwrap();
                        }
                        w.commit(Some(&expected), Some(data.len() as u64))
                    })
                })
                .collect();
            for h in handles {
                let (d, n) = h.join().unwrap().unwrap();
                assert_eq!((&d, n), (&expected, data.len() as u64));
            }
        });
        assert_eq!(
            s.list().unwrap(),
            vec![(expected.clone(), data.len() as u64)]
        );
        assert!(ingest_files(&s).is_empty());
        s.verify(&expected).unwrap();
    }

    #[test]
    fn store_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ContentStore>();
        fn assert_send<T: Send>() {}
        assert_send::<BlobWriter>();
    }
}
