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
}

pub use crate::engine::LocalImages;
