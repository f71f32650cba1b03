//! `kiln builder prune`: drop build cache entries, then collect the blobs only they kept.

use std::io::Write;

use clap::{Args, Subcommand};

use super::engine::Engine;
use super::format::human_size;
use super::Outcome;

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
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    crate::parser::mount::ram_in_bytes(s)
        .ok_or_else(|| anyhow::anyhow!("invalid size {s:?} (use e.g. 500MB or 2GB)"))
}

pub fn prune(args: &PruneArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let keep_bytes = args.keep_storage.as_deref().map(parse_size).transpose()?;
    let (removed, reclaimed) =
        crate::engine::build::prune_cache(&engine.store, args.all, keep_bytes)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Deleted build cache objects: {}", removed.len())?;
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
