//! A build as the API asks for it: a context (a tar stream or a directory), the Dockerfile's
//! path inside it, tags, build args, labels, a target, `nocache`. It parses, plans against
//! the local store, runs the executor and tags the result; progress goes to a
//! [`BuildProgress`] that also learns the plan before the first step (the classic builder's
//! `Step N/M` numbering needs it). Failures are located in the Dockerfile like the CLI's.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::events::Event;
use super::{Engine, EngineError, Result};
use crate::cache::store::StoredImage;
use crate::context::{BuildContext, ContextSource, PlainFileHasher};
use crate::executor::build::{Builder, NoCache, Progress};
use crate::executor::run_step::RunSettings;
use crate::executor::ExecError;
use crate::graph::dispatch::{dispatch, DispatchOptions, Plan};
use crate::graph::{BuildOptions, GraphError, Platform};
use crate::lint::{render, Problem};
use crate::parser::{self, SourceLines, Span};
use crate::reference::Reference;

/// What to build.
pub struct BuildRequest {
    pub context: ContextSource,
    /// Registry settings for pulling missing FROM images (None: the engine's own).
    pub registry: Option<crate::push::client::RegistrySettings>,
    /// The Dockerfile's path inside the context (`Dockerfile` by default).
    pub dockerfile: String,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub platform: Option<String>,
}

/// One stage of the plan as a progress display shows it.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// The label the executor uses in step names (`build`, `stage-0`).
    pub label: String,
    /// The stage's FROM line as written.
    pub from: String,
    /// The instructions after FROM as written (continuation lines joined).
    pub steps: Vec<String>,
}

/// The source text of an instruction, continuation lines joined with spaces.
fn instruction_text(src: &SourceLines, span: Span) -> String {
    (span.start_line..=span.end_line.max(span.start_line))
        .filter_map(|n| src.line(n))
        .map(|l| l.trim().trim_end_matches('\\').trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Receives the plan, then the executor's step events.
pub trait BuildProgress: Progress + Sync {
    fn planned(&self, stages: &[PlannedStage]);
}

/// The built image and the tags it got.
pub struct Built {
    pub image: StoredImage,
    pub tags: Vec<Reference>,
}

/// A failure printed like `kiln check` does: file:line:col, source line, caret.
fn located(file: &str, src: &SourceLines, span: Span, message: String) -> EngineError {
    let text = render::problem_text(&Problem::error(span, "BuildError", message), file, src);
    EngineError::Build(text.trim_end().to_string())
}

fn planned_stages(plan: &Plan, src: &SourceLines) -> Vec<PlannedStage> {
    plan.stages
        .iter()
        .map(|s| PlannedStage {
            label: s
                .name
                .clone()
                .unwrap_or_else(|| format!("stage-{}", s.index)),
            from: instruction_text(src, s.span),
            steps: s
                .ops
                .iter()
                .map(|o| instruction_text(src, o.span))
                .collect(),
        })
        .collect()
}

/// Runs a build and tags the result; publishes `build` and `tag` image events.
pub fn build(engine: &Engine, req: BuildRequest, progress: &dyn BuildProgress) -> Result<Built> {
    let tags = req
        .tags
        .iter()
        .map(|t| {
            Reference::parse(t)
                .map(|r| r.with_default_tag())
                .map_err(|e| EngineError::InvalidArgument(format!("invalid tag {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let hasher: Arc<dyn crate::context::FileHasher> = Arc::new(PlainFileHasher);
    let context = BuildContext::open(req.context, None)
        .map_err(|e| EngineError::InvalidArgument(format!("opening the build context: {e}")))?
        .with_hasher(hasher.clone());
    let bytes = context.read_build_file(&req.dockerfile).map_err(|e| {
        EngineError::InvalidArgument(format!(
            "Cannot locate specified Dockerfile: {}: {e}",
            req.dockerfile
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        EngineError::InvalidArgument(format!("the Dockerfile {} is not UTF-8", req.dockerfile))
    })?;
    let file_name = req.dockerfile.as_str();
    let src = SourceLines::new(&text);
    let dockerfile =
        parser::parse(&text).map_err(|e| located(file_name, &src, e.span(), e.to_string()))?;

    let mut options = BuildOptions::default();
    if let Some(p) = &req.platform {
        options.target_platform =
            Platform::parse(p).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
    }
    options.build_args = req.build_args.clone();
    let opts = DispatchOptions {
        build: options,
        target: req.target.clone(),
        labels: req.labels.clone(),
        now: crate::cache::image::unix_now(),
        source_date_epoch: None,
    };
    // Missing FROM images are pulled, as docker's builder does (the daemon's registry settings).
    let settings = match req.registry.clone() {
        Some(s) => s,
        None => crate::push::client::RegistrySettings::load(&[])
            .map_err(|e| EngineError::Build(format!("registry settings: {e}")))?,
    };
    let snapshots = engine.snapshotter()?;
    let images = super::PullingImages {
        store: &engine.store,
        settings: &settings,
        platform: opts.build.target_platform.clone(),
        snapshots: Some(snapshots.as_ref()),
        quiet: true,
    };
    let plan = dispatch(&dockerfile, &opts, &images).map_err(|e| match e {
        GraphError::Expansion { span, message } if span.start_line > 0 => {
            located(file_name, &src, span, message)
        }
        e => EngineError::Build(e.to_string()),
    })?;
    progress.planned(&planned_stages(&plan, &src));

    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = engine.scratch(&format!("build-{n}"));
    let lease = crate::cache::gc::Leases::acquire(&engine.root, "build")?;
    let cache = crate::cache::buildcache::BuildCache::open(&engine.root)
        .map_err(|e| EngineError::Build(e.to_string()))?;
    let builder = Builder {
        store: &engine.store,
        snapshots: snapshots.as_ref(),
        tmp: scratch.clone(),
        progress,
        lease: &lease,
        cache: Some(&cache),
        no_cache: if req.no_cache {
            NoCache::All
        } else {
            NoCache::None
        },
        jobs: crate::executor::schedule::Jobs::adaptive(),
        explain: None,
        run_settings: RunSettings::default(),
    };
    let tree = crate::executor::context_tree::ContextTree::new(&context, hasher);
    let result = builder.build(&plan, &tree);
    let _ = std::fs::remove_dir_all(&scratch);
    let image = result.map_err(|e| match e {
        ExecError::Step {
            span,
            instruction,
            message,
        } => located(file_name, &src, span, format!("{instruction}: {message}")),
        e => EngineError::Build(e.to_string()),
    })?;
    if let Err(e) = cache.flush_uses() {
        tracing::warn!("could not record build cache use: {e}");
    }
    for t in &tags {
        engine.store.tag(t, &image.manifest_digest)?;
        engine.events.publish(
            Event::new("image", "tag", image.id().as_str())
                .with("name", &super::images::familiar_tag(&t.to_string())),
        );
    }
    Ok(Built { image, tags })
}

/// Drops build cache entries (`kiln builder prune`, `POST /build/prune`): by default those
/// whose layer no image uses; with `all` every entry (and the RUN cache mounts); with
/// `keep_bytes` the least recently used beyond that size. Then collects garbage. Returns the
/// removed entries' keys and the bytes reclaimed.
pub fn prune_cache(
    store: &crate::cache::store::ImageStore,
    all: bool,
    keep_bytes: Option<u64>,
) -> Result<(Vec<crate::cache::Digest>, u64)> {
    let root = store.root();
    let cache_err =
        |e: crate::cache::buildcache::BuildCacheError| EngineError::Build(e.to_string());
    let cache = crate::cache::buildcache::BuildCache::open(root).map_err(cache_err)?;
    // Layers images still use are not reclaimable, whatever the cache says.
    let mut image_blobs = std::collections::BTreeSet::new();
    for m in store.images()?.keys() {
        if let Ok(img) = store.image(m) {
            image_blobs.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
        }
    }
    let removed = cache
        .update(|entries| {
            let mut by_use: Vec<_> = entries
                .iter()
                .map(|(k, r)| {
                    (
                        r.last_used,
                        k.clone(),
                        r.layer.as_ref().map(|l| l.blob.size).unwrap_or(0),
                    )
                })
                .collect();
            by_use.sort_by_key(|e| std::cmp::Reverse(e.0));
            let mut kept_bytes = 0u64;
            let mut remove = Vec::new();
            for (_, key, size) in by_use {
                let in_image = entries
                    .get(&key)
                    .and_then(|r| r.layer.as_ref())
                    .is_some_and(|l| image_blobs.contains(&l.blob.digest));
                let keep = match keep_bytes {
                    Some(limit) => {
                        kept_bytes += size;
                        kept_bytes <= limit
                    }
                    None => !all && in_image,
                };
                if !keep {
                    remove.push(key);
                }
            }
            for k in &remove {
                entries.remove(k);
            }
            remove
        })
        .map_err(cache_err)?;
    let mut reclaimed = super::images::collect_garbage(store, false)?;
    // RUN --mount=type=cache directories are build cache too; `all` drops them.
    if all {
        let mounts = root.join("cache").join("mounts");
        if mounts.exists() {
            reclaimed += walkdir::WalkDir::new(&mounts)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum::<u64>();
            std::fs::remove_dir_all(&mounts).map_err(|source| EngineError::Io {
                op: "remove",
                path: mounts.clone(),
                source,
            })?;
        }
    }
    Ok((removed, reclaimed))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoImages;
    impl crate::graph::dispatch::ImageSource for NoImages {
        fn resolve(
            &self,
            reference: &str,
        ) -> std::result::Result<crate::graph::dispatch::ResolvedImage, String> {
            Err(format!("no image {reference}"))
        }
    }

    #[test]
    fn planned_stages_carry_the_written_instructions() {
        let text =
            "FROM scratch AS build\nCOPY a \\\n  /b\n\nFROM scratch\nCOPY --from=build /b /c\n";
        let src = SourceLines::new(text);
        let df = parser::parse(text).expect("parse");
        let plan = dispatch(
            &df,
            &DispatchOptions {
                build: BuildOptions::default(),
                target: None,
                labels: BTreeMap::new(),
                now: 0,
                source_date_epoch: None,
            },
            &NoImages,
        )
        .expect("plan");
        let stages = planned_stages(&plan, &src);
        eprintln!("{stages:?}");
        assert_eq!(stages[0].from, "FROM scratch AS build");
        assert_eq!(stages[0].steps, vec!["COPY a /b".to_string()]);
        assert_eq!(stages[1].steps, vec!["COPY --from=build /b /c".to_string()]);
    }
}
