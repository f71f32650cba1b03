//! Snapshots: unpacked layer chains, keyed by chain ID, behind one [`Snapshotter`] trait with
//! two implementations (the containerd model, see docs/ARCHITECTURE.md convention 8).
//!
//! - [`OverlaySnapshotter`] (`"overlayfs"`, the default): each snapshot directory holds only
//!   its layer's diff in overlay format; a view is an overlayfs mount of the chain.
//! - [`CopySnapshotter`] (`"copy"`, the fallback where overlayfs is missing): each snapshot
//!   directory holds the full merged tree, a copy of its parent with the layer applied.
//!
//! # Layout under the root
//! - `snapshots/<kind>/<hex>/fs`: the snapshot's tree; `snapshots/<kind>/<hex>/parent`: the
//!   parent's chain ID (absent for a base layer). A snapshot exists iff its directory does.
//! - `snapshots/<kind>/.tmp/`: snapshots being built and snapshots being deleted.
//! - `snapshots/<kind>/.lock`: `flock`ed shared while committing, resolving a view or
//!   preparing a rootfs, exclusive while removing, so `remove` never races those.
//! - `mounts/<kind>-{view,active}-*/`: one per live [`View`] or [`Active`]: `lock` (held
//!   with `flock` by the owner for its lifetime), `uses` (the snapshot IDs it reads), the
//!   mount point (`merged`, `rootfs`) and, for actives, `upper`/`work`. A directory whose lock
//!   is free belongs to a dead process and is reaped by [`Snapshotter::remove`].
//!
//! # Creating
//! [`Snapshotter::create`] builds in `.tmp/`, then `renameat2(RENAME_NOREPLACE)`s into place:
//! when another thread or process won the race, the loser's copy is discarded and the call
//! still succeeds. Unpacked trees are not fsynced (a crash can lose recent snapshots, never
//! expose half-built ones: they are in `.tmp/`).
//!
//! # Overlay mount options
//! The kernel copies at most one page (4096 bytes, NUL included) of mount data, and overlayfs
//! takes at most 500 lower layers. Options are built with absolute paths; when they do not fit
//! (or a path contains `,`, `:` or `\`, which overlayfs would parse), every directory is opened
//! with `O_PATH` and passed as `/proc/self/fd/<n>` (about 18 bytes a layer, ~220 layers); when
//! even that does not fit, the mount fails with [`SnapshotError::MountOptionsTooLong`]. No
//! `chdir` is involved, so this is safe in a multi-threaded process. Read-only views need at
//! least two lower directories, so short chains are padded with empty directories.
//! Writable mounts pass `redirect_dir=off,metacopy=off,index=off` (retried without them on
//! kernels that do not know them) so that the upper directory is a complete, self-contained
//! diff that [`super::layer::write_layer`] can turn into a layer.
//!
//! # The copying snapshotter's diff
//! [`Active::diff`] makes `upper` valid. With overlayfs it already is (the kernel writes it).
//! With copies it compares the rootfs with the parent snapshot and writes, in overlay upper
//! format, every added or changed entry (with its parent directories) and a char-device 0/0
//! whiteout for every deleted one. Files are compared by type, mode, owner, size, mtime (ns),
//! device number, symlink target and xattrs; a regular file whose metadata all match but whose
//! ctime is not older than the end of the copy is compared by content, so a rewrite that keeps
//! size and mtime is still found.
//!
//! All mount and unmount calls go through the [`Mounter`] trait ([`LinuxMounter`] in
//! production) so mount options are unit-tested without root.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, RenameFlags, AT_FDCWD};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{self as nstat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use walkdir::WalkDir;

use super::digest::Digest;
use super::layer::{xattr_unsupported, LayerError, UnpackMode};

/// Result type of this module.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// Mount data is copied by the kernel into one page, terminating NUL included.
pub const MOUNT_DATA_LIMIT: usize = 4096;
/// overlayfs's maximum number of lower layers (`OVL_MAX_STACK`).
pub const OVERLAY_MAX_LOWERS: usize = 500;
/// Options that keep an overlay upper dir a self-contained diff.
const ACTIVE_EXTRA_OPTIONS: [&str; 3] = ["redirect_dir=off", "metacopy=off", "index=off"];
/// Longest parent chain followed before the metadata is declared corrupt (a cycle).
const MAX_CHAIN: usize = 4096;

/// The chain ID of a layer stack (OCI image spec): `chain(L0) = diffid(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diffid(Ln))`. `None` for no layers.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(first.clone(), |chain, diff_id| {
        chain_on(Some(&chain), diff_id)
    }))
}

/// The chain ID of a layer with diff ID `diff_id` on top of the chain `parent`.
pub fn chain_on(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
        None => diff_id.clone(),
    }
}

/// Errors of the snapshotters.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation on `path` failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {id} does not exist")]
    NotFound { id: Digest },
    #[error("cannot create snapshot {id}: its parent {parent} does not exist")]
    ParentNotFound { id: Digest, parent: Digest },
    #[error("snapshot {id} is in use by {by}")]
    InUse { id: Digest, by: String },
    /// The layer could not be written into the new snapshot.
    #[error("filling snapshot {id}: {source}")]
    Fill {
        id: Digest,
        #[source]
        source: LayerError,
    },
    #[error("mounting {fstype} on {} with options {options:?}: {source}", target.display())]
    Mount {
        target: PathBuf,
        fstype: &'static str,
        options: String,
        #[source]
        source: Errno,
    },
    #[error("unmounting {}: {source}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(
        "overlay mount options for {layers} layers take {len} bytes, over the kernel's limit of {limit} \
         bytes (one page), even with /proc/self/fd paths"
    )]
    MountOptionsTooLong {
        layers: usize,
        len: usize,
        limit: usize,
    },
    #[error("a chain of {layers} layers is more than overlayfs's limit of {limit} lower layers")]
    TooManyLayers { layers: usize, limit: usize },
    #[error("snapshot metadata {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn errno_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> SnapshotError + 'a {
    move |errno| io_err(op, path)(io::Error::from(errno))
}

/// A committed snapshot, as [`Snapshotter::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: Digest,
    pub parent: Option<Digest>,
    /// Bytes on disk of the snapshot's tree (allocated blocks, hard links counted once).
    pub size: u64,
}

/// Unpacked layer chains by chain ID.
pub trait Snapshotter: Send + Sync {
    /// `"overlayfs"` or `"copy"`.
    fn name(&self) -> &'static str;

    /// True if the committed snapshot `id` exists.
    fn exists(&self, id: &Digest) -> bool;

    /// Creates committed snapshot `id` = `parent` + one layer. `fill` writes the layer into
    /// the directory it is given with the mode given (overlay: an empty diff dir +
    /// `OverlayDiff`; copy: a full copy of the parent tree + `Apply`). Built in a temp dir,
    /// then renamed; if `id` already exists (another process won the race) the temp is
    /// discarded and `Ok` is returned. `fill` is not called when `id` already exists.
    fn create(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        fill: &mut dyn FnMut(&Path, UnpackMode) -> Result<(), LayerError>,
    ) -> Result<(), SnapshotError>;

    /// Read-only merged view of a committed snapshot (`None` = empty filesystem). Dropping
    /// the [`View`] unmounts and cleans up; while it lives, `remove` refuses its snapshots.
    fn view(&self, id: Option<&Digest>) -> Result<View, SnapshotError>;

    /// A writable rootfs on top of `parent` for running a step. Call [`Active::diff`] after
    /// the step to get the changes in overlay upper format. Dropping cleans up.
    fn prepare_active(&self, parent: Option<&Digest>) -> Result<Active, SnapshotError>;

    /// Removes a committed snapshot; refuses if another snapshot has it as parent or a live
    /// view or active rootfs uses it.
    fn remove(&self, id: &Digest) -> Result<(), SnapshotError>;

    /// Every committed snapshot with its parent and size on disk.
    fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError>;

    /// For a long-lived rootfs mounted by someone else (a container): the overlay mount
    /// options stacking `upper`/`work` on snapshot `id`'s chain. `None` when this snapshotter
    /// keeps full copies (the caller then copies a [`Snapshotter::view`] instead).
    fn overlay_options(
        &self,
        _id: Option<&Digest>,
        _upper: &Path,
        _work: &Path,
    ) -> Result<Option<String>, SnapshotError> {
        Ok(None)
    }

    /// The directory holding exactly snapshot `id`'s own layer, in overlay upper format
    /// (overlay snapshotter), from which [`super::layer::write_layer`] regenerates the
    /// layer's tar byte for byte. `None` when the snapshot does not exist or snapshots hold
    /// merged trees (copying snapshotter): then layer blobs must be kept in the content store.
    fn layer_dir(&self, id: &Digest) -> Option<PathBuf>;

    /// Whether [`Snapshotter::layer_dir`] can answer (snapshots keep per-layer diffs).
    fn keeps_layer_diffs(&self) -> bool;
}

// ---------------------------------------------------------------------------------------------
// Kernel calls
// ---------------------------------------------------------------------------------------------

/// The mount system calls the snapshotters make. [`LinuxMounter`] makes the real calls; tests
/// use a recording double.
pub trait Mounter: Send + Sync {
    /// `mount(2)` with source `source`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
}

/// The real [`Mounter`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }
}

/// Overlay mount data for `lowers` (top first) and an optional upper/work pair, with the
/// directory file descriptors that must stay open until the mount call returns.
fn overlay_data(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra: &[&str],
) -> Result<(String, Vec<OwnedFd>)> {
    if lowers.len() > OVERLAY_MAX_LOWERS {
        return Err(SnapshotError::TooManyLayers {
            layers: lowers.len(),
            limit: OVERLAY_MAX_LOWERS,
        });
    }
    let build = |lowers: &[String], upper: Option<(String, String)>| {
        let mut data = format!("lowerdir={}", lowers.join(":"));
        if let Some((upper, work)) = upper {
            data.push_str(&format!(",upperdir={upper},workdir={work}"));
        }
        for option in extra {
            data.push(',');
            data.push_str(option);
        }
        data
    };
    // Paths overlayfs would split or unescape are never passed literally.
    let plain = |p: &Path| {
        p.to_str()
            .filter(|s| !s.contains([',', ':', '\\']))
            .map(str::to_string)
    };
    let plain_lowers: Option<Vec<String>> = lowers.iter().map(|p| plain(p)).collect();
    let plain_upper = match upper {
        Some((u, w)) => plain(u).zip(plain(w)).map(Some),
        None => Some(None),
    };
    if let (Some(l), Some(u)) = (plain_lowers, plain_upper) {
        let data = build(&l, u);
        if data.len() < MOUNT_DATA_LIMIT {
            return Ok((data, Vec::new()));
        }
    }
    let mut fds = Vec::new();
    let mut open = |p: &Path| -> Result<String> {
        let fd = nix::fcntl::open(
            p,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_err("opening", p))?;
        let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
        fds.push(fd);
        Ok(name)
    };
    let l = lowers.iter().map(|p| open(p)).collect::<Result<Vec<_>>>()?;
    let u = match upper {
        Some((u, w)) => Some((open(u)?, open(w)?)),
        None => None,
    };
    let data = build(&l, u);
    if data.len() >= MOUNT_DATA_LIMIT {
        return Err(SnapshotError::MountOptionsTooLong {
            layers: lowers.len(),
            len: data.len(),
            limit: MOUNT_DATA_LIMIT,
        });
    }
    Ok((data, fds))
}

fn mount_overlay(
    mounter: &dyn Mounter,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    flags: MsFlags,
    extra: &[&str],
) -> Result<()> {
    let (data, _fds) = overlay_data(lowers, upper, extra)?;
    mounter
        .mount("overlay", target, "overlay", flags, Some(&data))
        .map_err(|source| SnapshotError::Mount {
            target: target.to_path_buf(),
            fstype: "overlay",
            options: data.clone(),
            source,
        })
}

/// A writable overlay mount, with the extra options when the kernel knows them.
fn mount_overlay_rw(
    mounter: &dyn Mounter,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    match mount_overlay(
        mounter,
        lowers,
        Some((upper, work)),
        target,
        MsFlags::empty(),
        &ACTIVE_EXTRA_OPTIONS,
    ) {
        Err(SnapshotError::Mount {
            source: Errno::EINVAL,
            ..
        }) => {
            tracing::debug!("overlayfs refused {ACTIVE_EXTRA_OPTIONS:?}; mounting without them");
            mount_overlay(
                mounter,
                lowers,
                Some((upper, work)),
                target,
                MsFlags::empty(),
                &[],
            )
        }
        other => other,
    }
}

/// Unmounts `target`, retrying while it is busy, then detaching it lazily.
fn unmount(mounter: &dyn Mounter, target: &Path) -> Result<()> {
    for attempt in 0..10 {
        match mounter.umount(target, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if attempt < 9 => std::thread::sleep(Duration::from_millis(20)),
            Err(Errno::EBUSY) => break,
            Err(source) => {
                return Err(SnapshotError::Unmount {
                    target: target.to_path_buf(),
                    source,
                })
            }
        }
    }
    tracing::warn!(target = %target.display(), "mount still busy; detaching it lazily");
    mounter
        .umount(target, MntFlags::MNT_DETACH)
        .map_err(|source| SnapshotError::Unmount {
            target: target.to_path_buf(),
            source,
        })
}

/// True if something is mounted on `path` (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(m), Some(Ok(pm))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    m.dev() != pm.dev()
}

// ---------------------------------------------------------------------------------------------
// Views and active rootfs
// ---------------------------------------------------------------------------------------------

/// Owns a `mounts/` directory: holds its lock, unmounts and removes it when released.
struct Guard {
    dir: PathBuf,
    mounted: Option<PathBuf>,
    mounter: Option<Arc<dyn Mounter>>,
    lock: Option<Flock<File>>,
    released: bool,
}

impl Guard {
    /// Unmounts what this guard mounted (once), checking it is really gone.
    fn unmount(&mut self) -> Result<()> {
        if let (Some(target), Some(mounter)) = (self.mounted.take(), self.mounter.as_deref()) {
            unmount(mounter, &target)?;
            if is_mount_point(&target) {
                return Err(SnapshotError::Unmount {
                    target,
                    source: Errno::EBUSY,
                });
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.unmount()?;
        fs::remove_dir_all(&self.dir).map_err(io_err("removing", &self.dir))?;
        self.lock = None;
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cleaning up a snapshot mount failed");
        }
    }
}

/// A read-only view of a snapshot. Dropping it unmounts and removes its mount directory;
/// [`View::close`] does the same and reports errors.
pub struct View {
    path: PathBuf,
    guard: Guard,
}

impl View {
    /// The root of the merged tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and cleans up now.
    pub fn close(mut self) -> Result<()> {
        self.guard.release()
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("path", &self.path).finish()
    }
}

enum ActiveKind {
    Overlay,
    Copy {
        /// The parent snapshot's tree (`None`: the step started from an empty rootfs).
        base: Option<PathBuf>,
        /// ctime of a marker written right after the copy finished.
        since: (i64, i64),
    },
}

/// A writable rootfs for running a step on top of a snapshot.
///
/// `upper` holds the step's changes in overlay upper format (a char device 0/0 is a
/// whiteout, `trusted.overlay.opaque=y` marks an opaque directory) once [`Active::diff`] has
/// returned, so `write_layer(upper)` makes the step's layer. Dropping unmounts and deletes
/// everything; [`Active::close`] does the same and reports errors.
pub struct Active {
    /// Where the step runs (the root of its filesystem).
    pub rootfs: PathBuf,
    /// The step's changes; valid after [`Active::diff`].
    pub upper: PathBuf,
    kind: ActiveKind,
    guard: Guard,
}

impl Active {
    /// Makes `upper` hold the changes made under `rootfs`, and returns it. With overlayfs the
    /// kernel already keeps it up to date (nothing to do); with the copying snapshotter it is
    /// computed now by comparing `rootfs` with the parent snapshot (recomputed on each call).
    /// Call it once the step has finished writing.
    pub fn diff(&mut self) -> Result<&Path> {
        if let ActiveKind::Copy { base, since } = &self.kind {
            if fs::symlink_metadata(&self.upper).is_ok() {
                fs::remove_dir_all(&self.upper).map_err(io_err("removing", &self.upper))?;
            }
            make_dir(&self.upper, 0o755)?;
            let mut differ = Differ {
                base: base.as_deref(),
                new: &self.rootfs,
                upper: &self.upper,
                since: *since,
                copier: Copier::default(),
                upper_dirs: HashSet::new(),
            };
            differ.run()?;
        }
        Ok(&self.upper)
    }

    /// Unmounts the rootfs but keeps `upper`, so that its entries can be moved into a
    /// committed snapshot instead of copied. Call after [`Active::diff`]; `rootfs` is unusable
    /// afterwards. Dropping or [`Active::close`] still removes whatever is left.
    pub fn unmount(&mut self) -> Result<()> {
        self.guard.unmount()
    }

    /// Unmounts and cleans up now.
    pub fn close(mut self) -> Result<()> {
        self.guard.release()
    }
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("rootfs", &self.rootfs)
            .field("upper", &self.upper)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The on-disk store both snapshotters share
// ---------------------------------------------------------------------------------------------

struct Store {
    kind: &'static str,
    /// `root/snapshots/<kind>`
    dir: PathBuf,
    /// `root/snapshots/<kind>/.tmp`
    tmp: PathBuf,
    /// `root/mounts`
    mounts: PathBuf,
    /// Used to reap stale mounts (overlay only).
    mounter: Option<Arc<dyn Mounter>>,
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err("creating directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting mode of", path))
}

fn make_dir_all(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("creating directory", path))
}

fn tempdir_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .map(tempfile::TempDir::keep)
        .map_err(io_err("creating a directory in", dir))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove temporary snapshot directory");
    }
}

impl Store {
    fn open(root: &Path, kind: &'static str, mounter: Option<Arc<dyn Mounter>>) -> Result<Store> {
        let dir = root.join("snapshots").join(kind);
        let tmp = dir.join(".tmp");
        let mounts = root.join("mounts");
        make_dir_all(&tmp)?;
        make_dir_all(&mounts)?;
        Ok(Store {
            kind,
            dir,
            tmp,
            mounts,
            mounter,
        })
    }

    fn snap_dir(&self, id: &Digest) -> PathBuf {
        self.dir.join(id.hex())
    }

    fn fs_dir(&self, id: &Digest) -> PathBuf {
        self.snap_dir(id).join("fs")
    }

    fn exists(&self, id: &Digest) -> bool {
        self.fs_dir(id).is_dir()
    }

    fn lock(&self, exclusive: bool) -> Result<Flock<File>> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(file, arg).map_err(|(_, errno)| errno_err("locking", &path)(errno))
    }

    fn parent_of(&self, id: &Digest) -> Result<Option<Digest>> {
        let path = self.snap_dir(id).join("parent");
        match fs::read_to_string(&path) {
            Ok(s) => Digest::parse(s.trim())
                .map(Some)
                .map_err(|e| SnapshotError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// `id` and its ancestors, top first.
    fn chain(&self, id: &Digest) -> Result<Vec<Digest>> {
        let mut chain = vec![id.clone()];
        let mut cur = id.clone();
        while let Some(parent) = self.parent_of(&cur)? {
            if !self.exists(&parent) {
                return Err(SnapshotError::Corrupt {
                    path: self.snap_dir(&cur),
                    reason: format!("parent {parent} is missing"),
                });
            }
            if chain.len() >= MAX_CHAIN {
                return Err(SnapshotError::Corrupt {
                    path: self.snap_dir(id),
                    reason: "the parent chain does not end (a cycle?)".into(),
                });
            }
            chain.push(parent.clone());
            cur = parent;
        }
        Ok(chain)
    }

    fn ids(&self) -> Result<Vec<Digest>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))? {
            let entry = entry.map_err(io_err("reading", &self.dir))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn create(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        mode: UnpackMode,
        populate: &dyn Fn(&Path) -> Result<()>,
        fill: &mut dyn FnMut(&Path, UnpackMode) -> Result<(), LayerError>,
    ) -> Result<()> {
        if self.exists(id) {
            return Ok(());
        }
        let check_parent = || match parent {
            Some(p) if !self.exists(p) => Err(SnapshotError::ParentNotFound {
                id: id.clone(),
                parent: p.clone(),
            }),
            _ => Ok(()),
        };
        check_parent()?;
        let tmp = tempdir_in(&self.tmp, "create-")?;
        let built = (|| {
            let fs_dir = tmp.join("fs");
            populate(&fs_dir)?;
            fill(&fs_dir, mode).map_err(|source| SnapshotError::Fill {
                id: id.clone(),
                source,
            })?;
            if let Some(p) = parent {
                let path = tmp.join("parent");
                fs::write(&path, p.as_str()).map_err(io_err("writing", &path))?;
            }
            Ok(())
        })();
        if let Err(e) = built {
            remove_quietly(&tmp);
            return Err(e);
        }
        let _lock = self.lock(false)?;
        if let Err(e) = check_parent() {
            remove_quietly(&tmp);
            return Err(e);
        }
        let target = self.snap_dir(id);
        match nix::fcntl::renameat2(
            AT_FDCWD,
            &tmp,
            AT_FDCWD,
            &target,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                tracing::debug!(kind = self.kind, %id, "committed snapshot");
                Ok(())
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                tracing::debug!(kind = self.kind, %id, "snapshot committed concurrently; discarding ours");
                remove_quietly(&tmp);
                Ok(())
            }
            Err(errno) => {
                remove_quietly(&tmp);
                Err(errno_err("renaming into place", &target)(errno))
            }
        }
    }

    /// A new `mounts/` directory using `uses`; call with the store lock held (shared).
    fn new_guard(&self, what: &str, uses: &[Digest]) -> Result<Guard> {
        let dir = tempdir_in(&self.mounts, &format!("{}-{what}-", self.kind))?;
        let mut guard = Guard {
            dir: dir.clone(),
            mounted: None,
            mounter: self.mounter.clone(),
            lock: None,
            released: false,
        };
        let lock_path = dir.join("lock");
        let file = File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        guard.lock = Some(
            Flock::lock(file, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, errno)| errno_err("locking", &lock_path)(errno))?,
        );
        let uses_path = dir.join("uses");
        let text: String = uses.iter().map(|d| format!("{d}\n")).collect();
        fs::write(&uses_path, text).map_err(io_err("writing", &uses_path))?;
        Ok(guard)
    }

    /// The snapshot IDs used by live views and actives of this kind, by mount directory.
    /// Directories of dead owners are reaped. Call with the store lock held exclusively.
    fn live_uses(&self) -> Result<Vec<(PathBuf, Vec<Digest>)>> {
        let prefix = format!("{}-", self.kind);
        let mut live = Vec::new();
        for entry in fs::read_dir(&self.mounts).map_err(io_err("reading", &self.mounts))? {
            let entry = entry.map_err(io_err("reading", &self.mounts))?;
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let dir = entry.path();
            let lock_path = dir.join("lock");
            let file = match File::open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Its creator died between creating the directory and the lock.
                    self.reap(&dir);
                    continue;
                }
                Err(e) => return Err(io_err("opening", &lock_path)(e)),
            };
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                Ok(lock) => {
                    self.reap(&dir);
                    drop(lock);
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    let uses_path = dir.join("uses");
                    let text = fs::read_to_string(&uses_path).unwrap_or_default();
                    let uses = text
                        .lines()
                        .filter_map(|l| Digest::parse(l.trim()).ok())
                        .collect();
                    live.push((dir, uses));
                }
                Err((_, errno)) => return Err(errno_err("locking", &lock_path)(errno)),
            }
        }
        Ok(live)
    }

    /// Removes the mount directory of a dead owner, unmounting what is still mounted there.
    fn reap(&self, dir: &Path) {
        for sub in ["merged", "rootfs"] {
            let target = dir.join(sub);
            if is_mount_point(&target) {
                if let Some(mounter) = &self.mounter {
                    if let Err(e) = mounter.umount(&target, MntFlags::MNT_DETACH) {
                        tracing::warn!(target = %target.display(), error = %e, "cannot unmount a stale mount");
                    }
                }
                if is_mount_point(&target) {
                    return;
                }
            }
        }
        tracing::info!(dir = %dir.display(), "removing the mount directory of a dead process");
        remove_quietly(dir);
    }

    fn remove(&self, id: &Digest) -> Result<()> {
        let lock = self.lock(true)?;
        if !self.exists(id) {
            return Err(SnapshotError::NotFound { id: id.clone() });
        }
        let mut children = Vec::new();
        for other in self.ids()? {
            if self.parent_of(&other)?.as_ref() == Some(id) {
                children.push(other);
            }
        }
        if let Some(first) = children.first() {
            return Err(SnapshotError::InUse {
                id: id.clone(),
                by: format!("{} child snapshot(s), e.g. {first}", children.len()),
            });
        }
        for (dir, uses) in self.live_uses()? {
            if uses.contains(id) {
                return Err(SnapshotError::InUse {
                    id: id.clone(),
                    by: format!("a live view or rootfs ({})", dir.display()),
                });
            }
        }
        let trash = tempdir_in(&self.tmp, "remove-")?;
        let src = self.snap_dir(id);
        let dst = trash.join("snapshot");
        fs::rename(&src, &dst).map_err(io_err("moving away", &src))?;
        drop(lock);
        fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))
    }

    fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            // A snapshot removed while we list is simply not listed.
            let info = (|| {
                let parent = self.parent_of(&id)?;
                let size = disk_usage(&self.fs_dir(&id))?;
                Ok(SnapshotInfo {
                    id: id.clone(),
                    parent,
                    size,
                })
            })();
            match info {
                Ok(info) => out.push(info),
                Err(_) if !self.exists(&id) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Allocated bytes of a tree, hard links counted once.
pub(crate) fn disk_usage(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for entry in WalkDir::new(path) {
        let entry = entry.map_err(|e| SnapshotError::Io {
            op: "walking",
            path: e.path().unwrap_or(path).to_path_buf(),
            source: e.into(),
        })?;
        let m = entry.metadata().map_err(|e| SnapshotError::Io {
            op: "reading metadata of",
            path: entry.path().to_path_buf(),
            source: e.into(),
        })?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// overlayfs
// ---------------------------------------------------------------------------------------------

/// Snapshots as overlay layers: each snapshot holds its layer's diff only.
pub struct OverlaySnapshotter {
    store: Store,
    mounter: Arc<dyn Mounter>,
}

impl OverlaySnapshotter {
    /// Opens (creating if needed) the overlay snapshots under `root`.
    pub fn new(root: &Path) -> Result<Self> {
        Self::with_mounter(root, Arc::new(LinuxMounter))
    }

    /// Like [`OverlaySnapshotter::new`], with the given mount calls (for tests).
    pub fn with_mounter(root: &Path, mounter: Arc<dyn Mounter>) -> Result<Self> {
        Ok(OverlaySnapshotter {
            store: Store::open(root, "overlayfs", Some(mounter.clone()))?,
            mounter,
        })
    }

    /// Locks the store, checks `id`, resolves its chain and registers a mount directory.
    fn guard_for(&self, id: Option<&Digest>, what: &str) -> Result<(Guard, Vec<PathBuf>)> {
        let _lock = self.store.lock(false)?;
        let chain = match id {
            Some(id) if !self.store.exists(id) => {
                return Err(SnapshotError::NotFound { id: id.clone() })
            }
            Some(id) => self.store.chain(id)?,
            None => Vec::new(),
        };
        let guard = self.store.new_guard(what, &chain)?;
        let lowers = chain.iter().map(|d| self.store.fs_dir(d)).collect();
        Ok((guard, lowers))
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn exists(&self, id: &Digest) -> bool {
        self.store.exists(id)
    }

    fn layer_dir(&self, id: &Digest) -> Option<PathBuf> {
        self.store.exists(id).then(|| self.store.fs_dir(id))
    }

    fn keeps_layer_diffs(&self) -> bool {
        true
    }

    fn create(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        fill: &mut dyn FnMut(&Path, UnpackMode) -> Result<(), LayerError>,
    ) -> Result<()> {
        self.store.create(
            id,
            parent,
            UnpackMode::OverlayDiff,
            &|fs_dir| make_dir(fs_dir, 0o755),
            fill,
        )
    }

    fn view(&self, id: Option<&Digest>) -> Result<View> {
        let (mut guard, mut lowers) = self.guard_for(id, "view")?;
        let merged = guard.dir.join("merged");
        make_dir(&merged, 0o755)?;
        // A read-only overlay needs two lower directories at least.
        while lowers.len() < 2 {
            let empty = guard.dir.join(format!("empty{}", lowers.len()));
            make_dir(&empty, 0o755)?;
            lowers.push(empty);
        }
        mount_overlay(
            self.mounter.as_ref(),
            &lowers,
            None,
            &merged,
            MsFlags::MS_RDONLY,
            &[],
        )?;
        guard.mounted = Some(merged.clone());
        Ok(View {
            path: merged,
            guard,
        })
    }

    fn prepare_active(&self, parent: Option<&Digest>) -> Result<Active> {
        let (mut guard, mut lowers) = self.guard_for(parent, "active")?;
        let rootfs = guard.dir.join("rootfs");
        let upper = guard.dir.join("upper");
        let work = guard.dir.join("work");
        for dir in [&rootfs, &upper, &work] {
            make_dir(dir, 0o755)?;
        }
        if lowers.is_empty() {
            let empty = guard.dir.join("empty0");
            make_dir(&empty, 0o755)?;
            lowers.push(empty);
        }
        mount_overlay_rw(self.mounter.as_ref(), &lowers, &upper, &work, &rootfs)?;
        guard.mounted = Some(rootfs.clone());
        Ok(Active {
            rootfs,
            upper,
            kind: ActiveKind::Overlay,
            guard,
        })
    }

    fn remove(&self, id: &Digest) -> Result<()> {
        self.store.remove(id)
    }

    fn list(&self) -> Result<Vec<SnapshotInfo>> {
        self.store.list()
    }

    fn overlay_options(
        &self,
        id: Option<&Digest>,
        upper: &Path,
        work: &Path,
    ) -> Result<Option<String>> {
        let mut lowers: Vec<PathBuf> = {
            let _lock = self.store.lock(false)?;
            match id {
                Some(id) if !self.store.exists(id) => {
                    return Err(SnapshotError::NotFound { id: id.clone() })
                }
                Some(id) => self.store.chain(id)?,
                None => Vec::new(),
            }
            .iter()
            .map(|d| self.store.fs_dir(d))
            .collect()
        };
        if lowers.is_empty() {
            // overlayfs needs a lower directory: an empty one next to the upper.
            let empty = upper.with_file_name("empty");
            fs::create_dir_all(&empty).map_err(io_err("creating directory", &empty))?;
            lowers.push(empty);
        }
        let (data, fds) = overlay_data(&lowers, Some((upper, work)), &ACTIVE_EXTRA_OPTIONS)?;
        if !fds.is_empty() {
            return Err(SnapshotError::MountOptionsTooLong {
                layers: lowers.len(),
                len: data.len(),
                limit: MOUNT_DATA_LIMIT,
            });
        }
        Ok(Some(data))
    }
}

// ---------------------------------------------------------------------------------------------
// Copies
// ---------------------------------------------------------------------------------------------

/// Snapshots as full copies: each snapshot holds the whole merged tree.
pub struct CopySnapshotter {
    store: Store,
}

impl CopySnapshotter {
    /// Opens (creating if needed) the copy snapshots under `root`.
    pub fn new(root: &Path) -> Result<Self> {
        Ok(CopySnapshotter {
            store: Store::open(root, "copy", None)?,
        })
    }
}

impl Snapshotter for CopySnapshotter {
    fn name(&self) -> &'static str {
        "copy"
    }

    fn exists(&self, id: &Digest) -> bool {
        self.store.exists(id)
    }

    fn layer_dir(&self, _id: &Digest) -> Option<PathBuf> {
        None
    }

    fn keeps_layer_diffs(&self) -> bool {
        false
    }

    fn create(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        fill: &mut dyn FnMut(&Path, UnpackMode) -> Result<(), LayerError>,
    ) -> Result<()> {
        let populate = |fs_dir: &Path| match parent {
            Some(p) => copy_tree(&self.store.fs_dir(p), fs_dir),
            None => make_dir(fs_dir, 0o755),
        };
        self.store
            .create(id, parent, UnpackMode::Apply, &populate, fill)
    }

    fn view(&self, id: Option<&Digest>) -> Result<View> {
        let _lock = self.store.lock(false)?;
        if let Some(id) = id {
            if !self.store.exists(id) {
                return Err(SnapshotError::NotFound { id: id.clone() });
            }
        }
        let uses: Vec<Digest> = id.into_iter().cloned().collect();
        let guard = self.store.new_guard("view", &uses)?;
        let path = match id {
            Some(id) => self.store.fs_dir(id),
            None => {
                let empty = guard.dir.join("empty");
                make_dir(&empty, 0o755)?;
                empty
            }
        };
        Ok(View { path, guard })
    }

    fn prepare_active(&self, parent: Option<&Digest>) -> Result<Active> {
        let guard = {
            let _lock = self.store.lock(false)?;
            if let Some(id) = parent {
                if !self.store.exists(id) {
                    return Err(SnapshotError::NotFound { id: id.clone() });
                }
            }
            let uses: Vec<Digest> = parent.into_iter().cloned().collect();
            self.store.new_guard("active", &uses)?
        };
        let rootfs = guard.dir.join("rootfs");
        let upper = guard.dir.join("upper");
        let base = parent.map(|p| self.store.fs_dir(p));
        match &base {
            Some(base) => copy_tree(base, &rootfs)?,
            None => make_dir(&rootfs, 0o755)?,
        }
        make_dir(&upper, 0o755)?;
        let marker = guard.dir.join("since");
        File::create(&marker).map_err(io_err("creating", &marker))?;
        let m = fs::symlink_metadata(&marker).map_err(io_err("reading metadata of", &marker))?;
        Ok(Active {
            rootfs,
            upper,
            kind: ActiveKind::Copy {
                base,
                since: (m.ctime(), m.ctime_nsec()),
            },
            guard,
        })
    }

    fn remove(&self, id: &Digest) -> Result<()> {
        self.store.remove(id)
    }

    fn list(&self) -> Result<Vec<SnapshotInfo>> {
        self.store.list()
    }
}

/// Copies files preserving type, ownership, mode, xattrs, times, devices and hard links
/// (within one copy); directory times are set by [`Copier::finish`].
#[derive(Default)]
struct Copier {
    /// (dev, ino) of a source with several links → the first copy made of it.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories created, with their source metadata, for their times.
    dir_times: Vec<(PathBuf, fs::Metadata)>,
}

impl Copier {
    fn copy_node(&mut self, src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<()> {
        let ft = meta.file_type();
        let key = (meta.dev(), meta.ino());
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                return fs::hard_link(first, dst).map_err(io_err("creating hard link", dst));
            }
        }
        if ft.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dst)
                .map_err(io_err("creating directory", dst))?;
        } else if ft.is_file() {
            fs::copy(src, dst).map_err(io_err("copying to", dst))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err("reading symlink", src))?;
            std::os::unix::fs::symlink(&target, dst).map_err(io_err("creating symlink", dst))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            nstat::mknod(dst, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(errno_err("creating node", dst))?;
        } else {
            tracing::debug!(path = %src.display(), "not copying a socket");
            return Ok(());
        }
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("changing owner of", dst))?;
        if !ft.is_symlink() {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("setting mode of", dst))?;
        }
        copy_xattrs(src, dst)?;
        if ft.is_dir() {
            self.dir_times.push((dst.to_path_buf(), meta.clone()));
        } else {
            set_times(dst, meta)?;
            if meta.nlink() > 1 {
                self.links.insert(key, dst.to_path_buf());
            }
        }
        Ok(())
    }

    /// Copies everything below the directory `src` into the existing directory `dst`.
    fn copy_children(&mut self, src: &Path, dst: &Path) -> Result<()> {
        for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
            let entry = entry.map_err(|e| SnapshotError::Io {
                op: "walking",
                path: e.path().unwrap_or(src).to_path_buf(),
                source: e.into(),
            })?;
            let rel = entry
                .path()
                .strip_prefix(src)
                .map_err(|_| SnapshotError::Corrupt {
                    path: entry.path().to_path_buf(),
                    reason: "walked outside the tree".into(),
                })?;
            let meta = entry.metadata().map_err(|e| SnapshotError::Io {
                op: "reading metadata of",
                path: entry.path().to_path_buf(),
                source: e.into(),
            })?;
            self.copy_node(entry.path(), &dst.join(rel), &meta)?;
        }
        Ok(())
    }

    /// Sets the times of the directories created, deepest last-created first.
    fn finish(&mut self) -> Result<()> {
        for (dir, meta) in self.dir_times.drain(..).rev() {
            set_times(&dir, &meta)?;
        }
        Ok(())
    }
}

/// Copies the tree `src` to `dst` (which must not exist).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).map_err(io_err("reading metadata of", src))?;
    let mut copier = Copier::default();
    copier.copy_node(src, dst, &meta)?;
    copier.copy_children(src, dst)?;
    copier.finish()
}

fn set_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nstat::utimensat(
        AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_err("setting times of", path))
}

/// The xattrs of `path` (not following symlinks), sorted.
fn xattrs_of(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if xattr_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name, value)),
            Ok(None) => {}
            Err(e) if xattr_unsupported(&e) => {}
            Err(e) => return Err(io_err("reading xattrs of", path)(e)),
        }
    }
    out.sort();
    Ok(out)
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    for (name, value) in xattrs_of(src)? {
        match xattr::set(dst, &name, &value) {
            Ok(()) => {}
            Err(e) if xattr_unsupported(&e) => {
                tracing::debug!(path = %dst.display(), name = ?name, error = %e, "xattr not copied");
            }
            Err(e) => return Err(io_err("setting xattrs of", dst)(e)),
        }
    }
    Ok(())
}

fn same_kind(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    (a.mode() & nix::libc::S_IFMT) == (b.mode() & nix::libc::S_IFMT)
}

fn names_in(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("reading directory", dir))? {
        names.push(entry.map_err(io_err("reading directory", dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).map_err(io_err("opening", a))?;
    let mut fb = File::open(b).map_err(io_err("opening", b))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = super::layer::read_up_to(&mut fa, &mut ba).map_err(io_err("reading", a))?;
        let nb = super::layer::read_up_to(&mut fb, &mut bb).map_err(io_err("reading", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Computes a copy-snapshotter step's changes in overlay upper format.
struct Differ<'a> {
    base: Option<&'a Path>,
    new: &'a Path,
    upper: &'a Path,
    since: (i64, i64),
    copier: Copier,
    /// Directories (relative) already present in `upper`.
    upper_dirs: HashSet<PathBuf>,
}

impl Differ<'_> {
    fn run(&mut self) -> Result<()> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let names = names_in(&self.new.join(&rel))?;
            let old_names: Vec<OsString> = match self.base {
                Some(base) => names_in(&base.join(&rel))?,
                None => Vec::new(),
            };
            let new_set: HashSet<&OsString> = names.iter().collect();
            let old_set: HashSet<&OsString> = old_names.iter().collect();
            for name in &names {
                let crel = rel.join(name);
                let new_path = self.new.join(&crel);
                let nm = fs::symlink_metadata(&new_path)
                    .map_err(io_err("reading metadata of", &new_path))?;
                let old = match (self.base, old_set.contains(name)) {
                    (Some(base), true) => {
                        let p = base.join(&crel);
                        let om =
                            fs::symlink_metadata(&p).map_err(io_err("reading metadata of", &p))?;
                        Some((p, om))
                    }
                    _ => None,
                };
                match old {
                    None => self.add(&crel, &nm)?,
                    Some((old_path, om)) if nm.is_dir() && om.is_dir() => {
                        if attrs_differ(&om, &nm) || xattrs_of(&old_path)? != xattrs_of(&new_path)?
                        {
                            self.ensure_dir(&crel)?;
                        }
                        stack.push(crel);
                    }
                    Some((old_path, om))
                        if same_kind(&om, &nm)
                            && !self.changed(&old_path, &new_path, &om, &nm)? => {}
                    Some(_) => self.add(&crel, &nm)?,
                }
            }
            for name in old_names.iter().filter(|n| !new_set.contains(n)) {
                self.whiteout(&rel.join(name))?;
            }
        }
        self.copier.finish()
    }

    /// Creates `rel` and its missing parents in `upper`, with the metadata of `rootfs`.
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            if self.upper_dirs.contains(&cur) {
                continue;
            }
            let src = self.new.join(&cur);
            let meta = fs::symlink_metadata(&src).map_err(io_err("reading metadata of", &src))?;
            self.copier.copy_node(&src, &self.upper.join(&cur), &meta)?;
            self.upper_dirs.insert(cur.clone());
        }
        Ok(())
    }

    fn add(&mut self, rel: &Path, meta: &fs::Metadata) -> Result<()> {
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let src = self.new.join(rel);
        let dst = self.upper.join(rel);
        self.copier.copy_node(&src, &dst, meta)?;
        if meta.is_dir() {
            self.upper_dirs.insert(rel.to_path_buf());
            self.copier.copy_children(&src, &dst)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path) -> Result<()> {
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let dst = self.upper.join(rel);
        nstat::mknod(&dst, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(errno_err("creating whiteout", &dst))
    }

    /// Whether a non-directory of the same type differs between the parent and the rootfs.
    fn changed(
        &self,
        old: &Path,
        new: &Path,
        om: &fs::Metadata,
        nm: &fs::Metadata,
    ) -> Result<bool> {
        if attrs_differ(om, nm) || om.len() != nm.len() || om.rdev() != nm.rdev() {
            return Ok(true);
        }
        let ft = nm.file_type();
        if ft.is_symlink()
            && fs::read_link(old).map_err(io_err("reading symlink", old))?
                != fs::read_link(new).map_err(io_err("reading symlink", new))?
        {
            return Ok(true);
        }
        if xattrs_of(old)? != xattrs_of(new)? {
            return Ok(true);
        }
        if ft.is_file() && (nm.ctime(), nm.ctime_nsec()) >= self.since {
            // Touched since the copy, yet size and mtime match: look at the bytes.
            return Ok(!same_content(old, new)?);
        }
        Ok(false)
    }
}

/// Mode, ownership and mtime (ns) differ.
fn attrs_differ(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
        || (a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec())
}

// ---------------------------------------------------------------------------------------------
// Choosing one
// ---------------------------------------------------------------------------------------------

/// The overlay snapshotter when the kernel and the filesystem under `root` support it (probed
/// by mounting a tiny overlay and deleting a file through it, on a root without snapshots
/// yet), else the copying one. A root keeps the kind it started with.
pub fn open_default(root: &Path) -> Result<Box<dyn Snapshotter>> {
    // A root that already has snapshots keeps its kind: probing mounts a test overlay, too
    // slow for every command (`kiln run`, every export).
    let existing = root.join("snapshots");
    if existing.join("overlayfs").is_dir() {
        return Ok(Box::new(OverlaySnapshotter::new(root)?));
    }
    if existing.join("copy").is_dir() {
        return Ok(Box::new(CopySnapshotter::new(root)?));
    }
    let mounts = root.join("mounts");
    make_dir_all(&mounts)?;
    match probe_overlay(&mounts, &LinuxMounter) {
        Ok(()) => Ok(Box::new(OverlaySnapshotter::new(root)?)),
        Err(e) => {
            tracing::info!(error = %e, "overlayfs is not usable here; using the copying snapshotter");
            Ok(Box::new(CopySnapshotter::new(root)?))
        }
    }
}

/// Mounts a writable overlay of two lower dirs in `dir`, deletes a lower file through it and
/// checks that the upper dir got a whiteout.
fn probe_overlay(dir: &Path, mounter: &dyn Mounter) -> Result<()> {
    let tmp = tempdir_in(dir, "probe-")?;
    let result = (|| {
        let [lower0, lower1, upper, work, merged] =
            ["lower0", "lower1", "upper", "work", "merged"].map(|d| tmp.join(d));
        for d in [&lower0, &lower1, &upper, &work, &merged] {
            make_dir(d, 0o755)?;
        }
        let probe = lower0.join("probe");
        fs::write(&probe, b"probe").map_err(io_err("writing", &probe))?;
        mount_overlay_rw(mounter, &[lower0, lower1], &upper, &work, &merged)?;
        let checked = (|| {
            let through = merged.join("probe");
            fs::remove_file(&through).map_err(io_err("deleting through the overlay", &through))?;
            let wh = upper.join("probe");
            let m = fs::symlink_metadata(&wh).map_err(io_err("reading the whiteout", &wh))?;
            if m.file_type().is_char_device() && m.rdev() == 0 {
                Ok(())
            } else {
                Err(SnapshotError::Corrupt {
                    path: wh,
                    reason: "overlayfs did not write a char-device whiteout".into(),
                })
            }
        })();
        let unmounted = unmount(mounter, &merged);
        checked.and(unmounted)
    })();
    if !is_mount_point(&tmp.join("merged")) {
        remove_quietly(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::layer::{unpack_layer, write_layer, Compression, LayerOptions};
    use super::*;
    use std::sync::Mutex;

    fn mknod_whiteout(path: &Path) {
        nstat::mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    }

    /// A layer blob (and its diff ID) from an upper dir built by `build`.
    fn layer(build: impl FnOnce(&Path)) -> (Digest, Vec<u8>) {
        let upper = tempfile::tempdir().unwrap();
        build(upper.path());
        let mut blob = Vec::new();
        let info = write_layer(
            upper.path(),
            Compression::Gzip,
            &LayerOptions::default(),
            &mut blob,
        )
        .unwrap();
        (info.diff_id, blob)
    }

    fn filler(blob: &[u8]) -> impl FnMut(&Path, UnpackMode) -> Result<(), LayerError> + '_ {
        move |dir, mode| unpack_layer(blob, dir, mode).map(|_| ())
    }

    /// `path kind content` lines for a tree (whiteouts would show as `chr`).
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type();
            let line = if ft.is_dir() {
                format!("{rel}/")
            } else if ft.is_symlink() {
                format!("{rel} -> {}", fs::read_link(e.path()).unwrap().display())
            } else if ft.is_file() {
                format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(&fs::read(e.path()).unwrap())
                )
            } else {
                format!("{rel} (special)")
            };
            out.push(line);
        }
        out
    }

    fn mounts_under(root: &Path) -> usize {
        let root = root.to_str().unwrap();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(root)))
            .count()
    }

    fn mount_dirs(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join("mounts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn tmp_entries(root: &Path, kind: &str) -> usize {
        fs::read_dir(root.join("snapshots").join(kind).join(".tmp"))
            .unwrap()
            .count()
    }

    fn snapshotter_suite(make: impl Fn(&Path) -> Box<dyn Snapshotter>) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let s = make(root);
        let kind = s.name();

        let (d1, l1) = layer(|u| {
            fs::create_dir_all(u.join("a")).unwrap();
            fs::write(u.join("a/x"), "x1").unwrap();
            fs::write(u.join("a/y"), "y1").unwrap();
            fs::create_dir_all(u.join("b/deep")).unwrap();
            fs::write(u.join("b/z"), "z1").unwrap();
            fs::create_dir_all(u.join("d/sub")).unwrap();
            fs::write(u.join("d/old"), "old").unwrap();
            fs::write(u.join("keep"), "v1").unwrap();
            fs::write(u.join("same"), "aaaa").unwrap();
            fs::hard_link(u.join("keep"), u.join("keep-link")).unwrap();
            std::os::unix::fs::symlink("a/y", u.join("sym")).unwrap();
        });
        let (d2, l2) = layer(|u| {
            fs::create_dir_all(u.join("a")).unwrap();
            mknod_whiteout(&u.join("a/x"));
            mknod_whiteout(&u.join("b"));
            fs::create_dir_all(u.join("d")).unwrap();
            xattr::set(u.join("d"), "trusted.overlay.opaque", b"y").unwrap();
            fs::write(u.join("d/new"), "new").unwrap();
            fs::write(u.join("c"), "c2").unwrap();
        });
        let (d3, l3) = layer(|u| {
            fs::create_dir_all(u.join("a")).unwrap();
            fs::write(u.join("a/w"), "w3").unwrap();
            fs::write(u.join("keep"), "v3").unwrap();
        });
        let id1 = chain_id(std::slice::from_ref(&d1)).unwrap();
        let id2 = chain_id(&[d1.clone(), d2.clone()]).unwrap();
        let id3 = chain_id(&[d1, d2, d3.clone()]).unwrap();

        // A missing parent and a failing fill leave nothing behind.
        let err = s.create(&id2, Some(&id1), &mut filler(&l2)).unwrap_err();
        assert!(
            matches!(err, SnapshotError::ParentNotFound { .. }),
            "{kind}: {err}"
        );
        let mut failing = |_: &Path, _: UnpackMode| -> Result<(), LayerError> {
            Err(LayerError::Truncated {
                after: None,
                detail: "test".into(),
            })
        };
        let err = s.create(&id1, None, &mut failing).unwrap_err();
        assert!(matches!(err, SnapshotError::Fill { .. }), "{kind}: {err}");
        assert!(!s.exists(&id1));
        assert_eq!(tmp_entries(root, kind), 0);

        s.create(&id1, None, &mut filler(&l1)).unwrap();
        s.create(&id2, Some(&id1), &mut filler(&l2)).unwrap();
        s.create(&id3, Some(&id2), &mut filler(&l3)).unwrap();
        assert!(s.exists(&id1) && s.exists(&id2) && s.exists(&id3));
        // Existing: fill is not even called.
        s.create(&id3, Some(&id2), &mut failing).unwrap();
        let list = s.list().unwrap();
        assert_eq!(list.len(), 3);
        let info3 = list.iter().find(|i| i.id == id3).unwrap();
        assert_eq!(info3.parent, Some(id2.clone()));
        assert!(info3.size > 0);
        assert_eq!(list.iter().find(|i| i.id == id1).unwrap().parent, None);

        let merged3 = [
            "a/",
            "a/w = w3",
            "a/y = y1",
            "c = c2",
            "d/",
            "d/new = new",
            "keep = v3",
            "keep-link = v1",
            "same = aaaa",
            "sym -> a/y",
        ];
        let mounts_before = mounts_under(root);
        {
            let v = s.view(Some(&id3)).unwrap();
            assert_eq!(tree(v.path()), merged3, "{kind}");
            if kind == "overlayfs" {
                assert_eq!(mounts_under(root), mounts_before + 1);
                let err = fs::write(v.path().join("nope"), "x").unwrap_err();
                assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
            }
            let v1 = s.view(Some(&id1)).unwrap();
            assert!(tree(v1.path()).contains(&"b/deep/".to_string()), "{kind}");
            assert!(tree(v1.path()).contains(&"a/x = x1".to_string()), "{kind}");
            let empty = s.view(None).unwrap();
            assert!(tree(empty.path()).is_empty());
            // Views keep their snapshots.
            let err = s.remove(&id3).unwrap_err();
            assert!(matches!(err, SnapshotError::InUse { .. }), "{kind}: {err}");
            empty.close().unwrap();
        }
        assert_eq!(
            mounts_under(root),
            mounts_before,
            "{kind}: views unmount on drop"
        );
        assert!(
            mount_dirs(root).is_empty(),
            "{kind}: {:?}",
            mount_dirs(root)
        );

        // Concurrent creates of the same snapshot: one wins, all succeed.
        let (d4, l4) = layer(|u| fs::write(u.join("four"), "4").unwrap());
        let id4 = chain_id(&[id3.clone(), d4]).unwrap();
        let calls = Mutex::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let mut fill = |dir: &Path, mode: UnpackMode| {
                        *calls.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        unpack_layer(&l4[..], dir, mode).map(|_| ())
                    };
                    s.create(&id4, Some(&id3), &mut fill).unwrap();
                });
            }
        });
        assert!(*calls.lock().unwrap() >= 1);
        assert!(s.exists(&id4));
        assert_eq!(s.list().unwrap().len(), 4);
        assert_eq!(tmp_entries(root, kind), 0, "{kind}: losers cleaned up");
        let v4 = s.view(Some(&id4)).unwrap();
        assert!(tree(v4.path()).contains(&"four = 4".to_string()));
        drop(v4);

        // remove refuses parents.
        for parent in [&id1, &id2, &id3] {
            let err = s.remove(parent).unwrap_err();
            assert!(matches!(err, SnapshotError::InUse { .. }), "{kind}: {err}");
            assert!(err.to_string().contains("child"), "{err}");
        }
        s.remove(&id4).unwrap();
        assert!(!s.exists(&id4));
        assert!(matches!(
            s.remove(&id4),
            Err(SnapshotError::NotFound { .. })
        ));

        // A step on top of id3: add, modify, delete, replace a directory, chmod.
        let mut active = s.prepare_active(Some(&id3)).unwrap();
        assert!(matches!(s.remove(&id3), Err(SnapshotError::InUse { .. })));
        let r = active.rootfs.clone();
        assert_eq!(tree(&r), merged3);
        fs::write(r.join("new.txt"), "fresh").unwrap();
        fs::remove_file(r.join("a/y")).unwrap();
        fs::write(r.join("keep"), "v5").unwrap();
        fs::remove_dir_all(r.join("d")).unwrap();
        fs::create_dir(r.join("d")).unwrap();
        fs::write(r.join("d/fresh"), "f").unwrap();
        fs::set_permissions(r.join("c"), fs::Permissions::from_mode(0o600)).unwrap();
        let same_mtime = fs::symlink_metadata(r.join("same")).unwrap();
        fs::write(r.join("same"), "bbbb").unwrap();
        set_times(&r.join("same"), &same_mtime).unwrap();
        let upper = active.diff().unwrap().to_path_buf();
        let up = tree(&upper);
        for want in [
            "new.txt = fresh",
            "keep = v5",
            "a/y (special)",
            "same = bbbb",
            "d/fresh = f",
        ] {
            assert!(
                up.contains(&want.to_string()),
                "{kind}: {want} missing from {up:?}"
            );
        }
        assert!(
            !up.iter().any(|l| l.starts_with("a/w")),
            "{kind}: unchanged files stay out: {up:?}"
        );
        let wh = fs::symlink_metadata(upper.join("a/y")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(
            fs::symlink_metadata(upper.join("c")).unwrap().mode() & 0o7777,
            0o600
        );

        // The upper dir makes a layer; the new snapshot shows the step's result.
        let mut blob = Vec::new();
        let info = write_layer(
            &upper,
            Compression::Zstd,
            &LayerOptions::default(),
            &mut blob,
        )
        .unwrap();
        let id5 = chain_id(&[id3.clone(), info.diff_id]).unwrap();
        s.create(&id5, Some(&id3), &mut filler(&blob)).unwrap();
        active.close().unwrap();
        let v5 = s.view(Some(&id5)).unwrap();
        assert_eq!(
            tree(v5.path()),
            [
                "a/",
                "a/w = w3",
                "c = c2",
                "d/",
                "d/fresh = f",
                "keep = v5",
                "keep-link = v1",
                "new.txt = fresh",
                "same = bbbb",
                "sym -> a/y",
            ],
            "{kind}"
        );
        drop(v5);

        // A step on an empty rootfs.
        let mut active = s.prepare_active(None).unwrap();
        assert!(tree(&active.rootfs).is_empty());
        fs::create_dir(active.rootfs.join("etc")).unwrap();
        fs::write(active.rootfs.join("etc/hostname"), "kiln").unwrap();
        let upper = active.diff().unwrap();
        assert_eq!(tree(upper), ["etc/", "etc/hostname = kiln"]);
        drop(active);
        assert!(matches!(
            s.prepare_active(Some(&id4)),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            s.view(Some(&id4)),
            Err(SnapshotError::NotFound { .. })
        ));

        assert_eq!(
            mounts_under(root),
            mounts_before,
            "{kind}: actives unmount on drop"
        );
        assert!(
            mount_dirs(root).is_empty(),
            "{kind}: {:?}",
            mount_dirs(root)
        );

        // Everything can be removed top-down.
        for id in [&id5, &id3, &id2, &id1] {
            s.remove(id).unwrap();
        }
        assert!(s.list().unwrap().is_empty());
        assert_eq!(tmp_entries(root, kind), 0);
    }

    #[test]
    fn overlay_snapshotter_suite() {
        snapshotter_suite(|root| Box::new(OverlaySnapshotter::new(root).unwrap()));
    }

    #[test]
    fn copy_snapshotter_suite() {
        snapshotter_suite(|root| Box::new(CopySnapshotter::new(root).unwrap()));
    }

    #[test]
    fn open_default_prefers_overlay() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_default(tmp.path()).unwrap();
        assert_eq!(s.name(), "overlayfs", "this machine has overlayfs");
        assert!(mount_dirs(tmp.path()).is_empty(), "the probe cleans up");
        assert_eq!(mounts_under(tmp.path()), 0);
    }

    #[test]
    fn views_and_actives_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<View>();
        send::<Active>();
        send::<SnapshotError>();
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a.clone(), b.clone()]), Some(ab.clone()));
        assert_eq!(
            chain_id(&[a, b, c.clone()]),
            Some(Digest::of(format!("{ab} {c}").as_bytes()))
        );
    }

    /// Records mount calls; no root needed.
    #[derive(Default)]
    struct RecordingMounter {
        calls: Mutex<Vec<(String, PathBuf, MsFlags, String)>>,
        refuse_extras: bool,
    }

    impl Mounter for RecordingMounter {
        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Result<(), Errno> {
            let data = data.unwrap_or_default().to_string();
            assert_eq!((source, fstype), ("overlay", "overlay"));
            assert!(data.len() < MOUNT_DATA_LIMIT);
            let refused = self.refuse_extras && data.contains("metacopy");
            self.calls
                .lock()
                .unwrap()
                .push(("mount".into(), target.to_path_buf(), flags, data));
            if refused {
                Err(Errno::EINVAL)
            } else {
                Ok(())
            }
        }

        fn umount(&self, target: &Path, _flags: MntFlags) -> Result<(), Errno> {
            self.calls.lock().unwrap().push((
                "umount".into(),
                target.to_path_buf(),
                MsFlags::empty(),
                String::new(),
            ));
            Ok(())
        }
    }

    fn empty_layer_chain(s: &dyn Snapshotter, n: usize) -> Vec<Digest> {
        let mut ids: Vec<Digest> = Vec::new();
        for i in 0..n {
            let id = Digest::of(format!("layer {i}").as_bytes());
            s.create(&id, ids.last(), &mut |_: &Path, _: UnpackMode| Ok(()))
                .unwrap();
            ids.push(id);
        }
        ids
    }

    #[test]
    fn overlay_mount_options() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Arc::new(RecordingMounter::default());
        let s = OverlaySnapshotter::with_mounter(tmp.path(), rec.clone()).unwrap();
        let ids = empty_layer_chain(&s, 3);
        let fs_of = |id: &Digest| s.store.fs_dir(id).display().to_string();

        let view = s.view(Some(&ids[2])).unwrap();
        let active = s.prepare_active(Some(&ids[2])).unwrap();
        let single = s.view(Some(&ids[0])).unwrap();
        let empty = s.view(None).unwrap();
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0].1, view.path());
        assert_eq!(calls[0].2, MsFlags::MS_RDONLY);
        assert_eq!(
            calls[0].3,
            format!(
                "lowerdir={}:{}:{}",
                fs_of(&ids[2]),
                fs_of(&ids[1]),
                fs_of(&ids[0])
            ),
            "top layer first"
        );
        let adir = active.rootfs.parent().unwrap().display().to_string();
        assert_eq!(calls[1].2, MsFlags::empty());
        assert_eq!(
            calls[1].3,
            format!(
                "lowerdir={}:{}:{},upperdir={adir}/upper,workdir={adir}/work,redirect_dir=off,metacopy=off,index=off",
                fs_of(&ids[2]),
                fs_of(&ids[1]),
                fs_of(&ids[0])
            )
        );
        let sdir = single.path().parent().unwrap().display().to_string();
        assert_eq!(
            calls[2].3,
            format!("lowerdir={}:{sdir}/empty1", fs_of(&ids[0])),
            "padded to two lowers"
        );
        let edir = empty.path().parent().unwrap().display().to_string();
        assert_eq!(calls[3].3, format!("lowerdir={edir}/empty0:{edir}/empty1"));
        drop((view, active, single, empty));
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(
            calls.iter().filter(|c| c.0 == "umount").count(),
            4,
            "every mount is unmounted"
        );
        assert!(mount_dirs(tmp.path()).is_empty());
    }

    #[test]
    fn overlay_options_fall_back_without_extras() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Arc::new(RecordingMounter {
            refuse_extras: true,
            ..Default::default()
        });
        let s = OverlaySnapshotter::with_mounter(tmp.path(), rec.clone()).unwrap();
        let active = s.prepare_active(None).unwrap();
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert!(calls[0].3.ends_with("index=off"));
        assert!(!calls[1].3.contains("redirect_dir"));
        drop(active);
    }

    #[test]
    fn long_chains_use_fd_paths_then_fail_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        // A long root makes absolute lowerdirs ~330 bytes each.
        let root = tmp.path().join("r".repeat(200)).join("o".repeat(30));
        fs::create_dir_all(&root).unwrap();
        let rec = Arc::new(RecordingMounter::default());
        let s = OverlaySnapshotter::with_mounter(&root, rec.clone()).unwrap();
        let ids = empty_layer_chain(&s, 301);
        let v = s.view(Some(&ids[20])).unwrap();
        let data = rec.calls.lock().unwrap()[0].3.clone();
        assert!(data.starts_with("lowerdir=/proc/self/fd/"), "{data}");
        assert_eq!(data.matches("/proc/self/fd/").count(), 21);
        drop(v);
        let err = s.view(Some(&ids[300])).unwrap_err();
        assert!(
            matches!(err, SnapshotError::MountOptionsTooLong { layers: 301, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("4096"), "{err}");
        assert!(mount_dirs(&root).is_empty(), "failed views clean up");
        let lowers: Vec<PathBuf> = (0..=OVERLAY_MAX_LOWERS).map(|_| root.clone()).collect();
        assert!(matches!(
            overlay_data(&lowers, None, &[]),
            Err(SnapshotError::TooManyLayers { .. })
        ));
    }

    #[test]
    fn special_characters_in_paths_use_fd_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("with:colon,comma");
        fs::create_dir_all(&root).unwrap();
        let rec = Arc::new(RecordingMounter::default());
        let s = OverlaySnapshotter::with_mounter(&root, rec.clone()).unwrap();
        let ids = empty_layer_chain(&s, 1);
        let v = s.view(Some(&ids[0])).unwrap();
        let data = rec.calls.lock().unwrap()[0].3.clone();
        assert_eq!(data.matches("/proc/self/fd/").count(), 2, "{data}");
        assert!(!data.contains("colon"));
        drop(v);
    }

    #[test]
    fn stale_mount_dirs_are_reaped_by_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Arc::new(RecordingMounter::default());
        let s = OverlaySnapshotter::with_mounter(tmp.path(), rec).unwrap();
        let ids = empty_layer_chain(&s, 1);
        // A view left behind by a dead process: its lock is free.
        let stale = tmp.path().join("mounts/overlayfs-view-dead");
        fs::create_dir_all(stale.join("merged")).unwrap();
        fs::write(stale.join("lock"), "").unwrap();
        fs::write(stale.join("uses"), format!("{}\n", ids[0])).unwrap();
        // A live one of the other kind does not matter to this kind.
        let other = tmp.path().join("mounts/copy-view-live");
        fs::create_dir_all(&other).unwrap();
        s.remove(&ids[0]).unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
    }
}
