//! Image commands with docker's output: `images`, `image inspect`, `history`, `tag`, `rmi`,
//! `image prune`.

use std::io::{BufRead, Write};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::engine::Engine;
use super::format::{human_duration, human_size, table};
use super::Outcome;
use crate::cache::image::{parse_rfc3339, ImageConfig};
use crate::engine::images::{familiar, inspect_json, Removal};
use crate::engine::EngineError;
use crate::reference::Reference;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show all images (kiln keeps no intermediate images; same as the default).
    #[arg(short, long)]
    pub all: bool,
    /// Only images of this repository (and tag).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub filter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images.
    #[command(name = "ls", visible_alias = "list")]
    Ls(ImagesArgs),
    /// Display detailed information on one or more images.
    Inspect(InspectArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.
    Tag(TagArgs),
    /// Remove one or more images.
    #[command(name = "rm")]
    Rm(RmiArgs),
    /// Remove unused images.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    pub source: String,
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Force removal of the image.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones.
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

fn created_secs(config: &ImageConfig) -> Option<i64> {
    config.created.as_deref().and_then(parse_rfc3339)
}

/// One image as `kiln images` lists it (from the store, or from a daemon's `/images/json`).
pub struct ImageRow {
    /// Full ID (`sha256:…`).
    pub id: String,
    pub created: Option<i64>,
    pub size: u64,
    /// Its names (normalized or familiar references).
    pub tags: Vec<String>,
}

pub fn images(args: &ImagesArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let rows = crate::engine::images::list(&engine.store)?
        .into_iter()
        .map(|l| ImageRow {
            id: l.image.id().to_string(),
            created: created_secs(&l.image.config),
            size: l.image.layers_size(),
            tags: l.tags,
        })
        .collect();
    print_images(args, rows)
}

/// Prints `kiln images` (docker's table, or IDs with `-q`).
pub fn print_images(args: &ImagesArgs, images: Vec<ImageRow>) -> anyhow::Result<Outcome> {
    let wanted = args.filter.as_deref().map(|f| {
        let r = Reference::parse(f).ok();
        (
            r.as_ref()
                .map(|r| r.repository())
                .unwrap_or_else(|| f.to_string()),
            r.and_then(|r| r.tag),
        )
    });
    let mut rows: Vec<(i64, Vec<String>)> = Vec::new();
    let mut seen_ids = std::collections::BTreeSet::new();
    let now = crate::cache::image::unix_now();
    for img in images {
        let id = if args.no_trunc {
            img.id.clone()
        } else {
            img.id
                .strip_prefix("sha256:")
                .unwrap_or(&img.id)
                .chars()
                .take(12)
                .collect()
        };
        let created = img.created.unwrap_or(0);
        let ago = match img.created {
            Some(t) => format!("{} ago", human_duration(now - t)),
            None => "N/A".into(),
        };
        let entries: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags.iter().map(|n| familiar(n)).collect()
        };
        for (repo, tag) in entries {
            if let Some((want_repo, want_tag)) = &wanted {
                let full = Reference::parse(&repo)
                    .map(|r| r.repository())
                    .unwrap_or(repo.clone());
                if &full != want_repo || want_tag.as_ref().is_some_and(|t| t != &tag) {
                    continue;
                }
            }
            if args.quiet {
                if seen_ids.insert(id.clone()) {
                    rows.push((created, vec![id.clone()]));
                }
                continue;
            }
            rows.push((
                created,
                vec![repo, tag, id.clone(), ago.clone(), human_size(img.size)],
            ));
        }
    }
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r.1).collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in rows {
            writeln!(out, "{}", r[0])?;
        }
    } else {
        out.write_all(
            table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows).as_bytes(),
        )?;
    }
    Ok(Outcome::Success)
}

pub fn inspect(args: &InspectArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let mut docs = Vec::new();
    let mut missing = Vec::new();
    for name in &args.images {
        match engine.store.lookup(name) {
            Ok(img) => {
                let tags = engine.store.tags_of(&img.manifest_digest)?;
                docs.push(inspect_json(&img, &tags, "overlayfs"));
            }
            Err(e) => missing.push(e.to_string()),
        }
    }
    let text = serde_json::to_string_pretty(&docs)?;
    println!("{text}");
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("Error: {m}");
        }
        return Ok(Outcome::Problems);
    }
    Ok(Outcome::Success)
}

pub fn history(args: &HistoryArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let img = engine.store.lookup(&args.image)?;
    print_history(
        args,
        img.id().as_str(),
        crate::engine::images::history(&img),
    )
}

/// Prints `kiln history` for image `id` (entries newest first).
pub fn print_history(
    args: &HistoryArgs,
    id: &str,
    entries: Vec<crate::engine::images::HistoryEntry>,
) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    for h in entries {
        let created = h
            .created
            .map(|t| {
                format!(
                    "{} ago",
                    human_duration(crate::cache::image::unix_now() - t)
                )
            })
            .unwrap_or_else(|| "N/A".into());
        let by = h.created_by;
        let by = if args.no_trunc || by.chars().count() <= 45 {
            by
        } else {
            format!("{}…", by.chars().take(44).collect::<String>())
        };
        rows.push(vec![
            "<missing>".to_string(),
            created,
            by,
            human_size(h.size),
            h.comment,
        ]);
    }
    if let Some(first) = rows.first_mut() {
        first[0] = if args.no_trunc {
            id.to_string()
        } else {
            id.strip_prefix("sha256:")
                .unwrap_or(id)
                .chars()
                .take(12)
                .collect()
        };
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in rows {
            writeln!(out, "{}", r[0])?;
        }
    } else {
        out.write_all(
            table(
                &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    Ok(Outcome::Success)
}

pub fn tag(args: &TagArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    crate::engine::images::tag(&engine.store, &args.source, &args.target)?;
    Ok(Outcome::Success)
}

pub fn rmi(args: &RmiArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let in_use = images_in_use(engine)?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for name in &args.images {
        match crate::engine::images::remove(&engine.store, name, args.force, &in_use) {
            Ok(removed) => {
                for r in removed {
                    match r {
                        Removal::Untagged(t) => writeln!(out, "Untagged: {t}")?,
                        Removal::Deleted(id) => writeln!(out, "Deleted: {id}")?,
                    }
                }
            }
            Err(e @ (EngineError::NotFound(_) | EngineError::Conflict(_))) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(out);
    collect_garbage(engine, false)?;
    Ok(if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

/// Images containers (running or not) use: image ID → a container's ID.
pub fn images_in_use(engine: &Engine) -> anyhow::Result<crate::engine::images::InUse> {
    Ok(crate::run::state::Containers::open(&engine.root)?.images_in_use()?)
}

/// Removes blobs and snapshots no image needs any more. Returns bytes reclaimed.
pub fn collect_garbage(engine: &Engine, dry_run: bool) -> anyhow::Result<u64> {
    crate::engine::images::collect_garbage(&engine.store, dry_run).context("garbage collection")
}

/// docker's prompt before a prune; true when the answer is yes.
pub fn confirm_prune(all: bool) -> bool {
    let warning = if all {
        "WARNING! This will remove all images without at least one container associated to them."
    } else {
        "WARNING! This will remove all dangling images."
    };
    eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    // End of input (no terminal, nothing piped) means "no".
    let _ = std::io::stdin().lock().read_line(&mut answer);
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        eprintln!();
    }
    yes
}

pub fn prune(args: &PruneArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    if !args.force && !confirm_prune(args.all) {
        return Ok(Outcome::Success);
    }
    let (removed, reclaimed) =
        crate::engine::images::prune(&engine.store, args.all, &images_in_use(engine)?, |_| false)?;
    let lines: Vec<String> = removed
        .into_iter()
        .map(|r| match r {
            Removal::Untagged(t) => format!("untagged: {t}"),
            Removal::Deleted(id) => format!("deleted: {id}"),
        })
        .collect();
    print_prune(&lines, reclaimed)
}

/// Prints `image prune`'s report.
pub fn print_prune(lines: &[String], reclaimed: u64) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    if !lines.is_empty() {
        writeln!(out, "Deleted Images:")?;
        for l in lines {
            writeln!(out, "{l}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "Total reclaimed space: {}", human_size(reclaimed))?;
    Ok(Outcome::Success)
}
