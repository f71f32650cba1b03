//! COPY and ADD: Docker's file-copy rules carried out into a layer directory.
//!
//! The result of a COPY is written into an empty `upper` directory that mirrors container
//! paths; that directory *is* the layer's content (it becomes a tar). The current stage's root
//! filesystem (`base`) is only read: to follow symlinks in the destination, to see whether the
//! destination is an existing directory, to give re-created parent directories their existing
//! metadata, and to resolve `--chown` names.
//!
//! Rules (BuildKit's): a source directory contributes its *contents*; several sources, a
//! wildcard matching several entries, or a trailing `/` make the destination a directory (more
//! than one source with a non-directory destination is an error); missing parents are created;
//! symlinks are copied as symlinks except a source named directly, which is followed; context
//! files become root-owned unless `--chown`; files from another stage keep their owners.

use rayon::prelude::*;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::rootfs::{glob_in_root, has_wildcards, resolve_in_root};
use super::user::resolve_chown;
use super::ExecError;
use crate::graph::dispatch::{clean_path, CopyOp, CopySource};

/// Where COPY reads from: the build context or another stage's / image's root filesystem.
pub trait SourceTree {
    /// Source paths (relative to the tree root, '/'-separated, no leading '/') matching a
    /// pattern with Go wildcards; empty when nothing matches.
    fn matches(&self, pattern: &str) -> Result<Vec<String>, ExecError>;
    /// The host path of a relative path; `follow` follows a final symlink (within the tree).
    fn host_path(&self, rel: &str, follow: bool) -> Result<PathBuf, ExecError>;
    /// Every entry below directory `rel` (relative to `rel`, sorted, parents first), excluding
    /// what the tree ignores (`.dockerignore` for the context).
    fn descendants(&self, rel: &str) -> Result<Vec<String>, ExecError>;
    /// Whether copied files keep their owner (true for stages, false for the context).
    fn preserve_owner(&self) -> bool;
    /// A name for error messages ("build context", "stage builder").
    fn describe(&self) -> String;
    /// What the patterns select, for cache keys and `--explain`: one digest of it all and
    /// each file's content digest. `None` when the tree cannot say (stages key by stage key).
    fn content(&self, _patterns: &[String]) -> Result<Option<SelectedContent>, ExecError> {
        Ok(None)
    }
}

/// The content a COPY source selects (see [`SourceTree::content`]).
#[derive(Debug, Clone)]
pub struct SelectedContent {
    pub digest: crate::cache::Digest,
    /// Relative path → content digest, for files.
    pub files: std::collections::BTreeMap<String, String>,
}

/// A stage's or image's root filesystem as a COPY source.
pub struct RootfsTree<'a> {
    pub root: &'a Path,
    pub name: String,
}

impl SourceTree for RootfsTree<'_> {
    fn matches(&self, pattern: &str) -> Result<Vec<String>, ExecError> {
        Ok(glob_in_root(self.root, pattern)?
            .into_iter()
            .map(|p| p.trim_start_matches('/').to_string())
            .collect())
    }

    fn host_path(&self, rel: &str, follow: bool) -> Result<PathBuf, ExecError> {
        resolve_in_root(self.root, &format!("/{rel}"), follow)
    }

    fn descendants(&self, rel: &str) -> Result<Vec<String>, ExecError> {
        let dir = self.host_path(rel, true)?;
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(|e| ExecError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            if let Ok(r) = entry.path().strip_prefix(&dir) {
                out.push(r.to_string_lossy().to_string());
            }
        }
        Ok(out)
    }

    fn preserve_owner(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// `--chmod`: an octal mode or symbolic clauses, applied to every copied file and directory.
#[derive(Debug, Clone)]
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

impl Chmod {
    pub fn parse(s: &str) -> Result<Chmod, ExecError> {
        if !s.is_empty() && s.chars().all(|c| c.is_digit(8)) {
            return u32::from_str_radix(s, 8)
                .map(Chmod::Octal)
                .map_err(|_| ExecError::Failed(format!("invalid --chmod value {s:?}")));
        }
        if crate::parser::instructions::valid_chmod(s) {
            Ok(Chmod::Symbolic(s.to_string()))
        } else {
            Err(ExecError::Failed(format!(
                "invalid --chmod value {s:?}: expected octal (0755) or symbolic (u+x)"
            )))
        }
    }

    /// The new permission bits for an entry whose current mode is `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m & 0o7777,
            Chmod::Symbolic(s) => apply_symbolic(s, mode & 0o7777, is_dir),
        }
    }
}

fn apply_symbolic(spec: &str, mut mode: u32, is_dir: bool) -> u32 {
    for clause in spec.split(',') {
        let Some(op_at) = clause.find(['+', '-', '=']) else {
            continue;
        };
        let who = &clause[..op_at];
        let mut mask = 0u32;
        for c in if who.is_empty() {
            "a".chars()
        } else {
            who.chars()
        } {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                _ => 0o7777,
            };
        }
        let mut rest = &clause[op_at..];
        while let Some(op) = rest.chars().next() {
            let end = rest[1..]
                .find(['+', '-', '='])
                .map(|i| i + 1)
                .unwrap_or(rest.len());
            let perms = &rest[1..end];
            rest = &rest[end..];
            let mut bits = 0u32;
            for p in perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => 0,
                };
            }
            let bits = bits & mask;
            match op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => mode = (mode & !(mask & 0o7777)) | bits,
            }
        }
    }
    mode
}

/// Knobs of one copy that do not come from the Dockerfile.
pub struct CopyEnv<'a> {
    /// The current stage's root filesystem (None: empty, or `--link`).
    pub base: Option<&'a Path>,
    /// Where to write the layer's content.
    pub upper: &'a Path,
    /// `--exclude` patterns, as a predicate on source-relative paths.
    pub excluded: &'a dyn Fn(&str, bool) -> bool,
    /// ADD of a local archive: extracts it into the destination.
    pub extract: &'a dyn Fn(&Path, &Path) -> Result<bool, ExecError>,
}

/// Carries out one COPY/ADD from `tree` into `env.upper`. Returns whether anything was written.
pub fn copy(op: &CopyOp, tree: &dyn SourceTree, env: &CopyEnv) -> Result<bool, ExecError> {
    let owner = match &op.chown {
        Some(spec) => Some(resolve_chown(spec, env.base)?),
        None => None,
    };
    let chmod = op.chmod.as_deref().map(Chmod::parse).transpose()?;

    // Resolve every source first: the number of matches decides what the destination is.
    // (source-relative path or inline name, is_inline, `--parents` prefix to drop)
    let mut items: Vec<(String, bool, String)> = Vec::new();
    let mut inline = Vec::new();
    for source in &op.sources {
        match source {
            CopySource::Path(p) => {
                let pattern = clean_path(p).trim_start_matches('/').to_string();
                let found = tree.matches(&pattern)?;
                if found.is_empty() {
                    return Err(ExecError::Failed(if has_wildcards(&pattern) {
                        format!(
                            "no source files were specified: {p:?} matches nothing in the {}",
                            tree.describe()
                        )
                    } else {
                        format!("{p:?}: not found in the {}", tree.describe())
                    }));
                }
                let pivot = match p.find("/./") {
                    Some(i) => clean_path(&p[..i]).trim_start_matches('/').to_string(),
                    None => String::new(),
                };
                items.extend(found.into_iter().map(|f| (f, false, pivot.clone())));
            }
            CopySource::Inline(name, content) => {
                inline.push((name.clone(), content.clone()));
                items.push((name.clone(), true, String::new()));
            }
            CopySource::Url(u) => {
                return Err(ExecError::Failed(format!(
                    "ADD {u}: remote sources are handled by the downloader, not here"
                )));
            }
        }
    }
    let dest_is_dir_syntax = op.dest.ends_with('/');
    let dest_clean = clean_path(&op.dest);
    let dest_resolved = resolve_dest(env.base, &dest_clean)?;
    let dest_exists_as_dir = env
        .base
        .map(|b| b.join(dest_resolved.trim_start_matches('/')).is_dir())
        .unwrap_or(false);
    if items.len() > 1 && !dest_is_dir_syntax && !dest_exists_as_dir {
        return Err(ExecError::Failed(format!(
            "When using {} with more than one source file, the destination must be a directory and end with a / (got {:?})",
            if op.is_add { "ADD" } else { "COPY" },
            op.dest
        )));
    }
    let into_dir = dest_is_dir_syntax || items.len() > 1 || dest_exists_as_dir;

    let mut w = Writer {
        env,
        owner,
        chmod,
        dirs_to_finish: Vec::new(),
        created: BTreeSet::new(),
        wrote: false,
        preserve_owner: tree.preserve_owner(),
    };
    for (name, content) in &inline {
        let target = if into_dir {
            format!("{dest_resolved}/{name}")
        } else {
            dest_resolved.clone()
        };
        w.ensure_parents(&target)?;
        let path = w.upper_path(&target);
        std::fs::write(&path, content).map_err(|e| ExecError::io(&path, e))?;
        let mode = w
            .chmod
            .as_ref()
            .map(|c| c.apply(0o644, false))
            .unwrap_or(0o644);
        finish_entry(&path, mode, w.owner.unwrap_or((0, 0)), None)?;
        w.wrote = true;
    }
    for (rel, is_inline, pivot) in &items {
        if *is_inline {
            continue;
        }
        let host = tree.host_path(rel, true)?;
        let meta = std::fs::metadata(&host).map_err(|e| ExecError::io(&host, e))?;
        let base_name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        let target_root = if op.parents {
            format!(
                "{}/{}",
                dest_resolved.trim_end_matches('/'),
                parents_rel(rel, pivot)
            )
        } else if meta.is_dir() {
            dest_resolved.clone()
        } else if into_dir {
            format!("{}/{base_name}", dest_resolved.trim_end_matches('/'))
        } else {
            dest_resolved.clone()
        };
        if meta.is_dir() {
            w.ensure_dir(&target_root, Some((&host, &meta)))?;
            // Directories first, in walk order (parents before children); then every other
            // entry in parallel: they are independent once their directories exist.
            let mut entries = Vec::new();
            for sub in tree.descendants(rel)? {
                let sub_host = host.join(&sub);
                let sub_meta = std::fs::symlink_metadata(&sub_host)
                    .map_err(|e| ExecError::io(&sub_host, e))?;
                if (env.excluded)(&sub, sub_meta.is_dir()) {
                    continue;
                }
                let target = format!("{}/{sub}", target_root.trim_end_matches('/'));
                w.wrote = true;
                if sub_meta.is_dir() {
                    w.ensure_dir(&target, Some((&sub_host, &sub_meta)))?;
                } else {
                    entries.push((sub_host, target, sub_meta));
                }
            }
            let copier = w.copier();
            entries
                .par_iter()
                .try_for_each(|(h, t, m)| copier.copy_non_dir(h, t, m))?;
        } else {
            if (env.excluded)(&base_name, false) {
                continue;
            }
            if op.is_add && op.unpack != Some(false) {
                let dir = dest_resolved.clone();
                let probe_parent = w.upper_path(&dir);
                if is_archive_file(&host) {
                    w.ensure_dir(&dir, None)?;
                    if (env.extract)(&host, &probe_parent)? {
                        w.wrote = true;
                        continue;
                    }
                }
            }
            w.ensure_parents(&target_root)?;
            w.copy_entry(&host, &target_root)?;
        }
    }
    w.finish_dirs()?;
    Ok(w.wrote)
}

/// WORKDIR: creates `path` (and missing parents) in the layer, owned by `owner`; parents that
/// exist in `base` keep their metadata.
pub fn mkdir(
    base: Option<&Path>,
    upper: &Path,
    path: &str,
    owner: (u32, u32),
) -> Result<(), ExecError> {
    let nothing = |_: &str, _: bool| false;
    let no_extract = |_: &Path, _: &Path| Ok(false);
    let env = CopyEnv {
        base,
        upper,
        excluded: &nothing,
        extract: &no_extract,
    };
    let mut w = Writer {
        env: &env,
        owner: Some(owner),
        chmod: None,
        dirs_to_finish: Vec::new(),
        created: BTreeSet::new(),
        wrote: false,
        preserve_owner: false,
    };
    w.ensure_dir(path, None)?;
    w.finish_dirs()
}

fn is_archive_file(path: &Path) -> bool {
    crate::cache::archive::is_archive(path)
}

/// `--parents`: the part of the source path to keep: all of it, or what follows a `/./`
/// pivot in the pattern (`pivot` is the cleaned part before it).
fn parents_rel(rel: &str, pivot: &str) -> String {
    if pivot.is_empty() {
        return rel.to_string();
    }
    rel.strip_prefix(pivot)
        .map(|r| r.trim_start_matches('/').to_string())
        .unwrap_or_else(|| rel.to_string())
}

/// Resolves the destination through the base filesystem's symlinks (the container's view),
/// returning a clean container path.
fn resolve_dest(base: Option<&Path>, dest: &str) -> Result<String, ExecError> {
    let Some(base) = base else {
        return Ok(dest.to_string());
    };
    let host = resolve_in_root(base, dest, true)?;
    let rel = host
        .strip_prefix(base)
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(clean_path(&format!("/{rel}")))
}

/// A directory whose metadata is applied once its contents are written:
/// (path, mode, (uid, gid), mtime as (seconds, nanoseconds)).
type PendingDir = (PathBuf, u32, (u32, u32), Option<(i64, i64)>);

struct Writer<'a> {
    env: &'a CopyEnv<'a>,
    owner: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    /// Directories whose mode/owner/mtime are set after their contents are written.
    dirs_to_finish: Vec<PendingDir>,
    created: BTreeSet<String>,
    wrote: bool,
    preserve_owner: bool,
}

impl Writer<'_> {
    fn upper_path(&self, container_path: &str) -> PathBuf {
        self.env.upper.join(container_path.trim_start_matches('/'))
    }

    /// Creates the parents of `target` in the layer. Parents that exist in the base keep their
    /// metadata; new ones are 0755, owned by the `--chown` owner (or root).
    fn ensure_parents(&mut self, target: &str) -> Result<(), ExecError> {
        let parent = match target.trim_end_matches('/').rsplit_once('/') {
            Some((p, _)) if !p.is_empty() => p.to_string(),
            _ => return Ok(()),
        };
        self.ensure_dir(&parent, None)
    }

    fn ensure_dir(
        &mut self,
        dir: &str,
        source: Option<(&Path, &std::fs::Metadata)>,
    ) -> Result<(), ExecError> {
        let clean = clean_path(dir);
        let mut sofar = String::new();
        let parts: Vec<&str> = clean.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            sofar.push('/');
            sofar.push_str(part);
            if self.created.contains(&sofar) {
                continue;
            }
            let path = self.upper_path(&sofar);
            let is_target = i + 1 == parts.len();
            let base_meta = self.env.base.and_then(|b| {
                std::fs::symlink_metadata(b.join(sofar.trim_start_matches('/'))).ok()
            });
            if let Some(m) = &base_meta {
                if !m.is_dir() {
                    return Err(ExecError::Failed(format!(
                        "cannot copy to {clean}: {sofar} is not a directory in the image"
                    )));
                }
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ExecError::Failed(format!(
                        "cannot copy to {clean}: {sofar} is not a directory"
                    )))
                }
                Err(_) => std::fs::create_dir(&path).map_err(|e| ExecError::io(&path, e))?,
            }
            self.created.insert(sofar.clone());
            let (mode, owner, times) = match (is_target, source, &base_meta) {
                (true, Some((_, m)), _) => {
                    let mode = m.mode() & 0o7777;
                    let mode = self
                        .chmod
                        .as_ref()
                        .map(|c| c.apply(mode, true))
                        .unwrap_or(mode);
                    (
                        mode,
                        self.copier().owner_for(m),
                        Some((m.mtime(), m.mtime_nsec())),
                    )
                }
                (_, _, Some(b)) => (
                    b.mode() & 0o7777,
                    (b.uid(), b.gid()),
                    Some((b.mtime(), b.mtime_nsec())),
                ),
                _ => (0o755, self.owner.unwrap_or((0, 0)), None),
            };
            self.dirs_to_finish.push((path, mode, owner, times));
        }
        Ok(())
    }

    /// Copies one entry (not following a symlink) to `target` in the layer.
    fn copy_entry(&mut self, host: &Path, target: &str) -> Result<(), ExecError> {
        let meta = std::fs::symlink_metadata(host).map_err(|e| ExecError::io(host, e))?;
        self.wrote = true;
        if meta.is_dir() {
            return self.ensure_dir(target, Some((host, &meta)));
        }
        self.copier().copy_non_dir(host, target, &meta)
    }

    /// What copying files needs, shareable between threads.
    fn copier(&self) -> FileCopier<'_> {
        FileCopier {
            upper: self.env.upper,
            owner: self.owner,
            chmod: self.chmod.as_ref(),
            preserve_owner: self.preserve_owner,
        }
    }

    fn finish_dirs(&mut self) -> Result<(), ExecError> {
        // Deepest first, so setting a child's times does not disturb its parent's.
        let mut dirs = std::mem::take(&mut self.dirs_to_finish);
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode, owner, times) in dirs {
            finish_entry(&path, mode, owner, times)?;
        }
        Ok(())
    }
}

/// Sets owner, mode and times of a written entry (owner first: chown clears set-id bits).
fn finish_entry(
    path: &Path,
    mode: u32,
    owner: (u32, u32),
    times: Option<(i64, i64)>,
) -> Result<(), ExecError> {
    nix::unistd::chown(
        path,
        Some(Uid::from_raw(owner.0)),
        Some(Gid::from_raw(owner.1)),
    )
    .map_err(|e| ExecError::io(path, e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ExecError::io(path, e))?;
    set_times(path, times, true)
}

/// Copies non-directory entries into the layer; `Sync`, so a directory's files are copied
/// in parallel.
struct FileCopier<'a> {
    upper: &'a Path,
    owner: Option<(u32, u32)>,
    chmod: Option<&'a Chmod>,
    preserve_owner: bool,
}

impl FileCopier<'_> {
    fn owner_for(&self, m: &std::fs::Metadata) -> (u32, u32) {
        match self.owner {
            Some(o) => o,
            None if self.preserve_owner => (m.uid(), m.gid()),
            None => (0, 0),
        }
    }

    /// Copies a file, symlink, device or fifo `host` (metadata `meta`, not followed) to
    /// `target`, replacing what is there.
    fn copy_non_dir(
        &self,
        host: &Path,
        target: &str,
        meta: &std::fs::Metadata,
    ) -> Result<(), ExecError> {
        let path = self.upper.join(target.trim_start_matches('/'));
        let owner = self.owner_for(meta);
        let times = Some((meta.mtime(), meta.mtime_nsec()));
        let ft = meta.file_type();
        if let Ok(existing) = std::fs::symlink_metadata(&path) {
            if existing.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|e| ExecError::io(&path, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| ExecError::io(&path, e))?;
            }
        }
        if ft.is_symlink() {
            let link = std::fs::read_link(host).map_err(|e| ExecError::io(host, e))?;
            std::os::unix::fs::symlink(&link, &path).map_err(|e| ExecError::io(&path, e))?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                Some(Uid::from_raw(owner.0)),
                Some(Gid::from_raw(owner.1)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ExecError::io(&path, e.into()))?;
            return set_times(&path, times, false);
        }
        let mode = meta.mode() & 0o7777;
        let mode = self.chmod.map(|c| c.apply(mode, false)).unwrap_or(mode);
        if ft.is_file() {
            std::fs::copy(host, &path).map_err(|e| ExecError::io(&path, e))?;
        } else {
            let kind = if ft.is_char_device_like() {
                SFlag::S_IFCHR
            } else if ft.is_block_device_like() {
                SFlag::S_IFBLK
            } else if ft.is_fifo_like() {
                SFlag::S_IFIFO
            } else {
                return Err(ExecError::Failed(format!(
                    "cannot copy {}: sockets are not copied",
                    host.display()
                )));
            };
            mknod(&path, kind, Mode::from_bits_truncate(mode), meta.rdev())
                .map_err(|e| ExecError::io(&path, e.into()))?;
        }
        finish_entry(&path, mode, owner, times)
    }
}

fn set_times(path: &Path, times: Option<(i64, i64)>, follow: bool) -> Result<(), ExecError> {
    let Some((s, ns)) = times else { return Ok(()) };
    let ts = TimeSpec::new(s, ns);
    let flag = if follow {
        nix::sys::stat::UtimensatFlags::FollowSymlink
    } else {
        nix::sys::stat::UtimensatFlags::NoFollowSymlink
    };
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &ts, &ts, flag)
        .map_err(|e| ExecError::io(path, e.into()))
}

/// File-type checks for special files (std's `FileTypeExt` names, in one place).
trait SpecialFileType {
    fn is_char_device_like(&self) -> bool;
    fn is_block_device_like(&self) -> bool;
    fn is_fifo_like(&self) -> bool;
}

impl SpecialFileType for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_char_device(self)
    }
    fn is_block_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_block_device(self)
    }
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_modes() {
        assert_eq!(apply_symbolic("u+x", 0o644, false), 0o744);
        assert_eq!(apply_symbolic("a-w", 0o666, false), 0o444);
        assert_eq!(apply_symbolic("u=rwx,g=rx,o=", 0o644, false), 0o750);
        assert_eq!(apply_symbolic("go+rX", 0o700, true), 0o755);
        assert_eq!(apply_symbolic("go+rX", 0o600, false), 0o644);
        assert_eq!(apply_symbolic("+x", 0o644, false), 0o755);
    }

    #[test]
    fn parents_pivot() {
        assert_eq!(parents_rel("a/b/c.txt", ""), "a/b/c.txt");
        assert_eq!(parents_rel("src/pkg/x.go", "src"), "pkg/x.go");
    }
}
