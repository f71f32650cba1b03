//! The container's `/etc/resolv.conf` and `/etc/hosts`, as docker writes them: on a
//! user-defined network the embedded DNS server (127.0.0.11) answers, elsewhere the host's
//! nameservers are used (minus loopback ones, which mean nothing inside a network namespace).

use std::net::IpAddr;

use super::Endpoint;

const HOST_RESOLV: &str = "/etc/resolv.conf";

/// `/etc/resolv.conf` for a container with these endpoints (empty for `--network none`).
pub fn resolv_conf(endpoints: &[Endpoint]) -> String {
    let host = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
    resolv_conf_from(&host, endpoints)
}

/// The non-loopback nameservers of a resolv.conf text.
pub(crate) fn upstream_servers(host: &str) -> Vec<IpAddr> {
    host.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// The upstream servers the DNS server forwards to: the host's, or Google's when the host
/// has only loopback ones (docker's fallback).
pub(crate) fn host_upstreams() -> Vec<IpAddr> {
    let host = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
    let servers = upstream_servers(&host);
    if servers.is_empty() {
        vec![
            "8.8.8.8".parse().expect("literal"),
            "8.8.4.4".parse().expect("literal"),
        ]
    } else {
        servers
    }
}

pub(crate) fn resolv_conf_from(host: &str, endpoints: &[Endpoint]) -> String {
    if endpoints.iter().any(|e| e.driver == "host") {
        return host.to_string();
    }
    let others: Vec<&str> = host
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("search ") || l.starts_with("domain "))
        .collect();
    let mut out = String::new();
    if endpoints.iter().any(|e| e.dns) {
        out.push_str("nameserver 127.0.0.11\n");
        for l in &others {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("options ndots:0\n");
        return out;
    }
    let servers = upstream_servers(host);
    if servers.is_empty() {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    } else {
        for s in servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
    }
    for l in host.lines().map(str::trim) {
        if l.starts_with("search ") || l.starts_with("domain ") || l.starts_with("options ") {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `/etc/hosts` for a container: localhost entries and its hostname on its first address
/// (the host's file for `--network host`).
pub fn etc_hosts(hostname: &str, endpoints: &[Endpoint]) -> String {
    if endpoints.iter().any(|e| e.driver == "host") {
        return std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    }
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(e) = endpoints.iter().find(|e| !e.ip.is_unspecified()) {
        out.push_str(&format!("{}\t{hostname}\n", e.ip));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(driver: &str, dns: bool, ip: [u8; 4]) -> Endpoint {
        Endpoint {
            network: "n".into(),
            network_id: "i".into(),
            ip: Ipv4Addr::from(ip),
            prefix_len: 24,
            gateway: Ipv4Addr::new(172, 18, 0, 1),
            mac: String::new(),
            interface: "eth0".into(),
            ports: vec![],
            dns,
            driver: driver.into(),
        }
    }

    const HOST: &str =
        "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\noptions edns0\n";

    #[test]
    fn user_network_uses_the_embedded_server() {
        let r = resolv_conf_from(HOST, &[ep("bridge", true, [172, 18, 0, 2])]);
        assert_eq!(
            r,
            "nameserver 127.0.0.11\nsearch example.org\noptions ndots:0\n"
        );
    }

    #[test]
    fn default_bridge_drops_loopback_servers() {
        let r = resolv_conf_from(HOST, &[ep("bridge", false, [172, 18, 0, 2])]);
        assert_eq!(
            r,
            "nameserver 10.0.0.2\nsearch example.org\noptions edns0\n"
        );
        let r = resolv_conf_from("nameserver 127.0.0.1\n", &[]);
        assert_eq!(r, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        assert_eq!(
            resolv_conf_from(HOST, &[ep("host", false, [0, 0, 0, 0])]),
            HOST
        );
    }

    #[test]
    fn hosts_names_the_first_address() {
        let h = etc_hosts("abc", &[ep("bridge", true, [172, 18, 0, 5])]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("172.18.0.5\tabc\n"), "{h}");
        assert!(!etc_hosts("abc", &[]).contains("abc"));
    }
}
