//! Named and anonymous volumes: `ROOT/volumes/<name>/_data` (docker's layout) plus
//! `meta.json`. Data outlives containers; a volume used by any container (running or not)
//! cannot be removed. An empty volume mounted where the image has content is pre-filled with
//! that content, as docker does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::{now_nanos, rfc3339_nanos, Containers};
use super::{io_err, valid_name, Result, RunError};

/// `meta.json` of a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeMeta {
    pub name: String,
    pub created_at: String,
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One volume.
#[derive(Debug, Clone)]
pub struct Volume {
    pub meta: VolumeMeta,
    pub mountpoint: PathBuf,
}

/// The volumes under a root.
pub struct Volumes {
    dir: PathBuf,
    root: PathBuf,
}

impl Volumes {
    pub fn open(root: &Path) -> Result<Volumes> {
        let dir = root.join("volumes");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Volumes {
            dir,
            root: root.to_path_buf(),
        })
    }

    fn load(&self, name: &str) -> Option<Volume> {
        let d = self.dir.join(name);
        let meta: VolumeMeta =
            serde_json::from_slice(&std::fs::read(d.join("meta.json")).ok()?).ok()?;
        Some(Volume {
            meta,
            mountpoint: d.join("_data"),
        })
    }

    pub fn get(&self, name: &str) -> Result<Volume> {
        if !valid_name(name) {
            return Err(RunError::NoSuchVolume(name.to_string()));
        }
        self.load(name)
            .ok_or_else(|| RunError::NoSuchVolume(name.to_string()))
    }

    /// Creates the volume, or returns the existing one of that name (as docker does).
    pub fn create(&self, name: &str, anonymous: bool) -> Result<Volume> {
        if !valid_name(name) {
            return Err(RunError::Invalid(format!(
                "{name:?} includes invalid characters for a local volume name, only \
                 \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
            )));
        }
        if let Some(v) = self.load(name) {
            return Ok(v);
        }
        let tmp = self.dir.join(format!(".new-{name}-{}", std::process::id()));
        let data = tmp.join("_data");
        std::fs::create_dir_all(&data).map_err(io_err("creating", &data))?;
        let meta = VolumeMeta {
            name: name.to_string(),
            created_at: rfc3339_nanos(now_nanos()),
            anonymous,
            labels: Default::default(),
        };
        let bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        std::fs::write(tmp.join("meta.json"), bytes).map_err(io_err("writing", &tmp))?;
        let dest = self.dir.join(name);
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Created concurrently by someone else: use theirs.
            return self.load(name).ok_or_else(|| io_err("creating", &dest)(e));
        }
        Ok(Volume {
            meta,
            mountpoint: dest.join("_data"),
        })
    }

    pub fn list(&self) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(io_err("reading", &self.dir))?
            .flatten()
        {
            if let Some(v) = e.file_name().to_str().and_then(|n| self.load(n)) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Ids of the containers that mount the volume.
    /// How many containers mount each named volume (one listing of the containers).
    pub fn refs(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        Ok(refs_of(&Containers::open(&self.root)?.list()?))
    }

    pub fn users(&self, name: &str) -> Result<Vec<String>> {
        let containers = Containers::open(&self.root)?;
        Ok(containers
            .list()?
            .into_iter()
            .filter(|c| {
                c.config
                    .mounts
                    .iter()
                    .any(|m| m.kind == "volume" && m.source == name)
            })
            .map(|c| c.config.id)
            .collect())
    }

    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        let v = match self.get(name) {
            Ok(v) => v,
            Err(RunError::NoSuchVolume(_)) if force => return Ok(()),
            Err(e) => return Err(e),
        };
        let users = self.users(name)?;
        if let Some(first) = users.first() {
            return Err(RunError::Conflict(format!(
                "remove {name}: volume is in use - [{first}]"
            )));
        }
        let dir = v.mountpoint.parent().unwrap_or(&self.dir).to_path_buf();
        let trash = self.dir.join(format!(".rm-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io_err("removing", &dir))?;
        std::fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))
    }

    /// Removes unused volumes (anonymous ones only unless `all`), returns their names.
    pub fn prune(&self, all: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for v in self.list()? {
            if (all || v.meta.anonymous) && self.users(&v.meta.name)?.is_empty() {
                self.remove(&v.meta.name, true)?;
                removed.push(v.meta.name);
            }
        }
        Ok(removed)
    }
}

/// Copies the image's content at `src` into an empty volume directory (docker's pre-fill).
pub fn prefill(src: &Path, data: &Path) -> Result<()> {
    let empty = std::fs::read_dir(data)
        .map_err(io_err("reading", data))?
        .next()
        .is_none();
    if !empty || !src.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(src)
        .map_err(io_err("reading", src))?
        .flatten()
    {
        crate::executor::export_fs::copy_tree_or_file(&e.path(), &data.join(e.file_name()))
            .map_err(|e| {
                RunError::Invalid(format!("pre-filling volume {}: {e}", data.display()))
            })?;
    }
    // The volume root takes the image directory's owner and mode.
    if let Ok(m) = std::fs::metadata(src) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ = std::os::unix::fs::chown(data, Some(m.uid()), Some(m.gid()));
        let _ = std::fs::set_permissions(data, std::fs::Permissions::from_mode(m.mode() & 0o7777));
    }
    Ok(())
}

/// How many of `containers` mount each named volume.
pub fn refs_of(
    containers: &[crate::run::state::Container],
) -> std::collections::BTreeMap<String, i64> {
    let mut refs = std::collections::BTreeMap::new();
    for c in containers {
        for m in c.config.mounts.iter().filter(|m| m.kind == "volume") {
            *refs.entry(m.source.clone()).or_default() += 1;
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("data"));
        assert!(valid_name("my_vol-1.x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
    }

    #[test]
    fn create_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::open(root.path()).unwrap();
        let a = v.create("data", false).unwrap();
        std::fs::write(a.mountpoint.join("f"), "x").unwrap();
        // Creating again keeps the data.
        let again = v.create("data", false).unwrap();
        assert!(again.mountpoint.join("f").exists());
        v.create("anon0123", true).unwrap();
        assert_eq!(v.list().unwrap().len(), 2);
        assert_eq!(v.prune(false).unwrap(), vec!["anon0123".to_string()]);
        v.remove("data", false).unwrap();
        assert!(v.list().unwrap().is_empty());
        assert!(matches!(
            v.remove("data", false),
            Err(RunError::NoSuchVolume(_))
        ));
    }
}
