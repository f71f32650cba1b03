//! Container endpoints over [`crate::run`] for containers however they were created (the
//! store is shared with in-process `kiln run`): `GET /containers/json` (`all`, filters id,
//! name, status, label), `GET /containers/{id}/json`, `POST /containers/{id}/stop|kill|wait`,
//! `DELETE /containers/{id}`. Creating, starting, attaching and exec are not served yet.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::http::{json, no_content, ApiError, ApiResult, Query};
use super::{blocking, State};
use crate::engine::containers::{inspect_json, status_text};
use crate::engine::events::Event;
use crate::run::container as lifecycle;
use crate::run::state::{Container, Containers};

fn find(state: &State, key: &str) -> Result<Container, ApiError> {
    Ok(Containers::open(&state.engine.root)?.find(key)?)
}

fn publish(state: &State, action: &str, c: &Container) {
    state.engine.events.publish(
        Event::new("container", action, c.id())
            .with("name", &c.config.name)
            .with("image", &c.config.image),
    );
}

/// docker's ContainerSummary (`docker ps`).
fn summary(c: &Container, s: &crate::run::state::State) -> Value {
    let cfg = &c.config;
    let command: Vec<&str> = std::iter::once(cfg.path.as_str())
        .chain(cfg.args.iter().map(String::as_str))
        .collect();
    let ports: Vec<Value> = s
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
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    })
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
            rows.push((c.config.created, summary(&c, &s)));
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
        Ok(inspect_json(&c, &s))
    })
    .await?;
    json(&doc)
}

pub async fn stop(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let timeout = match query.get("t").filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid t {t:?}: expected seconds")))?,
        ),
        None => None,
    };
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

pub async fn kill(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let signal = query
        .get("signal")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let st = state.clone();
    let key = key.to_string();
    blocking(move || {
        let c = find(&st, &key)?;
        if !c.state()?.is_running() {
            return Err(ApiError::conflict(format!(
                "cannot kill container: {key}: container {} is not running",
                c.id()
            )));
        }
        lifecycle::kill(&st.engine.root, &c, signal.as_deref())?;
        publish(&st, "kill", &c);
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

pub async fn wait(state: &Arc<State>, key: &str) -> ApiResult {
    let st = state.clone();
    let key = key.to_string();
    let code = blocking(move || {
        let c = find(&st, &key)?;
        Ok(lifecycle::wait(&st.engine.root, &c)?)
    })
    .await?;
    json(&json!({"StatusCode": code, "Error": null}))
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
