//! Container networking: docker's `none`, `host`, the default `bridge` and user-defined bridge
//! networks.
//!
//! A bridge network is a Linux bridge (`kb-<8 hex of the network id>`, so parallel `--root`s
//! never collide) with a /24 (or user-given) subnet from a machine-wide pool, outbound NAT and
//! isolation from the other kiln bridges in iptables (chains `KILN-*`, every rule tagged with
//! a comment naming its network and container so it can be removed exactly). A container joins
//! through a veth pair whose peer is created directly inside its network namespace as
//! `eth0`/`eth1`… (netlink, no process spawned). Published ports are DNAT rules (reachable
//! from 127.0.0.1 through `route_localnet`, like docker with `userland-proxy=false`).
//! User networks get name resolution from an embedded DNS server ([`dns`]) at 127.0.0.11.
//!
//! State lives in `<root>/networks/<id>.json`; mutations hold `<root>/networks/lock`, and the
//! subnet choice holds the machine-wide `/run/kiln/ipam.lock`.

pub mod dns;
mod error;
mod firewall;
mod ipam;
mod link;
pub mod netns;
mod orphans;
mod ports;
mod resolv;
mod state;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use error::NetworkError;
pub use ports::parse_publish;
pub use resolv::{etc_hosts, resolv_conf};
pub use state::{EndpointRecord, NetworkInfo};

use crate::cache::lock::FileLock;

/// The networks that always exist.
pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `-p` binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// None = every host address (0.0.0.0).
    pub host_ip: Option<IpAddr>,
    /// None or 0 = an ephemeral port chosen at connect time.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: Proto,
}

/// What `network create` accepts.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Only `bridge` (the default) is supported.
    pub driver: Option<String>,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// No outbound traffic, no published ports.
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// A container asking to join a network.
#[derive(Debug, Clone)]
pub struct EndpointRequest {
    /// The container's full id.
    pub container_id: String,
    /// The container's name (resolvable on user networks).
    pub name: String,
    /// Extra DNS names on this network (`--network-alias`).
    pub aliases: Vec<String>,
    /// The container's network namespace: `/proc/PID/ns/net` or a bind-mounted nsfs file
    /// (see [`netns::create`]).
    pub netns: PathBuf,
    /// `-p` bindings (only honoured on bridge networks that are not internal).
    pub ports: Vec<PortBinding>,
    /// `--ip`: a fixed address inside the subnet.
    pub ip: Option<Ipv4Addr>,
}

/// A container's place on one network, as set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    pub network_id: String,
    /// 0.0.0.0 on host/none.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// 0.0.0.0 on host/none.
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// eth0, eth1... inside the container ("" on host/none).
    pub interface: String,
    /// Resolved: ephemeral host ports are filled in.
    pub ports: Vec<PortBinding>,
    /// The network has name resolution (a user-defined network): the container should use the
    /// embedded DNS server ([`dns::spawn`], `nameserver 127.0.0.11`).
    pub dns: bool,
    /// The network's driver: `bridge`, `host` or `null`.
    pub driver: String,
}

/// The networks of one kiln root.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

impl Networks {
    /// The kiln root these networks belong to (containers join them through it).
    pub fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Opens (creating if needed) `<root>/networks`; `bridge`, `host` and `none` always exist
    /// (the default bridge's Linux bridge and subnet are created on first use).
    pub fn open(root: &Path) -> Result<Networks, NetworkError> {
        let dir = root.join("networks");
        let nets = Networks { dir };
        let marker = nets.dir.join(".predefined");
        if !marker.exists() {
            std::fs::create_dir_all(&nets.dir)
                .map_err(|e| NetworkError::io("cannot create", &nets.dir, e))?;
            let _lock = nets.lock()?;
            let all = state::load_all(&nets.dir)?;
            for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
                if all.iter().any(|n| n.name == name) {
                    continue;
                }
                let id = state::random_id()?;
                let info = NetworkInfo {
                    bridge: (driver == "bridge").then(|| link::bridge_name(&id)),
                    id,
                    name: name.to_string(),
                    driver: driver.to_string(),
                    created: now(),
                    subnet: None,
                    gateway: None,
                    internal: false,
                    user_subnet: false,
                    labels: BTreeMap::new(),
                    endpoints: BTreeMap::new(),
                    last_ip: None,
                };
                state::save(&nets.dir, &info)?;
            }
            std::fs::write(&marker, b"")
                .map_err(|e| NetworkError::io("cannot write", &marker, e))?;
        }
        Ok(nets)
    }

    fn lock(&self) -> Result<FileLock, NetworkError> {
        Ok(FileLock::exclusive(&self.dir.join("lock"))?)
    }

    /// `network create NAME`: a new bridge network with its own subnet and Linux bridge.
    pub fn create(&self, name: &str, opts: &CreateOptions) -> Result<NetworkInfo, NetworkError> {
        validate_name(name)?;
        match opts.driver.as_deref() {
            None | Some("bridge") => {}
            Some(other) => {
                return Err(NetworkError::Invalid(format!(
                    "network driver {other:?} is not supported (kiln has \"bridge\")"
                )))
            }
        }
        if let (Some(gw), None) = (opts.gateway, opts.subnet) {
            return Err(NetworkError::Invalid(format!(
                "--gateway {gw} needs --subnet (kiln picks the gateway of pool subnets)"
            )));
        }
        if let Some(subnet) = opts.subnet {
            ipam::check_user_subnet(subnet, opts.gateway)?;
        }
        let _lock = self.lock()?;
        let all = state::load_all(&self.dir)?;
        if all.iter().any(|n| n.name == name) {
            return Err(NetworkError::Exists(name.to_string()));
        }
        let id = state::random_id()?;
        let mut info = NetworkInfo {
            bridge: Some(link::bridge_name(&id)),
            id,
            name: name.to_string(),
            driver: "bridge".to_string(),
            created: now(),
            subnet: opts.subnet.map(|s| s.trunc()),
            gateway: opts.gateway,
            internal: opts.internal,
            user_subnet: opts.subnet.is_some(),
            labels: opts.labels.clone(),
            endpoints: BTreeMap::new(),
            last_ip: None,
        };
        // Bridge, address and firewall rules now (as docker does), so a bad subnet fails here.
        setup_bridge(&self.dir, &mut info, &all)?;
        if let Err(e) = state::save(&self.dir, &info) {
            let _ = teardown_bridge(&info);
            return Err(e);
        }
        Ok(info)
    }

    /// Every network, sorted by name.
    pub fn list(&self) -> Result<Vec<NetworkInfo>, NetworkError> {
        state::load_all(&self.dir)
    }

    /// One network by name, id, or unique id prefix.
    pub fn inspect(&self, name_or_id: &str) -> Result<NetworkInfo, NetworkError> {
        state::find(&state::load_all(&self.dir)?, name_or_id)
    }

    /// `network rm`: refuses the predefined networks and networks with endpoints.
    pub fn remove(&self, name_or_id: &str) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        let info = state::find(&state::load_all(&self.dir)?, name_or_id)?;
        self.remove_locked(&info)
    }

    fn remove_locked(&self, info: &NetworkInfo) -> Result<(), NetworkError> {
        if !info.is_user_defined() {
            return Err(NetworkError::Predefined(info.name.clone()));
        }
        if !info.endpoints.is_empty() {
            return Err(NetworkError::InUse {
                name: info.name.clone(),
                id: info.id.clone(),
                containers: info
                    .endpoints
                    .values()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        teardown_bridge(info)?;
        state::delete(&self.dir, &info.id)
    }

    /// `network prune`: removes every user network without endpoints; returns their names.
    pub fn prune(&self) -> Result<Vec<String>, NetworkError> {
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        for info in state::load_all(&self.dir)? {
            if info.is_user_defined() && info.endpoints.is_empty() {
                self.remove_locked(&info)?;
                removed.push(info.name);
            }
        }
        Ok(removed)
    }

    /// Attaches a container's network namespace to a network: on bridge networks a veth pair
    /// (`ethN` inside, with address, and the default route on the first network), the address
    /// lease and the published ports. On `host`/`none` it only records the container (for
    /// `network inspect`); the caller may skip it there.
    pub fn connect(&self, network: &str, req: &EndpointRequest) -> Result<Endpoint, NetworkError> {
        validate_container(req)?;
        let _lock = self.lock()?;
        let all = state::load_all(&self.dir)?;
        let mut info = state::find(&all, network)?;
        if info.endpoints.contains_key(&req.container_id) {
            return Err(NetworkError::AlreadyConnected {
                container: req.name.clone(),
                network: info.name.clone(),
            });
        }
        if info.driver != "bridge" {
            return self.connect_pseudo(info, &all, req);
        }
        let others: Vec<NetworkInfo> = all.into_iter().filter(|n| n.id != info.id).collect();
        for other in &others {
            if other.driver != "bridge" && other.endpoints.contains_key(&req.container_id) {
                return Err(NetworkError::CannotConnect {
                    container: req.name.clone(),
                    network: info.name.clone(),
                    reason: format!("it is on the {} network", other.name),
                });
            }
        }
        let had_subnet = info.subnet.is_some();
        let set_up = ensure_bridge(&self.dir, &mut info, &others)?;
        if set_up && !had_subnet {
            // The subnet is the network's configuration, not endpoint state: durable.
            state::save(&self.dir, &info)?;
        }
        let subnet = info
            .subnet
            .ok_or_else(|| NetworkError::Invalid("no subnet".into()))?;
        let gateway = info.gateway.unwrap_or_else(|| ipam::first_host(subnet));
        let ip = match req.ip {
            Some(ip) => ipam::check_requested(&info, ip)?,
            None => ipam::next_free(&info)?,
        };
        let host_veth = link::veth_name(&info.id, &req.container_id);
        let mac = link::mac_for(ip);
        let first = !others
            .iter()
            .any(|n| n.endpoints.contains_key(&req.container_id));
        // Record first, so a crash half-way leaves something release_container can find.
        let mut record = EndpointRecord {
            container_id: req.container_id.clone(),
            name: req.name.clone(),
            aliases: req.aliases.clone(),
            ip,
            mac: mac.clone(),
            interface: String::new(),
            host_veth: host_veth.clone(),
            ports: Vec::new(),
            netns: req.netns.clone(),
        };
        info.last_ip = Some(ip);
        info.endpoints
            .insert(req.container_id.clone(), record.clone());
        state::save_endpoints(&self.dir, &info)?;

        let attached = (|| -> Result<(String, Vec<PortBinding>), NetworkError> {
            let bridge = info.bridge.clone().unwrap_or_default();
            let interface = link::attach(&link::Attach {
                bridge: &bridge,
                host_veth: &host_veth,
                netns: &req.netns,
                ip,
                prefix_len: subnet.prefix_len(),
                gateway,
                mac: &mac,
                default_route: first,
            })?;
            let ports = if req.ports.is_empty() || info.internal {
                Vec::new()
            } else {
                firewall::publish(&info, &req.container_id, ip, &req.ports)?
            };
            Ok((interface, ports))
        })();
        match attached {
            Ok((interface, ports)) => {
                record.interface = interface.clone();
                record.ports = ports.clone();
                info.endpoints.insert(req.container_id.clone(), record);
                state::save_endpoints(&self.dir, &info)?;
                Ok(Endpoint {
                    network: info.name.clone(),
                    network_id: info.id.clone(),
                    ip,
                    prefix_len: subnet.prefix_len(),
                    gateway,
                    mac,
                    interface,
                    ports,
                    dns: info.is_user_defined(),
                    driver: info.driver.clone(),
                })
            }
            Err(e) => {
                let _ = release_endpoint(&info, &record, true);
                info.endpoints.remove(&req.container_id);
                let _ = state::save_endpoints(&self.dir, &info);
                Err(e)
            }
        }
    }

    fn connect_pseudo(
        &self,
        mut info: NetworkInfo,
        all: &[NetworkInfo],
        req: &EndpointRequest,
    ) -> Result<Endpoint, NetworkError> {
        if let Some(other) = all
            .iter()
            .find(|n| n.id != info.id && n.endpoints.contains_key(&req.container_id))
        {
            return Err(NetworkError::CannotConnect {
                container: req.name.clone(),
                network: info.name.clone(),
                reason: format!(
                    "it is already on network {} (host and none networks cannot be combined with others)",
                    other.name
                ),
            });
        }
        info.endpoints.insert(
            req.container_id.clone(),
            EndpointRecord {
                container_id: req.container_id.clone(),
                name: req.name.clone(),
                aliases: req.aliases.clone(),
                ip: Ipv4Addr::UNSPECIFIED,
                mac: String::new(),
                interface: String::new(),
                host_veth: String::new(),
                ports: Vec::new(),
                netns: req.netns.clone(),
            },
        );
        state::save_endpoints(&self.dir, &info)?;
        Ok(Endpoint {
            network: info.name.clone(),
            network_id: info.id.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Ipv4Addr::UNSPECIFIED,
            mac: String::new(),
            interface: String::new(),
            ports: Vec::new(),
            dns: false,
            driver: info.driver.clone(),
        })
    }

    /// Detaches a container from a network: veth, port rules, address lease and DNS record
    /// all go. Idempotent: a container that is not attached is not an error.
    pub fn disconnect(&self, network: &str, container_id: &str) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        let mut info = state::find(&state::load_all(&self.dir)?, network)?;
        let Some(record) = info.endpoints.get(container_id).cloned() else {
            return Ok(());
        };
        release_endpoint(&info, &record, true)?;
        info.endpoints.remove(container_id);
        state::save_endpoints(&self.dir, &info)
    }

    /// Disconnects a container from every network it is on (container stop/rm, and cleanup
    /// after a crash).
    pub fn release_container(&self, container_id: &str) -> Result<(), NetworkError> {
        self.release(container_id, true)
    }

    /// [`Networks::release_container`] for a container whose network namespace was already
    /// removed (no process left in it): the kernel destroys the namespace's veth pairs with it,
    /// in the background, so they are not deleted here (deleting one waits ~20 ms for the
    /// kernel). Rules, addresses and records go as usual.
    pub fn release_container_netns_gone(&self, container_id: &str) -> Result<(), NetworkError> {
        self.release(container_id, false)
    }

    fn release(&self, container_id: &str, delete_links: bool) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        let mut first_err = None;
        for mut info in state::load_all(&self.dir)? {
            let Some(record) = info.endpoints.get(container_id).cloned() else {
                continue;
            };
            match release_endpoint(&info, &record, delete_links) {
                Ok(()) => {
                    info.endpoints.remove(container_id);
                    state::save_endpoints(&self.dir, &info)?;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes everything this root has in the kernel (every endpoint's veth and port rules,
    /// every bridge including the default one, their iptables rules) and the network state.
    /// For `kiln system reset`-like cleanup and tests; the predefined networks come back on
    /// the next [`Networks::open`].
    pub fn teardown(&self) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        for info in state::load_all(&self.dir)? {
            for record in info.endpoints.values() {
                release_endpoint(&info, record, true)?;
            }
            teardown_bridge(&info)?;
            state::delete(&self.dir, &info.id)?;
        }
        let marker = self.dir.join(".predefined");
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetworkError::io("cannot remove", &marker, e))
            }
            _ => Ok(()),
        }
    }

    /// The state directory (the DNS server reads it on every query).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Removes what one endpoint holds in the kernel: its veth (the peer goes with it) and its
/// port rules.
fn release_endpoint(
    info: &NetworkInfo,
    record: &EndpointRecord,
    delete_link: bool,
) -> Result<(), NetworkError> {
    if info.driver != "bridge" {
        return Ok(());
    }
    if delete_link {
        link::delete_link(&record.host_veth)?;
    }
    if !record.ports.is_empty() {
        firewall::unpublish(info, &record.container_id)?;
    }
    Ok(())
}

/// Makes sure the network's bridge exists (after a reboot, or the default bridge's first
/// use). Returns whether it had to be set up.
fn ensure_bridge(
    dir: &Path,
    info: &mut NetworkInfo,
    others: &[NetworkInfo],
) -> Result<bool, NetworkError> {
    let name = info.bridge.clone().unwrap_or_default();
    if info.subnet.is_some() && link::exists(&name)? {
        return Ok(false);
    }
    setup_bridge(dir, info, others)?;
    Ok(true)
}

/// Subnet (from the pool unless given), bridge with the gateway address, firewall rules.
fn setup_bridge(
    dir: &Path,
    info: &mut NetworkInfo,
    others: &[NetworkInfo],
) -> Result<(), NetworkError> {
    let bridge = info
        .bridge
        .clone()
        .unwrap_or_else(|| link::bridge_name(&info.id));
    info.bridge = Some(bridge.clone());
    {
        // The machine-wide lock covers choosing the subnet and putting it on the bridge, so
        // parallel roots never pick the same one.
        let _ipam = ipam::machine_lock()?;
        orphans::collect();
        let reserved: Vec<Ipv4Net> = others.iter().filter_map(|n| n.subnet).collect();
        let subnet = match info.subnet {
            Some(s) => {
                ipam::check_free(s, &bridge, &reserved)?;
                s
            }
            None => ipam::pick_subnet(&reserved)?,
        };
        let gateway = info.gateway.unwrap_or_else(|| ipam::first_host(subnet));
        link::create_bridge(&bridge, gateway, subnet.prefix_len())?;
        info.subnet = Some(subnet);
        info.gateway = Some(gateway);
        if let Err(e) = orphans::register(dir, info) {
            let _ = link::delete_link(&bridge);
            return Err(e);
        }
    }
    if let Err(e) = firewall::setup_network(info) {
        let _ = link::delete_link(&bridge);
        return Err(e);
    }
    Ok(())
}

fn teardown_bridge(info: &NetworkInfo) -> Result<(), NetworkError> {
    if info.driver != "bridge" {
        return Ok(());
    }
    firewall::teardown_network(info)?;
    if let Some(bridge) = &info.bridge {
        link::delete_link(bridge)?;
    }
    orphans::unregister(info);
    Ok(())
}

/// Docker's network name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_name(name: &str) -> Result<(), NetworkError> {
    let bad = |reason: &str| NetworkError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(bad("it must start with a letter or digit"))
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(bad("only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"));
    }
    if name.len() > 128 {
        return Err(bad("it is longer than 128 characters"));
    }
    if PREDEFINED.contains(&name) {
        return Err(NetworkError::Invalid(format!(
            "{name} is a pre-defined network and cannot be created"
        )));
    }
    Ok(())
}

fn validate_container(req: &EndpointRequest) -> Result<(), NetworkError> {
    if req.container_id.is_empty()
        || !req
            .container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(NetworkError::Invalid(format!(
            "invalid container id {:?}",
            req.container_id
        )));
    }
    Ok(())
}

fn now() -> String {
    crate::cache::image::rfc3339(crate::cache::image::unix_now())
}
