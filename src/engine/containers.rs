//! Containers as docker's API and CLI show them (the container store is [`crate::run`]):
//! the `ps` summary, the `inspect` document and the STATUS text. The CLI renders the same
//! documents whether it reads the store in-process or asks a daemon.

use serde_json::{json, Value};

use crate::cli::format::human_duration;
use crate::run::create::{parse_duration, parse_publish, CreateOptions};
use crate::run::state::{Container, State, Status};

/// docker's STATUS column.
pub fn status_text(s: &State) -> String {
    let since =
        |t: i128| human_duration(crate::cache::image::unix_now() - (t / 1_000_000_000) as i64);
    let health = s
        .health
        .as_ref()
        .filter(|_| s.status == Status::Running)
        .map(|h| match h.status.as_str() {
            "starting" => " (health: starting)".to_string(),
            other => format!(" ({other})"),
        })
        .unwrap_or_default();
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}{health}", since(s.started_at)),
        Status::Restarting => format!("Restarting ({}) {} ago", s.exit_code, since(s.finished_at)),
        Status::Exited | Status::Dead => {
            if s.finished_at == 0 {
                format!("Exited ({})", s.exit_code)
            } else {
                format!("Exited ({}) {} ago", s.exit_code, since(s.finished_at))
            }
        }
    }
}

/// docker's ContainerSummary (`GET /containers/json`, what `ps` shows): published ports
/// with their host side, exposed ones without.
pub fn summary(c: &Container, s: &State) -> Value {
    let cfg = &c.config;
    let command: Vec<&str> = std::iter::once(cfg.path.as_str())
        .chain(cfg.args.iter().map(String::as_str))
        .collect();
    let mut ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            json!({
                "IP": if p.host_ip.is_empty() { "0.0.0.0" } else { p.host_ip.as_str() },
                "PrivatePort": p.container_port,
                "PublicPort": p.host_port,
                "Type": p.proto,
            })
        })
        .collect();
    for e in &cfg.exposed_ports {
        let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if !s
            .ports
            .iter()
            .any(|p| p.container_port == port && p.proto == proto)
        {
            ports.push(json!({"PrivatePort": port, "Type": proto}));
        }
    }
    let networks: serde_json::Map<String, Value> = if s.networks.is_empty() {
        std::iter::once((cfg.network_mode.clone(), json!({}))).collect()
    } else {
        s.networks
            .iter()
            .map(|n| (n.network.clone(), json!({"IPAddress": n.ip_address})))
            .collect()
    };
    json!({
        "Id": c.id(),
        "Names": [format!("/{}", cfg.name)],
        "Image": cfg.image,
        "ImageID": cfg.image_id.to_string(),
        "Command": command.join(" "),
        "Created": i64::try_from(cfg.created / 1_000_000_000).unwrap_or(0),
        "Ports": ports,
        "Labels": cfg.labels,
        "State": s.status.as_str(),
        "Status": status_text(s),
        "HostConfig": {"NetworkMode": cfg.network_mode},
        "NetworkSettings": {"Networks": networks},
        "Mounts": cfg.mounts.iter().map(|m| json!({
            "Type": m.kind,
            "Name": if m.kind == "volume" { m.source.clone() } else { String::new() },
            "Source": m.source,
            "Destination": m.destination,
            "RW": m.rw,
        })).collect::<Vec<_>>(),
    })
}

/// docker's `PORTS` column from a summary's `Ports`.
pub fn ports_text(summary: &Value) -> String {
    let empty = Vec::new();
    let ports = summary["Ports"].as_array().unwrap_or(&empty);
    ports
        .iter()
        .map(|p| {
            let proto = p["Type"].as_str().unwrap_or("tcp");
            let private = p["PrivatePort"].as_u64().unwrap_or(0);
            match p["PublicPort"].as_u64() {
                Some(public) => format!(
                    "{}:{public}->{private}/{proto}",
                    p["IP"].as_str().unwrap_or("0.0.0.0")
                ),
                None => format!("{private}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn inspect_json(c: &Container, s: &State) -> Value {
    let cfg = &c.config;
    let health = s.health.as_ref().map(|h| {
        json!({
            "Status": h.status,
            "FailingStreak": h.failing_streak,
            "Log": h.log,
        })
    });
    let mut state = json!({
        "Status": s.status.as_str(),
        "Running": s.status == Status::Running,
        "Paused": false,
        "Restarting": s.status == Status::Restarting,
        "OOMKilled": s.oom_killed,
        "Dead": s.status == Status::Dead,
        "Pid": s.pid,
        "ExitCode": s.exit_code,
        "Error": s.error,
        "StartedAt": crate::run::state::rfc3339_nanos(s.started_at),
        "FinishedAt": crate::run::state::rfc3339_nanos(s.finished_at),
    });
    if let Some(h) = health {
        state["Health"] = h;
    }
    let mut port_map = serde_json::Map::new();
    for p in &s.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        let entry = port_map.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    let networks: serde_json::Map<String, Value> = s
        .networks
        .iter()
        .map(|n| {
            (
                n.network.clone(),
                json!({
                    "IPAddress": n.ip_address,
                    "IPPrefixLen": n.ip_prefix_len,
                    "Gateway": n.gateway,
                    "MacAddress": n.mac_address,
                    "Aliases": cfg.network_aliases,
                }),
            )
        })
        .collect();
    let first_ip = s
        .networks
        .first()
        .map(|n| n.ip_address.clone())
        .unwrap_or_default();
    json!({
        "Id": cfg.id,
        "Created": crate::run::state::rfc3339_nanos(cfg.created),
        "Path": cfg.path,
        "Args": cfg.args,
        "State": state,
        "Image": cfg.image_id.to_string(),
        "ResolvConfPath": c.path("resolv.conf"),
        "HostnamePath": c.path("hostname"),
        "HostsPath": c.path("hosts"),
        "LogPath": c.log_path(),
        "Name": format!("/{}", cfg.name),
        "RestartCount": s.restart_count,
        "Driver": if cfg.rootfs_kind == "overlay" { "overlay2" } else { "vfs" },
        "Platform": "linux",
        "HostConfig": {
            "NetworkMode": cfg.network_mode,
            "RestartPolicy": cfg.restart_policy,
            "AutoRemove": cfg.auto_remove,
            "Memory": cfg.memory.unwrap_or(0),
            "NanoCpus": cfg.nano_cpus.unwrap_or(0),
            "PidsLimit": cfg.pids_limit,
            "ReadonlyRootfs": cfg.readonly_rootfs,
            "CapAdd": cfg.cap_add,
            "CapDrop": cfg.cap_drop,
            "SecurityOpt": if cfg.no_new_privileges { json!(["no-new-privileges"]) } else { Value::Null },
            "Init": cfg.init,
            "ExtraHosts": cfg.extra_hosts,
            "PortBindings": cfg.ports.iter().map(|p| (format!("{}/{}", p.container_port, p.proto), json!([{"HostIp": p.host_ip, "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() }}]))).collect::<serde_json::Map<String, Value>>(),
            "PublishAllPorts": cfg.publish_all,
        },
        "Mounts": cfg.mounts.iter().map(|m| json!({
            "Type": m.kind,
            "Name": if m.kind == "volume" { m.source.clone() } else { String::new() },
            "Source": m.source,
            "Destination": m.destination,
            "RW": m.rw,
        })).collect::<Vec<_>>(),
        "Config": {
            "Hostname": cfg.hostname,
            "User": cfg.user,
            "Tty": cfg.tty,
            "OpenStdin": cfg.open_stdin,
            "StdinOnce": cfg.stdin_once,
            "Env": cfg.env,
            "Cmd": cfg.args,
            "Image": cfg.image,
            "WorkingDir": cfg.working_dir,
            "Entrypoint": [cfg.path.clone()],
            "Labels": cfg.labels,
            "StopSignal": cfg.stop_signal,
            "StopTimeout": cfg.stop_timeout,
            "Healthcheck": cfg.healthcheck,
            "ExposedPorts": cfg.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect::<serde_json::Map<String, Value>>(),
        },
        "NetworkSettings": {
            "IPAddress": first_ip,
            "Ports": port_map,
            "Networks": networks,
        },
    })
}

/// kiln's create options as docker's ContainerCreate body (what `kiln -H … run/create`
/// sends; the daemon maps it back with the same parsers `kiln create` uses). Specs are
/// checked here, so a bad flag fails before anything is sent.
pub fn create_body(o: &CreateOptions) -> crate::run::Result<Value> {
    let mut port_bindings = serde_json::Map::new();
    let mut exposed = serde_json::Map::new();
    for spec in &o.publish {
        let p = parse_publish(spec)?;
        let key = format!("{}/{}", p.container_port, p.proto);
        exposed.insert(key.clone(), json!({}));
        let host_port = if p.host_port == 0 {
            String::new()
        } else {
            p.host_port.to_string()
        };
        let entry = port_bindings.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({"HostIp": p.host_ip, "HostPort": host_port}));
        }
    }
    let mut mounts = Vec::new();
    for m in &o.mounts {
        let mut fields = serde_json::Map::new();
        let mut kind = "volume";
        for part in m.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "type" => kind = v,
                "source" | "src" => {
                    fields.insert("Source".into(), json!(v));
                }
                "target" | "destination" | "dst" => {
                    fields.insert("Target".into(), json!(v));
                }
                "readonly" | "ro" => {
                    fields.insert(
                        "ReadOnly".into(),
                        json!(v.is_empty() || v == "true" || v == "1"),
                    );
                }
                "tmpfs-size" => {
                    let bytes = crate::run::cgroups::parse_bytes(v)?;
                    fields.insert("TmpfsOptions".into(), json!({"SizeBytes": bytes}));
                }
                _ => {}
            }
        }
        fields.insert("Type".into(), json!(kind));
        mounts.push(Value::Object(fields));
    }
    let (entrypoint, cmd) = match &o.entrypoint {
        None => (Value::Null, json!(o.cmd)),
        Some(e) if e.is_empty() => (json!([""]), json!(o.cmd)),
        Some(e) => (json!([e]), json!(o.cmd)),
    };
    let restart = o.restart.as_deref().map(|r| {
        let (name, count) = r.split_once(':').unwrap_or((r, "0"));
        json!({"Name": name, "MaximumRetryCount": count.parse::<i64>().unwrap_or(0)})
    });
    let memory = match &o.memory {
        Some(m) => crate::run::cgroups::parse_bytes(m)?,
        None => 0,
    };
    let duration = |d: &Option<String>| -> crate::run::Result<i64> {
        d.as_deref()
            .map(parse_duration)
            .transpose()
            .map(|x| x.unwrap_or(0))
    };
    let healthcheck = if o.no_healthcheck {
        json!({"Test": ["NONE"]})
    } else {
        json!({
            "Test": o.health_cmd.as_ref().map(|c| json!(["CMD-SHELL", c])),
            "Interval": duration(&o.health_interval)?,
            "Timeout": duration(&o.health_timeout)?,
            "StartPeriod": duration(&o.health_start_period)?,
            "Retries": o.health_retries.unwrap_or(0),
        })
    };
    // `KEY=VALUE` labels and `DST:OPTIONS` tmpfs specs as docker's maps.
    let split_map = |items: &[String], sep: char| -> serde_json::Map<String, Value> {
        items
            .iter()
            .map(|i| {
                let (k, v) = i.split_once(sep).unwrap_or((i, ""));
                (k.to_string(), json!(v))
            })
            .collect()
    };
    let labels = split_map(&o.labels, '=');
    let tmpfs = split_map(&o.tmpfs, ':');
    let mut endpoints = serde_json::Map::new();
    if let Some(net) = &o.network {
        endpoints.insert(
            net.clone(),
            json!({
                "Aliases": o.network_aliases,
                "IPAMConfig": o.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
            }),
        );
    }
    Ok(json!({
        "Image": o.image,
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "Env": o.env,
        "WorkingDir": o.workdir.clone().unwrap_or_default(),
        "User": o.user.clone().unwrap_or_default(),
        "Hostname": o.hostname.clone().unwrap_or_default(),
        "Tty": o.tty,
        "OpenStdin": o.interactive,
        "StdinOnce": o.stdin_once,
        "AttachStdin": o.stdin_once,
        "AttachStdout": true,
        "AttachStderr": true,
        "Labels": labels,
        "StopSignal": o.stop_signal,
        "StopTimeout": o.stop_timeout,
        "ExposedPorts": exposed,
        "Healthcheck": healthcheck,
        "HostConfig": {
            "Binds": o.volumes,
            "Mounts": mounts,
            "PortBindings": port_bindings,
            "PublishAllPorts": o.publish_all,
            "NetworkMode": o.network.clone().unwrap_or_default(),
            "AutoRemove": o.auto_remove,
            "RestartPolicy": restart,
            "Memory": memory,
            "NanoCpus": o.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
            "PidsLimit": o.pids_limit,
            "CapAdd": o.cap_add,
            "CapDrop": o.cap_drop,
            "ReadonlyRootfs": o.read_only,
            "SecurityOpt": o.security_opts,
            "Init": o.init,
            "ExtraHosts": o.add_hosts,
            "Tmpfs": tmpfs,
            "ConsoleSize": o.console_size.map(|(rows, cols)| [rows, cols]),
        },
        "NetworkingConfig": {"EndpointsConfig": endpoints},
    }))
}
