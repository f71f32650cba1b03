//! Volume endpoints over [`crate::run::volume`]: `GET /volumes` (filters name, dangling,
//! driver), `POST /volumes/create`, `GET /volumes/{name}`, `DELETE /volumes/{name}`, `POST
//! /volumes/prune`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{json, json_status, no_content, read_json, ApiError, ApiResult, Query};
use super::{blocking, State};
use crate::engine::events::Event;
use crate::engine::volumes::inspect_json;
use crate::run::volume::Volumes;
use crate::run::RunError;

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        let status = match &e {
            RunError::NoSuchContainer(_) | RunError::NoSuchVolume(_) | RunError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            RunError::Conflict(_) => StatusCode::CONFLICT,
            RunError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn open(state: &State) -> Result<Volumes, ApiError> {
    Ok(Volumes::open(&state.engine.root)?)
}

pub async fn list(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&["name", "dangling", "driver"])?;
    let st = state.clone();
    let dangling = match f.values("dangling") {
        [] => None,
        [x] if x == "true" || x == "1" => Some(true),
        [x] if x == "false" || x == "0" => Some(false),
        _ => return Err(ApiError::bad_request("invalid filter 'dangling'")),
    };
    let docs = blocking(move || {
        let volumes = open(&st)?;
        // Containers are listed once, and only when the filter needs them.
        let refs = match dangling {
            Some(_) => volumes.refs()?,
            None => Default::default(),
        };
        let mut docs = Vec::new();
        for v in volumes.list()? {
            let names = f.values("name");
            if !names.is_empty() && !names.iter().any(|n| v.meta.name.contains(n.as_str())) {
                continue;
            }
            if !f.values("driver").is_empty() && !f.values("driver").iter().any(|d| d == "local") {
                continue;
            }
            if let Some(want) = dangling {
                if refs.contains_key(&v.meta.name) == want {
                    continue;
                }
            }
            docs.push(inspect_json(&v));
        }
        Ok(docs)
    })
    .await?;
    json(&json!({"Volumes": docs, "Warnings": []}))
}

pub async fn inspect(state: &Arc<State>, name: &str) -> ApiResult {
    let st = state.clone();
    let name = name.to_string();
    let doc = blocking(move || Ok(inspect_json(&open(&st)?.get(&name)?))).await?;
    json(&doc)
}

/// docker's VolumeCreateBody.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    driver_opts: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

pub async fn create(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    let body: Option<CreateRequest> = read_json(req).await?;
    let body = body.unwrap_or_default();
    if !body.driver.is_empty() && body.driver != "local" {
        return Err(ApiError::bad_request(format!(
            "volume driver {:?} is not supported (kiln has \"local\")",
            body.driver
        )));
    }
    if body.driver_opts.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(ApiError::bad_request(
            "volume driver options are not supported by kiln's local driver",
        ));
    }
    if body.labels.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(ApiError::bad_request(
            "volume labels are not supported by kiln yet",
        ));
    }
    let st = state.clone();
    let doc = blocking(move || {
        let (name, anonymous) = if body.name.is_empty() {
            (crate::run::state::new_id(), true)
        } else {
            (body.name, false)
        };
        let v = open(&st)?.create(&name, anonymous)?;
        st.engine
            .events
            .publish(Event::new("volume", "create", &v.meta.name).with("driver", "local"));
        Ok(inspect_json(&v))
    })
    .await?;
    Ok(json_status(StatusCode::CREATED, &doc))
}

pub async fn remove(state: &Arc<State>, name: &str, query: &Query) -> ApiResult {
    let force = query.flag("force");
    let st = state.clone();
    let name = name.to_string();
    blocking(move || {
        open(&st)?.remove(&name, force)?;
        st.engine
            .events
            .publish(Event::new("volume", "destroy", &name).with("driver", "local"));
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

pub async fn prune(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&["all"])?;
    let all = matches!(f.values("all"), [v] if v == "true" || v == "1");
    let st = state.clone();
    let removed = blocking(move || {
        let removed = open(&st)?.prune(all)?;
        for name in &removed {
            st.engine
                .events
                .publish(Event::new("volume", "destroy", name).with("driver", "local"));
        }
        Ok(removed)
    })
    .await?;
    json(&json!({"VolumesDeleted": removed, "SpaceReclaimed": 0}))
}
