//! A container's network at start and stop: `none` (a fresh namespace with `lo`), `host`
//! (the host's namespace, its `/etc/resolv.conf`), and bridge / user networks through the
//! network module (a persistent namespace under the container's directory, connected to the
//! network, published ports, the embedded DNS server).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::network::{self, netns, EndpointRequest, NetworkError, Networks, PortBinding, Proto};
use super::state::{BoundPort, Container, NetworkInfo};
use super::{Result, RunError};
use crate::executor::sandbox::SandboxNetwork;

/// What the sandbox and the state need from a container's network.
#[derive(Debug)]
pub struct NetSetup {
    pub sandbox: SandboxNetwork,
    /// The container's addresses (for `/etc/hosts`).
    pub ips: Vec<String>,
    pub resolv_conf: String,
    pub infos: Vec<NetworkInfo>,
    pub ports: Vec<BoundPort>,
    /// The embedded DNS server (user networks), serving while this lives.
    pub dns: Option<network::dns::DnsHandle>,
    /// `--network host`: the host's `/etc/hosts`.
    pub host_files: bool,
}

/// The host's resolv.conf without loopback name servers (unreachable from a namespace of
/// its own), as docker does; Google's servers when nothing is left.
pub fn host_resolv_conf(keep_loopback: bool) -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    let mut servers = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let ip = words.next().unwrap_or("");
            if !keep_loopback && (ip.starts_with("127.") || ip == "::1") {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

fn net_err(e: NetworkError) -> RunError {
    RunError::Network(e.to_string())
}

fn bindings(c: &Container) -> Result<Vec<PortBinding>> {
    c.config
        .ports
        .iter()
        .map(|p| {
            let host_ip = if p.host_ip.is_empty() {
                None
            } else {
                Some(p.host_ip.parse::<IpAddr>().map_err(|_| {
                    RunError::Invalid(format!("invalid host address {:?}", p.host_ip))
                })?)
            };
            Ok(PortBinding {
                host_ip,
                host_port: (p.host_port != 0).then_some(p.host_port),
                container_port: p.container_port,
                proto: if p.proto == "udp" {
                    Proto::Udp
                } else {
                    Proto::Tcp
                },
            })
        })
        .collect()
}

/// Where the container's network namespace is bound: outside its directory, so that `--rm`
/// can delete the directory while the network is still being released.
pub fn netns_path(root: &Path, c: &Container) -> std::path::PathBuf {
    root.join("netns").join(&c.config.id)
}

/// Prepares the container's network for one run.
pub fn setup(root: &Path, c: &Container) -> Result<NetSetup> {
    match c.config.network_mode.as_str() {
        "none" => Ok(NetSetup {
            sandbox: SandboxNetwork::None,
            ips: Vec::new(),
            resolv_conf: host_resolv_conf(false),
            infos: Vec::new(),
            ports: Vec::new(),
            dns: None,
            host_files: false,
        }),
        "host" => Ok(NetSetup {
            sandbox: SandboxNetwork::Host,
            ips: Vec::new(),
            resolv_conf: host_resolv_conf(true),
            infos: Vec::new(),
            ports: Vec::new(),
            dns: None,
            host_files: true,
        }),
        name => {
            let networks = Networks::open(root).map_err(net_err)?;
            let netns_path = netns_path(root, c);
            if let Some(dir) = netns_path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| RunError::Network(format!("creating {}: {e}", dir.display())))?;
            }
            // Left over by a crash: start from a fresh namespace.
            if netns_path.exists() {
                teardown(root, c);
            }
            netns::create(&netns_path).map_err(net_err)?;
            let connected = (|| {
                let ip = match &c.config.ip {
                    Some(ip) => Some(
                        ip.parse::<Ipv4Addr>()
                            .map_err(|_| RunError::Invalid(format!("invalid --ip {ip:?}")))?,
                    ),
                    None => None,
                };
                let req = EndpointRequest {
                    container_id: c.config.id.clone(),
                    name: c.config.name.clone(),
                    aliases: c.config.network_aliases.clone(),
                    netns: netns_path.clone(),
                    ports: bindings(c)?,
                    ip,
                };
                let ep = networks.connect(name, &req).map_err(net_err)?;
                let dns = if ep.dns {
                    Some(
                        network::dns::spawn(&netns_path, networks.clone(), &c.config.id)
                            .map_err(net_err)?,
                    )
                } else {
                    None
                };
                Ok((ep, dns))
            })();
            let (ep, dns) = match connected {
                Ok(x) => x,
                Err(e) => {
                    teardown(root, c);
                    return Err(e);
                }
            };
            let ports = ep
                .ports
                .iter()
                .map(|p| BoundPort {
                    container_port: p.container_port,
                    proto: p.proto.as_str().to_string(),
                    host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                    host_port: p.host_port.unwrap_or(0),
                })
                .collect();
            Ok(NetSetup {
                sandbox: SandboxNetwork::Join(netns_path),
                ips: vec![ep.ip.to_string()],
                resolv_conf: network::resolv_conf(std::slice::from_ref(&ep)),
                infos: vec![NetworkInfo {
                    network: ep.network.clone(),
                    ip_address: ep.ip.to_string(),
                    ip_prefix_len: ep.prefix_len,
                    gateway: ep.gateway.to_string(),
                    mac_address: ep.mac.clone(),
                }],
                ports,
                dns,
                host_files: false,
            })
        }
    }
}

/// `kiln network connect` of a running container: its namespace joins `network` now (a new
/// `ethN`, an address from that network) and its state lists the network. The connection
/// lasts until the container stops (a restart joins only the network it was created with).
pub fn connect_running(
    root: &Path,
    c: &Container,
    network: &str,
    aliases: Vec<String>,
    ip: Option<Ipv4Addr>,
) -> Result<NetworkInfo> {
    if matches!(c.config.network_mode.as_str(), "none" | "host") {
        return Err(RunError::Invalid(format!(
            "container {} uses --network {}: it cannot join other networks",
            c.config.name, c.config.network_mode
        )));
    }
    if !c.state()?.is_running() {
        return Err(RunError::Invalid(format!(
            "container {} is not running: kiln connects running containers only",
            c.config.name
        )));
    }
    let networks = Networks::open(root).map_err(net_err)?;
    let req = EndpointRequest {
        container_id: c.config.id.clone(),
        name: c.config.name.clone(),
        aliases,
        netns: netns_path(root, c),
        ports: Vec::new(),
        ip,
    };
    let ep = networks.connect(network, &req).map_err(net_err)?;
    let info = NetworkInfo {
        network: ep.network.clone(),
        ip_address: ep.ip.to_string(),
        ip_prefix_len: ep.prefix_len,
        gateway: ep.gateway.to_string(),
        mac_address: ep.mac.clone(),
    };
    c.update_state(|s| s.networks.push(info.clone()))?;
    Ok(info)
}

/// `kiln network disconnect`: the container leaves `network` (its interface, address and
/// name on that network go).
pub fn disconnect(root: &Path, c: &Container, network: &str) -> Result<()> {
    let networks = Networks::open(root).map_err(net_err)?;
    let name = networks.inspect(network).map_err(net_err)?.name;
    let state = c.state()?;
    if !state.networks.iter().any(|n| n.network == name) {
        return Err(RunError::Invalid(format!(
            "container {} is not connected to network {name}",
            c.config.name
        )));
    }
    networks.disconnect(&name, &c.config.id).map_err(net_err)?;
    c.update_state(|s| s.networks.retain(|n| n.network != name))?;
    Ok(())
}

/// Releases what [`setup`] made (idempotent): endpoints, port rules, the namespace.
pub fn teardown(root: &Path, c: &Container) {
    if matches!(c.config.network_mode.as_str(), "none" | "host") {
        return;
    }
    // The namespace first: with no process left in it, the kernel destroys it (and the
    // container's veth with it) in the background, so the release does not delete the veth
    // itself (that waits ~20 ms for the kernel). If the namespace cannot be removed, the
    // release deletes the veth.
    let netns_gone = match netns::remove(&netns_path(root, c)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(container = c.short_id(), error = %e, "cannot remove the network namespace");
            false
        }
    };
    match Networks::open(root) {
        Ok(n) => {
            let released = if netns_gone {
                n.release_container_netns_gone(&c.config.id)
            } else {
                n.release_container(&c.config.id)
            };
            if let Err(e) = released {
                tracing::warn!(container = c.short_id(), error = %e, "cannot release the network");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot open the networks"),
    }
}
