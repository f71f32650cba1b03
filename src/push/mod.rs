//! Talking to OCI registries (the Distribution API): pull, push, login and build cache
//! through a registry.
//!
//! - [`client`]: one registry connection (scheme, credentials, oci-client, retries, errors).
//! - [`pull`] / [`push`]: images between the store and a registry.
//! - [`cache_export`]: build cache records plus their layers, to and from a registry or a
//!   local directory.
//! - [`credentials`]: docker-compatible credentials (config.json `auths`, `credsStore`,
//!   `credHelpers`); [`challenge`]: `WWW-Authenticate` parsing and token requests;
//!   [`token`]: bearer tokens (identity-token refresh grant, scopes of kiln's own, login).
//! - [`sources`]: which repositories hold a blob (for cross-repository mounts);
//!   [`progress`]: per-blob progress events; `stream`: layers uploaded while they compress.

pub mod cache_export;
pub mod challenge;
pub mod client;
pub mod credentials;
pub mod progress;
pub mod pull;
#[allow(clippy::module_inception)]
pub mod push;
pub mod sources;
mod stream;
mod tee;
pub mod token;

pub use client::{Registry, RegistryError, RegistrySettings};
