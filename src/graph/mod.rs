//! From parsed stages to what a build needs: ARG/ENV scoping and expansion ([`scope`]),
//! platforms and predefined build args ([`dispatch`]), the step graph ([`dag`]) and cache keys.

pub mod cache_key;
pub mod dag;
pub mod dispatch;
pub mod scope;

pub use scope::{BuildOptions, Platform, Scope};

/// Errors of the graph layer.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{span}: {message}")]
    Expansion {
        span: crate::parser::Span,
        message: String,
    },
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    Platform(String),
}
