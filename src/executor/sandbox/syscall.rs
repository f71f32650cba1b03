//! Every kernel call the sandbox makes while it sets a container up, behind one trait (as youki
//! does): [`LinuxSyscall`] makes the real calls, [`RecordingSyscall`] (tests only) records them
//! so the order of namespace, mount, pivot and credential steps is unit-tested without root.
//!
//! Calls return the raw [`Errno`]; the caller knows which step failed and attaches that.

use std::ffi::{CStr, CString};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::caps::CapSets;
use super::seccomp::SockFilter;

/// The result of one kernel call.
pub type SysResult = Result<(), Errno>;

/// The kernel calls container setup needs. Paths are as the calling process sees them (host
/// paths before `pivot_root`, container paths after).
pub trait Syscall {
    fn unshare(&self, flags: CloneFlags) -> SysResult;
    /// Joins the namespace the file `path` (`/proc/PID/ns/net`, a bound netns) refers to.
    fn setns(&self, path: &Path, nstype: CloneFlags) -> SysResult;
    /// Writes `data` to an existing file (`cgroup.procs`).
    fn write_file(&self, path: &Path, data: &str) -> SysResult;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult;
    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult;
    fn chdir(&self, path: &Path) -> SysResult;
    fn sethostname(&self, name: &str) -> SysResult;
    /// Creates one directory (never follows a symlink as the last component).
    fn mkdir(&self, path: &Path, mode: u32) -> SysResult;
    /// Creates an empty regular file; fails if anything exists there.
    fn create_file(&self, path: &Path, mode: u32) -> SysResult;
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> SysResult;
    fn symlink(&self, target: &str, link: &Path) -> SysResult;
    /// `lchown`: never follows a symlink.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult;
    fn umask(&self, mask: u32);
    fn set_pdeathsig(&self, signal: Signal) -> SysResult;
    /// Drops one capability from the bounding set.
    fn capbset_drop(&self, cap: u32) -> SysResult;
    fn set_keepcaps(&self, keep: bool) -> SysResult;
    fn setgroups(&self, gids: &[u32]) -> SysResult;
    fn setresgid(&self, gid: u32) -> SysResult;
    fn setresuid(&self, uid: u32) -> SysResult;
    /// Sets the effective, permitted and inheritable sets.
    fn capset(&self, sets: &CapSets) -> SysResult;
    /// Clears the ambient set, then raises each capability of `caps`.
    fn set_ambient(&self, caps: u64) -> SysResult;
    fn set_no_new_privs(&self) -> SysResult;
    /// Installs a seccomp BPF filter.
    fn seccomp(&self, filter: &[SockFilter]) -> SysResult;
    /// Replaces the process image; returns only on failure (a recording double returns Ok).
    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> SysResult;
}

/// The real kernel calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: CloneFlags) -> SysResult {
        nix::sched::unshare(flags)
    }

    fn setns(&self, path: &Path, nstype: CloneFlags) -> SysResult {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        nix::sched::setns(fd, nstype)
    }

    fn write_file(&self, path: &Path, data: &str) -> SysResult {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| super::mounts::io_errno(&e))?;
        f.write_all(data.as_bytes())
            .map_err(|e| super::mounts::io_errno(&e))
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> SysResult {
        nix::unistd::chdir(path)
    }

    fn sethostname(&self, name: &str) -> SysResult {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        Errno::result(rc).map(drop)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> SysResult {
        nix::unistd::mkdir(path, Mode::from_bits_truncate(mode))
    }

    fn create_file(&self, path: &Path, mode: u32) -> SysResult {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        drop(fd);
        Ok(())
    }

    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> SysResult {
        nix::sys::stat::mknod(
            path,
            kind,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )
    }

    fn symlink(&self, target: &str, link: &Path) -> SysResult {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    fn umask(&self, mask: u32) {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }

    fn set_pdeathsig(&self, signal: Signal) -> SysResult {
        nix::sys::prctl::set_pdeathsig(signal)
    }

    fn capbset_drop(&self, cap: u32) -> SysResult {
        // SAFETY: PR_CAPBSET_DROP takes an integer argument and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        Errno::result(rc).map(drop)
    }

    fn set_keepcaps(&self, keep: bool) -> SysResult {
        nix::sys::prctl::set_keepcaps(keep)
    }

    fn setgroups(&self, gids: &[u32]) -> SysResult {
        let gids: Vec<Gid> = gids.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids)
    }

    fn setresgid(&self, gid: u32) -> SysResult {
        let g = Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g)
    }

    fn setresuid(&self, uid: u32) -> SysResult {
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u)
    }

    fn capset(&self, sets: &CapSets) -> SysResult {
        super::caps::capset(sets)
    }

    fn set_ambient(&self, caps: u64) -> SysResult {
        // SAFETY: PR_CAP_AMBIENT takes integer arguments and touches no memory.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        Errno::result(rc)?;
        for cap in (0..64u32).filter(|c| caps & (1u64 << c) != 0) {
            // SAFETY: as above.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                )
            };
            Errno::result(rc)?;
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> SysResult {
        nix::sys::prctl::set_no_new_privs()
    }

    fn seccomp(&self, filter: &[SockFilter]) -> SysResult {
        super::seccomp::install(filter)
    }

    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> SysResult {
        match nix::unistd::execve(path, args, env) {
            Err(e) => Err(e),
            Ok(never) => match never {},
        }
    }
}

/// One recorded call (tests).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Unshare(CloneFlags),
    Setns(String, CloneFlags),
    WriteFile(String, String),
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2(String, MntFlags),
    PivotRoot(String, String),
    Chdir(String),
    Sethostname(String),
    Mkdir(String, u32),
    CreateFile(String, u32),
    Mknod(String, u64, u64),
    Symlink(String, String),
    Lchown(String, u32, u32),
    Umask(u32),
    SetPdeathsig(Signal),
    CapbsetDrop(u32),
    SetKeepcaps(bool),
    Setgroups(Vec<u32>),
    Setresgid(u32),
    Setresuid(u32),
    Capset(CapSets),
    SetAmbient(u64),
    SetNoNewPrivs,
    Seccomp(usize),
    Execve(String, Vec<String>, Vec<String>),
}

/// A failure a test injects: the first call matching the predicate fails with the errno.
#[cfg(test)]
type Injected = (fn(&Call) -> bool, Errno);

/// Records every call and succeeds, except for the errors a test asks for. `mkdir` and
/// `create_file` below `fs_root` (a test's temp dir) really happen, so later lookups see them.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    fs_root: Option<std::path::PathBuf>,
    calls: std::cell::RefCell<Vec<Call>>,
    /// Makes the first call matching the predicate fail with the errno.
    fail: std::cell::RefCell<Vec<Injected>>,
}

#[cfg(test)]
impl RecordingSyscall {
    /// A recorder that also creates directories and files under `root`.
    pub fn with_fs(root: &Path) -> RecordingSyscall {
        RecordingSyscall {
            fs_root: Some(root.to_path_buf()),
            ..RecordingSyscall::default()
        }
    }

    fn applies(&self, path: &Path) -> bool {
        self.fs_root.as_ref().is_some_and(|r| path.starts_with(r))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The next call for which `pred` is true fails with `errno`.
    pub fn fail_when(&self, pred: fn(&Call) -> bool, errno: Errno) {
        self.fail.borrow_mut().push((pred, errno));
    }

    fn record(&self, call: Call) -> SysResult {
        let mut fail = self.fail.borrow_mut();
        let hit = fail.iter().position(|(p, _)| p(&call));
        self.calls.borrow_mut().push(call);
        match hit {
            Some(i) => Err(fail.remove(i).1),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
fn s(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
impl Syscall for RecordingSyscall {
    fn unshare(&self, flags: CloneFlags) -> SysResult {
        self.record(Call::Unshare(flags))
    }
    fn setns(&self, path: &Path, nstype: CloneFlags) -> SysResult {
        self.record(Call::Setns(s(path), nstype))
    }
    fn write_file(&self, path: &Path, data: &str) -> SysResult {
        self.record(Call::WriteFile(s(path), data.to_string()))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult {
        self.record(Call::Mount {
            source: source.map(s),
            target: s(target),
            fstype: fstype.map(String::from),
            flags,
            data: data.map(String::from),
        })
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult {
        self.record(Call::Umount2(s(target), flags))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult {
        self.record(Call::PivotRoot(s(new_root), s(put_old)))
    }
    fn chdir(&self, path: &Path) -> SysResult {
        self.record(Call::Chdir(s(path)))
    }
    fn sethostname(&self, name: &str) -> SysResult {
        self.record(Call::Sethostname(name.to_string()))
    }
    fn mkdir(&self, path: &Path, mode: u32) -> SysResult {
        self.record(Call::Mkdir(s(path), mode))?;
        if self.applies(path) {
            LinuxSyscall.mkdir(path, mode)?;
        }
        Ok(())
    }
    fn create_file(&self, path: &Path, mode: u32) -> SysResult {
        self.record(Call::CreateFile(s(path), mode))?;
        if self.applies(path) {
            LinuxSyscall.create_file(path, mode)?;
        }
        Ok(())
    }
    fn mknod(&self, path: &Path, _kind: SFlag, _mode: u32, major: u64, minor: u64) -> SysResult {
        self.record(Call::Mknod(s(path), major, minor))
    }
    fn symlink(&self, target: &str, link: &Path) -> SysResult {
        self.record(Call::Symlink(target.to_string(), s(link)))
    }
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult {
        self.record(Call::Lchown(s(path), uid, gid))
    }
    fn umask(&self, mask: u32) {
        let _ = self.record(Call::Umask(mask));
    }
    fn set_pdeathsig(&self, signal: Signal) -> SysResult {
        self.record(Call::SetPdeathsig(signal))
    }
    fn capbset_drop(&self, cap: u32) -> SysResult {
        self.record(Call::CapbsetDrop(cap))
    }
    fn set_keepcaps(&self, keep: bool) -> SysResult {
        self.record(Call::SetKeepcaps(keep))
    }
    fn setgroups(&self, gids: &[u32]) -> SysResult {
        self.record(Call::Setgroups(gids.to_vec()))
    }
    fn setresgid(&self, gid: u32) -> SysResult {
        self.record(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: u32) -> SysResult {
        self.record(Call::Setresuid(uid))
    }
    fn capset(&self, sets: &CapSets) -> SysResult {
        self.record(Call::Capset(*sets))
    }
    fn set_ambient(&self, caps: u64) -> SysResult {
        self.record(Call::SetAmbient(caps))
    }
    fn set_no_new_privs(&self) -> SysResult {
        self.record(Call::SetNoNewPrivs)
    }
    fn seccomp(&self, filter: &[SockFilter]) -> SysResult {
        self.record(Call::Seccomp(filter.len()))
    }
    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> SysResult {
        let v = |a: &[CString]| a.iter().map(|c| c.to_string_lossy().to_string()).collect();
        self.record(Call::Execve(
            path.to_string_lossy().to_string(),
            v(args),
            v(env),
        ))
    }
}
