//! The sandbox: runs one command in a container made from an already-prepared root
//! filesystem, the way BuildKit runs a `RUN` step through runc (and `kiln run` will reuse it).
//!
//! [`run`] never forks the calling (possibly multi-threaded) process: it spawns our own binary
//! again (`$KILN_SANDBOX_EXE`, default the current executable) as `kiln __sandbox <fd> <config>`.
//! That helper is single-threaded: it unshares mount/UTS/IPC/pid namespaces (and the network
//! namespace for [`SandboxNetwork::None`]), forks the container's PID 1, and waits for it,
//! forwarding SIGTERM/SIGINT. PID 1 sets the container up through the [`syscall::Syscall`]
//! trait (see [`child`] for the order), and execs the command.
//!
//! - Parent ⇄ helper: the config as JSON in a private temp dir ([`spec::ChildSpec`]); reports
//!   back as JSON lines on an inherited close-on-exec pipe ([`spec::Report`]): mountpoints
//!   created in the rootfs, a structured setup failure, the exit status.
//! - Output: stdout and stderr are pipes, read by one thread each in the parent and handed to
//!   `on_output` chunk by chunk, on the calling thread, as they come. Nothing is clipped.
//! - Security (docker/BuildKit defaults): docker's capability set, the default seccomp deny
//!   list ([`seccomp`]), masked and read-only `/proc` and `/sys` paths, read-only `/sys`, no
//!   no_new_privs (BuildKit's `WithNewPrivileges`, so `sudo` works). `insecure` lifts all of
//!   that (`RUN --security=insecure`).
//! - Nothing of the sandbox reaches the layer except what the command writes: `/etc/hosts`,
//!   `/etc/resolv.conf`, `/etc/hostname` are read-only binds of files outside the rootfs;
//!   missing mountpoints the sandbox had to create are listed in
//!   [`SandboxOutcome::created_mountpoints`] (remove them with [`remove_created_mountpoints`]).
//! - Cleanup: every mount lives in the sandbox's private mount namespace, which dies with its
//!   last process; killing PID 1 kills the whole pid namespace. [`run_with_cancel`] returns
//!   only after the helper reaped PID 1, i.e. after every process of the sandbox is gone. If
//!   the parent dies, parent-death signals take the helper and PID 1 down with it.

pub mod caps;
pub mod child;
pub mod mounts;
mod parent;
pub mod seccomp;
pub mod spec;
pub mod syscall;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use child::child_main;
pub use parent::remove_created_mountpoints;

/// The word after the executable that selects the helper (`kiln __sandbox …`).
pub const HELPER_ARG: &str = "__sandbox";
/// The environment variable naming the executable to re-exec as the helper.
pub const EXE_ENV: &str = "KILN_SANDBOX_EXE";

/// The sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxNetwork {
    /// Share the host's network namespace (`RUN --network=default|host`).
    Host,
    /// A new network namespace with only `lo`.
    None,
    /// Join the persistent network namespace bind-mounted at this path (`kiln run`'s bridge
    /// and user networks).
    Join(PathBuf),
}

/// What `kiln run` adds to a sandbox; all off (the default) for build steps.
#[derive(Debug, Default)]
pub struct ContainerOptions {
    /// Overlay mount options (`lowerdir=…,upperdir=…,workdir=…`) for the rootfs: the sandbox
    /// mounts it on `rootfs` in its own mount namespace, so it goes away with the container.
    pub overlay: Option<String>,
    /// `--read-only`: the root is remounted read-only after `pivot_root`.
    pub readonly_rootfs: bool,
    /// `--cap-add` / `--cap-drop` as masks (applied to docker's default set).
    pub cap_add: u64,
    pub cap_drop: u64,
    /// `cgroup.procs` files the container's first process writes itself into before setup.
    pub cgroup_procs: Vec<PathBuf>,
    /// `--init`: PID 1 stays a tiny reaper that forwards signals to the command.
    pub init: bool,
    /// `-t`: the container gets a pty of its own devpts (`/dev/pts/0`) as stdin/stdout/stderr
    /// and controlling terminal, of this size (rows, columns); its master side comes back in
    /// [`Started::console`].
    pub console: Option<(u16, u16)>,
    /// `exec`: join the namespaces (and the cgroups in `cgroup_procs`) of this running
    /// container process instead of making new ones; no rootfs set-up.
    pub join_pid: Option<i32>,
}

/// A mount added after the standard ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxMount {
    /// A host file or directory; `target` is absolute in the container.
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777), `size` in bytes.
    Tmpfs { target: String, size: Option<u64> },
}

/// What to run, and where.
#[derive(Debug)]
pub struct SandboxConfig {
    /// An already-prepared writable root (an overlay mount made by the caller).
    pub rootfs: PathBuf,
    /// argv; `args[0]` is looked up in the image's `$PATH` (from `env`) unless it has a slash.
    pub args: Vec<String>,
    /// `KEY=VALUE`, exactly the process's environment.
    pub env: Vec<String>,
    /// Absolute; created if missing (0755, owned by the user), like BuildKit.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub network: SandboxNetwork,
    /// Applied after the standard mounts, parents before children; missing targets are
    /// created inside the rootfs (never following a symlink out of it).
    pub mounts: Vec<SandboxMount>,
    /// Contents of `/etc/hosts` and `/etc/resolv.conf` (`/etc/hostname` is `hostname`).
    pub etc_hosts: String,
    pub resolv_conf: String,
    /// `RUN --security=insecure`: every capability, no seccomp, no masked paths, rw `/sys`.
    pub insecure: bool,
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities grant nothing (ignored
    /// when `insecure`).
    pub no_new_privileges: bool,
    /// None: `/dev/null`.
    pub stdin: Option<std::fs::File>,
    /// `kiln run` options (default for build steps).
    pub container: ContainerOptions,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOutcome {
    /// The exit code, 128+signal when killed.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Mountpoints the sandbox created in the rootfs (absolute container paths, parents
    /// first): they are in the rootfs's upper layer and must be kept out of the image.
    pub created_mountpoints: Vec<String>,
}

/// Which output pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Cancels a running sandbox from another thread: [`run_with_cancel`] then kills every process
/// of the sandbox and returns [`SandboxError::Cancelled`] once they are gone (within ~50 ms).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a sandboxed command could not run (its own non-zero exit is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {message}")]
    Config { message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the sandbox helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A kernel call of the container setup failed.
    #[error("sandbox setup failed: {step}: {source}")]
    Setup {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox helper: {message}")]
    Helper { message: String },
    #[error("exec: {command:?}: executable file not found in $PATH")]
    NotFound { command: String },
    #[error("exec {path:?}: {reason}")]
    Exec {
        path: String,
        errno: i32,
        reason: String,
    },
    #[error("the sandbox helper {exe} ended without a report ({status}); is `{HELPER_ARG}` wired into it?")]
    HelperExited { exe: PathBuf, status: String },
    #[error("the sandbox was cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, SandboxError>;

/// Runs the command and streams its output to `on_output` as it comes; blocks until every
/// process of the sandbox is gone.
pub fn run(
    config: &SandboxConfig,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<SandboxOutcome> {
    parent::run(config, on_output, &mut |_| {}, &CancelToken::new())
}

/// What [`run_observed`] hands over once the command runs.
#[derive(Debug)]
pub struct Started {
    /// Host pid of the container's first process.
    pub pid: i32,
    /// The master side of the container's pty (with [`ContainerOptions::console`]).
    pub console: Option<std::fs::File>,
}

/// [`run_with_cancel`], calling `on_started` once the command has been exec'd (setup
/// failures never reach it).
pub fn run_observed(
    config: &SandboxConfig,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    on_started: &mut dyn FnMut(Started),
    cancel: &CancelToken,
) -> Result<SandboxOutcome> {
    parent::run(config, on_output, on_started, cancel)
}

/// [`run`], stoppable from another thread through `cancel`.
pub fn run_with_cancel(
    config: &SandboxConfig,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    cancel: &CancelToken,
) -> Result<SandboxOutcome> {
    parent::run(config, on_output, &mut |_| {}, cancel)
}
