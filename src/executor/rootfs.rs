//! Reading an image's root filesystem safely from the host: resolving paths the way the
//! container would see them (symlinks followed, but never out of the root), reading files, and
//! matching COPY source patterns (Go's `filepath.Match` per path segment) in a stage's rootfs.

use std::path::{Path, PathBuf};

use super::ExecError;

const MAX_SYMLINKS: usize = 255;

/// Resolves `path` (absolute inside the container) to a host path under `root`, following
/// symlinks as the container would but clamping every `..` and absolute link target to `root`.
/// With `follow_last` false, a symlink as the final component is returned as is.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, ExecError> {
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
        let is_last = pending.is_empty();
        if is_last && !follow_last {
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
            return Err(ExecError::Path {
                path: path.to_string(),
                message: "too many levels of symbolic links".into(),
            });
        }
        let target = std::fs::read_link(&host).map_err(|e| ExecError::io(&host, e))?;
        let target = target.to_string_lossy().to_string();
        stack.pop();
        if target.starts_with('/') {
            stack.clear();
        }
        for c in target.split('/').filter(|c| !c.is_empty()).rev() {
            pending.push(c.to_string());
        }
    }
    Ok(root.join(stack.join("/")))
}

/// Reads a text file of the container (e.g. `/etc/passwd`).
pub fn read_in_root(root: &Path, path: &str) -> Result<String, ExecError> {
    let host = resolve_in_root(root, path, true)?;
    std::fs::read_to_string(&host).map_err(|e| ExecError::io(&host, e))
}

/// Go's `filepath.Match` for one path segment: `*`, `?`, `[...]` (with ranges and `^`
/// negation) and `\` escapes. A malformed pattern matches nothing.
pub fn match_segment(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else {
                        return false;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == n[ni] {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class starting at `p[start] == '['`. Returns (matched, index after
/// the class), or None for a malformed class.
fn match_class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            ch
        };
        i += 1;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            let h = if p[i] == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                p[i]
            };
            i += 1;
            h
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Some((matched != negate, i))
}

/// Whether a pattern has wildcard characters.
pub fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

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
    fn segments_match_like_go() {
        assert!(match_segment("*.txt", "a.txt"));
        assert!(!match_segment("*.txt", "a.txt.bak"));
        assert!(match_segment("a?c", "abc"));
        assert!(match_segment("[a-c]x", "bx"));
        assert!(!match_segment("[^a-c]x", "bx"));
        assert!(match_segment("\\*", "*"));
        assert!(match_segment("*", ""));
        assert!(!match_segment("[", "a"));
        assert!(match_segment("a*b*c", "axxbyyc"));
    }

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
