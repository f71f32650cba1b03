//! Files in and out of a container as tar streams: docker's `/containers/{id}/archive`,
//! which `docker cp` and `kiln -H … cp` use. A running container's files are reached
//! through its first process (`/proc/PID/root`), a stopped one's rootfs is mounted for as
//! long as the [`ContainerFs`] lives. Paths are resolved inside the container's root
//! (symlinks cannot lead out of it).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::rootfs::HostMount;
use super::state::{Container, Status};
use super::{io_err, Result, RunError};

/// A container's filesystem as a host directory.
pub struct ContainerFs {
    pub base: PathBuf,
    _mount: Option<HostMount>,
}

impl ContainerFs {
    pub fn open(root: &Path, c: &Container) -> Result<ContainerFs> {
        let s = super::monitor::settle(root, c)?;
        if s.status == Status::Running && s.pid > 0 {
            return Ok(ContainerFs {
                base: PathBuf::from(format!("/proc/{}/root", s.pid)),
                _mount: None,
            });
        }
        let snapshots = super::rootfs::open_snapshots(root)?;
        let m = super::rootfs::mount_on_host(snapshots.as_ref(), c)?;
        Ok(ContainerFs {
            base: m.path.clone(),
            _mount: Some(m),
        })
    }

    /// `path` as an absolute path in the container (relative ones are from its working
    /// directory).
    pub fn inner_path(&self, c: &Container, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", c.config.working_dir.trim_end_matches('/'))
        }
    }

    /// `path` in the container as a host path; a symlink as the last component is
    /// followed only with `follow_last`.
    pub fn resolve(&self, c: &Container, path: &str, follow_last: bool) -> Result<PathBuf> {
        let inner = self.inner_path(c, path);
        crate::executor::rootfs::resolve_in_root(&self.base, &inner, follow_last)
            .map_err(|e| RunError::Invalid(format!("path {path:?}: {e}")))
    }
}

/// Whether a `cp` path names a directory's contents (`dir/.`, docker's rule).
pub fn names_contents(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p == "." || p.ends_with("/.")
}

/// The name of an archive's top entry for `path` (docker's): `.` for `dir/.` (the entries
/// are then the directory's contents), else the last component.
pub fn top_name(path: &str, host: &Path) -> String {
    if names_contents(path) {
        return ".".into();
    }
    host.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into())
}

/// What reading `path` of container `c` needs: its filesystem (kept reachable while the
/// guard lives), the host path, and docker's stat of it (a symlink itself, not its target)
/// named as the archive's top entry; `RunError::NotFound` when it is missing.
pub fn prepare_read(
    root: &Path,
    c: &Container,
    path: &str,
) -> Result<(ContainerFs, PathBuf, PathStat)> {
    let fs = ContainerFs::open(root, c)?;
    let host = fs.resolve(c, path, false)?;
    let mut st = stat(&host, path)?;
    st.name = top_name(path, &host);
    Ok((fs, host, st))
}

/// The stat `HEAD /containers/{id}/archive` reports for `path`.
pub fn stat_in(root: &Path, c: &Container, path: &str) -> Result<PathStat> {
    prepare_read(root, c, path).map(|(_, _, st)| st)
}

/// `path` of container `c` as a tar stream (the `GET` of the archive endpoint). A thread
/// writes it while the container's filesystem stays reachable.
pub fn read_from(
    root: &Path,
    c: &Container,
    path: &str,
) -> Result<(PathStat, std::io::PipeReader)> {
    let (fs, host, st) = prepare_read(root, c, path)?;
    let name = st.name.clone();
    let (reader, writer) = std::io::pipe().map_err(io_err("creating", Path::new("a pipe")))?;
    std::thread::spawn(move || {
        let writer = std::io::BufWriter::new(writer);
        if let Err(e) = crate::executor::export_fs::write_tar_named(&host, &name, writer) {
            tracing::debug!("archive of {}: {e}", host.display());
        }
        drop(fs);
    });
    Ok((st, reader))
}

/// Unpacks a tar stream into the directory `dir` of container `c` (the `PUT`).
pub fn write_into(root: &Path, c: &Container, dir: &str, input: impl Read) -> Result<()> {
    let fs = ContainerFs::open(root, c)?;
    // The target directory may itself be a symlink inside the container.
    let host = fs.resolve(c, dir, true)?;
    stat(&host, dir)?;
    extract_tar(&fs.base, &fs.inner_path(c, dir), input)
}

/// docker's `X-Docker-Container-Path-Stat` (Go's `os.FileMode` bits in `mode`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    pub mode: u32,
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

impl PathStat {
    pub fn is_dir(&self) -> bool {
        self.mode & GO_MODE_DIR != 0
    }
}

const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
const GO_MODE_DEVICE: u32 = 1 << 26;
const GO_MODE_PIPE: u32 = 1 << 25;
const GO_MODE_SOCKET: u32 = 1 << 24;
const GO_MODE_SETUID: u32 = 1 << 23;
const GO_MODE_SETGID: u32 = 1 << 22;
const GO_MODE_CHAR: u32 = 1 << 21;
const GO_MODE_STICKY: u32 = 1 << 20;

/// The stat docker reports for `host_path` (`shown` is the path as the client gave it).
pub fn stat(host_path: &Path, shown: &str) -> Result<PathStat> {
    let meta = std::fs::symlink_metadata(host_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            RunError::NotFound(format!("Could not find the file {shown}"))
        }
        _ => RunError::Io {
            op: "reading",
            path: host_path.to_path_buf(),
            source: e,
        },
    })?;
    let raw = meta.permissions().mode();
    let ft = meta.file_type();
    let mut mode = raw & 0o777;
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        mode |= GO_MODE_DIR;
    } else if ft.is_symlink() {
        mode |= GO_MODE_SYMLINK;
    } else if ft.is_block_device() {
        mode |= GO_MODE_DEVICE;
    } else if ft.is_char_device() {
        mode |= GO_MODE_DEVICE | GO_MODE_CHAR;
    } else if ft.is_fifo() {
        mode |= GO_MODE_PIPE;
    } else if ft.is_socket() {
        mode |= GO_MODE_SOCKET;
    }
    for (bit, go) in [
        (0o4000, GO_MODE_SETUID),
        (0o2000, GO_MODE_SETGID),
        (0o1000, GO_MODE_STICKY),
    ] {
        if raw & bit != 0 {
            mode |= go;
        }
    }
    let link_target = if ft.is_symlink() {
        std::fs::read_link(host_path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let name = host_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    Ok(PathStat {
        name,
        size: meta.size() as i64,
        mode,
        mtime: super::state::rfc3339_nanos(
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ),
        link_target,
    })
}

/// Unpacks a tar stream into the directory `dir` (a path inside `root`, which must exist
/// and be a directory), keeping owners, modes and times. Every entry is resolved the way
/// the container would see it, but never out of `root`: `root` may be `/proc/PID/root`,
/// which a canonicalizing unpacker would turn into the host's `/`. Existing symlinks in
/// the way are replaced, never written through.
pub fn extract_tar(root: &Path, dir: &str, input: impl Read) -> Result<()> {
    let resolve = |p: &str, follow_last: bool| {
        crate::executor::rootfs::resolve_in_root(root, p, follow_last)
            .map_err(|e| RunError::Invalid(format!("path {p:?}: {e}")))
    };
    let base = resolve(dir, true)?;
    let meta = std::fs::metadata(&base).map_err(io_err("reading", &base))?;
    if !meta.is_dir() {
        return Err(RunError::Invalid(format!(
            "extraction point {dir} is not a directory"
        )));
    }
    let bad = |e: std::io::Error| RunError::Invalid(format!("extracting the archive: {e}"));
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    let inner = |name: &Path| format!("{}/{}", dir.trim_end_matches('/'), name.display());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        if name.components().all(|c| c == std::path::Component::CurDir) {
            continue;
        }
        let target = resolve(&inner(&name), false)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let kind = entry.header().entry_type();
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() && kind.is_dir() => {}
            Ok(m) if m.is_dir() => {
                return Err(RunError::Invalid(format!(
                    "cannot overwrite directory {} with a non-directory",
                    inner(&name)
                )))
            }
            Ok(_) => std::fs::remove_file(&target).map_err(io_err("replacing", &target))?,
            Err(_) => {}
        }
        if kind.is_hard_link() {
            let link = entry.link_name().map_err(bad)?.ok_or_else(|| {
                RunError::Invalid(format!("hard link {} has no target", name.display()))
            })?;
            let source = resolve(&inner(&link), false)?;
            std::fs::hard_link(&source, &target).map_err(io_err("linking", &target))?;
            continue;
        }
        entry.unpack(&target).map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip_keeps_links_and_modes() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a.txt"), "hello").unwrap();
        std::fs::set_permissions(d.join("a.txt"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let mut bytes = Vec::new();
        crate::executor::export_fs::write_tar_named(&d, "data", &mut bytes).unwrap();
        let dst = tempfile::tempdir().unwrap();
        extract_tar(dst.path(), "/", bytes.as_slice()).unwrap();
        let out = dst.path().join("data");
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "hello");
        let mode = std::fs::metadata(out.join("a.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o751);
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        let st = stat(&out, "/data").unwrap();
        assert!(st.is_dir());
        assert_eq!(st.name, "data");
        let st = stat(&out.join("link"), "/data/link").unwrap();
        assert_eq!(st.mode & GO_MODE_SYMLINK, GO_MODE_SYMLINK);
        assert_eq!(st.link_target, "/etc/passwd");
        assert!(matches!(
            stat(&out.join("nope"), "/nope"),
            Err(RunError::NotFound(_))
        ));
    }

    #[test]
    fn extraction_needs_a_directory() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(extract_tar(f.path(), "/", &b""[..]).is_err());
    }

    /// A symlink in the target tree leads nowhere outside the root, even when the root is
    /// reached through a path a canonicalizing unpacker would resolve elsewhere.
    #[test]
    fn extraction_stays_in_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("f")).unwrap();
        let mut bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut bytes);
            for (path, body) in [("etc/x", "in"), ("f", "file"), ("../../up", "up")] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                // set_path refuses "..": write the name bytes directly.
                h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, body.as_bytes()).unwrap();
            }
            b.finish().unwrap();
        }
        extract_tar(root.path(), "/", bytes.as_slice()).unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // The absolute symlink /etc → OUTSIDE resolves inside the root.
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        assert_eq!(std::fs::read_to_string(inside.join("x")).unwrap(), "in");
        // An existing symlink is replaced, not written through.
        assert_eq!(
            std::fs::read_to_string(root.path().join("f")).unwrap(),
            "file"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("up")).unwrap(),
            "up"
        );
    }
}
