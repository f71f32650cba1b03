//! Layer tarballs (OCI image layers).
//!
//! - [`write_layer`] turns a directory in overlayfs upper-dir format (a char device 0/0 is a
//!   whiteout, `trusted.overlay.opaque=y` / `user.overlay.opaque=y` marks an opaque directory)
//!   into a tar with OCI whiteouts (`.wh.<name>`, `<dir>/.wh..wh..opq`), compresses it, and
//!   computes the diffID (digest of the tar) and the blob digest/size in the same pass.
//! - [`unpack_layer`] reads a layer blob (compression detected from magic bytes) into a
//!   directory, either as an overlay diff dir ([`UnpackMode::OverlayDiff`]) or applied onto a
//!   full root filesystem ([`UnpackMode::Apply`]).
//!
//! # Determinism
//! Entries are sorted by their path bytes (so a directory always precedes its contents), all
//! headers are written explicitly (ustar + PAX, never GNU extensions; uname/gname empty; no
//! atime/ctime), xattrs are sorted, and gzip is written without a file name and with mtime 0.
//! The same tree therefore gives the same bytes and the same digests; with
//! [`LayerOptions::source_date_epoch`] mtimes newer than the epoch are clamped to it.
//!
//! # Path safety when unpacking
//! Shared with [`super::archive`]. Every entry name is normalized lexically:
//! - absolute names (leading `/`) are **refused**, not made relative; layers written by
//!   docker, buildkit, containerd and kiln never contain them;
//! - `.` and empty components are dropped, `..` pops one component and an entry whose `..`
//!   would climb above the destination is refused (`a/../b` is fine and means `b`);
//! - a symlink is never followed in a parent component: an entry under a path that is a
//!   symlink (created by this archive or already present in the destination) is refused,
//!   whatever the symlink points to. Missing parents are created as `0755` directories;
//! - hard-link targets follow the same rules and must already exist inside the destination;
//! - the final component is never followed either: an existing entry is removed before the
//!   new one is created (`O_CREAT|O_EXCL|O_NOFOLLOW`), except that a directory entry over an
//!   existing directory merges with it;
//! - symlink entries themselves may point anywhere; they are only stored.
//!
//! The checks are made with `lstat` before each creation; they protect against the archive
//! itself, not against another process rewriting the destination concurrently.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{self as nstat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use walkdir::WalkDir;

use super::digest::{Digest, DigestWriter};

/// Result type of this module.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// Buffer size for file data and compressed streams.
const IO_BUF: usize = 256 * 1024;
/// Largest value of an 8-byte octal ustar field (uid, gid, device numbers).
const MAX_OCTAL7: u64 = 0o7_777_777;
/// Largest value of a 12-byte octal ustar field (size, mtime).
const MAX_OCTAL11: u64 = 0o77_777_777_777;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";
/// The xattr overlayfs (as root) uses to mark opaque directories; written by `OverlayDiff`.
pub(super) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_OPAQUE_XATTRS: [&str; 2] = [OVERLAY_OPAQUE_XATTR, "user.overlay.opaque"];

/// Errors of layer writing and unpacking.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A filesystem operation on `path` failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The stream could not be read or decoded (corrupt compression, bad tar header, I/O).
    #[error("reading the layer stream{}: {source}", after_entry(.after))]
    Read {
        /// The last entry read successfully, if any.
        after: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The stream ended before the archive did.
    #[error("layer stream is truncated{}: {detail}", after_entry(.after))]
    Truncated {
        after: Option<String>,
        detail: String,
    },
    /// Writing the produced layer failed.
    #[error("writing the layer stream: {source}")]
    Write {
        #[source]
        source: io::Error,
    },
    /// The entry would write outside the destination or through a symlink.
    #[error("refusing archive entry {entry:?}: {reason}")]
    UnsafePath { entry: String, reason: String },
    /// The entry type is not supported (e.g. GNU sparse files, volume headers).
    #[error("archive entry {entry:?} has unsupported type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    /// The entry is malformed or cannot be applied.
    #[error("archive entry {entry:?} is invalid: {reason}")]
    InvalidEntry { entry: String, reason: String },
    /// A file of the source tree cannot be archived.
    #[error("cannot archive {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(entry) => format!(" after entry {entry:?}"),
        None => String::new(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn errno_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> LayerError + 'a {
    move |errno| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    }
}

fn write_err(source: io::Error) -> LayerError {
    LayerError::Write { source }
}

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => super::image::media::OCI_LAYER,
            Compression::Gzip => super::image::media::OCI_LAYER_GZIP,
            Compression::Zstd => super::image::media::OCI_LAYER_ZSTD,
        }
    }

    /// Parses an OCI or Docker layer media type, or a short name (`uncompressed`, `gzip`,
    /// `zstd`, as in `--output compression=`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "uncompressed"
            | "none"
            | "tar" => Some(Compression::Uncompressed),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "gzip"
            | "gz" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "zstd"
            | "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What [`write_layer`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Digest of the uncompressed tar (goes into the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Digest of the blob as written (goes into the manifest).
    pub digest: Digest,
    /// Size of the blob as written.
    pub size: u64,
    pub compression: Compression,
}

/// Options of [`write_layer`].
#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// `SOURCE_DATE_EPOCH`: mtimes later than this (seconds since the Unix epoch) are
    /// clamped down to it.
    pub source_date_epoch: Option<i64>,
}

/// How [`unpack_layer`] treats the destination and the whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackMode {
    /// `dest` is an empty dir that will be an overlay lower/upper layer: OCI whiteouts become
    /// overlay whiteouts (char device 0/0, `trusted.overlay.opaque=y`).
    OverlayDiff,
    /// `dest` is a full root filesystem: whiteouts delete what they name, opaque dirs are
    /// emptied of entries that existed before this layer.
    Apply,
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Non-directory entries created: regular files, hard links, symlinks, devices, fifos
    /// (whiteouts and directories are not counted).
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes the layer whose contents are the directory `upper` (overlayfs upper-dir format: a
/// char device 0/0 is a whiteout, xattr `trusted.overlay.opaque=y` (or `user.overlay.opaque`)
/// marks an opaque dir) as a tar with OCI whiteouts into `out`, compressed.
///
/// The pipeline is tar → diffID hasher → compressor → blob hasher/counter → `out`, so nothing
/// is held in memory but the sorted list of paths. For [`Compression::Uncompressed`] the
/// digest equals the diffID. Sockets are skipped (as docker does); the root directory itself
/// is not an entry. `trusted.overlay.*`, `user.overlay.*` and `security.selinux` xattrs are
/// not recorded.
pub fn write_layer(
    upper: &Path,
    compression: Compression,
    opts: &LayerOptions,
    out: impl Write,
) -> Result<LayerInfo> {
    let items = collect_items(upper)?;
    let blob = DigestWriter::new(BufWriter::with_capacity(IO_BUF, out));
    let compressor = Compressor::new(compression, blob).map_err(write_err)?;
    let mut builder = tar::Builder::new(DigestWriter::new(compressor));
    {
        let mut writer = LayerWriter {
            upper,
            epoch: opts.source_date_epoch,
            builder: &mut builder,
            links: HashMap::new(),
        };
        for item in &items {
            writer.write_item(item)?;
        }
    }
    let tar_out = builder.into_inner().map_err(write_err)?;
    let (compressor, diff_id, _) = tar_out.finish();
    let blob = compressor.finish().map_err(write_err)?;
    let (buffered, digest, size) = blob.finish();
    let mut out = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    out.flush().map_err(write_err)?;
    tracing::debug!(%diff_id, %digest, size, entries = items.len(), "wrote layer");
    Ok(LayerInfo {
        diff_id,
        digest,
        size,
        compression,
    })
}

/// The compressing stage of [`write_layer`].
enum Compressor<W: Write> {
    Plain(W),
    Gzip(super::pargz::ParGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(compression: Compression, inner: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::Uncompressed => Compressor::Plain(inner),
            // One gzip member with no file name, mtime 0, OS "unknown", compressed on all
            // cores (pigz-style blocks).
            Compression::Gzip => Compressor::Gzip(super::pargz::ParGzEncoder::new(inner, 6)),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

/// One tar entry to write: a path of the upper dir, or the opaque marker of a directory.
struct Item {
    /// Tar name without a trailing slash; the sort key.
    key: Vec<u8>,
    /// Path relative to the upper dir (for an opaque marker: the directory's path).
    rel: PathBuf,
    opaque_marker: bool,
}

fn collect_items(upper: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for entry in WalkDir::new(upper).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| LayerError::Io {
            op: "walking",
            path: e.path().unwrap_or(upper).to_path_buf(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(upper)
            .map_err(|_| LayerError::Source {
                path: entry.path().to_path_buf(),
                reason: "walked outside the layer directory".into(),
            })?
            .to_path_buf();
        if entry.file_type().is_char_device() {
            let meta = entry.metadata().map_err(|e| LayerError::Io {
                op: "reading metadata of",
                path: entry.path().to_path_buf(),
                source: e.into(),
            })?;
            if meta.rdev() == 0 {
                items.push(Item {
                    key: whiteout_name(&rel),
                    rel,
                    opaque_marker: false,
                });
                continue;
            }
        }
        if entry.file_type().is_dir() && is_opaque_dir(entry.path())? {
            items.push(Item {
                key: rel
                    .join(OsStr::from_bytes(WHITEOUT_OPAQUE))
                    .into_os_string()
                    .into_vec(),
                rel: rel.clone(),
                opaque_marker: true,
            });
        }
        items.push(Item {
            key: rel.as_os_str().as_bytes().to_vec(),
            rel,
            opaque_marker: false,
        });
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(items)
}

/// `<parent>/.wh.<name>` for `rel`.
fn whiteout_name(rel: &Path) -> Vec<u8> {
    let mut name = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            let mut n = p.as_os_str().as_bytes().to_vec();
            n.push(b'/');
            n
        }
        _ => Vec::new(),
    };
    name.extend_from_slice(WHITEOUT_PREFIX);
    name.extend_from_slice(rel.file_name().map(OsStr::as_bytes).unwrap_or_default());
    name
}

fn is_opaque_dir(path: &Path) -> Result<bool> {
    for name in OVERLAY_OPAQUE_XATTRS {
        match xattr::get(path, name) {
            Ok(Some(value)) if value == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if xattr_unsupported(&e) => {}
            Err(e) => return Err(io_err("reading xattrs of", path)(e)),
        }
    }
    Ok(false)
}

/// Errors that mean "this xattr (namespace) is not available here", handled best effort.
pub(crate) fn xattr_unsupported(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES | Errno::ENODATA)
    )
}

/// Xattrs never recorded in a layer: overlayfs internals and the host's SELinux label.
fn skip_xattr_on_write(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux"
}

/// Xattrs never applied from a layer: they would change how overlayfs reads the tree.
fn skip_xattr_on_unpack(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The header fields of one entry.
struct Spec<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    link: Option<&'a [u8]>,
    dev: Option<(u64, u64)>,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct LayerWriter<'a, W: Write> {
    upper: &'a Path,
    epoch: Option<i64>,
    builder: &'a mut tar::Builder<W>,
    /// (dev, ino) of multiply-linked files already written → their tar name.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> LayerWriter<'_, W> {
    fn clamp(&self, mtime: i64) -> i64 {
        match self.epoch {
            Some(epoch) if mtime > epoch => epoch,
            _ => mtime,
        }
    }

    fn write_item(&mut self, item: &Item) -> Result<()> {
        let full = self.upper.join(&item.rel);
        let meta = fs::symlink_metadata(&full).map_err(io_err("reading metadata of", &full))?;
        let mtime = self.clamp(meta.mtime());
        let mut spec = Spec {
            name: &item.key,
            kind: tar::EntryType::Regular,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime,
            size: 0,
            link: None,
            dev: None,
            xattrs: Vec::new(),
        };
        if item.opaque_marker {
            return self.append(&full, &spec, &mut io::empty());
        }
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout: `<parent>/.wh.<name>` (the item's key), an empty file.
            return self.append(&full, &spec, &mut io::empty());
        }
        spec.xattrs = read_xattrs(&full)?;
        if ft.is_dir() {
            let mut name = item.key.clone();
            name.push(b'/');
            spec.name = &name;
            spec.kind = tar::EntryType::Directory;
            return self.append(&full, &spec, &mut io::empty());
        }
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let first = first.clone();
                spec.kind = tar::EntryType::Link;
                spec.link = Some(&first);
                spec.xattrs.clear();
                return self.append(&full, &spec, &mut io::empty());
            }
            self.links
                .insert((meta.dev(), meta.ino()), item.key.clone());
        }
        if ft.is_file() {
            self.write_file(&full, spec, &meta)
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err("reading symlink", &full))?;
            spec.kind = tar::EntryType::Symlink;
            spec.link = Some(target.as_os_str().as_bytes());
            self.append(&full, &spec, &mut io::empty())
        } else if ft.is_char_device() || ft.is_block_device() {
            spec.kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            spec.dev = Some((nstat::major(meta.rdev()), nstat::minor(meta.rdev())));
            self.append(&full, &spec, &mut io::empty())
        } else if ft.is_fifo() {
            spec.kind = tar::EntryType::Fifo;
            self.append(&full, &spec, &mut io::empty())
        } else {
            tracing::debug!(path = %full.display(), "skipping socket in layer");
            Ok(())
        }
    }

    fn write_file(&mut self, full: &Path, mut spec: Spec<'_>, meta: &fs::Metadata) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(full)
            .map_err(io_err("opening", full))?;
        let fmeta = file
            .metadata()
            .map_err(io_err("reading metadata of", full))?;
        if (fmeta.dev(), fmeta.ino()) != (meta.dev(), meta.ino()) {
            return Err(LayerError::Source {
                path: full.to_path_buf(),
                reason: "the file was replaced while the layer was being written".into(),
            });
        }
        spec.size = fmeta.len();
        let mut exact = ExactReader {
            inner: file,
            remaining: spec.size,
            failed: None,
        };
        // BufReader zero-fills its buffer on first use: size it to the file, so 20,000 small
        // files do not each clear 256 KiB.
        let capacity = usize::try_from(spec.size)
            .unwrap_or(IO_BUF)
            .saturating_add(1)
            .clamp(4096, IO_BUF);
        let result = self.append(
            full,
            &spec,
            &mut BufReader::with_capacity(capacity, &mut exact),
        );
        if let Some(source) = exact.failed.take() {
            return Err(LayerError::Source {
                path: full.to_path_buf(),
                reason: source.to_string(),
            });
        }
        result?;
        let mut probe = [0u8; 1];
        match exact.inner.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(LayerError::Source {
                path: full.to_path_buf(),
                reason: "the file grew while the layer was being written".into(),
            }),
            Err(e) => Err(io_err("reading", full)(e)),
        }
    }

    fn append(&mut self, full: &Path, spec: &Spec<'_>, data: &mut dyn Read) -> Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            put_name(&mut old.name, spec.name, "path", &mut pax);
            if let Some(link) = spec.link {
                put_name(&mut old.linkname, link, "linkpath", &mut pax);
            }
        }
        header.set_entry_type(spec.kind);
        header.set_mode(spec.mode);
        for (key, value) in [("uid", spec.uid), ("gid", spec.gid)] {
            let field = if value <= MAX_OCTAL7 {
                value
            } else {
                pax.push((key.to_string(), value.to_string().into_bytes()));
                0
            };
            if key == "uid" {
                header.set_uid(field);
            } else {
                header.set_gid(field);
            }
        }
        match u64::try_from(spec.mtime) {
            Ok(m) if m <= MAX_OCTAL11 => header.set_mtime(m),
            _ => {
                pax.push(("mtime".to_string(), spec.mtime.to_string().into_bytes()));
                header.set_mtime(0);
            }
        }
        if spec.size <= MAX_OCTAL11 {
            header.set_size(spec.size);
        } else {
            pax.push(("size".to_string(), spec.size.to_string().into_bytes()));
            header.set_size(0);
        }
        let (major, minor) = spec.dev.unwrap_or((0, 0));
        {
            let (Some(major), Some(minor)) = (
                u32::try_from(major)
                    .ok()
                    .filter(|m| u64::from(*m) <= MAX_OCTAL7),
                u32::try_from(minor)
                    .ok()
                    .filter(|m| u64::from(*m) <= MAX_OCTAL7),
            ) else {
                return Err(LayerError::Source {
                    path: full.to_path_buf(),
                    reason: format!("device number {major}:{minor} does not fit a ustar header"),
                });
            };
            header.set_device_major(major).map_err(write_err)?;
            header.set_device_minor(minor).map_err(write_err)?;
        }
        pax.extend(spec.xattrs.iter().cloned());
        pax.sort();
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(write_err)?;
        }
        header.set_cksum();
        self.builder.append(&header, data).map_err(write_err)
    }
}

/// Puts `value` into a fixed-size name field; longer values go into a PAX record (and a
/// truncated copy into the field, for readers that do not know PAX).
fn put_name(field: &mut [u8], value: &[u8], pax_key: &str, pax: &mut Vec<(String, Vec<u8>)>) {
    field.fill(0);
    if value.len() <= field.len() {
        field[..value.len()].copy_from_slice(value);
    } else {
        let n = field.len();
        field.copy_from_slice(&value[..n]);
        pax.push((pax_key.to_string(), value.to_vec()));
    }
}

/// The xattrs of `path` (not following symlinks) as sorted PAX records.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if xattr_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        if skip_xattr_on_write(name.as_bytes()) {
            continue;
        }
        let Some(name_str) = name.to_str() else {
            tracing::warn!(path = %path.display(), name = ?name, "skipping xattr with a non-UTF-8 name");
            continue;
        };
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((format!("SCHILY.xattr.{name_str}"), value)),
            Ok(None) => {}
            Err(e) if xattr_unsupported(&e) => {}
            Err(e) => return Err(io_err("reading xattrs of", path)(e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Yields exactly `remaining` bytes of `inner`, or fails (and remembers why) if it ends early.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                let msg = "the file shrank while the layer was being written";
                self.failed = Some(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Container formats recognized by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamFormat {
    Tar,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

fn sniff_format(head: &[u8]) -> StreamFormat {
    if head.starts_with(&[0x1f, 0x8b]) {
        StreamFormat::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        StreamFormat::Zstd
    } else if head.starts_with(b"BZh") {
        StreamFormat::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        StreamFormat::Xz
    } else {
        StreamFormat::Tar
    }
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
pub(super) fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Detects the compression of `r` from its magic bytes and returns the decompressed stream.
/// Anything that is not gzip, zstd, bzip2 or xz is passed through as (presumably) tar.
pub(super) fn decompress<'a>(r: impl Read + 'a) -> Result<(StreamFormat, Box<dyn Read + 'a>)> {
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let mut head = [0u8; 6];
    let n = read_up_to(&mut r, &mut head).map_err(|source| LayerError::Read {
        after: None,
        source,
    })?;
    let format = sniff_format(&head[..n]);
    let stream = wrap_decoder(format, io::Cursor::new(head[..n].to_vec()).chain(r))?;
    Ok((format, stream))
}

fn wrap_decoder<'a>(format: StreamFormat, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match format {
        StreamFormat::Tar => Box::new(r),
        StreamFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        StreamFormat::Zstd => {
            Box::new(
                zstd::stream::read::Decoder::new(r).map_err(|source| LayerError::Read {
                    after: None,
                    source,
                })?,
            )
        }
        StreamFormat::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        StreamFormat::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
    })
}

/// Unpacks a layer blob (compression auto-detected from magic bytes) into `dest`, which must
/// be an existing directory. See the module docs for the path-safety rules.
///
/// A stream that ends before the tar end-of-archive marker, a corrupt compressed stream
/// (checked to its end, trailer included), a file shorter than its header says, GNU sparse
/// entries and other unexpected entry types are errors. What was written before an error
/// stays in `dest`: callers unpack into a temporary directory.
pub fn unpack_layer(blob: impl Read, dest: &Path, mode: UnpackMode) -> Result<UnpackStats> {
    let (_, stream) = decompress(blob)?;
    let flavor = match mode {
        UnpackMode::OverlayDiff => Flavor::OverlayDiff,
        UnpackMode::Apply => Flavor::Apply,
    };
    unpack_tar(stream, dest, flavor)
}

/// How [`unpack_tar`] treats whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// See [`UnpackMode::OverlayDiff`].
    OverlayDiff,
    /// See [`UnpackMode::Apply`].
    Apply,
    /// Like `Apply`, but `.wh.` names are ordinary files (Dockerfile `ADD archive.tar`).
    Plain,
}

/// Unpacks an uncompressed tar stream into `dest` (shared by layers and `ADD` archives).
pub(super) fn unpack_tar(stream: impl Read, dest: &Path, flavor: Flavor) -> Result<UnpackStats> {
    let meta = fs::symlink_metadata(dest).map_err(io_err("opening destination", dest))?;
    if !meta.is_dir() {
        return Err(LayerError::Io {
            op: "unpacking into",
            path: dest.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "destination is not a directory",
            ),
        });
    }
    let mut archive = tar::Archive::new(EofTracker {
        inner: stream,
        hit_eof: false,
    });
    let mut unpacker = Unpacker {
        dest,
        flavor,
        created: HashSet::new(),
        dir_times: Vec::new(),
        verified_parent: None,
        buf: vec![0; IO_BUF],
        stats: UnpackStats::default(),
    };
    let mut last: Option<String> = None;
    {
        let entries = archive.entries().map_err(|source| LayerError::Read {
            after: None,
            source,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| LayerError::Read {
                after: last.clone(),
                source,
            })?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            unpacker.entry(&mut entry, &name)?;
            last = Some(name);
        }
    }
    let mut rest = archive.into_inner();
    if rest.hit_eof {
        return Err(LayerError::Truncated {
            after: last,
            detail: "the stream ended without the tar end-of-archive marker".into(),
        });
    }
    // Read to the end so that the compressed stream's trailer (checksum) is verified.
    io::copy(&mut rest, &mut io::sink()).map_err(|source| LayerError::Read {
        after: last,
        source,
    })?;
    unpacker.finish()?;
    Ok(unpacker.stats)
}

/// Remembers whether the underlying stream reached its end, to tell an archive that ended
/// with its end-of-archive marker from a truncated one.
struct EofTracker<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// Normalizes an archive name (entry path or hard-link target) into a relative path of
/// normal components; `None` is the destination root. See the module docs for the rules.
pub(super) fn sanitize_path(raw: &[u8], entry: &str, what: &str) -> Result<Option<PathBuf>> {
    if raw.first() == Some(&b'/') {
        return Err(LayerError::UnsafePath {
            entry: entry.to_string(),
            reason: format!("{what} is an absolute path; archive names must be relative"),
        });
    }
    if raw.contains(&0) {
        return Err(LayerError::InvalidEntry {
            entry: entry.to_string(),
            reason: format!("{what} contains a NUL byte"),
        });
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(LayerError::UnsafePath {
                        entry: entry.to_string(),
                        reason: format!("{what} climbs out of the destination with '..'"),
                    });
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(OsString::from_vec(parts.join(&b'/')))))
}

/// What a `.wh.` name means.
enum Whiteout {
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh..wh.*` (AUFS metadata such as `.wh..wh.plnk`): ignored.
    Meta,
    /// `.wh.<name>`: `<name>` is deleted.
    Remove(OsString),
}

fn whiteout_kind(rel: &Path) -> Option<Whiteout> {
    let base = rel.file_name()?.as_bytes();
    if base == WHITEOUT_OPAQUE {
        Some(Whiteout::Opaque)
    } else if base.starts_with(WHITEOUT_META_PREFIX) {
        Some(Whiteout::Meta)
    } else if base.starts_with(WHITEOUT_PREFIX) {
        Some(Whiteout::Remove(
            OsStr::from_bytes(&base[WHITEOUT_PREFIX.len()..]).to_os_string(),
        ))
    } else {
        None
    }
}

/// Metadata of an entry, from its header and PAX records.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    size: u64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn invalid(entry: &str, reason: impl Into<String>) -> LayerError {
    LayerError::InvalidEntry {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((secs, frac)) => (secs, frac),
        None => (s, ""),
    };
    let sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nsec: i64 = digits.parse().ok()?;
    let mut sec = sec;
    if secs.starts_with('-') && nsec > 0 {
        // "-1.5" is 1.5 s before the epoch: -2 s + 0.5 s.
        sec -= 1;
        nsec = 1_000_000_000 - nsec;
    }
    Some(TimeSpec::new(sec, nsec))
}

impl EntryMeta {
    fn read(
        header: &tar::Header,
        size: u64,
        pax: &[(Vec<u8>, Vec<u8>)],
        entry: &str,
    ) -> Result<Self> {
        let old = header.as_old();
        let mode = numeric(&old.mode, || header.mode().map(u64::from), "mode", entry)? & 0o7777;
        let mode = u32::try_from(mode).unwrap_or(0);
        let uid = numeric(&old.uid, || header.uid(), "uid", entry)?;
        let gid = numeric(&old.gid, || header.gid(), "gid", entry)?;
        let uid =
            u32::try_from(uid).map_err(|_| invalid(entry, format!("uid {uid} is out of range")))?;
        let gid =
            u32::try_from(gid).map_err(|_| invalid(entry, format!("gid {gid} is out of range")))?;
        let mtime = match pax.iter().find(|(k, _)| k == b"mtime") {
            Some((_, v)) => {
                parse_pax_time(v).ok_or_else(|| invalid(entry, "bad PAX mtime record"))?
            }
            None => {
                let m = numeric(&old.mtime, || header.mtime(), "mtime", entry)?;
                TimeSpec::new(i64::try_from(m).unwrap_or(i64::MAX), 0)
            }
        };
        let xattrs = pax
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(PAX_XATTR)
                    .map(|name| (OsStr::from_bytes(name).to_os_string(), v.clone()))
            })
            .collect();
        Ok(EntryMeta {
            mode,
            uid,
            gid,
            mtime,
            size,
            xattrs,
        })
    }
}

/// A numeric header field; like Go's archive/tar, a field that is all NULs or spaces is 0.
fn numeric(
    field: &[u8],
    parse: impl FnOnce() -> io::Result<u64>,
    what: &str,
    entry: &str,
) -> Result<u64> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parse().map_err(|e| invalid(entry, format!("bad {what} field: {e}")))
}

fn read_pax<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let exts = entry
        .pax_extensions()
        .map_err(|e| invalid(name, format!("unreadable PAX header: {e}")))?;
    if let Some(exts) = exts {
        for ext in exts {
            let ext = ext.map_err(|e| invalid(name, format!("malformed PAX record: {e}")))?;
            out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// State of one unpack.
struct Unpacker<'a> {
    dest: &'a Path,
    flavor: Flavor,
    /// `Apply`/`Plain`: paths written by this archive (kept by opaque dirs and whiteouts).
    created: HashSet<PathBuf>,
    /// Directory mtimes, set once everything is written. `""` is the destination itself.
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// The last parent directory verified to be a real directory chain (a cache; cleared on
    /// every removal since a removal can turn a verified directory into something else).
    verified_parent: Option<PathBuf>,
    buf: Vec<u8>,
    stats: UnpackStats,
}

/// What [`Unpacker::parents`] does with a missing parent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Create,
    Report,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            tracing::debug!(entry = name, "ignoring PAX global header");
            return Ok(());
        }
        let pax = read_pax(entry, name)?;
        if kind.is_gnu_sparse() || pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
            return Err(LayerError::UnsupportedEntry {
                entry: name.to_string(),
                kind: "GNU sparse file".into(),
            });
        }
        let raw = entry.path_bytes().into_owned();
        let rel = sanitize_path(&raw, name, "the entry name")?;
        if self.flavor != Flavor::Plain {
            if let Some(wh) = rel.as_deref().and_then(whiteout_kind) {
                return self.whiteout(rel.as_deref().unwrap_or(Path::new("")), wh, name);
            }
        }
        let meta = EntryMeta::read(entry.header(), entry.size(), &pax, name)?;
        // Old (v7) archives mark directories with a trailing slash on a regular entry.
        let is_dir =
            kind.is_dir() || (kind == tar::EntryType::Regular && raw.last() == Some(&b'/'));
        let Some(rel) = rel else {
            if is_dir {
                tracing::debug!(entry = name, "ignoring the archive's root directory entry");
                return Ok(());
            }
            return Err(invalid(name, "the archive root must be a directory"));
        };
        if is_dir {
            return self.dir(&rel, &meta, name);
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(entry, &rel, &meta, name)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid(name, "symlink without a target"))?;
                self.symlink(&rel, &target, &meta, name)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| invalid(name, "hard link without a target"))?;
                self.hardlink(&rel, &target, name)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let dev = if kind == tar::EntryType::Fifo {
                    0
                } else {
                    let header = entry.header();
                    let (major, minor) = match header.as_ustar() {
                        Some(ustar) => (
                            numeric(
                                &ustar.dev_major,
                                || header.device_major().map(|d| d.map_or(0, u64::from)),
                                "device major",
                                name,
                            )?,
                            numeric(
                                &ustar.dev_minor,
                                || header.device_minor().map(|d| d.map_or(0, u64::from)),
                                "device minor",
                                name,
                            )?,
                        ),
                        None => (
                            header
                                .device_major()
                                .map_err(|e| invalid(name, format!("bad device major: {e}")))?
                                .map_or(0, u64::from),
                            header
                                .device_minor()
                                .map_err(|e| invalid(name, format!("bad device minor: {e}")))?
                                .map_or(0, u64::from),
                        ),
                    };
                    nstat::makedev(major, minor)
                };
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                self.node(&rel, sflag, dev, &meta, name)
            }
            other => Err(LayerError::UnsupportedEntry {
                entry: name.to_string(),
                kind: format!("{other:?} (type flag {:?})", char::from(other.as_byte())),
            }),
        }
    }

    /// Makes sure every parent component of `rel` is a real directory inside `dest`: a
    /// symlink is refused, a missing directory is created (or reported with `Ok(false)`).
    fn parents(&mut self, rel: &Path, missing: Missing, entry: &str) -> Result<bool> {
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => return Ok(true),
        };
        if self.verified_parent.as_deref() == Some(parent) {
            return Ok(true);
        }
        let mut cur = self.dest.to_path_buf();
        let mut cur_rel = PathBuf::new();
        for comp in parent.components() {
            cur.push(comp);
            cur_rel.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(LayerError::UnsafePath {
                        entry: entry.to_string(),
                        reason: format!(
                            "its parent {:?} is a symlink; symlinks are never followed when unpacking",
                            cur_rel
                        ),
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(m)
                    if missing == Missing::Create
                        && self.flavor == Flavor::OverlayDiff
                        && is_whiteout(&m) =>
                {
                    // A directory recreated over a whiteout of this same layer: overlay shows
                    // it as a new, opaque directory.
                    fs::remove_file(&cur).map_err(io_err("removing", &cur))?;
                    self.mkdir_implicit(&cur, &cur_rel)?;
                    set_xattr(&cur, OVERLAY_OPAQUE_XATTR, b"y")?;
                }
                Ok(_) => {
                    return Err(invalid(
                        entry,
                        format!("its parent {cur_rel:?} is not a directory"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if missing == Missing::Report {
                        return Ok(false);
                    }
                    self.mkdir_implicit(&cur, &cur_rel)?;
                }
                Err(e) => return Err(io_err("reading metadata of", &cur)(e)),
            }
        }
        self.verified_parent = Some(parent.to_path_buf());
        Ok(true)
    }

    fn mkdir_implicit(&mut self, full: &Path, rel: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(full)
            .map_err(io_err("creating directory", full))?;
        fs::set_permissions(full, fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting mode of", full))?;
        self.mark_created(rel);
        Ok(())
    }

    fn mark_created(&mut self, rel: &Path) {
        if self.flavor != Flavor::OverlayDiff {
            self.created.insert(rel.to_path_buf());
        }
    }

    /// Removes whatever is at `rel` (recursively for a directory, never following symlinks).
    fn remove(&mut self, rel: &Path) -> Result<()> {
        let full = self.dest.join(rel);
        self.verified_parent = None;
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&full).map_err(io_err("removing", &full)),
            Ok(_) => fs::remove_file(&full).map_err(io_err("removing", &full)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("reading metadata of", &full)(e)),
        }
    }

    /// Clears the way for a new entry at `rel`; returns true when an existing directory is
    /// kept because the new entry is a directory too (they merge).
    fn make_room(&mut self, rel: &Path, new_is_dir: bool) -> Result<bool> {
        let full = self.dest.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(true),
            Ok(_) => self.remove(rel).map(|()| false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("reading metadata of", &full)(e)),
        }
    }

    fn whiteout(&mut self, rel: &Path, kind: Whiteout, entry: &str) -> Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        match kind {
            Whiteout::Meta => {
                tracing::debug!(entry, "ignoring AUFS metadata entry");
                Ok(())
            }
            Whiteout::Opaque => match self.flavor {
                Flavor::OverlayDiff => {
                    self.parents(rel, Missing::Create, entry)?;
                    set_xattr(&self.dest.join(parent), OVERLAY_OPAQUE_XATTR, b"y")
                }
                _ => {
                    if !self.parents(rel, Missing::Report, entry)? {
                        return Ok(());
                    }
                    self.clear_opaque(parent)
                }
            },
            Whiteout::Remove(name) => {
                if name.is_empty() || name == "." || name == ".." {
                    return Err(LayerError::UnsafePath {
                        entry: entry.to_string(),
                        reason: format!("whiteout of {name:?} is not a file name"),
                    });
                }
                let target = parent.join(&name);
                match self.flavor {
                    Flavor::OverlayDiff => {
                        self.parents(&target, Missing::Create, entry)?;
                        let full = self.dest.join(&target);
                        if fs::symlink_metadata(&full).is_ok() {
                            // Entries of this layer are not hidden by its own whiteouts.
                            tracing::debug!(
                                entry,
                                "whiteout of an entry of the same layer ignored"
                            );
                            return Ok(());
                        }
                        nstat::mknod(&full, SFlag::S_IFCHR, Mode::empty(), 0)
                            .map_err(errno_err("creating whiteout", &full))
                    }
                    _ => {
                        if !self.parents(&target, Missing::Report, entry)?
                            || self.created.contains(&target)
                        {
                            return Ok(());
                        }
                        self.remove(&target)
                    }
                }
            }
        }
    }

    /// Apply mode, `dir/.wh..wh..opq`: removes everything under `dir` this layer did not write.
    fn clear_opaque(&mut self, dir: &Path) -> Result<()> {
        let full = self.dest.join(dir);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
        let mut stack = vec![dir.to_path_buf()];
        while let Some(rel) = stack.pop() {
            let full = self.dest.join(&rel);
            let mut children = Vec::new();
            for child in fs::read_dir(&full).map_err(io_err("reading directory", &full))? {
                let child = child.map_err(io_err("reading directory", &full))?;
                let is_dir = child
                    .file_type()
                    .map_err(io_err("reading directory", &full))?
                    .is_dir();
                children.push((rel.join(child.file_name()), is_dir));
            }
            for (child, is_dir) in children {
                if !self.created.contains(&child) {
                    self.remove(&child)?;
                } else if is_dir {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path, meta: &EntryMeta, entry: &str) -> Result<()> {
        self.parents(rel, Missing::Create, entry)?;
        let full = self.dest.join(rel);
        if !self.make_room(rel, true)? {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&full)
                .map_err(io_err("creating directory", &full))?;
        }
        self.set_owner_mode_xattrs(&full, meta, false)?;
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        self.mark_created(rel);
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        data: &mut tar::Entry<'_, R>,
        rel: &Path,
        meta: &EntryMeta,
        entry: &str,
    ) -> Result<()> {
        self.parents(rel, Missing::Create, entry)?;
        self.make_room(rel, false)?;
        let full = self.dest.join(rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&full)
            .map_err(io_err("creating", &full))?;
        let mut written: u64 = 0;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LayerError::Read {
                        after: Some(entry.to_string()),
                        source,
                    })
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(io_err("writing", &full))?;
            written += n as u64;
        }
        if written != meta.size {
            return Err(LayerError::Truncated {
                after: Some(entry.to_string()),
                detail: format!("the entry holds {written} of its {} bytes", meta.size),
            });
        }
        drop(file);
        self.set_owner_mode_xattrs(&full, meta, false)?;
        set_times(&full, meta.mtime)?;
        self.stats.files += 1;
        self.stats.bytes += written;
        self.mark_created(rel);
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, target: &[u8], meta: &EntryMeta, entry: &str) -> Result<()> {
        self.parents(rel, Missing::Create, entry)?;
        self.make_room(rel, false)?;
        let full = self.dest.join(rel);
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &full)
            .map_err(io_err("creating symlink", &full))?;
        self.set_owner_mode_xattrs(&full, meta, true)?;
        set_times(&full, meta.mtime)?;
        self.stats.files += 1;
        self.mark_created(rel);
        Ok(())
    }

    fn hardlink(&mut self, rel: &Path, target_raw: &[u8], entry: &str) -> Result<()> {
        let target =
            sanitize_path(target_raw, entry, "the hard link target")?.ok_or_else(|| {
                LayerError::UnsafePath {
                    entry: entry.to_string(),
                    reason: "hard link to the destination root".into(),
                }
            })?;
        if target == rel {
            tracing::debug!(entry, "ignoring hard link to itself");
            return Ok(());
        }
        if !self.parents(&target, Missing::Report, entry)? {
            return Err(invalid(
                entry,
                format!("hard link target {target:?} does not exist"),
            ));
        }
        let target_full = self.dest.join(&target);
        match fs::symlink_metadata(&target_full) {
            Ok(m) if m.is_dir() => {
                return Err(invalid(
                    entry,
                    format!("hard link target {target:?} is a directory"),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(
                    entry,
                    format!("hard link target {target:?} does not exist"),
                ));
            }
            Err(e) => return Err(io_err("reading metadata of", &target_full)(e)),
        }
        self.parents(rel, Missing::Create, entry)?;
        self.make_room(rel, false)?;
        // Re-check the target's parents: making room may have removed or replaced them.
        if !self.parents(&target, Missing::Report, entry)? {
            return Err(invalid(
                entry,
                format!("hard link target {target:?} does not exist"),
            ));
        }
        let full = self.dest.join(rel);
        // linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
        fs::hard_link(&target_full, &full).map_err(io_err("creating hard link", &full))?;
        self.stats.files += 1;
        self.mark_created(rel);
        Ok(())
    }

    fn node(
        &mut self,
        rel: &Path,
        kind: SFlag,
        dev: nix::libc::dev_t,
        meta: &EntryMeta,
        entry: &str,
    ) -> Result<()> {
        self.parents(rel, Missing::Create, entry)?;
        self.make_room(rel, false)?;
        let full = self.dest.join(rel);
        nstat::mknod(&full, kind, Mode::from_bits_truncate(0o600), dev)
            .map_err(errno_err("creating node", &full))?;
        self.set_owner_mode_xattrs(&full, meta, false)?;
        set_times(&full, meta.mtime)?;
        self.stats.files += 1;
        self.mark_created(rel);
        Ok(())
    }

    /// Ownership, then mode (chown clears set-id bits), then xattrs (chown clears
    /// `security.capability`).
    fn set_owner_mode_xattrs(&self, full: &Path, meta: &EntryMeta, is_symlink: bool) -> Result<()> {
        std::os::unix::fs::lchown(full, Some(meta.uid), Some(meta.gid))
            .map_err(io_err("changing owner of", full))?;
        if !is_symlink {
            fs::set_permissions(full, fs::Permissions::from_mode(meta.mode))
                .map_err(io_err("setting mode of", full))?;
        }
        for (name, value) in &meta.xattrs {
            if skip_xattr_on_unpack(name.as_bytes()) {
                tracing::debug!(path = %full.display(), name = ?name, "dropping overlay xattr from archive");
                continue;
            }
            match xattr::set(full, name, value) {
                Ok(()) => {}
                Err(e) if xattr_unsupported(&e) => {
                    tracing::debug!(path = %full.display(), name = ?name, error = %e, "xattr not supported here; skipped");
                }
                Err(e) => return Err(io_err("setting xattrs of", full)(e)),
            }
        }
        Ok(())
    }

    /// Sets directory mtimes now that nothing more is written into them.
    fn finish(&mut self) -> Result<()> {
        let times = std::mem::take(&mut self.dir_times);
        for (rel, mtime) in times.iter().rev() {
            if !self.real_dir_chain(rel) {
                continue;
            }
            set_times(&self.dest.join(rel), *mtime)?;
        }
        Ok(())
    }

    /// True if `rel` and all its parents are real directories (no symlinks) inside `dest`.
    fn real_dir_chain(&self, rel: &Path) -> bool {
        let mut cur = self.dest.to_path_buf();
        for comp in rel.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
        true
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    xattr::set(path, name, value).map_err(io_err("setting xattrs of", path))
}

/// Sets atime and mtime of `path` without following a symlink.
fn set_times(path: &Path, mtime: TimeSpec) -> Result<()> {
    nstat::utimensat(
        AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_err("setting times of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mknod(path: &Path, kind: SFlag, perm: u32, dev: u64) {
        nstat::mknod(path, kind, Mode::from_bits_truncate(perm), dev).unwrap();
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 0);
        nstat::utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    fn layer(upper: &Path, compression: Compression, opts: &LayerOptions) -> (LayerInfo, Vec<u8>) {
        let mut out = Vec::new();
        let info = write_layer(upper, compression, opts, &mut out).unwrap();
        (info, out)
    }

    /// Builds a tree with every entry type.
    fn rich_tree(root: &Path) {
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("dir/file"), b"hello world").unwrap();
        fs::set_permissions(root.join("dir/file"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join("big"), vec![7u8; 3 * IO_BUF + 17]).unwrap();
        fs::hard_link(root.join("dir/file"), root.join("dir/sub/link")).unwrap();
        symlink("../file", root.join("dir/sub/sym")).unwrap();
        symlink("/etc/passwd", root.join("abs-sym")).unwrap();
        mknod(&root.join("fifo"), SFlag::S_IFIFO, 0o640, 0);
        mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            0o666,
            nstat::makedev(1, 3),
        );
        mknod(
            &root.join("loop"),
            SFlag::S_IFBLK,
            0o660,
            nstat::makedev(7, 1),
        );
        let long_dir = root.join("l".repeat(80)).join("m".repeat(80));
        fs::create_dir_all(&long_dir).unwrap();
        fs::write(long_dir.join("n".repeat(120)), b"long").unwrap();
        symlink("t".repeat(150), root.join("longsym")).unwrap();
        fs::write(root.join("owned"), b"o").unwrap();
        std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("dir/sub/sym"), Some(42), Some(43)).unwrap();
        fs::write(root.join("bigid"), b"").unwrap();
        std::os::unix::fs::lchown(root.join("bigid"), Some(3_000_000), Some(4_000_000)).unwrap();
        xattr::set(root.join("dir/file"), "user.kiln", b"value").unwrap();
        xattr::set(root.join("dir"), "trusted.kiln", b"tv").unwrap();
        xattr::set(root.join("dir/file"), "trusted.overlay.origin", b"x").unwrap();
        for (i, p) in ["dir/sub", "dir", "big", "fifo", "owned"]
            .iter()
            .enumerate()
        {
            set_mtime(&root.join(p), 1_600_000_000 + i as i64);
        }
        set_mtime(&root.join("dir/sub/sym"), 1_500_000_000);
    }

    /// A comparable description of a tree: path → (type, mode, uid, gid, size, rdev, target,
    /// xattrs, mtime, content, inode group).
    fn describe(root: &Path, with_dir_mtimes: bool) -> Vec<String> {
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        let mut out = Vec::new();
        let mut entries: Vec<_> = WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        for e in entries {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "sym"
            } else if ft.is_char_device() {
                "chr"
            } else if ft.is_block_device() {
                "blk"
            } else {
                "fifo"
            };
            let target = if ft.is_symlink() {
                fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            let content = if ft.is_file() {
                format!("{}", Digest::of(&fs::read(e.path()).unwrap()))
            } else {
                String::new()
            };
            let mut xattrs: Vec<String> = xattr::list(e.path())
                .unwrap()
                .filter(|n| !n.as_bytes().starts_with(b"security."))
                .map(|n| {
                    format!(
                        "{}={:?}",
                        n.to_string_lossy(),
                        xattr::get(e.path(), &n).unwrap()
                    )
                })
                .collect();
            xattrs.sort();
            let link_group = if !ft.is_dir() && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone()
            } else {
                String::new()
            };
            let mtime = if ft.is_dir() && !with_dir_mtimes {
                0
            } else {
                m.mtime()
            };
            out.push(format!(
                "{rel} {kind} {:o} {}:{} {} {} {target} {xattrs:?} {mtime} {content} {link_group}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_dir() { 0 } else { m.size() },
                m.rdev()
            ));
        }
        out
    }

    #[test]
    fn compression_names() {
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            assert_eq!(Compression::parse(c.media_type()), Some(c));
        }
        assert_eq!(
            Compression::parse("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::parse("zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::parse("application/json"), None);
    }

    #[test]
    fn every_entry_type_round_trips_in_both_modes() {
        let src = tempfile::tempdir().unwrap();
        rich_tree(src.path());
        let (info, blob) = layer(src.path(), Compression::Gzip, &LayerOptions::default());
        let expected = {
            let mut d = describe(src.path(), true);
            // overlay's own xattrs are not part of a layer
            for line in &mut d {
                *line = line.replace("\"trusted.overlay.origin=Some([120])\", ", "");
            }
            d
        };
        for mode in [UnpackMode::OverlayDiff, UnpackMode::Apply] {
            let dst = tempfile::tempdir().unwrap();
            let stats = unpack_layer(&blob[..], dst.path(), mode).unwrap();
            assert_eq!(describe(dst.path(), true), expected, "{mode:?}");
            assert_eq!(stats.bytes, 11 + (3 * IO_BUF as u64 + 17) + 4 + 1);
            assert_eq!(stats.files, 12);
        }
        assert_ne!(info.digest, info.diff_id);
        // PAX, not GNU: no 'L'/'K' entries; long names are PAX records.
        let raw = {
            let mut d = flate2::read::GzDecoder::new(&blob[..]);
            let mut v = Vec::new();
            d.read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(Digest::of(&raw), info.diff_id);
        let mut ar = tar::Archive::new(&raw[..]);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert!(e.header().as_ustar().is_some(), "ustar headers only");
            assert!(!e.header().entry_type().is_gnu_longname());
            assert_eq!(e.header().username_bytes(), Some(&b""[..]));
            names.push(String::from_utf8(e.path_bytes().into_owned()).unwrap());
        }
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
        assert_eq!(names, sorted, "entries sorted by path bytes");
        assert!(names.contains(&"dir/".to_string()));
        assert!(names.iter().any(|n| n.len() > 200));
    }

    #[test]
    fn compressions_share_the_diff_id() {
        let src = tempfile::tempdir().unwrap();
        rich_tree(src.path());
        let opts = LayerOptions::default();
        let (plain, plain_blob) = layer(src.path(), Compression::Uncompressed, &opts);
        let (gz, gz_blob) = layer(src.path(), Compression::Gzip, &opts);
        let (zst, zst_blob) = layer(src.path(), Compression::Zstd, &opts);
        assert_eq!(plain.digest, plain.diff_id);
        assert_eq!(plain.size, plain_blob.len() as u64);
        assert_eq!(Digest::of(&plain_blob), plain.digest);
        assert_eq!(gz.diff_id, plain.diff_id);
        assert_eq!(zst.diff_id, plain.diff_id);
        assert_eq!(Digest::of(&gz_blob), gz.digest);
        assert_eq!(Digest::of(&zst_blob), zst.digest);
        assert_eq!(gz.size, gz_blob.len() as u64);
        assert_eq!(
            &gz_blob[..4],
            &[0x1f, 0x8b, 8, 0],
            "gzip: deflate, no name/flags"
        );
        assert_eq!(&gz_blob[4..8], &[0, 0, 0, 0], "gzip: mtime 0");
        assert_eq!(&zst_blob[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        for blob in [&plain_blob, &gz_blob, &zst_blob] {
            let dst = tempfile::tempdir().unwrap();
            unpack_layer(&blob[..], dst.path(), UnpackMode::Apply).unwrap();
            assert_eq!(
                fs::read(dst.path().join("dir/file")).unwrap(),
                b"hello world"
            );
        }
    }

    #[test]
    fn same_tree_same_digest_and_epoch_clamps_mtimes() {
        let build = |dir_mtime: i64| {
            let d = tempfile::tempdir().unwrap();
            rich_tree(d.path());
            set_mtime(&d.path().join("dir"), dir_mtime);
            d
        };
        let a = build(1_700_000_000);
        let b = build(1_700_000_000);
        let c = build(1_700_000_500);
        let none = LayerOptions::default();
        let (la, _) = layer(a.path(), Compression::Gzip, &none);
        let (lb, _) = layer(b.path(), Compression::Gzip, &none);
        let (lc, _) = layer(c.path(), Compression::Gzip, &none);
        assert_eq!(la, lb, "same tree built twice → byte-identical layer");
        assert_ne!(
            la.diff_id, lc.diff_id,
            "without an epoch, a dir mtime is part of the layer"
        );
        let epoch = LayerOptions {
            source_date_epoch: Some(1_650_000_000),
        };
        let (ea, _) = layer(a.path(), Compression::Gzip, &epoch);
        let (ec, _) = layer(c.path(), Compression::Gzip, &epoch);
        assert_eq!(ea, ec, "mtimes after the epoch are clamped");
        let dst = tempfile::tempdir().unwrap();
        let (_, blob) = layer(c.path(), Compression::Uncompressed, &epoch);
        unpack_layer(&blob[..], dst.path(), UnpackMode::Apply).unwrap();
        assert_eq!(
            fs::symlink_metadata(dst.path().join("dir"))
                .unwrap()
                .mtime(),
            1_650_000_000
        );
        assert_eq!(
            fs::symlink_metadata(dst.path().join("dir/sub/sym"))
                .unwrap()
                .mtime(),
            1_500_000_000,
            "older mtimes kept"
        );
    }

    #[test]
    fn whiteouts_and_opaque_dirs_in_both_modes() {
        // The upper dir of a step that deleted `base/gone`, `gonedir`, and replaced `opq`.
        let upper = tempfile::tempdir().unwrap();
        let u = upper.path();
        fs::create_dir_all(u.join("base")).unwrap();
        mknod(&u.join("base/gone"), SFlag::S_IFCHR, 0, 0);
        mknod(&u.join("gonedir"), SFlag::S_IFCHR, 0, 0);
        fs::create_dir_all(u.join("opq/keep")).unwrap();
        fs::write(u.join("opq/new"), b"n").unwrap();
        xattr::set(u.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        fs::create_dir(u.join("useropq")).unwrap();
        xattr::set(u.join("useropq"), "user.overlay.opaque", b"y").unwrap();
        let (_, blob) = layer(u, Compression::Zstd, &LayerOptions::default());

        let mut names = Vec::new();
        let (_, mut raw) = decompress(&blob[..]).unwrap();
        let mut ar = tar::Archive::new(&mut raw);
        for e in ar.entries().unwrap() {
            names.push(String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap());
        }
        let expected = [
            "base/",
            "base/.wh.gone",
            ".wh.gonedir",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/keep/",
            "opq/new",
            "useropq/",
            "useropq/.wh..wh..opq",
        ];
        let mut sorted_expected = expected.to_vec();
        sorted_expected.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
        assert_eq!(sorted_expected[0], ".wh.gonedir");
        assert_eq!(names, sorted_expected);

        // OverlayDiff: back to overlay format.
        let diff = tempfile::tempdir().unwrap();
        unpack_layer(&blob[..], diff.path(), UnpackMode::OverlayDiff).unwrap();
        let d = diff.path();
        assert!(is_whiteout(
            &fs::symlink_metadata(d.join("base/gone")).unwrap()
        ));
        assert!(is_whiteout(
            &fs::symlink_metadata(d.join("gonedir")).unwrap()
        ));
        assert_eq!(
            xattr::get(d.join("opq"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(
            xattr::get(d.join("useropq"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(d.join("opq/keep").is_dir());
        // ... and writing the diff again gives the same layer.
        let (again, _) = layer(d, Compression::Zstd, &LayerOptions::default());
        let (orig, _) = layer(u, Compression::Zstd, &LayerOptions::default());
        assert_eq!(again.diff_id, orig.diff_id);

        // Apply: onto a rootfs holding the lower contents.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("base")).unwrap();
        fs::write(r.join("base/gone"), b"x").unwrap();
        fs::write(r.join("base/stays"), b"x").unwrap();
        fs::create_dir_all(r.join("gonedir/deep")).unwrap();
        fs::create_dir_all(r.join("opq/keep/old")).unwrap();
        fs::write(r.join("opq/old"), b"x").unwrap();
        fs::write(r.join("opq/keep/oldfile"), b"x").unwrap();
        fs::create_dir_all(r.join("useropq/x")).unwrap();
        unpack_layer(&blob[..], r, UnpackMode::Apply).unwrap();
        let listing = describe(r, false)
            .into_iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(
            listing,
            [
                "base",
                "base/stays",
                "opq",
                "opq/keep",
                "opq/new",
                "useropq"
            ]
        );
    }

    #[test]
    fn whiteout_names_are_plain_files_for_add() {
        let upper = tempfile::tempdir().unwrap();
        mknod(&upper.path().join("gone"), SFlag::S_IFCHR, 0, 0);
        let (_, blob) = layer(upper.path(), Compression::Gzip, &LayerOptions::default());
        let dst = tempfile::tempdir().unwrap();
        fs::write(dst.path().join("gone"), b"still here").unwrap();
        let (_, stream) = decompress(&blob[..]).unwrap();
        unpack_tar(stream, dst.path(), Flavor::Plain).unwrap();
        assert!(dst.path().join(".wh.gone").is_file());
        assert!(dst.path().join("gone").is_file());
    }

    // ----- malicious archives -----

    fn raw_header(
        name: &[u8],
        kind: tar::EntryType,
        size: u64,
        link: Option<&[u8]>,
    ) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        h.set_cksum();
        h
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    /// A tar of `entries`; `@OUT` in a symlink target stands for `outside`.
    fn evil_tar(entries: &[E<'_>], outside: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                E::File(n, data) => b.append(
                    &raw_header(
                        n.as_bytes(),
                        tar::EntryType::Regular,
                        data.len() as u64,
                        None,
                    ),
                    *data,
                ),
                E::Dir(n) => b.append(
                    &raw_header(n.as_bytes(), tar::EntryType::Directory, 0, None),
                    io::empty(),
                ),
                E::Sym(n, t) => b.append(
                    &raw_header(
                        n.as_bytes(),
                        tar::EntryType::Symlink,
                        0,
                        Some(t.replace("@OUT", outside).as_bytes()),
                    ),
                    io::empty(),
                ),
                E::Hard(n, t) => b.append(
                    &raw_header(n.as_bytes(), tar::EntryType::Link, 0, Some(t.as_bytes())),
                    io::empty(),
                ),
            }
            .unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Unpacks `tar` into `<tmp>/dest` in every flavor; `<tmp>/outside` must stay untouched.
    fn assert_refused(entries: &[E<'_>], expect: &str) {
        for flavor in [Flavor::OverlayDiff, Flavor::Apply, Flavor::Plain] {
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path().join("a/b/dest");
            let outside = tmp.path().join("outside");
            fs::create_dir_all(&dest).unwrap();
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
            let before = describe(tmp.path(), true);
            let tar = evil_tar(entries, outside.to_str().unwrap());
            let err = unpack_tar(&tar[..], &dest, flavor).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expect), "{flavor:?}: {msg}");
            assert!(
                matches!(err, LayerError::UnsafePath { .. }),
                "{flavor:?}: {err:?}"
            );
            let after: Vec<String> = describe(tmp.path(), true)
                .into_iter()
                .filter(|l| !l.starts_with("a/b/dest/"))
                .collect();
            let before: Vec<String> = before
                .into_iter()
                .filter(|l| !l.starts_with("a/b/dest/"))
                .collect();
            let strip = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|l| {
                        if l.starts_with("a/b/dest ") {
                            "dest".into()
                        } else {
                            l
                        }
                    })
                    .collect()
            };
            assert_eq!(
                strip(after),
                strip(before),
                "{flavor:?}: nothing changes outside dest"
            );
            assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
            assert!(!tmp.path().join("a/evil").exists() && !tmp.path().join("a/b/evil").exists());
        }
    }

    #[test]
    fn refuses_paths_escaping_dest() {
        assert_refused(&[E::File("../evil", b"x")], "climbs out");
        assert_refused(&[E::File("a/../../evil", b"x")], "climbs out");
        assert_refused(
            &[E::File("ok", b"x"), E::File("x/y/../../../evil", b"x")],
            "climbs out",
        );
        assert_refused(&[E::File("/abs/evil", b"x")], "absolute path");
        assert_refused(&[E::File("/etc/passwd", b"x")], "absolute path");
    }

    #[test]
    fn refuses_writing_through_symlinks() {
        let target = "@OUT";
        // `l -> <outside>` then `l/passwd`
        assert_refused(
            &[E::Sym("l", target), E::File("l/passwd", b"pwned")],
            "symlink",
        );
        assert_refused(
            &[
                E::Sym("l", "../../../outside"),
                E::File("l/passwd", b"pwned"),
            ],
            "symlink",
        );
        // nested: a directory, then a symlink replacing it, then a write below it
        assert_refused(
            &[
                E::Dir("d/"),
                E::Sym("d", target),
                E::File("d/passwd", b"pwned"),
            ],
            "symlink",
        );
        assert_refused(&[E::Sym("l", target), E::Dir("l/sub/")], "symlink");
        // whiteouts through a symlink must not delete outside
        assert_refused(
            &[E::Sym("l", target), E::File("l/.wh.passwd", b"")],
            "symlink",
        );
    }

    #[test]
    fn refuses_hard_links_outside_or_through_symlinks() {
        let target = "@OUT";
        assert_refused(&[E::Hard("h", "/etc/passwd")], "absolute path");
        assert_refused(&[E::Hard("h", "../../../outside/passwd")], "climbs out");
        assert_refused(&[E::Sym("l", target), E::Hard("h", "l/passwd")], "symlink");
    }

    #[test]
    fn symlinks_may_point_anywhere_and_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        fs::write(tmp.path().join("victim"), b"v").unwrap();
        // a symlink to outside, then a regular file with the same name: replaces the link
        let tar = evil_tar(
            &[
                E::Sym("s", "../victim"),
                E::Sym("abs", "/etc/shadow"),
                E::File("s", b"replaced"),
                E::File("a/../b", b"fine"),
                E::Hard("h", "./b"),
            ],
            "",
        );
        let stats = unpack_tar(&tar[..], &dest, Flavor::Apply).unwrap();
        assert_eq!(fs::read(tmp.path().join("victim")).unwrap(), b"v");
        assert_eq!(fs::read(dest.join("s")).unwrap(), b"replaced");
        assert_eq!(
            fs::read_link(dest.join("abs")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(fs::read(dest.join("h")).unwrap(), b"fine");
        assert!(
            !dest.join("a").exists(),
            "a/../b is normalized lexically to b"
        );
        assert_eq!(stats.files, 5);
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), vec![1u8; 5000]).unwrap();
        fs::write(src.path().join("g"), vec![2u8; 512]).unwrap();
        for compression in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let (_, blob) = layer(src.path(), compression, &LayerOptions::default());
            for cut in [
                1,
                100,
                600,
                1024,
                2000,
                blob.len() / 2,
                blob.len().saturating_sub(1030),
                blob.len() - 8,
                blob.len() - 1,
            ] {
                if cut >= blob.len() {
                    continue;
                }
                if compression == Compression::Uncompressed && cut > blob.len() - 1024 {
                    // Inside the end-of-archive zero blocks: every entry is complete, and
                    // like GNU tar and Go we accept a short trailer.
                    continue;
                }
                let dst = tempfile::tempdir().unwrap();
                let r = unpack_layer(&blob[..cut], dst.path(), UnpackMode::Apply);
                assert!(
                    r.is_err(),
                    "{compression:?} cut at {cut} of {} must fail",
                    blob.len()
                );
            }
        }
        // garbage and a bad gzip checksum
        let dst = tempfile::tempdir().unwrap();
        assert!(unpack_layer(
            &[0x1f, 0x8b, 8, 0, 1, 2, 3][..],
            dst.path(),
            UnpackMode::Apply
        )
        .is_err());
        let (_, mut gz) = layer(src.path(), Compression::Gzip, &LayerOptions::default());
        let n = gz.len();
        gz[n - 6] ^= 0xff;
        let err = unpack_layer(&gz[..], dst.path(), UnpackMode::Apply).unwrap_err();
        assert!(matches!(err, LayerError::Read { .. }), "{err}");
        let mut junk = vec![0u8; 512];
        junk[..5].copy_from_slice(b"hello");
        assert!(
            unpack_layer(&junk[..], dst.path(), UnpackMode::Apply).is_err(),
            "bad checksum"
        );
    }

    #[test]
    fn unsupported_entry_types_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.set_real_size(0);
        }
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        let tar = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = unpack_layer(&tar[..], dst.path(), UnpackMode::Apply).unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");

        let tar = {
            let mut b = tar::Builder::new(Vec::new());
            b.append(
                &raw_header(b"vol", tar::EntryType::new(b'V'), 0, None),
                io::empty(),
            )
            .unwrap();
            b.into_inner().unwrap()
        };
        let err = unpack_layer(&tar[..], dst.path(), UnpackMode::Apply).unwrap_err();
        assert!(matches!(err, LayerError::UnsupportedEntry { .. }), "{err}");
    }

    #[test]
    fn empty_layer_has_the_well_known_diff_id() {
        let empty = tempfile::tempdir().unwrap();
        let (info, blob) = layer(
            empty.path(),
            Compression::Uncompressed,
            &LayerOptions::default(),
        );
        assert_eq!(blob, vec![0u8; 1024]);
        assert_eq!(
            info.diff_id.as_str(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
