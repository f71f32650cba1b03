//! Uploading a layer while it is being compressed, before its digest is known.
//!
//! A push compresses each layer into the content store; [`Streams::mirror`] gives the
//! compressor a second writer that receives the same compressed bytes (in [`CHUNK`]s, through
//! a bounded channel) and sends them at once in one streamed `PATCH` of an upload session
//! (`POST /v2/<name>/blobs/uploads/`, then `PATCH <location>` with a chunked body). Only when
//! the layer is committed to the store (size and digest known, diff ID checked) does
//! [`Streams::finish`] commit the session with `PUT <location>?digest=<digest>`: the registry
//! checks that digest against the bytes it received, so what it stores is exactly the stored
//! blob. Compression and the registry's ingest (receive, hash, write) thus overlap instead of
//! running one after the other.
//!
//! Anything that goes wrong on the way (the registry refuses streamed `PATCH`es, a
//! connection drops, the compressor fails) only abandons the stream: [`Streams::finish`]
//! returns false and the caller uploads the committed blob the ordinary way (`HEAD`, mount,
//! retried `PUT`). Nothing is ever committed in the registry under a digest the store has
//! not verified.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::client::{Registry, RegistryError, Result};
use crate::cache::image::Descriptor;

/// Bytes per message to the uploading task.
const CHUNK: usize = 4 << 20;
/// Messages in flight per layer (so at most `(DEPTH + 1) * CHUNK` bytes buffered per layer).
const DEPTH: usize = 4;

/// An upload session being fed: where to commit it, and how many bytes it got.
type Sent = Result<(String, u64)>;

/// The streamed uploads of one push, by layer index.
pub(crate) struct Streams {
    /// Set once connected (compression starts before that).
    registry: tokio::sync::watch::Sender<Option<Registry>>,
    /// Repository path (`library/app`).
    path: String,
    /// The reference as the user wrote it, for errors.
    shown: String,
    runtime: tokio::runtime::Handle,
    /// None once stopped: no more streams.
    running: Mutex<Option<HashMap<usize, tokio::task::JoinHandle<Sent>>>>,
}

impl Streams {
    pub(crate) fn new(path: &str, shown: &str, runtime: tokio::runtime::Handle) -> Streams {
        Streams {
            registry: tokio::sync::watch::Sender::new(None),
            path: path.to_string(),
            shown: shown.to_string(),
            runtime,
            running: Mutex::new(Some(HashMap::new())),
        }
    }

    /// The registry to stream to, once connected (streams started before wait for it).
    pub(crate) fn connected(&self, registry: &Registry) {
        self.registry.send_replace(Some(registry.clone()));
    }

    /// Starts streaming layer `index`: returns the writer the compressor copies its output
    /// into (None once stopped). Called from a blocking (non-runtime) thread.
    pub(crate) fn mirror(&self, index: usize) -> Option<Box<dyn Write + Send>> {
        let mut running = self.running.lock().ok()?;
        let running = running.as_mut()?;
        let (tx, rx) = mpsc::channel::<Bytes>(DEPTH);
        let task = self.runtime.spawn(send(
            self.registry.subscribe(),
            self.path.clone(),
            self.shown.clone(),
            rx,
        ));
        if let Some(old) = running.insert(index, task) {
            old.abort();
        }
        Some(Box::new(ChunkSender {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
        }))
    }

    /// Ends every stream and starts no more (the push failed): compressors blocked on a
    /// stream go on without it.
    pub(crate) fn stop(&self) {
        if let Ok(mut running) = self.running.lock() {
            for task in running.take().into_iter().flat_map(HashMap::into_values) {
                task.abort();
            }
        }
    }

    /// Commits layer `index`'s stream as blob `desc` (the committed blob the compressor wrote
    /// along). True if the registry now holds it; false if there was no complete stream and
    /// the caller has to upload the blob itself.
    pub(crate) async fn finish(&self, index: usize, desc: &Descriptor) -> bool {
        let task = self
            .running
            .lock()
            .ok()
            .and_then(|mut r| r.as_mut()?.remove(&index));
        let Some(task) = task else {
            return false;
        };
        let (location, sent) = match task.await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                tracing::debug!(blob = %desc.digest, error = %e, "streamed upload failed; uploading the stored blob");
                return false;
            }
            Err(_) => return false,
        };
        if sent != desc.size {
            tracing::debug!(blob = %desc.digest, sent, size = desc.size, "streamed upload incomplete; uploading the stored blob");
            return false;
        }
        match self.commit(&location, desc).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(blob = %desc.digest, error = %e, "commit of the streamed upload refused; uploading the stored blob");
                false
            }
        }
    }

    async fn commit(&self, location: &str, desc: &Descriptor) -> Result<()> {
        let registry = self
            .registry
            .borrow()
            .clone()
            .ok_or_else(|| RegistryError::Invalid(format!("{}: not connected", self.shown)))?;
        let repo = registry.oci_ref(&self.path, None);
        let token = registry
            .authenticate(&repo, oci_client::RegistryOperation::Push, &self.shown)
            .await?;
        let mut url = reqwest::Url::parse(&registry.url(location)).map_err(|e| {
            registry.protocol(&self.shown, format!("upload location {location:?}: {e}"))
        })?;
        url.query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let res = registry
            .request(reqwest::Method::PUT, url.as_str(), token.as_deref())
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await
            .map_err(|e| registry.transport(&self.shown, &e))?;
        answer(&registry, &self.shown, res, reqwest::StatusCode::CREATED)
            .await
            .map(|_| ())
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens an upload session and sends everything `rx` yields in one streamed `PATCH`.
/// Returns the location to commit and the number of bytes sent.
async fn send(
    mut registry: tokio::sync::watch::Receiver<Option<Registry>>,
    path: String,
    shown: String,
    mut rx: mpsc::Receiver<Bytes>,
) -> Sent {
    let registry = registry
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone())
        .ok_or_else(|| RegistryError::Invalid(format!("{shown}: not connected")))?;
    let repo = registry.oci_ref(&path, None);
    let token = registry
        .authenticate(&repo, oci_client::RegistryOperation::Push, &shown)
        .await?;
    let res = registry
        .request(
            reqwest::Method::POST,
            &registry.url(&format!("/v2/{path}/blobs/uploads/")),
            token.as_deref(),
        )
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .send()
        .await
        .map_err(|e| registry.transport(&shown, &e))?;
    let location = answer(&registry, &shown, res, reqwest::StatusCode::ACCEPTED).await?;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = sent.clone();
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |chunk| {
        counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, io::Error>(chunk)
    });
    let res = registry
        .request(
            reqwest::Method::PATCH,
            &registry.url(&location),
            token.as_deref(),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| registry.transport(&shown, &e))?;
    let location = answer(&registry, &shown, res, reqwest::StatusCode::ACCEPTED).await?;
    Ok((location, sent.load(std::sync::atomic::Ordering::Relaxed)))
}

/// The `Location` of an answer with status `expected`; else the registry's error.
async fn answer(
    registry: &Registry,
    shown: &str,
    res: reqwest::Response,
    expected: reqwest::StatusCode,
) -> Result<String> {
    let status = res.status();
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status != expected {
        let body = res.bytes().await.unwrap_or_default();
        return Err(registry.status_error(shown, status.as_u16(), &body));
    }
    location.ok_or_else(|| {
        RegistryError::Invalid(format!(
            "{shown}: the registry answered {status} without a Location"
        ))
    })
}

/// The compressor's side: batches writes into [`CHUNK`]s for the uploading task. Fails
/// (and the compressor stops copying) once that task is gone.
struct ChunkSender {
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK)).freeze();
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::other("the streamed upload stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        // The end of the stream (a partial one is never committed: its size or digest
        // does not match).
        if !self.buf.is_empty() {
            let _ = self.send();
        }
    }
}
