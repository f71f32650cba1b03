//! Unpacking a layer while it downloads: the bytes that go into the content store are also
//! fed (bounded channel, so never a whole layer in memory) to a blocking task that unpacks
//! them into a staging directory in overlay-diff form. The staged tree is handed over only
//! after the download's blob was committed (size and digest verified); a failed, restarted
//! or abandoned download discards it, and the unpacker falls back to unpacking the stored
//! blob. So the snapshot never holds anything unverified, and a pull no longer ends with a
//! serial unpack of every layer after the last byte arrived.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cache::layer::{self, UnpackMode};

/// Chunks in flight between the download and the unpacker.
const DEPTH: usize = 64;

enum Msg {
    Data(Bytes),
    /// The blob is committed: the unpacker may report success.
    Verified,
}

/// The feeding side of an unpack that runs while a blob downloads.
pub(crate) struct Unpacker {
    tx: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<Option<Staged>>,
}

/// A layer unpacked (overlay-diff form) from a verified download, waiting to become a
/// snapshot's `fs` directory. Removed when dropped unused.
pub(crate) struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    /// Moves the unpacked tree to `dest`, an empty directory on the same filesystem. On
    /// failure `dest` is an empty directory again (mode 0755), for the caller's fallback.
    pub(crate) fn install(self, dest: &Path) -> io::Result<()> {
        fs::remove_dir(dest)?;
        if let Err(e) = fs::rename(self.dir.path().join("fs"), dest) {
            fs::create_dir(dest)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
            return Err(e);
        }
        Ok(())
    }
}

impl Unpacker {
    /// Starts an unpacker staging under `root` (created if needed).
    pub(crate) fn start(root: &Path) -> io::Result<Unpacker> {
        fs::create_dir_all(root)?;
        let dir = tempfile::Builder::new().prefix("layer-").tempdir_in(root)?;
        let fs_dir = dir.path().join("fs");
        fs::create_dir(&fs_dir)?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))?;
        let (tx, rx) = mpsc::channel(DEPTH);
        let task = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader {
                rx,
                current: Bytes::new(),
                verified: false,
            };
            let unpacked = layer::unpack_layer(&mut reader, &fs_dir, UnpackMode::OverlayDiff)
                .map_err(|e| e.to_string())
                // What follows the end of the tar (padding) must arrive and be verified too.
                .and_then(|_| io::copy(&mut reader, &mut io::sink()).map_err(|e| e.to_string()));
            match unpacked {
                Ok(_) if reader.verified => Some(Staged { dir }),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "streaming unpack abandoned; the stored blob will be unpacked");
                    None
                }
            }
        });
        Ok(Unpacker { tx, task })
    }

    /// Hands a downloaded chunk to the unpacker; false if it has given up (the caller stops
    /// feeding it).
    pub(crate) async fn feed(&self, chunk: Bytes) -> bool {
        self.tx.send(Msg::Data(chunk)).await.is_ok()
    }

    /// The blob was committed: waits for the unpack and returns the staged tree.
    pub(crate) async fn finish(self) -> Option<Staged> {
        let _ = self.tx.send(Msg::Verified).await;
        drop(self.tx);
        self.task.await.ok().flatten()
    }
}

/// The unpacker's view of the download: an error if the download is abandoned before it is
/// verified, end of stream only once it is.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    current: Bytes,
    verified: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current.split_to(n));
                return Ok(n);
            }
            if self.verified {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.current = b,
                Some(Msg::Verified) => self.verified = true,
                None => return Err(io::Error::other("the download was abandoned")),
            }
        }
    }
}
