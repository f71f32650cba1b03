//! Where container and volume commands go: the store in this process ([`Local`]), or a
//! daemon (`kiln -H …`, implemented on [`super::client::ApiClient`]). Both hand back
//! docker's documents (container summaries and inspect objects), so each command renders
//! its output once, whichever way it went. Errors are the bare messages (printed as
//! `kiln: error: …` either way).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::run::archive::{self, PathStat};
use crate::run::container as lifecycle;
use crate::run::create::CreateOptions;
use crate::run::logs;
use crate::run::state::Containers;
use crate::run::volume::Volumes;

/// What `logs` shows.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub tail: Option<usize>,
    pub follow: bool,
    pub timestamps: bool,
}

pub trait ContainerBackend {
    /// Creates the container (pulling its image when missing); its ID.
    fn create(&self, opts: &CreateOptions) -> anyhow::Result<String>;
    fn start(&self, key: &str) -> anyhow::Result<()>;
    fn stop(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()>;
    fn restart(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()>;
    fn kill(&self, key: &str, signal: Option<&str>) -> anyhow::Result<()>;
    fn remove(&self, key: &str, force: bool, volumes: bool) -> anyhow::Result<()>;
    /// Blocks until the container is not running; its exit code.
    fn wait(&self, key: &str) -> anyhow::Result<i32>;
    /// docker's container summaries, newest first.
    fn list(&self, all: bool) -> anyhow::Result<Vec<Value>>;
    /// docker's inspect object of a container.
    fn inspect(&self, key: &str) -> anyhow::Result<Value>;
    /// docker's inspect object of an image (`inspect` falls back to images, as docker).
    fn inspect_image(&self, key: &str) -> anyhow::Result<Value>;
    /// Writes the container's log to our stdout and stderr.
    fn logs(&self, key: &str, opts: LogOptions) -> anyhow::Result<()>;
    /// Removes the stopped containers; their IDs.
    fn prune(&self) -> anyhow::Result<Vec<String>>;
    /// docker's stat of `path` in the container (a symlink itself); None when it is missing.
    fn stat_path(&self, key: &str, path: &str) -> anyhow::Result<Option<PathStat>>;
    /// `path` as a tar stream whose top entry is named after it.
    fn read_path(&self, key: &str, path: &str) -> anyhow::Result<(PathStat, Box<dyn Read + Send>)>;
    /// Unpacks a tar stream into the container's directory `dir`.
    fn write_path(&self, key: &str, dir: &str, tar: Box<dyn Read + Send>) -> anyhow::Result<()>;
}

pub trait VolumeBackend {
    /// Creates a volume (a random name when `name` is None); its name.
    fn create_volume(&self, name: Option<&str>) -> anyhow::Result<String>;
    fn list_volumes(&self) -> anyhow::Result<Vec<String>>;
    fn inspect_volume(&self, name: &str) -> anyhow::Result<Value>;
    fn remove_volume(&self, name: &str, force: bool) -> anyhow::Result<()>;
    /// Removes unused volumes (anonymous ones only unless `all`); their names.
    fn prune_volumes(&self, all: bool) -> anyhow::Result<Vec<String>>;
}

/// The store under `root`, in this process.
pub struct Local {
    pub root: PathBuf,
}

impl Local {
    pub fn new(root: &Path) -> Local {
        Local {
            root: root.to_path_buf(),
        }
    }

    /// Creates the container (pulling its image when missing).
    pub fn create_container(
        &self,
        opts: &CreateOptions,
    ) -> anyhow::Result<crate::run::state::Container> {
        let engine = super::engine::Engine::open(&self.root)?;
        let snapshots = engine.snapshotter()?;
        super::container::pull_if_missing(&engine, snapshots.as_ref(), &opts.image)?;
        Ok(crate::run::create::create(
            &self.root,
            &engine.store,
            snapshots.as_ref(),
            opts,
        )?)
    }

    fn find(&self, key: &str) -> anyhow::Result<crate::run::state::Container> {
        Ok(Containers::open(&self.root)?.find(key)?)
    }
}

impl ContainerBackend for Local {
    fn create(&self, opts: &CreateOptions) -> anyhow::Result<String> {
        Ok(self.create_container(opts)?.config.id)
    }

    fn start(&self, key: &str) -> anyhow::Result<()> {
        Ok(lifecycle::start_detached(&self.root, &self.find(key)?)?)
    }

    fn stop(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()> {
        Ok(lifecycle::stop(&self.root, &self.find(key)?, timeout)?)
    }

    fn restart(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()> {
        Ok(lifecycle::restart(&self.root, &self.find(key)?, timeout)?)
    }

    fn kill(&self, key: &str, signal: Option<&str>) -> anyhow::Result<()> {
        Ok(lifecycle::kill(&self.root, &self.find(key)?, signal)?)
    }

    fn remove(&self, key: &str, force: bool, volumes: bool) -> anyhow::Result<()> {
        Ok(lifecycle::remove(
            &self.root,
            &self.find(key)?,
            force,
            volumes,
        )?)
    }

    fn wait(&self, key: &str) -> anyhow::Result<i32> {
        Ok(lifecycle::wait(&self.root, &self.find(key)?)?)
    }

    fn list(&self, all: bool) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        for c in Containers::open(&self.root)?.list()? {
            let Ok(s) = c.state() else { continue };
            if all || s.is_running() {
                rows.push((c.config.created, crate::engine::containers::summary(&c, &s)));
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        Ok(rows.into_iter().map(|r| r.1).collect())
    }

    fn inspect(&self, key: &str) -> anyhow::Result<Value> {
        let c = self.find(key)?;
        let s = c.state()?;
        Ok(crate::engine::containers::inspect_json(&c, &s))
    }

    fn inspect_image(&self, key: &str) -> anyhow::Result<Value> {
        let engine = super::engine::Engine::open(&self.root)?;
        let img = engine.store.lookup(key)?;
        let tags = engine.store.tags_of(&img.manifest_digest)?;
        Ok(crate::engine::images::inspect_json(
            &img,
            &tags,
            "overlayfs",
        ))
    }

    fn logs(&self, key: &str, opts: LogOptions) -> anyhow::Result<()> {
        let c = self.find(key)?;
        let show = logs::Show {
            timestamps: opts.timestamps,
        };
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        let offset = logs::print(&c.log_path(), opts.tail, show, &mut out, &mut err)?;
        if opts.follow {
            let c2 = c.clone();
            logs::follow(
                &c.log_path(),
                offset,
                show,
                &mut out,
                &mut err,
                &move || !c2.monitor_alive(),
            )?;
        }
        Ok(())
    }

    fn prune(&self) -> anyhow::Result<Vec<String>> {
        Ok(lifecycle::prune(&self.root)?)
    }

    fn stat_path(&self, key: &str, path: &str) -> anyhow::Result<Option<PathStat>> {
        match archive::stat_in(&self.root, &self.find(key)?, path) {
            Ok(st) => Ok(Some(st)),
            Err(crate::run::RunError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read_path(&self, key: &str, path: &str) -> anyhow::Result<(PathStat, Box<dyn Read + Send>)> {
        let (st, reader) = archive::read_from(&self.root, &self.find(key)?, path)
            .map_err(|e| not_found_in(e, key))?;
        Ok((st, Box::new(reader)))
    }

    fn write_path(&self, key: &str, dir: &str, tar: Box<dyn Read + Send>) -> anyhow::Result<()> {
        archive::write_into(&self.root, &self.find(key)?, dir, tar)
            .map_err(|e| not_found_in(e, key))
    }
}

/// docker's "Could not find the file PATH in container NAME".
fn not_found_in(e: crate::run::RunError, key: &str) -> anyhow::Error {
    match e {
        crate::run::RunError::NotFound(m) => anyhow::anyhow!("{m} in container {key}"),
        e => e.into(),
    }
}

impl VolumeBackend for Local {
    fn create_volume(&self, name: Option<&str>) -> anyhow::Result<String> {
        let (name, anonymous) = match name {
            Some(n) => (n.to_string(), false),
            None => (crate::run::state::new_id(), true),
        };
        Ok(Volumes::open(&self.root)?
            .create(&name, anonymous)?
            .meta
            .name)
    }

    fn list_volumes(&self) -> anyhow::Result<Vec<String>> {
        Ok(Volumes::open(&self.root)?
            .list()?
            .into_iter()
            .map(|v| v.meta.name)
            .collect())
    }

    fn inspect_volume(&self, name: &str) -> anyhow::Result<Value> {
        let v = Volumes::open(&self.root)?.get(name)?;
        Ok(crate::engine::volumes::inspect_json(&v))
    }

    fn remove_volume(&self, name: &str, force: bool) -> anyhow::Result<()> {
        Ok(Volumes::open(&self.root)?.remove(name, force)?)
    }

    fn prune_volumes(&self, all: bool) -> anyhow::Result<Vec<String>> {
        Ok(Volumes::open(&self.root)?.prune(all)?)
    }
}
