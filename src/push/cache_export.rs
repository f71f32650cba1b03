//! Build cache through a registry or a directory (`--cache-to`, `--cache-from`), so a fleet
//! of CI runners shares cache hits.
//!
//! What travels is the build cache index's records (step cache key → layer, see
//! [`crate::cache::buildcache`]) plus the layer blobs they name, packed as an ordinary OCI
//! image manifest so any registry stores it:
//!
//! ```text
//! manifest (application/vnd.oci.image.manifest.v1+json)
//!   config: application/vnd.kiln.buildcache.config.v1+json  {"records":{key: record, …}}
//!   layers: the records' layer blobs, as stored (uncompressed tars)
//! ```
//!
//! Export takes the records the build hit or wrote (`mode=max`: all of them; `mode=min`,
//! the default: those whose layer is in the final image, plus metadata-only steps). Import
//! downloads the document and every layer blob the store lacks (verified, like pull), then
//! adds the records the local index does not have, before the build starts: the executor
//! sees ordinary cache hits. The final image's layer chain is unpacked into snapshots, so a
//! step that misses after imported hits has its parent. A directory (`type=local`) holds the same manifest as an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::client::{runtime, Registry, RegistryError, RegistrySettings, Result};
use super::progress::Progress;
use crate::cache::buildcache::{BuildCache, CacheRecord};
use crate::cache::gc::{Lease, Leases};
use crate::cache::image::{media, to_canonical_json, Descriptor, Index, Manifest};
use crate::cache::lock::write_atomic;
use crate::cache::store::ImageStore;
use crate::cache::Digest;
use crate::reference::Reference;

/// Media type of the cache document (the manifest's config).
pub const CACHE_CONFIG: &str = "application/vnd.kiln.buildcache.config.v1+json";

/// Which records `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Steps whose layers are in the final image (and metadata-only steps).
    Min,
    /// Every step the build ran or hit, intermediate stages included.
    Max,
}

/// Where cache goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    Registry(Reference),
    Local(PathBuf),
}

/// `--cache-to` / `--cache-from` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub location: CacheLocation,
    pub mode: CacheMode,
}

impl CacheSpec {
    /// Parses `type=registry,ref=R[,mode=min|max]`, `type=local,dest=DIR|src=DIR`, or a bare
    /// reference (a registry). `export` says whether it is `--cache-to` (local needs `dest`)
    /// or `--cache-from` (local needs `src`).
    pub fn parse(spec: &str, export: bool) -> Result<CacheSpec> {
        let bad = |why: &str| RegistryError::Invalid(format!("invalid cache spec {spec:?}: {why}"));
        if !spec.contains('=') {
            return Ok(CacheSpec {
                location: CacheLocation::Registry(super::client::parse_reference(spec)?),
                mode: CacheMode::Min,
            });
        }
        let mut kind = None;
        let mut fields = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value pairs"))?;
            if k == "type" {
                kind = Some(v.to_string());
            } else {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        let mode = match fields.get("mode").map(String::as_str) {
            None | Some("min") => CacheMode::Min,
            Some("max") => CacheMode::Max,
            Some(_) => return Err(bad("mode must be min or max")),
        };
        let location = match kind.as_deref().unwrap_or("registry") {
            "registry" => {
                let r = fields
                    .get("ref")
                    .ok_or_else(|| bad("type=registry needs ref=NAME"))?;
                CacheLocation::Registry(super::client::parse_reference(r)?)
            }
            "local" => {
                let key = if export { "dest" } else { "src" };
                let d = fields
                    .get(key)
                    .ok_or_else(|| bad(&format!("type=local needs {key}=DIR")))?;
                CacheLocation::Local(PathBuf::from(d))
            }
            other => {
                return Err(bad(&format!(
                    "unsupported type {other:?} (registry, local)"
                )))
            }
        };
        Ok(CacheSpec { location, mode })
    }
}

/// The cache document.
#[derive(Debug, Serialize, Deserialize)]
struct CacheDocument {
    records: BTreeMap<Digest, CacheRecord>,
    /// Layer chains (diff IDs, base first) to unpack into snapshots on import: the final
    /// image's, so a step that misses after imported hits finds its parent snapshot.
    #[serde(default)]
    chains: Vec<Vec<Digest>>,
}

/// What cache export and import talk to.
pub struct CacheEnv<'a> {
    pub settings: &'a RegistrySettings,
    pub progress: &'a dyn Progress,
    /// Where layers built here live (export) and where imported chains are unpacked.
    pub snapshots: Option<&'a dyn crate::cache::snapshot::Snapshotter>,
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTransfer {
    pub records: usize,
    pub layers: usize,
}

/// Exports the records of `keys` (the steps of a build, see [`BuildCache::touched`]) and
/// their layers. `final_diff_ids` are the final image's layers (for `mode=min`).
pub fn export_cache(
    store: &ImageStore,
    cache: &BuildCache,
    keys: &[Digest],
    final_diff_ids: &[Digest],
    spec: &CacheSpec,
    env: &CacheEnv<'_>,
) -> Result<CacheTransfer> {
    let CacheEnv {
        settings,
        progress,
        snapshots,
    } = *env;
    let lease = Leases::acquire(store.root(), "cache export")?;
    let entries = cache.entries()?;
    let in_image: BTreeSet<&Digest> = final_diff_ids.iter().collect();
    let mut records = BTreeMap::new();
    let mut layers: Vec<Descriptor> = Vec::new();
    for key in keys {
        let Some(record) = entries.get(key) else {
            continue;
        };
        if let Some(l) = &record.layer {
            if spec.mode == CacheMode::Min && !in_image.contains(&l.diff_id) {
                continue;
            }
            if !lease.protect_existing(&store.content, &l.blob.digest)? {
                // Layers built here may exist only as snapshots: write their blob now.
                match (&l.chain, snapshots) {
                    (Some(chain), Some(snaps)) if l.blob.digest == l.diff_id => {
                        crate::cache::layer_blob::ensure_layer(
                            &store.content,
                            snaps,
                            &lease,
                            chain,
                            &l.diff_id,
                        )?;
                    }
                    _ => {
                        tracing::warn!(key = %key, blob = %l.blob.digest, "cache record's layer is gone; not exported");
                        continue;
                    }
                }
            }
            if !layers.iter().any(|d| d.digest == l.blob.digest) {
                layers.push(l.blob.clone());
            }
        }
        records.insert(key.clone(), record.clone());
    }
    let record_count = records.len();
    let doc = to_canonical_json(&CacheDocument {
        records,
        chains: vec![final_diff_ids.to_vec()],
    });
    let (config_digest, config_size) = lease.put(&store.content, &doc)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        config: Descriptor {
            media_type: CACHE_CONFIG.to_string(),
            digest: config_digest,
            size: config_size,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: layers.clone(),
        annotations: BTreeMap::new(),
    };
    let bytes = to_canonical_json(&manifest);
    let (manifest_digest, manifest_size) = lease.put(&store.content, &bytes)?;
    let transfer = CacheTransfer {
        records: record_count,
        layers: layers.len(),
    };
    let mut blobs = layers;
    blobs.push(manifest.config.clone());
    match &spec.location {
        CacheLocation::Registry(target) => {
            let rt = runtime()?;
            rt.block_on(async {
                let registry = Registry::connect(&target.domain, settings).await?;
                super::push::upload_all(&registry, store, target, &blobs, progress).await?;
                super::push::put_manifest(
                    &registry,
                    target,
                    &bytes,
                    media::OCI_MANIFEST,
                    &target.to_string(),
                )
                .await
            })?;
        }
        CacheLocation::Local(dir) => {
            let desc = Descriptor {
                media_type: media::OCI_MANIFEST.to_string(),
                digest: manifest_digest.clone(),
                size: manifest_size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            blobs.push(desc.clone());
            write_layout(store, dir, &blobs, desc)?;
        }
    }
    drop(lease);
    Ok(transfer)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes an OCI image layout holding `blobs`, with `index.json` naming `manifest` (written
/// last, atomically, so a reader never sees an index naming missing blobs).
fn write_layout(
    store: &ImageStore,
    dir: &Path,
    blobs: &[Descriptor],
    manifest: Descriptor,
) -> Result<()> {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(io("create directory", &blob_dir))?;
    for b in blobs {
        let dest = blob_dir.join(b.digest.hex());
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == b.size) {
            continue;
        }
        let tmp = blob_dir.join(format!(".{}.tmp-{}", b.digest.hex(), std::process::id()));
        std::fs::copy(store.content.blob_path(&b.digest), &tmp)
            .map_err(io("copy blob to", &tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
    }
    write_atomic(&dir.join("oci-layout"), crate::cache::export::OCI_LAYOUT)
        .map_err(io("write", dir))?;
    let mut desc = manifest;
    desc.annotations
        .insert("org.opencontainers.image.ref.name".into(), "latest".into());
    let index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.to_string()),
        manifests: vec![desc],
        annotations: BTreeMap::new(),
    };
    let path = dir.join("index.json");
    write_atomic(&path, &to_canonical_json(&index)).map_err(io("write", &path))
}

/// Imports cache (see the module doc). A registry reference or directory that holds no cache
/// yet is not an error: it gives zero records (the first build of a fleet).
pub fn import_cache(
    store: &ImageStore,
    cache: &BuildCache,
    spec: &CacheSpec,
    env: &CacheEnv<'_>,
) -> Result<CacheTransfer> {
    let CacheEnv {
        settings,
        progress,
        snapshots,
    } = *env;
    let lease = Leases::acquire(store.root(), "cache import")?;
    let doc = match &spec.location {
        CacheLocation::Registry(source) => {
            let rt = runtime()?;
            rt.block_on(import_registry(store, &lease, source, settings, progress))?
        }
        CacheLocation::Local(dir) => import_local(store, &lease, dir)?,
    };
    let Some(CacheDocument { records, chains }) = doc else {
        return Ok(CacheTransfer::default());
    };
    let layers: BTreeSet<&Digest> = records
        .values()
        .filter_map(|r| r.layer.as_ref().map(|l| &l.blob.digest))
        .collect();
    let transfer = CacheTransfer {
        records: records.len(),
        layers: layers.len(),
    };
    let blob_of: BTreeMap<Digest, Digest> = records
        .values()
        .filter_map(|r| r.layer.as_ref())
        .map(|l| (l.diff_id.clone(), l.blob.digest.clone()))
        .collect();
    cache.update(|entries| {
        for (k, r) in records {
            entries.entry(k).or_insert(r);
        }
    })?;
    if let Some(snapshots) = snapshots {
        for chain in chains {
            let mut prefix = Vec::new();
            let mut parent = None;
            for diff_id in chain {
                let Some(blob) = blob_of.get(&diff_id) else {
                    break;
                };
                prefix.push(diff_id);
                let Some(id) = crate::cache::snapshot::chain_id(&prefix) else {
                    break;
                };
                super::pull::unpack_layer(store, snapshots, &id, parent.as_ref(), blob)?;
                parent = Some(id);
            }
        }
    }
    // The records now keep their layers alive.
    drop(lease);
    Ok(transfer)
}

fn parse_doc(bytes: &[u8], whence: &str) -> Result<CacheDocument> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Invalid(format!("{whence}: not a kiln build cache: {e}")))
}

async fn import_registry(
    store: &ImageStore,
    lease: &Lease,
    source: &Reference,
    settings: &RegistrySettings,
    progress: &dyn Progress,
) -> Result<Option<CacheDocument>> {
    let shown = source.to_string();
    let registry = Registry::connect(&source.domain, settings).await?;
    let tag = source
        .digest
        .clone()
        .or_else(|| source.tag.clone())
        .unwrap_or_else(|| crate::reference::DEFAULT_TAG.into());
    let (bytes, _, _) = match registry.get_manifest(&source.path, &tag, &shown).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => {
            tracing::warn!("{shown}: no build cache there yet");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| registry.protocol(&shown, format!("invalid manifest: {e}")))?;
    if manifest.config.media_type != CACHE_CONFIG {
        return Err(RegistryError::Invalid(format!(
            "{shown} is not a kiln build cache (its config is {:?})",
            manifest.config.media_type
        )));
    }
    let repo = registry.oci_ref(&source.path, None);
    super::pull::fetch_blob(
        &registry,
        &repo,
        &manifest.config,
        store,
        lease,
        progress,
        &shown,
        false,
    )
    .await?;
    let doc = parse_doc(&store.content.read(&manifest.config.digest)?, &shown)?;
    for l in &manifest.layers {
        progress.start(&l.digest, l.size, "Pulling fs layer");
    }
    futures_util::stream::iter(&manifest.layers)
        .map(|l| super::pull::fetch_blob(&registry, &repo, l, store, lease, progress, &shown, true))
        .buffer_unordered(4)
        .try_collect::<Vec<bool>>()
        .await?;
    Ok(Some(CacheDocument {
        records: keep_complete(store, lease, doc.records)?,
        chains: doc.chains,
    }))
}

/// Drops records whose layer blob is missing (a hit needs the blob).
fn keep_complete(
    store: &ImageStore,
    lease: &Lease,
    records: BTreeMap<Digest, CacheRecord>,
) -> Result<BTreeMap<Digest, CacheRecord>> {
    let mut out = BTreeMap::new();
    for (k, r) in records {
        if let Some(l) = &r.layer {
            if !lease.protect_existing(&store.content, &l.blob.digest)? {
                tracing::warn!(key = %k, blob = %l.blob.digest, "cache record without its layer; skipped");
                continue;
            }
        }
        out.insert(k, r);
    }
    Ok(out)
}

/// Copies a blob of an OCI layout into the store, verified against its name and size.
fn ingest_file(store: &ImageStore, lease: &Lease, dir: &Path, d: &Descriptor) -> Result<()> {
    if lease.protect_existing(&store.content, &d.digest)? {
        return Ok(());
    }
    let path = dir.join("blobs").join("sha256").join(d.digest.hex());
    let mut file = std::fs::File::open(&path).map_err(io("open", &path))?;
    let mut writer = store.content.writer()?;
    std::io::copy(&mut file, &mut writer).map_err(io("copy", &path))?;
    writer.flush().map_err(io("copy", &path))?;
    lease.commit(writer, Some(&d.digest), Some(d.size))?;
    Ok(())
}

fn import_local(store: &ImageStore, lease: &Lease, dir: &Path) -> Result<Option<CacheDocument>> {
    let index_path = dir.join("index.json");
    let bytes = match std::fs::read(&index_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{}: no build cache there yet", dir.display());
            return Ok(None);
        }
        Err(e) => return Err(io("read", &index_path)(e)),
    };
    let whence = index_path.display().to_string();
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Invalid(format!("{whence}: {e}")))?;
    let Some(desc) = index.manifests.first() else {
        return Ok(None);
    };
    ingest_file(store, lease, dir, desc)?;
    let manifest: Manifest = serde_json::from_slice(&store.content.read(&desc.digest)?)
        .map_err(|e| RegistryError::Invalid(format!("{whence}: invalid manifest: {e}")))?;
    if manifest.config.media_type != CACHE_CONFIG {
        return Err(RegistryError::Invalid(format!(
            "{} is not a kiln build cache",
            dir.display()
        )));
    }
    ingest_file(store, lease, dir, &manifest.config)?;
    let doc = parse_doc(&store.content.read(&manifest.config.digest)?, &whence)?;
    for l in &manifest.layers {
        ingest_file(store, lease, dir, l)?;
    }
    Ok(Some(CacheDocument {
        records: keep_complete(store, lease, doc.records)?,
        chains: doc.chains,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cache_specs() {
        let s = CacheSpec::parse("type=registry,ref=localhost:5000/c,mode=max", true).unwrap();
        assert_eq!(s.mode, CacheMode::Max);
        assert_eq!(
            s.location,
            CacheLocation::Registry(Reference::parse("localhost:5000/c:latest").unwrap())
        );
        let s = CacheSpec::parse("localhost:5000/c:v1", false).unwrap();
        assert_eq!(s.mode, CacheMode::Min);
        let s = CacheSpec::parse("type=local,src=/tmp/c", false).unwrap();
        assert_eq!(s.location, CacheLocation::Local("/tmp/c".into()));
        for bad in [
            "type=local,src=/x",
            "type=registry",
            "type=gha",
            "type=registry,ref=a,mode=all",
        ] {
            assert!(CacheSpec::parse(bad, true).is_err(), "{bad}");
        }
    }
}
