//! iptables rules of kiln's bridge networks, as docker sets them up with
//! `userland-proxy=false`: outbound NAT, isolation between networks, and DNAT for published
//! ports (from outside, from containers, and from 127.0.0.1 through `route_localnet`).
//!
//! Chains (shared by every kiln root on the machine, created once, never removed):
//! - filter `FORWARD` → `KILN-FORWARD` (first rule) → `KILN-ISOLATION-1` → `KILN-ISOLATION-2`
//! - nat `PREROUTING`/`OUTPUT` (local destinations) → `KILN-DNAT`; `POSTROUTING` →
//!   `KILN-POSTROUTING`
//!
//! Every rule carries a comment tag: `kiln:<12 hex of the network id>` for a network's rules,
//! `kiln:<network 12>:<container 12>` for a container's published ports, so removal deletes
//! exactly those rules (`iptables-save`, then `-D` of the tagged lines in one
//! `iptables-restore --noflush`). Rules are added with one `iptables-restore` per change too.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use super::error::NetworkError;
use super::state::NetworkInfo;
use super::{PortBinding, Proto};
use crate::cache::lock::FileLock;

const CHAINS_FILTER: [&str; 3] = ["KILN-FORWARD", "KILN-ISOLATION-1", "KILN-ISOLATION-2"];
const CHAINS_NAT: [&str; 2] = ["KILN-DNAT", "KILN-POSTROUTING"];

/// The tag of a network's rules.
pub(crate) fn network_tag(info: &NetworkInfo) -> String {
    format!("kiln:{}", info.short_id())
}

/// The tag of a container's port rules on a network.
pub(crate) fn port_tag(info: &NetworkInfo, container_id: &str) -> String {
    let cid: String = container_id.chars().take(12).collect();
    format!("kiln:{}:{cid}", info.short_id())
}

fn machine_lock() -> Result<FileLock, NetworkError> {
    let dir = Path::new("/run/kiln");
    std::fs::create_dir_all(dir).map_err(|e| NetworkError::io("cannot create", dir, e))?;
    Ok(FileLock::exclusive(&dir.join("firewall.lock"))?)
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let fail = |message: String| NetworkError::Firewall {
        command: command.clone(),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    if let Some(input) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes())
                .map_err(|e| fail(format!("cannot write its input: {e}")))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait: {e}")))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(input) = stdin {
            msg.push_str(&format!("\ninput was:\n{input}"));
        }
        return Err(fail(msg));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(script: &str) -> Result<(), NetworkError> {
    run("iptables-restore", &["--noflush", "-w"], Some(script)).map(drop)
}

/// `iptables-save` of the filter and nat tables.
fn save() -> Result<String, NetworkError> {
    run("iptables-save", &[], None)
}

/// The tables of an `iptables-save` dump, with the lines of each.
fn tables(dump: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            out.push((t.to_string(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// The comment of a saved rule line.
fn comment_of(line: &str) -> Option<String> {
    let idx = line.find("--comment ")?;
    let rest = &line[idx + "--comment ".len()..];
    let value = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next().unwrap_or("")
    } else {
        rest.split_whitespace().next().unwrap_or("")
    };
    Some(value.to_string())
}

/// Creates kiln's chains and the jumps into them where missing (under the machine lock).
fn ensure_base(dump: &str) -> String {
    let t = tables(dump);
    let lines_of = |table: &str| -> Vec<String> {
        t.iter()
            .find(|(n, _)| n == table)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    };
    let filter = lines_of("filter");
    let nat = lines_of("nat");
    let has_chain =
        |lines: &[String], c: &str| lines.iter().any(|l| l.starts_with(&format!(":{c} ")));
    let has_rule = |lines: &[String], r: &str| lines.iter().any(|l| l == r);
    let mut s = String::from("*filter\n");
    for c in CHAINS_FILTER {
        if !has_chain(&filter, c) {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
    }
    if !has_rule(&filter, "-A FORWARD -j KILN-FORWARD") {
        s.push_str("-I FORWARD 1 -j KILN-FORWARD\n");
    }
    if !has_rule(&filter, "-A KILN-FORWARD -j KILN-ISOLATION-1") {
        s.push_str("-I KILN-FORWARD 1 -j KILN-ISOLATION-1\n");
    }
    // Published ports are reachable from every network: DNAT'ed traffic skips isolation.
    let dnat_return = "-A KILN-ISOLATION-1 -m conntrack --ctstate DNAT -j RETURN";
    if !has_rule(&filter, dnat_return) {
        s.push_str("-I KILN-ISOLATION-1 1 -m conntrack --ctstate DNAT -j RETURN\n");
    }
    s.push_str("COMMIT\n*nat\n");
    for c in CHAINS_NAT {
        if !has_chain(&nat, c) {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
    }
    for (chain, rule) in [
        ("PREROUTING", "-m addrtype --dst-type LOCAL -j KILN-DNAT"),
        ("OUTPUT", "-m addrtype --dst-type LOCAL -j KILN-DNAT"),
        ("POSTROUTING", "-j KILN-POSTROUTING"),
    ] {
        if !has_rule(&nat, &format!("-A {chain} {rule}")) {
            s.push_str(&format!("-A {chain} {rule}\n"));
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// A network's rules (NAT out unless internal, isolation, forwarding), replacing any
/// leftovers with its tag. Turns on IPv4 forwarding.
pub(crate) fn setup_network(info: &NetworkInfo) -> Result<(), NetworkError> {
    let (Some(bridge), Some(subnet)) = (&info.bridge, info.subnet) else {
        return Ok(());
    };
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read(forward)
        .map(|v| v.first() != Some(&b'1'))
        .unwrap_or(true)
    {
        std::fs::write(forward, b"1").map_err(|e| NetworkError::io("cannot write", forward, e))?;
    }
    let tag = network_tag(info);
    let c = format!("-m comment --comment {tag}");
    let b = bridge;
    let _lock = machine_lock()?;
    let dump = save()?;
    let mut script = remove_script(&dump, |t| t == tag);
    script.push_str(&ensure_base(&dump));
    let mut filter = vec![
        format!("-A KILN-FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT"),
        format!("-A KILN-FORWARD -i {b} -o {b} {c} -j ACCEPT"),
    ];
    if info.internal {
        filter.push(format!("-A KILN-FORWARD -i {b} {c} -j DROP"));
    } else {
        filter.push(format!(
            "-A KILN-FORWARD -o {b} -m conntrack --ctstate DNAT {c} -j ACCEPT"
        ));
        filter.push(format!("-A KILN-FORWARD -i {b} ! -o {b} {c} -j ACCEPT"));
    }
    filter.push(format!("-A KILN-FORWARD -o {b} {c} -j DROP"));
    filter.push(format!(
        "-A KILN-ISOLATION-1 -i {b} ! -o {b} {c} -j KILN-ISOLATION-2"
    ));
    filter.push(format!("-A KILN-ISOLATION-2 -o {b} {c} -j DROP"));
    let mut nat = vec![
        // Published ports reached from 127.0.0.1 (route_localnet) or the host's addresses.
        format!("-A KILN-POSTROUTING -o {b} -m addrtype --src-type LOCAL {c} -j MASQUERADE"),
        // Hairpin: a container reaching a published port of its own network.
        format!(
            "-A KILN-POSTROUTING -s {subnet} -o {b} -m conntrack --ctstate DNAT {c} -j MASQUERADE"
        ),
    ];
    if !info.internal {
        nat.push(format!(
            "-A KILN-POSTROUTING -s {subnet} ! -o {b} {c} -j MASQUERADE"
        ));
    }
    script.push_str(&format!(
        "*filter\n{}\nCOMMIT\n*nat\n{}\nCOMMIT\n",
        filter.join("\n"),
        nat.join("\n")
    ));
    restore(&script)
}

/// Removes a network's rules and the port rules of its containers.
pub(crate) fn teardown_network(info: &NetworkInfo) -> Result<(), NetworkError> {
    let tag = network_tag(info);
    let prefix = format!("{tag}:");
    let _lock = machine_lock()?;
    let dump = save()?;
    let script = remove_script(&dump, |t| t == tag || t.starts_with(&prefix));
    if script.is_empty() {
        return Ok(());
    }
    restore(&script)
}

/// An `iptables-restore --noflush` script deleting every rule whose comment matches.
fn remove_script(dump: &str, matches: impl Fn(&str) -> bool) -> String {
    let mut s = String::new();
    for (table, lines) in tables(dump) {
        let dels: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("-A "))
            .filter(|l| comment_of(l).is_some_and(|c| matches(&c)))
            .map(|l| format!("-D {}", &l[3..]))
            .collect();
        if !dels.is_empty() {
            s.push_str(&format!("*{table}\n{}\nCOMMIT\n", dels.join("\n")));
        }
    }
    s
}

/// Host ports kiln has published (any root): (proto, host ip or None, port).
fn published(dump: &str) -> HashSet<(Proto, Option<Ipv4Addr>, u16)> {
    let mut out = HashSet::new();
    for (table, lines) in tables(dump) {
        if table != "nat" {
            continue;
        }
        for l in lines.iter().filter(|l| l.starts_with("-A KILN-DNAT ")) {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1).copied())
            };
            let proto = match after("-p") {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                _ => continue,
            };
            let ip = after("-d")
                .and_then(|d| d.split('/').next())
                .and_then(|d| d.parse().ok());
            if let Some(port) = after("--dport").and_then(|p| p.parse().ok()) {
                out.insert((proto, ip, port));
            }
        }
    }
    out
}

fn conflicts(
    used: &HashSet<(Proto, Option<Ipv4Addr>, u16)>,
    p: Proto,
    ip: Option<Ipv4Addr>,
    port: u16,
) -> bool {
    used.iter().any(|(up, uip, uport)| {
        *up == p && *uport == port && (uip.is_none() || ip.is_none() || *uip == ip)
    })
}

/// Whether a host process holds the port (then DNAT would steal its traffic: refuse).
fn bindable(p: Proto, ip: Option<Ipv4Addr>, port: u16) -> Option<u16> {
    let addr = SocketAddr::new(IpAddr::V4(ip.unwrap_or(Ipv4Addr::UNSPECIFIED)), port);
    match p {
        Proto::Tcp => TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .ok()
            .map(|a| a.port()),
        Proto::Udp => UdpSocket::bind(addr)
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.port()),
    }
}

fn v4(b: &PortBinding) -> Result<Option<Ipv4Addr>, NetworkError> {
    match b.host_ip {
        None => Ok(None),
        Some(IpAddr::V4(ip)) if ip.is_unspecified() => Ok(None),
        Some(IpAddr::V4(ip)) => Ok(Some(ip)),
        Some(IpAddr::V6(ip)) => Err(NetworkError::Publish {
            spec: format!("[{ip}]:{}", b.container_port),
            reason: "IPv6 host addresses are not supported (kiln networks are IPv4)".into(),
        }),
    }
}

/// Publishes ports of the container at `ip`: picks ephemeral host ports, refuses ports
/// that kiln (any root) or a host process already holds, then adds the DNAT rules in one
/// `iptables-restore`. Returns the bindings with their host ports.
pub(crate) fn publish(
    info: &NetworkInfo,
    container_id: &str,
    ip: Ipv4Addr,
    bindings: &[PortBinding],
) -> Result<Vec<PortBinding>, NetworkError> {
    let tag = port_tag(info, container_id);
    let _lock = machine_lock()?;
    let dump = save()?;
    let mut used = published(&dump);
    let mut resolved = Vec::new();
    let mut rules = Vec::new();
    for b in bindings {
        let host_ip = v4(b)?;
        let port = match b.host_port.filter(|p| *p != 0) {
            Some(port) => {
                let shown = format!("{}:{port}", host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
                if conflicts(&used, b.proto, host_ip, port)
                    || bindable(b.proto, host_ip, port).is_none()
                {
                    return Err(NetworkError::PortAllocated { addr: shown });
                }
                port
            }
            None => {
                let mut found = None;
                for _ in 0..64 {
                    if let Some(p) = bindable(b.proto, host_ip, 0) {
                        if !conflicts(&used, b.proto, host_ip, p) {
                            found = Some(p);
                            break;
                        }
                    }
                }
                found.ok_or_else(|| NetworkError::PortAllocated {
                    addr: format!("{}:0", host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                })?
            }
        };
        used.insert((b.proto, host_ip, port));
        let dst = host_ip.map(|i| format!("-d {i}/32 ")).unwrap_or_default();
        let p = b.proto.as_str();
        rules.push(format!(
            "-A KILN-DNAT {dst}-p {p} -m {p} --dport {port} -m comment --comment {tag} -j DNAT --to-destination {ip}:{}",
            b.container_port
        ));
        resolved.push(PortBinding {
            host_ip: b.host_ip,
            host_port: Some(port),
            container_port: b.container_port,
            proto: b.proto,
        });
    }
    if rules.is_empty() {
        return Ok(resolved);
    }
    let mut script = ensure_base(&dump);
    script.push_str(&format!("*nat\n{}\nCOMMIT\n", rules.join("\n")));
    restore(&script)?;
    Ok(resolved)
}

/// Removes a container's port rules on a network.
pub(crate) fn unpublish(info: &NetworkInfo, container_id: &str) -> Result<(), NetworkError> {
    let tag = port_tag(info, container_id);
    let _lock = machine_lock()?;
    let script = remove_script(&save()?, |t| t == tag);
    if script.is_empty() {
        return Ok(());
    }
    restore(&script)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:KILN-FORWARD - [0:0]\n-A KILN-FORWARD -o kb-1 -m comment --comment kiln:aaa -j DROP\n-A KILN-FORWARD -o kb-2 -m comment --comment kiln:aaab -j DROP\nCOMMIT\n*nat\n-A KILN-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment kiln:aaa:c1 -j DNAT --to-destination 172.18.0.2:80\n-A KILN-DNAT -p udp -m udp --dport 53 -m comment --comment \"kiln:aaa:c2\" -j DNAT --to-destination 172.18.0.3:53\nCOMMIT\n";

    #[test]
    fn removes_exactly_the_tagged_rules() {
        let s = remove_script(DUMP, |t| t == "kiln:aaa");
        assert_eq!(
            s,
            "*filter\n-D KILN-FORWARD -o kb-1 -m comment --comment kiln:aaa -j DROP\nCOMMIT\n"
        );
        let s = remove_script(DUMP, |t| t.starts_with("kiln:aaa:"));
        assert!(s.starts_with("*nat\n-D KILN-DNAT -d 127.0.0.1/32"), "{s}");
        assert_eq!(s.matches("-D ").count(), 2);
    }

    #[test]
    fn reads_published_ports() {
        let used = published(DUMP);
        assert!(used.contains(&(Proto::Tcp, Some(Ipv4Addr::LOCALHOST), 8080)));
        assert!(used.contains(&(Proto::Udp, None, 53)));
        assert!(conflicts(&used, Proto::Tcp, None, 8080));
        assert!(!conflicts(&used, Proto::Udp, None, 8080));
        assert!(!conflicts(
            &used,
            Proto::Tcp,
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            8080
        ));
    }

    #[test]
    fn base_chains_only_declared_when_missing() {
        let s = ensure_base(DUMP);
        assert!(
            !s.contains(":KILN-FORWARD"),
            "existing chain would be flushed: {s}"
        );
        assert!(s.contains(":KILN-ISOLATION-1 - [0:0]"));
        assert!(s.contains("-I FORWARD 1 -j KILN-FORWARD"));
    }
}
