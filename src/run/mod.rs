//! Running finished images as containers (`kiln run`, `create`, `start`, `ps`, `logs`, `stop`,
//! `exec`, …), the way docker does, without a daemon.
//!
//! A container is a directory under `ROOT/containers/<id>` ([`state`]): its configuration
//! (fixed at create), its state (rewritten atomically at every transition), its writable
//! layer (`upper`/`work` of an overlay on the image's snapshot chain, mounted by the sandbox
//! inside the container's own mount namespace, so nothing stays mounted when it dies), its
//! `/etc` files and its json-file log. Processes run in the sandbox of
//! [`crate::executor::sandbox`]. A [`monitor`] (the CLI itself for attached runs, a re-exec'd
//! `kiln __monitor` for detached ones) supervises each run: it holds `running.lock` for as
//! long as the container runs, writes the logs, records the exit and OOM kills, applies the
//! restart policy and runs health checks; a detached container with `-i` or `-t` has its
//! stdin pipe or pty master held by its monitor and reached through [`attach`]'s socket
//! (docker attach/resize through the daemon). A crashed monitor releases the lock and takes the
//! container down with it (parent-death signals), so [`state::Container::state`] always
//! reports the truth: a "running" state without a lock holder is an exit (255).

pub mod archive;
pub mod attach;
pub mod cgroups;
pub mod container;
pub mod create;
pub mod exec;
pub mod logs;
pub mod monitor;
pub mod net;
pub mod network;
pub mod rootfs;
pub mod state;
pub mod volume;

use std::path::PathBuf;

/// Errors of running containers.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// A path (or other object) that does not exist; the message says which.
    #[error("{0}")]
    NotFound(String),
    #[error("No such volume: {0}")]
    NoSuchVolume(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("image {0}")]
    Image(String),
    #[error("container {id}: {message}")]
    Container { id: String, message: String },
    #[error(transparent)]
    Sandbox(#[from] crate::executor::sandbox::SandboxError),
    #[error("snapshots: {0}")]
    Snapshot(#[from] crate::cache::snapshot::SnapshotError),
    #[error("cgroup {}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network: {0}")]
    Network(String),
}

pub type Result<T> = std::result::Result<T, RunError>;

/// Delays for polling a container's state or log: short at first, so a container that
/// ends at once is noticed at once, then doubling up to `max`, so a long wait costs little.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    /// 1 ms, doubling up to `max`.
    pub fn up_to(max: std::time::Duration) -> Backoff {
        Backoff {
            next: std::time::Duration::from_millis(1).min(max),
            max,
        }
    }

    /// The delay to wait now (the following one is twice as long, up to the maximum).
    pub fn delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Sleeps for [`Backoff::delay`].
    pub fn sleep(&mut self) {
        std::thread::sleep(self.delay());
    }
}

/// docker's rule for container and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (at least
/// two characters).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> RunError + 'a {
    move |source| RunError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut b = Backoff::up_to(Duration::from_millis(5));
        let delays: Vec<u128> = (0..5).map(|_| b.delay().as_millis()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("db") && valid_name("web-1.a_b"));
        assert!(!valid_name("a") && !valid_name("-x") && !valid_name("a/b") && !valid_name(""));
    }
}
