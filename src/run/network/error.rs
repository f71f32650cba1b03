//! The one error type of the network module: every variant names the network, container,
//! interface, file or command it is about.

use std::io;
use std::path::PathBuf;

use crate::cache::lock::LockError;

/// Errors of `run::network`.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("invalid network name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is a pre-defined network and cannot be removed")]
    Predefined(String),
    #[error("error while removing network {name}: network {name} id {id} has active endpoints ({containers})")]
    InUse {
        name: String,
        id: String,
        containers: String,
    },
    #[error("container {container} is already attached to network {network}")]
    AlreadyConnected { container: String, network: String },
    #[error("container {container} cannot be connected to network {network}: {reason}")]
    CannotConnect {
        container: String,
        network: String,
        reason: String,
    },
    #[error("no free subnet left in kiln's address pool (172.18.0.0/15 .. 172.31.255.0/24 in /24s); remove unused networks or pass --subnet")]
    PoolExhausted,
    #[error("subnet {subnet} overlaps with {other} on this host")]
    Overlap { subnet: String, other: String },
    #[error("no free IPv4 address left in network {network} ({subnet})")]
    NoAddress { network: String, subnet: String },
    #[error("address {ip} is already in use in network {network}")]
    AddressInUse { ip: String, network: String },
    #[error("Bind for {addr} failed: port is already allocated")]
    PortAllocated { addr: String },
    #[error("invalid port specification {spec:?}: {reason}")]
    Publish { spec: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt network state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    #[error("{command}: {message}")]
    Firewall { command: String, message: String },
    #[error("DNS server for container {container}: {reason}")]
    Dns { container: String, reason: String },
}

impl NetworkError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        NetworkError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: io::Error) -> Self {
        NetworkError::Netlink {
            op: op.into(),
            source,
        }
    }
}
