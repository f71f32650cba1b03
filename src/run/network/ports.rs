//! Docker's `-p` syntax: `[IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]`, with port ranges
//! (`8000-8002:80-82`, `80-82`), `IP::PORT` for an ephemeral host port, and `[v6]:...`.

use std::net::IpAddr;

use super::error::NetworkError;
use super::{PortBinding, Proto};

fn bad(spec: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::Publish {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// `80` or `80-82` → (first, last).
fn range(spec: &str, s: &str, what: &str) -> Result<(u16, u16), NetworkError> {
    let port = |p: &str| -> Result<u16, NetworkError> {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n != 0 || what == "host port")
            .ok_or_else(|| bad(spec, format!("invalid {what} {p:?}")))
    };
    match s.split_once('-') {
        None => {
            let p = port(s)?;
            Ok((p, p))
        }
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if b < a {
                return Err(bad(spec, format!("invalid {what} range {s:?}")));
            }
            Ok((a, b))
        }
    }
}

/// Parses one `-p` value into its bindings (one per port of a range).
pub fn parse_publish(spec: &str) -> Result<Vec<PortBinding>, NetworkError> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some((_, p)) => {
            return Err(bad(
                spec,
                format!("unsupported protocol {p:?} (tcp or udp)"),
            ))
        }
        None => (spec, Proto::Tcp),
    };
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (ip_part, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| bad(spec, "unterminated [ in the host address"))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| bad(spec, "expected : after the host address"))?;
        (Some(ip), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => (Some(parts[0]), &rest[parts[0].len() + 1..]),
            _ => return Err(bad(spec, "too many colons")),
        }
    };
    let host_ip = match ip_part {
        None | Some("") => None,
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| bad(spec, format!("invalid host address {ip:?}")))?,
        ),
    };
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, ports),
    };
    if container.is_empty() {
        return Err(bad(spec, "no container port"));
    }
    let (c0, c1) = range(spec, container, "container port")?;
    let count = usize::from(c1 - c0) + 1;
    let hosts: Vec<Option<u16>> = match host.filter(|h| !h.is_empty()) {
        None => vec![None; count],
        Some(h) => {
            let (h0, h1) = range(spec, h, "host port")?;
            if usize::from(h1 - h0) + 1 != count {
                return Err(bad(
                    spec,
                    "host and container port ranges must have the same length",
                ));
            }
            (h0..=h1).map(|p| (p != 0).then_some(p)).collect()
        }
    };
    Ok((c0..=c1)
        .zip(hosts)
        .map(|(container_port, host_port)| PortBinding {
            host_ip,
            host_port,
            container_port,
            proto,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortBinding {
        let mut v = parse_publish(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v.remove(0)
    }

    #[test]
    fn docker_forms() {
        let b = one("80");
        assert_eq!(
            (b.host_ip, b.host_port, b.container_port, b.proto),
            (None, None, 80, Proto::Tcp)
        );
        let b = one("8080:80/udp");
        assert_eq!(
            (b.host_port, b.container_port, b.proto),
            (Some(8080), 80, Proto::Udp)
        );
        let b = one("127.0.0.1:8080:80");
        assert_eq!(b.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(b.host_port, Some(8080));
        let b = one("127.0.0.1::80");
        assert_eq!((b.host_port, b.container_port), (None, 80));
        let b = one("[::1]:8080:80");
        assert_eq!(b.host_ip, Some("::1".parse().unwrap()));
        let v = parse_publish("8000-8002:80-82/tcp").unwrap();
        assert_eq!(
            v.iter()
                .map(|b| (b.host_port, b.container_port))
                .collect::<Vec<_>>(),
            vec![(Some(8000), 80), (Some(8001), 81), (Some(8002), 82)]
        );
        assert_eq!(parse_publish("80-81").unwrap().len(), 2);
    }

    #[test]
    fn bad_specs_say_why() {
        for spec in [
            "",
            "0",
            "x",
            "80/sctp",
            "8000-8001:80",
            "1:2:3:4",
            "70000",
            "90-80",
            "[::1:80",
        ] {
            let err = parse_publish(spec).unwrap_err().to_string();
            assert!(err.contains(&format!("{spec:?}")), "{spec}: {err}");
        }
    }
}
