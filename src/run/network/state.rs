//! The persisted form of networks: one JSON file per network under `<root>/networks/`,
//! replaced atomically, mutated only under `<root>/networks/lock`. Readers (the CLI, the DNS
//! server) read without the lock: a file is always whole, old or new.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::error::NetworkError;
use super::PortBinding;
use crate::cache::lock::write_atomic;

/// One network as kiln knows it (also what `network inspect` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// `bridge`, `host` or `null` (the `none` network), as docker names its drivers.
    pub driver: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// None until the default bridge is first used, and always for host/none.
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    /// The subnet was given by the user (`--subnet`), not taken from kiln's pool.
    #[serde(default)]
    pub user_subnet: bool,
    pub labels: BTreeMap<String, String>,
    /// The Linux bridge's name (`kb-<8 hex of the id>`), for bridge networks.
    pub bridge: Option<String>,
    /// Container id → its endpoint on this network.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// The last address handed out: allocation continues after it, so a released address is
    /// not reused before the rest of the subnet has been used.
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
}

impl NetworkInfo {
    /// Always `local`, as for docker's local drivers.
    pub fn scope(&self) -> &'static str {
        "local"
    }

    /// A network created with `network create` (not `bridge`, `host`, `none`): these have
    /// name resolution through the embedded DNS server.
    pub fn is_user_defined(&self) -> bool {
        !super::PREDEFINED.contains(&self.name.as_str())
    }

    /// The 12-digit short id `network ls` shows.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// A container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    /// The container's name (resolvable by DNS on user networks).
    pub name: String,
    pub aliases: Vec<String>,
    /// Unspecified (0.0.0.0) on host/none.
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Inside the container: eth0, eth1, ...
    pub interface: String,
    /// The host end of the veth pair.
    pub host_veth: String,
    /// Resolved bindings (host ports filled in).
    pub ports: Vec<PortBinding>,
    pub netns: PathBuf,
}

pub(crate) fn file_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

pub(crate) fn save(dir: &Path, info: &NetworkInfo) -> Result<(), NetworkError> {
    write(dir, info, true)
}

/// Like [`save`] for changes of endpoints (connect, disconnect, release): replaced
/// atomically but not fsynced. Endpoints only exist while their containers run, and a machine
/// crash ends those; what matters is that every process sees the update at once (rename),
/// which it does. Starting a container on a bridge saves this three times.
pub(crate) fn save_endpoints(dir: &Path, info: &NetworkInfo) -> Result<(), NetworkError> {
    write(dir, info, false)
}

fn write(dir: &Path, info: &NetworkInfo, durable: bool) -> Result<(), NetworkError> {
    let path = file_of(dir, &info.id);
    let bytes = serde_json::to_vec_pretty(info).map_err(|source| NetworkError::State {
        path: path.clone(),
        source,
    })?;
    let written = if durable {
        write_atomic(&path, &bytes)
    } else {
        crate::cache::lock::write_replace(&path, &bytes)
    };
    written.map_err(|e| NetworkError::io("cannot write", &path, e))
}

pub(crate) fn delete(dir: &Path, id: &str) -> Result<(), NetworkError> {
    let path = file_of(dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io("cannot remove", &path, e)),
    }
}

/// Every network, sorted by name.
pub(crate) fn load_all(dir: &Path) -> Result<Vec<NetworkInfo>, NetworkError> {
    let entries = std::fs::read_dir(dir).map_err(|e| NetworkError::io("cannot read", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| NetworkError::io("cannot read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Removed between readdir and read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(NetworkError::io("cannot read", &path, e)),
        };
        let info: NetworkInfo = serde_json::from_slice(&bytes)
            .map_err(|source| NetworkError::State { path, source })?;
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Finds a network by exact name, exact id, or unique id prefix (docker's order).
pub(crate) fn find(all: &[NetworkInfo], name_or_id: &str) -> Result<NetworkInfo, NetworkError> {
    if name_or_id.is_empty() {
        return Err(NetworkError::NotFound(String::new()));
    }
    if let Some(n) = all.iter().find(|n| n.name == name_or_id) {
        return Ok(n.clone());
    }
    if let Some(n) = all.iter().find(|n| n.id == name_or_id) {
        return Ok(n.clone());
    }
    let matches: Vec<&NetworkInfo> = all
        .iter()
        .filter(|n| n.id.starts_with(name_or_id))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(NetworkError::NotFound(name_or_id.to_string())),
        _ => Err(NetworkError::Invalid(format!(
            "network {name_or_id} is ambiguous ({} matches found based on ID prefix)",
            matches.len()
        ))),
    }
}

/// 64 random hex digits.
pub(crate) fn random_id() -> Result<String, NetworkError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| NetworkError::io("cannot read", "/dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
