//! Getting images out of the store: layer (re)compression for push and save, and the two
//! archive formats `kiln save` and `--output` write.
//!
//! # Preparing an image
//! [`prepare_for_export`] makes every layer blob compressed the way the caller asks, in
//! parallel (rayon): converted blobs are written to the content store, each one checked
//! against the config's `rootfs.diff_ids` on the way through (the uncompressed stream is
//! hashed while it is re-compressed). When no layer changes, the stored manifest is shipped
//! as it is (its exact bytes and digest: convention 15, never re-serialize a manifest kiln did
//! not create); otherwise a new OCI manifest is stored, with the same config, so the image ID
//! does not change. Everything the result names is held in a GC lease for as long as the
//! [`ExportedImage`] (or a clone of it) lives, so a concurrent `kiln prune` cannot delete a
//! converted layer between preparing and pushing or saving it.
//!
//! # Archives
//! [`write_docker_archive`] writes what `docker save` of Docker 25+ writes: one tar that is
//! both a docker-archive and an OCI image layout:
//!
//! ```text
//! blobs/                      directory, 0755
//! blobs/sha256/               directory, 0755
//! blobs/sha256/<hex>          every manifest, config and layer blob, sorted by digest, 0644
//! index.json                  OCI index: one manifest descriptor per tag (annotations
//!                             io.containerd.image.name = full name,
//!                             org.opencontainers.image.ref.name = tag), one plain
//!                             descriptor for an untagged image
//! manifest.json               docker-archive: [{"Config":"blobs/sha256/<hex>",
//!                             "RepoTags":["app:1"],"Layers":["blobs/sha256/<hex>",…]}]
//! oci-layout                  {"imageLayoutVersion":"1.0.0"}
//! repositories                legacy {"app":{"1":"<top layer hex>"}} (only with tags)
//! ```
//!
//! [`write_oci_archive`] writes the same minus `manifest.json` and `repositories`. Both are
//! deterministic: entries in the order above, mtime 0, uid/gid 0, no user names, ustar
//! headers. Blobs are streamed from the content store (never held in memory) and re-hashed
//! while they are written, so a damaged blob fails the save instead of being shipped.
//!
//! Layer compression lives here for now ([`Compression`], [`detect_compression`],
//! [`decompressor`], [`LayerEncoder`]); it is meant to be unified with `cache::layer`'s
//! `Compression` (same variants, same media types).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use super::content::{BlobWriter, ContentError};
use super::converted;
use super::digest::{Digest, DigestReader};
use super::gc::{GcError, Lease, Leases};
use super::image::{self, media, to_canonical_json, Descriptor, Index, Manifest};
use super::layer::Compression;
use super::pargz::ParGzEncoder;
use super::store::{ImageStore, StoreError};
use crate::reference::{Reference, ReferenceError};

/// Buffer size for streaming blobs and layer conversions.
const COPY_BUF: usize = 1 << 20;

/// `oci-layout` file contents.
pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Index annotation with the full image name (containerd, Docker 25+, BuildKit).
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI index annotation with the reference name (Docker and BuildKit put the tag here).
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors of exporting images. Each names the blob, layer or tag involved.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("cannot hold a GC lease for the export: {0}")]
    Lease(#[from] GcError),
    #[error(transparent)]
    LayerBlob(#[from] super::layer_blob::LayerBlobError),
    #[error("image {manifest} cannot be exported: {message}")]
    InvalidImage { manifest: Digest, message: String },
    #[error("layer {layer} has media type {media_type:?}, which kiln cannot recompress")]
    UnsupportedLayer { layer: Digest, media_type: String },
    #[error("converting layer {index} ({layer}): {source}")]
    LayerConversion {
        layer: Digest,
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("layer {index} ({layer}) decompresses to {actual}, but the image config says its diff ID is {expected}")]
    DiffIdMismatch {
        layer: Digest,
        index: usize,
        expected: Digest,
        actual: Digest,
    },
    /// A stored blob changed under kiln (disk corruption, tampering) while it was written out.
    #[error("blob {digest} is corrupt in the content store: read {size} bytes hashing to {actual}, expected {expected_size} bytes")]
    CorruptBlob {
        digest: Digest,
        actual: Digest,
        size: u64,
        expected_size: u64,
    },
    #[error("blob {digest} is named with two different sizes ({first} and {second} bytes)")]
    SizeConflict {
        digest: Digest,
        first: u64,
        second: u64,
    },
    #[error("invalid tag {tag:?} for the archive: {source}")]
    InvalidTag {
        tag: String,
        #[source]
        source: ReferenceError,
    },
    #[error("invalid tag {tag:?} for the archive: expected name:tag, without a digest")]
    UntaggedReference { tag: String },
    #[error("writing archive entry {entry}: {source}")]
    Write {
        entry: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Layer compression (to be unified with cache::layer::Compression)
// ---------------------------------------------------------------------------------------------

/// The compression a *distributable* layer media type declares; `None` for anything else
/// (foreign and non-distributable layers are shipped as they are).
pub(crate) fn layer_compression(media_type: &str) -> Option<Compression> {
    if media_type.contains("nondistributable") || media_type.contains("foreign") {
        return None;
    }
    Compression::parse(media_type).filter(|_| media_type.contains('/'))
}

/// Sniffs compression from the first bytes of a stream: `1f 8b` gzip, `28 b5 2f fd` zstd,
/// anything else is taken as uncompressed.
pub(crate) fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// A reader of the uncompressed stream. Gzip input may have several members (pigz).
pub(crate) fn decompressor<'a, R: Read + 'a>(
    compression: Compression,
    reader: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::Uncompressed => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// Compresses into `W`: gzip at the default level with no name and mtime 0 in the header,
/// on all cores ([`ParGzEncoder`]: reproducible bytes), or zstd level 3.
pub(crate) enum LayerEncoder<W: Write> {
    Plain(W),
    Gzip(ParGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> LayerEncoder<W> {
    pub(crate) fn new(compression: Compression, inner: W) -> io::Result<LayerEncoder<W>> {
        Ok(match compression {
            Compression::Uncompressed => LayerEncoder::Plain(inner),
            Compression::Gzip => LayerEncoder::Gzip(ParGzEncoder::new(inner, 6)),
            Compression::Zstd => LayerEncoder::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    /// Writes the end of the compressed stream and returns the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            LayerEncoder::Plain(w) => Ok(w),
            LayerEncoder::Gzip(e) => e.finish(),
            LayerEncoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for LayerEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LayerEncoder::Plain(w) => w.write(buf),
            LayerEncoder::Gzip(e) => e.write(buf),
            LayerEncoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LayerEncoder::Plain(w) => w.flush(),
            LayerEncoder::Gzip(e) => e.flush(),
            LayerEncoder::Zstd(e) => e.flush(),
        }
    }
}

/// `io::copy` with a large buffer (decoders and encoders work better with big chunks).
pub(crate) fn copy_large(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// prepare_for_export
// ---------------------------------------------------------------------------------------------

/// How layers should be compressed in what leaves the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// Compressed layers stay as they are; uncompressed ones are gzipped.
    Keep,
    Uncompressed,
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn target(self, current: Compression) -> Compression {
        match self {
            LayerCompression::Keep if current == Compression::Uncompressed => Compression::Gzip,
            LayerCompression::Keep => current,
            LayerCompression::Uncompressed => Compression::Uncompressed,
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        }
    }
}

/// An image ready to ship: the manifest to send (media type, digest, size of its stored
/// bytes) and the blobs it names. Every blob is in the content store and, when the value
/// came from [`prepare_for_export`], protected from GC while any clone of it lives.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    lease: Option<Arc<Lease>>,
}

impl ExportedImage {
    /// An image whose blobs the caller keeps alive itself (no GC lease).
    pub fn new(manifest: Descriptor, config: Descriptor, layers: Vec<Descriptor>) -> ExportedImage {
        ExportedImage {
            manifest,
            config,
            layers,
            lease: None,
        }
    }

    /// Whether this value holds a GC lease on its blobs.
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// Makes an image ready to leave the machine: every layer blob compressed as asked (`Keep`:
/// uncompressed layers are gzipped, compressed ones stay as they are). Converted blobs are
/// written to the content store (in parallel); if no layer changes, the stored manifest (its
/// exact bytes and digest) is reused; otherwise a new OCI manifest is stored and returned
/// (config unchanged, so the image ID is the same). Layers whose media type kiln does not
/// know are shipped unchanged with `Keep` and refused otherwise.
pub fn prepare_for_export(
    store: &ImageStore,
    manifest: &Digest,
    compression: LayerCompression,
) -> Result<ExportedImage> {
    prepare_for_export_with(store, manifest, compression, &|_, _| {}, &|_| None)
}

/// Where a layer's converted bytes are copied while they are written to the store (see
/// [`prepare_for_export_with`]).
pub type Mirror<'a> = &'a (dyn Fn(usize) -> Option<Box<dyn Write + Send>> + Sync);

/// [`prepare_for_export`] that hands every blob of the result to `ready` as soon as it is in
/// the store (the config and unchanged layers first, then each converted layer when it is
/// committed, from the converting thread, with the layer's index), so that a push can upload
/// blobs while later layers are still being compressed. Every blob of the result is handed
/// over exactly once (the same blob listed twice, once per listing); the manifest is not (it
/// is made last). `mirror(index)` may give a writer that receives a copy of converted layer
/// `index`'s bytes as they are written (best effort: a failing mirror is dropped and the
/// conversion goes on); it is dropped, ending the copy, before that layer is handed to `ready`.
pub fn prepare_for_export_with(
    store: &ImageStore,
    manifest: &Digest,
    compression: LayerCompression,
    ready: &(dyn Fn(Option<usize>, &Descriptor) + Sync),
    mirror: Mirror<'_>,
) -> Result<ExportedImage> {
    let lease = Leases::acquire(store.root(), &format!("export {manifest}"))?;
    // Recorded before reading: GC keeps the manifest and everything it references.
    lease.add(manifest)?;
    let image = store.image(manifest)?;
    let layers = &image.manifest.layers;
    let diff_ids = &image.config.rootfs.diff_ids;

    // Which layers change, and to what.
    let mut plan: Vec<Option<(Compression, Compression)>> = Vec::with_capacity(layers.len());
    for layer in layers {
        let step = match layer_compression(&layer.media_type) {
            Some(current) => {
                let target = compression.target(current);
                (target != current).then_some((current, target))
            }
            None if compression == LayerCompression::Keep => None,
            None => {
                return Err(ExportError::UnsupportedLayer {
                    layer: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                })
            }
        };
        plan.push(step);
    }

    let manifest_media_type = image.manifest.media_type.clone().unwrap_or_else(|| {
        if image.manifest.config.media_type == media::DOCKER_CONFIG {
            media::DOCKER_MANIFEST.to_string()
        } else {
            media::OCI_MANIFEST.to_string()
        }
    });
    // Layers built here may exist only as snapshots so far: the ones to convert are
    // compressed straight from their snapshot (no uncompressed blob is written), the others
    // get their blob regenerated.
    // Layers converted the same way before are not converted again (see `converted`).
    let mut reused: Vec<Option<Descriptor>> = vec![None; layers.len()];
    let mut sources: Vec<Option<(Digest, std::path::PathBuf)>> = vec![None; layers.len()];
    if diff_ids.len() == layers.len() {
        for (i, layer) in layers.iter().enumerate() {
            let Some((_, to)) = plan[i] else { continue };
            if let Some((digest, size)) = converted::lookup(store.root(), &diff_ids[i], to) {
                // Leased before looking: GC cannot take it away from here on.
                lease.add(&digest)?;
                if store.content.size(&digest).ok() == Some(size) {
                    reused[i] = Some(descriptor(to.media_type(), digest, size));
                    continue;
                }
            }
            sources[i] = super::layer_blob::snapshot_source(store, &lease, layer, diff_ids, i)?;
        }
    }
    super::layer_blob::ensure_image_except(store, &lease, manifest, &|i| {
        sources[i].is_some() || reused[i].is_some()
    })?;
    ready(None, &image.manifest.config);
    for (index, (layer, step)) in layers.iter().zip(&plan).enumerate() {
        if let Some(d) = &reused[index] {
            ready(Some(index), d);
        } else if step.is_none() {
            ready(Some(index), layer);
        }
    }
    if plan.iter().all(Option::is_none) {
        tracing::debug!(%manifest, "no layer changes: shipping the stored manifest");
        return Ok(ExportedImage {
            manifest: descriptor(&manifest_media_type, manifest.clone(), image.manifest_size),
            config: image.manifest.config.clone(),
            layers: layers.clone(),
            lease: Some(Arc::new(lease)),
        });
    }
    if diff_ids.len() != layers.len() {
        return Err(ExportError::InvalidImage {
            manifest: manifest.clone(),
            message: format!(
                "the manifest has {} layers but the config lists {} diff IDs",
                layers.len(),
                diff_ids.len()
            ),
        });
    }

    let new_layers: Vec<Descriptor> = layers
        .par_iter()
        .zip(plan.par_iter())
        .enumerate()
        .map(
            |(index, (layer, step))| match (step, &sources[index], &reused[index]) {
                (_, _, Some(d)) => Ok(d.clone()),
                (Some((_, to)), Some(source), None) => compress_snapshot(
                    store,
                    &lease,
                    (index, layer),
                    source,
                    *to,
                    &diff_ids[index],
                    mirror,
                )
                .inspect(|d| ready(Some(index), d)),
                (Some((from, to)), None, None) => convert_layer(
                    store,
                    &lease,
                    index,
                    layer,
                    (*from, *to),
                    &diff_ids[index],
                    mirror,
                )
                .inspect(|d| ready(Some(index), d)),
                (None, _, None) => {
                    let mut kept = layer.clone();
                    if let Some(c) = layer_compression(&layer.media_type) {
                        kept.media_type = c.media_type().to_string();
                    }
                    Ok(kept)
                }
            },
        )
        .collect::<Result<_>>()?;

    let mut config = image.manifest.config.clone();
    if config.media_type == media::DOCKER_CONFIG {
        config.media_type = media::OCI_CONFIG.to_string();
    }
    let new_manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        config,
        layers: new_layers,
        annotations: image.manifest.annotations.clone(),
    };
    let bytes = to_canonical_json(&new_manifest);
    let (digest, size) = lease.put(&store.content, &bytes)?;
    tracing::info!(from = %manifest, to = %digest, ?compression, "stored manifest with converted layers");
    Ok(ExportedImage {
        manifest: descriptor(media::OCI_MANIFEST, digest, size),
        config: new_manifest.config,
        layers: new_manifest.layers,
        lease: Some(Arc::new(lease)),
    })
}

/// Writes the layer in snapshot directory `dir` compressed into the content store, checking
/// that its tar still hashes to the diff ID (a snapshot changed behind kiln's back is an
/// error, never a different image).
fn compress_snapshot(
    store: &ImageStore,
    lease: &Lease,
    (index, layer): (usize, &Descriptor),
    (chain, dir): &(Digest, std::path::PathBuf),
    to: Compression,
    diff_id: &Digest,
    mirror: Mirror<'_>,
) -> Result<Descriptor> {
    use super::layer_blob::LayerBlobError;
    let conversion = |source| ExportError::LayerConversion {
        layer: layer.digest.clone(),
        index,
        source,
    };
    let writer = Tee::new(store.content.writer()?, mirror(index));
    let mut encoder = LayerEncoder::new(to, writer).map_err(conversion)?;
    let info = super::layer::write_layer(
        dir,
        Compression::Uncompressed,
        &super::layer::LayerOptions::default(),
        &mut encoder,
    )
    .map_err(|source| LayerBlobError::Layer {
        diff_id: diff_id.clone(),
        source,
    })?;
    if &info.diff_id != diff_id {
        return Err(LayerBlobError::Changed {
            chain: chain.clone(),
            dir: dir.clone(),
            expected: diff_id.clone(),
            actual: info.diff_id,
        }
        .into());
    }
    let writer = encoder.finish().map_err(conversion)?.into_main();
    let (digest, size) = lease.commit(writer, None, None)?;
    converted::record(store.root(), diff_id, to, &digest, size);
    tracing::debug!(layer = %layer.digest, to = %digest, ?to, "compressed layer from its snapshot");
    Ok(descriptor(to.media_type(), digest, size))
}

/// Recompresses one layer into the content store, checking its diff ID on the way.
fn convert_layer(
    store: &ImageStore,
    lease: &Lease,
    index: usize,
    layer: &Descriptor,
    (from, to): (Compression, Compression),
    diff_id: &Digest,
    mirror: Mirror<'_>,
) -> Result<Descriptor> {
    let conversion = |source| ExportError::LayerConversion {
        layer: layer.digest.clone(),
        index,
        source,
    };
    let file = store.content.open_blob(&layer.digest)?;
    let raw = BufReader::with_capacity(COPY_BUF, file);
    let mut plain = DigestReader::new(decompressor(from, raw).map_err(conversion)?);
    let writer = Tee::new(store.content.writer()?, mirror(index));
    let mut encoder = LayerEncoder::new(to, writer).map_err(conversion)?;
    copy_large(&mut plain, &mut encoder).map_err(conversion)?;
    let writer = encoder.finish().map_err(conversion)?.into_main();
    let (actual, _) = plain.finish();
    if &actual != diff_id {
        tracing::error!(layer = %layer.digest, index, expected = %diff_id, %actual, "layer does not match its diff ID");
        return Err(ExportError::DiffIdMismatch {
            layer: layer.digest.clone(),
            index,
            expected: diff_id.clone(),
            actual,
        });
    }
    let (digest, size) = lease.commit(writer, None, None)?;
    converted::record(store.root(), diff_id, to, &digest, size);
    tracing::debug!(from = %layer.digest, to = %digest, ?to, "converted layer");
    // Annotations describing the old blob (e.g. eStargz TOC digests) would be wrong now.
    Ok(descriptor(to.media_type(), digest, size))
}

/// A blob being written to the store, and a best-effort copy of it (see [`Mirror`]).
struct Tee {
    main: BlobWriter,
    mirror: Option<Box<dyn Write + Send>>,
}

impl Tee {
    fn new(main: BlobWriter, mirror: Option<Box<dyn Write + Send>>) -> Tee {
        Tee { main, mirror }
    }

    /// The store's writer; the copy ends here.
    fn into_main(self) -> BlobWriter {
        self.main
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.main.write(buf)?;
        if let Some(m) = &mut self.mirror {
            if let Err(e) = m.write_all(&buf[..n]) {
                tracing::debug!(error = %e, "the copy of the layer stopped");
                self.mirror = None;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.main.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------------

/// One image of an archive, after merging duplicates.
struct ArchiveImage<'a> {
    image: &'a ExportedImage,
    tags: Vec<Reference>,
    platform: Option<image::Platform>,
}

/// `manifest.json` entry of a docker-archive.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The platform of an image as index descriptors carry it, read from its config.
fn config_platform(store: &ImageStore, config: &Digest) -> Result<Option<image::Platform>> {
    #[derive(serde::Deserialize)]
    struct PlatformFields {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(rename = "os.version", default)]
        os_version: Option<String>,
        #[serde(default)]
        variant: Option<String>,
    }
    let bytes = store.content.read(config)?;
    Ok(match serde_json::from_slice::<PlatformFields>(&bytes) {
        Ok(p) if !p.os.is_empty() && !p.architecture.is_empty() => Some(image::Platform {
            architecture: p.architecture,
            os: p.os,
            os_version: p.os_version,
            variant: p.variant,
        }),
        _ => None,
    })
}

/// Merges entries naming the same manifest, parses tags and reads platforms.
fn plan_archive<'a>(
    store: &ImageStore,
    images: &'a [(Vec<String>, ExportedImage)],
) -> Result<Vec<ArchiveImage<'a>>> {
    let mut out: Vec<ArchiveImage<'a>> = Vec::new();
    for (tags, image) in images {
        let mut refs = Vec::with_capacity(tags.len());
        for tag in tags {
            let r = Reference::parse(tag)
                .map_err(|source| ExportError::InvalidTag {
                    tag: tag.clone(),
                    source,
                })?
                .with_default_tag();
            if r.digest.is_some() || r.tag.is_none() {
                return Err(ExportError::UntaggedReference { tag: tag.clone() });
            }
            refs.push(r);
        }
        match out
            .iter_mut()
            .find(|a| a.image.manifest.digest == image.manifest.digest)
        {
            Some(existing) => {
                for r in refs {
                    if !existing.tags.contains(&r) {
                        existing.tags.push(r);
                    }
                }
            }
            None => {
                let mut unique: Vec<Reference> = Vec::with_capacity(refs.len());
                for r in refs {
                    if !unique.contains(&r) {
                        unique.push(r);
                    }
                }
                out.push(ArchiveImage {
                    image,
                    tags: unique,
                    platform: config_platform(store, &image.config.digest)?,
                });
            }
        }
    }
    Ok(out)
}

/// Every blob of the archive with its size, sorted by digest.
fn archive_blobs(images: &[ArchiveImage<'_>]) -> Result<BTreeMap<Digest, u64>> {
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for a in images {
        let img = a.image;
        for d in std::iter::once(&img.manifest)
            .chain([&img.config])
            .chain(&img.layers)
        {
            match blobs.get(&d.digest) {
                Some(&size) if size != d.size => {
                    return Err(ExportError::SizeConflict {
                        digest: d.digest.clone(),
                        first: size,
                        second: d.size,
                    })
                }
                Some(_) => {}
                None => {
                    blobs.insert(d.digest.clone(), d.size);
                }
            }
        }
    }
    Ok(blobs)
}

/// `index.json`: one descriptor per tag (Docker 25+ and BuildKit), or one bare descriptor.
fn index_json(images: &[ArchiveImage<'_>]) -> Vec<u8> {
    let mut manifests = Vec::new();
    for a in images {
        let mut base = a.image.manifest.clone();
        base.platform = a.platform.clone();
        base.annotations = BTreeMap::new();
        if a.tags.is_empty() {
            manifests.push(base);
            continue;
        }
        for r in &a.tags {
            let mut d = base.clone();
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_string(), r.to_string());
            d.annotations.insert(
                ANNOTATION_REF_NAME.to_string(),
                r.tag.clone().unwrap_or_default(),
            );
            manifests.push(d);
        }
    }
    to_canonical_json(&Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.to_string()),
        manifests,
        annotations: BTreeMap::new(),
    })
}

fn familiar_tag(r: &Reference) -> String {
    format!(
        "{}:{}",
        r.familiar_repository(),
        r.tag.as_deref().unwrap_or("latest")
    )
}

/// `manifest.json` and `repositories` of a docker-archive.
fn docker_metadata(images: &[ArchiveImage<'_>]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut entries = Vec::with_capacity(images.len());
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for a in images {
        let img = a.image;
        entries.push(DockerManifestEntry {
            config: blob_path(&img.config.digest),
            repo_tags: a.tags.iter().map(familiar_tag).collect(),
            layers: img.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        });
        if let Some(top) = img.layers.last() {
            for r in &a.tags {
                repositories
                    .entry(r.familiar_repository())
                    .or_default()
                    .insert(
                        r.tag.clone().unwrap_or_default(),
                        top.digest.hex().to_string(),
                    );
            }
        }
    }
    // Like Go's json.Encoder (what docker writes): compact with a trailing newline.
    let mut manifest = to_canonical_json(&entries);
    manifest.push(b'\n');
    let repositories = (!repositories.is_empty()).then(|| {
        let mut r = to_canonical_json(&repositories);
        r.push(b'\n');
        r
    });
    (manifest, repositories)
}

/// A tar writer with fixed metadata: mtime 0, uid/gid 0, no names, ustar.
struct ArchiveWriter<W: Write> {
    tar: tar::Builder<BufWriter<W>>,
}

impl<W: Write> ArchiveWriter<W> {
    fn new(out: W) -> Self {
        ArchiveWriter {
            tar: tar::Builder::new(BufWriter::with_capacity(COPY_BUF, out)),
        }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        // Names are ASCII and short (`blobs/sha256/<64 hex>` is 77 bytes); written as is, so
        // directories keep their trailing slash like Go's archive/tar writes them.
        let slot = &mut h.as_old_mut().name;
        if name.len() > slot.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "entry name too long",
            ));
        }
        slot[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        Ok(h)
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        let write = |source| ExportError::Write {
            entry: name.to_string(),
            source,
        };
        let h = Self::header(name, tar::EntryType::Directory, 0o755, 0).map_err(write)?;
        self.tar.append(&h, io::empty()).map_err(write)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let write = |source| ExportError::Write {
            entry: name.to_string(),
            source,
        };
        let h = Self::header(name, tar::EntryType::Regular, 0o644, bytes.len() as u64)
            .map_err(write)?;
        self.tar.append(&h, bytes).map_err(write)
    }

    /// Streams a blob from the content store, re-hashing it on the way.
    fn blob(&mut self, store: &ImageStore, digest: &Digest, size: u64) -> Result<()> {
        let name = blob_path(digest);
        let file: File = store.content.open_blob(digest)?;
        let on_disk = file
            .metadata()
            .map_err(|source| ContentError::Io {
                op: "stat blob",
                path: store.content.blob_path(digest),
                source,
            })?
            .len();
        let mut reader = BufReader::with_capacity(COPY_BUF, DigestReader::new(file).take(size));
        let write = |source| ExportError::Write {
            entry: name.clone(),
            source,
        };
        let h = Self::header(&name, tar::EntryType::Regular, 0o644, size).map_err(write)?;
        self.tar.append(&h, &mut reader).map_err(write)?;
        let (actual, read) = reader.into_inner().into_inner().finish();
        if &actual != digest || read != size || on_disk != size {
            tracing::error!(%digest, %actual, read, size, "blob changed in the content store");
            return Err(ExportError::CorruptBlob {
                digest: digest.clone(),
                actual,
                size: read.max(on_disk),
                expected_size: size,
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let write = |source| ExportError::Write {
            entry: "end of archive".to_string(),
            source,
        };
        let mut out = self.tar.into_inner().map_err(write)?;
        out.flush().map_err(write)
    }
}

fn write_archive(
    store: &ImageStore,
    images: &[(Vec<String>, ExportedImage)],
    out: impl Write,
    docker: bool,
) -> Result<()> {
    let plan = plan_archive(store, images)?;
    let blobs = archive_blobs(&plan)?;
    let mut w = ArchiveWriter::new(out);
    w.dir("blobs/")?;
    w.dir("blobs/sha256/")?;
    for (digest, size) in &blobs {
        w.blob(store, digest, *size)?;
    }
    w.file("index.json", &index_json(&plan))?;
    let (manifest_json, repositories) = if docker {
        let (m, r) = docker_metadata(&plan);
        (Some(m), r)
    } else {
        (None, None)
    };
    if let Some(manifest_json) = manifest_json {
        w.file("manifest.json", &manifest_json)?;
    }
    w.file("oci-layout", OCI_LAYOUT)?;
    if let Some(repositories) = repositories {
        w.file("repositories", &repositories)?;
    }
    let names: BTreeSet<String> = plan
        .iter()
        .flat_map(|a| a.tags.iter().map(|t| t.to_string()))
        .collect();
    tracing::info!(images = plan.len(), blobs = blobs.len(), tags = ?names, docker, "wrote image archive");
    w.finish()
}

/// `kiln save` / `--output type=docker`: ONE tar that is both a docker-archive
/// (`manifest.json` with Config/RepoTags/Layers, `repositories`) and an OCI image layout
/// (`oci-layout`, `index.json` with `io.containerd.image.name` and
/// `org.opencontainers.image.ref.name` annotations, `blobs/sha256/…`), like `docker save` of
/// Docker 25+: `manifest.json`'s Config and Layers paths point into `blobs/sha256/`. Tags are
/// normalized references (`docker.io/library/app:1`); the same image given twice is written
/// once with the tags merged.
pub fn write_docker_archive(
    store: &ImageStore,
    images: &[(Vec<String>, ExportedImage)],
    out: impl Write,
) -> Result<()> {
    write_archive(store, images, out, true)
}

/// `--output type=oci`: an OCI image layout tar (`oci-layout`, `index.json`, `blobs/`) only.
pub fn write_oci_archive(
    store: &ImageStore,
    images: &[(Vec<String>, ExportedImage)],
    out: impl Write,
) -> Result<()> {
    write_archive(store, images, out, false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::image::{History, ImageConfig, RootFs};
    use crate::cache::store::StoredImage;
    use std::os::unix::fs::PermissionsExt;

    /// A layer tar made by hand: `(path, contents, mode)`; paths ending in `/` are directories.
    pub(crate) fn layer_tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, io::empty()).unwrap();
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    /// Some bytes that compress, but not to nothing.
    pub(crate) fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    b'a' + (x % 26) as u8
                } else {
                    (x >> 24) as u8 & 0x0f
                }
            })
            .collect()
    }

    /// A two-layer image with uncompressed layers, committed like a build would.
    pub(crate) fn sample_image(store: &ImageStore) -> StoredImage {
        let big = noise(300_000);
        let layers = [
            layer_tar(&[
                ("etc/", b"", 0o755),
                ("etc/hello.txt", b"hello from kiln\n", 0o644),
            ]),
            layer_tar(&[
                ("usr/", b"", 0o755),
                ("usr/share/", b"", 0o755),
                ("usr/share/blob.bin", &big, 0o644),
            ]),
        ];
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in &layers {
            let (d, size) = store.content.put(l).unwrap();
            diff_ids.push(d.clone());
            descs.push(descriptor(media::OCI_LAYER, d, size));
        }
        let config = ImageConfig {
            created: Some("2024-01-02T03:04:05Z".into()),
            architecture: "amd64".into(),
            os: "linux".into(),
            config: image::ContainerConfig {
                cmd: Some(vec!["/bin/sh".into()]),
                env: Some(vec!["PATH=/usr/bin:/bin".into()]),
                ..Default::default()
            },
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            history: vec![
                History {
                    created_by: Some("COPY hello.txt /etc/".into()),
                    ..Default::default()
                },
                History {
                    created_by: Some("COPY blob.bin /usr/share/".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        store.commit_image(&config, descs).unwrap()
    }

    pub(crate) fn new_store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("root")).unwrap();
        (dir, store)
    }

    /// Every entry of a tar: name, header, data.
    pub(crate) fn tar_entries(bytes: &[u8]) -> Vec<(String, tar::Header, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let header = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, header, data)
            })
            .collect()
    }

    fn uncompressed_digest(store: &ImageStore, layer: &Descriptor) -> Digest {
        let c = layer_compression(&layer.media_type).unwrap();
        let blob = store.content.read(&layer.digest).unwrap();
        assert_eq!(
            detect_compression(&blob),
            c,
            "{} is what its media type says",
            layer.digest
        );
        let mut plain = Vec::new();
        decompressor(c, blob.as_slice())
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        Digest::of(&plain)
    }

    #[test]
    fn keep_gzips_uncompressed_layers_and_keeps_the_image_id() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let out = prepare_for_export(&store, &img.manifest_digest, LayerCompression::Keep).unwrap();
        assert!(out.is_leased());
        assert_ne!(
            out.manifest.digest, img.manifest_digest,
            "layers changed: new manifest"
        );
        assert_eq!(out.manifest.media_type, media::OCI_MANIFEST);
        assert_eq!(&out.config.digest, img.id());
        for (i, l) in out.layers.iter().enumerate() {
            assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
            assert_eq!(store.content.size(&l.digest).unwrap(), l.size);
            assert_eq!(
                uncompressed_digest(&store, l),
                img.config.rootfs.diff_ids[i]
            );
        }
        let blob = store.content.read(&out.layers[0].digest).unwrap();
        assert_eq!(
            &blob[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            "gzip header: no name, mtime 0"
        );
        // The stored manifest is what the descriptor says, and names the same config.
        let stored = store.image(&out.manifest.digest).unwrap();
        assert_eq!(stored.manifest_size, out.manifest.size);
        assert_eq!(stored.manifest.layers, out.layers);
        assert_eq!(stored.id(), img.id());
        // Reproducible: the same export again gives the same bytes.
        let again =
            prepare_for_export(&store, &img.manifest_digest, LayerCompression::Keep).unwrap();
        assert_eq!(again.manifest, out.manifest);
        // Exporting the exported manifest changes nothing: its exact bytes are reused.
        let same =
            prepare_for_export(&store, &out.manifest.digest, LayerCompression::Keep).unwrap();
        assert_eq!(same.manifest, out.manifest);
        assert_eq!(same.layers, out.layers);
    }

    #[test]
    fn every_compression_keeps_diff_ids() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let plain =
            prepare_for_export(&store, &img.manifest_digest, LayerCompression::Uncompressed)
                .unwrap();
        assert_eq!(
            plain.manifest.digest, img.manifest_digest,
            "nothing to convert: stored manifest reused"
        );
        assert_eq!(plain.manifest.size, img.manifest_size);
        let zstd =
            prepare_for_export(&store, &img.manifest_digest, LayerCompression::Zstd).unwrap();
        let gzip_from_zstd =
            prepare_for_export(&store, &zstd.manifest.digest, LayerCompression::Gzip).unwrap();
        let keep_zstd =
            prepare_for_export(&store, &zstd.manifest.digest, LayerCompression::Keep).unwrap();
        assert_eq!(keep_zstd.manifest, zstd.manifest);
        let back = prepare_for_export(
            &store,
            &zstd.manifest.digest,
            LayerCompression::Uncompressed,
        )
        .unwrap();
        assert_eq!(
            back.layers, img.manifest.layers,
            "decompressing gives the original blobs back"
        );
        for (out, media_type) in [
            (&zstd, media::OCI_LAYER_ZSTD),
            (&gzip_from_zstd, media::OCI_LAYER_GZIP),
            (&back, media::OCI_LAYER),
        ] {
            assert_eq!(&out.config.digest, img.id());
            for (i, l) in out.layers.iter().enumerate() {
                assert_eq!(l.media_type, media_type);
                assert_eq!(
                    uncompressed_digest(&store, l),
                    img.config.rootfs.diff_ids[i]
                );
            }
        }
    }

    #[test]
    fn docker_media_types_become_oci_when_a_layer_changes() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let mut m = img.manifest.clone();
        m.media_type = Some(media::DOCKER_MANIFEST.into());
        m.config.media_type = media::DOCKER_CONFIG.into();
        for l in &mut m.layers {
            l.media_type = media::DOCKER_LAYER.into();
        }
        let d = store.put_document(&m, media::DOCKER_MANIFEST).unwrap();
        let kept = prepare_for_export(&store, &d.digest, LayerCompression::Uncompressed).unwrap();
        assert_eq!(
            kept.manifest.media_type,
            media::DOCKER_MANIFEST,
            "reused as stored"
        );
        assert_eq!(kept.manifest.digest, d.digest);
        let out = prepare_for_export(&store, &d.digest, LayerCompression::Gzip).unwrap();
        assert_eq!(out.manifest.media_type, media::OCI_MANIFEST);
        assert_eq!(out.config.media_type, media::OCI_CONFIG);
        assert_eq!(out.config.digest, m.config.digest);
    }

    #[test]
    fn corrupt_layer_fails_the_conversion() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let layer = &img.manifest.layers[1];
        let path = store.content.blob_path(&layer.digest);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2000] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err =
            prepare_for_export(&store, &img.manifest_digest, LayerCompression::Gzip).unwrap_err();
        match &err {
            ExportError::DiffIdMismatch {
                layer: l,
                index,
                expected,
                ..
            } => {
                assert_eq!(
                    (l, *index, expected),
                    (&layer.digest, 1, &img.config.rootfs.diff_ids[1])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // Writing the archive re-hashes blobs: a corrupt one is not shipped.
        let out = prepare_for_export(&store, &img.manifest_digest, LayerCompression::Uncompressed)
            .unwrap();
        let err = write_oci_archive(&store, &[(vec![], out)], io::sink()).unwrap_err();
        assert!(
            matches!(&err, ExportError::CorruptBlob { digest, .. } if digest == &layer.digest),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_layer_media_type() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let mut m = img.manifest.clone();
        m.layers[0].media_type = "application/vnd.example.weird".into();
        let d = store.put_document(&m, media::OCI_MANIFEST).unwrap();
        let kept = prepare_for_export(&store, &d.digest, LayerCompression::Keep).unwrap();
        assert_eq!(kept.layers[0], m.layers[0]);
        assert_eq!(kept.layers[1].media_type, media::OCI_LAYER_GZIP);
        let err = prepare_for_export(&store, &d.digest, LayerCompression::Zstd).unwrap_err();
        assert!(
            matches!(err, ExportError::UnsupportedLayer { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn docker_archive_layout() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let out = prepare_for_export(&store, &img.manifest_digest, LayerCompression::Keep).unwrap();
        let tags = vec![
            "docker.io/library/app:1".to_string(),
            "localhost:5000/team/app:latest".to_string(),
        ];
        let mut tar = Vec::new();
        write_docker_archive(&store, &[(tags.clone(), out.clone())], &mut tar).unwrap();
        let entries = tar_entries(&tar);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut blobs: Vec<String> = [&out.manifest, &out.config]
            .into_iter()
            .chain(&out.layers)
            .map(|d| blob_path(&d.digest))
            .collect();
        blobs.sort();
        let mut want = vec!["blobs/", "blobs/sha256/"];
        want.extend(blobs.iter().map(String::as_str));
        want.extend(["index.json", "manifest.json", "oci-layout", "repositories"]);
        assert_eq!(names, want);
        for (name, h, data) in &entries {
            assert_eq!(h.mtime().unwrap(), 0, "{name}");
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{name}");
            let dir = name.ends_with('/');
            assert_eq!(h.mode().unwrap(), if dir { 0o755 } else { 0o644 }, "{name}");
            assert_eq!(h.entry_type().is_dir(), dir);
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(Digest::of(data).hex(), hex, "blob content matches its name");
            }
        }
        let file = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().2.clone();
        let manifest_json: serde_json::Value =
            serde_json::from_slice(&file("manifest.json")).unwrap();
        assert_eq!(
            manifest_json,
            serde_json::json!([{
                "Config": blob_path(img.id()),
                "RepoTags": ["app:1", "localhost:5000/team/app:latest"],
                "Layers": out.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
            }])
        );
        let top = out.layers[1].digest.hex();
        let repositories: serde_json::Value =
            serde_json::from_slice(&file("repositories")).unwrap();
        assert_eq!(
            repositories,
            serde_json::json!({"app": {"1": top}, "localhost:5000/team/app": {"latest": top}})
        );
        assert_eq!(file("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: Index = serde_json::from_slice(&file("index.json")).unwrap();
        assert_eq!(index.media_type.as_deref(), Some(media::OCI_INDEX));
        assert_eq!(index.manifests.len(), 2, "one descriptor per tag");
        for (d, (name, tag)) in index.manifests.iter().zip([
            ("docker.io/library/app:1", "1"),
            ("localhost:5000/team/app:latest", "latest"),
        ]) {
            assert_eq!(
                (&d.digest, d.size),
                (&out.manifest.digest, out.manifest.size)
            );
            assert_eq!(d.media_type, media::OCI_MANIFEST);
            assert_eq!(d.annotations[ANNOTATION_IMAGE_NAME], name);
            assert_eq!(d.annotations[ANNOTATION_REF_NAME], tag);
            let p = d.platform.as_ref().unwrap();
            assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        }
        // Deterministic: the same save twice gives the same bytes.
        let mut again = Vec::new();
        write_docker_archive(&store, &[(tags, out)], &mut again).unwrap();
        assert!(again == tar, "archives differ");
    }

    #[test]
    fn oci_archive_and_merged_duplicates() {
        let (_d, store) = new_store();
        let img = sample_image(&store);
        let out = prepare_for_export(&store, &img.manifest_digest, LayerCompression::Zstd).unwrap();
        let images = [
            (vec!["docker.io/library/app:1".to_string()], out.clone()),
            (vec![], out.clone()),
            (
                vec![
                    "docker.io/library/app:1".to_string(),
                    "docker.io/library/app:2".to_string(),
                ],
                out.clone(),
            ),
        ];
        let mut tar = Vec::new();
        write_oci_archive(&store, &images, &mut tar).unwrap();
        let entries = tar_entries(&tar);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names.len(), 2 + 4 + 2, "each blob once: {names:?}");
        assert_eq!(&names[names.len() - 2..], ["index.json", "oci-layout"]);
        let index: Index = serde_json::from_slice(&entries[entries.len() - 2].2).unwrap();
        let refs: Vec<&str> = index
            .manifests
            .iter()
            .map(|d| d.annotations[ANNOTATION_REF_NAME].as_str())
            .collect();
        assert_eq!(refs, ["1", "2"]);

        // Untagged: one plain descriptor; tags must be name:tag.
        let mut tar = Vec::new();
        write_oci_archive(&store, &[(vec![], out.clone())], &mut tar).unwrap();
        let entries = tar_entries(&tar);
        let index: Index = serde_json::from_slice(&entries[entries.len() - 2].2).unwrap();
        assert_eq!(index.manifests.len(), 1);
        assert!(index.manifests[0].annotations.is_empty());
        let digest_ref = format!("docker.io/library/app@{}", img.manifest_digest);
        let err =
            write_oci_archive(&store, &[(vec![digest_ref], out.clone())], io::sink()).unwrap_err();
        assert!(
            matches!(err, ExportError::UntaggedReference { .. }),
            "{err:?}"
        );
        let err =
            write_oci_archive(&store, &[(vec!["Bad Name".into()], out)], io::sink()).unwrap_err();
        assert!(matches!(err, ExportError::InvalidTag { .. }), "{err:?}");
    }
}
