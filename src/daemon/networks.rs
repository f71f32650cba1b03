//! Network endpoints over [`crate::run::network`]: `GET /networks` (filters name, id,
//! label, driver, type), `GET /networks/{id}`, `POST /networks/create`, `DELETE
//! /networks/{id}`, `POST /networks/prune`, `POST /networks/{id}/connect|disconnect`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{json, json_status, no_content, read_json, ApiError, ApiResult, Query};
use super::{blocking, State};
use crate::engine::events::Event;
use crate::engine::networks::inspect_json;
use crate::run::network::{CreateOptions, NetworkError, NetworkInfo, Networks};

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> ApiError {
        let status = match &e {
            NetworkError::NotFound(_) => StatusCode::NOT_FOUND,
            NetworkError::Exists(_) | NetworkError::AlreadyConnected { .. } => StatusCode::CONFLICT,
            NetworkError::InvalidName { .. }
            | NetworkError::Invalid(_)
            | NetworkError::Publish { .. }
            | NetworkError::Overlap { .. } => StatusCode::BAD_REQUEST,
            NetworkError::Predefined(_) | NetworkError::InUse { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn open(state: &State) -> Result<Networks, ApiError> {
    Ok(Networks::open(&state.engine.root)?)
}

fn publish(state: &State, action: &str, n: &NetworkInfo) {
    state.engine.events.publish(
        Event::new("network", action, &n.id)
            .with("name", &n.name)
            .with("type", &n.driver),
    );
}

pub async fn list(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&["name", "id", "label", "driver", "type", "scope"])?;
    let st = state.clone();
    let docs = blocking(move || {
        let nets = open(&st)?.list()?;
        let keep = |n: &NetworkInfo| {
            let any = |key: &str, ok: &dyn Fn(&str) -> bool| {
                let v = f.values(key);
                v.is_empty() || v.iter().any(|x| ok(x))
            };
            any("name", &|x| n.name.contains(x))
                && any("id", &|x| n.id.starts_with(x))
                && any("driver", &|x| n.driver == x)
                && any("scope", &|x| x == n.scope())
                && any("type", &|x| match x {
                    "custom" => n.is_user_defined(),
                    "builtin" => !n.is_user_defined(),
                    _ => false,
                })
                && f.labels_match("label", &n.labels)
        };
        Ok(nets
            .iter()
            .filter(|n| keep(n))
            .map(inspect_json)
            .collect::<Vec<_>>())
    })
    .await?;
    json(&docs)
}

pub async fn inspect(state: &Arc<State>, name: &str) -> ApiResult {
    let st = state.clone();
    let name = name.to_string();
    let doc = blocking(move || Ok(inspect_json(&open(&st)?.inspect(&name)?))).await?;
    json(&doc)
}

/// docker's NetworkCreateRequest (the fields kiln uses; others are accepted and ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    name: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    internal: bool,
    #[serde(default, rename = "IPAM")]
    ipam: Option<Ipam>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    #[serde(default)]
    config: Option<Vec<IpamConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

pub async fn create(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    let body: Option<CreateRequest> = read_json(req).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("the request needs a JSON body"))?;
    if body.enable_ipv6 == Some(true) {
        return Err(ApiError::bad_request(
            "IPv6 networks are not supported by kiln",
        ));
    }
    let mut opts = CreateOptions {
        driver: body.driver.filter(|d| !d.is_empty()),
        internal: body.internal,
        labels: body.labels.unwrap_or_default(),
        ..Default::default()
    };
    let configs = body.ipam.and_then(|i| i.config).unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::bad_request(
            "kiln networks have one IPv4 subnet; give at most one IPAM config",
        ));
    }
    if let Some(c) = configs.first() {
        if let Some(s) = c.subnet.as_deref().filter(|s| !s.is_empty()) {
            opts.subnet = Some(
                s.parse()
                    .map_err(|e| ApiError::bad_request(format!("invalid subnet {s:?}: {e}")))?,
            );
        }
        if let Some(g) = c.gateway.as_deref().filter(|g| !g.is_empty()) {
            opts.gateway = Some(
                g.parse()
                    .map_err(|e| ApiError::bad_request(format!("invalid gateway {g:?}: {e}")))?,
            );
        }
    }
    let st = state.clone();
    let info = blocking(move || {
        let info = open(&st)?.create(&body.name, &opts)?;
        publish(&st, "create", &info);
        Ok(info)
    })
    .await?;
    Ok(json_status(
        StatusCode::CREATED,
        &json!({"Id": info.id, "Warning": ""}),
    ))
}

pub async fn remove(state: &Arc<State>, name: &str) -> ApiResult {
    let st = state.clone();
    let name = name.to_string();
    blocking(move || {
        let nets = open(&st)?;
        let info = nets.inspect(&name)?;
        nets.remove(&name)?;
        publish(&st, "destroy", &info);
        Ok(())
    })
    .await?;
    no_content(StatusCode::NO_CONTENT)
}

pub async fn prune(state: &Arc<State>, query: &Query) -> ApiResult {
    let f = query.filters()?;
    f.only(&[])?;
    let st = state.clone();
    let removed = blocking(move || {
        let removed = open(&st)?.prune()?;
        for name in &removed {
            st.engine
                .events
                .publish(Event::new("network", "destroy", name).with("name", name));
        }
        Ok(removed)
    })
    .await?;
    json(&json!({ "NetworksDeleted": removed }))
}

/// docker's NetworkConnectRequest / NetworkDisconnectRequest.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectRequest {
    container: String,
    endpoint_config: Option<EndpointConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointConfig {
    aliases: Option<Vec<String>>,
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<EndpointIpam>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndpointIpam {
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
}

/// `POST /networks/{id}/connect` and `/disconnect`: a running container joins or leaves
/// the network (as `kiln network connect|disconnect`).
pub async fn connect(
    state: &Arc<State>,
    network: &str,
    req: Request<Incoming>,
    join: bool,
) -> ApiResult {
    let body: Option<ConnectRequest> = read_json(req).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("the request needs a JSON body"))?;
    if body.container.is_empty() {
        return Err(ApiError::bad_request("Container is required"));
    }
    let endpoint = body.endpoint_config.unwrap_or_default();
    let ip = match endpoint.ipam_config.map(|i| i.ipv4_address) {
        Some(ip) if !ip.is_empty() => Some(
            ip.parse()
                .map_err(|e| ApiError::bad_request(format!("invalid IPv4Address {ip:?}: {e}")))?,
        ),
        _ => None,
    };
    let st = state.clone();
    let network = network.to_string();
    blocking(move || {
        let root = &st.engine.root;
        let c = crate::run::state::Containers::open(root)?.find(&body.container)?;
        let info = open(&st)?.inspect(&network)?;
        if join {
            crate::run::net::connect_running(
                root,
                &c,
                &network,
                endpoint.aliases.unwrap_or_default(),
                ip,
            )?;
        } else {
            crate::run::net::disconnect(root, &c, &network)?;
        }
        st.engine.events.publish(
            Event::new(
                "network",
                if join { "connect" } else { "disconnect" },
                &info.id,
            )
            .with("name", &info.name)
            .with("container", c.id()),
        );
        Ok(())
    })
    .await?;
    no_content(StatusCode::OK)
}
