//! Reading an image's root filesystem safely from the host: resolving paths the way the
//! container would see them (symlinks followed, but never out of the root), reading files, and
//! expanding COPY source patterns in a stage's rootfs (same matcher as the build context).

use std::path::{Path, PathBuf};

use super::ExecError;

const MAX_SYMLINKS: usize = 255;

/// Resolves `path` (absolute inside the container) under `root` the way the container would
/// see it, following symlinks but clamping every `..` and absolute link target to `root`.
/// Returns the resolved path's components (so both the host path and the container path can be
/// built from it). With `follow_last` false, a symlink as the final component is kept.
/// Errors: `ELOOP` after 255 links, or the `readlink` failure.
pub fn scoped_components(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> std::io::Result<Vec<String>> {
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        stack.push(component);
        if pending.is_empty() && !follow_last {
            break;
        }
        let host = root.join(stack.join("/"));
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ELOOP));
        }
        let target = std::fs::read_link(&host)?.to_string_lossy().to_string();
        stack.pop();
        if target.starts_with('/') {
            stack.clear();
        }
        pending.extend(
            target
                .split('/')
                .filter(|c| !c.is_empty())
                .rev()
                .map(String::from),
        );
    }
    Ok(stack)
}

/// [`scoped_components`] as a host path under `root`.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, ExecError> {
    match scoped_components(root, path, follow_last) {
        Ok(stack) => Ok(root.join(stack.join("/"))),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => Err(ExecError::Path {
            path: path.to_string(),
            message: "too many levels of symbolic links".into(),
        }),
        Err(e) => Err(ExecError::io(&root.join(path.trim_start_matches('/')), e)),
    }
}

/// Reads a text file of the container (e.g. `/etc/passwd`).
pub fn read_in_root(root: &Path, path: &str) -> Result<String, ExecError> {
    let host = resolve_in_root(root, path, true)?;
    std::fs::read_to_string(&host).map_err(|e| ExecError::io(&host, e))
}

pub use crate::context::{has_wildcards, match_segment};

/// Expands a source pattern inside a root filesystem: returns container paths (absolute, '/'
/// separated) of existing entries, sorted. Symlinks in the middle of the path are followed
/// within the root; the entries themselves are returned unresolved.
pub fn glob_in_root(root: &Path, pattern: &str) -> Result<Vec<String>, ExecError> {
    let clean = crate::graph::dispatch::clean_path(pattern);
    if !has_wildcards(&clean) {
        let host = resolve_in_root(root, &clean, false)?;
        return Ok(if std::fs::symlink_metadata(&host).is_ok() {
            vec![clean]
        } else {
            Vec::new()
        });
    }
    let mut current = vec![String::new()];
    let segments: Vec<&str> = clean.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segments.iter().enumerate() {
        let mut next = Vec::new();
        for prefix in &current {
            if !has_wildcards(seg) {
                let candidate = format!("{prefix}/{seg}");
                let host = resolve_in_root(root, &candidate, i + 1 < segments.len())?;
                if std::fs::symlink_metadata(&host).is_ok() {
                    next.push(candidate);
                }
                continue;
            }
            let dir = resolve_in_root(root, if prefix.is_empty() { "/" } else { prefix }, true)?;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            names.sort();
            for name in names {
                if match_segment(seg, &name) {
                    next.push(format!("{prefix}/{name}"));
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current.into_iter().filter(|p| !p.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_never_escape_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("real/dir")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("real/up")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/abs/dir", true).unwrap(),
            r.join("real/dir")
        );
        assert_eq!(
            resolve_in_root(r, "/real/up/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(r, "/../../x", true).unwrap(), r.join("x"));
        assert_eq!(resolve_in_root(r, "/abs", false).unwrap(), r.join("abs"));
        symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_root(r, "/loop/x", true).is_err());
    }

    #[test]
    fn globbing_in_a_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("app/sub")).unwrap();
        for f in ["app/a.txt", "app/b.txt", "app/c.md", "app/sub/d.txt"] {
            std::fs::write(r.join(f), "x").unwrap();
        }
        assert_eq!(
            glob_in_root(r, "/app/*.txt").unwrap(),
            vec!["/app/a.txt", "/app/b.txt"]
        );
        assert_eq!(
            glob_in_root(r, "app/*/d.txt").unwrap(),
            vec!["/app/sub/d.txt"]
        );
        assert_eq!(glob_in_root(r, "/app/c.md").unwrap(), vec!["/app/c.md"]);
        assert!(glob_in_root(r, "/nope").unwrap().is_empty());
    }
}
