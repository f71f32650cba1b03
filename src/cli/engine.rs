//! The engine the in-process commands open under `--root`: the library's own
//! ([`crate::engine::Engine`]), which the daemon serves too.

pub use crate::engine::{Engine, LocalImages};
