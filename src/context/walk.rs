//! Reading the context directory: path cleaning, symlink resolution scoped to the root,
//! COPY/ADD source patterns, and the parallel walker that applies the ignore rules.
//!
//! **Symlinks.** The walker never follows a symlink it meets: it is an entry of its own.
//! Symlinks met while *resolving a path* (COPY sources, the directory a walk starts from) are
//! followed component by component inside the root, as BuildKit's scoped root
//! (`continuity/fs.RootPath`) does: an absolute target is taken relative to the root, and `..`
//! never climbs above it. A link to `/etc` therefore means `<root>/etc`, and a link to
//! `../../..` means the root itself; nothing outside the context is ever read.
//!
//! **Ignore rules along a path.** What a COPY can see is what the context would send: every
//! component of the resolved path must be present, including a symlink that was followed
//! (the link itself must not be excluded) and the real path it led to. An excluded directory
//! counts as present when an exception could re-include something under it; it is then
//! reported only if something under it really is re-included.
//!
//! **Order.** Entries come sorted component by component (byte order of names), which is a
//! depth-first walk with sorted directories: parents come before their children.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dockerignore::{IgnoreMatcher, MatchState};
use super::glob;
use super::{ContextEntry, ContextError, EntryKind, Result};

/// Linux gives up after 40 symlinks in one lookup; so do we.
const MAX_SYMLINKS: usize = 40;

/// Go's `path.Clean`: the shortest equivalent path, processing `.`, `..` and repeated `/`
/// lexically. `..` at the start of a relative path is kept; at the root it is dropped.
pub(crate) fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            _ => out.push(part),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Cleans a path as a location inside the context: relative, never above the root (`../x` is
/// `x`, as Docker cleans COPY sources). The root itself is `"."`.
pub(crate) fn clean_in_root(p: &str) -> String {
    let c = clean(&format!("/{p}"));
    match c.trim_start_matches('/') {
        "" => ".".to_string(),
        s => s.to_string(),
    }
}

/// `parent/name`, where the root (`"."` or `""`) has no prefix.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "." {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Compares relative paths component by component, the root (`"."`) first: the order of a
/// depth-first walk over sorted directories.
pub(crate) fn cmp_rel(a: &str, b: &str) -> Ordering {
    match (a == ".", b == ".") {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a
            .split('/')
            .map(str::as_bytes)
            .cmp(b.split('/').map(str::as_bytes)),
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> ContextError {
    tracing::debug!(path = %path.display(), error = %source, "build context: {op} failed");
    ContextError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `lstat`, with "does not exist" (or a non-directory in the middle) as `None`.
fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(io_err("stat", path, e)),
    }
}

/// Builds an entry from `lstat` data; `None` for sockets, FIFOs and devices, which a build
/// context does not carry.
pub(crate) fn make_entry(
    rel: String,
    path: PathBuf,
    meta: &Metadata,
) -> Result<Option<ContextEntry>> {
    let ft = meta.file_type();
    let (kind, size) = if ft.is_dir() {
        (EntryKind::Dir, 0)
    } else if ft.is_file() {
        (EntryKind::File, meta.len())
    } else if ft.is_symlink() {
        let target = fs::read_link(&path).map_err(|e| io_err("read symlink", &path, e))?;
        (EntryKind::Symlink(target), meta.len())
    } else {
        tracing::debug!(path = %path.display(), "build context: skipping a special file");
        return Ok(None);
    };
    Ok(Some(ContextEntry {
        rel,
        path,
        kind,
        mode: meta.permissions().mode() & 0o7777,
        size,
        mtime: meta.mtime(),
        stat: super::EntryStat::of(meta),
    }))
}

/// The outcome of looking a path up inside the root.
pub(crate) enum Lookup {
    /// It exists (and, when ignore rules were applied, the context would send it).
    Found {
        /// The real location, relative to the root, symlinks resolved (`"."` for the root).
        real: String,
        meta: Metadata,
    },
    /// Some component does not exist (or is not a directory where one is needed).
    Missing,
    /// It exists, but the ignore rules keep it (or a component on the way) out.
    Ignored,
}

/// The directory and rules the walker works with.
pub(crate) struct Tree<'a> {
    pub(crate) root: &'a Path,
    pub(crate) ignore: &'a IgnoreMatcher,
}

/// Walk parameters of one directory, handed to its children.
struct DirCtx<'a> {
    /// Host path of the directory.
    abs: &'a Path,
    /// Path relative to the walk's top (for the `excludes` matcher): `""` at the top.
    sub: &'a str,
    ignore_state: &'a MatchState,
    exclude_state: &'a MatchState,
    /// Whether the directory itself is excluded (a read error inside it is then ignored).
    excluded: bool,
}

/// The walk's fixed parameters.
struct WalkCtx<'a> {
    tree: &'a Tree<'a>,
    excludes: Option<&'a IgnoreMatcher>,
    /// How the walk's top is named in the output (`rel` as the caller gave it, cleaned).
    top_out: &'a str,
    /// The top's real location relative to the root (for the ignore rules).
    top_real: &'a str,
}

impl Tree<'_> {
    /// Whether the context would send `real` (relative, symlinks resolved), given its type.
    /// A directory that is excluded counts when an exception may re-include something below.
    fn present(&self, real: &str, is_dir: bool) -> bool {
        if self.ignore.is_empty() || real == "." {
            return true;
        }
        let excluded = self.ignore.state_of(real).excluded;
        !excluded || (is_dir && self.ignore.may_include_below(real))
    }

    /// Resolves `rel` inside the root. Symlinks in every component but the last are followed
    /// (the last too with `follow_final`), scoped to the root. With `apply_ignore`, every
    /// component met must be present in the context, else [`Lookup::Ignored`].
    pub(crate) fn lookup(
        &self,
        rel: &str,
        follow_final: bool,
        apply_ignore: bool,
    ) -> Result<Lookup> {
        let cleaned = clean_in_root(rel);
        let mut queue: VecDeque<String> = if cleaned == "." {
            VecDeque::new()
        } else {
            cleaned.split('/').map(str::to_string).collect()
        };
        let mut stack: Vec<String> = Vec::new();
        let mut follows = 0;
        while let Some(component) = queue.pop_front() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            stack.push(component);
            let real = stack.join("/");
            let abs = self.root.join(&real);
            let Some(meta) = lstat(&abs)? else {
                return Ok(Lookup::Missing);
            };
            let last = queue.is_empty();
            if meta.file_type().is_symlink() && (!last || follow_final) {
                if apply_ignore && !self.present(&real, false) {
                    return Ok(Lookup::Ignored);
                }
                follows += 1;
                if follows > MAX_SYMLINKS {
                    return Err(ContextError::SymlinkLoop {
                        rel: rel.to_string(),
                    });
                }
                let target = fs::read_link(&abs).map_err(|e| io_err("read symlink", &abs, e))?;
                stack.pop();
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    stack.clear();
                }
                for part in target.split('/').rev() {
                    queue.push_front(part.to_string());
                }
                continue;
            }
            if !last && !meta.is_dir() {
                return Ok(Lookup::Missing);
            }
            if apply_ignore && !self.present(&real, meta.is_dir()) {
                return Ok(Lookup::Ignored);
            }
        }
        let real = if stack.is_empty() {
            ".".to_string()
        } else {
            stack.join("/")
        };
        let abs = self.root.join(&real);
        match lstat(&abs)? {
            Some(meta) => Ok(Lookup::Found { real, meta }),
            None => Ok(Lookup::Missing),
        }
    }

    /// COPY/ADD source resolution: see [`BuildContext::resolve`](super::BuildContext::resolve).
    ///
    /// As in BuildKit, the components before the first wildcard are resolved as a path
    /// (symlinks followed, scoped); from the first wildcard on, names are matched in real
    /// directories only (a symlink to a directory is not descended into there).
    pub(crate) fn resolve(&self, pattern: &str) -> Result<Vec<ContextEntry>> {
        let cleaned = clean_in_root(pattern);
        let segments: Vec<&str> = if cleaned == "." {
            Vec::new()
        } else {
            cleaned.split('/').collect()
        };
        let Some(first_wild) = segments.iter().position(|s| glob::contains_wildcards(s)) else {
            return match self.lookup(&cleaned, false, true)? {
                Lookup::Found { real, meta } => Ok(self
                    .final_entry(cleaned, &real, &meta)?
                    .into_iter()
                    .collect()),
                Lookup::Missing | Lookup::Ignored => Ok(Vec::new()),
            };
        };
        let prefix = if first_wild == 0 {
            ".".to_string()
        } else {
            segments[..first_wild].join("/")
        };
        let (base_real, base_meta) = match self.lookup(&prefix, true, true)? {
            Lookup::Found { real, meta } => (real, meta),
            Lookup::Missing | Lookup::Ignored => return Ok(Vec::new()),
        };
        if !base_meta.is_dir() {
            return Ok(Vec::new());
        }
        // (name as reached, real location, metadata)
        let mut candidates: Vec<(String, String, Metadata)> = vec![(prefix, base_real, base_meta)];
        let tail = &segments[first_wild..];
        for (i, segment) in tail.iter().enumerate() {
            let last = i + 1 == tail.len();
            let tokens =
                glob::compile_match(segment).map_err(|reason| ContextError::BadSourcePattern {
                    pattern: pattern.to_string(),
                    reason,
                })?;
            let mut next = Vec::new();
            for (out, real, _) in &candidates {
                let dir = self.root.join(real);
                let names: Vec<String> = if glob::is_plain(segment) {
                    vec![segment.to_string()]
                } else {
                    let mut names = Vec::new();
                    let rd = match fs::read_dir(&dir) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("read directory", &dir, e)),
                    };
                    for item in rd {
                        let item = item.map_err(|e| io_err("read directory", &dir, e))?;
                        let name = item.file_name().to_string_lossy().into_owned();
                        if glob::matches(&tokens, &name) {
                            names.push(name);
                        }
                    }
                    names
                };
                for name in names {
                    let child_real = join(real, &name);
                    let Some(meta) = lstat(&self.root.join(&child_real))? else {
                        continue;
                    };
                    if !last && !meta.is_dir() {
                        continue;
                    }
                    if !self.present(&child_real, meta.is_dir()) {
                        continue;
                    }
                    next.push((join(out, &name), child_real, meta));
                }
            }
            candidates = next;
        }
        let mut out = Vec::with_capacity(candidates.len());
        for (rel, real, meta) in candidates {
            out.extend(self.final_entry(rel, &real, &meta)?);
        }
        out.sort_by(|a, b| cmp_rel(&a.rel, &b.rel));
        out.dedup_by(|a, b| a.rel == b.rel);
        Ok(out)
    }

    /// The entry for a resolved source: an excluded directory counts only if something below
    /// it is re-included.
    fn final_entry(
        &self,
        rel: String,
        real: &str,
        meta: &Metadata,
    ) -> Result<Option<ContextEntry>> {
        let abs = self.root.join(real);
        let state = self.ignore.state_of(real);
        if meta.is_dir() && state.excluded {
            let walk = WalkCtx {
                tree: self,
                excludes: None,
                top_out: &rel,
                top_real: real,
            };
            let dir = DirCtx {
                abs: &abs,
                sub: "",
                ignore_state: &state,
                exclude_state: &MatchState::default(),
                excluded: true,
            };
            if walk.walk_dir(&dir)?.is_empty() {
                return Ok(None);
            }
        }
        make_entry(rel, abs, meta)
    }

    /// See [`BuildContext::walk`](super::BuildContext::walk).
    pub(crate) fn walk(
        &self,
        rel: &str,
        excludes: Option<&IgnoreMatcher>,
    ) -> Result<Vec<ContextEntry>> {
        let top_out = clean_in_root(rel);
        let (real, meta) = match self.lookup(&top_out, true, true)? {
            Lookup::Found { real, meta } => (real, meta),
            Lookup::Ignored => return Ok(Vec::new()),
            Lookup::Missing => {
                return Err(ContextError::NotFound {
                    rel: rel.to_string(),
                })
            }
        };
        let abs = self.root.join(&real);
        let Some(top) = make_entry(top_out.clone(), abs.clone(), &meta)? else {
            return Ok(Vec::new());
        };
        if !meta.is_dir() {
            return Ok(vec![top]);
        }
        let ignore_state = self.ignore.state_of(&real);
        let excludes = excludes.filter(|m| !m.is_empty());
        let walk = WalkCtx {
            tree: self,
            excludes,
            top_out: &top_out,
            top_real: &real,
        };
        let dir = DirCtx {
            abs: &abs,
            sub: "",
            ignore_state: &ignore_state,
            exclude_state: &MatchState::default(),
            excluded: ignore_state.excluded,
        };
        let children = walk.walk_dir(&dir)?;
        if ignore_state.excluded && children.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(children.len() + 1);
        out.push(top);
        out.extend(children);
        Ok(out)
    }
}

impl WalkCtx<'_> {
    /// The entries below one directory, in order. Subdirectories are walked in parallel.
    fn walk_dir(&self, dir: &DirCtx<'_>) -> Result<Vec<ContextEntry>> {
        let rd = match fs::read_dir(dir.abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            // fsutil: an unreadable directory that is excluded anyway is not an error.
            Err(e) if dir.excluded && e.kind() == io::ErrorKind::PermissionDenied => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(io_err("read directory", dir.abs, e)),
        };
        let mut names = Vec::new();
        for item in rd {
            let item = item.map_err(|e| io_err("read directory", dir.abs, e))?;
            names.push(item.file_name());
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let parts = names
            .par_iter()
            .map(|name| self.visit(dir, name))
            .collect::<Result<Vec<Vec<ContextEntry>>>>()?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// One directory entry: itself (unless excluded) and, for a directory, what is below it.
    fn visit(&self, dir: &DirCtx<'_>, name: &std::ffi::OsStr) -> Result<Vec<ContextEntry>> {
        let name_str = name.to_string_lossy();
        let sub = join(dir.sub, &name_str);
        let abs = dir.abs.join(name);
        let Some(meta) = lstat(&abs)? else {
            return Ok(Vec::new());
        };
        let real = join(self.top_real, &sub);
        let ignore = &self.tree.ignore;
        let ignore_state = ignore.step(&real, dir.ignore_state);
        let exclude_state = match self.excludes {
            Some(m) => m.step(&sub, dir.exclude_state),
            None => MatchState::default(),
        };
        let excluded = ignore_state.excluded || exclude_state.excluded;
        let out_rel = join(self.top_out, &sub);
        if !meta.is_dir() {
            if excluded {
                return Ok(Vec::new());
            }
            return Ok(make_entry(out_rel, abs, &meta)?.into_iter().collect());
        }
        // An excluded directory is entered only if an exception could bring something back.
        if ignore_state.excluded && !ignore.may_include_below(&real) {
            return Ok(Vec::new());
        }
        if exclude_state.excluded && !self.excludes.is_some_and(|m| m.may_include_below(&sub)) {
            return Ok(Vec::new());
        }
        let child = DirCtx {
            abs: &abs,
            sub: &sub,
            ignore_state: &ignore_state,
            exclude_state: &exclude_state,
            excluded,
        };
        let below = self.walk_dir(&child)?;
        if excluded && below.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(below.len() + 1);
        out.extend(make_entry(out_rel, abs, &meta)?);
        out.extend(below);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_clean() {
        let cases = [
            ("", "."),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            ("a/b/c", "a/b/c"),
            (".", "."),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("/", "/"),
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("/abc/", "/abc"),
            ("abc//def//ghi", "abc/def/ghi"),
            ("//abc", "/abc"),
            ("abc//", "abc"),
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("/abc/def/../..", "/"),
            ("abc/def/../../..", ".."),
            ("/abc/def/../../..", "/"),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "Clean({input:?})");
        }
        assert_eq!(clean_in_root("../x"), "x");
        assert_eq!(clean_in_root("a/../../b/"), "b");
        assert_eq!(clean_in_root("/"), ".");
        assert_eq!(clean_in_root(".."), ".");
    }

    #[test]
    fn ordering_is_depth_first() {
        let mut v = vec!["a.txt", "a/b", "a", ".", "a-b", "a/b/c", "b"];
        v.sort_by(|a, b| cmp_rel(a, b));
        assert_eq!(v, [".", "a", "a/b", "a/b/c", "a-b", "a.txt", "b"]);
    }
}
