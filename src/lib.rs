//! kiln: a container engine. It builds images from Dockerfiles the way BuildKit does, runs
//! them, and moves them to and from OCI registries. The engine is this library; the `kiln`
//! binary (`main.rs` + [`cli`]) is one front door to it.
//!
//! Module map (see docs/ARCHITECTURE.md): [`parser`] (Dockerfile frontend), [`graph`]
//! (ARG/ENV scoping, dispatch into a build plan, cache keys), [`lint`] (`kiln check` rules),
//! [`context`] (build context, `.dockerignore`), [`cache`] (content store, images, snapshots,
//! layers, GC, build cache), [`executor`] (COPY/ADD, RUN sandbox, parallel stages),
//! [`reference`] (image names), [`cli`] (commands).

pub mod cache;
pub mod cli;
pub mod context;
pub mod daemon;
pub mod engine;
pub mod executor;
pub mod graph;
pub mod lint;
pub mod parser;
pub mod push;
pub mod reference;
pub mod run;
