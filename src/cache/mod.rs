//! Local state under `--root`: the content-addressed blob store, image references,
//! snapshots (unpacked layer chains) and layer archives. Knows nothing about Dockerfiles.
//!
//! Layout (under the root):
//! - `blobs/sha256/<hex>`: immutable content (layers, configs, manifests), see [`content`].
//! - `ingest/`: blobs being written (temp files, renamed into `blobs/` once verified).
//! - `refs/`: image references → manifest digests, see [`refs`].
//! - `snapshots/`: unpacked layer chains by chain ID, see [`snapshot`].

pub mod digest;

pub use digest::{Digest, DigestReader, DigestWriter};
