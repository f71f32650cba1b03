//! Layers built on this machine live only as snapshots until an image leaves it, as in
//! BuildKit: a build hashes each layer's tar to get its diff ID (and blob digest: the blob is
//! the uncompressed tar) but writes no blob. When a blob is needed (save, push, OCI/docker
//! outputs, cache export), [`ensure_layer`] regenerates the tar from the snapshot's layer
//! directory (`write_layer` is deterministic) and stores it, verifying that the bytes still
//! hash to the recorded digest, so a snapshot that changed behind kiln's back is an error,
//! never a silently different image.
//!
//! Only snapshotters that keep each layer's own diff ([`Snapshotter::layer_dir`]: overlay)
//! allow this; with the copying snapshotter builds keep writing blobs eagerly.

use std::path::PathBuf;

use rayon::prelude::*;

use super::content::ContentStore;
use super::digest::Digest;
use super::gc::Lease;
use super::image::media;
use super::layer::{self, Compression, LayerOptions};
use super::snapshot::{chain_id, Snapshotter};
use super::store::ImageStore;

/// Why a layer blob could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum LayerBlobError {
    #[error("layer {diff_id} is neither in the content store nor in a snapshot (chain {chain}); rebuild the image")]
    Missing { diff_id: Digest, chain: Digest },
    #[error("snapshot {chain} no longer matches its layer: expected {expected}, the directory {} now hashes to {actual}", dir.display())]
    Changed {
        chain: Digest,
        dir: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {0}: its config lists a different number of layers than its manifest")]
    Inconsistent(Digest),
    #[error("writing layer {diff_id} from its snapshot: {source}")]
    Layer {
        diff_id: Digest,
        #[source]
        source: layer::LayerError,
    },
    #[error(transparent)]
    Content(#[from] super::content::ContentError),
    #[error(transparent)]
    Gc(#[from] super::gc::GcError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

type Result<T, E = LayerBlobError> = std::result::Result<T, E>;

/// Computes the diff ID of the layer in `dir` (overlay upper format) without storing it:
/// the digest and size of its uncompressed tar.
pub fn hash_layer(
    dir: &std::path::Path,
    opts: &LayerOptions,
) -> Result<(Digest, u64), layer::LayerError> {
    let info = layer::write_layer(dir, Compression::Uncompressed, opts, std::io::sink())?;
    Ok((info.diff_id, info.size))
}

/// Makes sure the uncompressed blob of the layer `diff_id`, whose snapshot is `chain`, is in
/// the content store (protected by `lease`), regenerating it from the snapshot if needed.
pub fn ensure_layer(
    content: &ContentStore,
    snapshots: &dyn Snapshotter,
    lease: &Lease,
    chain: &Digest,
    diff_id: &Digest,
) -> Result<()> {
    if lease.protect_existing(content, diff_id)? {
        return Ok(());
    }
    let dir = snapshots
        .layer_dir(chain)
        .ok_or_else(|| LayerBlobError::Missing {
            diff_id: diff_id.clone(),
            chain: chain.clone(),
        })?;
    let mut writer = content.writer()?;
    let size = write_from_snapshot(chain, &dir, diff_id, &mut writer)?;
    lease.commit(writer, Some(diff_id), Some(size))?;
    Ok(())
}

/// Writes the uncompressed tar of the layer in snapshot directory `dir` (snapshot `chain`)
/// into `out`, checking that it still hashes to `diff_id`: a snapshot changed behind kiln's
/// back is an error, never a different image. Returns the tar's size.
pub fn write_from_snapshot(
    chain: &Digest,
    dir: &std::path::Path,
    diff_id: &Digest,
    out: impl std::io::Write,
) -> Result<u64> {
    let info = layer::write_layer(
        dir,
        Compression::Uncompressed,
        &LayerOptions::default(),
        out,
    )
    .map_err(|source| LayerBlobError::Layer {
        diff_id: diff_id.clone(),
        source,
    })?;
    if &info.diff_id != diff_id {
        return Err(LayerBlobError::Changed {
            chain: chain.clone(),
            dir: dir.to_path_buf(),
            expected: diff_id.clone(),
            actual: info.diff_id,
        });
    }
    Ok(info.size)
}

/// Makes every layer blob of image `manifest` present (regenerating, in parallel, the ones
/// that exist only as snapshots). A no-op for images whose blobs are all stored.
pub fn ensure_image(store: &ImageStore, lease: &Lease, manifest: &Digest) -> Result<()> {
    ensure_image_except(store, lease, manifest, &|_| false)
}

/// [`ensure_image`] for the layers `skip` does not name (by index): the caller produces
/// those another way (e.g. compresses them straight from their snapshot).
pub fn ensure_image_except(
    store: &ImageStore,
    lease: &Lease,
    manifest: &Digest,
    skip: &dyn Fn(usize) -> bool,
) -> Result<()> {
    let image = store.image(manifest)?;
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        return Err(LayerBlobError::Inconsistent(manifest.clone()));
    }
    let mut missing = Vec::new();
    for (i, l) in image.manifest.layers.iter().enumerate() {
        if skip(i) || lease.protect_existing(&store.content, &l.digest)? {
            continue;
        }
        // Only uncompressed layers whose blob is their diff ID can come from a snapshot.
        if l.media_type == media::OCI_LAYER && l.digest == diff_ids[i] {
            if let Some(chain) = chain_id(&diff_ids[..=i]) {
                missing.push((chain, l.digest.clone()));
                continue;
            }
        }
        return Err(LayerBlobError::Missing {
            diff_id: diff_ids[i].clone(),
            chain: chain_id(&diff_ids[..=i]).unwrap_or_else(|| diff_ids[i].clone()),
        });
    }
    if missing.is_empty() {
        return Ok(());
    }
    let snapshots = super::snapshot::open_default(store.root())?;
    missing.par_iter().try_for_each(|(chain, diff_id)| {
        ensure_layer(&store.content, snapshots.as_ref(), lease, chain, diff_id)
    })
}

/// The snapshot (chain ID, layer directory) of layer `index` of an image whose blob is not stored: only
/// uncompressed layers whose blob is their diff ID (layers built here) can be regenerated
/// from one. `None` when the blob is stored (protected by `lease` from then on) or the
/// layer is of another kind.
pub fn snapshot_source(
    store: &ImageStore,
    lease: &Lease,
    layer: &super::image::Descriptor,
    diff_ids: &[Digest],
    index: usize,
) -> Result<Option<(Digest, PathBuf)>> {
    if lease.protect_existing(&store.content, &layer.digest)? {
        return Ok(None);
    }
    if layer.media_type != media::OCI_LAYER || diff_ids.get(index) != Some(&layer.digest) {
        return Ok(None);
    }
    let Some(chain) = chain_id(&diff_ids[..=index]) else {
        return Ok(None);
    };
    let snapshots = super::snapshot::open_default(store.root())?;
    match snapshots.layer_dir(&chain) {
        Some(dir) => Ok(Some((chain, dir))),
        None => Err(LayerBlobError::Missing {
            diff_id: layer.digest.clone(),
            chain,
        }),
    }
}
