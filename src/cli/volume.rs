//! `kiln volume create|ls|inspect|rm|prune`, with docker's output.

use std::io::Write;

use clap::{Args, Subcommand};

use super::container_backend::VolumeBackend;
use super::format::table;
use super::Outcome;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create(CreateArgs),
    /// List volumes.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes.
    Inspect(NamesArgs),
    /// Remove one or more volumes.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove unused volumes (anonymous ones; all with -a).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The volume name (random when omitted).
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display volume names.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Do not fail on volumes that do not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

pub fn dispatch(cmd: &VolumeCommand, volumes: &dyn VolumeBackend) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    match cmd {
        VolumeCommand::Create(a) => {
            let name = volumes.create_volume(a.name.as_deref())?;
            writeln!(out, "{name}")?;
        }
        VolumeCommand::Ls(a) => {
            let list = volumes.list_volumes()?;
            if a.quiet {
                for v in list {
                    writeln!(out, "{v}")?;
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|v| vec!["local".to_string(), v])
                    .collect();
                write!(out, "{}", table(&["DRIVER", "VOLUME NAME"], &rows))?;
            }
        }
        VolumeCommand::Inspect(a) => {
            let mut docs = Vec::new();
            let mut failed = false;
            for n in &a.names {
                match volumes.inspect_volume(n) {
                    Ok(v) => docs.push(v),
                    Err(e) => {
                        eprintln!("kiln: error: {e:#}");
                        failed = true;
                    }
                }
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&docs)?)?;
            if failed {
                return Ok(Outcome::Problems);
            }
        }
        VolumeCommand::Rm(a) => {
            let mut failed = false;
            for n in &a.names {
                match volumes.remove_volume(n, a.force) {
                    Ok(()) => writeln!(out, "{n}")?,
                    Err(e) => {
                        eprintln!("kiln: error: {e:#}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(Outcome::Problems);
            }
        }
        VolumeCommand::Prune(a) => {
            let removed = volumes.prune_volumes(a.all)?;
            if !removed.is_empty() {
                writeln!(out, "Deleted Volumes:")?;
                for n in &removed {
                    writeln!(out, "{n}")?;
                }
                writeln!(out)?;
            }
            writeln!(out, "Total reclaimed space: 0B")?;
        }
    }
    Ok(Outcome::Success)
}
