//! Opening the engine's state under `--root` once per command: the image store and the
//! snapshotter, with errors that say which root could not be used.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cache::snapshot::{self, Snapshotter};
use crate::cache::store::ImageStore;

/// The engine's state for one command.
pub struct Engine {
    pub root: PathBuf,
    pub store: ImageStore,
}

impl Engine {
    pub fn open(root: &Path) -> anyhow::Result<Engine> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the kiln root {}", root.display()))?;
        let store = ImageStore::open(root)
            .with_context(|| format!("cannot open the image store in {}", root.display()))?;
        Ok(Engine {
            root: root.to_path_buf(),
            store,
        })
    }

    /// The snapshotter (overlayfs when the kernel has it, else copying).
    pub fn snapshotter(&self) -> anyhow::Result<Box<dyn Snapshotter>> {
        snapshot::open_default(&self.root)
            .with_context(|| format!("cannot open snapshots in {}", self.root.display()))
    }

    /// A scratch directory on the same filesystem as the store, private to this process
    /// (`tmp/<pid>`); those of processes that died (killed builds) are removed here.
    pub fn tmp(&self) -> PathBuf {
        let base = self.root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    .map(|_| true)
                    .unwrap_or_else(|errno| errno != nix::errno::Errno::ESRCH);
                if !alive {
                    tracing::debug!("removing scratch space of dead process {pid}");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        base.join(std::process::id().to_string())
    }
}

pub use crate::engine::{LocalImages, PullingImages};
