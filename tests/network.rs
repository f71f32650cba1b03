//! Networks end to end: real bridges, veths, iptables rules and the embedded DNS server,
//! with network namespaces made by `netns::create` standing in for containers (busybox run
//! in them through `nsenter --net`). Each test uses its own root, networks and namespaces,
//! so they run in parallel with each other and with other people's runs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln::run::network::{
    dns, netns, parse_publish, CreateOptions, Endpoint, EndpointRequest, NetworkError, Networks,
};

use crate::util::{iptables_save, kiln, run, stderr, stdout};

/// A network namespace standing in for a container; removed (with its processes) on drop.
struct Ns {
    path: PathBuf,
    id: String,
    children: Vec<Child>,
}

impl Ns {
    fn new(dir: &Path, name: &str) -> Ns {
        let path = dir.join(format!("ns-{name}"));
        netns::create(&path).expect("creating a netns");
        let id = format!("{name}{}", std::process::id()).repeat(4);
        Ns {
            path,
            id,
            children: Vec::new(),
        }
    }

    fn req(&self, name: &str) -> EndpointRequest {
        EndpointRequest {
            container_id: self.id.clone(),
            name: name.to_string(),
            aliases: vec![],
            netns: self.path.clone(),
            ports: vec![],
            ip: None,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("/bin/busybox")
            .args(args);
        c
    }

    /// Runs busybox inside, with a time limit.
    fn busybox(&self, args: &[&str]) -> Output {
        let mut full = vec!["timeout", "10", "/bin/busybox"];
        full.extend_from_slice(args);
        let out = self
            .cmd(&full)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter");
        out
    }

    fn spawn(&mut self, args: &[&str]) {
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nsenter");
        self.children.push(child);
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes stay there).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(&self.path).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = netns::remove(&self.path);
    }
}

fn ping(from: &Ns, ip: Ipv4Addr) -> bool {
    from.busybox(&["ping", "-c", "1", "-W", "2", &ip.to_string()])
        .status
        .success()
}

fn nslookup(from: &Ns, name: &str) -> String {
    let out = from.busybox(&["nslookup", name, "127.0.0.11"]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ip_links() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// A UDP echo server on `port` inside `ns`, for a bounded time.
fn udp_echo(ns: &Ns, port: u16) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = ns.enter(move || UdpSocket::bind(("0.0.0.0", port)).expect("bind udp echo"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    });
    stop
}

fn udp_roundtrip(sock: &UdpSocket, to: SocketAddr) -> Option<String> {
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send_to(b"ping-udp", to).ok()?;
        if let Ok(n) = sock.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn endpoints_of(nets: &Networks, network: &str) -> usize {
    nets.inspect(network).unwrap().endpoints.len()
}

#[test]
fn user_network_reachability_dns_isolation_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    let net_a = nets.create("front", &CreateOptions::default()).unwrap();
    let net_b = nets.create("back", &CreateOptions::default()).unwrap();
    assert_ne!(net_a.subnet, net_b.subnet);

    let alpha = Ns::new(dir.path(), "alpha");
    let beta = Ns::new(dir.path(), "beta");
    let other = Ns::new(dir.path(), "other");
    let ea: Endpoint = nets.connect("front", &alpha.req("alpha")).unwrap();
    let mut breq = beta.req("beta");
    breq.aliases = vec!["db".into()];
    let eb = nets.connect("front", &breq).unwrap();
    let eo = nets.connect("back", &other.req("other")).unwrap();
    assert_eq!(ea.interface, "eth0");
    assert!(ea.dns && eb.dns);
    assert_ne!(ea.ip, eb.ip);

    // Same network: reachable by address.
    assert!(ping(&alpha, eb.ip), "alpha cannot ping beta at {}", eb.ip);
    assert!(ping(&beta, ea.gateway), "beta cannot ping its gateway");
    // Other network: isolated.
    assert!(
        !ping(&alpha, eo.ip),
        "alpha reached {} on another network",
        eo.ip
    );
    assert!(
        !ping(&other, ea.ip),
        "other reached {} on another network",
        ea.ip
    );

    // By name through the embedded DNS server: names, aliases, short ids.
    let dns_a = dns::spawn(&alpha.path, nets.clone(), &alpha.id).unwrap();
    let out = nslookup(&alpha, "beta");
    assert!(out.contains(&eb.ip.to_string()), "nslookup beta: {out}");
    let out = nslookup(&alpha, "DB");
    assert!(out.contains(&eb.ip.to_string()), "nslookup alias: {out}");
    let out = nslookup(&alpha, &beta.id[..12]);
    assert!(out.contains(&eb.ip.to_string()), "nslookup short id: {out}");
    // A container on another network does not resolve.
    let out = nslookup(&alpha, "other");
    assert!(
        !out.contains(&eo.ip.to_string()),
        "resolved across networks: {out}"
    );
    // A container that joins later resolves too; and over TCP (busybox has no TCP mode:
    // ask directly).
    let late = Ns::new(dir.path(), "late");
    let el = nets.connect("front", &late.req("late")).unwrap();
    let out = nslookup(&alpha, "late");
    assert!(
        out.contains(&el.ip.to_string()),
        "nslookup late joiner: {out}"
    );
    let tcp_answer = alpha.enter(|| {
        let mut s = TcpStream::connect(("127.0.0.11", 53)).expect("dns tcp");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // id 0x1234, rd, one question: late. IN A
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4];
        q.extend_from_slice(b"late");
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut resp).unwrap();
        resp
    });
    assert_eq!(&tcp_answer[..2], &[0x12, 0x34]);
    assert_eq!(&tcp_answer[tcp_answer.len() - 4..], &el.ip.octets());
    drop(dns_a);

    // Connecting twice is refused; removing a network in use is refused.
    assert!(matches!(
        nets.connect("front", &alpha.req("alpha")),
        Err(NetworkError::AlreadyConnected { .. })
    ));
    assert!(matches!(
        nets.remove("front"),
        Err(NetworkError::InUse { .. })
    ));

    // Disconnect and release leave nothing behind.
    let veths: Vec<String> = nets
        .list()
        .unwrap()
        .iter()
        .flat_map(|n| n.endpoints.values().map(|e| e.host_veth.clone()))
        .collect();
    assert_eq!(veths.len(), 4);
    nets.disconnect("front", &beta.id).unwrap();
    nets.disconnect("front", &beta.id).unwrap(); // idempotent
    assert!(
        !ping(&alpha, eb.ip),
        "beta still reachable after disconnect"
    );
    for ns in [&alpha, &late, &other] {
        nets.release_container(&ns.id).unwrap();
    }
    let links = ip_links();
    for v in &veths {
        assert!(!links.contains(v.as_str()), "veth {v} left behind");
    }
    assert_eq!(endpoints_of(&nets, "front"), 0);
    assert_eq!(endpoints_of(&nets, "back"), 0);
    let bridges = [net_a.bridge.clone().unwrap(), net_b.bridge.clone().unwrap()];
    nets.remove("front").unwrap();
    assert_eq!(nets.prune().unwrap(), vec!["back".to_string()]);
    let links = ip_links();
    let rules = iptables_save();
    for (b, n) in bridges.iter().zip([&net_a, &net_b]) {
        assert!(!links.contains(b.as_str()), "bridge {b} left behind");
        assert!(
            !rules.contains(&format!("kiln:{}", &n.id[..12])),
            "rules of {} left: {rules}",
            n.name
        );
    }
}

#[test]
fn published_ports_tcp_and_udp_from_localhost_and_other_networks() {
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    nets.create("pub", &CreateOptions::default()).unwrap();
    nets.create("client", &CreateOptions::default()).unwrap();
    let mut server = Ns::new(dir.path(), "srv");
    let client = Ns::new(dir.path(), "cli");
    let same = Ns::new(dir.path(), "same");

    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from the netns\n").unwrap();
    let mut req = server.req("srv");
    req.ports = parse_publish("80").unwrap();
    req.ports.extend(parse_publish("5353/udp").unwrap());
    let ep = nets.connect("pub", &req).unwrap();
    assert_eq!(ep.ports.len(), 2);
    let tcp_port = ep.ports[0].host_port.expect("ephemeral tcp port chosen");
    let udp_port = ep.ports[1].host_port.expect("ephemeral udp port chosen");
    assert!(tcp_port != 0 && udp_port != 0);
    let www_s = www.to_string_lossy().into_owned();
    server.spawn(&["httpd", "-f", "-p", "80", "-h", &www_s]);
    let stop_echo = udp_echo(&server, 5353);
    let ec = nets.connect("client", &client.req("cli")).unwrap();
    let es = nets.connect("pub", &same.req("same")).unwrap();

    // TCP from 127.0.0.1 (retry while httpd starts).
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", tcp_port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
            if body.contains("hello") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        body.contains("hello from the netns"),
        "via 127.0.0.1:{tcp_port}: {body:?}"
    );
    // Also through the host's address on the bridge.
    let body = http_get(SocketAddr::from((ep.gateway, tcp_port)));
    assert!(body.contains("hello from the netns"), "{body}");

    // TCP from a container on another network and from one on the same network, through
    // their gateways (host addresses).
    for (ns, e) in [(&client, &ec), (&same, &es)] {
        let url = format!("{}:{tcp_port}", e.gateway);
        // (busybox-static's wget crashes; nc speaks HTTP/1.0 well enough.)
        let script = format!(
            "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 {} {tcp_port}",
            e.gateway
        );
        let out = ns.busybox(&["sh", "-c", &script]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("hello from the netns"),
            "GET {url} from {}: {}",
            e.network,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // UDP from 127.0.0.1 and from a container on another network.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echoed = udp_roundtrip(&sock, SocketAddr::from(([127, 0, 0, 1], udp_port)));
    assert_eq!(
        echoed.as_deref(),
        Some("ping-udp"),
        "udp via 127.0.0.1:{udp_port}"
    );
    let to = SocketAddr::from((ec.gateway, udp_port));
    let echoed = client.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp_roundtrip(&sock, to)
    });
    assert_eq!(
        echoed.as_deref(),
        Some("ping-udp"),
        "udp via {to} from another network"
    );

    // The same host port cannot be published twice (by any root).
    let taken = Ns::new(dir.path(), "taken");
    let mut dup = taken.req("taken");
    dup.ports = parse_publish(&format!("{tcp_port}:80")).unwrap();
    match nets.connect("pub", &dup) {
        Err(NetworkError::PortAllocated { .. }) => {}
        other => panic!("publishing {tcp_port} twice: {other:?}"),
    }
    assert_eq!(
        endpoints_of(&nets, "pub"),
        2,
        "failed connect left an endpoint"
    );

    // Disconnect removes the rules: the ports no longer answer.
    let tag = format!("kiln:{}:", &ep.network_id[..12]);
    assert!(iptables_save().contains(&tag));
    nets.disconnect("pub", &server.id).unwrap();
    stop_echo.store(true, Ordering::SeqCst);
    assert!(
        !iptables_save().contains(&tag),
        "port rules left after disconnect"
    );
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], tcp_port)),
            Duration::from_secs(1)
        )
        .is_err(),
        "port {tcp_port} still answers"
    );
    for ns in [&client, &same] {
        nets.release_container(&ns.id).unwrap();
    }
    nets.remove("pub").unwrap();
    nets.remove("client").unwrap();
}

#[test]
fn parallel_connects_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    nets.create("crowd", &CreateOptions::default()).unwrap();
    let spaces: Vec<Ns> = (0..12)
        .map(|i| Ns::new(dir.path(), &format!("p{i}")))
        .collect();
    let root = dir.path().to_path_buf();
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = spaces
            .iter()
            .map(|ns| {
                let root = root.clone();
                let req = ns.req("p");
                // Each thread opens its own handle, as separate processes would.
                s.spawn(move || {
                    Networks::open(&root)
                        .unwrap()
                        .connect("crowd", &req)
                        .unwrap()
                        .ip
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ips.len(), "duplicate addresses: {ips:?}");
    for ns in &spaces {
        nets.release_container(&ns.id).unwrap();
    }
    nets.remove("crowd").unwrap();
}

#[test]
fn default_bridge_is_made_on_first_use_without_dns() {
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    let before = nets.inspect("bridge").unwrap();
    assert!(before.subnet.is_none());
    let a = Ns::new(dir.path(), "b1");
    let b = Ns::new(dir.path(), "b2");
    let ea = nets.connect("bridge", &a.req("b1")).unwrap();
    let eb = nets.connect("bridge", &b.req("b2")).unwrap();
    assert!(!ea.dns, "the default bridge has no embedded DNS");
    assert!(ping(&a, eb.ip));
    let conf = kiln::run::network::resolv_conf(std::slice::from_ref(&ea));
    assert!(!conf.contains("127.0.0.11"), "{conf}");
    // host/none only record the container.
    let h = Ns::new(dir.path(), "h");
    let eh = nets.connect("host", &h.req("h")).unwrap();
    assert_eq!(eh.driver, "host");
    assert!(matches!(
        nets.connect("bridge", &h.req("h")),
        Err(NetworkError::CannotConnect { .. })
    ));
    let bridge = nets.inspect("bridge").unwrap();
    for ns in [&a, &b, &h] {
        nets.release_container(&ns.id).unwrap();
    }
    // The default bridge stays (like docker0) until the root's networks are torn down.
    let name = bridge.bridge.unwrap();
    assert!(ip_links().contains(&name));
    nets.teardown().unwrap();
    assert!(
        !ip_links().contains(&name),
        "default bridge {name} left behind"
    );
    assert!(!iptables_save().contains(&format!("kiln:{}", &bridge.id[..12])));
    // The predefined networks come back.
    let again = Networks::open(dir.path()).unwrap();
    assert_eq!(again.list().unwrap().len(), 3);
}

#[test]
fn network_cli_create_ls_inspect_rm_prune() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ok = |args: &[&str]| {
        let mut c = kiln(root);
        c.args(args);
        let o = run(c, None);
        assert!(o.status.success(), "kiln {args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let id = ok(&[
        "network",
        "create",
        "--label",
        "team=x",
        "--internal",
        "cli-net",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    let ls = ok(&["network", "ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert!(lines[0].starts_with("NETWORK ID"), "{ls}");
    assert!(lines[0].contains("NAME") && lines[0].contains("DRIVER") && lines[0].contains("SCOPE"));
    for name in ["bridge", "host", "none", "cli-net"] {
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} missing: {ls}"
        );
    }
    assert!(ls.contains(&id[..12]));
    let q = ok(&["network", "ls", "-q"]);
    assert_eq!(q.lines().count(), 4);
    let f = ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(f.lines().any(|l| l == "cli-net bridge"), "{f}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["network", "inspect", &id[..6]])).unwrap();
    let n = &json[0];
    assert_eq!(n["Name"], "cli-net");
    assert_eq!(n["Id"], id);
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Internal"], true);
    assert_eq!(n["Labels"]["team"], "x");
    assert!(n["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .ends_with("/24"));
    assert!(n["Containers"].as_object().unwrap().is_empty());

    // Errors like docker's.
    let mut c = kiln(root);
    c.args(["network", "create", "cli-net"]);
    let o = run(c, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("network with name cli-net already exists"),
        "{}",
        stderr(&o)
    );
    let mut c = kiln(root);
    c.args(["network", "inspect", "nope"]);
    let o = run(c, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("network nope not found"),
        "{}",
        stderr(&o)
    );
    let subnet = n["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = kiln(root);
    c.args(["network", "create", "--subnet", &subnet, "clash"]);
    let o = run(c, None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("overlaps"), "{}", stderr(&o));
    let mut c = kiln(root);
    c.args(["network", "rm", "bridge"]);
    let o = run(c, None);
    assert!(stderr(&o).contains("pre-defined network"), "{}", stderr(&o));

    // A network in use cannot be removed; prune skips it.
    let nets = Networks::open(root).unwrap();
    let ns = Ns::new(root, "cli");
    nets.connect("cli-net", &ns.req("c1")).unwrap();
    let mut c = kiln(root);
    c.args(["network", "rm", "cli-net"]);
    let o = run(c, None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("active endpoints"), "{}", stderr(&o));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&["network", "inspect", "cli-net"])).unwrap();
    assert_eq!(inspect[0]["Containers"][&ns.id]["Name"], "c1");
    assert!(ok(&["network", "prune", "-f"]).is_empty());
    nets.release_container(&ns.id).unwrap();

    // A subnet of its own (parallel runs of this test must not collide).
    let r = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let subnet = format!("10.{}.{}.0/24", 200 + r % 50, (r >> 8) % 256);
    let gateway = subnet.replace(".0/24", ".9");
    ok(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--gateway",
        &gateway,
        "second",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["network", "inspect", "second"])).unwrap();
    assert_eq!(json[0]["IPAM"]["Config"][0]["Gateway"], gateway.as_str());
    let pruned = ok(&["network", "prune", "-f"]);
    assert!(pruned.starts_with("Deleted Networks:\n"), "{pruned}");
    assert!(
        pruned.contains("cli-net\n") && pruned.contains("second\n"),
        "{pruned}"
    );
    assert_eq!(ok(&["network", "ls", "-q"]).lines().count(), 3);
    assert!(!iptables_save().contains(&format!("kiln:{}", &id[..12])));
}

/// Runs `ip ARGS`, panicking with its error.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace standing in for the outside world, linked to the host by a veth with a /30.
struct Wan {
    name: String,
    host_if: String,
    addr: Ipv4Addr,
    host_addr: Ipv4Addr,
}

impl Wan {
    fn new() -> Wan {
        let r = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            ^ std::process::id().rotate_left(11);
        let tag = format!("{:08x}", r);
        let name = format!("kiln-wan-{tag}");
        let host_if = format!("kw{tag}");
        let base = Ipv4Addr::new(
            10,
            250 + (r % 4) as u8,
            (r >> 8) as u8,
            ((r >> 16) as u8) & 0xfc,
        );
        let host_addr = Ipv4Addr::from(u32::from(base) + 1);
        let addr = Ipv4Addr::from(u32::from(base) + 2);
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "wan0", "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "wan0",
        ]);
        ip(&["-n", &name, "link", "set", "wan0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Wan {
            name,
            host_if,
            addr,
            host_addr,
        }
    }

    /// A UDP server answering every datagram with the source address it saw.
    fn who_am_i(&self, port: u16) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let sock = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            UdpSocket::bind(("0.0.0.0", port)).unwrap()
        })
        .join()
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn outbound_nat_and_internal_networks() {
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    nets.create("outbound", &CreateOptions::default()).unwrap();
    let sealed = CreateOptions {
        internal: true,
        ..CreateOptions::default()
    };
    nets.create("sealed", &sealed).unwrap();
    let wan = Wan::new();
    wan.who_am_i(7777);
    let open_ns = Ns::new(dir.path(), "open");
    let sealed_ns = Ns::new(dir.path(), "sealed");
    let eo = nets.connect("outbound", &open_ns.req("open")).unwrap();
    let es = nets.connect("sealed", &sealed_ns.req("sealed")).unwrap();
    let peer = Ns::new(dir.path(), "peer");
    let ep = nets.connect("sealed", &peer.req("peer")).unwrap();

    let to = SocketAddr::from((wan.addr, 7777));
    let seen = open_ns.enter(move || udp_roundtrip(&UdpSocket::bind("0.0.0.0:0").unwrap(), to));
    assert_eq!(
        seen.as_deref(),
        Some(wan.host_addr.to_string().as_str()),
        "outbound traffic from {} must leave masqueraded as the host",
        eo.ip
    );
    let seen = sealed_ns.enter(move || udp_roundtrip(&UdpSocket::bind("0.0.0.0:0").unwrap(), to));
    assert_eq!(seen, None, "an internal network reached the outside");
    // Inside an internal network, containers still reach each other.
    assert!(ping(&sealed_ns, ep.ip), "{} cannot reach {}", es.ip, ep.ip);
    for ns in [&open_ns, &sealed_ns, &peer] {
        nets.release_container(&ns.id).unwrap();
    }
    nets.teardown().unwrap();
}

#[test]
fn bridges_of_deleted_roots_are_collected() {
    let gone = tempfile::tempdir().unwrap();
    let info = Networks::open(gone.path())
        .unwrap()
        .create("leaked", &CreateOptions::default())
        .unwrap();
    let bridge = info.bridge.clone().unwrap();
    assert!(ip_links().contains(&bridge));
    drop(gone); // the root is deleted without `network rm`
    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    nets.create("fresh", &CreateOptions::default()).unwrap();
    assert!(
        !ip_links().contains(&bridge),
        "bridge {bridge} of a deleted root is still there"
    );
    assert!(!iptables_save().contains(&format!("kiln:{}", &info.id[..12])));
    nets.teardown().unwrap();
}

#[test]
fn dns_forwards_other_names_upstream() {
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::{rdata::A, RData, Record};

    let dir = tempfile::tempdir().unwrap();
    let nets = Networks::open(dir.path()).unwrap();
    nets.create("fwd", &CreateOptions::default()).unwrap();
    let wan = Wan::new();
    // A stand-in upstream nameserver on the outside namespace: every A query gets 198.51.100.77.
    let file = std::fs::File::open(format!("/run/netns/{}", wan.name)).unwrap();
    let sock = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        UdpSocket::bind(("0.0.0.0", 53)).unwrap()
    })
    .join()
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
            for query in &q.queries {
                resp.add_query(query.clone());
                if query.query_type() == hickory_proto::rr::RecordType::A {
                    resp.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(198, 51, 100, 77))),
                    ));
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer);
        }
    });
    let ns = Ns::new(dir.path(), "asker");
    nets.connect("fwd", &ns.req("asker")).unwrap();
    let _dns = dns::spawn_with_upstreams(
        &ns.path,
        nets.clone(),
        &ns.id,
        vec![std::net::IpAddr::V4(wan.addr)],
    )
    .unwrap();
    let out = nslookup(&ns, "somewhere.example");
    assert!(out.contains("198.51.100.77"), "forwarded lookup: {out}");
    // Its own name is still answered locally.
    let out = nslookup(&ns, "asker");
    assert!(!out.contains("198.51.100.77"), "{out}");
    nets.release_container(&ns.id).unwrap();
    nets.teardown().unwrap();
}
