//! What travels between `run` (the parent) and the re-exec'd helper: the [`ChildSpec`] (JSON in
//! a private temp file) and the [`Report`]s the helper and the container process write back,
//! one JSON object per line, on the report pipe. The helper's command line is
//! `__sandbox <report fd> <config path>`: the fd is inherited under its own number (only its
//! close-on-exec flag is cleared in the spawned process), so it can never collide with the
//! descriptors the spawn itself sets up.
//!
//! Report stream: any number of `created`, then either `failed` (setup did not reach exec) or,
//! from the helper once the process is gone, `exited`. EOF comes when both the helper and the
//! container process are gone (the pipe is close-on-exec in the container process).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{SandboxMount, SandboxNetwork};

/// One file bind-mounted read-only over a path of the container (`/etc/hosts` …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcFile {
    /// Absolute path in the container.
    pub target: String,
    /// Host file outside the rootfs.
    pub source: PathBuf,
}

/// Everything the helper needs; built by the parent from a `SandboxConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Canonical host path of the prepared root filesystem.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Absolute, normalized.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub network: SandboxNetwork,
    /// Sorted so that a mount never hides one made after it (parents first).
    pub mounts: Vec<SandboxMount>,
    pub etc_files: Vec<EtcFile>,
    pub insecure: bool,
    /// `PR_SET_NO_NEW_PRIVS`. Off for builds, as BuildKit (`oci.WithNewPrivileges`) and docker
    /// do, so `USER app` + `RUN sudo …` works; `kiln run --security-opt no-new-privileges` can
    /// turn it on later.
    pub no_new_privileges: bool,
    /// The pid of the process that spawned the helper: the helper exits if it is gone.
    pub parent_pid: i32,
    /// `kiln run` additions (see `ContainerOptions`); all off for build steps.
    #[serde(default)]
    pub run: RunSpec,
}

/// The serializable part of `ContainerOptions`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunSpec {
    pub overlay: Option<String>,
    pub readonly_rootfs: bool,
    pub cap_add: u64,
    pub cap_drop: u64,
    pub cgroup_procs: Vec<PathBuf>,
    pub init: bool,
    /// Make a pty in the container's devpts (rows, columns) and send its master over the
    /// unix socket `console_fd` (inherited like the report fd).
    pub console: Option<(u16, u16)>,
    pub console_fd: Option<i32>,
    pub join_pid: Option<i32>,
    /// Write end of the exec-sync pipe, inherited under this number: the container process
    /// holds it (close-on-exec) until its `execve`, so EOF on it means "exec'd or gone".
    pub exec_fd: Option<i32>,
}

/// Why setup stopped before the command ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// A kernel call failed: what was being done and the errno.
    Step { step: String, errno: i32 },
    /// The spec or the environment is unusable.
    Invalid { message: String },
    /// `args[0]` has no slash and is in no `$PATH` directory of the image.
    NotFound { command: String },
    /// `execve` failed (`exists`: whether the path exists in the image).
    Exec {
        path: String,
        errno: i32,
        exists: bool,
    },
}

impl Failure {
    pub fn step(step: impl Into<String>, errno: nix::errno::Errno) -> Failure {
        Failure::Step {
            step: step.into(),
            errno: errno as i32,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::Invalid {
            message: message.into(),
        }
    }
}

/// One message on the report pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The container's first process exists, with this pid on the host.
    Started {
        pid: i32,
    },
    /// The sandbox created this path (absolute in the container) in the rootfs as a mountpoint.
    Created {
        path: String,
    },
    Failed {
        failure: Failure,
    },
    /// The container's process is gone: its exit code (128+signal when killed).
    Exited {
        code: i32,
        signal: Option<i32>,
    },
}

impl Report {
    /// The line written to the pipe (one `write`, below PIPE_BUF for all but huge paths).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let reports = [
            Report::Created {
                path: "/etc/hosts".into(),
            },
            Report::Failed {
                failure: Failure::Exec {
                    path: "/bin/foo".into(),
                    errno: 2,
                    exists: false,
                },
            },
            Report::Exited {
                code: 137,
                signal: Some(9),
            },
        ];
        for r in reports {
            let line = r.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            let back: Report = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, r);
        }
        let line = String::from_utf8(Report::Created { path: "/x".into() }.to_line()).unwrap();
        assert_eq!(line, "{\"type\":\"created\",\"path\":\"/x\"}\n");
    }
}
