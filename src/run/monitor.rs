//! The monitor of a container: runs it in the sandbox, keeps its json-file log, records its
//! state (running with its pid, then the exit code and OOM kill), applies the restart policy
//! and runs its health checks, and releases everything (cgroups, network) when it ends.
//!
//! For `kiln run` without `-d` the CLI process itself is the monitor ([`supervise`] with an
//! [`Attach`]): no extra process on the hot path. Detached containers get their own monitor,
//! `kiln __monitor ROOT ID FD` ([`spawn`]): a fresh exec of kiln (never a fork of the
//! multi-threaded CLI) in its own session, which reports the first start on the pipe `FD` and
//! then lives as long as the container. It holds `running.lock` while the container runs, and
//! for a container with `-i`/`-t` serves [`super::attach`]'s socket (stdin, tty output,
//! resize) from before the first start; it exits with the container's last exit code.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;

use super::attach::AttachServer;
use super::cgroups::{Cgroup, Limits};
use super::logs::LogWriter;
use super::net::{self, NetSetup};
use super::state::{now_nanos, Container, Containers, State, Status};
use super::{io_err, rootfs, Result, RunError};
use crate::cache::snapshot::Snapshotter;
use crate::executor::sandbox::{
    self, caps, CancelToken, ContainerOptions, SandboxConfig, SandboxError, SandboxMount, Stream,
};

/// The word after the executable that selects the monitor.
pub const MONITOR_ARG: &str = "__monitor";

/// The pid signals are forwarded to by [`forward_signals`] (0: none yet).
static FORWARD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Attached runs: SIGINT/SIGTERM/SIGHUP/SIGQUIT reach the container instead of killing the
/// CLI (which would take the container down with it), as `docker run`'s signal proxy does.
pub fn forward_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: the handler only calls kill(2) with an atomic's value.
        unsafe {
            let _ = sigaction(s, &action);
        }
    }
}

/// Where an attached run's output goes (besides the log).
pub struct Attach<'a> {
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    /// `-i`: the container's stdin.
    pub stdin: Option<std::fs::File>,
    /// `-it`: our stdin is copied to the container's pty.
    pub tty_stdin: bool,
}

/// How one run of the container ended.
enum RunEnd {
    Exited {
        code: i32,
        oom: bool,
    },
    /// Setup failed before the command ran (docker's 125/126/127).
    Failed {
        code: i32,
        error: String,
    },
}

fn exit_code_for(e: &RunError) -> i32 {
    match e {
        RunError::Sandbox(SandboxError::NotFound { .. }) => 127,
        RunError::Sandbox(SandboxError::Exec { errno, .. }) if *errno == libc::ENOENT => 127,
        RunError::Sandbox(SandboxError::Exec { .. }) => 126,
        _ => 125,
    }
}

/// `/etc/hosts` of a container.
fn etc_hosts(c: &Container, ips: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in &c.config.extra_hosts {
        if let Some((name, ip)) = h.split_once(':') {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    for ip in ips {
        let mut names = vec![c.config.hostname.clone()];
        if c.config.name != c.config.hostname {
            names.push(c.config.name.clone());
        }
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    s
}

/// The user to run as, resolved from the container's own `/etc/passwd` and `/etc/group`.
pub fn resolve_user(
    snapshots: &dyn Snapshotter,
    c: &Container,
    spec: &str,
) -> Result<crate::executor::user::ResolvedUser> {
    let trivial = spec.is_empty() || spec == "root" || spec == "0" || spec == "0:0";
    let resolved = if trivial {
        crate::executor::user::resolve_user("", None)
    } else {
        // Only the two files are needed: gather them from the layers, top first.
        let tmp = tempfile::tempdir().map_err(io_err("creating", Path::new("/tmp")))?;
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(&etc).map_err(io_err("creating", &etc))?;
        for file in ["passwd", "group"] {
            for dir in layer_dirs(snapshots, c)? {
                let p = dir.join("etc").join(file);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() => {
                        std::fs::copy(&p, etc.join(file)).map_err(io_err("copying", &p))?;
                        break;
                    }
                    // A whiteout or anything else: the file is gone from here down.
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
        }
        crate::executor::user::resolve_user(spec, Some(tmp.path()))
    };
    resolved.map_err(|e| RunError::Container {
        id: c.short_id().to_string(),
        message: e.to_string(),
    })
}

/// The container's filesystem layers, top first (upper, then the image's).
fn layer_dirs(snapshots: &dyn Snapshotter, c: &Container) -> Result<Vec<PathBuf>> {
    match rootfs::for_sandbox(snapshots, c)? {
        (root, None) => Ok(vec![root]),
        (_, Some(opts)) => {
            let mut dirs = Vec::new();
            let mut lowers = Vec::new();
            for o in opts.split(',') {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    dirs.push(PathBuf::from(u));
                } else if let Some(l) = o.strip_prefix("lowerdir=") {
                    lowers.extend(l.split(':').map(PathBuf::from));
                }
            }
            dirs.extend(lowers);
            Ok(dirs)
        }
    }
}

/// Everything one start needs besides the process config.
struct Prepared {
    config: SandboxConfig,
    cgroup: Cgroup,
    net: NetSetup,
}

fn prepare(
    root: &Path,
    snapshots: &dyn Snapshotter,
    c: &Container,
    stdin: Option<std::fs::File>,
    console: Option<(u16, u16)>,
) -> Result<Prepared> {
    let cfg = &c.config;
    let user = resolve_user(snapshots, c, &cfg.user)?;
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            if user.home.is_empty() {
                "/"
            } else {
                &user.home
            }
        ));
    }
    let (rootfs, overlay) = rootfs::for_sandbox(snapshots, c)?;
    let volumes = super::volume::Volumes::open(root)?;
    let mut mounts = Vec::new();
    for m in &cfg.mounts {
        match m.kind.as_str() {
            "volume" => mounts.push(SandboxMount::Bind {
                source: volumes.get(&m.source)?.mountpoint,
                target: m.destination.clone(),
                readonly: !m.rw,
            }),
            "bind" => mounts.push(SandboxMount::Bind {
                source: PathBuf::from(&m.source),
                target: m.destination.clone(),
                readonly: !m.rw,
            }),
            _ => mounts.push(SandboxMount::Tmpfs {
                target: m.destination.clone(),
                size: m.size,
            }),
        }
    }
    let cgroup = Cgroup::create(
        &cfg.id,
        &Limits {
            memory: cfg.memory,
            nano_cpus: cfg.nano_cpus,
            pids: cfg.pids_limit,
        },
    )?;
    let net = match net::setup(root, c) {
        Ok(n) => n,
        Err(e) => {
            let _ = cgroup.remove();
            return Err(e);
        }
    };
    let mask = |names: &[String]| {
        names
            .iter()
            .filter_map(|n| caps::parse_cap(n))
            .fold(0u64, |m, c| m | c)
    };
    let config = SandboxConfig {
        rootfs,
        args: std::iter::once(cfg.path.clone())
            .chain(cfg.args.iter().cloned())
            .collect(),
        env,
        cwd: cfg.working_dir.clone(),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids,
        hostname: cfg.hostname.clone(),
        network: net.sandbox.clone(),
        mounts,
        etc_hosts: if net.host_files {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            etc_hosts(c, &net.ips)
        },
        resolv_conf: net.resolv_conf.clone(),
        insecure: false,
        no_new_privileges: cfg.no_new_privileges,
        stdin,
        container: ContainerOptions {
            overlay,
            readonly_rootfs: cfg.readonly_rootfs,
            cap_add: mask(&cfg.cap_add),
            cap_drop: mask(&cfg.cap_drop),
            cgroup_procs: cgroup.procs_files(),
            init: cfg.init,
            console,
            join_pid: None,
        },
    };
    Ok(Prepared {
        config,
        cgroup,
        net,
    })
}

/// Releases what a run held (idempotent; also used by `rm` and `start` after a crash).
pub fn release(root: &Path, c: &Container) {
    let cg = Cgroup::locate(&c.config.id);
    cg.kill_all();
    if let Err(e) = cg.remove() {
        tracing::warn!(container = c.short_id(), error = %e, "cannot remove cgroups");
    }
    net::teardown(root, c);
}

/// Runs the container once.
fn run_once(
    root: &Path,
    snapshots: &dyn Snapshotter,
    c: &Container,
    log: &Arc<Mutex<LogWriter>>,
    attach: &mut Option<Attach>,
    server: Option<&AttachServer>,
    on_started: &mut dyn FnMut(i32),
) -> (RunEnd, Option<std::thread::JoinHandle<()>>) {
    let stdin = match attach.as_mut() {
        Some(a) => a.stdin.take(),
        None => server.and_then(AttachServer::stdin_for_run),
    };
    let console = c.config.tty.then(|| {
        let size = match attach {
            Some(_) => super::exec::terminal_size(0),
            None => c.config.console_size.filter(|(r, c)| *r > 0 && *c > 0),
        };
        size.unwrap_or((24, 80))
    });
    let prepared = match prepare(root, snapshots, c, stdin, console) {
        Ok(p) => p,
        Err(e) => {
            let end = RunEnd::Failed {
                code: exit_code_for(&e),
                error: e.to_string(),
            };
            return (end, None);
        }
    };
    if let Err(e) = c.update_state(|s| {
        s.networks = prepared.net.infos.clone();
        s.ports = prepared.net.ports.clone();
    }) {
        tracing::warn!(error = %e, "cannot record the network state");
    }
    let attached = attach.is_some();
    let tty_stdin = attach.as_ref().is_some_and(|a| a.tty_stdin);
    let mut pump = None;
    let mut started = |s: sandbox::Started| {
        if let Some(master) = s.console {
            // The pty's output goes to the log (and our terminal when attached, or the
            // attach socket's clients).
            let log = Arc::clone(log);
            let server = server.cloned();
            if let Some(srv) = &server {
                srv.set_console(&master);
            }
            pump = Some(super::exec::pump_console(
                master,
                tty_stdin,
                attached,
                move |bytes: &[u8]| {
                    if let Ok(mut l) = log.lock() {
                        l.write(Stream::Stdout, bytes);
                    }
                    if let Some(srv) = &server {
                        srv.output(bytes);
                    }
                    if attached {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(bytes);
                        let _ = out.flush();
                    }
                },
            ));
        }
        on_started(s.pid);
    };
    let mut on_output = |stream: Stream, bytes: &[u8]| {
        if let Ok(mut l) = log.lock() {
            l.write(stream, bytes);
        }
        if let Some(a) = attach.as_mut() {
            let w: &mut dyn Write = match stream {
                Stream::Stdout => &mut *a.stdout,
                Stream::Stderr => &mut *a.stderr,
            };
            let _ = w.write_all(bytes);
            let _ = w.flush();
        }
    };
    let result = sandbox::run_observed(
        &prepared.config,
        &mut on_output,
        &mut started,
        &CancelToken::new(),
    );
    if let Some(p) = pump {
        // Every process of the container is gone: the master reads EOF soon.
        let _ = p.join();
    }
    if let Ok(mut l) = log.lock() {
        l.flush();
    }
    let oom = prepared.cgroup.oom_kills() > 0;
    // The network's release waits on the kernel (a veth deletion waits for RCU): it goes on
    // while we record the exit (and remove a --rm container); the caller joins it.
    let net = prepared.net;
    let net_release = {
        let root = root.to_path_buf();
        let c = c.clone();
        std::thread::spawn(move || {
            drop(net);
            net::teardown(&root, &c);
        })
    };
    if let Err(e) = prepared.cgroup.remove() {
        tracing::warn!(container = c.short_id(), error = %e, "cannot remove cgroups");
    }
    let end = match result {
        Ok(outcome) => RunEnd::Exited {
            code: outcome.exit_code,
            oom,
        },
        Err(e) => {
            let e = RunError::from(e);
            RunEnd::Failed {
                code: exit_code_for(&e),
                error: e.to_string(),
            }
        }
    };
    (end, Some(net_release))
}

/// What the first start of [`supervise`] reports: Ok once the command runs.
pub type StartReport<'a> = &'a mut dyn FnMut(std::result::Result<(), String>);

/// Runs the container until it ends for good (restart policy included); returns the last
/// exit code. `report` hears about the first start once.
pub fn supervise(
    root: &Path,
    snapshots: &dyn Snapshotter,
    c: &Container,
    attach: Option<Attach>,
    report: StartReport,
) -> Result<i32> {
    supervise_with(root, snapshots, c, attach, false, report)
}

/// [`supervise`]; `serve`: a detached container's monitor serves its attach socket.
fn supervise_with(
    root: &Path,
    snapshots: &dyn Snapshotter,
    c: &Container,
    mut attach: Option<Attach>,
    serve: bool,
    report: StartReport,
) -> Result<i32> {
    let Some(running) = c.try_running_lock()? else {
        let msg = format!("container {} is already running", c.short_id());
        report(Err(msg.clone()));
        return Err(RunError::Conflict(msg));
    };
    // Before the first start: `docker run -it` attaches, then starts.
    let server = match serve.then(|| AttachServer::listen(c)).transpose() {
        Ok(s) => s.flatten(),
        Err(e) => {
            report(Err(e.to_string()));
            return Err(e);
        }
    };
    let server = server.as_ref();
    let log = Arc::new(Mutex::new(LogWriter::open(&c.log_path())?));
    let mut reported = false;
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    let mut net_release: Option<std::thread::JoinHandle<()>> = None;
    let code = loop {
        let started = Instant::now();
        let monitor_pid = std::process::id() as i32;
        let health = Arc::new(Mutex::new(None::<super::exec::HealthChecker>));
        let mut on_started = |pid: i32| {
            FORWARD_PID.store(pid, Ordering::SeqCst);
            let r = c.update_state(|s| {
                s.status = Status::Running;
                s.pid = pid;
                s.monitor_pid = monitor_pid;
                s.started_at = now_nanos();
                s.error.clear();
                s.oom_killed = false;
                if !first {
                    s.restart_count += 1;
                }
                if c.config
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"))
                {
                    s.health = Some(super::state::Health {
                        status: "starting".into(),
                        ..Default::default()
                    });
                }
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot record the start");
            }
            if let Ok(mut h) = health.lock() {
                *h = super::exec::HealthChecker::start(root, c, pid);
            }
            if !reported {
                reported = true;
                report(Ok(()));
            }
        };
        if let Some(h) = net_release.take() {
            let _ = h.join();
        }
        let (end, release) = run_once(
            root,
            snapshots,
            c,
            &log,
            &mut attach,
            server,
            &mut on_started,
        );
        if let Some(s) = server {
            s.run_ended();
        }
        net_release = release;
        FORWARD_PID.store(0, Ordering::SeqCst);
        if let Ok(mut h) = health.lock() {
            h.take();
        }
        first = false;
        let (code, oom, error) = match end {
            RunEnd::Exited { code, oom } => (code, oom, String::new()),
            RunEnd::Failed { code, error } => {
                if !reported {
                    reported = true;
                    report(Err(error.clone()));
                }
                (code, false, error)
            }
        };
        let state = c.update_state(|s| {
            s.status = Status::Exited;
            s.pid = 0;
            s.exit_code = code;
            s.oom_killed = oom;
            s.error = error.clone();
            s.finished_at = now_nanos();
            s.networks.clear();
            s.ports.clear();
            if let Some(h) = &mut s.health {
                h.status = "unhealthy".into();
            }
        })?;
        let policy = &c.config.restart_policy;
        let restart = !state.manually_stopped
            && error.is_empty()
            && match policy.name.as_str() {
                "always" | "unless-stopped" => true,
                "on-failure" => {
                    code != 0
                        && (policy.maximum_retry_count == 0
                            || state.restart_count < policy.maximum_retry_count)
                }
                _ => false,
            };
        if !restart {
            break code;
        }
        // docker's backoff: 100 ms doubling, back to 100 ms after 10 s of running.
        if started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
        }
        c.update_state(|s| s.status = Status::Restarting)?;
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(60));
        if c.stored_state()?.manually_stopped {
            c.update_state(|s| s.status = Status::Exited)?;
            break code;
        }
    };
    if server.is_some() {
        let _ = std::fs::remove_file(super::attach::socket_path(c));
    }
    // --rm: gone before anyone waiting on the lock (stop, wait) hears of the exit.
    if c.config.auto_remove {
        super::state::record_removed_exit(root, c.id(), code);
        if let Err(e) = super::container::remove_files(root, c, true) {
            tracing::warn!(container = c.short_id(), error = %e, "--rm: cannot remove the container");
        }
    }
    if let Some(h) = net_release.take() {
        let _ = h.join();
    }
    drop(running);
    Ok(code)
}

/// Starts a detached container: spawns `kiln __monitor ROOT ID FD` in its own session and
/// waits for its report of the first start.
pub fn spawn(root: &Path, c: &Container) -> Result<()> {
    let exe = std::env::var_os(sandbox::EXE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .map_or_else(std::env::current_exe, Ok)
        .map_err(io_err("locating", Path::new("/proc/self/exe")))?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating", Path::new("a pipe"))(e.into()))?;
    let wfd = w.as_raw_fd();
    let monitor_log = c.path("monitor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&monitor_log)
        .map_err(io_err("opening", &monitor_log))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(MONITOR_ARG)
        .arg(root)
        .arg(&c.config.id)
        .arg(wfd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: async-signal-safe calls only, in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::fcntl(wfd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err("starting the monitor", &exe))?;
    drop(w);
    drop(cmd);
    let mut text = String::new();
    let mut reader = std::fs::File::from(r);
    let _ = std::io::Read::read_to_string(&mut reader, &mut text);
    // The monitor stays in its session; reap it if it already ended (it never blocks long:
    // the pipe closes only when it exits or after its report).
    let _ = child.try_wait();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    match serde_json::from_str::<std::result::Result<(), String>>(text.trim()) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Container {
            id: c.short_id().to_string(),
            message: e,
        }),
        Err(_) => Err(RunError::Container {
            id: c.short_id().to_string(),
            message: format!(
                "its monitor exited without reporting (see {})",
                monitor_log.display()
            ),
        }),
    }
}

/// Entry point of `kiln __monitor ROOT ID FD`.
pub fn monitor_main(args: &[String]) -> ! {
    let [root, id, fd] = args else {
        eprintln!("kiln __monitor: internal command of kiln (usage: __monitor ROOT ID FD)");
        std::process::exit(125);
    };
    // SAFETY: the fd was inherited for us alone.
    let mut pipe = fd
        .parse::<i32>()
        .ok()
        .filter(|fd| *fd > 2)
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    if let Some(p) = &pipe {
        // Our children must not keep the CLI waiting.
        // SAFETY: F_SETFD on our own descriptor.
        unsafe {
            libc::fcntl(p.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // Terminal signals are not ours (we have no terminal); SIGTERM is forwarded.
    // SAFETY: setting SIG_IGN is always safe.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    forward_signals();
    let root = PathBuf::from(root);
    let mut report = |r: std::result::Result<(), String>| {
        if let Some(mut p) = pipe.take() {
            let _ = p.write_all(serde_json::to_string(&r).unwrap_or_default().as_bytes());
        }
    };
    let result = (|| {
        let c = Containers::open(&root)?.find(id)?;
        let snapshots = super::rootfs::open_snapshots(&root)?;
        supervise_with(&root, snapshots.as_ref(), &c, None, true, &mut report)
    })();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            report(Err(e.to_string()));
            eprintln!("kiln __monitor {id}: {e}");
            std::process::exit(125)
        }
    }
}

/// Marks a stale "running" state (its monitor is gone) as exited and releases what it held.
///
/// Only a dead monitor counts: the state is read once, and a running state is stale only
/// when nobody holds `running.lock`. (Comparing two reads would take any state the live
/// monitor writes in between, such as its network set-up or the start, for a crash, and
/// release the container's network and processes under it.)
pub fn settle(root: &Path, c: &Container) -> Result<State> {
    // The common case costs one read and one lock probe.
    let stored = c.stored_state()?;
    if !stored.is_running() || c.monitor_alive() {
        return Ok(stored);
    }
    // Running, and nobody holds the lock: the monitor is gone, or it wrote the exit and
    // let go just now; `state` reads again and tells which.
    let real = c.state()?;
    if c.stored_state()?.is_running() {
        release(root, c);
        // Written only if the state still says running.
        return c.update_state(|s| {
            if s.is_running() {
                *s = real.clone();
            }
        });
    }
    Ok(real)
}
