//! Garbage collection of the content store, containerd-style: mark everything reachable from
//! the roots, sweep the rest. Without it every build and pull would grow `--root` forever.
//!
//! # Roots
//! - the digests the caller passes (e.g. the build-cache index) — see [`collect_with`] for
//!   gathering them race-free;
//! - every ref in `root/refs.json` ([`super::refs`]), read by GC itself under its lock;
//! - every digest recorded in a live lease (below).
//!
//! Marking follows references inside JSON blobs: any top-level object with `"config"`,
//! `"layers"` or `"manifests"` (a descriptor object or an array of descriptors, each with a
//! `"digest"`) — OCI and Docker manifests, OCI indexes and Docker manifest lists. Other blobs
//! (layers, configs, anything that is not such JSON) have no children. A child that is not in
//! the store is not an error (an index may name platforms that were never pulled).
//!
//! # Leases
//! A build or pull in progress creates blobs long before anything (a ref, the cache index)
//! points at them. It holds a [`Lease`]: a file `root/leases/<id>.json` listing the digests it
//! created or relies on, with its owner's pid and process start time. GC keeps everything a
//! live lease lists (and everything reachable from it). Dropping the lease deletes the file.
//! A lease whose owner process is gone (crash, SIGKILL) is stale: GC ignores and removes it.
//!
//! # How GC and writers are kept apart
//! `root/gc.lock` is taken *exclusively* by [`collect`] and *shared* by everything that must
//! not interleave with a sweep:
//! 1. every [`BlobWriter`], from [`ContentStore::writer`] until its commit returns (or it is
//!    dropped) — so GC never sees a half-written or half-renamed blob, and any file it finds
//!    in `ingest/` belongs to a crashed process and is removed;
//! 2. [`Lease::add`] while it rewrites the lease file — so once `add` has returned, every
//!    later GC sees the digest in the lease, and a GC already running has finished;
//! 3. [`GcGuard`]s (from [`ContentStore::gc_guard`] or [`BlobWriter::commit_guarded`]).
//!
//! The remaining window is between "commit returned" and "the caller recorded the digest".
//! It is closed by construction rather than by a time-based grace period (which would make
//! `kiln prune` keep garbage and still be wrong for a slow caller):
//! - [`Lease::commit`] records the digest in the lease *before* the writer's shared lock is
//!   released, and [`Lease::put`] records it before writing the blob at all, so there is no
//!   instant at which the blob is both committed and unprotected. This is the path for
//!   builds, pulls and imports.
//! - A caller without a lease (e.g. tagging an image) uses [`BlobWriter::commit_guarded`] or
//!   holds a [`ContentStore::gc_guard`] across "put + `RefStore::set`": GC cannot start until
//!   the guard is dropped, and once it starts it reads the refs, which then hold the digest.
//! - To rely on a blob that already exists (a pull that skips a present layer), call
//!   [`Lease::add`] *first* and check presence after, or use [`Lease::protect_existing`];
//!   checking first and adding after is racy.
//! - GC reads leases *before* refs and caller roots. A job that records its result in a ref
//!   or index and then drops its lease is seen by one or the other: if the lease file was
//!   already gone when GC read the leases, the ref was written before that and GC reads it
//!   after.
//!
//! A plain [`BlobWriter::commit`] / [`ContentStore::put`] result is unprotected once the call
//! returns, exactly like unleased content in containerd.
//!
//! Deadlock rule: never call [`collect`] on a thread that holds a writer or a guard (the
//! exclusive lock would wait for a shared one this thread holds). `flock` does not queue
//! writers fairly, so a constant stream of overlapping writers can delay GC; it never starves
//! writers.
//!
//! Limitation: lease liveness is judged by pid (and start time) in the GC's pid namespace; a
//! lease written from another pid namespace sharing the root would look stale.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::content::{gc_lock_path, BlobWriter, ContentError, ContentStore, GcGuard};
use super::digest::Digest;
use super::lock::{sync_dir, write_replace, FileLock, LockError};
use super::refs::{RefError, RefStore};

/// JSON blobs larger than this are not parsed for children (OCI registries cap manifests at
/// 4 MiB; layers are far larger and never JSON).
const MAX_MANIFEST_SIZE: u64 = 8 << 20;

/// Errors of GC and leases; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A lease file that cannot be parsed. GC refuses to run rather than guess what it
    /// protects; remove the file by hand if its owner is gone.
    #[error(
        "lease file {path} is corrupt (GC will not run until it is fixed or removed): {source}"
    )]
    CorruptLease {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode lease file {path}: {source}")]
    EncodeLease {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot gather GC roots: {0}")]
    Roots(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Refs(#[from] RefError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

pub type Result<T> = std::result::Result<T, GcError>;

/// What a collection removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unreachable blobs with their sizes, sorted by digest.
    pub removed: Vec<(Digest, u64)>,
    /// Blobs kept (reachable).
    pub kept: usize,
    /// Bytes freed: the sum of `removed` sizes.
    pub reclaimed: u64,
}

/// The on-disk form of a lease, `root/leases/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    /// What holds it, for humans ("build", "pull docker.io/library/alpine:3").
    pub name: String,
    /// The owner process.
    pub pid: i32,
    /// The owner's start time (field 22 of `/proc/<pid>/stat`), to tell a reused pid apart.
    pub pid_start: Option<u64>,
    /// Unix seconds.
    pub created: i64,
    pub digests: BTreeSet<Digest>,
}

impl LeaseInfo {
    /// Whether the owner process still runs (a stale lease protects nothing).
    pub fn is_live(&self) -> bool {
        process_alive(self.pid, self.pid_start)
    }
}

/// Entry point for leases under a store root.
pub struct Leases;

impl Leases {
    /// Creates a lease for the calling process. `root` is the store root (as given to
    /// [`ContentStore::open`]).
    pub fn acquire(root: &Path, name: &str) -> Result<Lease> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = leases_dir(root);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!("{pid}-{nanos:x}-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let info = LeaseInfo {
            id: id.clone(),
            name: name.to_string(),
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
            pid_start: own_start_time(),
            created: super::image::unix_now(),
            digests: BTreeSet::new(),
        };
        let lease = Lease {
            root: root.to_path_buf(),
            path: dir.join(format!("{id}.json")),
            id,
            name: name.to_string(),
            info: Mutex::new(info),
            released: false,
        };
        {
            let _gc = FileLock::shared(&gc_lock_path(root))?;
            let info = lease.info.lock().unwrap_or_else(PoisonError::into_inner);
            lease.write(&info)?;
        }
        tracing::debug!(lease = %lease.id, name, "lease acquired");
        Ok(lease)
    }

    /// Every lease file under `root`, live or stale (see [`LeaseInfo::is_live`]).
    pub fn list(root: &Path) -> Result<Vec<LeaseInfo>> {
        Ok(read_leases(root)?
            .into_iter()
            .map(|(_, info)| info)
            .collect())
    }
}

/// Protects the digests it lists from GC while it lives. Shareable between the threads of
/// one job (`&Lease` is enough to add). Dropping it deletes the lease file.
#[derive(Debug)]
pub struct Lease {
    root: PathBuf,
    path: PathBuf,
    id: String,
    name: String,
    // Held while the file is rewritten so concurrent adds cannot overwrite each other.
    info: Mutex<LeaseInfo>,
    released: bool,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `root/leases/<id>.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The digests recorded so far.
    pub fn digests(&self) -> Vec<Digest> {
        let info = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        info.digests.iter().cloned().collect()
    }

    /// Records `d` (visible to GC in any process before returning; not fsynced: after a crash
    /// the lease is stale anyway). The blob need not exist yet.
    pub fn add(&self, d: &Digest) -> Result<()> {
        self.add_all([d])
    }

    /// Records several digests with one file rewrite.
    pub fn add_all<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>) -> Result<()> {
        let _gc = FileLock::shared(&gc_lock_path(&self.root))?;
        self.record(ds)
    }

    /// Adds to the lease file; the caller holds a shared `gc.lock`.
    fn record<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>) -> Result<()> {
        let mut info = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = info.clone();
        next.digests.extend(ds.into_iter().cloned());
        if next.digests.len() != info.digests.len() {
            self.write(&next)?;
            *info = next;
        }
        Ok(())
    }

    /// Records `d` and reports whether the blob is present; if it is, it stays present for
    /// the life of the lease. The race-free way to reuse a blob that already exists.
    pub fn protect_existing(&self, store: &ContentStore, d: &Digest) -> Result<bool> {
        self.add(d)?;
        Ok(store.contains(d))
    }

    /// Commits `writer` and records the digest in this lease before GC can run again.
    pub fn commit(
        &self,
        writer: BlobWriter,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let (digest, size, guard): (Digest, u64, GcGuard) =
            writer.commit_guarded(expected, expected_size)?;
        // Still under the writer's shared lock: GC cannot run between commit and record.
        self.record([&digest])?;
        drop(guard);
        Ok((digest, size))
    }

    /// Stores `bytes`, recording their digest in this lease first (so the blob is protected
    /// from the moment it exists, and an existing copy is kept rather than rewritten).
    pub fn put(&self, store: &ContentStore, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(bytes);
        self.add(&digest)?;
        let size = store.put_expected(bytes, &digest)?;
        Ok((digest, size))
    }

    /// Ends the lease, reporting a failure to delete its file (dropping ignores it).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        remove_lease_file(&self.path)
    }

    fn write(&self, info: &LeaseInfo) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(info).map_err(|source| GcError::EncodeLease {
            path: self.path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        write_replace(&self.path, &bytes).map_err(io_err("write lease file", &self.path))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = remove_lease_file(&self.path) {
                tracing::warn!(lease = %self.id, error = %e, "cannot remove lease file; GC will once this process exits");
            }
        }
    }
}

fn remove_lease_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove lease file", path)(e)),
    }
}

/// Collects garbage: removes every blob not reachable from `roots`, the refs in
/// `root/refs.json` or a live lease. With `dry_run`, reports what would go and changes
/// nothing (stale leases and ingest leftovers included).
pub fn collect(store: &ContentStore, roots: &[Digest], dry_run: bool) -> Result<GcReport> {
    collect_with(store, dry_run, || Ok::<_, GcError>(roots.to_vec()))
}

/// [`collect`] with roots gathered by `roots` *after* GC holds its lock and has read the
/// leases, so that a job which records its result (e.g. in the cache index) and then drops
/// its lease cannot slip between the two reads. Do not take `gc.lock` inside `roots`.
pub fn collect_with<E>(
    store: &ContentStore,
    dry_run: bool,
    roots: impl FnOnce() -> std::result::Result<Vec<Digest>, E>,
) -> Result<GcReport>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let root = store.root();
    let _gc = FileLock::exclusive(&gc_lock_path(root))?;

    // 1. Leases first (see the module doc for why the order matters).
    let mut start: Vec<Digest> = Vec::new();
    for (path, lease) in read_leases(root)? {
        if lease.is_live() {
            start.extend(lease.digests);
        } else {
            tracing::info!(lease = %lease.id, name = %lease.name, pid = lease.pid, "ignoring stale lease");
            if !dry_run {
                remove_lease_file(&path)?;
            }
        }
    }
    // 2. Refs, 3. the caller's roots.
    start.extend(
        RefStore::open(root)?
            .list()?
            .into_values()
            .map(|e| e.digest),
    );
    start.extend(roots().map_err(|e| GcError::Roots(e.into()))?);

    let marked = mark(store, start)?;

    let mut report = GcReport::default();
    for (digest, size) in store.list()? {
        if marked.contains(&digest) {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            match store.delete(&digest) {
                Ok(()) | Err(ContentError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        report.reclaimed += size;
        report.removed.push((digest, size));
    }
    if !dry_run {
        if !report.removed.is_empty() {
            sync_dir(store.blobs_dir()).map_err(io_err("fsync", store.blobs_dir()))?;
        }
        // No writer can be live while we hold the lock: anything in ingest/ is a leftover of
        // a crashed process, as are temp files of interrupted lease writes.
        remove_leftovers(store.ingest_dir(), |_| true)?;
        remove_leftovers(&leases_dir(root), |name| name.ends_with(".tmp"))?;
    }
    tracing::info!(
        removed = report.removed.len(),
        kept = report.kept,
        reclaimed = report.reclaimed,
        dry_run,
        "garbage collection done"
    );
    Ok(report)
}

/// Bytes used by committed blobs.
pub fn usage(store: &ContentStore) -> Result<u64> {
    Ok(store.list()?.iter().map(|(_, size)| size).sum())
}

/// Everything reachable from `start` (present or not).
fn mark(store: &ContentStore, start: Vec<Digest>) -> Result<HashSet<Digest>> {
    let mut marked: HashSet<Digest> = HashSet::new();
    let mut queue: VecDeque<Digest> = start.into();
    while let Some(d) = queue.pop_front() {
        if !marked.insert(d.clone()) {
            continue;
        }
        for child in children(store, &d)? {
            if !marked.contains(&child) {
                queue.push_back(child);
            }
        }
    }
    Ok(marked)
}

/// The digests a blob refers to. A missing blob, a large blob, or one that is not a JSON
/// object has none; an unreadable one is an error (its children cannot be known, and
/// guessing "none" could delete them).
fn children(store: &ContentStore, d: &Digest) -> Result<Vec<Digest>> {
    let path = store.blob_path(d);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("open blob", &path)(e)),
    };
    let size = file.metadata().map_err(io_err("stat blob", &path))?.len();
    if size > MAX_MANIFEST_SIZE {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_SIZE)
        .read_to_end(&mut bytes)
        .map_err(io_err("read blob", &path))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(Vec::new());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(Vec::new());
    };
    Ok(descriptor_digests(&value))
}

/// Digests of the descriptors under `config`, `layers` and `manifests` of a JSON object.
fn descriptor_digests(value: &serde_json::Value) -> Vec<Digest> {
    let mut out = Vec::new();
    let Some(obj) = value.as_object() else {
        return out;
    };
    let mut push = |desc: &serde_json::Value| {
        if let Some(s) = desc.get("digest").and_then(|v| v.as_str()) {
            match Digest::parse(s) {
                Ok(d) => out.push(d),
                // Another algorithm (kiln stores sha256 only) or garbage: nothing of ours.
                Err(e) => tracing::debug!(error = %e, "ignoring descriptor"),
            }
        }
    };
    for key in ["config", "layers", "manifests"] {
        match obj.get(key) {
            Some(serde_json::Value::Array(items)) => items.iter().for_each(&mut push),
            Some(desc @ serde_json::Value::Object(_)) => push(desc),
            _ => {}
        }
    }
    out
}

fn leases_dir(root: &Path) -> PathBuf {
    root.join("leases")
}

/// All `*.json` lease files with their paths; a vanished file is skipped, a corrupt one is
/// an error.
fn read_leases(root: &Path) -> Result<Vec<(PathBuf, LeaseInfo)>> {
    let dir = leases_dir(root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err("list", &dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            // Released between readdir and read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read lease file", &path)(e)),
        };
        let info = serde_json::from_slice(&bytes).map_err(|source| {
            tracing::error!(path = %path.display(), %source, "corrupt lease file");
            GcError::CorruptLease {
                path: path.clone(),
                source,
            }
        })?;
        out.push((path, info));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn remove_leftovers(dir: &Path, select: impl Fn(&str) -> bool) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if !select(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed leftover of an interrupted write")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    Ok(())
}

/// State and start time (field 22) from `/proc/<pid>/stat`; the command name (field 2) may
/// contain spaces and parentheses, so parse from the last `)`.
fn proc_stat(pid: &str) -> io::Result<(char, Option<u64>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = rest.split_whitespace();
    let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
    // `fields` now starts at field 4; starttime is field 22.
    let start = fields.nth(18).and_then(|s| s.parse().ok());
    Ok((state, start))
}

fn own_start_time() -> Option<u64> {
    proc_stat("self").ok().and_then(|(_, start)| start)
}

fn process_alive(pid: i32, start: Option<u64>) -> bool {
    if pid <= 0 {
        // Never a lease owner; kill(0 or negative) would address process groups.
        return false;
    }
    match proc_stat(&pid.to_string()) {
        Ok((state, now_start)) => {
            // Zombie or dead: exited, merely not reaped yet.
            if matches!(state, 'Z' | 'X' | 'x') {
                return false;
            }
            match (start, now_start) {
                (Some(recorded), Some(now)) => recorded == now, // else the pid was reused
                _ => true,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new("/proc/self/stat").exists() => {
            false
        }
        // No usable /proc: fall back to signal 0 (EPERM means it exists, as someone else).
        Err(_) => match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) => true,
            Err(errno) => errno != nix::errno::Errno::ESRCH,
        },
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GcError + 'a {
    move |source| GcError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const WORKER_ENV: &str = "KILN_TEST_GC_LEASE_WORKER";

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn desc(media_type: &str, d: &Digest, size: u64) -> serde_json::Value {
        serde_json::json!({ "mediaType": media_type, "digest": d.as_str(), "size": size })
    }

    /// An OCI index → two manifests (one docker-style) → configs and layers, plus garbage.
    struct Image {
        index: Digest,
        reachable: Vec<Digest>,
    }

    fn image(s: &ContentStore, tag: &str) -> Image {
        let (l1, n1) = s
            .put(format!("{tag} layer one (really a tar.gz)").as_bytes())
            .unwrap();
        let (l2, n2) = s.put(format!("{tag} layer two").as_bytes()).unwrap();
        // An image config has a "config" object too, without a digest: no children.
        let cfg = serde_json::json!({ "architecture": "amd64", "os": "linux",
            "config": { "Env": ["PATH=/bin"] }, "rootfs": { "type": "layers", "diff_ids": [] },
            "tag": tag });
        let (c, cn) = s.put(&serde_json::to_vec(&cfg).unwrap()).unwrap();
        let m1 = serde_json::json!({ "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", &c, cn),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &l1, n1),
                       desc("application/vnd.oci.image.layer.v1.tar+gzip", &l2, n2)] });
        let (m1, m1n) = s.put(&serde_json::to_vec_pretty(&m1).unwrap()).unwrap();
        let (l3, n3) = s.put(format!("{tag} arm layer").as_bytes()).unwrap();
        let m2 = serde_json::json!({ "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": desc("application/vnd.docker.container.image.v1+json", &c, cn),
            "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &l3, n3)] });
        let (m2, m2n) = s.put(&serde_json::to_vec(&m2).unwrap()).unwrap();
        let never_pulled = Digest::of(format!("{tag} s390x manifest").as_bytes());
        let index = serde_json::json!({ "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [desc("application/vnd.oci.image.manifest.v1+json", &m1, m1n),
                          desc("application/vnd.docker.distribution.manifest.v2+json", &m2, m2n),
                          desc("application/vnd.oci.image.manifest.v1+json", &never_pulled, 1),
                          { "digest": "sha512:abcd" }, { "no": "digest" }] });
        let (index, _) = s.put(&serde_json::to_vec(&index).unwrap()).unwrap();
        Image {
            reachable: vec![index.clone(), m1, m2, c, l1, l2, l3],
            index,
        }
    }

    fn digests(s: &ContentStore) -> BTreeSet<Digest> {
        s.list().unwrap().into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn marks_through_index_manifest_config_layers_and_sweeps_the_rest() {
        let (_dir, s) = store();
        let img = image(&s, "app");
        let (junk1, j1) = s.put(b"orphan layer").unwrap();
        // Looks like a manifest, but nothing points at it: it goes, and so does its child.
        let (orphan_layer, ol) = s.put(b"orphan's layer").unwrap();
        let orphan = serde_json::json!({ "layers": [desc("x", &orphan_layer, ol)] });
        let (junk2, j2) = s.put(&serde_json::to_vec(&orphan).unwrap()).unwrap();
        let (bad_json, bj) = s.put(b"{ not json").unwrap();
        let before = digests(&s);
        let usage_before = usage(&s).unwrap();

        let mut want: Vec<(Digest, u64)> =
            vec![(junk1, j1), (orphan_layer, ol), (junk2, j2), (bad_json, bj)];
        want.sort();
        let dry = collect(&s, std::slice::from_ref(&img.index), true).unwrap();
        assert_eq!(dry.removed, want);
        assert_eq!(dry.kept, img.reachable.len());
        assert_eq!(dry.reclaimed, j1 + ol + j2 + bj);
        assert_eq!(digests(&s), before, "dry run removes nothing");

        let report = collect(&s, std::slice::from_ref(&img.index), false).unwrap();
        assert_eq!(report, dry);
        assert_eq!(digests(&s), img.reachable.iter().cloned().collect());
        assert_eq!(usage(&s).unwrap(), usage_before - report.reclaimed);

        // Without roots everything goes.
        let all = collect(&s, &[], false).unwrap();
        assert_eq!(all.kept, 0);
        assert_eq!(all.removed.len(), img.reachable.len());
        assert!(digests(&s).is_empty());
        assert_eq!(usage(&s).unwrap(), 0);
    }

    #[test]
    fn refs_are_roots_and_a_manifest_root_keeps_only_its_platform() {
        let (_dir, s) = store();
        let a = image(&s, "a");
        let b = image(&s, "b");
        // Tag only b's first manifest (a single-platform pull): b's index and arm go.
        let refs = RefStore::open(s.root()).unwrap();
        refs.set("docker.io/library/b:latest", &b.reachable[1])
            .unwrap();
        let report = collect(&s, std::slice::from_ref(&a.index), false).unwrap();
        let mut want: BTreeSet<Digest> = a.reachable.iter().cloned().collect();
        // m1, its config (shared with m2) and its two layers.
        want.extend(
            [
                &b.reachable[1],
                &b.reachable[3],
                &b.reachable[4],
                &b.reachable[5],
            ]
            .map(Clone::clone),
        );
        assert_eq!(digests(&s), want);
        assert_eq!(report.kept, want.len());
        // A corrupt refs.json stops GC before anything is deleted.
        fs::write(refs.path(), b"{").unwrap();
        let err = collect(&s, &[], false).unwrap_err();
        assert!(
            matches!(err, GcError::Refs(RefError::Corrupt { .. })),
            "{err:?}"
        );
        assert_eq!(digests(&s), want);
    }

    #[test]
    fn live_leases_protect_stale_ones_do_not() {
        let (_dir, s) = store();
        let lease = Leases::acquire(s.root(), "build").unwrap();
        let (kept, _) = lease.put(&s, b"built layer").unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"streamed layer").unwrap();
        let (kept2, _) = lease.commit(w, None, Some(14)).unwrap();
        // A manifest in the lease protects its children too.
        let (child, cn) = s.put(b"child").unwrap();
        let (m, _) = s
            .put(
                &serde_json::to_vec(&serde_json::json!({ "layers": [desc("x", &child, cn)] }))
                    .unwrap(),
            )
            .unwrap();
        lease.add(&m).unwrap();
        assert_eq!(lease.digests().len(), 3);
        let info = &Leases::list(s.root()).unwrap()[0];
        assert!(info.is_live());
        assert_eq!(info.name, "build");

        // A stale lease: its owner (a real, finished child process) is gone.
        let mut child_proc = Command::new("true").spawn().unwrap();
        let dead_pid = child_proc.id() as i32;
        child_proc.wait().unwrap();
        let (stale_blob, _) = s.put(b"left by a crashed build").unwrap();
        let stale = LeaseInfo {
            id: "dead".into(),
            name: "crashed build".into(),
            pid: dead_pid,
            pid_start: None,
            created: 0,
            digests: [stale_blob.clone()].into(),
        };
        let stale_path = s.root().join("leases/dead.json");
        fs::write(&stale_path, serde_json::to_vec(&stale).unwrap()).unwrap();
        // Our own pid with another start time: the pid was reused, the lease is stale.
        let reused = LeaseInfo {
            id: "reused".into(),
            pid: std::process::id() as i32,
            pid_start: own_start_time().map(|t| t + 1),
            ..stale.clone()
        };
        let reused_path = s.root().join("leases/reused.json");
        fs::write(&reused_path, serde_json::to_vec(&reused).unwrap()).unwrap();
        // A crashed writer's temp file and a torn lease write.
        fs::write(s.ingest_dir().join("ingest-crashed"), b"partial").unwrap();
        fs::write(s.root().join("leases/.x.json.abc.tmp"), b"{").unwrap();

        let dry = collect(&s, &[], true).unwrap();
        assert_eq!(
            dry.removed.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            [&stale_blob]
        );
        assert!(
            stale_path.exists() && reused_path.exists(),
            "dry run keeps stale leases"
        );
        assert!(s.ingest_dir().join("ingest-crashed").exists());

        let report = collect(&s, &[], false).unwrap();
        assert_eq!(report.removed, dry.removed);
        assert_eq!(
            digests(&s),
            [kept.clone(), kept2.clone(), m.clone(), child.clone()].into()
        );
        assert!(
            !stale_path.exists() && !reused_path.exists(),
            "stale leases removed"
        );
        assert!(lease.path().exists(), "live lease kept");
        assert_eq!(fs::read_dir(s.ingest_dir()).unwrap().count(), 0);
        assert!(!s.root().join("leases/.x.json.abc.tmp").exists());

        // Releasing the lease exposes its blobs.
        let path = lease.path().to_path_buf();
        lease.release().unwrap();
        assert!(!path.exists());
        assert_eq!(collect(&s, &[], false).unwrap().removed.len(), 4);
    }

    #[test]
    fn corrupt_lease_stops_gc() {
        let (_dir, s) = store();
        s.put(b"blob").unwrap();
        fs::create_dir_all(s.root().join("leases")).unwrap();
        let p = s.root().join("leases/bad.json");
        fs::write(&p, b"{\"id\":").unwrap();
        let err = collect(&s, &[], false).unwrap_err();
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn dropping_a_lease_removes_its_file() {
        let (_dir, s) = store();
        let lease = Leases::acquire(s.root(), "pull").unwrap();
        let p = lease.path().to_path_buf();
        assert!(p.exists());
        drop(lease);
        assert!(!p.exists());
        assert!(Leases::list(s.root()).unwrap().is_empty());
    }

    #[test]
    fn protect_existing_then_gc_keeps_it() {
        let (_dir, s) = store();
        let (d, _) = s.put(b"already pulled layer").unwrap();
        let lease = Leases::acquire(s.root(), "pull").unwrap();
        assert!(lease.protect_existing(&s, &d).unwrap());
        assert!(!lease
            .protect_existing(&s, &Digest::of(b"not here"))
            .unwrap());
        collect(&s, &[], false).unwrap();
        assert!(s.contains(&d));
    }

    /// GC waits for an open writer; a lease commit records the blob before GC can start.
    #[test]
    fn gc_waits_for_writers_and_never_sees_an_unrecorded_commit() {
        let (_dir, s) = store();
        let lease = Leases::acquire(s.root(), "build").unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"layer being built").unwrap();
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let gc = scope.spawn(|| {
                let r = collect(&s, &[], false).unwrap();
                finished.store(true, Ordering::SeqCst);
                r
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(!finished.load(Ordering::SeqCst), "GC ran during an ingest");
            let (d, _) = lease.commit(w, None, None).unwrap();
            let report = gc.join().unwrap();
            assert!(report.removed.is_empty());
            assert!(s.contains(&d));
        });

        // Without a lease: a guard held across put + tag.
        let refs = RefStore::open(s.root()).unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"manifest").unwrap();
        let (d, _, guard) = w.commit_guarded(None, None).unwrap();
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let gc = scope.spawn(|| {
                let r = collect(&s, &[], false).unwrap();
                finished.store(true, Ordering::SeqCst);
                r
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                !finished.load(Ordering::SeqCst),
                "GC ran while a guard was held"
            );
            refs.set("example.com/app:1", &d).unwrap();
            drop(guard);
            gc.join().unwrap();
        });
        assert!(s.contains(&d));
    }

    /// Entry point of the lease-holding worker process; a no-op in a normal run.
    #[test]
    fn gc_lease_worker_process() {
        let Ok(root) = std::env::var(WORKER_ENV) else {
            return;
        };
        let s = ContentStore::open(Path::new(&root)).unwrap();
        let lease = Leases::acquire(s.root(), "worker build").unwrap();
        let (d, _) = lease.put(&s, b"made by another process").unwrap();
        println!("LEASE-READY {d}");
        std::io::stdout().flush().unwrap();
        // Hold the lease until the parent closes our stdin (or kills us); never outlive a
        // parent that failed to do either.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(120));
            std::process::exit(3);
        });
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        drop(lease);
    }

    #[test]
    fn lease_of_another_process_protects_until_it_dies() {
        let (_dir, s) = store();
        let test_name = concat!(module_path!(), "::gc_lease_worker_process");
        let test_name = test_name
            .split_once("::")
            .map_or(test_name, |(_, rest)| rest);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test_name, "--exact", "--test-threads=1", "--nocapture"])
            .env(WORKER_ENV, s.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let digest = BufReader::new(stdout)
            .lines()
            .map(|l| l.unwrap())
            // libtest prints the test name on the same line before our output.
            .find_map(|l| {
                l.split_once("LEASE-READY ")
                    .map(|(_, d)| Digest::parse(d.trim()).unwrap())
            })
            .expect("worker did not report its lease");
        let report = collect(&s, &[], false).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert!(s.contains(&digest));
        // SIGKILL: the worker never gets to drop its lease; the file stays, stale.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(Leases::list(s.root()).unwrap().len(), 1);
        let report = collect(&s, &[], false).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(!s.contains(&digest));
        assert!(Leases::list(s.root()).unwrap().is_empty());
    }

    #[test]
    fn concurrent_lease_adds_are_all_recorded() {
        let (_dir, s) = store();
        let lease = Leases::acquire(s.root(), "parallel build").unwrap();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (lease, s) = (&lease, &s);
                scope.spawn(move || {
                    for i in 0..20 {
                        lease.put(s, format!("{t}/{i}").as_bytes()).unwrap();
                    }
                });
            }
            // GC running concurrently must never remove any of them.
            scope.spawn(|| {
                for _ in 0..10 {
                    assert!(collect(&s, &[], false).unwrap().removed.is_empty());
                }
            });
        });
        let on_disk = &Leases::list(s.root()).unwrap()[0];
        assert_eq!(on_disk.digests.len(), 160);
        assert_eq!(s.list().unwrap().len(), 160);
    }
}
