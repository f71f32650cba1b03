//! `kiln system df`: what the store holds and what pruning would reclaim.

use std::collections::BTreeSet;
use std::io::Write;

use super::engine::Engine;
use super::format::{human_size, table};
use super::images::collect_garbage;
use super::Outcome;

/// TOTAL entries, ACTIVE = those whose layer an image uses, SIZE of their distinct blobs,
/// RECLAIMABLE = the part no image uses.
fn build_cache_row(
    engine: &Engine,
    image_layers: &BTreeSet<crate::cache::Digest>,
) -> anyhow::Result<Vec<String>> {
    let cache = crate::cache::buildcache::BuildCache::open(&engine.root)?;
    let entries = cache.entries()?;
    let mut seen = BTreeSet::new();
    let (mut size, mut reclaimable, mut active) = (0u64, 0u64, 0usize);
    for r in entries.values() {
        let Some(l) = &r.layer else { continue };
        let used = image_layers.contains(&l.blob.digest);
        active += usize::from(used);
        if seen.insert(l.blob.digest.clone()) {
            size += l.blob.size;
            if !used {
                reclaimable += l.blob.size;
            }
        }
    }
    Ok(vec![
        "Build Cache".into(),
        entries.len().to_string(),
        active.to_string(),
        human_size(size),
        human_size(reclaimable),
    ])
}

pub fn df(engine: &Engine) -> anyhow::Result<Outcome> {
    let store = &engine.store;
    let images = store.images()?;
    let tags = store.tags()?;
    let tagged: BTreeSet<_> = tags.values().cloned().collect();
    let mut layers = BTreeSet::new();
    let mut total = 0u64;
    let mut dangling_only = BTreeSet::new();
    for m in images.keys() {
        if let Ok(img) = store.image(m) {
            for l in &img.manifest.layers {
                if layers.insert(l.digest.clone()) {
                    total += l.size;
                }
                if !tagged.contains(m) {
                    dangling_only.insert(l.digest.clone());
                }
            }
        }
    }
    // What `image prune` would free: layers only dangling images use, plus unreferenced blobs.
    let mut used_by_tagged = BTreeSet::new();
    for m in images.keys().filter(|m| tagged.contains(*m)) {
        if let Ok(img) = store.image(m) {
            used_by_tagged.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
        }
    }
    let dangling_bytes: u64 = dangling_only
        .iter()
        .filter(|d| !used_by_tagged.contains(*d))
        .filter_map(|d| store.content.size(d).ok())
        .sum();
    let reclaimable_garbage = collect_garbage(engine, true)? + dangling_bytes;
    let active = images.keys().filter(|m| tagged.contains(*m)).count();
    let rows = vec![
        vec![
            "Images".into(),
            images.len().to_string(),
            active.to_string(),
            human_size(total),
            human_size(reclaimable_garbage),
        ],
        vec![
            "Containers".into(),
            "0".into(),
            "0".into(),
            "0B".into(),
            "0B".into(),
        ],
        vec![
            "Local Volumes".into(),
            "0".into(),
            "0".into(),
            "0B".into(),
            "0B".into(),
        ],
        build_cache_row(engine, &layers)?,
    ];
    std::io::stdout()
        .lock()
        .write_all(table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], &rows).as_bytes())?;
    Ok(Outcome::Success)
}
