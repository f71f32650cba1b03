//! `kiln builder prune`: drop build cache entries, then collect the blobs only they kept.

use std::collections::BTreeSet;
use std::io::Write;

use clap::{Args, Subcommand};

use super::engine::Engine;
use super::format::human_size;
use super::images::collect_garbage;
use super::Outcome;
use crate::cache::buildcache::BuildCache;

#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// Remove build cache.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all build cache, not just what no image uses.
    #[arg(short, long)]
    pub all: bool,
    /// Keep the most recently used cache up to this size (e.g. 500MB, 2GB).
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
    /// Do not prompt for confirmation (kiln never prompts here; accepted for docker compatibility).
    #[arg(short, long)]
    pub force: bool,
}

/// `500MB`, `2GB`, `1.5g`, `1024` (bytes).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    crate::parser::mount::ram_in_bytes(s)
        .ok_or_else(|| anyhow::anyhow!("invalid size {s:?} (use e.g. 500MB or 2GB)"))
}

pub fn prune(args: &PruneArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let cache = BuildCache::open(&engine.root)?;
    let keep_bytes = args.keep_storage.as_deref().map(parse_size).transpose()?;
    // Layers images still use are not reclaimable, whatever the cache says.
    let mut image_blobs = BTreeSet::new();
    for m in engine.store.images()?.keys() {
        if let Ok(img) = engine.store.image(m) {
            image_blobs.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
        }
    }
    let removed = cache.update(|entries| {
        let mut by_use: Vec<_> = entries
            .iter()
            .map(|(k, r)| {
                (
                    r.last_used,
                    k.clone(),
                    r.layer.as_ref().map(|l| l.blob.size).unwrap_or(0),
                )
            })
            .collect();
        by_use.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut kept_bytes = 0u64;
        let mut remove = Vec::new();
        for (_, key, size) in by_use {
            let in_image = entries
                .get(&key)
                .and_then(|r| r.layer.as_ref())
                .is_some_and(|l| image_blobs.contains(&l.blob.digest));
            let keep = match keep_bytes {
                Some(limit) => {
                    kept_bytes += size;
                    kept_bytes <= limit
                }
                None => !args.all && in_image,
            };
            if !keep {
                remove.push(key);
            }
        }
        for k in &remove {
            entries.remove(k);
        }
        remove.len()
    })?;
    let mut reclaimed = collect_garbage(engine, false)?;
    // RUN --mount=type=cache directories are build cache too; --all drops them.
    if args.all {
        let mounts = engine.root.join("cache").join("mounts");
        if mounts.exists() {
            reclaimed += walkdir::WalkDir::new(&mounts)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum::<u64>();
            std::fs::remove_dir_all(&mounts)
                .map_err(|e| anyhow::anyhow!("removing {}: {e}", mounts.display()))?;
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "Deleted build cache objects: {removed}")?;
    writeln!(out, "Total:\t{}", human_size(reclaimed))?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("2GB").unwrap(), 2 << 30);
        assert!(super::parse_size("lots").is_err());
    }
}
