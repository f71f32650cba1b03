//! A container on disk: `ROOT/containers/<id>/` with `config.json` (what to run, fixed at
//! create), `state.json` (status, pid, exit code, OOM, health; rewritten atomically under
//! `lock`), and `running.lock`, held by the container's monitor while it runs. The lock is
//! what makes `ps` truthful: a state that says "running" while nobody holds the lock belongs
//! to a monitor that crashed (or a reboot), and is reported as an exit with code 255.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, Result, RunError};
use crate::cache::image::HealthConfig;
use crate::cache::lock::{write_replace, FileLock};
use crate::cache::Digest;

/// One mount of a container (`-v`, `--mount`, `--tmpfs`, anonymous image volumes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountSpec {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The volume name (volumes), the host path (binds), empty for tmpfs.
    pub source: String,
    pub destination: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    /// tmpfs size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// An anonymous volume (removed with the container by `rm -v` / `--rm`).
    #[serde(default)]
    pub anonymous: bool,
}

/// `-p [IP:]HOST:CONTAINER[/PROTO]` as given (resolved by the network module at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortSpec {
    pub host_ip: String,
    /// 0: any free port.
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

/// `--restart`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `no`, `on-failure`, `always`, `unless-stopped` (docker's `""` is `no`).
    pub name: String,
    pub maximum_retry_count: u32,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy> {
        let (name, count) = match s.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        let bad = || RunError::Invalid(format!("invalid restart policy {s:?}"));
        match (name, count) {
            ("no" | "always" | "unless-stopped", None) => Ok(RestartPolicy {
                name: name.to_string(),
                maximum_retry_count: 0,
            }),
            ("on-failure", c) => Ok(RestartPolicy {
                name: name.to_string(),
                maximum_retry_count: match c {
                    Some(c) => c.parse().map_err(|_| bad())?,
                    None => 0,
                },
            }),
            _ => Err(bad()),
        }
    }

    pub fn is_none(&self) -> bool {
        self.name.is_empty() || self.name == "no"
    }
}

/// Everything about a container that `create` fixes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// Unix nanoseconds.
    pub created: i128,
    /// The image as the user named it.
    pub image: String,
    /// The image ID (config digest).
    pub image_id: Digest,
    /// The snapshot chain the rootfs sits on (None: an image without layers).
    pub chain_id: Option<Digest>,
    /// Where the writable layer lives: `overlay` (upper/work) or `copy` (a full tree).
    pub rootfs_kind: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// `StdinOnce`: the container's stdin closes when the first attached client's does.
    #[serde(default)]
    pub stdin_once: bool,
    /// `HostConfig.ConsoleSize` (rows, columns): a detached tty's size at start (24×80
    /// when unset).
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    pub network_mode: String,
    #[serde(default)]
    pub network_aliases: Vec<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub publish_all: bool,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    /// Bytes.
    pub memory: Option<i64>,
    /// CPUs × 1e9.
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub init: bool,
    pub stop_signal: String,
    /// Seconds (docker's default 10).
    pub stop_timeout: Option<i64>,
    pub healthcheck: Option<HealthConfig>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `State.Status` as docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Restarting,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// One health check run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLog {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// `State.Health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy`, `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<HealthLog>,
}

/// What the network module gave a container, for `inspect` and `port`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInfo {
    pub network: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

/// A published port as bound on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BoundPort {
    pub container_port: u16,
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// The mutable part of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: Status,
    /// Host pid of the container's first process (0 when not running).
    pub pid: i32,
    pub monitor_pid: i32,
    pub exit_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub error: String,
    /// Unix nanoseconds, 0 = never.
    pub started_at: i128,
    pub finished_at: i128,
    pub restart_count: u32,
    /// Set by `stop` (and `kill` of an `unless-stopped` container): no restart.
    pub manually_stopped: bool,
    pub health: Option<Health>,
    #[serde(default)]
    pub networks: Vec<NetworkInfo>,
    #[serde(default)]
    pub ports: Vec<BoundPort>,
}

impl State {
    pub fn created() -> State {
        State {
            status: Status::Created,
            pid: 0,
            monitor_pid: 0,
            exit_code: 0,
            oom_killed: false,
            error: String::new(),
            started_at: 0,
            finished_at: 0,
            restart_count: 0,
            manually_stopped: false,
            health: None,
            networks: Vec::new(),
            ports: Vec::new(),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Restarting)
    }
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// RFC 3339 with nanoseconds (docker's timestamps); `0001-01-01T00:00:00Z` for 0.
pub fn rfc3339_nanos(nanos: i128) -> String {
    if nanos <= 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    let secs = (nanos / 1_000_000_000) as i64;
    let frac = (nanos % 1_000_000_000) as u32;
    let base = crate::cache::image::rfc3339(secs);
    format!("{}.{frac:09}Z", base.trim_end_matches('Z'))
}

/// The containers under a root.
#[derive(Debug, Clone)]
pub struct Containers {
    pub dir: PathBuf,
}

/// One container directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
    pub config: ContainerConfig,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| RunError::Io {
        op: "parsing",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| RunError::Io {
        op: "serializing",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // No fsync: a state lost to a power cut is corrected by the running-lock rule anyway,
    // and `kiln run` must stay fast.
    write_replace(path, &bytes).map_err(io_err("writing", path))
}

fn lock_err(path: &Path) -> impl FnOnce(crate::cache::lock::LockError) -> RunError + '_ {
    move |e| RunError::Io {
        op: "locking",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// A random 64-hex-digit container id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let seed = format!("{:?}{}{}", bytes, now_nanos(), std::process::id());
    Digest::of(seed.as_bytes()).hex().to_string()
}

const ADJECTIVES: &[&str] = &[
    "admiring", "bold", "brave", "clever", "dreamy", "eager", "elegant", "festive", "gallant",
    "happy", "jolly", "keen", "loving", "modest", "nifty", "quirky", "serene", "sharp", "trusting",
    "vibrant", "wizardly", "zealous",
];
const NAMES: &[&str] = &[
    "almeida", "babbage", "curie", "darwin", "euclid", "fermi", "galois", "hopper", "hypatia",
    "kepler", "lamarr", "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon",
    "thompson", "turing", "wozniak",
];

impl Containers {
    pub fn open(root: &Path) -> Result<Containers> {
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Containers { dir })
    }

    /// Serializes creations (name uniqueness).
    pub fn lock(&self) -> Result<FileLock> {
        let p = self.dir.join(".lock");
        FileLock::exclusive(&p).map_err(lock_err(&p))
    }

    /// Every container, newest first.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            // A directory without a config is a creation in progress or a removal.
            if let Ok(config) = read_json::<ContainerConfig>(&e.path().join("config.json")) {
                out.push(Container {
                    dir: e.path(),
                    config,
                });
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.config.created));
        Ok(out)
    }

    /// The image IDs containers (running or not) are made from: they must outlive `rmi` and
    /// `image prune`, or the containers lose their root filesystem.
    pub fn images_in_use(&self) -> Result<std::collections::BTreeMap<Digest, String>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|c| (c.config.image_id, c.config.id))
            .collect())
    }

    /// By full id, name (with or without a leading `/`) or unique id prefix, as docker.
    pub fn find(&self, key: &str) -> Result<Container> {
        let key = key.trim_start_matches('/');
        if key.is_empty() {
            return Err(RunError::NoSuchContainer(key.to_string()));
        }
        let all = self.list()?;
        if let Some(c) = all
            .iter()
            .find(|c| c.config.id == key || c.config.name == key)
        {
            return Ok(c.clone());
        }
        let matches: Vec<&Container> = all
            .iter()
            .filter(|c| c.config.id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RunError::NoSuchContainer(key.to_string())),
            _ => Err(RunError::Invalid(format!(
                "multiple containers match the prefix {key:?}"
            ))),
        }
    }

    /// A docker-style `adjective_name` no container uses.
    pub fn generate_name(&self, id: &str) -> Result<String> {
        let taken: Vec<String> = self.list()?.into_iter().map(|c| c.config.name).collect();
        let bytes = id.as_bytes();
        for i in 0..64usize {
            let a = ADJECTIVES[(bytes[i % bytes.len()] as usize + i) % ADJECTIVES.len()];
            let n = NAMES[(bytes[(i + 7) % bytes.len()] as usize * 7 + i) % NAMES.len()];
            let name = if i == 0 {
                format!("{a}_{n}")
            } else {
                format!("{a}_{n}{i}")
            };
            if !taken.contains(&name) {
                return Ok(name);
            }
        }
        Ok(format!("kiln_{}", &id[..12]))
    }

    /// Writes a new container directory (config + created state), atomically: it appears
    /// under its id only once complete. `prepare` fills the directory (the writable layer)
    /// first. Names must be unique (checked under the lock).
    pub fn create(
        &self,
        config: &mut ContainerConfig,
        prepare: &mut dyn FnMut(&Path, &mut ContainerConfig) -> Result<()>,
    ) -> Result<Container> {
        let _lock = self.lock()?;
        if let Some(other) = self.list()?.iter().find(|c| c.config.name == config.name) {
            return Err(RunError::Conflict(format!(
                "Conflict. The container name \"/{}\" is already in use by container \"{}\". \
                 You have to remove (or rename) that container to be able to reuse that name.",
                config.name, other.config.id
            )));
        }
        let dir = self.dir.join(&config.id);
        let tmp = self.dir.join(format!(".new-{}", config.id));
        std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        let made = (|| {
            prepare(&tmp, config)?;
            let c = Container {
                dir: tmp.clone(),
                config: config.clone(),
            };
            c.save_state(&State::created())?;
            write_json(&tmp.join("config.json"), config)?;
            std::fs::rename(&tmp, &dir).map_err(io_err("renaming into place", &dir))
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Container {
            dir,
            config: config.clone(),
        })
    }
}

impl Container {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn short_id(&self) -> &str {
        &self.config.id[..12]
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.config.id))
    }

    /// Short lock around read-modify-write of the state.
    pub fn lock(&self) -> Result<FileLock> {
        let p = self.path("lock");
        FileLock::exclusive(&p).map_err(lock_err(&p))
    }

    /// Held by the monitor while the container runs.
    pub fn try_running_lock(&self) -> Result<Option<FileLock>> {
        let p = self.path("running.lock");
        FileLock::try_exclusive(&p).map_err(lock_err(&p))
    }

    /// Whether a monitor holds `running.lock`.
    pub fn monitor_alive(&self) -> bool {
        let p = self.path("running.lock");
        matches!(FileLock::try_shared(&p), Ok(None))
    }

    /// Blocks until no monitor holds `running.lock`.
    pub fn wait_unlocked(&self) -> Result<()> {
        let p = self.path("running.lock");
        FileLock::shared(&p).map(drop).map_err(lock_err(&p))
    }

    /// The state as stored.
    pub fn stored_state(&self) -> Result<State> {
        read_json(&self.path("state.json"))
    }

    /// The state as it really is: "running" without a live monitor is an exit with 255.
    pub fn state(&self) -> Result<State> {
        let mut s = self.stored_state()?;
        if s.is_running() && !self.monitor_alive() {
            // Re-read: the monitor may have written the exit just before releasing the lock.
            s = self.stored_state()?;
            if s.is_running() {
                s.status = Status::Exited;
                s.exit_code = 255;
                s.pid = 0;
                if s.error.is_empty() {
                    s.error = "the container's monitor exited (crash or reboot)".to_string();
                }
            }
        }
        Ok(s)
    }

    pub fn save_state(&self, state: &State) -> Result<()> {
        write_json(&self.path("state.json"), state)
    }

    /// Read-modify-write of the state under the lock.
    pub fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<State> {
        let _l = self.lock()?;
        let mut s = self.stored_state()?;
        f(&mut s);
        self.save_state(&s)?;
        Ok(s)
    }
}

/// Where the exit codes of removed `--rm` containers are kept (`ROOT/exits/<id>`).
fn exits_dir(root: &Path) -> PathBuf {
    root.join("exits")
}

/// Keeps the exit code of a `--rm` container whose directory is about to go, so that a
/// `wait` that missed the exit still reports it (docker's daemon keeps it in memory).
/// Records older than ten minutes are dropped here.
pub fn record_removed_exit(root: &Path, id: &str, code: i32) {
    let dir = exits_dir(root);
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let old = std::time::Duration::from_secs(600);
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > old);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = crate::cache::lock::write_replace(&dir.join(id), code.to_string().as_bytes());
}

/// The exit code [`record_removed_exit`] kept for `id`.
pub fn removed_exit(root: &Path, id: &str) -> Option<i32> {
    std::fs::read_to_string(exits_dir(root).join(id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::parse("no").unwrap().is_none());
        let p = RestartPolicy::parse("on-failure:3").unwrap();
        assert_eq!((p.name.as_str(), p.maximum_retry_count), ("on-failure", 3));
        assert_eq!(RestartPolicy::parse("always").unwrap().name, "always");
        assert!(RestartPolicy::parse("always:3").is_err());
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nanos(0), "0001-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }
}
