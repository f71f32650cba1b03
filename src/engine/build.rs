//! The one build pipeline, for `kiln build` and the daemon's `/build`: a context (a
//! directory or a tar stream) and its Dockerfile, parsed, planned against the local store
//! (missing FROM images are pulled), executed, then delivered to each output (the store
//! with its tags, OCI/docker archives, files, a registry) and the build cache exported.
//! Progress goes to a [`BuildProgress`] that also learns the plan before the first step
//! (the classic builder's `Step N/M` numbering needs it). Failures are located in the
//! Dockerfile like `kiln check` does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::events::Event;
use super::{Engine, EngineError, Result};
use crate::cache::export::{self, LayerCompression};
use crate::cache::store::StoredImage;
use crate::context::{BuildContext, ContextSource, FileHasher, PlainFileHasher};
use crate::executor::build::{Builder, Explain, NoCache, Progress};
use crate::executor::explain::BuildRecord;
use crate::executor::run_step::RunSettings;
use crate::executor::schedule::Jobs;
use crate::executor::ExecError;
use crate::graph::dispatch::{dispatch, DispatchOptions, Plan};
use crate::graph::{BuildOptions, GraphError, Platform};
use crate::lint::{render, Problem};
use crate::parser::{self, SourceLines, Span};
use crate::push::cache_export::{self, CacheLocation, CacheSpec};
use crate::push::client::RegistrySettings;
use crate::push::progress::Silent;
use crate::push::push::PushOptions;
use crate::reference::Reference;

/// Where the Dockerfile comes from.
pub enum DockerfileSource {
    /// A path inside the context (`Dockerfile` by default).
    InContext(String),
    /// Text read elsewhere (a file outside the context, stdin), with the name errors show.
    Text { name: String, text: String },
}

/// Where the result goes (`--output`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The local store, under the request's tags.
    Image,
    Oci(PathBuf),
    Docker(PathBuf),
    Tar(PathBuf),
    Local(PathBuf),
    /// Push to `name`, or to every tag.
    Registry(Option<String>),
}

/// What to build.
pub struct BuildRequest {
    pub context: ContextSource,
    /// The `.dockerignore` rules (None: every file of the context).
    pub ignore: Option<String>,
    /// How context files are hashed (None: plainly, every time).
    pub hasher: Option<Arc<dyn FileHasher>>,
    pub dockerfile: DockerfileSource,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: NoCache,
    pub platform: Option<String>,
    pub jobs: Jobs,
    /// Secrets, ssh agents and entitlements for RUN steps.
    pub run_settings: RunSettings,
    pub source_date_epoch: Option<i64>,
    /// `--explain`: report why steps missed the cache.
    pub explain: bool,
    /// Registry settings for FROM pulls, pushes and registry caches (None: the defaults).
    pub registry: Option<RegistrySettings>,
    /// No progress for FROM pulls.
    pub quiet: bool,
    pub cache_from: Vec<CacheSpec>,
    pub cache_to: Vec<CacheSpec>,
    /// Empty: the store ([`Output::Image`]).
    pub outputs: Vec<Output>,
    /// Layer compression of archive and registry outputs (None: as stored).
    pub compression: Option<LayerCompression>,
}

impl BuildRequest {
    /// A request with the defaults: `Dockerfile` in `context`, into the store, no tags.
    pub fn new(context: ContextSource) -> BuildRequest {
        BuildRequest {
            context,
            ignore: None,
            hasher: None,
            dockerfile: DockerfileSource::InContext("Dockerfile".into()),
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            target: None,
            no_cache: NoCache::None,
            platform: None,
            jobs: Jobs::adaptive(),
            run_settings: RunSettings::default(),
            source_date_epoch: None,
            explain: false,
            registry: None,
            quiet: true,
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            outputs: Vec::new(),
            compression: None,
        }
    }
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

/// Receives the plan, then the executor's step events, then the outputs' lines.
pub trait BuildProgress: Progress + Sync {
    fn planned(&self, _stages: &[PlannedStage]) {}
    /// A line outside any step (`#N writing image …`).
    fn note(&self, _id: usize, _text: &str) {}
    /// A message before the steps (build cache imports).
    fn message(&self, _text: &str) {}
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

/// How a cache spec is named in messages.
fn spec_name(spec: &CacheSpec) -> String {
    match &spec.location {
        CacheLocation::Registry(r) => r.to_string(),
        CacheLocation::Local(d) => d.display().to_string(),
    }
}

fn failed<E: std::fmt::Display>(what: String) -> impl FnOnce(E) -> EngineError {
    move |e| EngineError::Build(format!("{what}: {e}"))
}

fn io_failed<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a build, delivers it to its outputs and exports its cache; publishes `tag` image
/// events for the tags it sets.
pub fn build(engine: &Engine, req: BuildRequest, progress: &dyn BuildProgress) -> Result<Built> {
    let parse_name = |t: &str, what: &str| {
        Reference::parse(t)
            .map(|r| r.with_default_tag())
            .map_err(|e| EngineError::InvalidArgument(format!("invalid {what} {t:?}: {e}")))
    };
    let tags = req
        .tags
        .iter()
        .map(|t| parse_name(t, "tag"))
        .collect::<Result<Vec<_>>>()?;
    let outputs = if req.outputs.is_empty() {
        vec![Output::Image]
    } else {
        req.outputs.clone()
    };
    let hasher: Arc<dyn FileHasher> = req
        .hasher
        .clone()
        .unwrap_or_else(|| Arc::new(PlainFileHasher));
    let context = BuildContext::open(req.context, req.ignore.as_deref())
        .map_err(|e| EngineError::InvalidArgument(format!("opening the build context: {e}")))?
        .with_hasher(hasher.clone());
    let (file_name, text) = match req.dockerfile {
        DockerfileSource::Text { name, text } => (name, text),
        DockerfileSource::InContext(path) => {
            let bytes = context.read_build_file(&path).map_err(|e| {
                EngineError::InvalidArgument(format!(
                    "Cannot locate specified Dockerfile: {path}: {e}"
                ))
            })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                EngineError::InvalidArgument(format!("the Dockerfile {path} is not UTF-8"))
            })?;
            (path, text)
        }
    };
    let file_name = file_name.as_str();
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
        source_date_epoch: req.source_date_epoch,
    };
    // Missing FROM images are pulled, as docker's builder does.
    let settings = match req.registry.clone() {
        Some(s) => s,
        None => RegistrySettings::load(&[])
            .map_err(|e| EngineError::Build(format!("registry settings: {e}")))?,
    };
    let snapshots = engine.snapshotter()?;
    let images = super::PullingImages {
        store: &engine.store,
        settings: &settings,
        platform: opts.build.target_platform.clone(),
        snapshots: Some(snapshots.as_ref()),
        quiet: req.quiet,
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
    let cache_env = cache_export::CacheEnv {
        settings: &settings,
        progress: &Silent,
        snapshots: Some(snapshots.as_ref()),
    };
    for spec in &req.cache_from {
        let got = cache_export::import_cache(&engine.store, &cache, spec, &cache_env).map_err(
            failed(format!("importing build cache from {}", spec_name(spec))),
        )?;
        progress.message(&format!(
            "imported build cache from {}: {} steps, {} layers",
            spec_name(spec),
            got.records,
            got.layers
        ));
    }
    let explain_path = BuildRecord::path(
        &engine.root,
        std::path::Path::new(file_name),
        req.target.as_deref(),
    );
    let builder = Builder {
        store: &engine.store,
        snapshots: snapshots.as_ref(),
        tmp: scratch.clone(),
        progress,
        lease: &lease,
        cache: Some(&cache),
        no_cache: req.no_cache,
        jobs: req.jobs,
        explain: Some(Explain {
            previous: if req.explain {
                BuildRecord::load(&explain_path)
            } else {
                None
            },
            current: Default::default(),
            report: req.explain,
        }),
        run_settings: req.run_settings,
    };
    let tree = crate::executor::context_tree::ContextTree::new(&context, hasher);
    let result = builder.build(&plan, &tree);
    let image = result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&scratch);
        match e {
            ExecError::Step {
                span,
                instruction,
                message,
            } => located(file_name, &src, span, format!("{instruction}: {message}")),
            e => EngineError::Build(e.to_string()),
        }
    })?;

    let first_step = plan.stages.iter().map(|s| s.ops.len()).sum::<usize>() + 1;
    let compression = req.compression.unwrap_or(LayerCompression::Keep);
    let delivered = (|| -> Result<()> {
        for (step, output) in (first_step..).zip(outputs.iter()) {
            match output {
                Output::Image => {
                    progress.note(step, &format!("writing image {} done", image.id()));
                    for t in &tags {
                        tag(engine, &image, t)?;
                        progress.note(step, &format!("naming to {t} done"));
                    }
                }
                Output::Oci(dest) | Output::Docker(dest) => {
                    let exported = export::prepare_for_export(
                        &engine.store,
                        &image.manifest_digest,
                        compression,
                    )?;
                    let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
                    let file = std::fs::File::create(dest).map_err(io_failed("create", dest))?;
                    let mut w = std::io::BufWriter::new(file);
                    if matches!(output, Output::Oci(_)) {
                        export::write_oci_archive(&engine.store, &[(names, exported)], &mut w)?;
                    } else {
                        export::write_docker_archive(&engine.store, &[(names, exported)], &mut w)?;
                    }
                    w.flush().map_err(io_failed("write", dest))?;
                    progress.note(step, &format!("exporting to {} done", dest.display()));
                }
                Output::Local(dest) | Output::Tar(dest) => {
                    builder
                        .ensure_image_snapshots(&image.manifest_digest)
                        .map_err(|e| EngineError::Build(e.to_string()))?;
                    let chain = crate::cache::snapshot::chain_id(&image.config.rootfs.diff_ids);
                    let view = snapshots.view(chain.as_ref())?;
                    let written = if let Output::Local(dir) = output {
                        crate::executor::export_fs::copy_tree(view.path(), dir)
                    } else {
                        let file =
                            std::fs::File::create(dest).map_err(io_failed("create", dest))?;
                        crate::executor::export_fs::write_tar(
                            view.path(),
                            std::io::BufWriter::new(file),
                        )
                    };
                    written.map_err(|e| {
                        EngineError::Build(format!("exporting files to {}: {e}", dest.display()))
                    })?;
                    progress.note(step, &format!("exporting files to {} done", dest.display()));
                }
                Output::Registry(name) => {
                    let targets = match name {
                        Some(n) => vec![parse_name(n, "name")?],
                        None if tags.is_empty() => return Err(EngineError::InvalidArgument(
                            "pushing needs a name: use -t NAME or --output type=registry,name=NAME"
                                .into(),
                        )),
                        None => tags.clone(),
                    };
                    let push_opts = PushOptions {
                        settings: &settings,
                        progress: &Silent,
                        compression,
                    };
                    for t in &targets {
                        tag(engine, &image, t)?;
                        let pushed = crate::push::push::push(
                            &engine.store,
                            &image.manifest_digest,
                            t,
                            &push_opts,
                        )
                        .map_err(failed(format!("pushing {t}")))?;
                        progress.note(
                            step,
                            &format!("pushing {t} with digest {} done", pushed.digest),
                        );
                    }
                }
            }
        }
        for spec in &req.cache_to {
            let sent = cache_export::export_cache(
                &engine.store,
                &cache,
                &cache.touched(),
                &image.config.rootfs.diff_ids,
                spec,
                &cache_env,
            )
            .map_err(failed(format!(
                "exporting build cache to {}",
                spec_name(spec)
            )))?;
            progress.note(
                first_step + outputs.len(),
                &format!(
                    "exporting cache to {} ({} steps, {} layers) done",
                    spec_name(spec),
                    sent.records,
                    sent.layers
                ),
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(e) = cache.flush_uses() {
        tracing::warn!("could not record build cache use: {e}");
    }
    if let Some(explain) = &builder.explain {
        if let Ok(current) = explain.current.lock() {
            if let Err(e) = current.save(&explain_path) {
                tracing::warn!("could not save the --explain record: {e}");
            }
        }
    }
    delivered?;
    Ok(Built { image, tags })
}

/// Tags the image and publishes docker's `tag` event.
fn tag(engine: &Engine, image: &StoredImage, t: &Reference) -> Result<()> {
    engine.store.tag(t, &image.manifest_digest)?;
    engine.events.publish(
        Event::new("image", "tag", image.id().as_str())
            .with("name", &super::images::familiar_tag(&t.to_string())),
    );
    Ok(())
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
