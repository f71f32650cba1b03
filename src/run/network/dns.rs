//! The embedded DNS server of a container on user-defined networks, docker's 127.0.0.11.
//!
//! Its sockets (UDP and TCP on 127.0.0.11:53) are created inside the container's network
//! namespace from a short-lived thread; the serving threads stay in kiln's namespace, so
//! queries for other names are forwarded to the host's nameservers from the host (loopback
//! ones are skipped; docker's 8.8.8.8/8.8.4.4 when none is left). Names are the names,
//! network aliases and 12-digit short ids of the containers on the networks this container is
//! on, read from the network state on every query, so containers that join later resolve.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use super::error::NetworkError;
use super::{resolv, state, Networks};

/// The address docker's embedded server listens on inside containers.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const TTL: u32 = 600;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// A running DNS server; it stops when dropped.
pub struct DnsHandle {
    stop: Arc<AtomicBool>,
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the threads: a datagram to the UDP socket itself (sent inside its namespace),
        // and shutdown of the listener (makes accept() fail on Linux).
        let _ = self
            .udp
            .send_to(&[], SocketAddr::new(IpAddr::V4(DNS_ADDR), 53));
        let _ = nix::sys::socket::shutdown(self.tcp.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

impl std::fmt::Debug for DnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsHandle").finish_non_exhaustive()
    }
}

/// What the serving threads share.
struct Ctx {
    networks: Networks,
    container_id: String,
    upstreams: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
}

/// Starts the DNS server for `container_id` in the namespace `netns` (which must already be
/// on its networks, or lo at least: lo is brought up here).
pub fn spawn(
    netns: &Path,
    networks: Networks,
    container_id: &str,
) -> Result<DnsHandle, NetworkError> {
    spawn_with_upstreams(netns, networks, container_id, resolv::host_upstreams())
}

/// [`spawn`] with the servers to forward other names to given explicitly (tests, and callers
/// with `--dns`).
pub fn spawn_with_upstreams(
    netns: &Path,
    networks: Networks,
    container_id: &str,
    upstreams: Vec<IpAddr>,
) -> Result<DnsHandle, NetworkError> {
    let fail = |reason: String| NetworkError::Dns {
        container: container_id.to_string(),
        reason,
    };
    let file = std::fs::File::open(netns)
        .map_err(|e| fail(format!("cannot open namespace {}: {e}", netns.display())))?;
    let sockets = super::netns::in_netns(
        &file,
        netns,
        || -> std::io::Result<(UdpSocket, TcpListener)> {
            let mut nl = super::link::Rtnl::open()?;
            nl.set_up(1)?;
            let addr = SocketAddr::new(IpAddr::V4(DNS_ADDR), 53);
            Ok((UdpSocket::bind(addr)?, TcpListener::bind(addr)?))
        },
    )?;
    let (udp, tcp) = sockets.map_err(|e| {
        fail(format!(
            "cannot listen on {DNS_ADDR}:53 in {}: {e}",
            netns.display()
        ))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Ctx {
        networks,
        container_id: container_id.to_string(),
        upstreams,
        stop: stop.clone(),
    });
    let handle = DnsHandle {
        stop,
        udp: udp.try_clone().map_err(|e| fail(e.to_string()))?,
        tcp: tcp.try_clone().map_err(|e| fail(e.to_string()))?,
    };
    {
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("kiln-dns-udp".into())
            .spawn(move || serve_udp(udp, ctx))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
    }
    std::thread::Builder::new()
        .name("kiln-dns-tcp".into())
        .spawn(move || serve_tcp(tcp, ctx))
        .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
    Ok(handle)
}

fn serve_udp(sock: UdpSocket, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let received = sock.recv_from(&mut buf);
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((n, peer)) = received else { continue };
        let query = buf[..n].to_vec();
        match local_answer(&ctx, &query) {
            Answer::Reply(bytes) => {
                let _ = sock.send_to(&bytes, peer);
            }
            Answer::Ignore => {}
            Answer::Forward => {
                let (Ok(reply_sock), ctx) = (sock.try_clone(), ctx.clone()) else {
                    continue;
                };
                let _ = std::thread::Builder::new()
                    .name("kiln-dns-fwd".into())
                    .spawn(move || {
                        let reply = forward(&ctx, &query).unwrap_or_else(|| servfail(&query));
                        if !reply.is_empty() {
                            let _ = reply_sock.send_to(&reply, peer);
                        }
                    });
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let accepted = listener.accept();
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // A listener shut down by someone else: do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let ctx = ctx.clone();
        let _ = std::thread::Builder::new()
            .name("kiln-dns-tcp-conn".into())
            .spawn(move || serve_tcp_conn(stream, &ctx));
    }
}

fn serve_tcp_conn(mut stream: TcpStream, ctx: &Ctx) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let reply = match local_answer(ctx, &query) {
            Answer::Reply(bytes) => bytes,
            Answer::Ignore => return,
            Answer::Forward => forward(ctx, &query).unwrap_or_else(|| servfail(&query)),
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
    #[allow(unreachable_code)]
    {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

enum Answer {
    Reply(Vec<u8>),
    Forward,
    Ignore,
}

/// The addresses `name` has for this container (names, aliases, short ids on its user
/// networks), None when it is not a container name.
fn lookup(ctx: &Ctx, name: &str) -> Option<Vec<Ipv4Addr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let all = state::load_all(ctx.networks.dir()).ok()?;
    let mut ips = Vec::new();
    for net in all
        .iter()
        .filter(|n| n.is_user_defined() && n.endpoints.contains_key(&ctx.container_id))
    {
        for e in net.endpoints.values() {
            let short = &e.container_id[..e.container_id.len().min(12)];
            let hit = e.name.eq_ignore_ascii_case(&name)
                || short.eq_ignore_ascii_case(&name)
                || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(&name));
            if hit && !e.ip.is_unspecified() && !ips.contains(&e.ip) {
                ips.push(e.ip);
            }
        }
    }
    (!ips.is_empty()).then_some(ips)
}

fn local_answer(ctx: &Ctx, query: &[u8]) -> Answer {
    let Ok(msg) = Message::from_vec(query) else {
        return Answer::Ignore;
    };
    if msg.metadata.message_type != MessageType::Query {
        return Answer::Ignore;
    }
    let [q] = msg.queries.as_slice() else {
        return encode(Message::error_msg(
            msg.metadata.id,
            msg.metadata.op_code,
            ResponseCode::FormErr,
        ));
    };
    if msg.metadata.op_code != OpCode::Query {
        return encode(Message::error_msg(
            msg.metadata.id,
            msg.metadata.op_code,
            ResponseCode::NotImp,
        ));
    }
    let Some(ips) = lookup(ctx, &q.name().to_ascii()) else {
        return Answer::Forward;
    };
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    // A container name has only IPv4 addresses: other types get an empty NOERROR answer.
    if q.query_type() == RecordType::A {
        for ip in ips {
            resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
        }
    }
    encode(resp)
}

fn encode(msg: Message) -> Answer {
    msg.to_vec().map_or(Answer::Ignore, Answer::Reply)
}

fn servfail(query: &[u8]) -> Vec<u8> {
    let Ok(msg) = Message::from_vec(query) else {
        return Vec::new();
    };
    let mut resp = Message::error_msg(
        msg.metadata.id,
        msg.metadata.op_code,
        ResponseCode::ServFail,
    );
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    for q in msg.queries {
        resp.add_query(q);
    }
    resp.to_vec().unwrap_or_default()
}

/// Asks the upstream servers in turn (UDP); the first reply wins.
fn forward(ctx: &Ctx, query: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65535];
    for server in &ctx.upstreams {
        let bind: SocketAddr = match server {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = UdpSocket::bind(bind) else {
            continue;
        };
        if sock.connect((*server, 53)).is_err()
            || sock.set_read_timeout(Some(UPSTREAM_TIMEOUT)).is_err()
            || sock.send(query).is_err()
        {
            continue;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            // Same id as the query, as any resolver checks.
            if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}
