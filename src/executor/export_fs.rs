//! `--output type=local|tar`: the target stage's files, exported as a directory or a tar.

use std::io::Write;
use std::path::Path;

use super::ExecError;

/// Writes the tree at `root` as a tar (ownership, modes, symlinks, hard links kept).
pub fn write_tar(root: &Path, out: impl Write) -> Result<(), ExecError> {
    write_tar_named(root, ".", out)
}

/// Writes `path` (a directory and everything in it, or one file) as a tar stream whose top
/// entry is named `name` (`.`: a directory's contents); symlinks are archived as links, never
/// followed (`docker cp`, the daemon's archive endpoint).
pub fn write_tar_named(path: &Path, name: &str, out: impl Write) -> Result<(), ExecError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let failed = |e| ExecError::io(path, e);
    if std::fs::symlink_metadata(path).map_err(failed)?.is_dir() {
        builder.append_dir_all(name, path).map_err(failed)?;
    } else {
        builder.append_path_with_name(path, name).map_err(failed)?;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(failed)
}

/// Copies the tree at `root` into `dest` (created if missing), preserving ownership and modes.
pub fn copy_tree(root: &Path, dest: &Path) -> Result<(), ExecError> {
    std::fs::create_dir_all(dest).map_err(|e| ExecError::io(dest, e))?;
    let (reader, writer) = std::io::pipe().map_err(|e| ExecError::io(root, e))?;
    let src = root.to_path_buf();
    let producer = std::thread::spawn(move || write_tar(&src, writer));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let unpacked = archive.unpack(dest).map_err(|e| ExecError::io(dest, e));
    drop(archive);
    let produced = producer
        .join()
        .map_err(|_| ExecError::Failed("the exporting thread panicked".into()))?;
    produced.and(unpacked)
}

/// Copies a file or a directory tree to `dest` (which must not exist), keeping owners and modes.
pub fn copy_tree_or_file(src: &Path, dest: &Path) -> Result<(), ExecError> {
    let meta = std::fs::metadata(src).map_err(|e| ExecError::io(src, e))?;
    if meta.is_dir() {
        return copy_tree(src, dest);
    }
    std::fs::copy(src, dest).map_err(|e| ExecError::io(dest, e))?;
    use std::os::unix::fs::MetadataExt;
    nix::unistd::chown(
        dest,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    )
    .map_err(|e| ExecError::io(dest, e.into()))
}
