//! `kiln build --explain`: for every step that missed the cache, say why, by comparing the
//! step's inputs with those recorded by the last build of the same Dockerfile and target:
//! which file, build arg, env value, command or base image changed.
//!
//! The record of a build (`root/cache/explain/<hash of Dockerfile path + target>.json`) keeps,
//! per step, the inputs its cache key was made of, in readable form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::Digest;

/// The inputs of one step, as they went into its cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Stage name (or `stage-N`) and the step's position in it.
    pub stage: String,
    pub position: usize,
    /// The instruction as shown in progress output.
    pub instruction: String,
    pub key: Option<Digest>,
    pub parent: Option<Digest>,
    /// The stage's base (`scratch`, `image docker.io/…@sha256:…`, `stage build`), first step only.
    pub base: Option<String>,
    /// Environment and build args the step sees (`KEY=VALUE`).
    pub env: Vec<String>,
    /// The command (RUN) after expansion.
    pub command: Vec<String>,
    /// Context files the step reads: relative path → content digest.
    pub files: BTreeMap<String, String>,
}

/// Every step of one build.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildRecord {
    pub steps: Vec<StepRecord>,
}

impl BuildRecord {
    /// Where the record of builds of `dockerfile` for `target` lives.
    pub fn path(kiln_root: &Path, dockerfile: &Path, target: Option<&str>) -> PathBuf {
        let abs = std::fs::canonicalize(dockerfile).unwrap_or_else(|_| dockerfile.to_path_buf());
        let mut id = abs.as_os_str().as_encoded_bytes().to_vec();
        id.push(0);
        id.extend_from_slice(target.unwrap_or("").as_bytes());
        let key = Digest::of(&id);
        kiln_root
            .join("cache")
            .join("explain")
            .join(format!("{}.json", &key.hex()[..32]))
    }

    /// The last record, if any (a damaged record counts as none: it only explains).
    pub fn load(path: &Path) -> Option<BuildRecord> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::cache::lock::write_replace(path, &bytes)
    }

    fn find(&self, stage: &str, position: usize) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| s.stage == stage && s.position == position)
    }
}

fn env_map(env: &[String]) -> BTreeMap<&str, &str> {
    env.iter()
        .map(|e| e.split_once('=').unwrap_or((e.as_str(), "")))
        .collect()
}

/// Why `step` missed the cache, compared with the previous build's record.
pub fn why_missed(previous: Option<&BuildRecord>, step: &StepRecord, no_cache: bool) -> String {
    if no_cache {
        return "the cache is disabled for this step (--no-cache / --no-cache-filter)".into();
    }
    let Some(prev) = previous else {
        return "no earlier build of this Dockerfile and target to compare with".into();
    };
    let Some(old) = prev.find(&step.stage, step.position) else {
        return "a new step: the earlier build had no step here".into();
    };
    let mut reasons = Vec::new();
    if old.instruction != step.instruction {
        reasons.push(format!(
            "the instruction changed (was `{}`)",
            old.instruction
        ));
    }
    if old.base != step.base {
        reasons.push(format!(
            "the base changed: {} → {}",
            old.base.as_deref().unwrap_or("-"),
            step.base.as_deref().unwrap_or("-")
        ));
    }
    let (a, b) = (env_map(&old.env), env_map(&step.env));
    for (k, v) in &b {
        match a.get(k) {
            Some(o) if o != v => reasons.push(format!("{k} changed: {o:?} → {v:?}")),
            None => reasons.push(format!("{k} is new ({v:?})")),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        reasons.push(format!("{k} is no longer set"));
    }
    if old.command != step.command && old.instruction == step.instruction {
        reasons.push("the command changed after expansion".into());
    }
    let mut file_reasons = Vec::new();
    for (path, digest) in &step.files {
        match old.files.get(path) {
            Some(d) if d != digest => file_reasons.push(format!("file {path} changed")),
            None => file_reasons.push(format!("file {path} was added")),
            _ => {}
        }
    }
    for path in old.files.keys().filter(|p| !step.files.contains_key(*p)) {
        file_reasons.push(format!("file {path} was removed"));
    }
    let more = file_reasons.len().saturating_sub(5);
    reasons.extend(file_reasons.into_iter().take(5));
    if more > 0 {
        reasons.push(format!("and {more} more files"));
    }
    if reasons.is_empty() {
        if old.parent != step.parent {
            return "an earlier step of this stage (or its base) was rebuilt".into();
        }
        if old.key == step.key {
            return "same inputs as last time, but the cache entry is gone (pruned?)".into();
        }
        return "its inputs changed".into();
    }
    reasons.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(files: &[(&str, &str)], env: &[&str]) -> StepRecord {
        StepRecord {
            stage: "build".into(),
            position: 2,
            instruction: "COPY . .".into(),
            key: Some(Digest::of(format!("{files:?}{env:?}").as_bytes())),
            parent: Some(Digest::of(b"p")),
            base: None,
            env: env.iter().map(|s| s.to_string()).collect(),
            command: vec![],
            files: files
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn reasons_name_what_changed() {
        let prev = BuildRecord {
            steps: vec![step(&[("a.go", "1"), ("b.go", "2")], &["CGO=0"])],
        };
        let now = step(&[("a.go", "1"), ("b.go", "3"), ("c.go", "4")], &["CGO=1"]);
        let why = why_missed(Some(&prev), &now, false);
        assert!(why.contains("CGO changed: \"0\" → \"1\""), "{why}");
        assert!(
            why.contains("file b.go changed") && why.contains("file c.go was added"),
            "{why}"
        );
        assert_eq!(
            why_missed(None, &now, false),
            "no earlier build of this Dockerfile and target to compare with"
        );
        let mut moved = now.clone();
        moved.position = 9;
        assert!(why_missed(Some(&prev), &moved, false).starts_with("a new step"));
        let mut rebuilt = prev.steps[0].clone();
        rebuilt.parent = Some(Digest::of(b"other"));
        assert_eq!(
            why_missed(Some(&prev), &rebuilt, false),
            "an earlier step of this stage (or its base) was rebuilt"
        );
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = BuildRecord::path(dir.path(), Path::new("/x/Dockerfile"), Some("t"));
        let r = BuildRecord {
            steps: vec![step(&[("a", "1")], &[])],
        };
        r.save(&path).unwrap();
        assert_eq!(BuildRecord::load(&path).unwrap().steps, r.steps);
        assert_ne!(
            path,
            BuildRecord::path(dir.path(), Path::new("/x/Dockerfile"), None)
        );
    }
}
