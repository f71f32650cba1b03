//! `kiln load`: reading image archives into the store.
//!
//! Two formats are accepted, in one tar read sequentially once (optionally compressed as a
//! whole with gzip, zstd, bzip2 or xz, detected by magic bytes):
//! - **OCI image layout** (`oci-layout`, `index.json`, `blobs/sha256/…`): from `skopeo copy
//!   oci-archive:`, buildah, BuildKit, Docker 25+ and kiln. Manifests and indexes are kept
//!   byte for byte, so their digests do not change. A manifest listed in `index.json` is
//!   loaded whatever its platform (it was saved on purpose); from a nested index (a
//!   multi-platform image) every manifest matching the requested platform is loaded and the
//!   index blob is stored too. Tags come from the descriptor annotations:
//!   `io.containerd.image.name` (the full name), else `org.opencontainers.image.ref.name`
//!   when it is a full reference; a bare tag such as `latest` alone leaves the image untagged.
//! - **docker-archive** (`manifest.json` with Config/RepoTags/Layers): from `docker save`
//!   (any version: `<id>/layer.tar` with symlinked duplicates, or Docker 25+'s
//!   `blobs/sha256/…`), `podman save`, `skopeo copy docker-archive:` and kiln. The config is
//!   stored as it is (its digest is the image ID; a `<hex>.json` name must match it), the
//!   layers as they are (compressed or not, detected by magic bytes), and kiln writes an OCI
//!   manifest whose layer media types say how each layer is compressed. Every layer's
//!   uncompressed digest must equal the config's `rootfs.diff_ids[i]`.
//!
//! An archive with both (Docker 25+, `kiln save`) is loaded through `index.json`, keeping the
//! archive's manifests; `manifest.json` adds its RepoTags and any image `index.json` does not
//! list (Docker 25+ lists untagged images only in `manifest.json`).
//!
//! # Ingest
//! Nothing is buffered in memory except the small metadata files. `blobs/sha256/<hex>`
//! entries go straight into the content store, verified against their names (a mismatch is
//! an error and leaves nothing in `blobs/`); a blob the store already has is skipped. Other
//! files (docker-archive layers and configs) are hashed on ingest, and a compressed one is
//! also decompressed and hashed in the same pass, which yields its diff ID. Every blob is
//! recorded in a GC lease as it is committed, and images are registered and tagged only
//! after the whole archive has been read and checked, so a bad archive changes no tag.
//! Blobs of a failed load (complete and verified, but unreferenced) are left to GC.
//!
//! Malformed input is an [`ImportError`] naming the archive entry: a missing
//! `manifest.json`/`index.json`, bad JSON, a missing layer, a path that escapes the archive
//! (`../x`, `/x`, or a symlink pointing outside).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, Cursor, Read, Write};
use std::path::{Component, Path};

use serde::Deserialize;

use super::content::{BlobWriter, ContentError, ContentStore};
use super::digest::{Digest, DigestWriter};
use super::export::{
    copy_large, decompressor, detect_compression, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
};
use super::gc::{GcError, Lease, Leases};
use super::image::{self, media, to_canonical_json, Descriptor, Index, Manifest};
use super::layer::Compression;
use super::store::{ImageStore, StoreError};
use crate::graph::Platform;
use crate::reference::{Reference, ReferenceError};

/// Metadata files (`manifest.json`, `index.json`, configs, manifests) larger than this are
/// refused rather than read into memory.
const METADATA_LIMIT: u64 = 32 << 20;
/// How deep indexes may nest, and how many symlink hops a path may take.
const MAX_DEPTH: usize = 8;

const MANIFEST_JSON: &str = "manifest.json";
const INDEX_JSON: &str = "index.json";
const OCI_LAYOUT_FILE: &str = "oci-layout";
const REPOSITORIES: &str = "repositories";

/// An image `load_archive` put in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub manifest_digest: Digest,
    /// The image ID (config digest).
    pub id: Digest,
    /// Normalized tags applied to it (`docker.io/library/app:1`).
    pub tags: Vec<String>,
}

/// Errors of loading an archive. Each names the archive entry (or blob) involved.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the archive{}: {source}", after_entry(.after))]
    Read {
        /// The last entry read successfully, if any.
        after: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {entry:?} has an unsafe path (absolute, `..`, or a link leading outside the archive)")]
    UnsafePath { entry: String },
    #[error(
        "archive entry {entry:?} is not a valid blob name (expected blobs/sha256/<64 hex digits>)"
    )]
    InvalidBlobName { entry: String },
    #[error("archive entry {entry:?} is corrupt: its content hashes to {actual}, not {expected}")]
    DigestMismatch {
        entry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("archive entry {entry:?} is truncated or padded: {actual} bytes, expected {expected}")]
    SizeMismatch {
        entry: String,
        expected: u64,
        actual: u64,
    },
    #[error("not an image archive: it has neither manifest.json (docker-archive) nor index.json (OCI layout)")]
    NotAnImageArchive,
    #[error("the archive contains no image")]
    NoImages,
    #[error("archive entry {entry:?} is not valid JSON of the expected shape: {source}")]
    InvalidJson {
        entry: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "archive entry {entry:?} is {size} bytes, more than the {limit} bytes allowed for metadata"
    )]
    TooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error("{referenced_by} names {entry:?}, which is not in the archive")]
    MissingEntry {
        entry: String,
        referenced_by: String,
    },
    #[error(
        "{referenced_by} names blob {digest}, which is neither in the archive nor in the store"
    )]
    MissingBlob {
        digest: Digest,
        referenced_by: String,
    },
    #[error(
        "image config {entry:?} lists {diff_ids} diff IDs but its manifest has {layers} layers"
    )]
    LayerCount {
        entry: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error(
        "layer {index} ({entry:?}) has diff ID {actual}, but the image config expects {expected}"
    )]
    DiffIdMismatch {
        entry: String,
        index: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {entry:?} cannot be decompressed: {message}")]
    Decompress { entry: String, message: String },
    #[error("index {index} has no image for platform {platform} (it has: {})", available.join(", "))]
    NoMatchingPlatform {
        index: Digest,
        platform: String,
        available: Vec<String>,
    },
    #[error("{entry:?} names an invalid image reference {name:?}: {source}")]
    InvalidReference {
        entry: String,
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("indexes in the archive nest more than {MAX_DEPTH} levels deep at {index}")]
    TooDeep { index: Digest },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hold a GC lease for the load: {0}")]
    Lease(#[source] GcError),
}

fn after_entry(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" after entry {e:?}"))
        .unwrap_or_default()
}

impl From<GcError> for ImportError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Content(c) => ImportError::Content(c),
            other => ImportError::Lease(other),
        }
    }
}

pub type Result<T, E = ImportError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Reading the tar
// ---------------------------------------------------------------------------------------------

/// The uncompressed digest of a file of the archive.
#[derive(Debug, Clone)]
enum DiffState {
    Known(Digest),
    /// Compressed blob whose diff ID was not computed on ingest (computed when needed).
    Deferred,
    /// Compressed, but does not decompress: an error only if it is used as a layer.
    Failed(String),
}

/// A regular file of the archive, ingested into the content store.
#[derive(Debug, Clone)]
struct FileInfo {
    digest: Digest,
    size: u64,
    compression: Compression,
    diff: DiffState,
}

/// What one pass over the tar leaves behind.
#[derive(Default)]
struct Contents {
    files: HashMap<String, FileInfo>,
    /// Symlinks and hard links: normalized path → normalized target.
    links: HashMap<String, String>,
    /// manifest.json, index.json, oci-layout, repositories.
    meta: HashMap<&'static str, Vec<u8>>,
}

impl Contents {
    /// Follows links to a regular file.
    fn resolve(&self, path: &str) -> Option<(&str, &FileInfo)> {
        let mut p = path;
        for _ in 0..MAX_DEPTH {
            if let Some((k, f)) = self.files.get_key_value(p) {
                return Some((k.as_str(), f));
            }
            p = self.links.get(p)?;
        }
        None
    }
}

/// Normalizes an archive path: `./a//b` → `a/b`. Absolute paths and `..` are refused.
fn normalize(raw: &Path, entry: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| unsafe_path(entry))?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path(entry))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Resolves a symlink target relative to the link's directory, staying inside the archive.
fn resolve_symlink(link: &str, target: &Path, entry: &str) -> Result<String> {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| unsafe_path(entry))?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(|| unsafe_path(entry))?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path(entry)),
        }
    }
    Ok(parts.join("/"))
}

fn unsafe_path(entry: &str) -> ImportError {
    tracing::warn!(entry, "refusing archive entry with an unsafe path");
    ImportError::UnsafePath {
        entry: entry.to_string(),
    }
}

/// Reads up to `n` bytes (fewer only at end of stream) and hands back a reader that yields
/// them again followed by the rest.
/// A reader that first replays bytes already read from `R`.
type Replay<R> = io::Chain<Cursor<Vec<u8>>, R>;

fn peek<R: Read>(mut r: R, n: usize) -> io::Result<(Vec<u8>, Replay<R>)> {
    let mut head = Vec::with_capacity(n);
    (&mut r).take(n as u64).read_to_end(&mut head)?;
    Ok((head.clone(), Cursor::new(head).chain(r)))
}

/// Undoes whole-archive compression (`docker save | gzip`, `.tar.zst`, `.tar.bz2`, `.tar.xz`).
fn open_input<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let (head, stream) = peek(input, 6).map_err(|source| ImportError::Read {
        after: None,
        source,
    })?;
    let reader: Box<dyn Read + 'a> = if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(stream))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(stream))
    } else {
        let compression = detect_compression(&head);
        if compression != Compression::Uncompressed {
            tracing::debug!(?compression, "archive is compressed");
        }
        decompressor(compression, stream).map_err(|source| ImportError::Read {
            after: None,
            source,
        })?
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Copies what it reads into a blob writer; remembers a failure of the underlying stream or
/// of the writer so it is not mistaken for a decompression error.
struct Tee<'w, R> {
    inner: R,
    out: &'w mut BlobWriter,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self
            .inner
            .read(buf)
            .and_then(|n| self.out.write_all(&buf[..n]).map(|()| n));
        match result {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
            other => other,
        }
    }
}

/// Commits an ingest, mapping verification failures to errors naming the entry.
fn commit(
    lease: &Lease,
    writer: BlobWriter,
    entry: &str,
    expected: Option<(&Digest, u64)>,
) -> Result<(Digest, u64)> {
    match lease.commit(writer, expected.map(|e| e.0), expected.map(|e| e.1)) {
        Ok(done) => Ok(done),
        Err(GcError::Content(ContentError::DigestMismatch { expected, actual })) => {
            tracing::error!(entry, %expected, %actual, "archive entry does not match its digest");
            Err(ImportError::DigestMismatch {
                entry: entry.to_string(),
                expected,
                actual,
            })
        }
        Err(GcError::Content(ContentError::SizeMismatch {
            expected, actual, ..
        })) => Err(ImportError::SizeMismatch {
            entry: entry.to_string(),
            expected,
            actual,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Streams one file of the archive into the content store. With `diff`, a compressed file is
/// also decompressed and hashed in the same pass.
fn ingest(
    content: &ContentStore,
    lease: &Lease,
    entry: &str,
    reader: impl Read,
    expected: Option<(&Digest, u64)>,
    diff: bool,
) -> Result<FileInfo> {
    let failed = |source| ImportError::Entry {
        entry: entry.to_string(),
        source,
    };
    let (head, mut stream) = peek(reader, 4).map_err(failed)?;
    let compression = detect_compression(&head);
    let mut writer = content.writer()?;
    let diff = if diff && compression != Compression::Uncompressed {
        let mut tee = Tee {
            inner: &mut stream,
            out: &mut writer,
            failed: None,
        };
        let state = match decompressor(compression, &mut tee) {
            Ok(mut plain) => {
                let mut hash = DigestWriter::new(io::sink());
                match copy_large(&mut plain, &mut hash) {
                    Ok(_) => DiffState::Known(hash.finish().1),
                    Err(e) => DiffState::Failed(e.to_string()),
                }
            }
            Err(e) => DiffState::Failed(e.to_string()),
        };
        if let Some(e) = tee.failed.take() {
            return Err(failed(e));
        }
        // Whatever follows the compressed stream still belongs to the blob.
        copy_large(&mut tee, &mut io::sink()).map_err(failed)?;
        if let DiffState::Failed(message) = &state {
            tracing::debug!(entry, message, "archive file is not a decompressible layer");
        }
        Some(state)
    } else {
        copy_large(&mut stream, &mut writer).map_err(failed)?;
        None
    };
    let (digest, size) = commit(lease, writer, entry, expected)?;
    let diff = match (diff, compression) {
        (Some(state), _) => state,
        // An uncompressed file is its own uncompressed stream.
        (None, Compression::Uncompressed) => DiffState::Known(digest.clone()),
        (None, _) => DiffState::Deferred,
    };
    Ok(FileInfo {
        digest,
        size,
        compression,
        diff,
    })
}

/// Reads a metadata file into memory, refusing huge ones.
fn read_small(reader: impl Read, size: u64, entry: &str) -> Result<Vec<u8>> {
    if size > METADATA_LIMIT {
        return Err(ImportError::TooLarge {
            entry: entry.to_string(),
            size,
            limit: METADATA_LIMIT,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    reader
        .take(METADATA_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ImportError::Entry {
            entry: entry.to_string(),
            source,
        })?;
    Ok(buf)
}

/// Whether a docker-archive file is legacy v1 metadata kiln does not need (`<id>/json`,
/// `<id>/VERSION`).
fn is_legacy_metadata(path: &str) -> bool {
    matches!(path.rsplit_once('/'), Some((dir, "json" | "VERSION")) if !dir.contains('/'))
}

/// A root-level `<64 hex>.json` (a docker-archive config named by its digest).
fn config_name_digest(path: &str) -> Option<Digest> {
    let hex = path.strip_suffix(".json")?;
    if hex.contains('/') {
        return None;
    }
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// One sequential pass over the tar.
fn read_archive(store: &ImageStore, lease: &Lease, input: impl Read) -> Result<Contents> {
    let content = &store.content;
    let mut contents = Contents::default();
    let mut archive = tar::Archive::new(input);
    let mut last: Option<String> = None;
    let entries = archive.entries().map_err(|source| ImportError::Read {
        after: None,
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| ImportError::Read {
            after: last.clone(),
            source,
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = normalize(Path::new(&raw), &raw)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|source| ImportError::Entry {
                        entry: raw.clone(),
                        source,
                    })?
                    .ok_or_else(|| unsafe_path(&raw))?
                    .into_owned();
                let resolved = if kind == tar::EntryType::Symlink {
                    resolve_symlink(&path, &target, &raw)?
                } else {
                    normalize(&target, &raw)?
                };
                contents.links.insert(path.clone(), resolved);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if path.is_empty() {
                    return Err(unsafe_path(&raw));
                }
                let size = entry.header().size().map_err(|source| ImportError::Entry {
                    entry: raw.clone(),
                    source,
                })?;
                let meta = [MANIFEST_JSON, INDEX_JSON, OCI_LAYOUT_FILE, REPOSITORIES]
                    .into_iter()
                    .find(|m| *m == path);
                if let Some(name) = meta {
                    let bytes = read_small(&mut entry, size, &raw)?;
                    contents.meta.insert(name, bytes);
                } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                    let digest = Digest::parse(&format!("sha256:{hex}"))
                        .map_err(|_| ImportError::InvalidBlobName { entry: raw.clone() })?;
                    let info = if lease.protect_existing(content, &digest)?
                        && content.size(&digest)? == size
                    {
                        // Already stored: the archive's copy is skipped (tar skips unread data).
                        existing_blob(content, digest, size)?
                    } else {
                        ingest(
                            content,
                            lease,
                            &raw,
                            &mut entry,
                            Some((&digest, size)),
                            false,
                        )?
                    };
                    contents.files.insert(path.clone(), info);
                } else if path.starts_with("blobs/") || is_legacy_metadata(&path) {
                    tracing::debug!(entry = raw, "skipping archive entry kiln does not use");
                } else {
                    let expected = config_name_digest(&path);
                    let info = ingest(
                        content,
                        lease,
                        &raw,
                        &mut entry,
                        expected.as_ref().map(|d| (d, size)),
                        true,
                    )?;
                    contents.files.insert(path.clone(), info);
                }
            }
            other => tracing::debug!(entry = raw, kind = ?other, "skipping archive entry"),
        }
        last = Some(raw);
    }
    Ok(contents)
}

/// Describes a blob already in the store (sniffing its compression from its first bytes).
fn existing_blob(content: &ContentStore, digest: Digest, size: u64) -> Result<FileInfo> {
    let mut head = Vec::with_capacity(4);
    content
        .open_blob(&digest)?
        .take(4)
        .read_to_end(&mut head)
        .map_err(|source| ContentError::Io {
            op: "read blob",
            path: content.blob_path(&digest),
            source,
        })?;
    let compression = detect_compression(&head);
    let diff = match compression {
        Compression::Uncompressed => DiffState::Known(digest.clone()),
        _ => DiffState::Deferred,
    };
    Ok(FileInfo {
        digest,
        size,
        compression,
        diff,
    })
}

// ---------------------------------------------------------------------------------------------
// Planning: what to register and tag
// ---------------------------------------------------------------------------------------------

/// An image to register, with its tags.
#[derive(Debug)]
struct Plan {
    manifest: Digest,
    config: Digest,
    tags: Vec<Reference>,
}

impl Plan {
    fn add_tags(&mut self, tags: impl IntoIterator<Item = Reference>) {
        for t in tags {
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
    }
}

/// The part of a config this module needs.
#[derive(Deserialize)]
struct ConfigRootFs {
    #[serde(default)]
    rootfs: Option<RootFsDiffIds>,
}

#[derive(Deserialize)]
struct RootFsDiffIds {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// `manifest.json` entry of a docker-archive.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], entry: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| {
        tracing::warn!(entry, error = %source, "invalid JSON in archive");
        ImportError::InvalidJson {
            entry: entry.to_string(),
            source,
        }
    })
}

fn blob_entry(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Makes sure a blob is present and stays so for the load; errors name who referenced it.
fn require_blob(store: &ImageStore, lease: &Lease, d: &Digest, referenced_by: &str) -> Result<()> {
    if lease.protect_existing(&store.content, d)? {
        Ok(())
    } else {
        Err(ImportError::MissingBlob {
            digest: d.clone(),
            referenced_by: referenced_by.to_string(),
        })
    }
}

/// Reads a small stored blob (manifest, index, config).
fn read_blob(store: &ImageStore, d: &Digest) -> Result<Vec<u8>> {
    let size = store.content.size(d)?;
    if size > METADATA_LIMIT {
        return Err(ImportError::TooLarge {
            entry: blob_entry(d),
            size,
            limit: METADATA_LIMIT,
        });
    }
    Ok(store.content.read(d)?)
}

fn diff_ids(bytes: &[u8], entry: &str) -> Result<Vec<Digest>> {
    let config: ConfigRootFs = parse_json(bytes, entry)?;
    Ok(config.rootfs.map(|r| r.diff_ids).unwrap_or_default())
}

/// Parses a reference from an archive, normalized with a tag. A digest-only reference
/// gives no tag.
fn parse_tag(name: &str, entry: &str) -> Result<Option<Reference>> {
    let mut r = Reference::parse(name).map_err(|source| ImportError::InvalidReference {
        entry: entry.to_string(),
        name: name.to_string(),
        source,
    })?;
    if r.digest.is_some() {
        if r.tag.is_none() {
            return Ok(None);
        }
        r.digest = None;
    }
    Ok(Some(r.with_default_tag()))
}

/// The tag an index descriptor's annotations give, if any.
fn annotation_tag(annotations: &BTreeMap<String, String>) -> Result<Option<Reference>> {
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
        return parse_tag(name, INDEX_JSON);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        // A full reference (`app:1`, `host/app`), not a bare tag (`latest`).
        Some(name) if name.contains(['/', ':']) => match parse_tag(name, INDEX_JSON) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(name, error = %e, "ignoring ref name that is not an image reference");
                Ok(None)
            }
        },
        _ => Ok(None),
    }
}

/// Checks an OCI manifest in the store: its config and layers are present, and the config
/// lists one diff ID per layer.
fn plan_manifest(
    store: &ImageStore,
    lease: &Lease,
    digest: &Digest,
    referenced_by: &str,
) -> Result<Plan> {
    require_blob(store, lease, digest, referenced_by)?;
    let entry = blob_entry(digest);
    let manifest: Manifest = parse_json(&read_blob(store, digest)?, &entry)?;
    require_blob(store, lease, &manifest.config.digest, &entry)?;
    for layer in &manifest.layers {
        require_blob(store, lease, &layer.digest, &entry)?;
    }
    let config_entry = blob_entry(&manifest.config.digest);
    let ids = diff_ids(&read_blob(store, &manifest.config.digest)?, &config_entry)?;
    if ids.len() != manifest.layers.len() {
        return Err(ImportError::LayerCount {
            entry: config_entry,
            layers: manifest.layers.len(),
            diff_ids: ids.len(),
        });
    }
    Ok(Plan {
        manifest: digest.clone(),
        config: manifest.config.digest,
        tags: Vec::new(),
    })
}

fn normalize_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `arm64/v8` and `amd64/v1` are the defaults, the same as no variant.
fn normalize_variant<'a>(arch: &str, variant: Option<&'a str>) -> Option<&'a str> {
    match (arch, variant) {
        ("arm64", Some("v8")) | ("amd64", Some("v1")) => None,
        (_, v) => v,
    }
}

pub(crate) fn platform_matches(want: &Platform, have: Option<&image::Platform>) -> bool {
    let Some(have) = have else {
        return true;
    };
    let arch = normalize_arch(&want.arch);
    if have.os != want.os || normalize_arch(&have.architecture) != arch {
        return false;
    }
    match (
        normalize_variant(arch, want.variant.as_deref()),
        normalize_variant(arch, have.variant.as_deref()),
    ) {
        (Some(w), Some(h)) => w == h,
        (None, Some(_)) => false,
        _ => true,
    }
}

pub(crate) fn platform_string(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}

/// The manifests of a nested index that match `platform`.
fn plan_index(
    store: &ImageStore,
    lease: &Lease,
    digest: &Digest,
    referenced_by: &str,
    platform: &Platform,
    depth: usize,
) -> Result<Vec<Plan>> {
    if depth > MAX_DEPTH {
        return Err(ImportError::TooDeep {
            index: digest.clone(),
        });
    }
    require_blob(store, lease, digest, referenced_by)?;
    let entry = blob_entry(digest);
    let index: Index = parse_json(&read_blob(store, digest)?, &entry)?;
    let mut plans = Vec::new();
    let mut available = Vec::new();
    for d in &index.manifests {
        if let Some(p) = &d.platform {
            available.push(platform_string(
                &p.os,
                &p.architecture,
                p.variant.as_deref(),
            ));
        }
        if !platform_matches(platform, d.platform.as_ref()) {
            continue;
        }
        if media::is_manifest(&d.media_type) {
            plans.push(plan_manifest(store, lease, &d.digest, &entry)?);
        } else if media::is_index(&d.media_type) {
            plans.extend(plan_index(
                store,
                lease,
                &d.digest,
                &entry,
                platform,
                depth + 1,
            )?);
        }
    }
    if plans.is_empty() {
        return Err(ImportError::NoMatchingPlatform {
            index: digest.clone(),
            platform: platform_string(&platform.os, &platform.arch, platform.variant.as_deref()),
            available,
        });
    }
    Ok(plans)
}

/// Images listed by `index.json`.
fn plan_oci(
    store: &ImageStore,
    lease: &Lease,
    contents: &Contents,
    platform: &Platform,
) -> Result<Vec<Plan>> {
    let Some(bytes) = contents.meta.get(INDEX_JSON) else {
        return Ok(Vec::new());
    };
    if !contents.meta.contains_key(OCI_LAYOUT_FILE) {
        tracing::warn!(
            "archive has index.json but no oci-layout file; reading it as an OCI layout anyway"
        );
    }
    let index: Index = parse_json(bytes, INDEX_JSON)?;
    let mut plans = Vec::new();
    for d in &index.manifests {
        let tag = annotation_tag(&d.annotations)?;
        if media::is_manifest(&d.media_type) {
            let mut plan = plan_manifest(store, lease, &d.digest, INDEX_JSON)?;
            plan.add_tags(tag);
            plans.push(plan);
        } else if media::is_index(&d.media_type) {
            let mut found = plan_index(store, lease, &d.digest, INDEX_JSON, platform, 1)?;
            // The name belongs to the whole index; it points at the best (first) match.
            if let Some(first) = found.first_mut() {
                first.add_tags(tag);
            }
            plans.extend(found);
        } else {
            tracing::debug!(digest = %d.digest, media_type = d.media_type, "skipping index entry that is not an image");
        }
    }
    Ok(plans)
}

/// The diff ID of a docker-archive layer file, decompressing a stored blob if needed.
fn layer_diff_id(store: &ImageStore, entry: &str, info: &FileInfo) -> Result<Digest> {
    match &info.diff {
        DiffState::Known(d) => Ok(d.clone()),
        DiffState::Failed(message) => Err(ImportError::Decompress {
            entry: entry.to_string(),
            message: message.clone(),
        }),
        DiffState::Deferred => {
            let failed = |e: io::Error| ImportError::Decompress {
                entry: entry.to_string(),
                message: e.to_string(),
            };
            let file = store.content.open_blob(&info.digest)?;
            let mut plain = decompressor(info.compression, BufReader::with_capacity(1 << 20, file))
                .map_err(failed)?;
            let mut hash = DigestWriter::new(io::sink());
            copy_large(&mut plain, &mut hash).map_err(failed)?;
            Ok(hash.finish().1)
        }
    }
}

/// Looks up a file `manifest.json` names.
fn manifest_json_file<'c>(contents: &'c Contents, path: &str) -> Result<(&'c str, &'c FileInfo)> {
    let normalized = normalize(Path::new(path), path)?;
    contents
        .resolve(&normalized)
        .ok_or_else(|| ImportError::MissingEntry {
            entry: path.to_string(),
            referenced_by: MANIFEST_JSON.to_string(),
        })
}

/// Images listed by `manifest.json`; entries whose config an OCI plan already covers only
/// add their tags to it.
fn plan_docker(
    store: &ImageStore,
    lease: &Lease,
    contents: &Contents,
    plans: &mut Vec<Plan>,
) -> Result<()> {
    let Some(bytes) = contents.meta.get(MANIFEST_JSON) else {
        return Ok(());
    };
    let entries: Vec<DockerManifestEntry> = parse_json(bytes, MANIFEST_JSON)?;
    for e in entries {
        let mut tags = Vec::new();
        for t in e.repo_tags.iter().flatten() {
            tags.extend(parse_tag(t, MANIFEST_JSON)?);
        }
        let (_, config) = manifest_json_file(contents, &e.config)?;
        if let Some(plan) = plans.iter_mut().find(|p| p.config == config.digest) {
            plan.add_tags(tags);
            continue;
        }
        let ids = diff_ids(&read_blob(store, &config.digest)?, &e.config)?;
        if ids.len() != e.layers.len() {
            return Err(ImportError::LayerCount {
                entry: e.config.clone(),
                layers: e.layers.len(),
                diff_ids: ids.len(),
            });
        }
        let mut layers = Vec::with_capacity(e.layers.len());
        for (index, (path, expected)) in e.layers.iter().zip(&ids).enumerate() {
            let (_, info) = manifest_json_file(contents, path)?;
            let actual = layer_diff_id(store, path, info)?;
            if &actual != expected {
                tracing::error!(entry = path, index, %expected, %actual, "layer does not match the config's diff ID");
                return Err(ImportError::DiffIdMismatch {
                    entry: path.clone(),
                    index,
                    expected: expected.clone(),
                    actual,
                });
            }
            layers.push(Descriptor {
                media_type: info.compression.media_type().to_string(),
                digest: info.digest.clone(),
                size: info.size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: media::OCI_CONFIG.to_string(),
                digest: config.digest.clone(),
                size: config.size,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations: BTreeMap::new(),
        };
        // Leased before it exists, so GC cannot take it before it is tagged.
        lease.add(&Digest::of(&to_canonical_json(&manifest)))?;
        let stored = store.put_document(&manifest, media::OCI_MANIFEST)?;
        match plans.iter_mut().find(|p| p.manifest == stored.digest) {
            Some(plan) => plan.add_tags(tags),
            None => {
                let mut plan = Plan {
                    manifest: stored.digest,
                    config: config.digest.clone(),
                    tags: Vec::new(),
                };
                plan.add_tags(tags);
                plans.push(plan);
            }
        }
    }
    Ok(())
}

/// Merges plans for the same manifest (an image listed once per tag).
fn merge(plans: Vec<Plan>) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::with_capacity(plans.len());
    for p in plans {
        match out.iter_mut().find(|o| o.manifest == p.manifest) {
            Some(o) => o.add_tags(p.tags),
            None => out.push(p),
        }
    }
    out
}

/// `kiln load -i FILE`: loads a docker-archive (from `docker save`, `podman save`, `skopeo
/// copy docker-archive:`, or `kiln save`) or an OCI archive (`oci-layout` + `index.json`, from
/// `skopeo copy oci-archive:`, buildah, kiln), compressed as a whole or not. Returns what was
/// loaded; its tags are applied to the store. `platform` selects manifests from
/// multi-platform indexes (see the module doc).
pub fn load_archive(
    store: &ImageStore,
    input: impl Read,
    platform: &Platform,
) -> Result<Vec<LoadedImage>> {
    let lease = Leases::acquire(store.root(), "load archive")?;
    let contents = read_archive(store, &lease, open_input(input)?)?;
    if !contents.meta.contains_key(MANIFEST_JSON) && !contents.meta.contains_key(INDEX_JSON) {
        return Err(ImportError::NotAnImageArchive);
    }
    let mut plans = plan_oci(store, &lease, &contents, platform)?;
    plan_docker(store, &lease, &contents, &mut plans)?;
    let plans = merge(plans);
    if plans.is_empty() {
        return Err(ImportError::NoImages);
    }
    let mut loaded = Vec::with_capacity(plans.len());
    for plan in plans {
        store.register(&plan.manifest, &plan.config)?;
        for tag in &plan.tags {
            if let Some(previous) = store.tag(tag, &plan.manifest)? {
                if previous != plan.manifest {
                    tracing::info!(%tag, %previous, "tag moved to the loaded image");
                }
            }
        }
        let tags: Vec<String> = plan.tags.iter().map(ToString::to_string).collect();
        tracing::info!(manifest = %plan.manifest, id = %plan.config, ?tags, "loaded image");
        loaded.push(LoadedImage {
            manifest_digest: plan.manifest,
            id: plan.config,
            tags,
        });
    }
    // Tags now hold what matters; the lease (dropped here) protected it until now.
    drop(lease);
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::export::tests::{layer_tar, new_store, noise, sample_image, tar_entries};
    use crate::cache::export::{
        prepare_for_export, write_docker_archive, write_oci_archive, ExportedImage,
        LayerCompression, LayerEncoder,
    };
    use crate::cache::image::ImageConfig;
    use std::process::Command;

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    enum E<'a> {
        File(&'a [u8]),
        Symlink(&'a str),
        Dir,
    }

    /// A tar with names written raw (so tests can make `../` names the tar crate refuses).
    fn raw_tar(entries: &[(&str, E<'_>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, e) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_mode(0o644);
            let data: &[u8] = match e {
                E::File(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    d
                }
                E::Symlink(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                    b""
                }
                E::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b""
                }
            };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Rebuilds a tar keeping the entries `keep` accepts, possibly changed.
    fn rewrite(tar: &[u8], mut keep: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, mut h, data) in tar_entries(tar) {
            if let Some(data) = keep(&name, data) {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn save(
        store: &ImageStore,
        c: LayerCompression,
        tags: &[&str],
        docker: bool,
    ) -> (ExportedImage, Vec<u8>) {
        let img = sample_image(store);
        let out = prepare_for_export(store, &img.manifest_digest, c).unwrap();
        let images = [(tags.iter().map(|t| t.to_string()).collect(), out.clone())];
        let mut tar = Vec::new();
        if docker {
            write_docker_archive(store, &images, &mut tar).unwrap();
        } else {
            write_oci_archive(store, &images, &mut tar).unwrap();
        }
        (out, tar)
    }

    fn config_of(store: &ImageStore, manifest: &Digest) -> ImageConfig {
        store.image(manifest).unwrap().config
    }

    fn assert_clean(store: &ImageStore) {
        let ingest: Vec<_> = std::fs::read_dir(store.content.ingest_dir())
            .unwrap()
            .collect();
        assert!(ingest.is_empty(), "nothing left in ingest/");
        for (d, _) in store.content.list().unwrap() {
            store.content.verify(&d).unwrap();
        }
    }

    #[test]
    fn round_trip_every_compression_and_format() {
        for c in [
            LayerCompression::Keep,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
            LayerCompression::Uncompressed,
        ] {
            for docker in [true, false] {
                let (_a, src) = new_store();
                let (out, tar) = save(&src, c, &["app:1", "example.com/x/app"], docker);
                let original = config_of(&src, &out.manifest.digest);
                let (_b, dst) = new_store();
                let loaded = load_archive(&dst, tar.as_slice(), &amd64()).unwrap();
                assert_eq!(loaded.len(), 1, "{c:?} docker={docker}");
                let l = &loaded[0];
                assert_eq!(
                    l.id, out.config.digest,
                    "same image ID ({c:?}, docker={docker})"
                );
                assert_eq!(
                    l.manifest_digest, out.manifest.digest,
                    "manifest kept byte for byte"
                );
                assert_eq!(
                    l.tags,
                    ["docker.io/library/app:1", "example.com/x/app:latest"],
                    "{c:?} docker={docker}"
                );
                let img = dst.lookup("app:1").unwrap();
                assert_eq!(img.manifest_digest, l.manifest_digest);
                assert_eq!(img.config.rootfs.diff_ids, original.rootfs.diff_ids);
                assert_eq!(img.manifest.layers, out.layers);
                assert_eq!(dst.images().unwrap()[&l.manifest_digest], l.id);
                assert_clean(&dst);
                // Loading the same archive again is a no-op that reports the same thing.
                assert_eq!(
                    load_archive(&dst, tar.as_slice(), &amd64()).unwrap(),
                    loaded
                );
            }
        }
    }

    #[test]
    fn docker_archive_without_index_builds_an_oci_manifest() {
        for c in [
            LayerCompression::Uncompressed,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
        ] {
            let (_a, src) = new_store();
            let (out, tar) = save(&src, c, &["app:1"], true);
            // Only the docker-archive half: manifest.json pointing into blobs/.
            let tar = rewrite(&tar, |n, d| {
                (n != "index.json" && n != "oci-layout").then_some(d)
            });
            let (_b, dst) = new_store();
            let loaded = load_archive(&dst, tar.as_slice(), &amd64()).unwrap();
            assert_eq!(loaded.len(), 1);
            assert_eq!(loaded[0].id, out.config.digest);
            assert_eq!(loaded[0].tags, ["docker.io/library/app:1"]);
            let img = dst.image(&loaded[0].manifest_digest).unwrap();
            assert_eq!(
                img.manifest.media_type.as_deref(),
                Some(media::OCI_MANIFEST)
            );
            assert_eq!(img.manifest.config.media_type, media::OCI_CONFIG);
            let digests: Vec<_> = img.manifest.layers.iter().map(|l| &l.digest).collect();
            let want: Vec<_> = out.layers.iter().map(|l| &l.digest).collect();
            assert_eq!(digests, want, "layer blobs stored as they were");
            for (l, o) in img.manifest.layers.iter().zip(&out.layers) {
                assert_eq!(
                    l.media_type, o.media_type,
                    "media type follows the compression"
                );
                assert_eq!(l.size, o.size);
            }
            if c == LayerCompression::Uncompressed {
                assert_eq!(
                    loaded[0].manifest_digest, out.manifest.digest,
                    "kiln writes the same canonical manifest"
                );
            }
            assert_clean(&dst);
        }
    }

    /// The pre-25 `docker save` layout: `<id>/layer.tar`, `<id>/json`, `<config hex>.json`,
    /// a symlinked duplicate layer; here with a gzip layer too (hashed in the same pass).
    #[test]
    fn legacy_docker_archive_with_symlinks_and_compressed_layer() {
        let l1 = layer_tar(&[("a.txt", b"first", 0o644)]);
        let l2 = layer_tar(&[("b.bin", &noise(100_000), 0o644)]);
        let mut gz = LayerEncoder::new(Compression::Gzip, Vec::new()).unwrap();
        gz.write_all(&l2).unwrap();
        let l2_gz = gz.finish().unwrap();
        let (d1, d2) = (Digest::of(&l1), Digest::of(&l2));
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}","{d1}"]}}}}"#
        );
        let config_digest = Digest::of(config.as_bytes());
        let config_name = format!("{}.json", config_digest.hex());
        let manifest = format!(
            r#"[{{"Config":"{config_name}","RepoTags":["legacy:v1","localhost:5000/legacy:v2"],"Layers":["aaa/layer.tar","bbb/layer.tar","ccc/layer.tar"]}}]"#
        );
        let tar = raw_tar(&[
            (&config_name, E::File(config.as_bytes())),
            ("aaa/", E::Dir),
            ("aaa/VERSION", E::File(b"1.0")),
            ("aaa/json", E::File(b"{}")),
            ("aaa/layer.tar", E::File(&l1)),
            ("bbb/", E::Dir),
            ("bbb/layer.tar", E::File(&l2_gz)),
            ("ccc/", E::Dir),
            ("ccc/layer.tar", E::Symlink("../aaa/layer.tar")),
            ("manifest.json", E::File(manifest.as_bytes())),
            ("repositories", E::File(br#"{"legacy":{"v1":"ccc"}}"#)),
        ]);
        let (_d, store) = new_store();
        let loaded = load_archive(&store, tar.as_slice(), &amd64()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, config_digest);
        assert_eq!(
            loaded[0].tags,
            ["docker.io/library/legacy:v1", "localhost:5000/legacy:v2"]
        );
        let img = store.image(&loaded[0].manifest_digest).unwrap();
        let layers: Vec<(&str, &Digest)> = img
            .manifest
            .layers
            .iter()
            .map(|l| (l.media_type.as_str(), &l.digest))
            .collect();
        let gz_digest = Digest::of(&l2_gz);
        assert_eq!(
            layers,
            [
                (media::OCI_LAYER, &d1),
                (media::OCI_LAYER_GZIP, &gz_digest),
                (media::OCI_LAYER, &d1)
            ]
        );
        assert_eq!(
            store.content.read(&config_digest).unwrap(),
            config.as_bytes(),
            "config bytes kept"
        );
        assert!(
            !store.content.contains(&Digest::of(b"{}")),
            "legacy v1 json is skipped"
        );

        // A wrong layer: the error names it and its position.
        let bad_manifest = manifest.replace(r#""aaa/layer.tar","bbb"#, r#""bbb/layer.tar","bbb"#);
        let tar = raw_tar(&[
            (&config_name, E::File(config.as_bytes())),
            ("aaa/layer.tar", E::File(&l1)),
            ("bbb/layer.tar", E::File(&l2_gz)),
            ("ccc/layer.tar", E::Symlink("../aaa/layer.tar")),
            ("manifest.json", E::File(bad_manifest.as_bytes())),
        ]);
        let (_d, store) = new_store();
        let err = load_archive(&store, tar.as_slice(), &amd64()).unwrap_err();
        match &err {
            ImportError::DiffIdMismatch {
                entry,
                index,
                expected,
                actual,
            } => assert_eq!(
                (entry.as_str(), *index, expected, actual),
                ("bbb/layer.tar", 0, &d1, &d2)
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("bbb/layer.tar"), "{err}");
        assert!(store.tags().unwrap().is_empty(), "nothing tagged");
        assert!(store.images().unwrap().is_empty(), "nothing registered");
    }

    #[test]
    fn whole_archive_compression_is_undone() {
        let (_a, src) = new_store();
        let (out, tar) = save(&src, LayerCompression::Keep, &["app:1"], true);
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut enc = LayerEncoder::new(c, Vec::new()).unwrap();
            enc.write_all(&tar).unwrap();
            let packed = enc.finish().unwrap();
            let (_b, dst) = new_store();
            let loaded = load_archive(&dst, packed.as_slice(), &amd64()).unwrap();
            assert_eq!(loaded[0].manifest_digest, out.manifest.digest, "{c:?}");
        }
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let (_b, dst) = new_store();
        let loaded = load_archive(&dst, xz.finish().unwrap().as_slice(), &amd64()).unwrap();
        assert_eq!(loaded[0].manifest_digest, out.manifest.digest, "xz");
    }

    #[test]
    fn bad_archives_are_clear_errors() {
        let (_a, src) = new_store();
        let (out, tar) = save(&src, LayerCompression::Gzip, &["app:1"], true);
        let load = |bytes: &[u8]| {
            let (dir, dst) = new_store();
            let r = load_archive(&dst, bytes, &amd64());
            (dir, dst, r)
        };

        // No metadata at all.
        let only_blobs = rewrite(&tar, |n, d| n.starts_with("blobs/").then_some(d));
        let (_d, dst, r) = load(&only_blobs);
        assert!(matches!(r, Err(ImportError::NotAnImageArchive)), "{r:?}");
        assert_clean(&dst);
        let (_d, _s, r) = load(b"");
        assert!(matches!(r, Err(ImportError::NotAnImageArchive)), "{r:?}");

        // A blob that does not match its name: error naming it, nothing partial in blobs/.
        let victim = blob_entry(&out.layers[1].digest);
        let corrupt = rewrite(&tar, |n, mut d| {
            if n == victim {
                d[100] ^= 0xff;
            }
            Some(d)
        });
        let (_d, dst, r) = load(&corrupt);
        match &r {
            Err(ImportError::DigestMismatch {
                entry, expected, ..
            }) => {
                assert_eq!((entry, expected), (&victim, &out.layers[1].digest));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!dst.content.contains(&out.layers[1].digest));
        assert_clean(&dst);
        assert!(dst.tags().unwrap().is_empty());

        // Path traversal, absolute paths, escaping symlinks.
        for (name, e) in [
            ("../escape", E::File(b"x")),
            ("blobs/../../escape", E::File(b"x")),
            ("/etc/passwd", E::File(b"x")),
            ("layer.tar", E::Symlink("../../etc/passwd")),
            ("layer.tar", E::Symlink("/etc/passwd")),
        ] {
            let bad = raw_tar(&[("manifest.json", E::File(b"[]")), (name, e)]);
            let (_d, _s, r) = load(&bad);
            match &r {
                Err(err @ ImportError::UnsafePath { entry }) => {
                    assert_eq!(entry, name);
                    assert!(err.to_string().contains(name), "{err}");
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }

        // A layer missing from the archive.
        let no_layer = rewrite(&tar, |n, d| (n != "index.json" && n != victim).then_some(d));
        let (_d, _s, r) = load(&no_layer);
        match &r {
            Err(
                e @ ImportError::MissingEntry {
                    entry,
                    referenced_by,
                },
            ) => {
                assert_eq!(
                    (entry.as_str(), referenced_by.as_str()),
                    (victim.as_str(), "manifest.json")
                );
                assert!(e.to_string().contains(&victim));
            }
            other => panic!("unexpected {other:?}"),
        }
        let no_layer_oci = rewrite(&tar, |n, d| (n != victim).then_some(d));
        let (_d, _s, r) = load(&no_layer_oci);
        assert!(
            matches!(&r, Err(ImportError::MissingBlob { digest, .. }) if digest == &out.layers[1].digest),
            "{r:?}"
        );

        // Bad JSON, named.
        for entry in ["manifest.json", "index.json"] {
            let bad = rewrite(&tar, |n, d| {
                Some(if n == entry { b"{not json".to_vec() } else { d })
            });
            let (_d, _s, r) = load(&bad);
            assert!(
                matches!(&r, Err(ImportError::InvalidJson { entry: e, .. }) if e == entry),
                "{r:?}"
            );
        }
        let bad_blob_name = raw_tar(&[("blobs/sha256/xyz", E::File(b"x"))]);
        let (_d, _s, r) = load(&bad_blob_name);
        assert!(
            matches!(&r, Err(ImportError::InvalidBlobName { entry }) if entry == "blobs/sha256/xyz"),
            "{r:?}"
        );

        // Config named by a digest it does not have.
        let wrong = format!("{}.json", Digest::of(b"other").hex());
        let bad = raw_tar(&[(&wrong, E::File(b"{}"))]);
        let (_d, dst, r) = load(&bad);
        assert!(
            matches!(&r, Err(ImportError::DigestMismatch { entry, .. }) if entry == &wrong),
            "{r:?}"
        );
        assert!(dst.content.list().unwrap().is_empty());

        // Garbage and truncation: errors, no panics.
        let (_d, _s, r) = load(&noise(5000));
        assert!(r.is_err());
        for cut in [100, 700, tar.len() / 2, tar.len() - 1100] {
            let (_d, dst, r) = load(&tar[..cut]);
            assert!(r.is_err(), "truncated at {cut}");
            assert_clean(&dst);
        }
        let mut gz = LayerEncoder::new(Compression::Gzip, Vec::new()).unwrap();
        gz.write_all(&tar).unwrap();
        let packed = gz.finish().unwrap();
        let (_d, _s, r) = load(&packed[..packed.len() / 2]);
        assert!(
            matches!(r, Err(ImportError::Read { .. } | ImportError::Entry { .. })),
            "{r:?}"
        );
    }

    /// Tags from index annotations, an untagged image listed only in manifest.json (as
    /// Docker 25+ writes it), and multi-platform indexes.
    #[test]
    fn oci_tags_and_platforms() {
        let (_a, src) = new_store();
        let img = sample_image(&src);
        let out = prepare_for_export(&src, &img.manifest_digest, LayerCompression::Keep).unwrap();
        let mut tar = Vec::new();
        write_oci_archive(&src, &[(vec![], out.clone())], &mut tar).unwrap();
        let with_index = |index: &Index, extra: &[(&str, &[u8])]| {
            let mut b = rewrite(&tar, |n, d| (n != "index.json").then_some(d));
            b.truncate(b.len() - 1024); // drop the end-of-archive blocks, append more
            let mut more: Vec<(String, Vec<u8>)> =
                vec![("index.json".into(), to_canonical_json(index))];
            more.extend(extra.iter().map(|(n, d)| (n.to_string(), d.to_vec())));
            let refs: Vec<(&str, E<'_>)> =
                more.iter().map(|(n, d)| (n.as_str(), E::File(d))).collect();
            b.extend(raw_tar(&refs));
            b
        };
        let desc = |ann: &[(&str, &str)]| {
            let mut d = out.manifest.clone();
            d.annotations = ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            d
        };
        let index_of = |manifests: Vec<Descriptor>| Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests,
            annotations: BTreeMap::new(),
        };
        for (ann, want) in [
            (vec![(ANNOTATION_REF_NAME, "latest")], vec![]),
            (
                vec![(ANNOTATION_REF_NAME, "example.com/app:2")],
                vec!["example.com/app:2"],
            ),
            (
                vec![(ANNOTATION_REF_NAME, "app:3")],
                vec!["docker.io/library/app:3"],
            ),
            (
                vec![
                    (ANNOTATION_REF_NAME, "3"),
                    (ANNOTATION_IMAGE_NAME, "docker.io/library/app:3"),
                ],
                vec!["docker.io/library/app:3"],
            ),
        ] {
            let (_b, dst) = new_store();
            let archive = with_index(&index_of(vec![desc(&ann)]), &[]);
            let loaded = load_archive(&dst, archive.as_slice(), &amd64()).unwrap();
            assert_eq!(loaded[0].tags, want, "{ann:?}");
            assert_eq!(loaded[0].manifest_digest, out.manifest.digest);
        }

        // Docker 25+: an untagged image appears only in manifest.json.
        let manifest_json = serde_json::json!([{
            "Config": blob_entry(&out.config.digest),
            "RepoTags": null,
            "Layers": out.layers.iter().map(|l| blob_entry(&l.digest)).collect::<Vec<_>>(),
        }])
        .to_string();
        let archive = with_index(
            &index_of(vec![]),
            &[("manifest.json", manifest_json.as_bytes())],
        );
        let (_b, dst) = new_store();
        let loaded = load_archive(&dst, archive.as_slice(), &amd64()).unwrap();
        assert_eq!((loaded.len(), &loaded[0].id), (1, &out.config.digest));
        assert!(loaded[0].tags.is_empty());
        let archive = with_index(&index_of(vec![]), &[]);
        let (_b, dst) = new_store();
        assert!(matches!(
            load_archive(&dst, archive.as_slice(), &amd64()),
            Err(ImportError::NoImages)
        ));

        // A multi-platform index: only the host's manifest is loaded, and it gets the name.
        let mut arm_config = img.config.clone();
        arm_config.architecture = "arm64".into();
        arm_config.variant = Some("v8".into());
        let arm = src.commit_image(&arm_config, out.layers.clone()).unwrap();
        let plat = |arch: &str, variant: Option<&str>| image::Platform {
            architecture: arch.into(),
            os: "linux".into(),
            os_version: None,
            variant: variant.map(Into::into),
        };
        let mut amd_desc = out.manifest.clone();
        amd_desc.platform = Some(plat("amd64", None));
        let arm_desc = Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: arm.manifest_digest.clone(),
            size: arm.manifest_size,
            platform: Some(plat("arm64", Some("v8"))),
            annotations: BTreeMap::new(),
        };
        let nested = to_canonical_json(&index_of(vec![amd_desc, arm_desc]));
        let nested_digest = Digest::of(&nested);
        let arm_manifest = src.content.read(&arm.manifest_digest).unwrap();
        let arm_cfg = src.content.read(arm.id()).unwrap();
        let top = index_of(vec![Descriptor {
            media_type: media::OCI_INDEX.into(),
            digest: nested_digest.clone(),
            size: nested.len() as u64,
            platform: None,
            annotations: [(
                ANNOTATION_IMAGE_NAME.to_string(),
                "docker.io/library/multi:1".to_string(),
            )]
            .into(),
        }]);
        let (n1, n2, n3) = (
            blob_entry(&nested_digest),
            blob_entry(&arm.manifest_digest),
            blob_entry(arm.id()),
        );
        let archive = with_index(
            &top,
            &[(&n1, &nested), (&n2, &arm_manifest), (&n3, &arm_cfg)],
        );
        for (platform, want) in [
            (amd64(), &out.manifest.digest),
            (
                Platform {
                    os: "linux".into(),
                    arch: "arm64".into(),
                    variant: None,
                },
                &arm.manifest_digest,
            ),
        ] {
            let (_b, dst) = new_store();
            let loaded = load_archive(&dst, archive.as_slice(), &platform).unwrap();
            assert_eq!(loaded.len(), 1, "{platform:?}");
            assert_eq!(&loaded[0].manifest_digest, want);
            assert_eq!(loaded[0].tags, ["docker.io/library/multi:1"]);
            assert!(
                dst.content.contains(&nested_digest),
                "the index blob is stored"
            );
        }
        let (_b, dst) = new_store();
        let s390x = Platform {
            os: "linux".into(),
            arch: "s390x".into(),
            variant: None,
        };
        let err = load_archive(&dst, archive.as_slice(), &s390x).unwrap_err();
        assert!(
            matches!(&err, ImportError::NoMatchingPlatform { index, available, .. } if index == &nested_digest && available.len() == 2),
            "{err:?}"
        );
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    }

    // -----------------------------------------------------------------------------------------
    // Interop with real tools (skipped, saying so, when they are not installed)
    // -----------------------------------------------------------------------------------------

    fn have(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn skopeo() -> Command {
        let mut c = Command::new("skopeo");
        c.arg("--insecure-policy");
        c
    }

    fn unpack_tar(bytes: &[u8], dir: &Path) {
        tar::Archive::new(bytes).unpack(dir).unwrap();
    }

    /// kiln's archives read by skopeo and umoci, and skopeo's archives loaded by kiln and
    /// saved back out unchanged.
    #[test]
    fn interop_with_skopeo_and_umoci() {
        if !have("skopeo") {
            println!("skipped: skopeo not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (_a, src) = new_store();
        let img = sample_image(&src);
        for c in [
            LayerCompression::Keep,
            LayerCompression::Zstd,
            LayerCompression::Uncompressed,
        ] {
            let out = prepare_for_export(&src, &img.manifest_digest, c).unwrap();
            let images = [(
                vec!["docker.io/library/kilntest:v1".to_string()],
                out.clone(),
            )];
            let docker_tar = tmp.path().join(format!("{c:?}-docker.tar"));
            let oci_tar = tmp.path().join(format!("{c:?}-oci.tar"));
            write_docker_archive(&src, &images, std::fs::File::create(&docker_tar).unwrap())
                .unwrap();
            write_oci_archive(&src, &images, std::fs::File::create(&oci_tar).unwrap()).unwrap();

            // skopeo reads both halves of the docker archive, and the OCI archive.
            let config = run(skopeo()
                .args(["inspect", "--config", "--raw"])
                .arg(format!("docker-archive:{}", docker_tar.display())));
            assert_eq!(Digest::of(&config), out.config.digest, "{c:?}");
            let info: serde_json::Value = serde_json::from_slice(&run(skopeo()
                .arg("inspect")
                .arg(format!("docker-archive:{}", docker_tar.display()))))
            .unwrap();
            assert_eq!(info["RepoTags"], serde_json::json!([]), "{info}");
            assert_eq!(info["Layers"].as_array().map(Vec::len), Some(2));
            for archive in [&docker_tar, &oci_tar] {
                let raw = run(skopeo()
                    .args(["inspect", "--raw"])
                    .arg(format!("oci-archive:{}", archive.display())));
                assert_eq!(
                    Digest::of(&raw),
                    out.manifest.digest,
                    "{c:?} {}",
                    archive.display()
                );
            }

            // umoci unpacks the OCI layout (it knows gzip and uncompressed layers).
            if have("umoci") && c != LayerCompression::Zstd {
                let layout = tmp.path().join(format!("{c:?}-layout"));
                let bundle = tmp.path().join(format!("{c:?}-bundle"));
                unpack_tar(&std::fs::read(&oci_tar).unwrap(), &layout);
                run(Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:v1", layout.display()))
                    .arg(&bundle));
                let hello = std::fs::read(bundle.join("rootfs/etc/hello.txt")).unwrap();
                assert_eq!(hello, b"hello from kiln\n");
                assert_eq!(
                    std::fs::read(bundle.join("rootfs/usr/share/blob.bin")).unwrap(),
                    noise(300_000)
                );
            }
        }
        if !have("umoci") {
            println!("skipped: umoci not installed");
        }

        // skopeo: kiln docker-archive → oci-archive (gzip layers) → kiln → saved back.
        let out =
            prepare_for_export(&src, &img.manifest_digest, LayerCompression::Uncompressed).unwrap();
        let images = [(
            vec!["docker.io/library/kilntest:v1".to_string()],
            out.clone(),
        )];
        let docker_tar = tmp.path().join("plain-docker.tar");
        write_docker_archive(&src, &images, std::fs::File::create(&docker_tar).unwrap()).unwrap();
        let skopeo_oci = tmp.path().join("skopeo-oci.tar");
        run(skopeo()
            .arg("copy")
            .arg(format!("docker-archive:{}", docker_tar.display()))
            .arg(format!("oci-archive:{}:kilntest:v1", skopeo_oci.display())));
        let skopeo_manifest: Manifest = serde_json::from_slice(&run(skopeo()
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", skopeo_oci.display()))))
        .unwrap();
        let (_b, dst) = new_store();
        let loaded =
            load_archive(&dst, std::fs::File::open(&skopeo_oci).unwrap(), &amd64()).unwrap();
        assert_eq!(
            loaded[0].id, out.config.digest,
            "same image ID through skopeo's OCI archive"
        );
        assert_eq!(
            loaded[0].tags,
            ["docker.io/library/kilntest:v1"],
            "ref name kilntest:v1 is a full reference"
        );
        let back =
            prepare_for_export(&dst, &loaded[0].manifest_digest, LayerCompression::Keep).unwrap();
        assert_eq!(back.config.digest, out.config.digest);
        let layer_digests =
            |ls: &[Descriptor]| ls.iter().map(|l| l.digest.clone()).collect::<Vec<_>>();
        assert_eq!(
            layer_digests(&back.layers),
            layer_digests(&skopeo_manifest.layers)
        );
        assert_eq!(
            back.manifest.digest, loaded[0].manifest_digest,
            "skopeo's manifest shipped as is"
        );
        let resaved = tmp.path().join("resaved-oci.tar");
        write_oci_archive(
            &dst,
            &[(loaded[0].tags.clone(), back)],
            std::fs::File::create(&resaved).unwrap(),
        )
        .unwrap();
        let raw = run(skopeo()
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", resaved.display())));
        assert_eq!(Digest::of(&raw), loaded[0].manifest_digest);

        // skopeo: kiln oci-archive (gzip) → docker-archive (skopeo decompresses) → kiln → saved back.
        let gz = prepare_for_export(&src, &img.manifest_digest, LayerCompression::Gzip).unwrap();
        let oci_tar = tmp.path().join("gzip-oci.tar");
        write_oci_archive(
            &src,
            &[(vec!["docker.io/library/kilntest:v1".into()], gz.clone())],
            std::fs::File::create(&oci_tar).unwrap(),
        )
        .unwrap();
        let skopeo_docker = tmp.path().join("skopeo-docker.tar");
        run(skopeo()
            .arg("copy")
            .arg(format!("oci-archive:{}", oci_tar.display()))
            .arg(format!(
                "docker-archive:{}:kilntest:v2",
                skopeo_docker.display()
            )));
        let (_c, dst) = new_store();
        let loaded =
            load_archive(&dst, std::fs::File::open(&skopeo_docker).unwrap(), &amd64()).unwrap();
        assert_eq!(
            loaded[0].id, gz.config.digest,
            "same image ID through skopeo's docker archive"
        );
        assert_eq!(loaded[0].tags, ["docker.io/library/kilntest:v2"]);
        let back = prepare_for_export(
            &dst,
            &loaded[0].manifest_digest,
            LayerCompression::Uncompressed,
        )
        .unwrap();
        assert_eq!(back.config.digest, gz.config.digest);
        assert_eq!(
            layer_digests(&back.layers),
            img.config.rootfs.diff_ids,
            "skopeo's uncompressed layers kept"
        );
        let resaved = tmp.path().join("resaved-docker.tar");
        write_docker_archive(
            &dst,
            &[(loaded[0].tags.clone(), back)],
            std::fs::File::create(&resaved).unwrap(),
        )
        .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&run(skopeo()
            .arg("inspect")
            .arg(format!("docker-archive:{}", resaved.display()))))
        .unwrap();
        let skopeo_layers: Vec<String> = info["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = img
            .config
            .rootfs
            .diff_ids
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(skopeo_layers, want);
        let config = run(skopeo()
            .args(["inspect", "--config", "--raw"])
            .arg(format!("docker-archive:{}", resaved.display())));
        assert_eq!(Digest::of(&config), gz.config.digest);
        println!(
            "interop ok: {} / {}",
            String::from_utf8_lossy(&run(Command::new("skopeo").arg("--version"))).trim(),
            if have("umoci") {
                String::from_utf8_lossy(&run(Command::new("umoci").arg("--version")))
                    .trim()
                    .to_string()
            } else {
                "no umoci".into()
            }
        );
    }
}
