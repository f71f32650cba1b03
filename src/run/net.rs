//! A container's network at start and stop: `none` (a fresh namespace with `lo`), `host`
//! (the host's namespace, its `/etc/resolv.conf`), and bridge / user networks through the
//! network module (a persistent namespace under the container's directory, connected to the
//! network, published ports, the embedded DNS server).

use std::path::Path;

use super::state::{BoundPort, Container, NetworkInfo};
use super::{Result, RunError};
use crate::executor::sandbox::SandboxNetwork;

/// What the sandbox and the state need from a container's network.
#[derive(Debug, Clone)]
pub struct NetSetup {
    pub sandbox: SandboxNetwork,
    /// The container's addresses (for `/etc/hosts`).
    pub ips: Vec<String>,
    pub resolv_conf: String,
    pub infos: Vec<NetworkInfo>,
    pub ports: Vec<BoundPort>,
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

/// Prepares the container's network for one run.
pub fn setup(_root: &Path, c: &Container) -> Result<NetSetup> {
    match c.config.network_mode.as_str() {
        "none" => Ok(NetSetup {
            sandbox: SandboxNetwork::None,
            ips: Vec::new(),
            resolv_conf: host_resolv_conf(false),
            infos: Vec::new(),
            ports: Vec::new(),
        }),
        "host" => Ok(NetSetup {
            sandbox: SandboxNetwork::Host,
            ips: Vec::new(),
            resolv_conf: host_resolv_conf(true),
            infos: Vec::new(),
            ports: Vec::new(),
        }),
        other => Err(RunError::Network(format!(
            "network {other:?} is not available in this build (use --network none or host)"
        ))),
    }
}

/// Releases what [`setup`] made (idempotent).
pub fn teardown(_root: &Path, _c: &Container) {}
