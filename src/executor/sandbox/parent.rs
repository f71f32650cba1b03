//! The parent side of [`super::run`]: validates the config into a [`ChildSpec`], spawns the
//! helper (`std::process::Command`, never a bare fork), pumps its output and reports, handles
//! cancellation, and turns reports into a [`SandboxOutcome`] or a [`SandboxError`].

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::spec::{ChildSpec, EtcFile, Failure, Report, RunSpec};
use super::{
    CancelToken, Result, SandboxConfig, SandboxError, SandboxMount, SandboxOutcome, Started,
    Stream, EXE_ENV, HELPER_ARG,
};

/// How often the output loop looks at the cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(50);

fn config_error(message: impl Into<String>) -> SandboxError {
    SandboxError::Config {
        message: message.into(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `/a/./b/../c/` → `/a/c` (lexically; `..` at the root stays at the root).
fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn no_nul(what: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(config_error(format!("{what} {s:?} contains a NUL byte")));
    }
    Ok(())
}

/// Checks the config and writes the `/etc` files into `dir` (outside the rootfs).
pub(super) fn build_spec(config: &SandboxConfig, dir: &Path, parent_pid: i32) -> Result<ChildSpec> {
    if config.args.is_empty() {
        return Err(config_error("no command to run"));
    }
    for a in config.args.iter().chain(&config.env) {
        no_nul("argument", a)?;
    }
    if config.hostname.is_empty() || config.hostname.len() > 64 {
        return Err(config_error(format!(
            "hostname {:?} must be 1 to 64 bytes",
            config.hostname
        )));
    }
    no_nul("hostname", &config.hostname)?;
    no_nul("working directory", &config.cwd)?;
    let rootfs = config
        .rootfs
        .canonicalize()
        .map_err(io_error(&config.rootfs))?;
    if !rootfs.is_dir() {
        return Err(config_error(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    let mut mounts = Vec::with_capacity(config.mounts.len());
    for m in &config.mounts {
        let target = match m {
            SandboxMount::Bind { target, .. } | SandboxMount::Tmpfs { target, .. } => target,
        };
        no_nul("mount target", target)?;
        if !target.starts_with('/') {
            return Err(config_error(format!(
                "mount target {target:?} is not absolute"
            )));
        }
        let clean = clean_absolute(target);
        if clean == "/" {
            return Err(config_error("cannot mount over the root"));
        }
        mounts.push(match m {
            SandboxMount::Bind {
                source, readonly, ..
            } => {
                if std::fs::metadata(source).is_err() {
                    return Err(config_error(format!(
                        "bind source {} does not exist",
                        source.display()
                    )));
                }
                SandboxMount::Bind {
                    source: source.clone(),
                    target: clean,
                    readonly: *readonly,
                }
            }
            SandboxMount::Tmpfs { size, .. } => SandboxMount::Tmpfs {
                target: clean,
                size: *size,
            },
        });
    }
    // Parents before children, so no mount hides a later one (stable: equal depths keep the
    // caller's order).
    mounts.sort_by_key(|m| match m {
        SandboxMount::Bind { target, .. } | SandboxMount::Tmpfs { target, .. } => {
            target.matches('/').count()
        }
    });
    let mut etc_files = Vec::new();
    for (name, target, content) in [
        ("hosts", "/etc/hosts", config.etc_hosts.clone()),
        (
            "resolv.conf",
            "/etc/resolv.conf",
            config.resolv_conf.clone(),
        ),
        (
            "hostname",
            "/etc/hostname",
            format!("{}\n", config.hostname),
        ),
    ] {
        let source = dir.join(name);
        std::fs::write(&source, content).map_err(io_error(&source))?;
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error(&source))?;
        etc_files.push(EtcFile {
            target: target.to_string(),
            source,
        });
    }
    Ok(ChildSpec {
        rootfs,
        args: config.args.clone(),
        env: config.env.clone(),
        cwd: clean_absolute(&config.cwd),
        uid: config.uid,
        gid: config.gid,
        additional_gids: config.additional_gids.clone(),
        hostname: config.hostname.clone(),
        network: config.network.clone(),
        mounts,
        etc_files,
        insecure: config.insecure,
        no_new_privileges: config.no_new_privileges && !config.insecure,
        parent_pid,
        run: RunSpec {
            overlay: config.container.overlay.clone(),
            readonly_rootfs: config.container.readonly_rootfs,
            cap_add: config.container.cap_add,
            cap_drop: config.container.cap_drop,
            cgroup_procs: config.container.cgroup_procs.clone(),
            init: config.container.init,
            console: config.container.console,
            console_fd: None,
            join_pid: config.container.join_pid,
            exec_fd: None,
        },
    })
}

fn errno_text(errno: i32) -> String {
    let text = Errno::from_raw(errno).desc();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

/// A setup failure as the caller sees it.
pub(super) fn failure_error(failure: Failure) -> SandboxError {
    match failure {
        Failure::Step { step, errno } => SandboxError::Setup {
            step,
            source: std::io::Error::from_raw_os_error(errno),
        },
        Failure::Invalid { message } => SandboxError::Helper { message },
        Failure::NotFound { command } => SandboxError::NotFound { command },
        Failure::Exec {
            path,
            errno,
            exists,
        } => {
            let reason = match Errno::from_raw(errno) {
                Errno::ENOENT if !exists => "no such file or directory in the image".to_string(),
                Errno::ENOENT => "no such file or directory: its interpreter (the #! program or \
                                  the ELF dynamic loader) is missing from the image"
                    .to_string(),
                Errno::ENOEXEC => {
                    "exec format error (not a program for this architecture?)".to_string()
                }
                _ => errno_text(errno),
            };
            SandboxError::Exec {
                path,
                errno,
                reason,
            }
        }
    }
}

/// The executable to re-exec as the helper.
fn helper_exe() -> Result<PathBuf> {
    match std::env::var_os(EXE_ENV) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => std::env::current_exe().map_err(io_error(Path::new("/proc/self/exe"))),
    }
}

/// What the reader threads send to the calling thread.
enum Event {
    Output(Stream, Vec<u8>),
    Report(Report),
    Garbled(String),
    /// The container process exec'd its command (or died trying: its failure report, if
    /// any, came before this).
    Execed,
    /// The master side of the container's pty (None: it never came).
    Console(Option<std::fs::File>),
    /// A reader is done (`true`: the report reader).
    Closed(bool),
}

fn pump_output(mut pipe: impl Read, stream: Stream, tx: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Event::Output(stream, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = tx.send(Event::Closed(false));
}

fn send_lines(buf: &mut Vec<u8>, tx: &mpsc::Sender<Event>) -> bool {
    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        let line = &line[..line.len() - 1];
        if line.is_empty() {
            continue;
        }
        let event = match serde_json::from_slice::<Report>(line) {
            Ok(r) => Event::Report(r),
            Err(_) => Event::Garbled(String::from_utf8_lossy(line).into_owned()),
        };
        if tx.send(event).is_err() {
            return false;
        }
    }
    true
}

fn poll_in(fds: &mut [libc::pollfd], timeout: i32) -> i32 {
    // SAFETY: `fds` is a valid slice of pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) }
}

/// Reads report lines, and watches the exec-sync pipe: on its EOF, whatever the container
/// process reported before it exec'd (or died) is already in the report pipe, so that is
/// drained first and `Execed` follows, in order.
fn pump_reports(mut pipe: std::fs::File, mut exec: Option<std::fs::File>, tx: mpsc::Sender<Event>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'outer: loop {
        let mut fds = vec![libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(e) = &exec {
            fds.push(libc::pollfd {
                fd: e.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if poll_in(&mut fds, -1) < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds.len() > 1 && fds[1].revents != 0 {
            // Nothing is ever written there: readable means EOF.
            exec = None;
            loop {
                let mut one = [libc::pollfd {
                    fd: pipe.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if poll_in(&mut one, 0) <= 0 || one[0].revents & libc::POLLIN == 0 {
                    break;
                }
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if !send_lines(&mut buf, &tx) || tx.send(Event::Execed).is_err() {
                break 'outer;
            }
            continue;
        }
        if fds[0].revents != 0 {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if !send_lines(&mut buf, &tx) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = tx.send(Event::Closed(true));
}

/// Receives one file descriptor (SCM_RIGHTS) from the container's console socket; None when
/// the container died before sending it.
fn receive_fd(sock: &OwnedFd) -> Option<std::fs::File> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            return fds
                .first()
                .map(|fd| unsafe { std::fs::File::from_raw_fd(*fd) });
        }
    }
    None
}

/// Kills and reaps the helper if `run` unwinds or returns early (its parent-death signal then
/// takes the container's PID 1 down too).
struct Running {
    child: Option<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Moves `fd` above the stdio numbers (the spawn reassigns 0-2 in the child).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let dup = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(|e| io_error(Path::new("report pipe"))(e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
}

pub(super) fn run(
    config: &SandboxConfig,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    on_started: &mut dyn FnMut(Started),
    cancel: &CancelToken,
) -> Result<SandboxOutcome> {
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    let tmp = std::env::temp_dir();
    // Private (0700) and removed when `run` returns; holds the spec and the /etc files.
    let dir = tempfile::Builder::new()
        .prefix("kiln-sandbox-")
        .tempdir_in(&tmp)
        .map_err(io_error(&tmp))?;
    let mut spec = build_spec(config, dir.path(), std::process::id() as i32)?;
    let (exec_r, exec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_error(Path::new("exec-sync pipe"))(e.into()))?;
    let exec_w = above_stdio(exec_w)?;
    let exec_fd = exec_w.as_raw_fd();
    spec.run.exec_fd = Some(exec_fd);
    // -t: the container sends its pty master back over a socket pair.
    let console = match config.container.console {
        Some(_) => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            let (ours, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| io_error(Path::new("console socket"))(e.into()))?;
            let theirs = above_stdio(theirs)?;
            spec.run.console_fd = Some(theirs.as_raw_fd());
            Some((ours, theirs))
        }
        None => None,
    };
    let console_fd = spec.run.console_fd.unwrap_or(-1);
    let spec_path = dir.path().join("config.json");
    let json = serde_json::to_vec(&spec).map_err(|e| config_error(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spec_path)
            .map_err(io_error(&spec_path))?;
        f.write_all(&json).map_err(io_error(&spec_path))?;
    }

    let exe = helper_exe()?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_error(Path::new("report pipe"))(e.into()))?;
    let report_w = above_stdio(report_w)?;
    let report_fd = report_w.as_raw_fd();
    let clone = |f: &std::fs::File, what: &str| -> Result<Stdio> {
        Ok(Stdio::from(
            f.try_clone().map_err(io_error(Path::new(what)))?,
        ))
    };
    let (stdin, stdout, stderr) = match (&config.container.console, &config.stdin) {
        // The container's own pty replaces all three.
        (Some(_), _) => (Stdio::null(), Stdio::null(), Stdio::null()),
        (None, Some(f)) => (clone(f, "stdin")?, Stdio::piped(), Stdio::piped()),
        (None, None) => (Stdio::null(), Stdio::piped(), Stdio::piped()),
    };
    let mut command = Command::new(&exe);
    command
        .arg(HELPER_ARG)
        .arg(report_fd.to_string())
        .arg(&spec_path)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and touches
    // only the inherited report fd, which keeps its number (no dup2 that could clobber a
    // descriptor the spawn set up).
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(report_fd, libc::F_SETFD, 0) < 0
                || libc::fcntl(exec_fd, libc::F_SETFD, 0) < 0
                || (console_fd >= 0 && libc::fcntl(console_fd, libc::F_SETFD, 0) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tracing::debug!(exe = %exe.display(), args = ?config.args, rootfs = %spec.rootfs.display(), "starting sandbox");
    let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    drop(report_w);
    drop(exec_w);
    drop(command);
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let helper_pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            pump_output(out, Stream::Stdout, tx)
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            pump_output(err, Stream::Stderr, tx)
        }));
    }
    {
        let tx = tx.clone();
        let reports = std::fs::File::from(report_r);
        let exec = std::fs::File::from(exec_r);
        // Not joined once the exit is known: its EOF waits for the helper's own exit.
        std::thread::spawn(move || pump_reports(reports, Some(exec), tx));
    }
    if let Some(sock) = console {
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let _ = tx.send(Event::Console(receive_fd(&sock)));
            let _ = tx.send(Event::Closed(false));
        }));
    }
    drop(tx);
    let mut running = Running { child: Some(child) };

    // Output readers (and the console receiver); the report reader counts until the exit
    // report: the helper's own exit comes later, after the kernel has torn the namespaces
    // down (RCU grace periods), and nothing of the container is left by then anyway.
    let mut open = threads.len();
    let mut reports_open = true;
    let mut cancelled = false;
    let mut created = Vec::new();
    let mut failure = None;
    let mut exited = None;
    let mut garbled = Vec::new();
    let mut started = None;
    let mut console_master = None;
    let mut console_waiting = config.container.console.is_some();
    let mut execed = false;
    // `on_started`, once, when the command runs and no setup step failed.
    let mut notified = false;
    let mut notify = |started: Option<i32>, failure: &Option<_>, console: &mut Option<_>| {
        if let (false, Some(pid), None) = (notified, started, failure) {
            on_started(Started {
                pid,
                console: console.take(),
            });
        }
        notified = true;
    };
    while open > 0 || (reports_open && exited.is_none()) {
        match rx.recv_timeout(CANCEL_POLL) {
            Ok(Event::Output(stream, bytes)) => on_output(stream, &bytes),
            Ok(Event::Report(Report::Created { path })) => created.push(path),
            Ok(Event::Report(Report::Started { pid })) => started = Some(pid),
            Ok(Event::Console(master)) => {
                console_master = master;
                console_waiting = false;
            }
            Ok(Event::Execed) => execed = true,
            Ok(Event::Report(Report::Failed { failure: f })) => failure = Some(f),
            Ok(Event::Report(Report::Exited { code, signal })) => exited = Some((code, signal)),
            Ok(Event::Garbled(line)) => garbled.push(line),
            Ok(Event::Closed(true)) => reports_open = false,
            Ok(Event::Closed(false)) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Started once the command runs and, with a pty, its master came (the two arrive
        // from different threads, in either order).
        if execed && !console_waiting {
            notify(started, &failure, &mut console_master);
        }
        if !cancelled && cancel.is_cancelled() {
            cancelled = true;
            tracing::debug!(pid = helper_pid.as_raw(), "cancelling sandbox");
            // The helper turns SIGUSR1 into SIGKILL for PID 1 and reaps it, which takes the
            // whole pid namespace (and with it the mount namespace) down.
            if let Err(e) = kill(helper_pid, Signal::SIGUSR1) {
                tracing::warn!(error = %e, "cannot signal the sandbox helper");
            }
        }
    }
    // An exit report without a setup failure means the execve happened, even when the
    // exec pipe's EOF is still on its way (a command that exits at once).
    if exited.is_some() && !cancelled {
        notify(started, &failure, &mut console_master);
    }
    for t in threads {
        let _ = t.join();
    }
    let status = match running.child.take() {
        // PID 1 has been reaped, so every process of the sandbox is gone: the helper is
        // reaped in the background.
        Some(mut child) if exited.is_some() && !cancelled => {
            std::thread::spawn(move || child.wait());
            None
        }
        Some(mut child) => Some(child.wait().map_err(io_error(&exe))?),
        None => return Err(SandboxError::Cancelled),
    };
    if !garbled.is_empty() {
        tracing::warn!(lines = ?garbled, "unreadable sandbox reports");
    }
    if cancelled {
        return Err(SandboxError::Cancelled);
    }
    if let Some(f) = failure {
        let err = failure_error(f);
        tracing::debug!(error = %err, "sandbox setup failed");
        return Err(err);
    }
    match exited {
        Some((exit_code, signal)) => Ok(SandboxOutcome {
            exit_code,
            signal,
            created_mountpoints: created,
        }),
        None => Err(SandboxError::HelperExited {
            exe,
            status: status.map(|s| s.to_string()).unwrap_or_default(),
        }),
    }
}

/// Removes the mountpoints a run created (`created`: its `created_mountpoints`), deepest
/// first, and only while they are still empty (an empty directory or a zero-length file), so
/// anything the command wrote there stays, as BuildKit's mount-stub cleaner does. Never
/// follows a symlink: a path whose parents are no longer plain directories is left alone.
pub fn remove_created_mountpoints(rootfs: &Path, created: &[String]) -> Result<()> {
    'paths: for path in created.iter().rev() {
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
            .collect();
        let Some((last, parents)) = components.split_last() else {
            continue;
        };
        let mut host = rootfs.to_path_buf();
        for c in parents {
            host.push(c);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_dir() => {}
                _ => continue 'paths,
            }
        }
        host.push(last);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let removed = if meta.file_type().is_dir() {
            std::fs::remove_dir(&host)
        } else if meta.file_type().is_file() && meta.len() == 0 {
            std::fs::remove_file(&host)
        } else {
            continue;
        };
        match removed {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTEMPTY)
                    || e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&host)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::SandboxNetwork;
    use super::*;

    fn config(root: &Path) -> SandboxConfig {
        SandboxConfig {
            rootfs: root.to_path_buf(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/a/./b/../c/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "box".into(),
            network: SandboxNetwork::Host,
            container: Default::default(),
            mounts: vec![
                SandboxMount::Bind {
                    source: root.to_path_buf(),
                    target: "/x/y//z".into(),
                    readonly: false,
                },
                SandboxMount::Tmpfs {
                    target: "/x".into(),
                    size: None,
                },
            ],
            etc_hosts: "127.0.0.1 localhost\n".into(),
            resolv_conf: String::new(),
            insecure: false,
            no_new_privileges: false,
            stdin: None,
        }
    }

    #[test]
    fn spec_from_config() {
        let root = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = build_spec(&config(root.path()), dir.path(), 42).unwrap();
        assert_eq!(spec.cwd, "/a/c");
        assert_eq!(spec.parent_pid, 42);
        let targets: Vec<&str> = spec
            .mounts
            .iter()
            .map(|m| match m {
                SandboxMount::Bind { target, .. } | SandboxMount::Tmpfs { target, .. } => {
                    target.as_str()
                }
            })
            .collect();
        assert_eq!(targets, ["/x", "/x/y/z"]);
        assert_eq!(spec.etc_files.len(), 3);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "box\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        // The spec survives the trip through JSON.
        let back: ChildSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn invalid_configs() {
        let root = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let check = |f: &dyn Fn(&mut SandboxConfig), needle: &str| {
            let mut c = config(root.path());
            f(&mut c);
            let e = build_spec(&c, dir.path(), 1).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        check(&|c| c.args.clear(), "no command");
        check(&|c| c.args.push("a\0b".into()), "NUL");
        check(&|c| c.hostname.clear(), "hostname");
        check(
            &|c| c.rootfs = "/nonexistent/root".into(),
            "/nonexistent/root",
        );
        check(
            &|c| {
                c.mounts = vec![SandboxMount::Tmpfs {
                    target: "rel".into(),
                    size: None,
                }]
            },
            "not absolute",
        );
        check(
            &|c| {
                c.mounts = vec![SandboxMount::Tmpfs {
                    target: "/..".into(),
                    size: None,
                }]
            },
            "over the root",
        );
        check(
            &|c| {
                c.mounts = vec![SandboxMount::Bind {
                    source: "/nonexistent/src".into(),
                    target: "/t".into(),
                    readonly: true,
                }]
            },
            "does not exist",
        );
    }

    #[test]
    fn failure_messages() {
        let msg = |f: Failure| failure_error(f).to_string();
        assert_eq!(
            msg(Failure::NotFound {
                command: "foo".into()
            }),
            "exec: \"foo\": executable file not found in $PATH"
        );
        assert_eq!(
            msg(Failure::Exec {
                path: "/bin/foo".into(),
                errno: libc::ENOENT,
                exists: false
            }),
            "exec \"/bin/foo\": no such file or directory in the image"
        );
        assert!(msg(Failure::Exec {
            path: "/app".into(),
            errno: libc::ENOENT,
            exists: true
        })
        .contains("interpreter"));
        assert_eq!(
            msg(Failure::Exec {
                path: "/app".into(),
                errno: libc::EACCES,
                exists: true
            }),
            "exec \"/app\": permission denied"
        );
        assert!(msg(Failure::Step {
            step: "pivot_root".into(),
            errno: libc::EINVAL
        })
        .starts_with("sandbox setup failed: pivot_root: "));
    }

    #[test]
    fn removing_created_mountpoints() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run/secrets")).unwrap();
        std::fs::write(r.join("run/secrets/id"), b"").unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/hosts"), b"written by the step").unwrap();
        std::fs::create_dir_all(r.join("tmp/kept")).unwrap();
        std::fs::write(r.join("tmp/kept/file"), b"x").unwrap();
        // A symlinked parent (the step replaced a directory) is never followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("victim")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        let created: Vec<String> = [
            "/run",
            "/run/secrets",
            "/run/secrets/id",
            "/dev",
            "/etc",
            "/etc/hosts",
            "/tmp",
            "/tmp/kept",
            "/link/victim",
            "/gone",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        remove_created_mountpoints(r, &created).unwrap();
        assert!(!r.join("run").exists());
        assert!(!r.join("dev").exists());
        assert!(r.join("etc/hosts").exists());
        assert!(r.join("tmp/kept/file").exists());
        assert!(outside.path().join("victim").exists());
    }

    #[test]
    fn cancelled_before_start() {
        let root = tempfile::tempdir().unwrap();
        let token = CancelToken::new();
        token.cancel();
        let r = run(&config(root.path()), &mut |_, _| {}, &mut |_| {}, &token);
        assert!(matches!(r, Err(SandboxError::Cancelled)));
    }
}
