//! Processes in a running container: `kiln exec` and HEALTHCHECK runs. Both go through the
//! sandbox helper in join mode (it enters the container's cgroups, then its ipc, uts, net,
//! pid and mount namespaces, forks into the pid namespace and applies the container's
//! capabilities, seccomp profile and user). Also the pty of `-t`.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::libc;

use super::cgroups::Cgroup;
use super::state::{now_nanos, rfc3339_nanos, Container, HealthLog, Status};
use super::{Result, RunError};
use crate::executor::sandbox::{
    self, caps, CancelToken, ContainerOptions, SandboxConfig, SandboxError, SandboxNetwork, Stream,
};

/// The pty master whose window size follows our terminal's (SIGWINCH), -1 when none.
static WINCH_MASTER: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let master = WINCH_MASTER.load(Ordering::SeqCst);
    if master >= 0 {
        // SAFETY: ioctl is async-signal-safe; the winsize lives on this stack.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(master, libc::TIOCSWINSZ, &ws);
            }
        }
    }
}

/// The size (rows, columns) of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// Copies a container's pty: its output to `sink` until the container's side is closed,
/// our stdin to it (`stdin`), and our terminal's size changes (`follow_size`). Join the
/// handle after the container ended to get all of its output.
pub fn pump_console(
    master: std::fs::File,
    stdin: bool,
    follow_size: bool,
    mut sink: impl FnMut(&[u8]) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    if follow_size {
        WINCH_MASTER.store(master.as_raw_fd(), Ordering::SeqCst);
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let action = SigAction::new(
            SigHandler::Handler(on_winch),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only makes ioctl calls.
        unsafe {
            let _ = sigaction(Signal::SIGWINCH, &action);
        }
    }
    if stdin {
        if let Ok(mut m) = master.try_clone() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut m);
            });
        }
    }
    std::thread::spawn(move || {
        let mut master = master;
        let mut buf = [0u8; 8192];
        loop {
            match std::io::Read::read(&mut master, &mut buf) {
                Ok(0) => break,
                Ok(n) => sink(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: the container's side is closed.
                Err(_) => break,
            }
        }
        WINCH_MASTER.store(-1, Ordering::SeqCst);
    })
}

/// Puts a terminal in raw mode until dropped.
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// None when `fd` is not a terminal.
    pub fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: termios calls on a descriptor we were given; the struct is ours.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved in `enter`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// What `kiln exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// The running container's first process, or an error saying it is not running.
pub fn running_pid(c: &Container) -> Result<i32> {
    let s = c.state()?;
    if s.status != Status::Running || s.pid <= 0 {
        return Err(RunError::Conflict(format!(
            "container {} is not running",
            c.short_id()
        )));
    }
    Ok(s.pid)
}

/// The sandbox config of a process joining the container's namespaces.
pub fn join_config(
    snapshots: &dyn crate::cache::snapshot::Snapshotter,
    c: &Container,
    pid: i32,
    opts: &ExecOptions,
    stdin: Option<std::fs::File>,
    console: Option<(u16, u16)>,
) -> Result<SandboxConfig> {
    let cfg = &c.config;
    let user =
        super::monitor::resolve_user(snapshots, c, opts.user.as_deref().unwrap_or(&cfg.user))?;
    let mut env = cfg.env.clone();
    for e in &opts.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
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
    let mask = |names: &[String]| {
        names
            .iter()
            .filter_map(|n| caps::parse_cap(n))
            .fold(0u64, |m, c| m | c)
    };
    Ok(SandboxConfig {
        rootfs: c.path("rootfs"),
        args: opts.cmd.clone(),
        env,
        cwd: opts
            .workdir
            .clone()
            .unwrap_or_else(|| cfg.working_dir.clone()),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids,
        hostname: cfg.hostname.clone(),
        network: SandboxNetwork::Host,
        mounts: Vec::new(),
        etc_hosts: String::new(),
        resolv_conf: String::new(),
        insecure: false,
        no_new_privileges: cfg.no_new_privileges,
        stdin,
        container: ContainerOptions {
            cap_add: mask(&cfg.cap_add),
            cap_drop: mask(&cfg.cap_drop),
            cgroup_procs: Cgroup::locate(&cfg.id)
                .procs_files()
                .into_iter()
                .filter(|p| p.exists())
                .collect(),
            console,
            join_pid: Some(pid),
            ..Default::default()
        },
    })
}

/// Exit code of a process that could not start (docker's 126/127).
pub fn failure_code(e: &SandboxError) -> i32 {
    match e {
        SandboxError::NotFound { .. } => 127,
        SandboxError::Exec { errno, .. } if *errno == libc::ENOENT => 127,
        SandboxError::Exec { .. } => 126,
        _ => 125,
    }
}

/// Runs `opts.cmd` in the container, output to `out`/`err`; returns its exit code.
pub fn exec(
    snapshots: &dyn crate::cache::snapshot::Snapshotter,
    c: &Container,
    opts: &ExecOptions,
    stdin: Option<std::fs::File>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let pid = running_pid(c)?;
    let config = join_config(snapshots, c, pid, opts, stdin, None)?;
    let outcome = sandbox::run(&config, &mut |stream, bytes| {
        let w: &mut dyn Write = match stream {
            Stream::Stdout => &mut *out,
            Stream::Stderr => &mut *err,
        };
        let _ = w.write_all(bytes);
        let _ = w.flush();
    })?;
    Ok(outcome.exit_code)
}

/// Runs `opts.cmd` in the container on a pty of its own (`exec -t`), copied to our stdout
/// (and from our stdin with `interactive`); returns the exit code.
pub fn exec_tty(
    snapshots: &dyn crate::cache::snapshot::Snapshotter,
    c: &Container,
    opts: &ExecOptions,
    interactive: bool,
) -> Result<i32> {
    let pid = running_pid(c)?;
    let size = terminal_size(0).unwrap_or((24, 80));
    let config = join_config(snapshots, c, pid, opts, None, Some(size))?;
    let _raw = RawMode::enter(0);
    let mut pump = None;
    let r = sandbox::run_observed(
        &config,
        &mut |_, _| {},
        &mut |s| {
            if let Some(master) = s.console {
                pump = Some(pump_console(master, interactive, true, |bytes: &[u8]| {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(bytes);
                    let _ = out.flush();
                }));
            }
        },
        &CancelToken::new(),
    );
    if let Some(p) = pump {
        let _ = p.join();
    }
    Ok(r?.exit_code)
}

/// Runs a container's HEALTHCHECK on its schedule until dropped.
pub struct HealthChecker {
    _stop: mpsc::Sender<()>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const MAX_LOG: usize = 5;
const MAX_OUTPUT: usize = 4096;

impl HealthChecker {
    /// None when the container has no (or a `NONE`) health check.
    pub fn start(root: &Path, c: &Container, pid: i32) -> Option<HealthChecker> {
        let h = c.config.healthcheck.clone()?;
        let cmd: Vec<String> = match h.test.first().map(String::as_str) {
            Some("CMD") => h.test[1..].to_vec(),
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), h.test[1..].join(" ")],
            _ => return None,
        };
        if cmd.is_empty() {
            return None;
        }
        let nanos = |v: i64, d: Duration| {
            if v > 0 {
                Duration::from_nanos(v as u64)
            } else {
                d
            }
        };
        let interval = nanos(h.interval, DEFAULT_INTERVAL);
        let timeout = nanos(h.timeout, DEFAULT_INTERVAL);
        let start_period = nanos(h.start_period, Duration::ZERO);
        let start_interval = nanos(h.start_interval, Duration::from_secs(5));
        let retries = if h.retries > 0 { h.retries as u32 } else { 3 };
        let (tx, rx) = mpsc::channel::<()>();
        let c = c.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let Ok(snapshots) = super::rootfs::open_snapshots(&root) else {
                return;
            };
            let began = Instant::now();
            loop {
                let in_start = began.elapsed() < start_period;
                let wait = if in_start && h.start_interval > 0 {
                    start_interval
                } else {
                    interval
                };
                match rx.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let start = now_nanos();
                let opts = ExecOptions {
                    cmd: cmd.clone(),
                    ..Default::default()
                };
                let (code, output) = run_check(snapshots.as_ref(), &c, pid, &opts, timeout);
                let log = HealthLog {
                    start: rfc3339_nanos(start),
                    end: rfc3339_nanos(now_nanos()),
                    exit_code: code,
                    output,
                };
                let in_start = began.elapsed() < start_period;
                let r = c.update_state(|s| {
                    if s.status != Status::Running {
                        return;
                    }
                    let health = s.health.get_or_insert_with(Default::default);
                    if code == 0 {
                        health.status = "healthy".into();
                        health.failing_streak = 0;
                    } else if !in_start {
                        health.failing_streak += 1;
                        if health.failing_streak >= retries {
                            health.status = "unhealthy".into();
                        }
                    }
                    health.log.push(log);
                    let n = health.log.len();
                    if n > MAX_LOG {
                        health.log.drain(..n - MAX_LOG);
                    }
                });
                if r.is_err() {
                    return;
                }
            }
        });
        Some(HealthChecker { _stop: tx })
    }
}

fn run_check(
    snapshots: &dyn crate::cache::snapshot::Snapshotter,
    c: &Container,
    pid: i32,
    opts: &ExecOptions,
    timeout: Duration,
) -> (i32, String) {
    let config = match join_config(snapshots, c, pid, opts, None, None) {
        Ok(c) => c,
        Err(e) => return (-1, e.to_string()),
    };
    let cancel = CancelToken::new();
    let timer = {
        let cancel = cancel.clone();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                cancel.cancel();
            }
        });
        tx
    };
    let mut output = Vec::new();
    let r = sandbox::run_with_cancel(
        &config,
        &mut |_, bytes| {
            if output.len() < MAX_OUTPUT {
                output.extend_from_slice(&bytes[..bytes.len().min(MAX_OUTPUT - output.len())]);
            }
        },
        &cancel,
    );
    drop(timer);
    let text = String::from_utf8_lossy(&output).into_owned();
    match r {
        Ok(o) => (o.exit_code, text),
        Err(SandboxError::Cancelled) => (
            -1,
            format!("Health check exceeded timeout ({}s)", timeout.as_secs_f64()),
        ),
        Err(e) => (-1, e.to_string()),
    }
}
