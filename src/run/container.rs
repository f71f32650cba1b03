//! Lifecycle commands on existing containers: start (detached), stop (STOPSIGNAL, then SIGKILL
//! after the timeout), kill, wait, remove. They talk to a running container through its state
//! and its first process's pid, and wait for it through `running.lock`.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::create::parse_signal;
use super::monitor::{self, settle};
use super::state::{Container, Status};
use super::volume::Volumes;
use super::{io_err, Result, RunError};

/// docker's default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: i64 = 10;
const POLL: Duration = Duration::from_millis(10);

/// Starts a created or exited container in the background (its own monitor).
pub fn start_detached(root: &Path, c: &Container) -> Result<()> {
    let s = settle(root, c)?;
    if s.is_running() {
        return Ok(());
    }
    c.update_state(|s| s.manually_stopped = false)?;
    monitor::spawn(root, c)
}

fn wait_released(c: &Container, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while c.monitor_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

fn signal_pid(c: &Container, pid: i32, signal: Signal) -> Result<()> {
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(RunError::Container {
            id: c.short_id().to_string(),
            message: format!("cannot send {signal} to pid {pid}: {e}"),
        }),
    }
}

/// `stop`: the stop signal, then SIGKILL after `timeout` seconds (the container's
/// `--stop-timeout`, else 10). No restart follows.
pub fn stop(root: &Path, c: &Container, timeout: Option<i64>) -> Result<()> {
    let s = settle(root, c)?;
    if !s.is_running() {
        return Ok(());
    }
    let s = c.update_state(|s| s.manually_stopped = true)?;
    let timeout = timeout
        .or(c.config.stop_timeout)
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    if s.status == Status::Running && s.pid > 0 {
        let signal = parse_signal(&c.config.stop_signal)?;
        signal_pid(c, s.pid, signal)?;
        let grace = Duration::from_secs(timeout.max(0) as u64);
        if wait_released(c, grace) {
            return Ok(());
        }
        let s = c.stored_state()?;
        if s.pid > 0 {
            signal_pid(c, s.pid, Signal::SIGKILL)?;
        }
    }
    if !wait_released(c, Duration::from_secs(30)) {
        return Err(RunError::Container {
            id: c.short_id().to_string(),
            message: "did not stop within 30 s of SIGKILL".into(),
        });
    }
    Ok(())
}

/// `kill [-s SIGNAL]` (SIGKILL by default).
pub fn kill(root: &Path, c: &Container, signal: Option<&str>) -> Result<()> {
    let s = settle(root, c)?;
    if s.status != Status::Running || s.pid <= 0 {
        return Err(RunError::Conflict(format!(
            "cannot kill container: {}: container {} is not running",
            c.config.name,
            c.short_id()
        )));
    }
    let signal = match signal {
        Some(sig) => parse_signal(sig)?,
        None => Signal::SIGKILL,
    };
    if signal == Signal::SIGKILL {
        c.update_state(|s| s.manually_stopped = true)?;
    }
    signal_pid(c, s.pid, signal)
}

/// `wait`: blocks until the container is not running; its exit code.
pub fn wait(root: &Path, c: &Container) -> Result<i32> {
    loop {
        let s = match settle(root, c) {
            Ok(s) => s,
            // Removed (--rm) while we waited: the exit code it left.
            Err(e) => return crate::run::state::removed_exit(root, c.id()).ok_or(e),
        };
        if !s.is_running() {
            return Ok(s.exit_code);
        }
        c.wait_unlocked()?;
    }
}

/// `rm [-f] [-v]`.
pub fn remove(root: &Path, c: &Container, force: bool, volumes: bool) -> Result<()> {
    let s = settle(root, c)?;
    if s.is_running() {
        if !force {
            return Err(RunError::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container \
                 before removing or force remove",
                c.config.name
            )));
        }
        c.update_state(|s| s.manually_stopped = true)?;
        if s.pid > 0 {
            signal_pid(c, s.pid, Signal::SIGKILL)?;
        }
        if !wait_released(c, Duration::from_secs(30)) {
            return Err(RunError::Container {
                id: c.short_id().to_string(),
                message: "did not stop within 30 s of SIGKILL".into(),
            });
        }
    }
    release_and_remove(root, c, volumes)
}

/// Releases what the container may still hold (after a crash), then removes it.
/// `container prune`: removes every container that is not running; their IDs.
pub fn prune(root: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for c in crate::run::state::Containers::open(root)?.list()? {
        if monitor::settle(root, &c)?.is_running() {
            continue;
        }
        release_and_remove(root, &c, false)?;
        removed.push(c.config.id.clone());
    }
    Ok(removed)
}

/// Stops the container when it runs, then starts it again (`restart`).
pub fn restart(root: &Path, c: &Container, timeout: Option<i64>) -> Result<()> {
    stop(root, c, timeout)?;
    start_detached(root, c)
}

pub fn release_and_remove(root: &Path, c: &Container, volumes: bool) -> Result<()> {
    monitor::release(root, c);
    remove_files(root, c, volumes)
}

/// Deletes the container's directory; anonymous volumes too with `volumes`. The container
/// must hold nothing any more (its monitor released cgroups and network).
pub fn remove_files(root: &Path, c: &Container, volumes: bool) -> Result<()> {
    let rootfs = c.path("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    let trash = c.dir.with_file_name(format!(".rm-{}", c.config.id));
    match std::fs::rename(&c.dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("removing", &c.dir)(e)),
    }
    std::fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))?;
    if volumes {
        let vols = Volumes::open(root)?;
        for m in c.config.mounts.iter().filter(|m| m.anonymous) {
            if let Err(e) = vols.remove(&m.source, true) {
                tracing::warn!(volume = %m.source, error = %e, "cannot remove anonymous volume");
            }
        }
    }
    Ok(())
}
