//! System endpoints: `/_ping` (with docker's `Api-Version`/`Builder-Version` headers, GET and
//! HEAD), `/version`, `/info` and `/system/df`, filled from the engine and the host.

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{Method, Response};
use serde_json::{json, Value};

use super::http::{full, json, ApiResult};
use super::{blocking, State, API_VERSION, MIN_API_VERSION};
use crate::graph::Platform;

pub fn ping(method: &Method) -> ApiResult {
    let body = if method == Method::HEAD {
        full("")
    } else {
        full("OK")
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(hyper::header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(r)
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn operating_system() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn version(_state: &Arc<State>) -> ApiResult {
    let platform = Platform::host();
    let version = env!("CARGO_PKG_VERSION");
    // docker repeats the engine's details at the top level.
    let details = json!({
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "n/a (Rust)",
        "Os": platform.os,
        "Arch": platform.arch,
        "KernelVersion": kernel_version(),
        "BuildTime": "",
    });
    let mut engine_details = details.clone();
    engine_details["Experimental"] = json!("false");
    let mut doc = details;
    doc["Platform"] = json!({"Name": format!("kiln {version}")});
    doc["Components"] = json!([{
        "Name": "Engine",
        "Version": version,
        "Details": engine_details,
    }]);
    doc["Version"] = json!(version);
    json(&doc)
}

pub async fn info(state: &Arc<State>) -> ApiResult {
    let st = state.clone();
    let (images, driver, (total, running)) = blocking(move || {
        let images = st
            .engine
            .store
            .images()
            .map_err(crate::engine::EngineError::from)?;
        let containers = crate::run::state::Containers::open(&st.engine.root)?.list()?;
        let running = containers
            .iter()
            .filter(|c| c.state().is_ok_and(|s| s.is_running()))
            .count();
        let driver = st
            .engine
            .snapshotter()
            .map(|s| s.name().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Ok((images.len(), driver, (containers.len(), running)))
    })
    .await?;
    let platform = Platform::host();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cgroup_version = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    };
    let mut doc = json!({
        "ID": format!("kiln-{}", hostname()),
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": total - running,
        "Images": images,
        "Driver": driver,
        "DriverStatus": [["Backing Filesystem", "kiln snapshots"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Log": ["json-file"]},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "IPv4Forwarding": true,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": crate::cache::image::rfc3339(crate::cache::image::unix_now()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version,
        "NEventsListener": 0,
    });
    let more = json!({
        "KernelVersion": kernel_version(),
        "OperatingSystem": operating_system(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"], "Mirrors": []},
        "NCPU": cpus,
        "MemTotal": mem_total(),
        "DockerRootDir": state.engine.root.display().to_string(),
        "Name": hostname(),
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"kiln": {"path": "kiln"}},
        "DefaultRuntime": "kiln",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"],
        "Warnings": [],
        "Platform": platform.to_string(),
        "StartedAt": state.started,
    });
    if let (Some(d), Value::Object(m)) = (doc.as_object_mut(), more) {
        d.extend(m);
    }
    json(&doc)
}

pub async fn df(state: &Arc<State>) -> ApiResult {
    let st = state.clone();
    let doc = blocking(move || {
        Ok(crate::engine::system::disk_usage(
            &st.engine.root,
            &st.engine.store,
        )?)
    })
    .await?;
    json(&doc)
}
