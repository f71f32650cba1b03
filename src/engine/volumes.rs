//! Volumes as docker's API and CLI show them (the volume store is [`crate::run::volume`]).

use serde_json::json;

use crate::run::volume::Volume;

/// docker's `volume inspect` object.
pub fn inspect_json(v: &Volume) -> serde_json::Value {
    json!({
        "CreatedAt": v.meta.created_at,
        "Driver": "local",
        "Labels": v.meta.labels,
        "Mountpoint": v.mountpoint,
        "Name": v.meta.name,
        "Options": null,
        "Scope": "local",
    })
}
