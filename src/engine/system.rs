//! What the store holds, as docker's `GET /system/df` document: images (with how many
//! containers use each, and the layers they share), containers (their writable layers),
//! volumes (size and users) and the build cache. `kiln system df` renders it, in-process
//! or from a daemon.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::EngineError;
use crate::cache::store::ImageStore;
use crate::cache::Digest;
use crate::run::state::Containers;
use crate::run::volume::Volumes;

fn run_err(e: crate::run::RunError) -> EngineError {
    EngineError::Build(e.to_string())
}

/// Bytes a tree takes on disk (0 when it is missing or unreadable).
fn tree_size(path: &std::path::Path) -> u64 {
    crate::cache::snapshot::disk_usage(path).unwrap_or(0)
}

pub fn disk_usage(root: &std::path::Path, store: &ImageStore) -> Result<Value, EngineError> {
    let containers = Containers::open(root)
        .and_then(|c| c.list())
        .map_err(run_err)?;
    let mut users: BTreeMap<Digest, i64> = BTreeMap::new();
    let volume_refs = crate::run::volume::refs_of(&containers);
    let mut container_docs = Vec::new();
    for c in &containers {
        *users.entry(c.config.image_id.clone()).or_default() += 1;
        let Ok(s) = c.state() else { continue };
        let mut doc = super::containers::summary(c, &s);
        doc["SizeRw"] = json!(tree_size(&c.path("upper")));
        container_docs.push(doc);
    }

    let listed = super::images::list(store)?;
    let mut layers = BTreeSet::new();
    let mut layers_size = 0u64;
    let mut layer_users: BTreeMap<&Digest, usize> = BTreeMap::new();
    for l in &listed {
        let mine: BTreeSet<_> = l.image.manifest.layers.iter().map(|d| &d.digest).collect();
        for d in &l.image.manifest.layers {
            if layers.insert(d.digest.clone()) {
                layers_size += d.size;
            }
        }
        for d in mine {
            *layer_users.entry(d).or_default() += 1;
        }
    }
    let images: Vec<Value> = listed
        .iter()
        .map(|l| {
            let mut s = super::images::summary(l);
            let shared: u64 = l
                .image
                .manifest
                .layers
                .iter()
                .filter(|d| layer_users.get(&d.digest).is_some_and(|n| *n > 1))
                .map(|d| d.size)
                .sum();
            s["Containers"] = json!(users.get(l.image.id()).copied().unwrap_or(0));
            s["SharedSize"] = json!(shared);
            s
        })
        .collect();

    let volumes = Volumes::open(root)
        .and_then(|v| v.list())
        .map_err(run_err)?;
    let volume_docs: Vec<Value> = volumes
        .iter()
        .map(|v| {
            let mut doc = super::volumes::inspect_json(v);
            doc["UsageData"] = json!({
                "Size": tree_size(&v.mountpoint),
                "RefCount": volume_refs.get(&v.meta.name).copied().unwrap_or(0),
            });
            doc
        })
        .collect();

    let cache = crate::cache::buildcache::BuildCache::open(root)
        .and_then(|c| c.entries())
        .map_err(|e| EngineError::Build(e.to_string()))?;
    let build_cache: Vec<Value> = cache
        .iter()
        .map(|(key, r)| {
            json!({
                "ID": key.short(),
                "Parents": [],
                "Type": "regular",
                "Description": r.description,
                "InUse": false,
                "Shared": r.layer.as_ref().is_some_and(|l| layers.contains(&l.blob.digest)),
                "Size": r.layer.as_ref().map(|l| l.blob.size).unwrap_or(0),
                "CreatedAt": crate::cache::image::rfc3339(r.created),
                "LastUsedAt": crate::cache::image::rfc3339(r.last_used),
                "UsageCount": 1,
            })
        })
        .collect();
    Ok(json!({
        "LayersSize": layers_size,
        "Images": images,
        "Containers": container_docs,
        "Volumes": volume_docs,
        "BuildCache": build_cache,
    }))
}

/// docker's `system df` table rows (TYPE, TOTAL, ACTIVE, SIZE, RECLAIMABLE) from the
/// document, with docker's rules for what is active and reclaimable.
pub fn df_rows(doc: &Value) -> Vec<Vec<String>> {
    use crate::cli::format::human_size;
    let list = |k: &str| doc[k].as_array().cloned().unwrap_or_default();
    let num = |v: &Value| v.as_i64().unwrap_or(0).max(0) as u64;
    let with_percent = |part: u64, total: u64| match (part * 100).checked_div(total) {
        Some(percent) => format!("{} ({percent}%)", human_size(part)),
        None => human_size(part),
    };
    let images = list("Images");
    let total = num(&doc["LayersSize"]);
    let used: u64 = images
        .iter()
        .filter(|i| num(&i["Containers"]) > 0)
        .map(|i| num(&i["Size"]).saturating_sub(num(&i["SharedSize"])))
        .sum();
    let active_images = images.iter().filter(|i| num(&i["Containers"]) > 0).count();
    let containers = list("Containers");
    let size_rw: u64 = containers.iter().map(|c| num(&c["SizeRw"])).sum();
    let idle_rw: u64 = containers
        .iter()
        .filter(|c| c["State"] != "running")
        .map(|c| num(&c["SizeRw"]))
        .sum();
    let running = containers
        .iter()
        .filter(|c| c["State"] == "running")
        .count();
    let volumes = list("Volumes");
    let vol_size: u64 = volumes.iter().map(|v| num(&v["UsageData"]["Size"])).sum();
    let vol_idle: u64 = volumes
        .iter()
        .filter(|v| num(&v["UsageData"]["RefCount"]) == 0)
        .map(|v| num(&v["UsageData"]["Size"]))
        .sum();
    let vol_active = volumes
        .iter()
        .filter(|v| num(&v["UsageData"]["RefCount"]) > 0)
        .count();
    let cache = list("BuildCache");
    let unshared = |c: &&Value| c["Shared"] != true;
    let cache_size: u64 = cache.iter().filter(unshared).map(|c| num(&c["Size"])).sum();
    let cache_idle: u64 = cache
        .iter()
        .filter(unshared)
        .filter(|c| c["InUse"] != true)
        .map(|c| num(&c["Size"]))
        .sum();
    let cache_active = cache.iter().filter(|c| c["InUse"] == true).count();
    vec![
        vec![
            "Images".into(),
            images.len().to_string(),
            active_images.to_string(),
            human_size(total),
            with_percent(total.saturating_sub(used), total),
        ],
        vec![
            "Containers".into(),
            containers.len().to_string(),
            running.to_string(),
            human_size(size_rw),
            with_percent(idle_rw, size_rw),
        ],
        vec![
            "Local Volumes".into(),
            volumes.len().to_string(),
            vol_active.to_string(),
            human_size(vol_size),
            with_percent(vol_idle, vol_size),
        ],
        vec![
            "Build Cache".into(),
            cache.len().to_string(),
            cache_active.to_string(),
            human_size(cache_size),
            human_size(cache_idle),
        ],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_dockers_rules() {
        let doc = json!({
            "LayersSize": 1000,
            "Images": [
                {"Size": 600, "SharedSize": 100, "Containers": 1},
                {"Size": 500, "SharedSize": 100, "Containers": 0},
            ],
            "Containers": [
                {"State": "running", "SizeRw": 10},
                {"State": "exited", "SizeRw": 30},
            ],
            "Volumes": [
                {"UsageData": {"Size": 50, "RefCount": 1}},
                {"UsageData": {"Size": 150, "RefCount": 0}},
            ],
            "BuildCache": [
                {"Size": 70, "Shared": false, "InUse": false},
                {"Size": 99, "Shared": true, "InUse": false},
            ],
        });
        let rows = df_rows(&doc);
        assert_eq!(rows[0], ["Images", "2", "1", "1kB", "500B (50%)"]);
        assert_eq!(rows[1], ["Containers", "2", "1", "40B", "30B (75%)"]);
        assert_eq!(rows[2], ["Local Volumes", "2", "1", "200B", "150B (75%)"]);
        assert_eq!(rows[3], ["Build Cache", "2", "0", "70B", "70B"]);
    }
}
