//! A container's root filesystem: the image's layers as snapshots (unpacked once, shared with
//! builds) plus the container's own writable layer in its directory. With overlayfs the
//! writable layer is `upper`/`work`, and the sandbox mounts the overlay inside the container's
//! mount namespace (nothing to unmount when it dies); with the copying snapshotter it is a
//! full copy of the image tree in `rootfs/`, made at create.

use std::path::{Path, PathBuf};

use super::state::Container;
use super::{io_err, Result, RunError};
use crate::cache::layer::{self, UnpackMode};
use crate::cache::snapshot::{chain_id, Snapshotter};
use crate::cache::store::{ImageStore, StoredImage};
use crate::cache::Digest;

/// The snapshotter of `root` (`snapshot::open_default`: no overlay probe once the root has
/// snapshots).
pub fn open_snapshots(root: &Path) -> Result<Box<dyn Snapshotter>> {
    Ok(crate::cache::snapshot::open_default(root)?)
}

/// Makes sure every prefix of the image's layer chain is a snapshot; returns the top chain id.
pub fn ensure_snapshots(
    store: &ImageStore,
    snapshots: &dyn Snapshotter,
    image: &StoredImage,
) -> Result<Option<Digest>> {
    let diff_ids = &image.config.rootfs.diff_ids;
    if image.manifest.layers.len() != diff_ids.len() {
        return Err(RunError::Image(format!(
            "{}: {} layers but {} diff_ids in its config",
            image.id(),
            image.manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut parent: Option<Digest> = None;
    for (n, blob) in image.manifest.layers.iter().enumerate() {
        let id = chain_id(&diff_ids[..=n]);
        let Some(id) = id else { continue };
        if !snapshots.exists(&id) {
            let content = &store.content;
            let mut fill = |dir: &Path,
                            mode: UnpackMode|
             -> std::result::Result<(), layer::LayerError> {
                let file = content
                    .open_blob(&blob.digest)
                    .map_err(|e| layer::LayerError::Io {
                        op: "open layer blob",
                        path: content.blob_path(&blob.digest),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                layer::unpack_layer(std::io::BufReader::new(file), dir, mode).map(|_| ())
            };
            snapshots.create(&id, parent.as_ref(), &mut fill)?;
        }
        parent = Some(id);
    }
    Ok(parent)
}

/// Prepares the writable layer of a new container in `dir`; returns its kind
/// (`overlay` or `copy`).
pub fn prepare(snapshots: &dyn Snapshotter, dir: &Path, chain: Option<&Digest>) -> Result<String> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io_err("creating", &rootfs))?;
    let upper = dir.join("upper");
    let work = dir.join("work");
    if snapshots.name() == "overlayfs" {
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        // Fails early when the chain is unusable.
        snapshots.overlay_options(chain, &upper, &work)?;
        return Ok("overlay".into());
    }
    let view = snapshots.view(chain)?;
    crate::executor::export_fs::copy_tree_or_file(view.path(), &rootfs).map_err(|e| {
        RunError::Image(format!("copying the image into {}: {e}", rootfs.display()))
    })?;
    view.close()?;
    Ok("copy".into())
}

/// The rootfs path for the sandbox and the overlay options it must mount there (None: the
/// rootfs is a plain copied tree).
pub fn for_sandbox(
    snapshots: &dyn Snapshotter,
    c: &Container,
) -> Result<(PathBuf, Option<String>)> {
    let rootfs = c.path("rootfs");
    if c.config.rootfs_kind == "overlay" {
        let opts = snapshots
            .overlay_options(
                c.config.chain_id.as_ref(),
                &c.path("upper"),
                &c.path("work"),
            )?
            .ok_or_else(|| {
                RunError::Invalid(format!(
                    "container {} needs overlayfs, but the snapshotter is {}",
                    c.short_id(),
                    snapshots.name()
                ))
            })?;
        return Ok((rootfs, Some(opts)));
    }
    Ok((rootfs, None))
}

/// The container's filesystem mounted in the host's mount namespace for as long as the
/// guard lives (`cp` on a stopped container, volume pre-filling).
pub struct HostMount {
    pub path: PathBuf,
    mounted: bool,
}

impl Drop for HostMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts the container's rootfs on its `rootfs/` directory in the host namespace.
pub fn mount_on_host(snapshots: &dyn Snapshotter, c: &Container) -> Result<HostMount> {
    let (path, opts) = for_sandbox(snapshots, c)?;
    let Some(opts) = opts else {
        return Ok(HostMount {
            path,
            mounted: false,
        });
    };
    nix::mount::mount(
        Some("overlay"),
        &path,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| RunError::Container {
        id: c.short_id().to_string(),
        message: format!("mounting its rootfs on {}: {e}", path.display()),
    })?;
    Ok(HostMount {
        path,
        mounted: true,
    })
}
