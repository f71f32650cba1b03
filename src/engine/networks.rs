//! Networks as docker's API and CLI show them (the network library is
//! [`crate::run::network`]).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::run::network::NetworkInfo;

/// docker's `network inspect` object.
pub fn inspect_json(n: &NetworkInfo) -> Value {
    let containers: serde_json::Map<String, Value> = n
        .endpoints
        .values()
        .map(|e| {
            let endpoint_id: String = Sha256::digest(format!("{}:{}", n.id, e.container_id))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let addr = match n.subnet {
                Some(s) if !e.ip.is_unspecified() => format!("{}/{}", e.ip, s.prefix_len()),
                _ => String::new(),
            };
            (
                e.container_id.clone(),
                json!({
                    "Name": e.name,
                    "EndpointID": endpoint_id,
                    "MacAddress": e.mac,
                    "IPv4Address": addr,
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    let config: Vec<Value> = match (n.subnet, n.gateway) {
        (Some(s), Some(g)) => vec![json!({"Subnet": s.to_string(), "Gateway": g.to_string()})],
        (Some(s), None) => vec![json!({"Subnet": s.to_string()})],
        _ => vec![],
    };
    let mut options = serde_json::Map::new();
    if let Some(b) = &n.bridge {
        options.insert("com.docker.network.bridge.name".into(), json!(b));
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": n.scope(),
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": n.labels,
    })
}
