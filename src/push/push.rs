//! `kiln push`, `kiln build --push`: an image of the store into a registry.
//!
//! 1. [`prepare_for_export_with`] compresses the layers as asked (gzip by default, zstd on
//!    request), all layers in parallel, and gives the manifest to send: the stored bytes
//!    unchanged when no layer changed, so the digest printed is the digest the registry holds.
//! 2. Every blob (config and layers, 4 at a time), as soon as it is ready (the config and
//!    unchanged layers at once, each compressed layer when it is committed, while the others
//!    still compress; the connection is set up meanwhile): `HEAD` first and skipped when the
//!    registry has it; else mounted from another repository of the same registry that is
//!    known to hold it ([`BlobSources`]); else uploaded in one streamed `PUT` straight from
//!    the content store. Connection errors and 5xx answers are retried with backoff.
//! 3. The manifest bytes are `PUT` under the tag (or digest).

use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use super::client::{retry, runtime, Registry, RegistryError, RegistrySettings, Result};
use super::progress::Progress;
use super::sources::BlobSources;
use super::stream::Streams;
use crate::cache::export::{prepare_for_export_with, LayerCompression};
use crate::cache::image::Descriptor;
use crate::cache::store::ImageStore;
use crate::cache::Digest;
use crate::reference::Reference;

/// Blobs uploaded at the same time.
const CONCURRENT_UPLOADS: usize = 4;
/// Read size when streaming a blob from the store.
const CHUNK: usize = 1 << 20;

/// How to push.
pub struct PushOptions<'a> {
    pub settings: &'a RegistrySettings,
    pub progress: &'a dyn Progress,
    pub compression: LayerCompression,
}

/// What was pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: Reference,
    /// The manifest digest the registry holds.
    pub digest: Digest,
    pub size: u64,
}

/// Pushes the image with manifest `manifest` to `target` (see the module doc).
pub fn push(
    store: &ImageStore,
    manifest: &Digest,
    target: &Reference,
    opts: &PushOptions<'_>,
) -> Result<Pushed> {
    let rt = runtime()?;
    let shown = target.to_string();
    // Blobs are uploaded as soon as they are ready (while later layers still compress);
    // compressed layers are even streamed while they compress (see `super::stream`); the
    // connection is set up meanwhile.
    let streams = &Streams::new(&target.path, &shown, rt.handle().clone());
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::unbounded_channel::<(Option<usize>, Descriptor)>();
    let (exported, pushed) = std::thread::scope(|scope| {
        let preparing = scope.spawn(move || {
            prepare_for_export_with(
                store,
                manifest,
                opts.compression,
                &|index, d| {
                    // The receiver is gone only when the upload failed: reported there.
                    let _ = ready_tx.send((index, d.clone()));
                },
                &|index| streams.mirror(index),
            )
        });
        let uploaded = rt.block_on(async {
            let registry = Registry::connect(&target.domain, opts.settings).await?;
            streams.connected(&registry);
            opts.progress.message(&format!(
                "The push refers to repository [{}]",
                target.repository()
            ));
            let ready = futures_util::stream::poll_fn(|cx| ready_rx.poll_recv(cx));
            upload_stream(
                &registry,
                store,
                target,
                ready,
                Some(streams),
                opts.progress,
            )
            .await?;
            Ok::<_, RegistryError>(registry)
        });
        // Stop handing over blobs and streaming if the upload failed (the export still
        // finishes; after a success it has finished).
        ready_rx.close();
        streams.stop();
        let exported = preparing
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        let registry = uploaded?;
        let bytes = store.content.read(&exported.manifest.digest)?;
        let pushed = rt.block_on(put_manifest(
            &registry,
            target,
            &bytes,
            &exported.manifest.media_type,
            &shown,
        ))?;
        Ok::<_, RegistryError>((exported, pushed))
    })?;
    opts.progress.message(&format!(
        "{}: digest: {} size: {}",
        target
            .tag
            .as_deref()
            .or(target.digest.as_deref())
            .unwrap_or("latest"),
        pushed.digest,
        pushed.size
    ));
    // The export lease kept the converted layers until the manifest was sent.
    drop(exported);
    Ok(pushed)
}

/// Uploads `blobs` (from the store) into `target`'s repository, 4 at a time, and records
/// that the repository holds them.
pub(crate) async fn upload_all(
    registry: &Registry,
    store: &ImageStore,
    target: &Reference,
    blobs: &[Descriptor],
    progress: &dyn Progress,
) -> Result<()> {
    let blobs = futures_util::stream::iter(blobs.iter().map(|b| (None, b.clone())));
    upload_stream(registry, store, target, blobs, None, progress).await
}

/// Uploads the blobs of `blobs` (with their layer index) as they come, 4 at a time, and
/// records that the repository holds them. A layer that was streamed while it compressed
/// only needs its upload committed.
async fn upload_stream(
    registry: &Registry,
    store: &ImageStore,
    target: &Reference,
    blobs: impl futures_util::Stream<Item = (Option<usize>, Descriptor)>,
    streams: Option<&Streams>,
    progress: &dyn Progress,
) -> Result<()> {
    let shown = &target.to_string();
    let sources = &BlobSources::open(store.root());
    let pushed: Vec<Digest> = blobs
        .map(|(index, b)| async move {
            progress.start(&b.digest, b.size, "Preparing");
            if let (Some(index), Some(streams)) = (index, streams) {
                if streams.finish(index, &b).await {
                    progress.status(&b.digest, "Pushed");
                    return Ok(b.digest);
                }
            }
            upload_blob(registry, store, target, &b, sources, progress, shown).await?;
            Ok::<_, RegistryError>(b.digest)
        })
        .buffer_unordered(CONCURRENT_UPLOADS)
        .try_collect()
        .await?;
    if let Err(e) = sources.record(&target.repository(), pushed.iter()) {
        tracing::warn!("cannot record the pushed blobs: {e}");
    }
    Ok(())
}

async fn upload_blob(
    registry: &Registry,
    store: &ImageStore,
    target: &Reference,
    desc: &Descriptor,
    sources: &BlobSources,
    progress: &dyn Progress,
    shown: &str,
) -> Result<()> {
    let repo = registry.oci_ref(&target.path, None);
    registry
        .authenticate(&repo, oci_client::RegistryOperation::Push, shown)
        .await?;
    let exists = retry(|| async {
        registry
            .client
            .blob_exists(&repo, desc.digest.as_str())
            .await
            .map_err(|e| registry.map_err(shown, e))
    })
    .await?;
    if exists {
        progress.status(&desc.digest, "Layer already exists");
        return Ok(());
    }
    let prefix = format!("{}/", target.domain);
    for source in sources.sources(&desc.digest) {
        let Some(path) = source.strip_prefix(&prefix) else {
            continue;
        };
        if path == target.path {
            continue;
        }
        match registry
            .mount_blob(&target.path, path, desc.digest.as_str(), shown)
            .await
        {
            Ok(true) => {
                progress.status(&desc.digest, &format!("Mounted from {path}"));
                return Ok(());
            }
            Ok(false) => {
                tracing::debug!(blob = %desc.digest, from = path, "mount refused; uploading")
            }
            Err(e) => {
                tracing::debug!(blob = %desc.digest, from = path, error = %e, "mount failed; uploading")
            }
        }
    }
    let path = store.content.blob_path(&desc.digest);
    retry(|| async {
        progress.restart(&desc.digest);
        progress.status(&desc.digest, "Pushing");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| RegistryError::Io {
                op: "open blob",
                path: path.clone(),
                source,
            })?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let body = futures_util::stream::try_unfold((file, tx), |(mut file, tx)| async move {
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            let n = file.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<_, oci_client::errors::OciDistributionError>(None);
            }
            let _ = tx.send(n as u64);
            Ok(Some((buf.freeze(), (file, tx))))
        });
        let upload =
            registry
                .client
                .push_blob_stream(&repo, body, desc.digest.as_str(), Some(desc.size));
        let report = async {
            while let Some(n) = rx.recv().await {
                progress.advance(&desc.digest, n);
            }
        };
        let (res, ()) = tokio::join!(upload, report);
        res.map(|_| ()).map_err(|e| registry.map_err(shown, e))
    })
    .await?;
    progress.status(&desc.digest, "Pushed");
    Ok(())
}

/// PUTs manifest bytes under `target`'s tag (or digest). Returns the digest and size.
pub(crate) async fn put_manifest(
    registry: &Registry,
    target: &Reference,
    bytes: &[u8],
    media_type: &str,
    shown: &str,
) -> Result<Pushed> {
    let digest = Digest::of(bytes);
    let tag = target.tag.clone().unwrap_or_else(|| digest.to_string());
    if let Some(d) = &target.digest {
        if d != digest.as_str() {
            return Err(RegistryError::Invalid(format!(
                "{shown}: the image's manifest digest is {digest}, not {d}"
            )));
        }
    }
    let repo = registry.oci_ref(&target.path, Some(&tag));
    let content_type = reqwest::header::HeaderValue::from_str(media_type)
        .map_err(|_| RegistryError::Invalid(format!("invalid media type {media_type:?}")))?;
    retry(|| async {
        registry
            .client
            .push_manifest_raw(&repo, bytes.to_vec(), content_type.clone())
            .await
            .map_err(|e| registry.map_err(shown, e))
    })
    .await?;
    Ok(Pushed {
        reference: target.clone(),
        digest,
        size: bytes.len() as u64,
    })
}
