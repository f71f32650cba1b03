//! Links, addresses and routes through rtnetlink (no `ip` process on the hot path): the
//! bridge of a network, and the veth pair that puts a container on it. The container end is
//! created directly inside the container's namespace; its address and routes are set through a
//! netlink socket opened from a short-lived thread that entered that namespace (a socket stays
//! in the namespace it was created in).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use sha2::{Digest, Sha256};

use super::error::NetworkError;

/// `kb-` + 8 hex digits of the network id: unique across roots, within IFNAMSIZ.
pub(crate) fn bridge_name(network_id: &str) -> String {
    format!("kb-{}", &network_id[..network_id.len().min(8)])
}

/// `kv` + 11 hex digits of sha256(network id, container id): the host end of a veth.
pub(crate) fn veth_name(network_id: &str, container_id: &str) -> String {
    let digest = Sha256::digest(format!("{network_id}:{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("kv{}", &hex[..11])
}

/// Docker's scheme: 02:42 followed by the IPv4 address.
pub(crate) fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// A synchronous rtnetlink socket.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket in the network namespace `netns` (opened from a thread that enters it).
    pub(crate) fn open_in(netns: &Path) -> Result<Rtnl, NetworkError> {
        let file = File::open(netns).map_err(|e| NetworkError::Netns {
            path: netns.to_path_buf(),
            reason: format!("cannot open: {e}"),
        })?;
        super::netns::in_netns(&file, netns, Rtnl::open)?.map_err(|e| NetworkError::Netns {
            path: netns.to_path_buf(),
            reason: format!("cannot open a netlink socket inside: {e}"),
        })
    }

    /// Sends one request and collects the replies (all parts of a dump, or the ACK).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        if flags & NLM_F_DUMP != NLM_F_DUMP {
            header.flags |= NLM_F_ACK;
        }
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(_) => Err(e.to_io()),
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The index of interface `name`, None if there is none.
    pub(crate) fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of all interfaces.
    pub(crate) fn link_names(&mut self) -> io::Result<Vec<String>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    pub(crate) fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        if let Ok(net) = Ipv4Net::new(ip, prefix_len) {
            if prefix_len < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(net.broadcast()));
            }
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map(drop),
        }
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        match self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map(drop),
        }
    }

    fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Destinations of every IPv4 route (all tables) except default routes: what a new
    /// subnet must not overlap.
    pub(crate) fn route_destinations(&mut self) -> io::Result<Vec<(Ipv4Net, String)>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewRoute(route) = r else {
                continue;
            };
            let prefix = route.header.destination_prefix_length;
            if prefix == 0 {
                continue;
            }
            let dst = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(dst) = dst {
                if let Ok(net) = Ipv4Net::new(dst, prefix) {
                    out.push((net.trunc(), format!("the host route to {net}")));
                }
            }
        }
        Ok(out)
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// Whether interface `name` exists in kiln's (the host's) namespace.
pub(crate) fn exists(name: &str) -> Result<bool, NetworkError> {
    let mut nl = Rtnl::open().map_err(|e| NetworkError::netlink("open", e))?;
    nl.index_of(name)
        .map(|i| i.is_some())
        .map_err(|e| NetworkError::netlink(format!("get link {name}"), e))
}

/// Deletes an interface (a bridge, or a veth with its peer); gone already is fine.
pub(crate) fn delete_link(name: &str) -> Result<(), NetworkError> {
    if name.is_empty() {
        return Ok(());
    }
    let mut nl = Rtnl::open().map_err(|e| NetworkError::netlink("open", e))?;
    nl.delete_link(name)
        .map_err(|e| NetworkError::netlink(format!("delete link {name}"), e))
}

/// Creates bridge `name` with address `gateway/prefix_len`, up, with `route_localnet` (so
/// DNAT from 127.0.0.1 can leave through it). An existing bridge of that name is reused.
pub(crate) fn create_bridge(
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetworkError> {
    let nlerr = |op: &str, e| NetworkError::netlink(format!("{op} bridge {name}"), e);
    let mut nl = Rtnl::open().map_err(|e| NetworkError::netlink("open", e))?;
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    match nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(nlerr("create", e)),
    }
    let index = nl
        .index_of(name)
        .map_err(|e| nlerr("look up", e))?
        .ok_or_else(|| nlerr("look up", io::Error::from_raw_os_error(libc_enodev())))?;
    let configured = (|| {
        nl.add_address(index, gateway, prefix_len)?;
        nl.set_up(index)
    })();
    if let Err(e) = configured {
        let _ = nl.delete_link(name);
        return Err(nlerr("configure", e));
    }
    let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
    std::fs::write(&sysctl, b"1").map_err(|e| NetworkError::io("cannot write", sysctl, e))?;
    Ok(())
}

/// Host routes, for choosing subnets that do not collide with them.
pub(crate) fn host_routes() -> Result<Vec<(Ipv4Net, String)>, NetworkError> {
    let mut nl = Rtnl::open().map_err(|e| NetworkError::netlink("open", e))?;
    nl.route_destinations()
        .map_err(|e| NetworkError::netlink("dump routes", e))
}

/// What [`attach`] needs.
pub(crate) struct Attach<'a> {
    pub bridge: &'a str,
    pub host_veth: &'a str,
    pub netns: &'a Path,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: &'a str,
    pub default_route: bool,
}

/// Puts a container's namespace on a bridge: veth `host_veth` (on the bridge, up) with its
/// peer created inside the namespace as the lowest free `ethN`, addressed, up, lo up, and the
/// default route via the gateway when asked. Returns the interface name inside.
pub(crate) fn attach(a: &Attach) -> Result<String, NetworkError> {
    let ns = File::open(a.netns).map_err(|e| NetworkError::Netns {
        path: a.netns.to_path_buf(),
        reason: format!("cannot open: {e}"),
    })?;
    let mut inner = Rtnl::open_in(a.netns)?;
    let nlin =
        |op: &str, e| NetworkError::netlink(format!("{op} in namespace {}", a.netns.display()), e);
    let names = inner.link_names().map_err(|e| nlin("list links", e))?;
    let interface = (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !names.contains(n))
        .unwrap_or_else(|| "eth0".to_string());

    let mut host = Rtnl::open().map_err(|e| NetworkError::netlink("open", e))?;
    let bridge = host
        .index_of(a.bridge)
        .map_err(|e| NetworkError::netlink(format!("get link {}", a.bridge), e))?
        .ok_or_else(|| {
            NetworkError::netlink(
                format!("get link {}", a.bridge),
                io::Error::from_raw_os_error(libc_enodev()),
            )
        })?;

    let veth_msg = || {
        // Not up at creation: the kernel opens the peer before linking the pair, and a veth
        // without its peer refuses to open (ENOTCONN). It is set up from inside below.
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(interface.clone()));
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        peer.attributes
            .push(LinkAttribute::Address(mac_bytes(a.mac)));
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(a.host_veth.to_string()));
        msg.attributes.push(LinkAttribute::Controller(bridge));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        RouteNetlinkMessage::NewLink(msg)
    };
    let flags = NLM_F_CREATE | NLM_F_EXCL;
    match host.request(veth_msg(), flags) {
        Ok(_) => {}
        // A leftover of a crashed connect of this very container: replace it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = host.delete_link(a.host_veth);
            host.request(veth_msg(), flags)
                .map_err(|e| NetworkError::netlink(format!("create veth {}", a.host_veth), e))?;
        }
        Err(e) => {
            return Err(NetworkError::netlink(
                format!("create veth {}", a.host_veth),
                e,
            ))
        }
    }
    let configured = (|| -> Result<(), NetworkError> {
        let index = inner
            .index_of(&interface)
            .map_err(|e| nlin("get link", e))?
            .ok_or_else(|| nlin("get link", io::Error::from_raw_os_error(libc_enodev())))?;
        inner
            .add_address(index, a.ip, a.prefix_len)
            .map_err(|e| nlin("add address", e))?;
        inner.set_up(1).map_err(|e| nlin("set lo up", e))?;
        inner.set_up(index).map_err(|e| nlin("set up", e))?;
        if a.default_route {
            inner
                .add_default_route(index, a.gateway)
                .map_err(|e| nlin("add default route", e))?;
        }
        Ok(())
    })();
    if let Err(e) = configured {
        let _ = host.delete_link(a.host_veth);
        return Err(e);
    }
    Ok(interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ() {
        let net = "0123456789abcdef".repeat(4);
        assert_eq!(bridge_name(&net), "kb-01234567");
        let a = veth_name(&net, "c1");
        let b = veth_name(&net, "c2");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("kv"), "{a}");
        assert_eq!(mac_for(Ipv4Addr::new(172, 18, 0, 2)), "02:42:ac:12:00:02");
        assert_eq!(
            mac_bytes("02:42:ac:12:00:02"),
            vec![2, 0x42, 0xac, 0x12, 0, 2]
        );
    }
}
