//! Containers as docker's API and CLI show them (the container store is [`crate::run`]):
//! the `inspect` document and the STATUS text.

use serde_json::{json, Value};

use crate::cli::format::human_duration;
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
