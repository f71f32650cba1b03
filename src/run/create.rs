//! `kiln create` (and the first half of `kiln run`): an image plus the command line become a
//! [`ContainerConfig`] (docker's rules for ENTRYPOINT/CMD, ENV, WORKDIR, USER, VOLUME,
//! STOPSIGNAL, HEALTHCHECK), volumes are created and pre-filled, and the container's directory
//! with its writable layer appears under its id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::state::{
    now_nanos, Container, ContainerConfig, Containers, MountSpec, PortSpec, RestartPolicy,
};
use super::volume::{prefill, Volumes};
use super::{cgroups, rootfs, valid_name, Result, RunError};
use crate::cache::image::HealthConfig;
use crate::cache::snapshot::Snapshotter;
use crate::cache::store::{ImageStore, StoreError};

/// What the command line asks for (docker's `run`/`create` flags).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub image: String,
    pub cmd: Vec<String>,
    pub name: Option<String>,
    pub entrypoint: Option<String>,
    /// `KEY=VALUE` (already merged from `-e` and `--env-file`).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    /// `StdinOnce` (the API's; `docker run -i` sets it).
    pub stdin_once: bool,
    /// The API's `HostConfig.ConsoleSize` (rows, columns).
    pub console_size: Option<(u16, u16)>,
    pub network: Option<String>,
    pub network_aliases: Vec<String>,
    pub ip: Option<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub add_hosts: Vec<String>,
    pub volumes: Vec<String>,
    pub mounts: Vec<String>,
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opts: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub restart: Option<String>,
    pub auto_remove: bool,
    pub init: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub health_cmd: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_retries: Option<i64>,
    pub health_start_period: Option<String>,
    pub no_healthcheck: bool,
    pub labels: Vec<String>,
}

/// Parses `-p [IP:][HOST:]CONTAINER[/tcp|udp]` (a bare CONTAINER port publishes on a free
/// host port).
pub fn parse_publish(spec: &str) -> Result<PortSpec> {
    let bad = |why: &str| RunError::Invalid(format!("invalid publish spec {spec:?}: {why}"));
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, p)) => (a, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(bad("the protocol must be tcp or udp"));
    }
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (host_ip, rest) = if let Some(r) = addr.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| bad("unterminated [address]"))?;
        (ip.to_string(), rest.to_string())
    } else {
        let parts: Vec<&str> = addr.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), addr.to_string()),
            3 => (parts[0].to_string(), format!("{}:{}", parts[1], parts[2])),
            _ => return Err(bad("too many colons")),
        }
    };
    let port = |s: &str| -> Result<u16> {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(&format!("{s:?} is not a port number")))
    };
    let (host_port, container_port) = match rest.split_once(':') {
        Some(("", c)) => (0, port(c)?),
        Some((h, c)) => (port(h)?, port(c)?),
        None => (0, port(&rest)?),
    };
    if !host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad(&format!("{host_ip:?} is not an IP address")));
    }
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
        proto,
    })
}

/// docker's duration syntax for health options (`30s`, `1m30s`, `500ms`) in nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || RunError::Invalid(format!("invalid duration {s:?}"));
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().map_err(|_| bad())?;
        let mult = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += v * mult;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(total as i64)
}

/// `-v SRC:DST[:ro|rw]`, `-v DST` (anonymous volume).
fn parse_volume_flag(spec: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => {
            return Err(RunError::Invalid(format!(
                "invalid volume specification: {spec:?}"
            )))
        }
    };
    if !dst.starts_with('/') {
        return Err(RunError::Invalid(format!(
            "invalid volume specification {spec:?}: the destination must be an absolute path"
        )));
    }
    let mut rw = true;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "readonly" => rw = false,
            "rw" => rw = true,
            "z" | "Z" | "nocopy" | "rprivate" | "private" | "rshared" | "shared" | "rslave"
            | "slave" | "delegated" | "cached" | "consistent" => {}
            _ => {
                return Err(RunError::Invalid(format!(
                    "invalid volume specification {spec:?}: unknown option {o:?}"
                )))
            }
        }
    }
    let kind = if src.is_empty() || !(src.starts_with('/') || src.starts_with('.')) {
        "volume"
    } else {
        "bind"
    };
    Ok(MountSpec {
        kind: kind.into(),
        source: src.to_string(),
        destination: dst.to_string(),
        rw,
        size: None,
        anonymous: src.is_empty(),
    })
}

/// `--mount type=volume|bind|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]`.
fn parse_mount_flag(spec: &str) -> Result<MountSpec> {
    let bad = |why: String| RunError::Invalid(format!("invalid --mount {spec:?}: {why}"));
    let mut kind = "volume".to_string();
    let mut source = String::new();
    let mut target = String::new();
    let mut rw = true;
    let mut size = None;
    for part in spec.split(',') {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        match (k, v) {
            ("type", Some(v)) => kind = v.to_string(),
            ("source" | "src", Some(v)) => source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => target = v.to_string(),
            ("readonly" | "ro", None) => rw = false,
            ("readonly" | "ro", Some(v)) => rw = !matches!(v, "true" | "1"),
            ("tmpfs-size", Some(v)) => size = Some(cgroups::parse_bytes(v)? as u64),
            ("tmpfs-mode" | "bind-propagation" | "volume-nocopy" | "consistency", _) => {}
            _ => return Err(bad(format!("unknown field {k:?}"))),
        }
    }
    if !target.starts_with('/') {
        return Err(bad("target= must be an absolute path".into()));
    }
    match kind.as_str() {
        "bind" if source.is_empty() => return Err(bad("a bind mount needs source=".into())),
        "tmpfs" if !source.is_empty() => return Err(bad("a tmpfs mount takes no source".into())),
        "bind" | "tmpfs" | "volume" => {}
        other => return Err(bad(format!("unknown type {other:?}"))),
    }
    Ok(MountSpec {
        anonymous: kind == "volume" && source.is_empty(),
        kind,
        source,
        destination: target,
        rw,
        size,
    })
}

/// `--tmpfs DST[:size=N,…]`.
fn parse_tmpfs_flag(spec: &str) -> Result<MountSpec> {
    let (dst, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !dst.starts_with('/') {
        return Err(RunError::Invalid(format!(
            "invalid --tmpfs {spec:?}: the destination must be an absolute path"
        )));
    }
    let mut size = None;
    for o in opts.split(',') {
        if let Some(v) = o.strip_prefix("size=") {
            size = Some(cgroups::parse_bytes(v)? as u64);
        }
    }
    Ok(MountSpec {
        kind: "tmpfs".into(),
        source: String::new(),
        destination: dst.to_string(),
        rw: true,
        size,
        anonymous: false,
    })
}

/// docker's signal names (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let up = s.trim().to_ascii_uppercase();
    if let Ok(n) = up.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| RunError::Invalid(format!("invalid signal: {s}")));
    }
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map_err(|_| RunError::Invalid(format!("invalid signal: {s}")))
}

fn env_key(e: &str) -> &str {
    e.split('=').next().unwrap_or(e)
}

/// The image's environment with the user's on top (same keys replaced in place).
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut env: Vec<String> = base.to_vec();
    for e in extra {
        match env.iter_mut().find(|x| env_key(x) == env_key(e)) {
            Some(x) => *x = e.clone(),
            None => env.push(e.clone()),
        }
    }
    env
}

/// Resolves everything and writes the new container.
pub fn create(
    root: &Path,
    store: &ImageStore,
    snapshots: &dyn Snapshotter,
    opts: &CreateOptions,
) -> Result<Container> {
    let image = match store.lookup(&opts.image) {
        Ok(i) => i,
        Err(StoreError::NotFound(_)) => {
            return Err(RunError::Image(format!(
                "{:?} is not in the local store (build it, or load it with `kiln load -i FILE`)",
                opts.image
            )))
        }
        Err(e) => return Err(RunError::Image(format!("{}: {e}", opts.image))),
    };
    let ic = &image.config.config;
    let containers = Containers::open(root)?;
    let id = super::state::new_id();
    let name = match &opts.name {
        Some(n) => {
            let n = n.trim_start_matches('/');
            if !valid_name(n) {
                return Err(RunError::Invalid(format!(
                    "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            n.to_string()
        }
        None => containers.generate_name(&id)?,
    };

    // ENTRYPOINT / CMD, docker's way.
    let (entrypoint, cmd) = match &opts.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), opts.cmd.clone()),
        Some(e) => (vec![e.clone()], opts.cmd.clone()),
        None => (
            ic.entrypoint.clone().unwrap_or_default(),
            if opts.cmd.is_empty() {
                ic.cmd.clone().unwrap_or_default()
            } else {
                opts.cmd.clone()
            },
        ),
    };
    let mut full: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if full.is_empty() {
        return Err(RunError::Invalid("no command specified".into()));
    }
    let path = full.remove(0);

    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    let mut env = merge_env(ic.env.as_deref().unwrap_or_default(), &[]);
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let mut extra = vec![format!("HOSTNAME={hostname}")];
    if opts.tty {
        extra.push("TERM=xterm".into());
    }
    extra.extend(opts.env.iter().cloned());
    let env = merge_env(&env, &extra);

    let restart = match &opts.restart {
        Some(r) => RestartPolicy::parse(r)?,
        None => RestartPolicy {
            name: "no".into(),
            maximum_retry_count: 0,
        },
    };
    if opts.auto_remove && !restart.is_none() {
        return Err(RunError::Invalid(
            "Conflicting options: --restart and --rm".into(),
        ));
    }
    let stop_signal = opts
        .stop_signal
        .clone()
        .or_else(|| ic.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".into());
    parse_signal(&stop_signal)?;

    let mut mounts = Vec::new();
    for v in &opts.volumes {
        mounts.push(parse_volume_flag(v)?);
    }
    for m in &opts.mounts {
        mounts.push(parse_mount_flag(m)?);
    }
    for t in &opts.tmpfs {
        mounts.push(parse_tmpfs_flag(t)?);
    }
    for (dst, _) in ic.volumes.iter().flatten() {
        let clean = dst.trim_end_matches('/');
        let clean = if clean.is_empty() { "/" } else { clean };
        if !mounts
            .iter()
            .any(|m| m.destination.trim_end_matches('/') == clean)
        {
            mounts.push(MountSpec {
                kind: "volume".into(),
                source: String::new(),
                destination: clean.to_string(),
                rw: true,
                size: None,
                anonymous: true,
            });
        }
    }
    for m in &mut mounts {
        if m.kind == "bind" {
            let p = std::fs::canonicalize(&m.source).map_err(|e| {
                RunError::Invalid(format!(
                    "invalid mount config: bind source path {:?} does not exist: {e}",
                    m.source
                ))
            })?;
            m.source = p.to_string_lossy().into_owned();
        }
        if m.kind == "volume" && m.source.is_empty() {
            m.source = super::state::new_id();
        }
    }

    let mut ports = Vec::new();
    for p in &opts.publish {
        ports.push(parse_publish(p)?);
    }
    let exposed: Vec<String> = ic
        .exposed_ports
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    if opts.publish_all {
        for e in &exposed {
            let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
            if let Ok(port) = port.parse() {
                if !ports
                    .iter()
                    .any(|p: &PortSpec| p.container_port == port && p.proto == proto)
                {
                    ports.push(PortSpec {
                        host_ip: String::new(),
                        host_port: 0,
                        container_port: port,
                        proto: proto.to_string(),
                    });
                }
            }
        }
    }
    for c in opts.cap_add.iter().chain(&opts.cap_drop) {
        if crate::executor::sandbox::caps::parse_cap(c).is_none() {
            return Err(RunError::Invalid(format!("unknown capability: {c:?}")));
        }
    }
    let mut no_new_privileges = false;
    for s in &opts.security_opts {
        match s.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                no_new_privileges = true
            }
            "no-new-privileges:false" | "no-new-privileges=false" => no_new_privileges = false,
            other => {
                return Err(RunError::Invalid(format!(
                    "unsupported --security-opt {other:?} (kiln knows no-new-privileges)"
                )))
            }
        }
    }
    for h in &opts.add_hosts {
        match h.split_once(':') {
            Some((name, ip)) if !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {}
            _ => {
                return Err(RunError::Invalid(format!(
                    "invalid argument {h:?} for \"--add-host\": expected HOST:IP"
                )))
            }
        }
    }
    let healthcheck = health_config(ic.healthcheck.as_ref(), opts)?;
    let mut labels: BTreeMap<String, String> = ic.labels.clone().unwrap_or_default();
    for l in &opts.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }

    let chain = rootfs::ensure_snapshots(store, snapshots, &image)?;
    let mut config = ContainerConfig {
        id: id.clone(),
        name,
        created: now_nanos(),
        image: opts.image.clone(),
        image_id: image.id().clone(),
        chain_id: chain.clone(),
        rootfs_kind: String::new(),
        path,
        args: full,
        env,
        working_dir: opts
            .workdir
            .clone()
            .or_else(|| ic.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
        user: opts
            .user
            .clone()
            .or_else(|| ic.user.clone())
            .unwrap_or_default(),
        hostname,
        tty: opts.tty,
        open_stdin: opts.interactive,
        stdin_once: opts.interactive && opts.stdin_once,
        console_size: opts.console_size,
        network_mode: opts.network.clone().unwrap_or_else(default_network),
        network_aliases: opts.network_aliases.clone(),
        ip: opts.ip.clone(),
        ports,
        publish_all: opts.publish_all,
        exposed_ports: exposed,
        extra_hosts: opts.add_hosts.clone(),
        mounts,
        readonly_rootfs: opts.read_only,
        cap_add: opts.cap_add.clone(),
        cap_drop: opts.cap_drop.clone(),
        no_new_privileges,
        memory: opts
            .memory
            .as_deref()
            .map(cgroups::parse_bytes)
            .transpose()?,
        nano_cpus: opts.cpus.map(|c| (c * 1e9) as i64),
        pids_limit: opts.pids_limit,
        restart_policy: restart,
        auto_remove: opts.auto_remove,
        init: opts.init,
        stop_signal,
        stop_timeout: opts.stop_timeout,
        healthcheck,
        labels,
    };
    if config.network_mode == "host" && !config.ports.is_empty() {
        // docker drops published ports with host networking (with a warning).
        eprintln!("WARNING: Published ports are discarded when using host network mode");
        config.ports.clear();
    }

    // Volumes exist before the container does; fresh ones get the image's content.
    let volumes = Volumes::open(root)?;
    let mut view = None;
    for m in config.mounts.iter().filter(|m| m.kind == "volume") {
        let v = volumes.create(&m.source, m.anonymous)?;
        if view.is_none() {
            view = Some(snapshots.view(chain.as_ref())?);
        }
        if let Some(view) = &view {
            if let Ok(src) =
                crate::executor::rootfs::resolve_in_root(view.path(), &m.destination, true)
            {
                prefill(&src, &v.mountpoint)?;
            }
        }
    }
    drop(view);

    containers.create(&mut config, &mut |dir, config| {
        config.rootfs_kind = rootfs::prepare(snapshots, dir, chain.as_ref())?;
        Ok(())
    })
}

/// The network a container joins when none is given.
pub fn default_network() -> String {
    "bridge".into()
}

fn health_config(
    image: Option<&HealthConfig>,
    opts: &CreateOptions,
) -> Result<Option<HealthConfig>> {
    if opts.no_healthcheck {
        return Ok(Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        }));
    }
    let mut h = image.cloned().unwrap_or_default();
    if let Some(cmd) = &opts.health_cmd {
        h.test = vec!["CMD-SHELL".into(), cmd.clone()];
    }
    if let Some(d) = &opts.health_interval {
        h.interval = parse_duration(d)?;
    }
    if let Some(d) = &opts.health_timeout {
        h.timeout = parse_duration(d)?;
    }
    if let Some(d) = &opts.health_start_period {
        h.start_period = parse_duration(d)?;
    }
    if let Some(r) = opts.health_retries {
        h.retries = r;
    }
    Ok((!h.test.is_empty()).then_some(h))
}

/// Where a container's host-side files live, for the error messages of callers.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join("containers").join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(
            (
                p.host_ip.as_str(),
                p.host_port,
                p.container_port,
                p.proto.as_str()
            ),
            ("127.0.0.1", 8080, 80, "tcp")
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto.as_str()),
            (53, 53, "udp")
        );
        let p = parse_publish("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_publish("127.0.0.1::80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_publish("[::1]:8080:80").unwrap();
        assert_eq!(p.host_ip, "::1");
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("80/sctp").is_err());
        assert!(parse_publish("1.2.3.4:5:6:7").is_err());
    }

    #[test]
    fn volume_flags() {
        let m = parse_volume_flag("data:/var/lib/data:ro").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.rw, m.anonymous),
            ("volume", false, false)
        );
        let m = parse_volume_flag("/srv:/srv").unwrap();
        assert_eq!(m.kind, "bind");
        let m = parse_volume_flag("/cache").unwrap();
        assert!(m.anonymous);
        assert!(parse_volume_flag("data:rel").is_err());
        let m = parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!((m.kind.as_str(), m.size), ("tmpfs", Some(1 << 20)));
        let m = parse_mount_flag("type=bind,source=/a,target=/b,readonly").unwrap();
        assert!(!m.rw);
        assert!(parse_mount_flag("type=bind,target=/b").is_err());
        let t = parse_tmpfs_flag("/run:size=64k").unwrap();
        assert_eq!(t.size, Some(65536));
    }

    #[test]
    fn durations_and_signals() {
        assert_eq!(parse_duration("30s").unwrap(), 30_000_000_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert!(parse_duration("5").is_err());
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn env_merging() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let m = merge_env(&base, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(m, ["PATH=/bin", "A=2", "B=3"]);
    }
}
