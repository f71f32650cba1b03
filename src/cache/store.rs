//! The image store: images (manifest + config + layers in the content store), the index of all
//! images (`images/refs.json`: manifest digest → config digest) and the tags pointing at them
//! (`refs.json`: normalized reference → manifest digest).
//!
//! An image's ID is its config digest, as in docker. Documents are written once as canonical
//! bytes ([`to_canonical_json`]) and those bytes are what the digests name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::content::{ContentError, ContentStore};
use super::digest::Digest;
use super::image::{media, to_canonical_json, Descriptor, ImageConfig, Index, Manifest};
use super::refs::{RefError, RefStore};
use crate::reference::Reference;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Refs(#[from] RefError),
    #[error("No such image: {0}")]
    NotFound(String),
    #[error("{name}: ambiguous image ID prefix, it matches {count} images")]
    Ambiguous { name: String, count: usize },
    #[error("invalid {what} {digest}: {message}")]
    Invalid {
        what: &'static str,
        digest: Digest,
        message: String,
    },
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, crate::reference::ReferenceError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An image as stored: its documents, parsed, with their digests.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// Size of the manifest bytes.
    pub manifest_size: u64,
    pub config: ImageConfig,
}

impl StoredImage {
    /// The image ID (config digest).
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Sum of the layer blob sizes (what `docker images` calls SIZE, compressed or not).
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }
}

/// Images, tags and blobs under one root.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    pub content: ContentStore,
    tags: RefStore,
    images: RefStore,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore> {
        Ok(ImageStore {
            root: root.to_path_buf(),
            content: ContentStore::open(root)?,
            tags: RefStore::open(root)?,
            images: RefStore::open(&root.join("images"))?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serializes `value` canonically and stores it; returns its descriptor.
    pub fn put_document<T: Serialize>(&self, value: &T, media_type: &str) -> Result<Descriptor> {
        let bytes = to_canonical_json(value);
        let (digest, size) = self.content.put(&bytes)?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Stores a config and a manifest for `layers` and records the image. Returns it.
    pub fn commit_image(
        &self,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
    ) -> Result<StoredImage> {
        let config_desc = self.put_document(config, media::OCI_CONFIG)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: config_desc,
            layers,
            annotations: BTreeMap::new(),
        };
        let manifest_desc = self.put_document(&manifest, media::OCI_MANIFEST)?;
        self.register(&manifest_desc.digest, &manifest.config.digest)?;
        Ok(StoredImage {
            manifest_digest: manifest_desc.digest,
            manifest_size: manifest_desc.size,
            manifest,
            config: config.clone(),
        })
    }

    /// Records that the manifest `manifest` (already in the content store) is an image.
    pub fn register(&self, manifest: &Digest, config: &Digest) -> Result<()> {
        self.images.set(manifest.as_str(), config)?;
        Ok(())
    }

    /// Reads an image by manifest digest, verifying the stored bytes.
    pub fn image(&self, manifest_digest: &Digest) -> Result<StoredImage> {
        let bytes = self.content.read(manifest_digest)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
                what: "manifest",
                digest: manifest_digest.clone(),
                message: e.to_string(),
            })?;
        let config_bytes = self.content.read(&manifest.config.digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| StoreError::Invalid {
                what: "image config",
                digest: manifest.config.digest.clone(),
                message: e.to_string(),
            })?;
        Ok(StoredImage {
            manifest_digest: manifest_digest.clone(),
            manifest_size: bytes.len() as u64,
            manifest,
            config,
        })
    }

    /// Reads an index / manifest list from the content store.
    pub fn index(&self, digest: &Digest) -> Result<Index> {
        let bytes = self.content.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
            what: "index",
            digest: digest.clone(),
            message: e.to_string(),
        })
    }

    /// Points a tag at an image. Returns the image the tag pointed at before, if any.
    pub fn tag(&self, reference: &Reference, manifest: &Digest) -> Result<Option<Digest>> {
        let name = reference.clone().with_default_tag().to_string();
        Ok(self.tags.set(&name, manifest)?.map(|e| e.digest))
    }

    /// Removes a tag; returns the manifest it pointed at.
    pub fn untag(&self, name: &str) -> Result<Option<Digest>> {
        Ok(self.tags.remove(name)?.map(|e| e.digest))
    }

    /// Every tag: normalized reference → manifest digest.
    pub fn tags(&self) -> Result<BTreeMap<String, Digest>> {
        Ok(self
            .tags
            .list()?
            .into_iter()
            .map(|(k, v)| (k, v.digest))
            .collect())
    }

    /// Every image: manifest digest → config digest (image ID).
    pub fn images(&self) -> Result<BTreeMap<Digest, Digest>> {
        Ok(self
            .images
            .list()?
            .into_iter()
            .filter_map(|(k, v)| Digest::parse(&k).ok().map(|d| (d, v.digest)))
            .collect())
    }

    /// Forgets an image (its blobs stay until garbage collection).
    pub fn forget(&self, manifest: &Digest) -> Result<()> {
        self.images.remove(manifest.as_str())?;
        Ok(())
    }

    /// Finds an image the way docker does: a reference (`app`, `app:1`, `host/app@sha256:…`),
    /// a full or short image ID (config digest, with or without `sha256:`), or a manifest digest.
    pub fn lookup(&self, name: &str) -> Result<StoredImage> {
        if let Ok(r) = Reference::parse(name) {
            if let Some(d) = &r.digest {
                if let Ok(d) = Digest::parse(d) {
                    if self.content.contains(&d) {
                        return self.image(&d);
                    }
                }
            }
            let key = r.with_default_tag().to_string();
            if let Some(entry) = self.tags.get(&key)? {
                return self.image(&entry.digest);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let images = self.images()?;
            let mut found: Vec<&Digest> = images
                .iter()
                .filter(|(_, config)| config.hex().starts_with(hex))
                .map(|(m, _)| m)
                .collect();
            if found.is_empty() {
                found = images
                    .keys()
                    .filter(|m| m.hex().starts_with(hex) && hex.len() == 64)
                    .collect();
            }
            // Several manifests may share a config (same image compressed two ways): same ID.
            found.sort();
            found.dedup();
            let distinct_ids: std::collections::BTreeSet<&Digest> =
                found.iter().filter_map(|m| images.get(*m)).collect();
            match (found.first(), distinct_ids.len()) {
                (Some(m), 1) => return self.image(m),
                (Some(_), n) if n > 1 => {
                    return Err(StoreError::Ambiguous {
                        name: name.to_string(),
                        count: n,
                    })
                }
                _ => {}
            }
        }
        Err(StoreError::NotFound(name.to_string()))
    }

    /// The tags that point at a manifest.
    pub fn tags_of(&self, manifest: &Digest) -> Result<Vec<String>> {
        Ok(self
            .tags()?
            .into_iter()
            .filter(|(_, d)| d == manifest)
            .map(|(k, _)| k)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        }
    }

    #[test]
    fn commit_tag_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let img = store.commit_image(&config(), Vec::new()).unwrap();
        let r = Reference::parse("app").unwrap();
        store.tag(&r, &img.manifest_digest).unwrap();
        assert_eq!(
            store.lookup("app").unwrap().manifest_digest,
            img.manifest_digest
        );
        assert_eq!(
            store.lookup("docker.io/library/app:latest").unwrap().id(),
            img.id()
        );
        assert_eq!(
            store.lookup(img.id().short()).unwrap().manifest_digest,
            img.manifest_digest
        );
        assert_eq!(
            store.lookup(img.id().as_str()).unwrap().manifest_digest,
            img.manifest_digest
        );
        assert!(matches!(
            store.lookup("other"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.tags_of(&img.manifest_digest).unwrap(),
            vec!["docker.io/library/app:latest".to_string()]
        );
        // Same config again: same bytes, same digests.
        let again = store.commit_image(&config(), Vec::new()).unwrap();
        assert_eq!(again.manifest_digest, img.manifest_digest);
    }
}
