//! What pull and push report while they work, per blob, in docker's words ("Pulling fs
//! layer", "Downloading", "Pull complete", "Layer already exists", "Mounted from …").
//! The CLI draws progress bars from it; library callers may ignore it ([`Silent`]).

use crate::cache::Digest;

/// Receives transfer events. Called from several tasks at once.
pub trait Progress: Send + Sync {
    /// A blob of `size` bytes enters the list with a status (`Pulling fs layer`, `Preparing`).
    fn start(&self, _blob: &Digest, _size: u64, _status: &str) {}
    /// `bytes` more bytes of the blob went over the wire.
    fn advance(&self, _blob: &Digest, _bytes: u64) {}
    /// The transfer restarts from zero (after a dropped connection).
    fn restart(&self, _blob: &Digest) {}
    /// The blob's line gets a new status (`Download complete`, `Pushed`).
    fn status(&self, _blob: &Digest, _status: &str) {}
    /// A line of its own (`latest: Pulling from library/busybox`, `Digest: …`).
    fn message(&self, _text: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
