//! `kiln pull` and pulling FROM images on demand.
//!
//! 1. The manifest is fetched by tag or digest and verified (requested digest,
//!    `Docker-Content-Digest`). An OCI index / docker manifest list is stored as it is and
//!    the entry for the requested platform (default: the host's) is fetched the same way.
//! 2. The config, then the layers (4 at a time), are streamed from the registry straight into
//!    the content store ([`BlobWriter`](crate::cache::content::BlobWriter): hashed on the
//!    way, committed only if size and digest match, else the temp file is removed; blobs are
//!    requested as ranges so oci-client does not hash them a second time). Blobs the store
//!    already has are skipped. Dropped connections and 5xx answers are retried with backoff;
//!    a dropped download resumes with `Range: bytes=N-`.
//! 3. With the overlay snapshotter each layer is also unpacked while it downloads
//!    ([`tee`](super::tee)) into a staging directory; once its blob is verified, a thread
//!    moves the staged trees into snapshots (one per chain ID, as builds use them) in chain
//!    order. Otherwise (copying snapshotter, or a staged unpack that failed) that thread
//!    unpacks the stored blobs as they arrive, so each layer is unpacked once.
//! 4. The manifest bytes are stored unchanged, the image is registered and the tag set.
//!
//! Everything is held in a GC lease until the tag protects it.

use std::io::Write;
use std::sync::mpsc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;

use super::client::{parse_reference, runtime, Registry, RegistryError, RegistrySettings, Result};
use super::progress::Progress;
use super::sources::BlobSources;
use super::tee::{Staged, Unpacker};
use crate::cache::content::{BlobWriter, ContentError};
use crate::cache::gc::{Lease, Leases};
use crate::cache::image::{media, Descriptor, ImageConfig, Index, Manifest};
use crate::cache::layer::{self, UnpackMode};
use crate::cache::snapshot::{chain_id, Snapshotter};
use crate::cache::store::{ImageStore, StoreError, StoredImage};
use crate::cache::Digest;
use crate::graph::Platform;
use crate::reference::Reference;

/// Layers downloaded at the same time.
const CONCURRENT_DOWNLOADS: usize = 4;
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// How to pull.
pub struct PullOptions<'a> {
    pub platform: Platform,
    pub settings: &'a RegistrySettings,
    pub progress: &'a dyn Progress,
    /// Unpack the layers into these snapshots (None: leave that to the first build or run).
    pub snapshots: Option<&'a dyn Snapshotter>,
}

/// What a pull left in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalized reference pulled.
    pub reference: Reference,
    /// The platform manifest stored and registered.
    pub manifest_digest: Digest,
    /// Image ID (config digest).
    pub id: Digest,
    /// What the reference points at in the registry (the index for multi-platform images).
    pub digest: Digest,
    /// Whether any blob was downloaded (false: the image was up to date).
    pub downloaded: bool,
}

/// Pulls `reference` into the store (see the module doc).
pub fn pull(
    store: &ImageStore,
    reference: &Reference,
    opts: &PullOptions<'_>,
) -> Result<PulledImage> {
    let rt = runtime()?;
    let (tx, rx) = mpsc::channel::<UnpackEvent>();
    std::thread::scope(|scope| {
        let unpacker = opts
            .snapshots
            .map(|snaps| scope.spawn(move || unpack_in_order(store, snaps, rx)));
        let tx = unpacker.as_ref().map(|_| tx);
        let pulled = rt.block_on(pull_async(store, reference, opts, tx));
        let unpacked = match unpacker {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                Err(RegistryError::Invalid("the unpack thread panicked".into()))
            }),
            None => Ok(()),
        };
        let pulled = pulled?;
        unpacked?;
        Ok(pulled)
    })
}

/// The image `name` from the store, pulled first if the store does not have it.
pub fn pull_if_missing(
    store: &ImageStore,
    name: &str,
    opts: &PullOptions<'_>,
) -> Result<StoredImage> {
    match store.lookup(name) {
        Ok(img) => return Ok(img),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let reference = parse_reference(name)?;
    let pulled = pull(store, &reference, opts)?;
    Ok(store.image(&pulled.manifest_digest)?)
}

/// Messages to the unpack thread.
enum UnpackEvent {
    /// The image's layers (diff ID, blob), in order.
    Layers(Vec<(Digest, Digest)>),
    /// Layer `i`'s blob is in the store (and maybe already unpacked, staged).
    Ready(usize, Option<Staged>),
}

/// Unpacks layers into snapshots as they become ready, in chain order.
fn unpack_in_order(
    store: &ImageStore,
    snapshots: &dyn Snapshotter,
    rx: mpsc::Receiver<UnpackEvent>,
) -> Result<()> {
    let mut layers: Vec<(Digest, Digest)> = Vec::new();
    let mut ready: Vec<bool> = Vec::new();
    let mut staged: Vec<Option<Staged>> = Vec::new();
    let mut next = 0;
    let mut parent: Option<Digest> = None;
    let mut diff_ids = Vec::new();
    // Stops when the sender is dropped (pull finished or failed).
    while let Ok(event) = rx.recv() {
        match event {
            UnpackEvent::Layers(l) => {
                ready = vec![false; l.len()];
                staged = l.iter().map(|_| None).collect();
                layers = l;
            }
            UnpackEvent::Ready(i, tree) => {
                if let Some(r) = ready.get_mut(i) {
                    *r = true;
                    staged[i] = tree;
                }
            }
        }
        while next < layers.len() && ready[next] {
            let (diff_id, blob) = &layers[next];
            diff_ids.push(diff_id.clone());
            let id = chain_id(&diff_ids)
                .ok_or_else(|| RegistryError::Invalid("empty layer chain".into()))?;
            unpack_staged(
                store,
                snapshots,
                &id,
                parent.as_ref(),
                blob,
                staged[next].take(),
            )?;
            parent = Some(id);
            next += 1;
        }
    }
    if next < layers.len() {
        tracing::debug!(
            unpacked = next,
            layers = layers.len(),
            "pull ended before every layer was unpacked"
        );
    }
    Ok(())
}

/// Makes snapshot `id` = `parent` + the layer in `blob` (nothing if it exists).
pub fn unpack_layer(
    store: &ImageStore,
    snapshots: &dyn Snapshotter,
    id: &Digest,
    parent: Option<&Digest>,
    blob: &Digest,
) -> Result<()> {
    unpack_staged(store, snapshots, id, parent, blob, None)
}

/// [`unpack_layer`], moving `staged` (the layer already unpacked while it downloaded) into
/// place when the snapshotter keeps per-layer diffs; else, or if that fails, unpacking the
/// stored blob.
fn unpack_staged(
    store: &ImageStore,
    snapshots: &dyn Snapshotter,
    id: &Digest,
    parent: Option<&Digest>,
    blob: &Digest,
    mut staged: Option<Staged>,
) -> Result<()> {
    if snapshots.exists(id) {
        return Ok(());
    }
    let content = &store.content;
    let mut fill = |dir: &std::path::Path, mode: UnpackMode| -> Result<(), layer::LayerError> {
        if let (Some(tree), UnpackMode::OverlayDiff) = (staged.take(), mode) {
            match tree.install(dir) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(%blob, error = %e, "cannot move the staged layer; unpacking the blob")
                }
            }
        }
        let file = content.open_blob(blob).map_err(|e| layer::LayerError::Io {
            op: "open layer blob",
            path: content.blob_path(blob),
            source: std::io::Error::other(e.to_string()),
        })?;
        layer::unpack_layer(std::io::BufReader::with_capacity(1 << 20, file), dir, mode).map(|_| ())
    };
    snapshots
        .create(id, parent, &mut fill)
        .map_err(|e| RegistryError::Unpack {
            blob: blob.clone(),
            message: e.to_string(),
        })
}

/// The media type of a manifest: the `Content-Type`, else its `mediaType` field, else
/// guessed from its shape (OCI documents may omit both).
fn manifest_media_type(content_type: &str, bytes: &[u8]) -> String {
    if media::is_manifest(content_type) || media::is_index(content_type) {
        return content_type.to_string();
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Shape {
            manifests: Some(_), ..
        }) => media::OCI_INDEX.to_string(),
        Ok(_) => media::OCI_MANIFEST.to_string(),
        Err(_) => content_type.to_string(),
    }
}

/// The entry of `index` for `platform`: exact platform matches first, then entries that
/// name no platform.
fn select_platform<'i>(
    index: &'i Index,
    platform: &Platform,
    reference: &str,
) -> Result<&'i Descriptor> {
    let usable =
        |d: &&Descriptor| media::is_manifest(&d.media_type) || media::is_index(&d.media_type);
    let matches = |d: &&Descriptor| {
        d.platform.is_some()
            && crate::cache::import::platform_matches(platform, d.platform.as_ref())
    };
    index
        .manifests
        .iter()
        .filter(usable)
        .find(matches)
        .or_else(|| {
            index
                .manifests
                .iter()
                .filter(usable)
                .find(|d| d.platform.is_none())
        })
        .ok_or_else(|| RegistryError::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    crate::cache::import::platform_string(
                        &p.os,
                        &p.architecture,
                        p.variant.as_deref(),
                    )
                })
                .collect(),
        })
}

fn parse<T: serde::de::DeserializeOwned>(
    registry: &Registry,
    reference: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| registry.protocol(reference, format!("invalid {what}: {e}")))
}

async fn pull_async(
    store: &ImageStore,
    reference: &Reference,
    opts: &PullOptions<'_>,
    unpack: Option<mpsc::Sender<UnpackEvent>>,
) -> Result<PulledImage> {
    let shown = reference.to_string();
    let registry = Registry::connect(&reference.domain, opts.settings).await?;
    let lease = Leases::acquire(store.root(), &format!("pull {shown}"))?;
    let tag_or_digest = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| crate::reference::DEFAULT_TAG.to_string());
    opts.progress.message(&format!(
        "{}: Pulling from {}",
        reference
            .digest
            .as_deref()
            .or(reference.tag.as_deref())
            .unwrap_or("latest"),
        reference.path
    ));

    // The manifest, through any index.
    let (mut bytes, content_type, top_digest) = registry
        .get_manifest(&reference.path, &tag_or_digest, &shown)
        .await?;
    let mut media_type = manifest_media_type(&content_type, &bytes);
    let mut digest = top_digest.clone();
    let mut depth = 0;
    while media::is_index(&media_type) {
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(registry.protocol(&shown, "indexes nest too deeply".into()));
        }
        let index: Index = parse(&registry, &shown, "index", &bytes)?;
        lease.put(&store.content, &bytes)?;
        let entry = select_platform(&index, &opts.platform, &shown)?.clone();
        let (b, ct, d) = registry
            .get_manifest(&reference.path, entry.digest.as_str(), &shown)
            .await?;
        if d != entry.digest {
            return Err(RegistryError::DigestMismatch {
                reference: shown.clone(),
                registry: registry.domain.clone(),
                what: "the platform manifest".into(),
                expected: entry.digest.to_string(),
                actual: d.to_string(),
            });
        }
        media_type = manifest_media_type(&ct, &b);
        if media_type.is_empty() {
            media_type = entry.media_type.clone();
        }
        bytes = b;
        digest = d;
    }
    if !media::is_manifest(&media_type) {
        return Err(RegistryError::UnsupportedManifest {
            reference: shown.clone(),
            media_type,
        });
    }
    let manifest: Manifest = parse(&registry, &shown, "manifest", &bytes)?;
    let repo = registry.oci_ref(&reference.path, None);

    // Config first (small; it names the diff IDs), then the layers.
    let mut downloaded = fetch_blob(
        &registry,
        &repo,
        &manifest.config,
        store,
        &lease,
        opts.progress,
        &shown,
        false,
    )
    .await?;
    let config: ImageConfig = parse(
        &registry,
        &shown,
        "image config",
        &store.content.read(&manifest.config.digest)?,
    )?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(registry.protocol(
            &shown,
            format!(
                "the manifest has {} layers but the config lists {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    if let Some(tx) = &unpack {
        let layers = diff_ids
            .iter()
            .cloned()
            .zip(manifest.layers.iter().map(|l| l.digest.clone()))
            .collect();
        let _ = tx.send(UnpackEvent::Layers(layers));
    }
    for l in &manifest.layers {
        opts.progress.start(&l.digest, l.size, "Pulling fs layer");
    }
    // Layers are unpacked while they download when snapshots keep per-layer diffs (the
    // staged trees are renamed into place in order); the copying snapshotter needs the
    // parent's tree, so it unpacks stored blobs.
    let stage = opts
        .snapshots
        .filter(|s| s.keeps_layer_diffs() && unpack.is_some())
        .map(|_| store.root().join("snapshots").join(".staging"));
    let stage = &stage;
    let results: Vec<bool> = futures_util::stream::iter(manifest.layers.iter().enumerate())
        .map(|(i, layer)| {
            let registry = &registry;
            let repo = &repo;
            let lease = &lease;
            let shown = &shown;
            let unpack = unpack.clone();
            async move {
                let (new, staged) = fetch_blob_staged(
                    registry,
                    repo,
                    layer,
                    store,
                    lease,
                    opts.progress,
                    shown,
                    true,
                    stage.as_deref(),
                )
                .await?;
                if let Some(tx) = unpack {
                    let _ = tx.send(UnpackEvent::Ready(i, staged));
                }
                Ok::<bool, RegistryError>(new)
            }
        })
        .buffer_unordered(CONCURRENT_DOWNLOADS)
        .try_collect()
        .await?;
    downloaded |= results.iter().any(|n| *n);
    drop(unpack);

    // The manifest, byte for byte, then the image and its tag.
    let (stored, _) = lease.put(&store.content, &bytes)?;
    if stored != digest {
        return Err(RegistryError::Invalid(format!(
            "stored manifest digest {stored} differs from {digest}"
        )));
    }
    store.register(&digest, &manifest.config.digest)?;
    if reference.digest.is_none() {
        store.tag(reference, &digest)?;
    }
    let mut blobs: Vec<&Digest> = manifest.layers.iter().map(|l| &l.digest).collect();
    blobs.push(&manifest.config.digest);
    if let Err(e) = BlobSources::open(store.root()).record(&reference.repository(), blobs) {
        tracing::warn!("cannot record where the blobs came from: {e}");
    }
    opts.progress.message(&format!("Digest: {top_digest}"));
    let familiar = familiar(reference);
    opts.progress.message(&if downloaded {
        format!("Status: Downloaded newer image for {familiar}")
    } else {
        format!("Status: Image is up to date for {familiar}")
    });
    drop(lease);
    Ok(PulledImage {
        reference: reference.clone(),
        manifest_digest: digest,
        id: manifest.config.digest,
        digest: top_digest,
        downloaded,
    })
}

/// `busybox:latest`, `localhost:5000/app@sha256:…`: how docker names an image in messages.
pub fn familiar(r: &Reference) -> String {
    let mut s = r.familiar_repository();
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

/// Streams one blob into the store, verified, with retries. Returns whether it was
/// downloaded (false: the store had it). `layer` picks docker's wording for the progress.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_blob(
    registry: &Registry,
    repo: &oci_client::Reference,
    desc: &Descriptor,
    store: &ImageStore,
    lease: &Lease,
    progress: &dyn Progress,
    shown: &str,
    layer: bool,
) -> Result<bool> {
    let (new, _) = fetch_blob_staged(
        registry, repo, desc, store, lease, progress, shown, layer, None,
    )
    .await?;
    Ok(new)
}

/// [`fetch_blob`], also unpacking the layer while it downloads when `stage` names a staging
/// directory ([`tee`](super::tee)): the staged tree comes back once the blob is committed.
///
/// A dropped connection resumes where it stopped (`Range: bytes=N-`); a registry that
/// answers with the whole blob instead starts it over. The blob is requested as a range from
/// the start too, so the registry answers 206 and oci-client does not hash it a second time:
/// the [`BlobWriter`](crate::cache::content::BlobWriter) verifies size and digest before
/// anything is stored.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob_staged(
    registry: &Registry,
    repo: &oci_client::Reference,
    desc: &Descriptor,
    store: &ImageStore,
    lease: &Lease,
    progress: &dyn Progress,
    shown: &str,
    layer: bool,
    stage: Option<&std::path::Path>,
) -> Result<(bool, Option<Staged>)> {
    if lease.protect_existing(&store.content, &desc.digest)? {
        if layer {
            progress.status(&desc.digest, "Already exists");
        }
        return Ok((false, None));
    }
    let what = format!("blob {}", desc.digest);
    let unpacker = stage.and_then(|root| match Unpacker::start(root) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::debug!(error = %e, "cannot stage a streaming unpack");
            None
        }
    });
    // Kept across attempts: the bytes so far and the unpacker they were fed to.
    let state: tokio::sync::Mutex<(Option<BlobWriter>, Option<Unpacker>)> =
        tokio::sync::Mutex::new((None, unpacker));
    let staged = super::client::retry(|| async {
        let mut guard = state.lock().await;
        let (slot, unpacker) = &mut *guard;
        let offset = slot.as_ref().map_or(0, BlobWriter::written);
        registry
            .renew_token(repo, oci_client::RegistryOperation::Pull, shown)
            .await?;
        let response = registry
            .client
            .pull_blob_stream_partial(repo, desc.digest.as_str(), offset, None)
            .await
            .map_err(|e| registry.map_err(shown, e))?;
        let mut stream = match response {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                if offset > 0 {
                    tracing::debug!(blob = %desc.digest, offset, "the registry ignored the range; starting over");
                    *slot = None;
                    *unpacker = None;
                }
                s
            }
        };
        let writer = match slot {
            Some(w) => {
                tracing::debug!(blob = %desc.digest, offset, "resuming the download");
                w
            }
            None => {
                progress.restart(&desc.digest);
                slot.insert(tokio::task::block_in_place(|| store.content.writer())?)
            }
        };
        if layer {
            progress.status(&desc.digest, "Downloading");
        }
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if writer.written() < desc.size => {
                    // Short read: the connection ended early; worth another attempt, which
                    // resumes from here.
                    return Err(RegistryError::Transport {
                        reference: shown.to_string(),
                        registry: registry.domain.clone(),
                        message: format!(
                            "{what}: connection ended after {} of {} bytes ({})",
                            writer.written(),
                            desc.size,
                            super::client::error_chain(&e)
                        ),
                    });
                }
                Err(e) => return Err(registry.io_error(shown, &what, e)),
            };
            if writer.written() + chunk.len() as u64 > desc.size {
                *slot = None;
                return Err(registry.protocol(
                    shown,
                    format!(
                        "{what} is larger than the {} bytes its descriptor says",
                        desc.size
                    ),
                ));
            }
            writer
                .write_all(&chunk)
                .map_err(|source| RegistryError::Io {
                    op: "write",
                    path: writer.ingest_path().to_path_buf(),
                    source,
                })?;
            progress.advance(&desc.digest, chunk.len() as u64);
            if let Some(u) = unpacker.as_ref() {
                if !u.feed(chunk).await {
                    *unpacker = None;
                }
            }
        }
        if writer.written() < desc.size {
            return Err(RegistryError::Transport {
                reference: shown.to_string(),
                registry: registry.domain.clone(),
                message: format!(
                    "{what}: connection ended after {} of {} bytes",
                    writer.written(),
                    desc.size
                ),
            });
        }
        if layer {
            progress.status(&desc.digest, "Verifying Checksum");
        }
        let Some(writer) = slot.take() else {
            return Err(RegistryError::Invalid(format!("{what}: no download in progress")));
        };
        let committed = tokio::task::block_in_place(|| {
            lease.commit(writer, Some(&desc.digest), Some(desc.size))
        });
        if let Err(e) = committed {
            *unpacker = None;
            return Err(match e {
                crate::cache::gc::GcError::Content(ContentError::DigestMismatch {
                    expected,
                    actual,
                }) => RegistryError::DigestMismatch {
                    reference: shown.to_string(),
                    registry: registry.domain.clone(),
                    what: what.clone(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                },
                other => other.into(),
            });
        }
        let staged = match unpacker.take() {
            Some(u) => u.finish().await,
            None => None,
        };
        if layer {
            progress.status(&desc.digest, "Pull complete");
        }
        Ok(staged)
    })
    .await?;
    Ok((true, staged))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()),
            size: 1,
            platform: Some(crate::cache::image::Platform {
                architecture: arch.into(),
                os: "linux".into(),
                os_version: None,
                variant: variant.map(Into::into),
            }),
            annotations: Default::default(),
        }
    }

    #[test]
    fn selects_the_platform() {
        let index = Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: vec![
                desc("arm", Some("v7")),
                desc("arm64", None),
                desc("amd64", None),
            ],
            annotations: Default::default(),
        };
        let p = |s: &str| Platform::parse(s).unwrap();
        assert_eq!(
            select_platform(&index, &p("linux/amd64"), "r")
                .unwrap()
                .digest,
            Digest::of(b"amd64")
        );
        assert_eq!(
            select_platform(&index, &p("linux/arm64/v8"), "r")
                .unwrap()
                .digest,
            Digest::of(b"arm64")
        );
        let e = select_platform(&index, &p("linux/s390x"), "r").unwrap_err();
        assert_eq!(
            e.to_string(),
            "r: no image for platform linux/s390x (the index has: linux/arm/v7, linux/arm64, linux/amd64)"
        );
    }

    #[test]
    fn media_type_from_headers_or_body() {
        assert_eq!(
            manifest_media_type(media::DOCKER_MANIFEST, b"{}"),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type("application/json", br#"{"manifests":[]}"#),
            media::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type("", br#"{"config":{}}"#),
            media::OCI_MANIFEST
        );
    }
}
