//! RUN: a step executed in a sandbox on a writable snapshot of the stage, its changes becoming
//! the layer. Also the RUN mounts: bind (context, stage, image), cache (persistent under the
//! root), tmpfs, secret and ssh. Mount targets never reach the layer.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::sandbox::{self, SandboxConfig, SandboxMount, SandboxNetwork, Stream};
use super::user::resolve_user;
use super::ExecError;
use crate::cache::lock::FileLock;
use crate::cache::snapshot::View;
use crate::parser::mount::{Mount, MountType, Sharing};

/// Where a secret's value comes from (`--secret id=ID,src=FILE|env=VAR`).
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Build-wide settings RUN steps need.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh ID=SOCKET` (`default` when no ID is given).
    pub ssh: BTreeMap<String, PathBuf>,
    /// `--allow security.insecure`.
    pub allow_insecure: bool,
}

/// How many output lines a failure message repeats.
const TAIL_LINES: usize = 20;

/// Parses `--secret id=ID[,src=FILE|source=FILE|env=VAR][,type=file|env]`.
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", _)) => {}
            _ => {
                return Err(format!(
                    "invalid --secret {spec:?}: expected id=ID,src=FILE or id=ID,env=VAR"
                ))
            }
        }
    }
    let id = id.ok_or_else(|| format!("invalid --secret {spec:?}: id= is required"))?;
    let source = match (src, env) {
        (Some(p), _) => SecretSource::File(p),
        (None, Some(e)) => SecretSource::Env(e),
        // Docker: with neither, an environment variable named like the id.
        (None, None) => SecretSource::Env(id.clone()),
    };
    Ok((id, source))
}

/// Parses `--ssh default` / `--ssh ID=SOCKET` (no socket: `$SSH_AUTH_SOCK`).
pub fn parse_ssh(spec: &str) -> Result<(String, PathBuf), String> {
    let (id, path) = match spec.split_once('=') {
        Some((id, path)) => (id.to_string(), PathBuf::from(path)),
        None => (
            spec.to_string(),
            std::env::var_os("SSH_AUTH_SOCK")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    format!("--ssh {spec}: no socket given and SSH_AUTH_SOCK is not set")
                })?,
        ),
    };
    Ok((id, path))
}

/// What a RUN needs from the builder to set up its mounts.
pub struct MountSources<'a> {
    /// Host path of a context path (the default source of bind mounts).
    pub context: &'a dyn Fn(&str) -> Result<PathBuf, ExecError>,
    /// A read-only view of a stage (by name or index) or image, for `from=`.
    pub from: &'a dyn Fn(&str) -> Result<View, ExecError>,
    /// `root/cache/mounts`: where cache mounts live between builds.
    pub cache_dir: PathBuf,
    /// Scratch space for secrets and rw binds.
    pub tmp: &'a Path,
}

/// Everything that must stay alive (views, locks, temp dirs) while the sandbox runs.
#[derive(Default)]
struct Held {
    views: Vec<View>,
    locks: Vec<FileLock>,
    temps: Vec<tempfile::TempDir>,
}

/// Resolves the RUN mounts into sandbox mounts (and extra env for `secret,env=` and ssh).
fn prepare_mounts(
    mounts: &[Mount],
    sources: &MountSources,
    settings: &RunSettings,
    held: &mut Held,
    env: &mut Vec<String>,
) -> Result<Vec<SandboxMount>, ExecError> {
    let mut out = Vec::new();
    let mut ssh_n = 0;
    for m in mounts {
        match m.kind {
            MountType::Bind => {
                let target = m
                    .target
                    .clone()
                    .ok_or_else(|| ExecError::Failed("bind mount requires a target".into()))?;
                let source = m.source.clone().unwrap_or_else(|| ".".into());
                let host = match &m.from {
                    None => (sources.context)(&source)?,
                    Some(from) => {
                        let view = (sources.from)(from)?;
                        let p = super::rootfs::resolve_in_root(view.path(), &source, true)?;
                        held.views.push(view);
                        p
                    }
                };
                if !host.exists() {
                    return Err(ExecError::Failed(format!(
                        "--mount source {source:?} not found"
                    )));
                }
                let host = if m.readonly {
                    host
                } else {
                    // Writes to a rw bind mount are discarded: give the step a copy.
                    let t = tempfile::tempdir_in(sources.tmp)
                        .map_err(|e| ExecError::io(sources.tmp, e))?;
                    let copy = t.path().join("src");
                    super::export_fs::copy_tree_or_file(&host, &copy)?;
                    held.temps.push(t);
                    copy
                };
                out.push(SandboxMount::Bind {
                    source: host,
                    target,
                    readonly: m.readonly,
                });
            }
            MountType::Cache => {
                let target = m
                    .target
                    .clone()
                    .ok_or_else(|| ExecError::Failed("cache mount requires a target".into()))?;
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let name = crate::cache::Digest::of(id.as_bytes()).hex()[..32].to_string();
                std::fs::create_dir_all(&sources.cache_dir)
                    .map_err(|e| ExecError::io(&sources.cache_dir, e))?;
                let mut dir = sources.cache_dir.join(&name);
                let lock_path = sources.cache_dir.join(format!("{name}.lock"));
                match m.sharing.unwrap_or(Sharing::Shared) {
                    Sharing::Shared => {}
                    Sharing::Locked => held.locks.push(
                        FileLock::exclusive(&lock_path)
                            .map_err(|e| ExecError::Store(e.to_string()))?,
                    ),
                    Sharing::Private => match FileLock::try_exclusive(&lock_path)
                        .map_err(|e| ExecError::Store(e.to_string()))?
                    {
                        Some(l) => held.locks.push(l),
                        None => {
                            let t = tempfile::tempdir_in(sources.tmp)
                                .map_err(|e| ExecError::io(sources.tmp, e))?;
                            dir = t.path().join("cache");
                            held.temps.push(t);
                        }
                    },
                }
                if !dir.exists() {
                    let staging = sources
                        .cache_dir
                        .join(format!(".new-{name}-{}", std::process::id()));
                    match (&m.from, &m.source) {
                        (Some(from), source) => {
                            let view = (sources.from)(from)?;
                            let src = super::rootfs::resolve_in_root(
                                view.path(),
                                source.as_deref().unwrap_or("/"),
                                true,
                            )?;
                            super::export_fs::copy_tree_or_file(&src, &staging)?;
                        }
                        _ => std::fs::create_dir_all(&staging)
                            .map_err(|e| ExecError::io(&staging, e))?,
                    }
                    set_owner_mode(
                        &staging,
                        m.uid.unwrap_or(0),
                        m.gid.unwrap_or(0),
                        m.mode.unwrap_or(0o755),
                    )?;
                    if std::fs::rename(&staging, &dir).is_err() {
                        // Another build created it first.
                        let _ = std::fs::remove_dir_all(&staging);
                    }
                }
                out.push(SandboxMount::Bind {
                    source: dir,
                    target,
                    readonly: m.readonly,
                });
            }
            MountType::Tmpfs => {
                let target = m
                    .target
                    .clone()
                    .ok_or_else(|| ExecError::Failed("tmpfs mount requires a target".into()))?;
                out.push(SandboxMount::Tmpfs {
                    target,
                    size: m.size,
                });
            }
            MountType::Secret => {
                let id =
                    m.id.clone()
                        .or_else(|| {
                            m.target
                                .as_deref()
                                .and_then(|t| t.rsplit('/').next())
                                .map(String::from)
                        })
                        .or_else(|| m.env.clone())
                        .unwrap_or_default();
                let value = match settings.secrets.get(&id) {
                    Some(SecretSource::File(p)) => {
                        Some(std::fs::read(p).map_err(|e| ExecError::io(p, e))?)
                    }
                    Some(SecretSource::Env(var)) => std::env::var(var).ok().map(String::into_bytes),
                    None => None,
                };
                let Some(value) = value else {
                    if m.required {
                        return Err(ExecError::Failed(format!(
                            "secret {id} is required but was not provided (use --secret id={id},src=FILE)"
                        )));
                    }
                    continue;
                };
                if let Some(var) = &m.env {
                    env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    if m.target.is_none() {
                        continue;
                    }
                }
                let t =
                    tempfile::tempdir_in(sources.tmp).map_err(|e| ExecError::io(sources.tmp, e))?;
                let file = t.path().join("secret");
                std::fs::write(&file, &value).map_err(|e| ExecError::io(&file, e))?;
                set_owner_mode(
                    &file,
                    m.uid.unwrap_or(0),
                    m.gid.unwrap_or(0),
                    m.mode.unwrap_or(0o400),
                )?;
                held.temps.push(t);
                out.push(SandboxMount::Bind {
                    source: file,
                    target: m
                        .target
                        .clone()
                        .unwrap_or_else(|| format!("/run/secrets/{id}")),
                    readonly: true,
                });
            }
            MountType::Ssh => {
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                let Some(socket) = settings.ssh.get(&id) else {
                    if m.required {
                        return Err(ExecError::Failed(format!(
                            "ssh agent {id} is required but was not provided (use --ssh {id}=SOCKET)"
                        )));
                    }
                    continue;
                };
                let target = m
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_n}"));
                ssh_n += 1;
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                out.push(SandboxMount::Bind {
                    source: socket.clone(),
                    target,
                    readonly: false,
                });
            }
        }
    }
    Ok(out)
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| ExecError::io(path, e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ExecError::io(path, e))
}

/// The step to run, as dispatched.
pub struct RunRequest<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub user: Option<&'a str>,
    pub workdir: &'a str,
    pub mounts: &'a [Mount],
    pub network: &'a str,
    pub security: &'a str,
}

/// Runs the step in `rootfs` (a writable snapshot). Streams output to `log`; a non-zero exit
/// is an error that quotes the command, the exit code and the last lines of output.
/// Returns the paths the sandbox created as mount points (to keep out of the layer).
pub fn run(
    req: &RunRequest,
    rootfs: &Path,
    sources: &MountSources,
    settings: &RunSettings,
    cancel: &sandbox::CancelToken,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, ExecError> {
    if req.security == "insecure" && !settings.allow_insecure {
        return Err(ExecError::Failed(
            "RUN --security=insecure is not allowed: pass --allow security.insecure to the build"
                .into(),
        ));
    }
    let user = resolve_user(req.user.unwrap_or("root"), Some(rootfs))?;
    let mut env: Vec<String> = req.env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", crate::graph::dispatch::DEFAULT_PATH));
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
    let mut held = Held::default();
    let mounts = prepare_mounts(req.mounts, sources, settings, &mut held, &mut env)?;
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv_conf = if req.network == "none" {
        String::new()
    } else {
        resolv_conf
    };
    let hostname = "buildkitsandbox".to_string();
    let config = SandboxConfig {
        rootfs: rootfs.to_path_buf(),
        args: req.args.to_vec(),
        env,
        cwd: req.workdir.to_string(),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids.clone(),
        hostname: hostname.clone(),
        network: if req.network == "none" {
            SandboxNetwork::None
        } else {
            SandboxNetwork::Host
        },
        mounts,
        etc_hosts: format!(
            "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        resolv_conf,
        insecure: req.security == "insecure",
        // The RUN issue asks for no-new-privileges in build steps.
        no_new_privileges: true,
        stdin: None,
        container: Default::default(),
    };
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut partial = [String::new(), String::new()];
    let mut on_output = |stream: Stream, bytes: &[u8]| {
        let buf = &mut partial[matches!(stream, Stream::Stderr) as usize];
        buf.push_str(&String::from_utf8_lossy(bytes));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            log(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    };
    let outcome = sandbox::run_with_cancel(&config, &mut on_output, cancel)
        .map_err(|e| ExecError::Failed(e.to_string()))?;
    for rest in partial.iter().filter(|p| !p.is_empty()) {
        log(rest);
        tail.push_back(rest.clone());
    }
    drop(held);
    if outcome.exit_code != 0 {
        let shown = match req.args {
            [_, flag, script] if flag == "-c" => script.clone(),
            args => args.join(" "),
        };
        let mut message = format!(
            "process \"{}\" did not complete successfully: exit code: {}",
            shown.replace('\n', "\\n"),
            outcome.exit_code
        );
        if !tail.is_empty() {
            message.push_str("\n--- last output lines ---");
            for l in &tail {
                message.push_str("\n  ");
                message.push_str(l);
            }
        }
        return Err(ExecError::Failed(message));
    }
    Ok(outcome.created_mountpoints)
}
