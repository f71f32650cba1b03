//! The container's filesystem: the rootfs bound onto itself, a fresh `/proc`, a minimal `/dev`,
//! a read-only `/sys`, the `/etc` files, the caller's mounts, then `pivot_root` and docker's
//! masked and read-only paths (runc `libcontainer/rootfs_linux.go` is the model).
//!
//! Mount targets are resolved inside the rootfs the way the container would see them: symlinks
//! are followed, but `..` and absolute link targets never leave the root. Missing mountpoints
//! are created (directories 0755, files 0644, owned by root) and reported as `created`, unless
//! they land inside a filesystem the sandbox mounted itself (a tmpfs, a bind), so the caller
//! can keep exactly those paths out of the layer.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::SFlag;

use super::spec::{EtcFile, Failure, Report};
use super::syscall::Syscall;
use super::SandboxMount;

/// docker's masked paths: a file gets `/dev/null` bound over it, a directory a read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// docker's read-only paths (bound onto themselves, then remounted read-only).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Character devices of the minimal `/dev` (docker's defaults): name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Extra devices for `--security=insecure` (BuildKit's list): name, kind, major, minor.
const INSECURE_DEVICES: &[(&str, SFlag, u64, u64)] = &[
    ("kmsg", SFlag::S_IFCHR, 1, 11),
    ("cuse", SFlag::S_IFCHR, 10, 203),
    ("fuse", SFlag::S_IFCHR, 10, 229),
    ("kvm", SFlag::S_IFCHR, 10, 232),
    ("net/tun", SFlag::S_IFCHR, 10, 200),
    ("loop-control", SFlag::S_IFCHR, 10, 237),
    ("loop0", SFlag::S_IFBLK, 7, 0),
    ("loop1", SFlag::S_IFBLK, 7, 1),
    ("loop2", SFlag::S_IFBLK, 7, 2),
    ("loop3", SFlag::S_IFBLK, 7, 3),
    ("loop4", SFlag::S_IFBLK, 7, 4),
    ("loop5", SFlag::S_IFBLK, 7, 5),
    ("loop6", SFlag::S_IFBLK, 7, 6),
    ("loop7", SFlag::S_IFBLK, 7, 7),
];

/// Resolves `path` (absolute in the container) under `root` following symlinks, clamped to
/// the root. Returns the host path and the resolved container path.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<(PathBuf, String), Failure> {
    match super::super::rootfs::scoped_components(root, path, true) {
        Ok(stack) => Ok((root.join(stack.join("/")), format!("/{}", stack.join("/")))),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => Err(Failure::invalid(format!(
            "{path}: too many levels of symbolic links"
        ))),
        Err(e) => Err(Failure::step(format!("readlink {path}"), io_errno(&e))),
    }
}

pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// What a missing mountpoint is created as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Mount setup inside the rootfs (before `pivot_root`).
pub struct RootfsSetup<'a> {
    sys: &'a dyn Syscall,
    root: PathBuf,
    /// Container paths where the sandbox mounted a filesystem: created below them is not in
    /// the layer.
    mounted: Vec<String>,
    report: &'a mut dyn FnMut(&Report),
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl<'a> RootfsSetup<'a> {
    pub fn new(
        sys: &'a dyn Syscall,
        root: &Path,
        report: &'a mut dyn FnMut(&Report),
    ) -> RootfsSetup<'a> {
        RootfsSetup {
            sys,
            root: root.to_path_buf(),
            mounted: Vec::new(),
            report,
        }
    }

    /// Makes every mount private (nothing propagates back to the host), then binds the rootfs
    /// onto itself so it is a mount point `pivot_root` accepts.
    /// `overlay`: mount options of an overlay to mount on the rootfs first (in this private
    /// mount namespace only).
    pub fn prepare_root(&mut self, overlay: Option<&str>) -> Result<(), Failure> {
        self.sys
            .mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None,
            )
            .map_err(|e| Failure::step("make mounts private", e))?;
        if let Some(options) = overlay {
            self.sys
                .mount(
                    Some(Path::new("overlay")),
                    &self.root,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(options),
                )
                .map_err(|e| Failure::step(format!("mount the overlay rootfs ({options})"), e))?;
        }
        self.sys
            .mount(
                Some(&self.root),
                &self.root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|e| Failure::step(format!("bind rootfs {}", self.root.display()), e))
    }

    /// Resolves `target` in the root and creates whatever is missing (parents as
    /// directories, the last component as `kind`). `owner`: chown what is created (the
    /// working directory); mountpoints (None) stay root's and are reported.
    pub fn ensure(
        &mut self,
        target: &str,
        kind: Kind,
        owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, Failure> {
        let (host, resolved) = resolve_in_root(&self.root, target)?;
        if std::fs::symlink_metadata(&host).is_ok() {
            return Ok(host);
        }
        let components: Vec<&str> = resolved.split('/').filter(|c| !c.is_empty()).collect();
        let mut container = String::new();
        for (i, c) in components.iter().enumerate() {
            container.push('/');
            container.push_str(c);
            let host_path = self.root.join(&container[1..]);
            if std::fs::symlink_metadata(&host_path).is_ok() {
                continue;
            }
            let last = i + 1 == components.len();
            let made = if last && kind == Kind::File {
                self.sys.create_file(&host_path, 0o644)
            } else {
                self.sys.mkdir(&host_path, 0o755)
            };
            match made {
                Ok(()) => {}
                // A concurrent sandbox on the same root made it first: it reports it.
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(Failure::step(format!("create {container}"), e)),
            }
            match owner {
                Some((uid, gid)) => self
                    .sys
                    .lchown(&host_path, uid, gid)
                    .map_err(|e| Failure::step(format!("chown {container}"), e))?,
                None => {
                    if !self.mounted.iter().any(|m| is_under(&container, m)) {
                        (self.report)(&Report::Created {
                            path: container.clone(),
                        });
                    }
                }
            }
        }
        Ok(host)
    }

    fn mount_fs(
        &mut self,
        target: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<PathBuf, Failure> {
        let host = self.ensure(target, Kind::Dir, None)?;
        self.sys
            .mount(Some(Path::new(fstype)), &host, Some(fstype), flags, data)
            .map_err(|e| Failure::step(format!("mount {fstype} on {target}"), e))?;
        self.mounted.push(target.to_string());
        Ok(host)
    }

    /// A fresh procfs for the new pid namespace.
    pub fn mount_proc(&mut self) -> Result<(), Failure> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        self.mount_fs("/proc", "proc", flags, None).map(drop)
    }

    /// A tmpfs `/dev` with docker's device nodes, `pts`, `shm`, `mqueue` and the usual links.
    pub fn mount_dev(&mut self, insecure: bool) -> Result<(), Failure> {
        let dev = self.mount_fs(
            "/dev",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?;
        let sys = self.sys;
        let node = |name: &str, kind: SFlag, mode: u32, major: u64, minor: u64| {
            let p = dev.join(name);
            sys.mknod(&p, kind, mode, major, minor)
                .map_err(|e| Failure::step(format!("mknod /dev/{name}"), e))
        };
        for (name, major, minor) in DEVICES {
            node(name, SFlag::S_IFCHR, 0o666, *major, *minor)?;
        }
        if insecure {
            sys.mkdir(&dev.join("net"), 0o755)
                .map_err(|e| Failure::step("mkdir /dev/net", e))?;
            for (name, kind, major, minor) in INSECURE_DEVICES {
                node(name, *kind, 0o660, *major, *minor)?;
            }
        }
        for (target, link) in [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
        ] {
            sys.symlink(target, &dev.join(link))
                .map_err(|e| Failure::step(format!("symlink /dev/{link}"), e))?;
        }
        let common = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        self.mount_fs(
            "/dev/pts",
            "devpts",
            common,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )?;
        self.mount_fs(
            "/dev/shm",
            "tmpfs",
            common | MsFlags::MS_NODEV,
            Some("mode=1777,size=65536k"),
        )?;
        self.mount_fs("/dev/mqueue", "mqueue", common | MsFlags::MS_NODEV, None)?;
        Ok(())
    }

    /// sysfs, read-only unless insecure. Where a fresh sysfs is refused (EPERM: no netns of
    /// our own in a user namespace), the host's is bound recursively instead, as runc does.
    pub fn mount_sys(&mut self, insecure: bool) -> Result<(), Failure> {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if !insecure {
            flags |= MsFlags::MS_RDONLY;
        }
        let host = self.ensure("/sys", Kind::Dir, None)?;
        match self
            .sys
            .mount(Some(Path::new("sysfs")), &host, Some("sysfs"), flags, None)
        {
            Ok(()) => {}
            Err(Errno::EPERM) => {
                self.sys
                    .mount(
                        Some(Path::new("/sys")),
                        &host,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )
                    .map_err(|e| Failure::step("bind /sys", e))?;
                if !insecure {
                    self.sys
                        .mount(
                            None,
                            &host,
                            None,
                            flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                            None,
                        )
                        .map_err(|e| Failure::step("remount /sys read-only", e))?;
                }
            }
            Err(e) => return Err(Failure::step("mount sysfs on /sys", e)),
        }
        self.mounted.push("/sys".to_string());
        Ok(())
    }

    /// Binds a file or directory, optionally read-only.
    fn bind(&mut self, source: &Path, target: &str, readonly: bool) -> Result<(), Failure> {
        let kind = if source.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        let host = self.ensure(target, kind, None)?;
        self.sys
            .mount(
                Some(source),
                &host,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|e| Failure::step(format!("bind {} on {target}", source.display()), e))?;
        if readonly {
            self.sys
                .mount(
                    None,
                    &host,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                )
                .map_err(|e| Failure::step(format!("remount {target} read-only"), e))?;
        }
        self.mounted.push(target.to_string());
        Ok(())
    }

    /// `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`: read-only binds of files outside the
    /// rootfs (BuildKit binds them read-only too), so nothing written there reaches the layer.
    pub fn mount_etc_files(&mut self, files: &[EtcFile]) -> Result<(), Failure> {
        for f in files {
            self.bind(&f.source, &f.target, true)?;
        }
        Ok(())
    }

    /// The caller's mounts, in order (the spec sorts parents first).
    pub fn mount_extra(&mut self, mounts: &[SandboxMount]) -> Result<(), Failure> {
        for m in mounts {
            match m {
                SandboxMount::Bind {
                    source,
                    target,
                    readonly,
                } => self.bind(source, target, *readonly)?,
                SandboxMount::Tmpfs { target, size } => {
                    let data = match size {
                        Some(n) => format!("mode=1777,size={n}"),
                        None => "mode=1777".to_string(),
                    };
                    self.mount_fs(
                        target,
                        "tmpfs",
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
                        Some(&data),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// `pivot_root(".", ".")` in the new root, then detaches the old root stacked on top of it.
pub fn pivot(sys: &dyn Syscall, root: &Path) -> Result<(), Failure> {
    sys.chdir(root)
        .map_err(|e| Failure::step("chdir to the rootfs", e))?;
    let dot = Path::new(".");
    sys.pivot_root(dot, dot)
        .map_err(|e| Failure::step("pivot_root", e))?;
    // Make sure the unmount below cannot propagate anywhere.
    sys.mount(None, dot, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(|e| Failure::step("make the old root a slave", e))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(|e| Failure::step("detach the old root", e))?;
    sys.chdir(Path::new("/"))
        .map_err(|e| Failure::step("chdir /", e))
}

/// docker's masked and read-only paths (after `pivot_root`). Paths the kernel lacks are
/// skipped.
pub fn mask_paths(sys: &dyn Syscall) -> Result<(), Failure> {
    for path in MASKED_PATHS {
        let p = Path::new(path);
        match sys.mount(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR) => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    p,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some("size=0"),
                )
                .map_err(|e| Failure::step(format!("mask {path}"), e))?,
            Err(e) => return Err(Failure::step(format!("mask {path}"), e)),
        }
    }
    for path in READONLY_PATHS {
        let p = Path::new(path);
        match sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Failure::step(format!("bind {path}"), e)),
        }
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        sys.mount(None, p, None, flags, None)
            .map_err(|e| Failure::step(format!("remount {path} read-only"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolution_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("/../../../../etc", r.join("escape")).unwrap();
        symlink("../../..", r.join("usr/up")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        let res = |p: &str| resolve_in_root(r, p).unwrap();
        assert_eq!(res("/bin/sh"), (r.join("usr/bin/sh"), "/usr/bin/sh".into()));
        assert_eq!(
            res("/escape/passwd"),
            (r.join("etc/passwd"), "/etc/passwd".into())
        );
        assert_eq!(res("/usr/up/etc"), (r.join("etc"), "/etc".into()));
        assert_eq!(res("/../../x"), (r.join("x"), "/x".into()));
        assert_eq!(res("/"), (r.join(""), "/".into()));
        assert!(resolve_in_root(r, "/loop1").is_err());
    }

    #[test]
    fn under() {
        assert!(is_under("/dev/pts", "/dev"));
        assert!(is_under("/dev", "/dev"));
        assert!(!is_under("/devices", "/dev"));
        assert!(is_under("/x", "/"));
    }
}
