//! The build context: the files a build may COPY/ADD, filtered by `.dockerignore`.
//!
//! A [`BuildContext`] is opened from a directory or from a tar stream (`docker build -`), with
//! the ignore rules of [`dockerignore`]. It then answers the three questions a build asks:
//! - [`BuildContext::resolve`]: which entries does a COPY/ADD source pattern name?
//! - [`BuildContext::walk`]: what is under a source directory (minus `COPY --exclude`)?
//! - [`BuildContext::digest_of`]: what is the content digest of those entries (for the
//!   COPY cache key)?
//!
//! Nothing is read eagerly: opening a directory reads only the ignore file, walking only
//! `lstat`s, and only the files passed to `digest_of` are read. Walking and hashing run in
//! parallel (rayon), so contexts of 100k files stay fast.
//!
//! Submodules: [`dockerignore`] (patterns and their matching), `walk` (paths, symlink
//! resolution scoped to the root, the walker), `hash` ([`FileHasher`] and the digest format),
//! `archive` (unpacking a context stream), `glob` (Go's `filepath.Match` and `**`).

mod archive;
pub mod dockerignore;
mod glob;
mod hash;
pub mod hashcache;
mod walk;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use crate::cache::digest::Digest;

pub use dockerignore::{ignore_file_for, IgnoreMatcher, PatternOrigin};
pub use hash::{FileHasher, PlainFileHasher};

/// Go's `filepath.Match` for one path segment (COPY sources in a stage's filesystem use the
/// same rules as in the context). A malformed pattern matches nothing.
pub fn match_segment(pattern: &str, name: &str) -> bool {
    glob::compile_match(pattern)
        .map(|tokens| glob::matches(&tokens, name))
        .unwrap_or(false)
}

/// Whether a source pattern has wildcards (`*`, `?`, `[`) that are not escaped.
pub fn has_wildcards(pattern: &str) -> bool {
    glob::contains_wildcards(pattern)
}

use walk::{Lookup, Tree};

/// Errors of the build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A filesystem operation failed.
    #[error("build context: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read directory", "stat", "hash", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A pattern of an ignore file or exclude list is malformed.
    #[error("invalid pattern {pattern:?} ({origin} {line}): {reason}")]
    BadPattern {
        origin: PatternOrigin,
        /// 1-based line of the ignore file, or position in the list.
        line: usize,
        pattern: String,
        reason: String,
    },
    /// A COPY/ADD source pattern is malformed.
    #[error("invalid source pattern {pattern:?}: {reason}")]
    BadSourcePattern { pattern: String, reason: String },
    /// The context path is not a directory.
    #[error("build context {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// A path that must exist does not.
    #[error("{rel:?} does not exist in the build context")]
    NotFound { rel: String },
    /// Too many symlinks while resolving a path.
    #[error("too many levels of symbolic links resolving {rel:?} in the build context")]
    SymlinkLoop { rel: String },
    /// The context stream (`-`) could not be read or unpacked.
    #[error("build context from stdin: {what}: {source}")]
    Archive {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// `Result` with [`ContextError`].
pub type Result<T, E = ContextError> = std::result::Result<T, E>;

/// Where the context comes from.
pub enum ContextSource {
    /// A directory on this machine.
    Dir(PathBuf),
    /// `-`: a stream, normally stdin. A tar (plain, gzip, bzip2, xz or zstd) is unpacked to a
    /// temporary directory; anything else is taken as a Dockerfile and becomes a context that
    /// holds only `Dockerfile`, as `docker build - < Dockerfile` does.
    Tar(Box<dyn Read + Send>),
}

impl fmt::Debug for ContextSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextSource::Dir(p) => f.debug_tuple("Dir").field(p).finish(),
            ContextSource::Tar(_) => f.write_str("Tar(..)"),
        }
    }
}

/// The type of an entry; a symlink carries its target (never followed by the walker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
}

/// One file, directory or symlink of the context. Sockets, FIFOs and device nodes are not
/// part of a context and never appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// '/'-separated path relative to the root, as the entry was reached: the walked or
    /// matched path as written (cleaned) plus the names below it; `"."` is the root. A name
    /// that is not UTF-8 appears lossily here; `path` is exact.
    pub rel: String,
    /// Where the entry is on the host (symlinks on the way resolved inside the root).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Bytes for a file, the target's length for a symlink, 0 for a directory.
    pub size: u64,
    /// Modification time, seconds since the epoch (informational: never part of a digest).
    pub mtime: i64,
    /// The rest of the same `lstat`, for the hash index (`hashcache`): no second `stat`.
    pub(crate) stat: EntryStat,
}

/// Identity and exact times of an entry, as `lstat` reported them during the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EntryStat {
    pub ino: u64,
    pub dev: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl EntryStat {
    pub(crate) fn of(m: &std::fs::Metadata) -> EntryStat {
        use std::os::unix::fs::MetadataExt;
        EntryStat {
            ino: m.ino(),
            dev: m.dev(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// An opened build context: a root directory and the ignore rules that filter it.
pub struct BuildContext {
    root: PathBuf,
    ignore: IgnoreMatcher,
    hasher: Arc<dyn FileHasher>,
    /// Keeps an unpacked stream alive (removed on drop).
    _unpacked: Option<TempDir>,
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("root", &self.root)
            .field("ignore", &self.ignore.patterns())
            .finish_non_exhaustive()
    }
}

impl BuildContext {
    /// Opens a context. `ignore_text` is the content of the ignore file to apply (find it with
    /// [`ignore_file_for`]); `None` means "use `.dockerignore` at the root of the context if
    /// there is one", which is also how a tar stream's own `.dockerignore` is picked up.
    pub fn open(source: ContextSource, ignore_text: Option<&str>) -> Result<BuildContext> {
        let (root, unpacked) = match source {
            ContextSource::Dir(dir) => {
                let root = std::fs::canonicalize(&dir).map_err(|source| ContextError::Io {
                    op: "open",
                    path: dir.clone(),
                    source,
                })?;
                if !root.is_dir() {
                    return Err(ContextError::NotADirectory { path: dir });
                }
                (root, None)
            }
            ContextSource::Tar(reader) => {
                let tmp = archive::unpack(reader)?;
                let root =
                    std::fs::canonicalize(tmp.path()).map_err(|source| ContextError::Io {
                        op: "open",
                        path: tmp.path().to_path_buf(),
                        source,
                    })?;
                (root, Some(tmp))
            }
        };
        let mut ctx = BuildContext {
            root,
            ignore: IgnoreMatcher::empty(),
            hasher: Arc::new(PlainFileHasher),
            _unpacked: unpacked,
        };
        ctx.ignore = match ignore_text {
            Some(text) => IgnoreMatcher::parse(text)?,
            None => match ctx.read_build_file(".dockerignore") {
                Ok(bytes) => IgnoreMatcher::parse(&String::from_utf8_lossy(&bytes))?,
                Err(ContextError::NotFound { .. }) => IgnoreMatcher::empty(),
                Err(e) => return Err(e),
            },
        };
        tracing::debug!(root = %ctx.root.display(), patterns = ctx.ignore.patterns().len(), "opened build context");
        Ok(ctx)
    }

    /// Replaces the ignore rules (e.g. with a `Dockerfile.dockerignore` found inside a tar).
    pub fn with_ignore(mut self, ignore: IgnoreMatcher) -> BuildContext {
        self.ignore = ignore;
        self
    }

    /// Replaces how file contents are hashed (e.g. with a persistent cache).
    pub fn with_hasher(mut self, hasher: Arc<dyn FileHasher>) -> BuildContext {
        self.hasher = hasher;
        self
    }

    /// The context directory (canonical; for a stream, the temporary directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore rules in force.
    pub fn ignore(&self) -> &IgnoreMatcher {
        &self.ignore
    }

    fn tree(&self) -> Tree<'_> {
        Tree {
            root: &self.root,
            ignore: &self.ignore,
        }
    }

    /// Resolves a COPY/ADD source pattern to the entries it names that the ignore rules let
    /// through, sorted (parents before children). No match is `Ok(vec![])`: the caller
    /// reports it.
    ///
    /// The pattern is cleaned and can never leave the root (`../x` is `x`, as Docker cleans
    /// it; `.` and `/` are the root). Each component may hold Go `filepath.Match` wildcards
    /// (`*`, `?`, `[...]`, `\` escapes). Symlinks met before the first wildcard are followed
    /// inside the root (an absolute target is taken relative to the root, `..` stops at the
    /// root); from the first wildcard on, only real directories are searched, as BuildKit
    /// does. A matched symlink is returned as a symlink, not followed: COPY follows a source
    /// symlink itself, with [`BuildContext::walk`] or [`BuildContext::host_path`]. As in
    /// BuildKit, a component without wildcards is taken literally (a `\` in it stays a `\`).
    pub fn resolve(&self, pattern: &str) -> Result<Vec<ContextEntry>> {
        self.tree().resolve(pattern)
    }

    /// Everything the ignore rules let through at and below `rel`, in order (parents before
    /// children). The first entry is `rel` itself: `rel` is resolved like a COPY source named
    /// directly, so a symlink there (and on the way) is followed inside the root, and the
    /// entry describes what it points at while keeping the name `rel`. Below it, symlinks are
    /// entries and are not followed. For a non-directory the result is that one entry.
    ///
    /// `excludes` (`COPY --exclude`) is matched against paths relative to `rel`, with the same
    /// semantics as `.dockerignore`; it does not apply to `rel` itself. A `rel` that does not
    /// exist is [`ContextError::NotFound`]; one that is ignored gives an empty list.
    pub fn walk(&self, rel: &str, excludes: Option<&IgnoreMatcher>) -> Result<Vec<ContextEntry>> {
        self.tree().walk(rel, excludes)
    }

    /// The content digest of `entries` (typically the output of [`BuildContext::walk`]): a
    /// hash over each entry's relative path, type, permission bits, symlink target and file
    /// content digest, in path order, never over mtime or owners. Exactly the given entries
    /// are covered (a directory entry does not pull in its children) and only their files are
    /// read, in parallel.
    pub fn digest_of(&self, entries: &[ContextEntry]) -> Result<Digest> {
        hash::digest_entries(self.hasher.as_ref(), entries)
    }

    /// The host path of `rel`, resolved inside the root (symlinks on the way followed, the
    /// final one too with `follow`). It does not apply the ignore rules: use `resolve` or
    /// `walk` for what COPY may see.
    pub fn host_path(&self, rel: &str, follow: bool) -> Result<PathBuf> {
        match self.tree().lookup(rel, follow, false)? {
            Lookup::Found { real, .. } => Ok(self.root.join(real)),
            Lookup::Missing | Lookup::Ignored => Err(ContextError::NotFound {
                rel: rel.to_string(),
            }),
        }
    }

    /// Reads a file of the context regardless of the ignore rules, for the files the build
    /// itself needs: the Dockerfile and the ignore file are always available to the build
    /// even when `.dockerignore` lists them (Docker: "these files are still sent ... but you
    /// can't copy the files into the image").
    pub fn read_build_file(&self, rel: &str) -> Result<Vec<u8>> {
        let path = self.host_path(rel, true)?;
        std::fs::read(&path).map_err(|source| ContextError::Io {
            op: "read",
            path,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Cursor, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Builds a directory tree: `dir/` is a directory, `a -> b` a symlink, anything else a
    /// file whose content is its own name.
    fn tree(spec: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for item in spec {
            let root = dir.path();
            if let Some((link, target)) = item.split_once(" -> ") {
                let p = root.join(link);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                symlink(target, p).unwrap();
            } else if let Some(d) = item.strip_suffix('/') {
                fs::create_dir_all(root.join(d)).unwrap();
            } else {
                let p = root.join(item);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, item).unwrap();
            }
        }
        dir
    }

    fn open(dir: &tempfile::TempDir, ignore: &str) -> BuildContext {
        BuildContext::open(ContextSource::Dir(dir.path().to_path_buf()), Some(ignore)).unwrap()
    }

    fn rels(entries: &[ContextEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.rel.as_str()).collect()
    }

    fn resolved(ctx: &BuildContext, pattern: &str) -> Vec<String> {
        ctx.resolve(pattern)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect()
    }

    #[test]
    fn resolve_wildcards_and_cleaning() {
        let dir = tree(&[
            "a.txt",
            "b.txt",
            "c.md",
            ".hidden.txt",
            "dir/x.txt",
            "dir/sub/y.txt",
            "dir/sub2/y.txt",
            "empty/",
        ]);
        let ctx = open(&dir, "");
        assert_eq!(resolved(&ctx, "*.txt"), [".hidden.txt", "a.txt", "b.txt"]);
        assert_eq!(resolved(&ctx, "[ab].txt"), ["a.txt", "b.txt"]);
        assert_eq!(resolved(&ctx, "?.md"), ["c.md"]);
        assert_eq!(
            resolved(&ctx, "dir/*/y.txt"),
            ["dir/sub/y.txt", "dir/sub2/y.txt"]
        );
        assert_eq!(resolved(&ctx, "*/sub*"), ["dir/sub", "dir/sub2"]);
        assert_eq!(
            resolved(&ctx, "d?r/*"),
            ["dir/sub", "dir/sub2", "dir/x.txt"]
        );
        assert_eq!(resolved(&ctx, "../a.txt"), ["a.txt"]);
        assert_eq!(resolved(&ctx, "dir/../../../b.txt"), ["b.txt"]);
        assert_eq!(resolved(&ctx, "/dir//x.txt"), ["dir/x.txt"]);
        assert_eq!(resolved(&ctx, "./dir/"), ["dir"]);
        assert!(resolved(&ctx, "nope*").is_empty());
        assert!(resolved(&ctx, "nope.txt").is_empty());
        assert!(resolved(&ctx, "a.txt/x").is_empty());
        assert!(resolved(&ctx, "empty/*").is_empty());
        assert!(matches!(
            ctx.resolve("dir/[a-"),
            Err(ContextError::BadSourcePattern { .. })
        ));

        let root = ctx.resolve(".").unwrap();
        assert_eq!(
            (root.len(), root[0].rel.as_str(), &root[0].kind),
            (1, ".", &EntryKind::Dir)
        );
        assert_eq!(root[0].path, ctx.root());
        let a = &ctx.resolve("a.txt").unwrap()[0];
        assert_eq!(
            (&a.kind, a.size, a.path.clone()),
            (&EntryKind::File, 5, ctx.root().join("a.txt"))
        );
    }

    #[test]
    fn resolve_filters_ignored() {
        let dir = tree(&[
            "a.txt",
            "c.md",
            "dir/x.txt",
            "dir/sub/y.txt",
            "docs/README.md",
            "docs/other.md",
        ]);
        let ctx = open(&dir, "*.md\ndir/sub\ndocs\n!docs/README.md\n");
        assert_eq!(resolved(&ctx, "*"), ["a.txt", "dir", "docs"]);
        assert!(resolved(&ctx, "c.md").is_empty());
        assert!(resolved(&ctx, "dir/sub/y.txt").is_empty());
        assert!(resolved(&ctx, "dir/sub").is_empty());
        assert_eq!(resolved(&ctx, "dir/*"), ["dir/x.txt"]);
        // `docs` is excluded, but sent as the parent of the re-included README.
        assert_eq!(resolved(&ctx, "docs"), ["docs"]);
        assert_eq!(resolved(&ctx, "docs/*"), ["docs/README.md"]);
        assert!(resolved(&ctx, "docs/other.md").is_empty());
        // An excluded directory whose exception matches nothing that exists is not sent.
        let dir = tree(&["logs/a.log"]);
        let ctx = open(&dir, "logs\n!logs/keep.txt\n");
        assert!(resolved(&ctx, "logs").is_empty());
        assert!(resolved(&ctx, "*").is_empty());
    }

    #[test]
    fn resolve_through_symlinks_stays_in_root() {
        let dir = tree(&[
            "real/f.txt",
            "etc/passwd",
            "link -> real",
            "abs -> /real",
            "up -> ../../../..",
            "etclink -> /etc",
            "dotdot -> real/../real/f.txt",
            "loop1 -> loop2",
            "loop2 -> loop1",
        ]);
        let ctx = open(&dir, "");
        let root = ctx.root().to_path_buf();
        let f = &ctx.resolve("link/f.txt").unwrap()[0];
        assert_eq!(
            (f.rel.as_str(), f.path.clone()),
            ("link/f.txt", root.join("real/f.txt"))
        );
        assert_eq!(
            ctx.resolve("abs/f.txt").unwrap()[0].path,
            root.join("real/f.txt")
        );
        assert_eq!(
            ctx.resolve("up/real/f.txt").unwrap()[0].path,
            root.join("real/f.txt")
        );
        // `/etc` inside the context, never the host's.
        let p = &ctx.resolve("etclink/passwd").unwrap()[0];
        assert_eq!(p.path, root.join("etc/passwd"));
        assert_eq!(fs::read_to_string(&p.path).unwrap(), "etc/passwd");
        // A matched symlink is returned as such.
        let l = &ctx.resolve("link").unwrap()[0];
        assert_eq!(l.kind, EntryKind::Symlink(PathBuf::from("real")));
        assert_eq!(resolved(&ctx, "link/*.txt"), ["link/f.txt"]);
        // After a wildcard, symlinked directories are not searched (BuildKit).
        assert_eq!(resolved(&ctx, "*/f.txt"), ["real/f.txt"]);
        assert!(matches!(
            ctx.resolve("loop1/x"),
            Err(ContextError::SymlinkLoop { .. })
        ));
        assert_eq!(
            ctx.host_path("dotdot", true).unwrap(),
            root.join("real/f.txt")
        );
        assert_eq!(ctx.host_path("up", true).unwrap(), root);
        assert_eq!(ctx.host_path("up", false).unwrap(), root.join("up"));

        // The link and its target must both be sent.
        let ctx = open(&dir, "real\n");
        assert!(resolved(&ctx, "link/f.txt").is_empty());
        let ctx = open(&dir, "link\n");
        assert!(resolved(&ctx, "link/f.txt").is_empty());
        assert_eq!(resolved(&ctx, "real/f.txt"), ["real/f.txt"]);
    }

    #[test]
    fn walk_order_ignore_and_excludes() {
        let dir = tree(&[
            "a.txt",
            "a/b.go",
            "a/c/d.go",
            "a/c/e.txt",
            "a-b",
            "docs/README.md",
            "docs/other.md",
            "node_modules/x/index.js",
            "lnk -> a",
            "Dockerfile",
        ]);
        fs::write(
            dir.path().join(".dockerignore"),
            "node_modules\ndocs\n!docs/README.md\n.dockerignore\nDockerfile\n",
        )
        .unwrap();
        let ctx = BuildContext::open(ContextSource::Dir(dir.path().to_path_buf()), None).unwrap();
        let all = ctx.walk(".", None).unwrap();
        assert_eq!(
            rels(&all),
            [
                ".",
                "a",
                "a/b.go",
                "a/c",
                "a/c/d.go",
                "a/c/e.txt",
                "a-b",
                "a.txt",
                "docs",
                "docs/README.md",
                "lnk"
            ]
        );
        assert_eq!(
            all.iter().find(|e| e.rel == "lnk").map(|e| &e.kind),
            Some(&EntryKind::Symlink("a".into()))
        );
        // Excluded from COPY, but still readable by the build itself.
        assert_eq!(ctx.read_build_file("Dockerfile").unwrap(), b"Dockerfile");
        assert!(ctx.read_build_file(".dockerignore").is_ok());

        // --exclude, relative to the walked directory; `rel` itself is never excluded.
        let ex = IgnoreMatcher::from_patterns(&["**/*.go".to_string()]).unwrap();
        assert_eq!(
            rels(&ctx.walk("a", Some(&ex)).unwrap()),
            ["a", "a/c", "a/c/e.txt"]
        );
        let ex = IgnoreMatcher::from_patterns(&["c".to_string(), "!c/d.go".to_string()]).unwrap();
        assert_eq!(
            rels(&ctx.walk("a", Some(&ex)).unwrap()),
            ["a", "a/b.go", "a/c", "a/c/d.go"]
        );
        let ex = IgnoreMatcher::from_patterns(&["*".to_string()]).unwrap();
        assert_eq!(rels(&ctx.walk("a", Some(&ex)).unwrap()), ["a"]);

        // A symlinked top is followed and keeps its name; what is below is not followed.
        let via_link = ctx.walk("lnk", None).unwrap();
        assert_eq!(
            rels(&via_link),
            ["lnk", "lnk/b.go", "lnk/c", "lnk/c/d.go", "lnk/c/e.txt"]
        );
        assert_eq!(via_link[0].kind, EntryKind::Dir);
        assert_eq!(via_link[1].path, ctx.root().join("a/b.go"));
        // A file, an ignored path, a missing path.
        assert_eq!(rels(&ctx.walk("a/b.go", None).unwrap()), ["a/b.go"]);
        assert!(ctx.walk("node_modules", None).unwrap().is_empty());
        assert!(ctx.walk("docs/other.md", None).unwrap().is_empty());
        assert_eq!(
            rels(&ctx.walk("docs", None).unwrap()),
            ["docs", "docs/README.md"]
        );
        assert!(matches!(
            ctx.walk("missing", None),
            Err(ContextError::NotFound { .. })
        ));
    }

    #[test]
    fn walk_skips_excluded_dirs_without_reading_them() {
        let dir = tree(&["keep.txt", "big/a", "big/b/c"]);
        // Unreadable (except to root): the walk must not even try to list it.
        fs::set_permissions(dir.path().join("big"), fs::Permissions::from_mode(0o000)).unwrap();
        let ctx = open(&dir, "big\n");
        assert_eq!(rels(&ctx.walk(".", None).unwrap()), [".", "keep.txt"]);
        assert!(!ctx.ignore().may_include_below("big"));
        // Excluded but entered (an exception could match inside): unreadable is tolerated.
        // (Root reads it anyway, so this part only bites for other users.)
        let ctx = open(&dir, "big\n!big/a\n");
        if fs::read_dir(dir.path().join("big")).is_err() {
            assert_eq!(rels(&ctx.walk(".", None).unwrap()), [".", "keep.txt"]);
        }
        fs::set_permissions(dir.path().join("big"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            rels(&ctx.walk(".", None).unwrap()),
            [".", "big", "big/a", "keep.txt"]
        );
    }

    fn tar_bytes(gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add =
            |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, link: Option<&str>| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                h.set_mtime(1_600_000_000);
                if let Some(l) = link {
                    h.set_link_name(l).unwrap();
                }
                b.append_data(&mut h, path, data).unwrap();
            };
        add("./", b"", 0o755, tar::EntryType::Directory, None);
        add(
            "Dockerfile",
            b"FROM scratch\nCOPY . /\n",
            0o644,
            tar::EntryType::Regular,
            None,
        );
        add(
            ".dockerignore",
            b"secret\n",
            0o644,
            tar::EntryType::Regular,
            None,
        );
        add("bin/", b"", 0o750, tar::EntryType::Directory, None);
        add(
            "bin/run.sh",
            b"#!/bin/sh\n",
            0o755,
            tar::EntryType::Regular,
            None,
        );
        add("secret", b"hunter2", 0o600, tar::EntryType::Regular, None);
        add(
            "run",
            b"",
            0o777,
            tar::EntryType::Symlink,
            Some("bin/run.sh"),
        );
        let data = b.into_inner().unwrap();
        if !gzip {
            return data;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn tar_context_plain_and_gzip() {
        for gzip in [false, true] {
            let ctx = BuildContext::open(
                ContextSource::Tar(Box::new(Cursor::new(tar_bytes(gzip)))),
                None,
            )
            .unwrap();
            let all = ctx.walk(".", None).unwrap();
            assert_eq!(
                rels(&all),
                [
                    ".",
                    ".dockerignore",
                    "Dockerfile",
                    "bin",
                    "bin/run.sh",
                    "run"
                ],
                "gzip={gzip}"
            );
            let script = all.iter().find(|e| e.rel == "bin/run.sh").unwrap();
            assert_eq!((script.mode, script.mtime), (0o755, 1_600_000_000));
            assert_eq!(all.iter().find(|e| e.rel == "bin").unwrap().mode, 0o750);
            assert_eq!(all[5].kind, EntryKind::Symlink("bin/run.sh".into()));
            assert_eq!(
                ctx.read_build_file("Dockerfile").unwrap(),
                b"FROM scratch\nCOPY . /\n"
            );
            let root = ctx.root().to_path_buf();
            assert!(root.join("secret").exists());
            drop(ctx);
            assert!(
                !root.exists(),
                "the unpacked context is removed with the BuildContext"
            );
        }
    }

    #[test]
    fn stdin_dockerfile_and_hostile_tar() {
        // Not a tar: a Dockerfile, as `docker build - < Dockerfile`.
        let ctx = BuildContext::open(
            ContextSource::Tar(Box::new(Cursor::new(b"FROM alpine\n".to_vec()))),
            None,
        )
        .unwrap();
        assert_eq!(rels(&ctx.walk(".", None).unwrap()), [".", "Dockerfile"]);
        assert_eq!(ctx.read_build_file("Dockerfile").unwrap(), b"FROM alpine\n");

        // Entries that try to leave the directory are not written outside it.
        let mut data = Vec::new();
        for name in ["../escaped-kiln-test", "ok.txt"] {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(2);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            data.extend_from_slice(h.as_bytes());
            data.extend_from_slice(b"hi");
            data.extend_from_slice(&[0u8; 510]);
        }
        data.extend_from_slice(&[0u8; 1024]);
        let ctx =
            BuildContext::open(ContextSource::Tar(Box::new(Cursor::new(data))), None).unwrap();
        assert_eq!(rels(&ctx.walk(".", None).unwrap()), [".", "ok.txt"]);
        assert!(!ctx
            .root()
            .parent()
            .unwrap()
            .join("escaped-kiln-test")
            .exists());

        // Compressed garbage is an error, not a Dockerfile.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"not a tar").unwrap();
        let err = BuildContext::open(
            ContextSource::Tar(Box::new(Cursor::new(gz.finish().unwrap()))),
            None,
        );
        assert!(matches!(err, Err(ContextError::Archive { .. })), "{err:?}");
    }

    #[test]
    fn open_errors() {
        let dir = tree(&["file"]);
        let e =
            BuildContext::open(ContextSource::Dir(dir.path().join("missing")), None).unwrap_err();
        assert!(
            matches!(e, ContextError::Io { .. }) && e.to_string().contains("missing"),
            "{e}"
        );
        let e = BuildContext::open(ContextSource::Dir(dir.path().join("file")), None).unwrap_err();
        assert!(matches!(e, ContextError::NotADirectory { .. }), "{e}");
        fs::write(dir.path().join(".dockerignore"), "ok\n\n!\n").unwrap();
        let e = BuildContext::open(ContextSource::Dir(dir.path().to_path_buf()), None).unwrap_err();
        assert!(matches!(e, ContextError::BadPattern { line: 3, .. }), "{e}");
        // Explicit rules replace the root's file.
        assert!(
            BuildContext::open(ContextSource::Dir(dir.path().to_path_buf()), Some("file")).is_ok()
        );
    }

    fn touch_back(path: &Path) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
    }

    #[test]
    fn digest_ignores_mtime_and_tracks_content_mode_links() {
        let dir = tree(&["src/a.rs", "src/b.rs", "src/l -> a.rs"]);
        let ctx = open(&dir, "");
        let digest = |ctx: &BuildContext| ctx.digest_of(&ctx.walk("src", None).unwrap()).unwrap();
        let d0 = digest(&ctx);
        assert_eq!(d0, digest(&ctx));

        touch_back(&dir.path().join("src/a.rs"));
        assert_eq!(ctx.walk("src/a.rs", None).unwrap()[0].mtime, 12345);
        assert_eq!(digest(&ctx), d0, "mtime is not part of the digest");

        // Order of the entries does not matter.
        let mut entries = ctx.walk("src", None).unwrap();
        entries.reverse();
        assert_eq!(ctx.digest_of(&entries).unwrap(), d0);

        fs::write(dir.path().join("src/a.rs"), "changed").unwrap();
        let d1 = digest(&ctx);
        assert_ne!(d1, d0, "content");

        fs::set_permissions(
            dir.path().join("src/b.rs"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let d2 = digest(&ctx);
        assert_ne!(d2, d1, "mode");

        fs::remove_file(dir.path().join("src/l")).unwrap();
        symlink("b.rs", dir.path().join("src/l")).unwrap();
        let d3 = digest(&ctx);
        assert_ne!(d3, d2, "symlink target");

        fs::rename(dir.path().join("src/b.rs"), dir.path().join("src/c.rs")).unwrap();
        assert_ne!(digest(&ctx), d3, "path");
        assert_eq!(ctx.digest_of(&[]).unwrap(), ctx.digest_of(&[]).unwrap());
    }

    /// Records which files it was asked to hash.
    #[derive(Default)]
    struct Counting {
        seen: Mutex<Vec<String>>,
        calls: AtomicUsize,
    }

    impl FileHasher for Counting {
        fn hash_file(&self, entry: &ContextEntry) -> Result<Digest> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(entry.rel.clone());
            PlainFileHasher.hash_file(entry)
        }
    }

    #[test]
    fn digest_reads_only_the_files_asked_for() {
        let dir = tree(&["app/main.go", "app/go.mod", "big/blob1", "big/blob2"]);
        let counting = Arc::new(Counting::default());
        let ctx = open(&dir, "").with_hasher(counting.clone());
        let plain = open(&dir, "");
        let entries = ctx.walk("app", None).unwrap();
        let d = ctx.digest_of(&entries).unwrap();
        assert_eq!(
            d,
            plain.digest_of(&entries).unwrap(),
            "the hasher does not change the digest"
        );
        let mut seen = counting.seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["app/go.mod", "app/main.go"]);
        assert_eq!(counting.calls.load(Ordering::SeqCst), 2);
        // A vanished file is an error that names it.
        fs::remove_file(dir.path().join("app/go.mod")).unwrap();
        let e = plain.digest_of(&entries).unwrap_err();
        assert!(e.to_string().contains("go.mod"), "{e}");
    }

    #[test]
    fn walk_many_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = 1;
        for d in 0..50 {
            let sub = dir.path().join(format!("d{d:02}"));
            fs::create_dir(&sub).unwrap();
            want += 1;
            for f in 0..100 {
                fs::write(
                    sub.join(format!(
                        "f{f:03}.{}",
                        if f % 10 == 0 { "log" } else { "txt" }
                    )),
                    [d as u8, f as u8],
                )
                .unwrap();
                want += 1;
            }
        }
        let ctx = open(&dir, "**/*.log\n");
        let all = ctx.walk(".", None).unwrap();
        assert_eq!(all.len(), want - 50 * 10);
        assert!(all
            .windows(2)
            .all(|w| walk::cmp_rel(&w[0].rel, &w[1].rel).is_lt()));
        let d = ctx.digest_of(&all).unwrap();
        assert_eq!(d, ctx.digest_of(&ctx.walk(".", None).unwrap()).unwrap());
    }

    /// `cargo test -- --ignored --nocapture scale`: walk and hash 100k files, with timings.
    #[test]
    #[ignore]
    fn scale_100k_files() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..1000 {
            let sub = dir.path().join(format!("pkg{d:04}/src"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..100 {
                fs::write(
                    sub.join(format!("file{f:03}.rs")),
                    format!("// {d} {f}\n").repeat(20),
                )
                .unwrap();
            }
        }
        let ctx = open(&dir, "pkg09*\n");
        let t = std::time::Instant::now();
        let all = ctx.walk(".", None).unwrap();
        let walked = t.elapsed();
        let t = std::time::Instant::now();
        let d = ctx.digest_of(&all).unwrap();
        let hashed = t.elapsed();
        let t = std::time::Instant::now();
        let one = ctx.walk("pkg0500", None).unwrap();
        let small = t.elapsed();
        eprintln!(
            "entries={} walk={walked:?} digest={hashed:?} ({d}); walk of one package={small:?} ({} entries)",
            all.len(),
            one.len()
        );
        assert_eq!(all.len(), 1 + 900 * 102);
    }
}
