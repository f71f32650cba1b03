//! Image operations over the store with docker's semantics: names as docker shows them,
//! the `image inspect` document, removal (untag, then delete when no tag is left), pruning
//! and garbage collection of what no image needs any more.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{EngineError, Result};
use crate::cache::image::parse_rfc3339;
use crate::cache::snapshot::SnapshotInfo;
use crate::cache::store::{ImageStore, StoredImage};
use crate::cache::Digest;
use crate::reference::Reference;

/// `docker.io/library/app:latest` → (`app`, `latest`); no tag → `<none>`.
pub fn familiar(name: &str) -> (String, String) {
    match Reference::parse(name) {
        Ok(r) => (
            r.familiar_repository(),
            r.tag.clone().unwrap_or_else(|| "<none>".into()),
        ),
        Err(_) => (name.to_string(), "<none>".into()),
    }
}

/// `docker.io/library/app:latest` → `app:latest`.
pub fn familiar_tag(name: &str) -> String {
    let (r, t) = familiar(name);
    format!("{r}:{t}")
}

/// Creation time of an image, seconds since the epoch.
pub fn created_secs(img: &StoredImage) -> Option<i64> {
    img.config.created.as_deref().and_then(parse_rfc3339)
}

/// One stored image with its tags (normalized references).
#[derive(Debug, Clone)]
pub struct Listed {
    pub image: StoredImage,
    pub tags: Vec<String>,
}

/// Docker's ImageSummary for one image.
pub fn summary(l: &Listed) -> Value {
    let size = l.image.layers_size();
    json!({
        "Id": l.image.id().to_string(),
        "ParentId": "",
        "RepoTags": l.tags.iter().map(|t| familiar_tag(t)).collect::<Vec<_>>(),
        "RepoDigests": [],
        "Created": created_secs(&l.image).unwrap_or(0),
        "Size": size,
        "SharedSize": -1,
        "VirtualSize": size,
        "Labels": l.image.config.config.labels.clone().unwrap_or_default(),
        "Containers": -1,
    })
}

/// Every image of the store with its tags; unreadable images are skipped with a warning.
pub fn list(store: &ImageStore) -> Result<Vec<Listed>> {
    let tags = store.tags()?;
    let mut out = Vec::new();
    for manifest in store.images()?.into_keys() {
        match store.image(&manifest) {
            Ok(image) => out.push(Listed {
                tags: tags
                    .iter()
                    .filter(|(_, m)| **m == manifest)
                    .map(|(t, _)| t.clone())
                    .collect(),
                image,
            }),
            Err(e) => tracing::warn!("skipping image {manifest}: {e}"),
        }
    }
    Ok(out)
}

/// Docker's `image inspect` document for one image.
pub fn inspect_json(img: &StoredImage, tags: &[String], driver: &str) -> Value {
    let repo_tags: Vec<String> = tags.iter().map(|t| familiar_tag(t)).collect();
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

/// Tags the image `source` as `target` (docker's `tag`). Returns the normalized target.
pub fn tag(store: &ImageStore, source: &str, target: &str) -> Result<(StoredImage, Reference)> {
    let img = store.lookup(source)?;
    let target_ref = Reference::parse(target)
        .map_err(|e| EngineError::InvalidArgument(format!("invalid target {target:?}: {e}")))?
        .with_default_tag();
    if target_ref.digest.is_some() {
        return Err(EngineError::InvalidArgument(format!(
            "refusing to create a tag with a digest reference: {target}"
        )));
    }
    store.tag(&target_ref, &img.manifest_digest)?;
    Ok((img, target_ref))
}

/// What removing an image did, in order (docker's `Untagged:` / `Deleted:` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A tag went (`app:latest`, as docker shows it).
    Untagged(String),
    /// The image went (its ID).
    Deleted(Digest),
}

/// Image ID → a container that uses it (docker refuses to remove those without force and
/// never deletes them).
pub type InUse = std::collections::BTreeMap<Digest, String>;

/// Removes `name` like `docker rmi`: a tag name removes that tag; an ID removes all its tags
/// (only with `force` when there are several); the image is deleted when no tag is left and
/// no container uses it. Blobs stay until [`collect_garbage`].
pub fn remove(store: &ImageStore, name: &str, force: bool, in_use: &InUse) -> Result<Vec<Removal>> {
    let img = store.lookup(name)?;
    let user = in_use.get(img.id());
    if let (Some(c), false) = (user, force) {
        return Err(EngineError::Conflict(format!(
            "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
            c.chars().take(12).collect::<String>(),
            img.id().short()
        )));
    }
    let tags = store.tags_of(&img.manifest_digest)?;
    let by_tag = Reference::parse(name)
        .ok()
        .map(|r| r.with_default_tag().to_string())
        .filter(|n| tags.contains(n));
    let to_untag: Vec<String> = match by_tag {
        Some(t) => vec![t],
        None if tags.len() > 1 && !force => {
            return Err(EngineError::Conflict(format!(
                "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                img.id().short()
            )))
        }
        None => tags,
    };
    let mut done = Vec::new();
    for t in &to_untag {
        store.untag(t)?;
        done.push(Removal::Untagged(familiar_tag(t)));
    }
    if store.tags_of(&img.manifest_digest)?.is_empty() && user.is_none() {
        // Every manifest of this image ID goes (they share the config).
        for (m, id) in store.images()? {
            if &id == img.id() && store.tags_of(&m)?.is_empty() {
                store.forget(&m)?;
            }
        }
        done.push(Removal::Deleted(img.id().clone()));
    }
    Ok(done)
}

/// Removes dangling images (all unused ones with `all`; never those containers use), then
/// collects garbage. Returns what
/// was removed (docker's `untagged:` / `deleted:` list) and the bytes reclaimed.
/// `keep` says whether an image (by its listing) must stay (filters such as `label=`).
pub fn prune(
    store: &ImageStore,
    all: bool,
    in_use: &InUse,
    keep: impl Fn(&Listed) -> bool,
) -> Result<(Vec<Removal>, u64)> {
    let mut removed = Vec::new();
    for listed in list(store)? {
        if (!listed.tags.is_empty() && !all)
            || in_use.contains_key(listed.image.id())
            || keep(&listed)
        {
            continue;
        }
        for t in &listed.tags {
            store.untag(t)?;
            removed.push(Removal::Untagged(familiar_tag(t)));
        }
        store.forget(&listed.image.manifest_digest)?;
        let deleted = Removal::Deleted(listed.image.id().clone());
        if !removed.contains(&deleted) {
            removed.push(deleted);
        }
    }
    let reclaimed = collect_garbage(store, false)?;
    Ok((removed, reclaimed))
}

/// Removes blobs and snapshots no image needs any more. Returns bytes reclaimed (with
/// `dry_run`: the blob bytes that would be).
pub fn collect_garbage(store: &ImageStore, dry_run: bool) -> Result<u64> {
    let root = store.root();
    let roots: Vec<Digest> = store.images()?.into_keys().collect();
    // The build cache is not garbage: `kiln builder prune` removes it (as docker does).
    let cache = crate::cache::buildcache::BuildCache::open(root)
        .map_err(|e| EngineError::Build(e.to_string()))?;
    let report = crate::cache::gc::collect_with(&store.content, dry_run, || {
        let mut all = roots.clone();
        all.extend(cache.blobs()?);
        Ok::<_, crate::cache::buildcache::BuildCacheError>(all)
    })?;
    let mut reclaimed = report.reclaimed;
    // Snapshots whose chain no image, cache record or running build uses. (Layers built here
    // may exist only as snapshots: see cache::layer_blob.)
    let mut keep: BTreeSet<Digest> = cache
        .chains()
        .map_err(|e| EngineError::Build(e.to_string()))?
        .into_iter()
        .collect();
    for lease in crate::cache::gc::Leases::list(root)? {
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
        let snapshots = crate::cache::snapshot::open_default(store.root())?;
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

fn depth(infos: &[SnapshotInfo], id: &Digest) -> usize {
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

/// One entry of an image's history, newest first, with the size of its layer.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub created: Option<i64>,
    pub created_by: String,
    pub size: u64,
    pub comment: String,
}

/// The image's history, newest first (docker's order).
pub fn history(img: &StoredImage) -> Vec<HistoryEntry> {
    let mut layer_sizes = img.manifest.layers.iter().map(|l| l.size);
    let mut rows: Vec<HistoryEntry> = img
        .config
        .history
        .iter()
        .map(|h| HistoryEntry {
            size: if h.empty_layer {
                0
            } else {
                layer_sizes.next().unwrap_or(0)
            },
            created: h.created.as_deref().and_then(parse_rfc3339),
            created_by: h.created_by.clone().unwrap_or_default(),
            comment: h.comment.clone().unwrap_or_default(),
        })
        .collect();
    rows.reverse();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::image::ImageConfig;

    fn store_with_image() -> (tempfile::TempDir, ImageStore, StoredImage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        let img = store.commit_image(&config, Vec::new()).expect("commit");
        (dir, store, img)
    }

    #[test]
    fn remove_follows_docker_rmi() {
        let (_dir, store, img) = store_with_image();
        tag(&store, img.id().as_str(), "a").expect("tag a");
        tag(&store, "a", "b:1").expect("tag b");
        let none = InUse::new();
        // By ID with two names: a conflict.
        let e = remove(&store, img.id().short(), false, &none).unwrap_err();
        assert!(matches!(e, EngineError::Conflict(_)), "{e}");
        // By name: only that tag goes.
        assert_eq!(
            remove(&store, "b:1", false, &none).expect("rmi b:1"),
            vec![Removal::Untagged("b:1".into())]
        );
        // In use by a container: refused without force, never deleted.
        let used: InUse = [(img.id().clone(), "c0ffee".repeat(8))].into();
        let e = remove(&store, "a", false, &used).unwrap_err();
        assert!(
            e.to_string().contains("container c0ffeec0ffee is using"),
            "{e}"
        );
        assert_eq!(
            remove(&store, "a", true, &used).expect("forced"),
            vec![Removal::Untagged("a:latest".into())]
        );
        assert!(
            store.lookup(img.id().as_str()).is_ok(),
            "an image in use stays"
        );
        let (removed, _) = prune(&store, true, &used, |_| false).expect("prune");
        assert!(removed.is_empty(), "{removed:?}");
        let (removed, _) = prune(&store, true, &none, |_| false).expect("prune");
        assert_eq!(removed, vec![Removal::Deleted(img.id().clone())]);
        assert!(matches!(
            remove(&store, "a", false, &none),
            Err(EngineError::NotFound(_))
        ));
    }
}
