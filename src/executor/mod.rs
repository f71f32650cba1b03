//! Carrying out a build plan: file operations (COPY/ADD/WORKDIR) and RUN steps (in namespaced
//! sandboxes) into layers, a snapshot per step, the build cache, and the final image in the
//! store. Independent stages run at the same time (see `build::Builder::run_stages`).

pub mod build;
pub mod context_tree;
pub mod download;
pub mod explain;
pub mod export_fs;
pub mod fileop;
pub mod rootfs;
pub mod run_step;
pub mod sandbox;
pub mod schedule;
pub mod user;

use std::path::{Path, PathBuf};

use crate::parser::Span;

/// Why a build step failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Path { path: String, message: String },
    #[error("invalid user {spec:?}: {message}")]
    User { spec: String, message: String },
    /// A step could not do its work (a missing source, a failed command, a bad mount…).
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Store(String),
    /// A step failed: carries its location and the instruction.
    #[error("Dockerfile:{span}: {instruction}: {message}")]
    Step {
        span: Span,
        instruction: String,
        message: String,
    },
}

impl ExecError {
    pub fn io(path: &Path, source: std::io::Error) -> ExecError {
        ExecError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Attaches the failing step's location and text.
    pub fn at(self, span: Span, instruction: &str) -> ExecError {
        match self {
            e @ ExecError::Step { .. } => e,
            e => ExecError::Step {
                span,
                instruction: instruction.to_string(),
                message: e.to_string(),
            },
        }
    }
}
