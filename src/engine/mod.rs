//! The engine as a library facade: the operations both front doors (the `kiln` CLI and the
//! `kiln daemon` API) perform on the state under one root — image listing, inspection,
//! tagging, removal, pruning, garbage collection, archives and builds — with one error type
//! that says what went wrong and how an API should classify it (not found, conflict, bad
//! input, internal). Engine operations publish to an in-process [`events::EventBus`].

pub mod build;
pub mod containers;
pub mod events;
pub mod images;
pub mod networks;
pub mod system;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::snapshot::{self, Snapshotter};
use crate::cache::store::{ImageStore, StoreError};
use crate::graph::dispatch::{ImageSource, ResolvedImage};
use crate::graph::Platform;
use crate::push::client::RegistrySettings;
use crate::push::progress::Silent;
use crate::push::pull::{pull_if_missing, PullOptions};
use crate::reference::Reference;

/// Errors of engine operations, classified the way the API reports them.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Something named does not exist (API status 404).
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (400).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot use the kiln root {}: {source}", path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::cache::snapshot::SnapshotError),
    #[error(transparent)]
    Gc(#[from] crate::cache::gc::GcError),
    #[error(transparent)]
    Export(#[from] crate::cache::export::ExportError),
    #[error(transparent)]
    Import(#[from] crate::cache::import::ImportError),
    /// A build failed (the message is located in the Dockerfile when it can be).
    #[error("{0}")]
    Build(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> EngineError {
        match e {
            StoreError::NotFound(_) => EngineError::NotFound(e.to_string()),
            StoreError::Reference(..) => EngineError::InvalidArgument(e.to_string()),
            e => EngineError::Store(e),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The engine's state under one root, shared by everything a process does with it.
#[derive(Clone)]
pub struct Engine {
    pub root: PathBuf,
    pub store: ImageStore,
    pub events: Arc<events::EventBus>,
}

impl Engine {
    pub fn open(root: &Path) -> Result<Engine> {
        std::fs::create_dir_all(root).map_err(|source| EngineError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let store = ImageStore::open(root)?;
        Ok(Engine {
            root: root.to_path_buf(),
            store,
            events: Arc::new(events::EventBus::new()),
        })
    }

    /// The snapshotter (overlayfs when the kernel has it, else copying).
    pub fn snapshotter(&self) -> Result<Box<dyn Snapshotter>> {
        Ok(snapshot::open_default(&self.root)?)
    }

    /// A scratch directory on the store's filesystem, private to this process and `purpose`
    /// (`tmp/<pid>/<purpose>`). The scratch space of processes that died (killed builds)
    /// is removed here.
    pub fn scratch(&self, purpose: &str) -> PathBuf {
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
        base.join(std::process::id().to_string()).join(purpose)
    }
}

/// Looks up FROM / `--from` images in the local store.
pub struct LocalImages<'a>(pub &'a ImageStore);

impl ImageSource for LocalImages<'_> {
    fn resolve(&self, reference: &str) -> std::result::Result<ResolvedImage, String> {
        let normalized = Reference::parse(reference)
            .map(|r| r.with_default_tag().to_string())
            .map_err(|e| format!("{reference}: {e}"))?;
        match self.0.lookup(reference) {
            Ok(img) => Ok(ResolvedImage {
                reference: normalized,
                manifest_digest: img.manifest_digest.clone(),
                config: img.config,
            }),
            Err(StoreError::NotFound(_)) => Err(format!(
                "image {normalized:?} is not in the local store (load it with `kiln load -i FILE`)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Looks up FROM / `--from` images in the store and pulls the missing ones from their
/// registry (unpacked into `snapshots`, so the build does not unpack them again).
pub struct PullingImages<'a> {
    pub store: &'a ImageStore,
    pub settings: &'a RegistrySettings,
    pub platform: Platform,
    pub snapshots: Option<&'a dyn Snapshotter>,
    /// Say nothing about pulls.
    pub quiet: bool,
}

impl ImageSource for PullingImages<'_> {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        let normalized = Reference::parse(reference)
            .map(|r| r.with_default_tag().to_string())
            .map_err(|e| format!("{reference}: {e}"))?;
        match self.store.lookup(reference) {
            Ok(_) => return LocalImages(self.store).resolve(reference),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        if !self.quiet {
            eprintln!("pulling {normalized}");
        }
        let opts = PullOptions {
            platform: self.platform.clone(),
            settings: self.settings,
            progress: &Silent,
            snapshots: self.snapshots,
        };
        let img = pull_if_missing(self.store, reference, &opts).map_err(|e| {
            format!("image {normalized:?} is not in the local store, and pulling it failed: {e}")
        })?;
        Ok(ResolvedImage {
            reference: normalized,
            manifest_digest: img.manifest_digest.clone(),
            config: img.config,
        })
    }
}
