//! Address management: subnets for networks from a machine-wide pool (172.18.0.0/24 up to
//! 172.31.255.0/24, skipping any subnet that overlaps a host route or another network), and
//! addresses for endpoints inside a network (never one that is in use; allocation continues
//! after the last one handed out, so a released address is not reused at once).

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::error::NetworkError;
use super::link;
use super::state::NetworkInfo;
use crate::cache::lock::FileLock;

/// The machine-wide lock held while a subnet is chosen and put on its bridge (every kiln
/// root on this machine shares it).
pub(crate) fn machine_lock() -> Result<FileLock, NetworkError> {
    let dir = Path::new("/run/kiln");
    std::fs::create_dir_all(dir).map_err(|e| NetworkError::io("cannot create", dir, e))?;
    Ok(FileLock::exclusive(&dir.join("ipam.lock"))?)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The candidate subnets, in order.
fn pool() -> impl Iterator<Item = Ipv4Net> {
    (18u32..=31).flat_map(|second| {
        (0u32..=255).filter_map(move |third| {
            Ipv4Net::new(
                Ipv4Addr::from((172 << 24) | (second << 16) | (third << 8)),
                24,
            )
            .ok()
        })
    })
}

/// The first pool subnet free of host routes and of `reserved` (other networks of this root,
/// whose bridges may be down).
pub(crate) fn pick_subnet(reserved: &[Ipv4Net]) -> Result<Ipv4Net, NetworkError> {
    let routes = link::host_routes()?;
    pick_from(
        pool(),
        routes
            .iter()
            .map(|(n, _)| *n)
            .chain(reserved.iter().copied()),
    )
}

fn pick_from(
    mut candidates: impl Iterator<Item = Ipv4Net>,
    taken: impl Iterator<Item = Ipv4Net>,
) -> Result<Ipv4Net, NetworkError> {
    let taken: Vec<Ipv4Net> = taken.collect();
    candidates
        .find(|c| !taken.iter().any(|t| overlaps(*c, *t)))
        .ok_or(NetworkError::PoolExhausted)
}

/// A user-given subnet must not overlap host routes (other than its own bridge's) or other
/// networks.
pub(crate) fn check_free(
    subnet: Ipv4Net,
    own_bridge: &str,
    reserved: &[Ipv4Net],
) -> Result<(), NetworkError> {
    for r in reserved {
        if overlaps(subnet, *r) {
            return Err(NetworkError::Overlap {
                subnet: subnet.to_string(),
                other: format!("another kiln network's subnet {r}"),
            });
        }
    }
    if link::exists(own_bridge)? {
        // Its own route is there: the bridge survived, the address is ours.
        return Ok(());
    }
    for (net, what) in link::host_routes()? {
        if overlaps(subnet, net) {
            return Err(NetworkError::Overlap {
                subnet: subnet.to_string(),
                other: what,
            });
        }
    }
    Ok(())
}

/// Static checks of `--subnet` / `--gateway`.
pub(crate) fn check_user_subnet(
    subnet: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetworkError> {
    if subnet.prefix_len() > 30 {
        return Err(NetworkError::Invalid(format!(
            "subnet {subnet} is too small (at most /30)"
        )));
    }
    if let Some(gw) = gateway {
        let s = subnet.trunc();
        if !s.contains(&gw) || gw == s.network() || gw == s.broadcast() {
            return Err(NetworkError::Invalid(format!(
                "gateway {gw} is not a host address of subnet {s}"
            )));
        }
    }
    Ok(())
}

/// The first host address: the default gateway.
pub(crate) fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn usable(info: &NetworkInfo, subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    let gateway = info.gateway.unwrap_or_else(|| first_host(subnet));
    subnet.contains(&ip)
        && ip != subnet.network()
        && ip != subnet.broadcast()
        && ip != gateway
        && !info.endpoints.values().any(|e| e.ip == ip)
}

/// The next free address after the last one handed out (wrapping around).
pub(crate) fn next_free(info: &NetworkInfo) -> Result<Ipv4Addr, NetworkError> {
    let subnet = info
        .subnet
        .ok_or_else(|| NetworkError::Invalid(format!("network {} has no subnet", info.name)))?;
    let first = u32::from(subnet.network());
    let size = 1u64 << (32 - subnet.prefix_len());
    let start = info
        .last_ip
        .filter(|ip| subnet.contains(ip))
        .map_or(0, |ip| u64::from(u32::from(ip) - first) + 1);
    for step in 0..size {
        let offset = (start + step) % size;
        let ip = Ipv4Addr::from(first + offset as u32);
        if usable(info, subnet, ip) {
            return Ok(ip);
        }
    }
    Err(NetworkError::NoAddress {
        network: info.name.clone(),
        subnet: subnet.to_string(),
    })
}

/// `--ip`: must be a free host address of the subnet.
pub(crate) fn check_requested(info: &NetworkInfo, ip: Ipv4Addr) -> Result<Ipv4Addr, NetworkError> {
    let subnet = info
        .subnet
        .ok_or_else(|| NetworkError::Invalid(format!("network {} has no subnet", info.name)))?;
    if !subnet.contains(&ip) {
        return Err(NetworkError::Invalid(format!(
            "address {ip} is not in network {}'s subnet {subnet}",
            info.name
        )));
    }
    if !usable(info, subnet, ip) {
        return Err(NetworkError::AddressInUse {
            ip: ip.to_string(),
            network: info.name.clone(),
        });
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::network::state::EndpointRecord;
    use std::collections::{BTreeMap, HashSet};

    fn net(subnet: &str) -> NetworkInfo {
        NetworkInfo {
            id: "0".repeat(64),
            name: "n".into(),
            driver: "bridge".into(),
            created: String::new(),
            subnet: Some(subnet.parse().unwrap()),
            gateway: None,
            internal: false,
            user_subnet: false,
            labels: BTreeMap::new(),
            bridge: None,
            endpoints: BTreeMap::new(),
            last_ip: None,
        }
    }

    fn take(info: &mut NetworkInfo, ip: Ipv4Addr) {
        let id = format!("c{}", info.endpoints.len());
        info.endpoints.insert(
            id.clone(),
            EndpointRecord {
                container_id: id,
                name: String::new(),
                aliases: vec![],
                ip,
                mac: String::new(),
                interface: String::new(),
                host_veth: String::new(),
                ports: vec![],
                netns: Default::default(),
            },
        );
        info.last_ip = Some(ip);
    }

    #[test]
    fn addresses_are_never_handed_out_twice() {
        let mut info = net("10.9.0.0/28");
        let mut seen = HashSet::new();
        // 16 addresses - network - broadcast - gateway = 13.
        for _ in 0..13 {
            let ip = next_free(&info).unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            take(&mut info, ip);
        }
        assert!(
            !seen.contains(&"10.9.0.1".parse().unwrap()),
            "gateway given out"
        );
        assert!(matches!(
            next_free(&info),
            Err(NetworkError::NoAddress { .. })
        ));
        // Release one in the middle: it is the only one free, so it comes back.
        let freed: Ipv4Addr = "10.9.0.5".parse().unwrap();
        info.endpoints.retain(|_, e| e.ip != freed);
        assert_eq!(next_free(&info).unwrap(), freed);
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut info = net("10.9.0.0/24");
        let a = next_free(&info).unwrap();
        assert_eq!(a, "10.9.0.2".parse::<Ipv4Addr>().unwrap());
        take(&mut info, a);
        info.endpoints.clear();
        assert_eq!(
            next_free(&info).unwrap(),
            "10.9.0.3".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn requested_address_checks() {
        let mut info = net("10.9.0.0/24");
        assert!(check_requested(&info, "10.9.0.1".parse().unwrap()).is_err());
        assert!(check_requested(&info, "10.9.1.1".parse().unwrap()).is_err());
        let ip = check_requested(&info, "10.9.0.77".parse().unwrap()).unwrap();
        take(&mut info, ip);
        assert!(matches!(
            check_requested(&info, ip),
            Err(NetworkError::AddressInUse { .. })
        ));
    }

    #[test]
    fn pool_skips_taken_subnets() {
        let taken: Vec<Ipv4Net> = vec![
            "172.18.0.0/24".parse().unwrap(),
            "172.18.1.0/16".parse().unwrap(),
        ];
        let got = pick_from(pool(), taken.into_iter()).unwrap();
        assert_eq!(got, "172.19.0.0/24".parse::<Ipv4Net>().unwrap());
        let everything: Vec<Ipv4Net> = vec!["172.16.0.0/12".parse().unwrap()];
        assert!(matches!(
            pick_from(pool(), everything.into_iter()),
            Err(NetworkError::PoolExhausted)
        ));
    }
}
