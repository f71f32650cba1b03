//! Persistent network namespaces, like `ip netns add/del`: a new namespace bind-mounted on a
//! file, so it outlives the process that made it. The unshare happens on a short-lived thread,
//! so the calling thread (and the rest of the process) keep their namespace.

use std::fs::File;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::NetworkError;

fn err(path: &Path, reason: String) -> NetworkError {
    NetworkError::Netns {
        path: path.to_path_buf(),
        reason,
    }
}

/// Creates a new network namespace and bind-mounts it on `path` (created; its directory must
/// exist). The namespace has only a `lo`, down.
pub fn create(path: &Path) -> Result<(), NetworkError> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| err(path, format!("cannot create the mount point: {e}")))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind mount: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the namespace thread panicked".to_string()))
    });
    if let Err(reason) = made {
        let _ = std::fs::remove_file(path);
        return Err(err(path, reason));
    }
    Ok(())
}

/// Unmounts and removes a namespace made by [`create`]; a missing one is fine. The namespace
/// itself ends when nothing else (a process, a socket) holds it.
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(path, format!("unmount: {e}"))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(path, format!("cannot remove: {e}"))),
    }
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (opened from `path`)
/// and returns its result. Sockets made by `f` stay in that namespace.
pub(crate) fn in_netns<T: Send>(
    ns: &File,
    path: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetworkError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(path, format!("setns: {e}")))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(err(path, "the namespace thread panicked".to_string())))
    })
}
