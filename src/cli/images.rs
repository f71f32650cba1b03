//! Image commands with docker's output: `images`, `image inspect`, `history`, `tag`, `rmi`,
//! `image prune`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::engine::Engine;
use super::format::{human_duration, human_size, table};
use super::Outcome;
use crate::cache::image::{parse_rfc3339, ImageConfig};
use crate::cache::store::StoredImage;
use crate::cache::Digest;
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

/// `docker.io/library/app:latest` → (`app`, `latest`).
fn familiar(name: &str) -> (String, String) {
    match Reference::parse(name) {
        Ok(r) => (
            r.familiar_repository(),
            r.tag.clone().unwrap_or_else(|| "<none>".into()),
        ),
        Err(_) => (name.to_string(), "<none>".into()),
    }
}

fn created_secs(config: &ImageConfig) -> Option<i64> {
    config.created.as_deref().and_then(parse_rfc3339)
}

fn ago(config: &ImageConfig) -> String {
    match created_secs(config) {
        Some(t) => format!(
            "{} ago",
            human_duration(crate::cache::image::unix_now() - t)
        ),
        None => "N/A".into(),
    }
}

pub fn images(args: &ImagesArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let store = &engine.store;
    let tags = store.tags()?;
    let mut by_manifest: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for (name, manifest) in &tags {
        by_manifest
            .entry(manifest.clone())
            .or_default()
            .push(name.clone());
    }
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
    for (manifest, _config) in store.images()? {
        let img = match store.image(&manifest) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("skipping image {manifest}: {e}");
                continue;
            }
        };
        let id = if args.no_trunc {
            img.id().to_string()
        } else {
            img.id().short().to_string()
        };
        let created = created_secs(&img.config).unwrap_or(0);
        let names = by_manifest.get(&manifest).cloned().unwrap_or_default();
        let entries: Vec<(String, String)> = if names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            names.iter().map(|n| familiar(n)).collect()
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
                vec![
                    repo,
                    tag,
                    id.clone(),
                    ago(&img.config),
                    human_size(img.layers_size()),
                ],
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

/// Docker's `image inspect` document for one image.
pub(super) fn inspect_json(img: &StoredImage, tags: &[String], driver: &str) -> Value {
    let repo_tags: Vec<String> = tags
        .iter()
        .map(|t| {
            let (r, tag) = familiar(t);
            format!("{r}:{tag}")
        })
        .collect();
    let c = &img.config.config;
    let mut config = json!({
        "Hostname": "", "Domainname": "", "User": c.user.clone().unwrap_or_default(),
        "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
        "Tty": false, "OpenStdin": false, "StdinOnce": false,
        "Env": c.env, "Cmd": c.cmd, "Image": "", "Volumes": c.volumes,
        "WorkingDir": c.working_dir.clone().unwrap_or_default(), "Entrypoint": c.entrypoint,
        "OnBuild": c.on_build, "Labels": c.labels,
    });
    if let Some(map) = config.as_object_mut() {
        if let Some(p) = &c.exposed_ports {
            map.insert("ExposedPorts".into(), json!(p));
        }
        if let Some(s) = &c.stop_signal {
            map.insert("StopSignal".into(), json!(s));
        }
        if let Some(h) = &c.healthcheck {
            map.insert("Healthcheck".into(), json!(h));
        }
        if let Some(s) = &c.shell {
            map.insert("Shell".into(), json!(s));
        }
    }
    json!({
        "Id": img.id().to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": img.config.created.clone().unwrap_or_default(),
        "DockerVersion": "",
        "Author": img.config.author.clone().unwrap_or_default(),
        "Config": config,
        "Architecture": img.config.architecture,
        "Variant": img.config.variant,
        "Os": img.config.os,
        "Size": img.layers_size(),
        "GraphDriver": {"Data": null, "Name": driver},
        "RootFS": {"Type": "layers", "Layers": img.config.rootfs.diff_ids},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "Descriptor": {"mediaType": img.manifest.media_type, "digest": img.manifest_digest.to_string(), "size": img.manifest_size},
    })
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
    let mut layer_sizes = img.manifest.layers.iter().map(|l| l.size);
    let mut rows = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layer_sizes.next().unwrap_or(0)
        };
        let created = h
            .created
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|t| {
                format!(
                    "{} ago",
                    human_duration(crate::cache::image::unix_now() - t)
                )
            })
            .unwrap_or_else(|| "N/A".into());
        let by = h.created_by.clone().unwrap_or_default();
        let by = if args.no_trunc || by.chars().count() <= 45 {
            by
        } else {
            format!("{}…", by.chars().take(44).collect::<String>())
        };
        rows.push(vec![
            "<missing>".to_string(),
            created,
            by,
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ]);
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first[0] = if args.no_trunc {
            img.id().to_string()
        } else {
            img.id().short().to_string()
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
    let img = engine.store.lookup(&args.source)?;
    let target = Reference::parse(&args.target)
        .map_err(|e| anyhow::anyhow!("invalid target {:?}: {e}", args.target))?;
    if target.digest.is_some() {
        bail!(
            "refusing to create a tag with a digest reference: {}",
            args.target
        );
    }
    engine.store.tag(&target, &img.manifest_digest)?;
    Ok(Outcome::Success)
}

pub fn rmi(args: &RmiArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let store = &engine.store;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    let in_use = crate::run::state::Containers::open(&engine.root)?.images_in_use()?;
    for name in &args.images {
        let img = match store.lookup(name) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
                continue;
            }
        };
        let tags = store.tags_of(&img.manifest_digest)?;
        let user = in_use.get(img.id());
        if let (Some(c), false) = (user, args.force) {
            // docker refuses while a container (even a stopped one) uses the image.
            eprintln!(
                "Error response from daemon: conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                &c[..12],
                img.id().short()
            );
            failed = true;
            continue;
        }
        let by_tag = Reference::parse(name)
            .ok()
            .map(|r| r.with_default_tag().to_string())
            .filter(|n| tags.contains(n));
        let to_untag: Vec<String> = match by_tag {
            Some(t) => vec![t],
            None if tags.len() > 1 && !args.force => {
                eprintln!(
                    "Error response from daemon: conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    img.id().short()
                );
                failed = true;
                continue;
            }
            None => tags.clone(),
        };
        for t in &to_untag {
            store.untag(t)?;
            let (r, tag) = familiar(t);
            writeln!(out, "Untagged: {r}:{tag}")?;
        }
        if store.tags_of(&img.manifest_digest)?.is_empty() && user.is_none() {
            // Every manifest of this image ID goes (they share the config).
            for (m, id) in store.images()? {
                if &id == img.id() && store.tags_of(&m)?.is_empty() {
                    store.forget(&m)?;
                }
            }
            writeln!(out, "Deleted: {}", img.id())?;
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

/// Removes blobs and snapshots no image needs any more. Returns bytes reclaimed.
pub fn collect_garbage(engine: &Engine, dry_run: bool) -> anyhow::Result<u64> {
    let store = &engine.store;
    let roots: Vec<Digest> = store.images()?.into_keys().collect();
    // The build cache is not garbage: `kiln builder prune` removes it (as docker does).
    let cache = crate::cache::buildcache::BuildCache::open(&engine.root)?;
    let report = crate::cache::gc::collect_with(&store.content, dry_run, || {
        let mut all = roots.clone();
        all.extend(cache.blobs()?);
        Ok::<_, crate::cache::buildcache::BuildCacheError>(all)
    })
    .context("garbage collection")?;
    let mut reclaimed = report.reclaimed;
    // Snapshots whose chain no image, cache record or running build uses. (Layers built here
    // may exist only as snapshots: see cache::layer_blob.)
    let mut keep: std::collections::BTreeSet<Digest> = cache.chains()?.into_iter().collect();
    for lease in crate::cache::gc::Leases::list(&engine.root)? {
        if lease.is_live() {
            keep.extend(lease.digests.iter().cloned());
        }
    }
    for m in &roots {
        if let Ok(img) = store.image(m) {
            let ids = &img.config.rootfs.diff_ids;
            for n in 1..=ids.len() {
                if let Some(c) = crate::cache::snapshot::chain_id(&ids[..n]) {
                    keep.insert(c);
                }
            }
        }
    }
    if !dry_run {
        let snapshots = engine.snapshotter()?;
        let infos = snapshots.list()?;
        // Children before parents, so a parent is free when its turn comes.
        let mut ordered: Vec<_> = infos.iter().map(|i| (depth(&infos, &i.id), i)).collect();
        ordered.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
        for (_, info) in ordered {
            if !keep.contains(&info.id) && snapshots.remove(&info.id).is_ok() {
                reclaimed += info.size;
            }
        }
    }
    Ok(reclaimed)
}

fn depth(infos: &[crate::cache::snapshot::SnapshotInfo], id: &Digest) -> usize {
    let mut d = 0;
    let mut cur = Some(id.clone());
    while let Some(c) = cur {
        cur = infos
            .iter()
            .find(|i| i.id == c)
            .and_then(|i| i.parent.clone());
        d += 1;
        if d > 10_000 {
            break;
        }
    }
    d
}

pub fn prune(args: &PruneArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    if !args.force {
        let warning = if args.all {
            "WARNING! This will remove all images without at least one container associated to them."
        } else {
            "WARNING! This will remove all dangling images."
        };
        eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        // End of input (no terminal, nothing piped) means "no".
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!();
            return Ok(Outcome::Success);
        }
    }
    let store = &engine.store;
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    let tags = store.tags()?;
    let in_use = crate::run::state::Containers::open(&engine.root)?.images_in_use()?;
    for (manifest, id) in store.images()? {
        if in_use.contains_key(&id) {
            continue;
        }
        let tagged: Vec<&String> = tags
            .iter()
            .filter(|(_, m)| **m == manifest)
            .map(|(t, _)| t)
            .collect();
        if !tagged.is_empty() && !args.all {
            continue;
        }
        for t in tagged {
            store.untag(t)?;
            let (r, tag) = familiar(t);
            lines.push(format!("untagged: {r}:{tag}"));
        }
        store.forget(&manifest)?;
        lines.push(format!("deleted: {id}"));
    }
    lines.dedup();
    let reclaimed = collect_garbage(engine, false)?;
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
