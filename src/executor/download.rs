//! `ADD <url> <dest>`: downloads over http(s) into the layer, verifying `--checksum`, with the
//! file's mtime taken from `Last-Modified` (as BuildKit does) and mode 0600 unless `--chmod`.

use std::io::{Read, Write};
use std::path::Path;

use super::fileop::{self, CopyEnv, RootfsTree};
use super::ExecError;
use crate::cache::digest::DigestWriter;
use crate::graph::dispatch::{CopyOp, CopySource};

/// Copies every URL source of an ADD (other sources of the same ADD are not allowed with URLs
/// here; mixing them is rare and BuildKit handles them as separate copies as well).
pub fn add_urls(op: &CopyOp, env: &CopyEnv, tmp: &Path) -> Result<bool, ExecError> {
    let staging = tempfile::tempdir_in(tmp).map_err(|e| ExecError::io(tmp, e))?;
    let mut names = Vec::new();
    for source in &op.sources {
        let CopySource::Url(url) = source else {
            return Err(ExecError::Failed(
                "ADD cannot mix URLs with other sources in one instruction; split it in two".into(),
            ));
        };
        if url.starts_with("git@")
            || url.starts_with("git://")
            || url.contains(".git") && !url.starts_with("http")
        {
            return Err(ExecError::Failed(format!(
                "ADD {url}: git sources are not supported yet"
            )));
        }
        let name = file_name_of(url);
        let path = staging.path().join(&name);
        let digest = download(url, &path)?;
        if let Some(expected) = &op.checksum {
            if expected != digest.as_str() {
                return Err(ExecError::Failed(format!(
                    "ADD {url}: checksum mismatch: expected {expected}, got {digest}"
                )));
            }
        }
        let mode = 0o600;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| ExecError::io(&path, e))?;
        names.push(name);
    }
    // Copy the downloaded files like local files (so dest rules, --chown and --chmod apply),
    // with unpacking off unless `--unpack=true` was given.
    let local = CopyOp {
        sources: names.iter().map(|n| CopySource::Path(n.clone())).collect(),
        unpack: Some(op.unpack == Some(true)),
        ..op.clone()
    };
    let tree = RootfsTree {
        root: staging.path(),
        name: "downloaded files".into(),
    };
    let tree = PreserveNothing(tree);
    fileop::copy(&local, &tree, env)
}

/// Downloaded files belong to root (or `--chown`), like context files.
struct PreserveNothing<'a>(RootfsTree<'a>);

impl fileop::SourceTree for PreserveNothing<'_> {
    fn matches(&self, pattern: &str) -> Result<Vec<String>, ExecError> {
        self.0.matches(pattern)
    }
    fn host_path(&self, rel: &str, follow: bool) -> Result<std::path::PathBuf, ExecError> {
        self.0.host_path(rel, follow)
    }
    fn descendants(&self, rel: &str) -> Result<Vec<String>, ExecError> {
        self.0.descendants(rel)
    }
    fn preserve_owner(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// The last path segment of a URL (without query or fragment), or `download`.
fn file_name_of(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = no_query
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_query);
    match after_scheme.split_once('/') {
        Some((_, path)) => path
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or("download")
            .to_string(),
        None => "download".to_string(),
    }
}

/// Streams `url` to `path`; returns the sha256 of the body. Sets the mtime from Last-Modified.
fn download(url: &str, path: &Path) -> Result<crate::cache::Digest, ExecError> {
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ExecError::Failed(format!("ADD {url}: {e}")))?;
    let mut resp = client
        .get(url)
        .send()
        .map_err(|e| ExecError::Failed(format!("ADD {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ExecError::Failed(format!(
            "ADD {url}: the server answered {}",
            resp.status()
        )));
    }
    let modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let file = std::fs::File::create(path).map_err(|e| ExecError::io(path, e))?;
    let mut w = DigestWriter::new(std::io::BufWriter::new(file));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| ExecError::Failed(format!("ADD {url}: reading the body: {e}")))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(|e| ExecError::io(path, e))?;
    }
    let (mut inner, digest, _) = w.finish();
    inner.flush().map_err(|e| ExecError::io(path, e))?;
    drop(inner);
    if let Some(t) = modified {
        let ts = nix::sys::time::TimeSpec::new(t, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .map_err(|e| ExecError::io(path, e.into()))?;
    }
    Ok(digest)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = MONTHS.iter().position(|m| m == mon)? + 1;
    crate::cache::image::parse_rfc3339(&format!("{year}-{mon:02}-{day:0>2}T{time}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dates() {
        assert_eq!(
            file_name_of("https://example.com/a/b.tar.gz?x=1"),
            "b.tar.gz"
        );
        assert_eq!(file_name_of("http://example.com/"), "download");
        assert_eq!(file_name_of("http://example.com"), "download");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("garbage"), None);
    }
}
