//! The re-exec'd helper (`kiln __sandbox REPORT_FD CONFIG`) and the container's first process.
//!
//! The helper is a fresh, single-threaded process (no tokio, no thread pool): it blocks the
//! signals it forwards, unshares the namespaces, and forks once so the child is PID 1 of the
//! new pid namespace. It then waits for that child in a `sigwait` loop: SIGTERM/SIGINT/SIGHUP/
//! SIGQUIT are forwarded, SIGUSR1 (cancel) becomes SIGKILL, SIGCHLD ends the loop. It reports
//! the exit status on the report pipe and exits with it.
//!
//! The child ([`container_init`]) sets the container up through the [`Syscall`] trait, in this
//! order: parent-death signal, umask 0 → private mounts → rootfs bind → working directory →
//! `/proc`, `/dev`, `/sys` → `/etc` files → extra mounts → (resolve the command) →
//! `pivot_root` → masked/read-only paths → hostname → chdir → bounding set → seccomp →
//! groups, gid, uid → capabilities → umask 022 → `execve`. With no_new_privs (off for builds)
//! the flag and the filter come after the user switch instead, as runc orders them. A failure
//! is reported as a structured [`Failure`] and the child exits 1.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::caps::{CapPlan, HostCaps};
use super::mounts::{self, Kind, RootfsSetup};
use super::spec::{ChildSpec, Failure, Report};
use super::syscall::{LinuxSyscall, Syscall};
use super::SandboxNetwork;

/// The default `$PATH` for the lookup when the environment has none (docker's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The signals the helper handles itself.
fn helper_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The write end of the report pipe.
#[derive(Debug, Clone, Copy)]
struct Reporter {
    fd: i32,
}

impl Reporter {
    /// Writes one report line (best effort: the parent may be gone).
    fn send(&self, report: &Report) {
        let line = report.to_line();
        let mut rest = &line[..];
        while !rest.is_empty() {
            // SAFETY: the report fd stays open for the life of this process (only exec closes
            // it).
            let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
            match nix::unistd::write(fd, rest) {
                Ok(0) => return,
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    fn fail(&self, failure: Failure) -> ! {
        self.send(&Report::Failed { failure });
        std::process::exit(1)
    }
}

fn set_cloexec(fd: i32) {
    // SAFETY: F_GETFD/F_SETFD on an fd number only changes its flags (EBADF if it is closed).
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Marks every inherited descriptor but stdio and the report pipe close-on-exec, so nothing
/// the parent leaked reaches the container.
fn cloexec_inherited(keep: i32) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        set_cloexec(fd);
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

/// Entry point of `kiln __sandbox <report fd> <config>` (`args`: the words after
/// `__sandbox`). Never returns: exits with the container process's status (128+signal when
/// it was killed), 125 when used by hand.
pub fn child_main(args: &[String]) -> ! {
    let fd = match args {
        [.., fd, _] => fd.parse::<i32>().ok().filter(|fd| *fd > 2),
        _ => None,
    };
    // SAFETY: F_GETFD only queries the flags of the descriptor.
    let Some(fd) = fd.filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0) else {
        eprintln!("kiln __sandbox: internal command of kiln (usage: __sandbox REPORT_FD CONFIG)");
        std::process::exit(125);
    };
    set_cloexec(fd);
    cloexec_inherited(fd);
    let reporter = Reporter { fd };
    let path = &args[args.len() - 1];
    let spec: ChildSpec = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => reporter.fail(Failure::invalid(format!("reading {path}: {e}"))),
    };
    // Read once: the environment in it may hold secrets, so it does not outlive its use.
    let _ = std::fs::remove_file(path);
    if thread_count() > 1 {
        reporter.fail(Failure::invalid(
            "the sandbox helper must be single-threaded: call child_main before anything starts a thread",
        ));
    }
    let signals = helper_signals();
    if let Err(e) = signals.thread_block() {
        reporter.fail(Failure::step("block signals", e));
    }
    let sys = LinuxSyscall;
    if let Err(e) = sys.set_pdeathsig(Signal::SIGKILL) {
        reporter.fail(Failure::step("set the parent-death signal", e));
    }
    if nix::unistd::getppid().as_raw() != spec.parent_pid {
        // The parent died before we could notice: nothing to run for.
        std::process::exit(1);
    }
    let host_caps = HostCaps::read();
    if let Err(f) = helper_setup(&sys, &spec) {
        reporter.fail(f);
    }
    // The child polls this pipe once to learn whether we died before it set its own
    // parent-death signal.
    let (lifeline_r, lifeline_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => reporter.fail(Failure::step("create a pipe", e)),
    };
    // Moving a process into a cgroup waits for an RCU grace period (~10 ms): we do it for
    // the child while it sets its mounts up, and tell it on this pipe when it is done.
    let in_cgroups = !spec.run.cgroup_procs.is_empty() && spec.run.join_pid.is_none();
    let (cgroup_r, cgroup_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => reporter.fail(Failure::step("create a pipe", e)),
    };
    // Opened now: the child's pivot_root also moves our root (same mount namespace).
    let mut procs_files = Vec::new();
    if in_cgroups {
        for procs in &spec.run.cgroup_procs {
            match std::fs::OpenOptions::new().write(true).open(procs) {
                Ok(f) => procs_files.push((procs.clone(), f)),
                Err(e) => reporter.fail(Failure::step(
                    format!("open {}", procs.display()),
                    mounts::io_errno(&e),
                )),
            }
        }
    }
    // SAFETY: this process is single-threaded (checked above), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => reporter.fail(Failure::step("fork", e)),
        Ok(ForkResult::Child) => {
            if let Err(e) = SigSet::empty().thread_set_mask() {
                reporter.fail(Failure::step("unblock signals", e));
            }
            drop(lifeline_w);
            drop(cgroup_w);
            let mut report = |r: &Report| reporter.send(r);
            let cgroups_joined = || {
                if !in_cgroups {
                    return true;
                }
                let mut byte = [0u8; 1];
                loop {
                    match nix::unistd::read(&cgroup_r, &mut byte) {
                        Ok(1) => return true,
                        Err(Errno::EINTR) => continue,
                        _ => return false,
                    }
                }
            };
            let result = container_init(
                &sys,
                &spec,
                host_caps,
                &mut report,
                || helper_alive(lifeline_r.as_raw_fd()),
                cgroups_joined,
            );
            match result {
                Err(f) => reporter.fail(f),
                // Only a recording double returns from execve.
                Ok(()) => std::process::exit(1),
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(lifeline_r);
            drop(cgroup_r);
            reporter.send(&Report::Started {
                pid: child.as_raw(),
            });
            if in_cgroups {
                let pid = child.as_raw().to_string();
                let joined = procs_files.iter_mut().try_for_each(|(procs, f)| {
                    use std::io::Write;
                    f.write_all(pid.as_bytes()).map_err(|e| {
                        Failure::step(
                            format!("move the container into {}", procs.display()),
                            mounts::io_errno(&e),
                        )
                    })
                });
                match joined {
                    Ok(()) => {
                        let _ = nix::unistd::write(&cgroup_w, b"j");
                    }
                    Err(f) => {
                        reporter.send(&Report::Failed { failure: f });
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    }
                }
            }
            drop(cgroup_w);
            // Our stdio copies would keep the caller's output pipes open until our own exit
            // (which waits for the namespaces' teardown): only the container holds them.
            if let Ok(null) = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            ) {
                for fd in 0..3 {
                    // SAFETY: dup2 onto our own standard descriptors.
                    unsafe {
                        libc::dup2(null.as_raw_fd(), fd);
                    }
                }
            }
            for fd in [spec.run.exec_fd, spec.run.console_fd]
                .into_iter()
                .flatten()
            {
                // Only the container process keeps them (until its execve).
                let _ = nix::unistd::close(fd);
            }
            let (code, signal) = wait_for(child, &signals);
            reporter.send(&Report::Exited { code, signal });
            drop(lifeline_w);
            std::process::exit(code)
        }
    }
}

/// Whether the helper still holds its end of the lifeline (EOF means it is gone).
fn helper_alive(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    !(n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0)
}

/// The helper's wait loop: forwards signals until the child is gone.
fn wait_for(child: Pid, signals: &SigSet) -> (i32, Option<i32>) {
    loop {
        let signal = match signals.wait() {
            Ok(s) => s,
            Err(_) => Signal::SIGCHLD,
        };
        match signal {
            Signal::SIGCHLD => loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return (code, None),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        return (128 + sig as i32, Some(sig as i32))
                    }
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => continue,
                    Err(Errno::EINTR) => continue,
                    Err(_) => return (255, None),
                }
            },
            Signal::SIGUSR1 => {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            other => {
                let _ = nix::sys::signal::kill(child, other);
            }
        }
    }
}

/// The helper's own step: new mount, UTS, IPC and pid namespaces, and a network namespace
/// unless the host's is shared.
pub fn helper_setup(sys: &dyn Syscall, spec: &ChildSpec) -> Result<(), Failure> {
    if let Some(pid) = spec.run.join_pid {
        // `exec`: into the container's cgroups first (the host paths vanish with its mount
        // namespace), then its namespaces, the mount namespace last.
        for procs in &spec.run.cgroup_procs {
            sys.write_file(procs, "0")
                .map_err(|e| Failure::step(format!("join cgroup {}", procs.display()), e))?;
        }
        for (ns, flag) in [
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let path = format!("/proc/{pid}/ns/{ns}");
            sys.setns(Path::new(&path), flag)
                .map_err(|e| Failure::step(format!("join {path}"), e))?;
        }
        return Ok(());
    }
    if let SandboxNetwork::Join(path) = &spec.network {
        sys.setns(path, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Failure::step(format!("join network namespace {}", path.display()), e))?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == SandboxNetwork::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    sys.unshare(flags)
        .map_err(|e| Failure::step("unshare namespaces", e))
}

/// Sets the container up and execs its command. Returns only on failure (or after a recorded
/// `execve`). `helper_alive` is asked once, right after the parent-death signal is armed.
pub fn container_init(
    sys: &dyn Syscall,
    spec: &ChildSpec,
    host: HostCaps,
    report: &mut dyn FnMut(&Report),
    helper_alive: impl Fn() -> bool,
    cgroups_joined: impl Fn() -> bool,
) -> Result<(), Failure> {
    sys.set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure::step("set the parent-death signal", e))?;
    if !helper_alive() {
        return Err(Failure::invalid("the sandbox helper is gone"));
    }
    if spec.run.join_pid.is_some() {
        let command = resolve_command(Path::new("/"), spec)?;
        setup_console(spec)?;
        sys.chdir(Path::new(&spec.cwd))
            .map_err(|e| Failure::step(format!("chdir to {}", spec.cwd), e))?;
        return secure_and_exec(sys, spec, host, &command);
    }
    sys.umask(0);

    let root = spec.rootfs.as_path();
    let mut setup = RootfsSetup::new(sys, root, report);
    setup.prepare_root(spec.run.overlay.as_deref())?;
    setup.ensure(&spec.cwd, Kind::Dir, Some((spec.uid, spec.gid)))?;
    setup.mount_proc()?;
    setup.mount_dev(spec.insecure)?;
    setup.mount_sys(spec.insecure)?;
    setup.mount_etc_files(&spec.etc_files)?;
    setup.mount_extra(&spec.mounts)?;
    let command = resolve_command(root, spec)?;

    mounts::pivot(sys, root)?;
    if !spec.insecure {
        mounts::mask_paths(sys)?;
    }
    if spec.run.readonly_rootfs {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(|e| Failure::step("remount the root read-only", e))?;
    }
    sys.sethostname(&spec.hostname)
        .map_err(|e| Failure::step("set the hostname", e))?;
    sys.chdir(Path::new(&spec.cwd))
        .map_err(|e| Failure::step(format!("chdir to {}", spec.cwd), e))?;
    setup_console(spec)?;
    // The helper has moved us into the container's cgroups before anything of the command
    // runs.
    if !cgroups_joined() {
        return Err(Failure::invalid(
            "the sandbox helper could not move the container into its cgroups",
        ));
    }
    secure_and_exec(sys, spec, host, &command)
}

/// `-t`: a pty from the container's own devpts becomes stdin/stdout/stderr and the
/// controlling terminal of a new session; its master goes back to the parent over the
/// console socket (as runc's console socket). Runs inside the container's root.
fn setup_console(spec: &ChildSpec) -> Result<(), Failure> {
    let (Some((rows, cols)), Some(sock)) = (spec.run.console, spec.run.console_fd) else {
        return Ok(());
    };
    let last = |what: &str| Failure::step(what.to_string(), Errno::last());
    // SAFETY: plain libc pty/ioctl/dup2 calls on descriptors this process owns; `name` is a
    // buffer of the size passed.
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if master < 0 {
            return Err(last("open /dev/ptmx"));
        }
        if libc::unlockpt(master) != 0 {
            return Err(last("unlock the pty"));
        }
        let mut name = [0 as libc::c_char; 64];
        if libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0 {
            return Err(last("name the pty"));
        }
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            return Err(last("open the pty"));
        }
        let _ = libc::fchown(slave, spec.uid, spec.gid);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(slave, libc::TIOCSWINSZ, &ws);
        send_fd(sock, master).map_err(|e| Failure::step("send the pty master", e))?;
        libc::close(master);
        libc::close(sock);
        if libc::setsid() < 0 {
            return Err(last("setsid"));
        }
        for fd in 0..3 {
            if libc::dup2(slave, fd) < 0 {
                return Err(last("dup2 the pty"));
            }
        }
        if slave > 2 {
            libc::close(slave);
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(last("set the controlling terminal"));
        }
    }
    Ok(())
}

fn send_fd(sock: i32, fd: i32) -> Result<(), Errno> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"t")];
    let fds = [fd];
    sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Bounding set, seccomp, user switch, capabilities, then `execve` (through a tiny init
/// when `--init`).
fn secure_and_exec(
    sys: &dyn Syscall,
    spec: &ChildSpec,
    host: HostCaps,
    command: &str,
) -> Result<(), Failure> {
    let plan = CapPlan::new(spec.insecure, spec.uid, host.bounding).adjusted(
        spec.run.cap_add,
        spec.run.cap_drop,
        host.bounding,
        spec.uid,
    );
    for cap in plan.to_drop(host.last_cap) {
        match sys.capbset_drop(cap) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(Failure::step(format!("drop capability {cap}"), e)),
        }
    }
    let filter = if spec.insecure {
        None
    } else {
        super::seccomp::default_filter()
    };
    let install_filter = |filter: &Option<Vec<_>>| match filter {
        Some(f) => sys
            .seccomp(f)
            .map_err(|e| Failure::step("install the seccomp filter", e)),
        None => Ok(()),
    };
    if !spec.no_new_privileges {
        // Still root with CAP_SYS_ADMIN: the filter needs no no_new_privs.
        install_filter(&filter)?;
    }
    switch_user(sys, spec, &plan)?;
    if spec.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(|e| Failure::step("set no_new_privs", e))?;
        install_filter(&filter)?;
    }
    sys.umask(0o022);

    let to_c = |s: &str| {
        CString::new(s).map_err(|_| Failure::invalid(format!("{s:?} contains a NUL byte")))
    };
    let path = to_c(command)?;
    let args = spec
        .args
        .iter()
        .map(|a| to_c(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|a| to_c(a))
        .collect::<Result<Vec<_>, _>>()?;
    let exec = || {
        sys.execve(&path, &args, &env).map_err(|e| Failure::Exec {
            path: command.to_string(),
            errno: e as i32,
            exists: true,
        })
    };
    if spec.run.init {
        return init_then_exec(spec.run.exec_fd, exec);
    }
    exec()
}

/// `--init`: this process stays PID 1, forks the command and reaps every zombie the
/// namespace hands it, forwarding signals to the command; it exits with the command's status.
fn init_then_exec(
    exec_fd: Option<i32>,
    exec: impl FnOnce() -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut signals = SigSet::all();
    for s in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGTSTP,
    ] {
        signals.remove(s);
    }
    signals
        .thread_block()
        .map_err(|e| Failure::step("block signals", e))?;
    // SAFETY: the sandbox's processes are single-threaded.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Failure::step("fork the command", e)),
        Ok(ForkResult::Child) => {
            SigSet::empty()
                .thread_set_mask()
                .map_err(|e| Failure::step("unblock signals", e))?;
            exec()
        }
        Ok(ForkResult::Parent { child }) => {
            if let Some(fd) = exec_fd {
                let _ = nix::unistd::close(fd);
            }
            let status = loop {
                let signal = signals.wait().unwrap_or(Signal::SIGCHLD);
                if signal != Signal::SIGCHLD {
                    let _ = nix::sys::signal::kill(child, signal);
                    continue;
                }
                let mut done = None;
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => done = Some(code),
                        Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                            done = Some(128 + sig as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if let Some(code) = done {
                    break code;
                }
            };
            std::process::exit(status)
        }
    }
}

/// Groups, gid, uid, then the capability sets (the uid switch clears the parent-death signal,
/// so it is armed again).
fn switch_user(sys: &dyn Syscall, spec: &ChildSpec, plan: &CapPlan) -> Result<(), Failure> {
    let keep = plan.needs_keepcaps(spec.uid);
    if keep {
        sys.set_keepcaps(true)
            .map_err(|e| Failure::step("keep capabilities", e))?;
    }
    sys.setgroups(&spec.additional_gids)
        .map_err(|e| Failure::step("set supplementary groups", e))?;
    sys.setresgid(spec.gid)
        .map_err(|e| Failure::step(format!("set gid {}", spec.gid), e))?;
    sys.setresuid(spec.uid)
        .map_err(|e| Failure::step(format!("set uid {}", spec.uid), e))?;
    if keep {
        sys.set_keepcaps(false)
            .map_err(|e| Failure::step("keep capabilities", e))?;
    }
    sys.set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure::step("set the parent-death signal", e))?;
    sys.capset(&plan.sets)
        .map_err(|e| Failure::step("set capabilities", e))?;
    sys.set_ambient(plan.ambient)
        .map_err(|e| Failure::step("set ambient capabilities", e))
}

fn is_executable(host: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(host).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The container path to exec: `args[0]` itself when it has a slash (relative to the working
/// directory), else the first executable `$PATH` entry of the image.
pub fn resolve_command(root: &Path, spec: &ChildSpec) -> Result<String, Failure> {
    let name = spec
        .args
        .first()
        .ok_or_else(|| Failure::invalid("no command"))?;
    let in_cwd = |p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", spec.cwd.trim_end_matches('/'))
        }
    };
    if name.contains('/') {
        let path = in_cwd(name);
        let (host, _) = mounts::resolve_in_root(root, &path)?;
        if std::fs::symlink_metadata(&host).is_err() {
            return Err(Failure::Exec {
                path: name.clone(),
                errno: Errno::ENOENT as i32,
                exists: false,
            });
        }
        return Ok(path);
    }
    let path_var = spec
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = in_cwd(&format!("{}/{name}", dir.trim_end_matches('/')));
        let (host, _) = mounts::resolve_in_root(root, &candidate)?;
        if is_executable(&host) {
            return Ok(candidate);
        }
    }
    Err(Failure::NotFound {
        command: name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::caps::{default_mask, CapSets};
    use super::super::spec::EtcFile;
    use super::super::syscall::{Call, RecordingSyscall};
    use super::super::SandboxMount;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("sh"), b"").unwrap();
        std::fs::set_permissions(bin.join("sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("notexec"), b"").unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        d
    }

    fn spec(root: &Path) -> ChildSpec {
        ChildSpec {
            rootfs: root.to_path_buf(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10, 20],
            hostname: "buildkitsandbox".into(),
            network: SandboxNetwork::None,
            mounts: vec![
                SandboxMount::Tmpfs {
                    target: "/tmp/cache".into(),
                    size: Some(1 << 20),
                },
                SandboxMount::Bind {
                    source: root.join("bin"),
                    target: "/tmp/cache/src".into(),
                    readonly: true,
                },
            ],
            etc_files: vec![EtcFile {
                target: "/etc/hosts".into(),
                source: "/tmp/outside/hosts".into(),
            }],
            insecure: false,
            no_new_privileges: false,
            parent_pid: 1,
            run: Default::default(),
        }
    }

    const HOST: HostCaps = HostCaps {
        bounding: 0x1ff_ffff_ffff,
        last_cap: 40,
    };

    /// A compact rendering of a recorded call, with the rootfs prefix shown as `$ROOT`.
    fn show(call: &Call, root: &str) -> String {
        let r = |p: &str| p.replace(root, "$ROOT");
        match call {
            Call::Setns(p, _) => format!("setns {p}"),
            Call::WriteFile(p, d) => format!("write {p} {d}"),
            Call::Unshare(f) => {
                let names: Vec<&str> = f.iter_names().map(|(n, _)| n).collect();
                format!("unshare {}", names.join("|"))
            }
            Call::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => {
                let mut s = format!("mount {}", r(target));
                if let Some(t) = fstype {
                    s.push_str(&format!(" type={t}"));
                } else if let Some(src) = source {
                    s.push_str(&format!(" from={}", r(src)));
                }
                if flags.contains(MsFlags::MS_REMOUNT) {
                    s.push_str(" remount");
                }
                if flags.contains(MsFlags::MS_RDONLY) {
                    s.push_str(" ro");
                }
                if flags.contains(MsFlags::MS_PRIVATE) {
                    s.push_str(" private");
                }
                if flags.contains(MsFlags::MS_SLAVE) {
                    s.push_str(" slave");
                }
                s
            }
            Call::Umount2(t, _) => format!("umount2 {t}"),
            Call::PivotRoot(a, b) => format!("pivot_root {a} {b}"),
            Call::Chdir(p) => format!("chdir {}", r(p)),
            Call::Sethostname(h) => format!("sethostname {h}"),
            Call::Mkdir(p, _) => format!("mkdir {}", r(p)),
            Call::CreateFile(p, _) => format!("create {}", r(p)),
            Call::Mknod(p, ..) => format!("mknod {}", r(p)),
            Call::Symlink(t, l) => format!("symlink {} -> {t}", r(l)),
            Call::Lchown(p, u, g) => format!("chown {} {u}:{g}", r(p)),
            Call::Umask(m) => format!("umask {m:o}"),
            Call::SetPdeathsig(_) => "pdeathsig".into(),
            Call::CapbsetDrop(_) => "capbset_drop".into(),
            Call::SetKeepcaps(k) => format!("keepcaps {k}"),
            Call::Setgroups(g) => format!("setgroups {g:?}"),
            Call::Setresgid(g) => format!("setresgid {g}"),
            Call::Setresuid(u) => format!("setresuid {u}"),
            Call::Capset(s) => format!(
                "capset eff={:#x} perm={:#x} inh={:#x}",
                s.effective, s.permitted, s.inheritable
            ),
            Call::SetAmbient(a) => format!("ambient {a:#x}"),
            Call::SetNoNewPrivs => "no_new_privs".into(),
            Call::Seccomp(_) => "seccomp".into(),
            Call::Execve(p, a, _) => format!("execve {p} {a:?}"),
        }
    }

    fn record(spec: &ChildSpec) -> (Vec<String>, Vec<Report>, Result<(), Failure>) {
        let sys = RecordingSyscall::with_fs(&spec.rootfs);
        let mut reports = Vec::new();
        helper_setup(&sys, spec).unwrap();
        let result = container_init(
            &sys,
            spec,
            HOST,
            &mut |r| reports.push(r.clone()),
            || true,
            || true,
        );
        let root = spec.rootfs.display().to_string();
        let mut lines: Vec<String> = sys.calls().iter().map(|c| show(c, &root)).collect();
        // Collapse the run of bounding-set drops into one line.
        lines.dedup();
        (lines, reports, result)
    }

    #[test]
    fn typical_sequence() {
        let d = rootfs();
        let spec = spec(d.path());
        let (lines, reports, result) = record(&spec);
        result.unwrap();
        let expected = [
            "unshare CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWPID|CLONE_NEWNET",
            "pdeathsig",
            "umask 0",
            "mount / private",
            "mount $ROOT from=$ROOT",
            "mkdir $ROOT/work",
            "chown $ROOT/work 1000:1000",
            "mount $ROOT/proc type=proc",
            "mkdir $ROOT/dev",
            "mount $ROOT/dev type=tmpfs",
            "mknod $ROOT/dev/null",
            "mknod $ROOT/dev/zero",
            "mknod $ROOT/dev/full",
            "mknod $ROOT/dev/random",
            "mknod $ROOT/dev/urandom",
            "mknod $ROOT/dev/tty",
            "symlink $ROOT/dev/fd -> /proc/self/fd",
            "symlink $ROOT/dev/stdin -> /proc/self/fd/0",
            "symlink $ROOT/dev/stdout -> /proc/self/fd/1",
            "symlink $ROOT/dev/stderr -> /proc/self/fd/2",
            "symlink $ROOT/dev/ptmx -> pts/ptmx",
            "mkdir $ROOT/dev/pts",
            "mount $ROOT/dev/pts type=devpts",
            "mkdir $ROOT/dev/shm",
            "mount $ROOT/dev/shm type=tmpfs",
            "mkdir $ROOT/dev/mqueue",
            "mount $ROOT/dev/mqueue type=mqueue",
            "mkdir $ROOT/sys",
            "mount $ROOT/sys type=sysfs ro",
            "mkdir $ROOT/etc",
            "create $ROOT/etc/hosts",
            "mount $ROOT/etc/hosts from=/tmp/outside/hosts",
            "mount $ROOT/etc/hosts remount ro",
            "mkdir $ROOT/tmp",
            "mkdir $ROOT/tmp/cache",
            "mount $ROOT/tmp/cache type=tmpfs",
            "mkdir $ROOT/tmp/cache/src",
            "mount $ROOT/tmp/cache/src from=$ROOT/bin",
            "mount $ROOT/tmp/cache/src remount ro",
            "chdir $ROOT",
            "pivot_root . .",
            "mount . slave",
            "umount2 .",
            "chdir /",
            "mount /proc/asound from=/dev/null",
        ];
        assert_eq!(lines[..expected.len()], expected[..], "{lines:#?}");
        let tail = [
            "mount /proc/sysrq-trigger remount ro",
            "sethostname buildkitsandbox",
            "chdir /work",
            "capbset_drop",
            "seccomp",
            "setgroups [10, 20]",
            "setresgid 1000",
            "setresuid 1000",
            "pdeathsig",
            "capset eff=0x0 perm=0x0 inh=0x0",
            "ambient 0x0",
            "umask 22",
            "execve /bin/sh [\"sh\", \"-c\", \"true\"]",
        ];
        assert_eq!(lines[lines.len() - tail.len()..], tail[..], "{lines:#?}");
        // Every masked and read-only path is handled between pivot_root and sethostname.
        for p in mounts::MASKED_PATHS.iter().chain(mounts::READONLY_PATHS) {
            assert!(
                lines.iter().any(|l| l.starts_with(&format!("mount {p} "))),
                "{p}"
            );
        }
        // Mountpoints created in the rootfs are reported; those inside our own mounts
        // (/dev/pts, the tmpfs at /tmp/cache) and the working directory are not.
        let created: Vec<&str> = reports
            .iter()
            .map(|r| match r {
                Report::Created { path } => path.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            created,
            ["/dev", "/sys", "/etc", "/etc/hosts", "/tmp", "/tmp/cache"]
        );
    }

    #[test]
    fn root_keeps_docker_caps_and_no_new_privs_moves_seccomp_last() {
        let d = rootfs();
        let mut spec = spec(d.path());
        spec.uid = 0;
        spec.gid = 0;
        spec.additional_gids = vec![];
        spec.network = SandboxNetwork::Host;
        spec.no_new_privileges = true;
        let (lines, _, result) = record(&spec);
        result.unwrap();
        assert_eq!(
            lines[0],
            "unshare CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWPID"
        );
        let tail = [
            "capbset_drop",
            "setgroups []",
            "setresgid 0",
            "setresuid 0",
            "pdeathsig",
            "capset eff=0xa80425fb perm=0xa80425fb inh=0x0",
            "ambient 0x0",
            "no_new_privs",
            "seccomp",
            "umask 22",
        ];
        let end = lines.len() - 1;
        assert_eq!(lines[end - tail.len()..end], tail[..], "{lines:#?}");
        let _ = default_mask();
    }

    #[test]
    fn insecure_mode() {
        let d = rootfs();
        let mut spec = spec(d.path());
        spec.insecure = true;
        let (lines, _, result) = record(&spec);
        result.unwrap();
        assert!(!lines.iter().any(|l| l == "seccomp"), "{lines:#?}");
        assert!(!lines.iter().any(|l| l == "capbset_drop"), "{lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("/proc/kcore")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l == "mount $ROOT/sys type=sysfs"));
        assert!(lines.iter().any(|l| l == "mknod $ROOT/dev/fuse"));
        let all = HOST.bounding;
        let sets = CapSets {
            effective: all,
            permitted: all,
            inheritable: all,
        };
        let i = lines.iter().position(|l| l == "keepcaps true").unwrap();
        assert_eq!(lines[i + 1], "setgroups [10, 20]");
        assert!(lines.contains(&format!(
            "capset eff={:#x} perm={:#x} inh={:#x}",
            sets.effective, sets.permitted, sets.inheritable
        )));
        assert!(lines.contains(&format!("ambient {all:#x}")));
    }

    #[test]
    fn failures_are_structured() {
        let d = rootfs();
        let spec = spec(d.path());
        let sys = RecordingSyscall::default();
        sys.fail_when(|c| matches!(c, Call::PivotRoot(..)), Errno::EINVAL);
        let r = container_init(&sys, &spec, HOST, &mut |_| {}, || true, || true);
        assert_eq!(
            r,
            Err(Failure::Step {
                step: "pivot_root".into(),
                errno: Errno::EINVAL as i32
            })
        );
        // Nothing after the failed step ran.
        assert!(matches!(sys.calls().last(), Some(Call::PivotRoot(..))));

        let sys = RecordingSyscall::default();
        sys.fail_when(|c| matches!(c, Call::Execve(..)), Errno::EACCES);
        let r = container_init(&sys, &spec, HOST, &mut |_| {}, || true, || true);
        assert_eq!(
            r,
            Err(Failure::Exec {
                path: "/bin/sh".into(),
                errno: Errno::EACCES as i32,
                exists: true
            })
        );

        let sys = RecordingSyscall::default();
        let r = container_init(&sys, &spec, HOST, &mut |_| {}, || false, || true);
        assert!(matches!(r, Err(Failure::Invalid { .. })));
    }

    #[test]
    fn command_resolution() {
        let d = rootfs();
        let mut spec = spec(d.path());
        let resolve = |spec: &ChildSpec| resolve_command(d.path(), spec);
        assert_eq!(resolve(&spec), Ok("/bin/sh".into()));
        spec.args[0] = "notexec".into();
        assert_eq!(
            resolve(&spec),
            Err(Failure::NotFound {
                command: "notexec".into()
            })
        );
        spec.args[0] = "/bin/foo".into();
        assert_eq!(
            resolve(&spec),
            Err(Failure::Exec {
                path: "/bin/foo".into(),
                errno: Errno::ENOENT as i32,
                exists: false
            })
        );
        spec.args[0] = "../bin/sh".into();
        assert_eq!(resolve(&spec), Ok("/work/../bin/sh".into()));
        spec.args[0] = "sh".into();
        spec.env.clear();
        assert_eq!(
            resolve(&spec),
            Ok("/bin/sh".into()),
            "docker's default PATH"
        );
    }
}
