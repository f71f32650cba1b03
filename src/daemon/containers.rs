//! Container endpoints over [`crate::run`] for containers however they were created (the
//! store is shared with in-process `kiln run`): `GET /containers/json` (`all`, filters id,
//! name, status, label), `GET /containers/{id}/json`, `POST /containers/{id}/stop|kill|wait`,
//! `DELETE /containers/{id}`, `POST /containers/create`, `POST /containers/{id}/start`, logs.
//! Attach and resize are in [`super::attach`], exec in [`super::exec`].

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::http::{json, no_content, ApiError, ApiResult, Query};
use super::{blocking, State};
use crate::engine::containers::inspect_json;
use crate::engine::events::Event;
use crate::run::container as lifecycle;
use crate::run::state::{Container, Containers};

pub(super) fn find(state: &State, key: &str) -> Result<Container, ApiError> {
    Ok(Containers::open(&state.engine.root)?.find(key)?)
}

fn publish(state: &State, action: &str, c: &Container) {
    state.engine.events.publish(
        Event::new("container", action, c.id())
            .with("name", &c.config.name)
            .with("image", &c.config.image),
    );
}

pub async fn list(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&["id", "name", "status", "label"])?;
    let all = query.flag("all");
    let st = state.clone();
    let mut rows = blocking(move || {
        let mut rows = Vec::new();
        for c in Containers::open(&st.engine.root)?.list()? {
            let s = c.state()?;
            let status = s.status.as_str();
            let any = |key: &str, ok: &dyn Fn(&str) -> bool| {
                let v = f.values(key);
                v.is_empty() || v.iter().any(|x| ok(x))
            };
            if (!all && !s.is_running() && f.values("status").is_empty())
                || !any("id", &|x| c.id().starts_with(x))
                || !any("name", &|x| c.config.name.contains(x))
                || !any("status", &|x| x == status)
                || !f.labels_match("label", &c.config.labels)
            {
                continue;
            }
            rows.push((c.config.created, crate::engine::containers::summary(&c, &s)));
        }
        Ok(rows)
    })
    .await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    json(&rows.into_iter().map(|r| r.1).collect::<Vec<_>>())
}

pub async fn inspect(state: &Arc<State>, key: &str) -> ApiResult {
    let st = state.clone();
    let key = key.to_string();
    let doc = blocking(move || {
        let c = find(&st, &key)?;
        let s = c.state()?;
        let mut doc = inspect_json(&c, &s);
        let execs = st.execs.of_container(c.id());
        doc["ExecIDs"] = if execs.is_empty() {
            Value::Null
        } else {
            json!(execs)
        };
        Ok(doc)
    })
    .await?;
    json(&doc)
}

pub async fn stop(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let timeout = stop_timeout(query)?;
    let st = state.clone();
    let key = key.to_string();
    let was_running = blocking(move || {
        let c = find(&st, &key)?;
        if !c.state()?.is_running() {
            return Ok(false);
        }
        lifecycle::stop(&st.engine.root, &c, timeout)?;
        publish(&st, "stop", &c);
        Ok(true)
    })
    .await?;
    // docker: 304 Not Modified when the container was already stopped.
    no_content(if was_running {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_MODIFIED
    })
}

/// `POST /containers/{id}/restart?t=`.
pub async fn restart(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let timeout = stop_timeout(query)?;
    let st = state.clone();
    let key = key.to_string();
    blocking(move || {
        let c = find(&st, &key)?;
        lifecycle::restart(&st.engine.root, &c, timeout)?;
        publish(&st, "restart", &c);
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

/// `POST /containers/prune`: every container that is not running.
pub async fn prune(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&[])?;
    let st = state.clone();
    let removed = blocking(move || {
        let ids = lifecycle::prune(&st.engine.root)?;
        for id in &ids {
            st.engine
                .events
                .publish(Event::new("container", "destroy", id));
        }
        st.engine
            .events
            .publish(Event::new("container", "prune", ""));
        Ok(ids)
    })
    .await?;
    json(&json!({"ContainersDeleted": removed, "SpaceReclaimed": 0}))
}

fn stop_timeout(query: &Query) -> ApiResult<Option<i64>> {
    match query.get("t").filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(t.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("invalid t {t:?}: expected seconds"))
        })?)),
        None => Ok(None),
    }
}

pub async fn kill(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let signal = query
        .get("signal")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let st = state.clone();
    let key = key.to_string();
    blocking(move || {
        // Not running: lifecycle::kill's conflict (409).
        let c = find(&st, &key)?;
        lifecycle::kill(&st.engine.root, &c, signal.as_deref())?;
        publish(&st, "kill", &c);
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`.
pub async fn wait(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let condition = query
        .get("condition")
        .filter(|c| !c.is_empty())
        .unwrap_or("not-running")
        .to_string();
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(ApiError::bad_request(format!(
            "invalid condition {condition:?} (not-running, next-exit, removed)"
        )));
    }
    let c = {
        let st = state.clone();
        let key = key.to_string();
        blocking(move || find(&st, &key)).await?
    };
    // Headers go out now, the result when the condition is met: the docker CLI waits for
    // the headers before it starts the container (`docker run`).
    let (tx, resp) = super::http::stream("application/json");
    let root = state.engine.root.clone();
    tokio::task::spawn_blocking(move || {
        let code = wait_for(&root, &c, &condition, &|| tx.is_closed());
        let body = match code {
            Ok(code) => json!({"StatusCode": code, "Error": null}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
        };
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.blocking_send(Ok(bytes::Bytes::from(line)));
    });
    Ok(resp)
}

/// Blocks until `condition` holds (the exit code then) or the client left (`gone`: polled,
/// so a waiter that left holds no thread or lock file).
fn wait_for(
    root: &std::path::Path,
    c: &Container,
    condition: &str,
    gone: &dyn Fn() -> bool,
) -> crate::run::Result<i32> {
    let mut backoff = crate::run::Backoff::up_to(std::time::Duration::from_millis(50));
    if condition == "not-running" {
        loop {
            let s = match crate::run::monitor::settle(root, c) {
                Ok(s) => s,
                // Removed (--rm) while we waited: the exit code it left.
                Err(e) => return crate::run::state::removed_exit(root, c.id()).ok_or(e),
            };
            if !s.is_running() || gone() {
                return Ok(s.exit_code);
            }
            backoff.sleep();
        }
    }
    let started_before = c.state()?.started_at;
    let mut last = 0;
    loop {
        if gone() {
            return Ok(last);
        }
        // Gone (a --rm container removed itself): the exit code it left.
        let removed = || crate::run::state::removed_exit(root, c.id()).unwrap_or(last);
        if !c.dir.exists() {
            return Ok(removed());
        }
        let Ok(s) = crate::run::monitor::settle(root, c) else {
            return Ok(removed());
        };
        last = s.exit_code;
        if !s.is_running() && s.started_at != started_before && condition == "next-exit" {
            return Ok(s.exit_code);
        }
        backoff.sleep();
    }
}

pub async fn remove(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let force = query.flag("force");
    let volumes = query.flag("v");
    let st = state.clone();
    let key = key.to_string();
    blocking(move || {
        let c = find(&st, &key)?;
        lifecycle::remove(&st.engine.root, &c, force, volumes)?;
        publish(&st, "destroy", &c);
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

/// The parts of docker's ContainerCreate body kiln maps onto `kiln create`'s options.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    image: String,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: String,
    user: String,
    hostname: String,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    labels: Option<std::collections::BTreeMap<String, String>>,
    stop_signal: Option<String>,
    stop_timeout: Option<i64>,
    healthcheck: Option<Healthcheck>,
    host_config: Option<HostConfig>,
    networking_config: Option<Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    binds: Option<Vec<String>>,
    port_bindings: Option<std::collections::BTreeMap<String, Option<Vec<PortBinding>>>>,
    publish_all_ports: bool,
    network_mode: String,
    auto_remove: bool,
    restart_policy: Option<RestartPolicy>,
    memory: i64,
    nano_cpus: i64,
    pids_limit: Option<i64>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    readonly_rootfs: bool,
    security_opt: Option<Vec<String>>,
    init: Option<bool>,
    extra_hosts: Option<Vec<String>>,
    tmpfs: Option<std::collections::BTreeMap<String, String>>,
    /// [rows, columns] of the client's terminal (`docker run -t`).
    console_size: Option<[u16; 2]>,
    mounts: Option<Vec<MountBody>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Healthcheck {
    test: Option<Vec<String>>,
    interval: i64,
    timeout: i64,
    start_period: i64,
    retries: i64,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct MountBody {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TmpfsOptions {
    size_bytes: i64,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PortBinding {
    host_ip: String,
    host_port: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RestartPolicy {
    name: String,
    maximum_retry_count: i64,
}

/// docker's create body → kiln's create options (the same specs `kiln create` parses).
fn create_options(
    body: CreateBody,
    name: Option<String>,
) -> ApiResult<crate::run::create::CreateOptions> {
    if body.image.is_empty() {
        return Err(ApiError::bad_request("config.Image is required"));
    }
    let hc = body.host_config.unwrap_or_default();
    let mut cmd = body.cmd.unwrap_or_default();
    let entrypoint = match body.entrypoint {
        None => None,
        Some(e) if e.is_empty() => Some(String::new()),
        Some(mut e) => {
            let first = e.remove(0);
            e.extend(cmd);
            cmd = e;
            Some(first)
        }
    };
    let mut publish = Vec::new();
    for (port, bindings) in hc.port_bindings.unwrap_or_default() {
        for b in bindings.unwrap_or_default() {
            let host = match (b.host_ip.as_str(), b.host_port.as_str()) {
                ("", "") => String::new(),
                ("", p) => format!("{p}:"),
                (ip, p) => format!("{ip}:{p}:"),
            };
            publish.push(format!("{host}{port}"));
        }
    }
    let (mut aliases, mut ip, mut network) = (Vec::new(), None, None);
    if !hc.network_mode.is_empty() && hc.network_mode != "default" {
        network = Some(hc.network_mode.clone());
    }
    if let Some(endpoints) = body
        .networking_config
        .as_ref()
        .and_then(|n| n["EndpointsConfig"].as_object())
    {
        if let Some((net, cfg)) = endpoints.iter().next() {
            if net != "default" {
                network.get_or_insert_with(|| net.clone());
            }
            aliases = cfg["Aliases"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ip = cfg["IPAMConfig"]["IPv4Address"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
    }
    let restart = hc
        .restart_policy
        .filter(|r| !r.name.is_empty() && r.name != "no")
        .map(|r| {
            if r.maximum_retry_count > 0 {
                format!("{}:{}", r.name, r.maximum_retry_count)
            } else {
                r.name
            }
        });
    let health = body.healthcheck.unwrap_or_default();
    let test = health.test.unwrap_or_default();
    let no_healthcheck = test.first().is_some_and(|t| t == "NONE");
    let health_cmd = match test.first().map(String::as_str) {
        Some("CMD-SHELL") => Some(test[1..].join(" ")),
        Some("CMD") => Some(test[1..].join(" ")),
        _ => None,
    };
    let nanos = |n: i64| (n > 0).then(|| format!("{n}ns"));
    let mounts = hc
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let mut spec = format!("type={},target={}", m.kind, m.target);
            if !m.source.is_empty() {
                spec.push_str(&format!(",source={}", m.source));
            }
            if m.read_only {
                spec.push_str(",readonly");
            }
            if let Some(t) = m.tmpfs_options.filter(|t| t.size_bytes > 0) {
                spec.push_str(&format!(",tmpfs-size={}", t.size_bytes));
            }
            spec
        })
        .collect();
    Ok(crate::run::create::CreateOptions {
        image: body.image,
        cmd,
        name,
        entrypoint,
        env: body.env.unwrap_or_default(),
        workdir: Some(body.working_dir).filter(|s| !s.is_empty()),
        user: Some(body.user).filter(|s| !s.is_empty()),
        hostname: Some(body.hostname).filter(|s| !s.is_empty()),
        tty: body.tty,
        interactive: body.open_stdin,
        stdin_once: body.stdin_once,
        console_size: hc
            .console_size
            .filter(|[r, c]| *r > 0 && *c > 0)
            .map(|[r, c]| (r, c)),
        network,
        network_aliases: aliases,
        ip,
        publish,
        publish_all: hc.publish_all_ports,
        add_hosts: hc.extra_hosts.unwrap_or_default(),
        volumes: hc.binds.unwrap_or_default(),
        mounts,
        tmpfs: hc
            .tmpfs
            .unwrap_or_default()
            .into_iter()
            .map(|(p, o)| if o.is_empty() { p } else { format!("{p}:{o}") })
            .collect(),
        read_only: hc.readonly_rootfs,
        cap_add: hc.cap_add.unwrap_or_default(),
        cap_drop: hc.cap_drop.unwrap_or_default(),
        security_opts: hc.security_opt.unwrap_or_default(),
        memory: (hc.memory > 0).then(|| hc.memory.to_string()),
        cpus: (hc.nano_cpus > 0).then(|| hc.nano_cpus as f64 / 1e9),
        pids_limit: hc.pids_limit.filter(|p| *p > 0),
        restart,
        auto_remove: hc.auto_remove,
        init: hc.init.unwrap_or(false),
        stop_signal: body.stop_signal.filter(|s| !s.is_empty()),
        stop_timeout: body.stop_timeout,
        labels: body
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        health_cmd,
        health_interval: nanos(health.interval),
        health_timeout: nanos(health.timeout),
        health_start_period: nanos(health.start_period),
        health_retries: (health.retries > 0).then_some(health.retries),
        no_healthcheck,
    })
}

pub async fn create(
    state: &Arc<State>,
    query: &Query,
    req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult {
    let body: Option<CreateBody> = super::http::read_json(req).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("the request needs a JSON body"))?;
    let name = query
        .get("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let opts = create_options(body, name)?;
    let st = state.clone();
    let id = blocking(move || {
        let root = &st.engine.root;
        let snapshots = crate::run::rootfs::open_snapshots(root)?;
        let c = crate::run::create::create(root, &st.engine.store, snapshots.as_ref(), &opts)
            .map_err(|e| match e {
                crate::run::RunError::Image(m) => {
                    ApiError::not_found(format!("No such image: {m}"))
                }
                e => e.into(),
            })?;
        publish(&st, "create", &c);
        Ok(c.id().to_string())
    })
    .await?;
    Ok(super::http::json_status(
        StatusCode::CREATED,
        &json!({"Id": id, "Warnings": []}),
    ))
}

pub async fn start(state: &Arc<State>, key: &str) -> ApiResult {
    let st = state.clone();
    let key = key.to_string();
    let started = blocking(move || {
        let c = find(&st, &key)?;
        if c.state()?.is_running() {
            return Ok(false);
        }
        lifecycle::start_detached(&st.engine.root, &c)?;
        publish(&st, "start", &c);
        Ok(true)
    })
    .await?;
    no_content(if started {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_MODIFIED
    })
}

/// The writer for one output stream of a container: framed into `tx` when the client asked
/// for it (raw for a tty), dropped otherwise.
pub(super) fn output_writer(
    tx: &tokio::sync::mpsc::Sender<super::http::Chunk>,
    wanted: bool,
    tty: bool,
    stream: u8,
) -> Box<dyn std::io::Write + Send> {
    if wanted {
        Box::new(super::http::ChannelWriter {
            tx: tx.clone(),
            frame: (!tty).then_some(stream),
        })
    } else {
        Box::new(Discard)
    }
}

/// A writer that drops everything (a stream the client did not ask for).
pub(super) struct Discard;

impl std::io::Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /containers/{id}/logs` (`stdout`, `stderr`, `follow`, `tail`, `timestamps`): the
/// json-file log in docker's multiplexed stream format (raw for tty containers); with
/// `follow`, until the container stops or the client leaves.
pub async fn logs(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let (want_out, want_err) = (query.flag("stdout"), query.flag("stderr"));
    if !want_out && !want_err {
        return Err(ApiError::bad_request(
            "you must choose at least one stream (stdout or stderr)",
        ));
    }
    let tail = match query.get("tail").filter(|t| !t.is_empty() && *t != "all") {
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("invalid tail {t:?}: expected a number or \"all\""))
        })?),
        None => None,
    };
    let follow = query.flag("follow");
    let show = crate::run::logs::Show {
        timestamps: query.flag("timestamps"),
    };
    let c = {
        let st = state.clone();
        let key = key.to_string();
        blocking(move || find(&st, &key)).await?
    };
    let tty = c.config.tty;
    let (tx, resp) = super::http::stream(if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    });
    let root = state.engine.root.clone();
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (
            output_writer(&tx, want_out, tty, 1),
            output_writer(&tx, want_err, tty, 2),
        );
        let path = c.log_path();
        let result =
            crate::run::logs::print(&path, tail, show, &mut *out, &mut *err).and_then(|offset| {
                if !follow {
                    return Ok(());
                }
                let done = || {
                    crate::run::monitor::settle(&root, &c)
                        .map(|s| !s.is_running())
                        .unwrap_or(true)
                        || tx.is_closed()
                };
                crate::run::logs::follow(&path, offset, show, &mut *out, &mut *err, &done)
            });
        if let Err(e) = result {
            tracing::debug!("logs of {}: {e}", c.id());
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::create::CreateOptions;

    /// What `kiln -H … run` sends is what `kiln run` would have created.
    #[test]
    fn create_options_survive_the_api_body() {
        let opts = CreateOptions {
            image: "busybox:test".into(),
            cmd: vec!["sh".into(), "-c".into(), "echo hi".into()],
            name: Some("web".into()),
            entrypoint: Some("/bin/env".into()),
            env: vec!["A=1".into()],
            workdir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            hostname: Some("h".into()),
            tty: true,
            interactive: true,
            stdin_once: true,
            console_size: Some((24, 80)),
            network: Some("appnet".into()),
            network_aliases: vec!["db".into()],
            ip: Some("10.1.0.5".into()),
            publish: vec!["127.0.0.1:8080:80/tcp".into()],
            publish_all: true,
            add_hosts: vec!["x:1.2.3.4".into()],
            volumes: vec!["/tmp:/data:ro".into()],
            mounts: vec!["type=tmpfs,target=/cache,tmpfs-size=1048576".into()],
            tmpfs: vec!["/run:size=65536".into()],
            read_only: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["CHOWN".into()],
            security_opts: vec!["no-new-privileges".into()],
            memory: Some("1048576".into()),
            cpus: Some(1.5),
            pids_limit: Some(64),
            restart: Some("on-failure:3".into()),
            auto_remove: false,
            init: true,
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(3),
            health_cmd: Some("true".into()),
            health_interval: Some("1000000000ns".into()),
            health_timeout: Some("2000000000ns".into()),
            health_retries: Some(2),
            health_start_period: None,
            no_healthcheck: false,
            labels: vec!["a=b".into()],
        };
        let body = crate::engine::containers::create_body(&opts).unwrap();
        let parsed: CreateBody = serde_json::from_value(body).unwrap();
        let back = create_options(parsed, Some("web".into())).unwrap();
        let mut want = opts.clone();
        // The entrypoint travels as a list: its first word comes back, the rest join the cmd.
        want.entrypoint = Some("/bin/env".into());
        assert_eq!(format!("{back:?}"), format!("{want:?}"));
    }
}
