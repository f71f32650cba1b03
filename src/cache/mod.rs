//! Local state under `--root`: the content-addressed blob store, image references,
//! snapshots (unpacked layer chains) and layer archives. Knows nothing about Dockerfiles.
//!
//! Layout (under the root):
//! - `blobs/sha256/<hex>`: immutable content (layers, configs, manifests), see [`content`].
//! - `ingest/`: blobs being written (temp files, renamed into `blobs/` once verified).
//! - `refs.json`: tags → manifest digests; `images/refs.json`: every image (manifest →
//!   config digest), see [`refs`] and [`store`].
//! - `snapshots/`: unpacked layer chains by chain ID, see [`snapshot`].
//! - `leases/`, `gc.lock`: what garbage collection must keep, see [`gc`].

pub mod archive;
pub mod buildcache;
pub mod content;
pub mod converted;
pub mod digest;
pub mod export;
pub mod gc;
pub mod image;
pub mod import;
pub mod layer;
pub mod layer_blob;
pub mod lock;
pub mod pargz;
pub mod refs;
pub mod snapshot;
pub mod store;

pub use digest::{Digest, DigestReader, DigestWriter};
