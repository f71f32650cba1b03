//! The build context as a COPY source: `.dockerignore` applies, files become root-owned.

use std::path::PathBuf;

use super::fileop::{SelectedContent, SourceTree};
use super::ExecError;
use crate::context::BuildContext;

/// Adapts an opened [`BuildContext`] to the copy engine.
pub struct ContextTree<'a> {
    context: &'a BuildContext,
    hasher: std::sync::Arc<dyn crate::context::FileHasher>,
}

impl<'a> ContextTree<'a> {
    /// `hasher` is the one the context digests with (so per-file digests for `--explain` come
    /// from the same incremental index).
    pub fn new(
        context: &'a BuildContext,
        hasher: std::sync::Arc<dyn crate::context::FileHasher>,
    ) -> Self {
        ContextTree { context, hasher }
    }

    fn selected(
        &self,
        patterns: &[String],
    ) -> Result<Vec<crate::context::ContextEntry>, ExecError> {
        let mut entries = Vec::new();
        for p in patterns {
            for e in self.context.resolve(p).map_err(ctx_err)? {
                if matches!(e.kind, crate::context::EntryKind::Dir) {
                    entries.extend(self.context.walk(&e.rel, None).map_err(ctx_err)?);
                } else {
                    entries.push(e);
                }
            }
        }
        Ok(entries)
    }
}

fn ctx_err(e: crate::context::ContextError) -> ExecError {
    ExecError::Failed(e.to_string())
}

impl SourceTree for ContextTree<'_> {
    fn matches(&self, pattern: &str) -> Result<Vec<String>, ExecError> {
        Ok(self
            .context
            .resolve(pattern)
            .map_err(ctx_err)?
            .into_iter()
            .map(|e| e.rel)
            .collect())
    }

    fn host_path(&self, rel: &str, follow: bool) -> Result<PathBuf, ExecError> {
        self.context.host_path(rel, follow).map_err(ctx_err)
    }

    fn descendants(&self, rel: &str) -> Result<Vec<String>, ExecError> {
        let entries = self.context.walk(rel, None).map_err(ctx_err)?;
        let prefix = if rel.is_empty() || rel == "." {
            String::new()
        } else {
            format!("{}/", rel.trim_end_matches('/'))
        };
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let r = e
                    .rel
                    .strip_prefix(&prefix)
                    .map(String::from)
                    .unwrap_or(e.rel);
                (!r.is_empty() && r != rel).then_some(r)
            })
            .collect())
    }

    fn preserve_owner(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "build context".into()
    }

    /// Content (paths, types, modes, bytes) of every entry the patterns select, directories
    /// with everything below them; never mtimes. A pattern matching nothing adds nothing
    /// (the copy itself reports it).
    /// Content (paths, types, modes, bytes) of every entry the patterns select, directories
    /// with everything below them; never mtimes. Selected and hashed once; the per-file
    /// digests come from the same (incremental) hasher the aggregate uses.
    fn content(&self, patterns: &[String]) -> Result<Option<SelectedContent>, ExecError> {
        let entries = self.selected(patterns)?;
        let mut files = std::collections::BTreeMap::new();
        for e in &entries {
            if matches!(e.kind, crate::context::EntryKind::File) {
                let d = self.hasher.hash_file(e).map_err(ctx_err)?;
                files.insert(e.rel.clone(), d.to_string());
            }
        }
        let digest = self.context.digest_of(&entries).map_err(ctx_err)?;
        Ok(Some(SelectedContent { digest, files }))
    }
}
