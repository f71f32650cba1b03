//! Executes a [`Plan`]: stage by stage, step by step, each file-changing step becomes a layer
//! (an uncompressed tar in the content store, as BuildKit keeps local layers) and a committed
//! snapshot; the target stage becomes an image in the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::explain::{why_missed, BuildRecord, StepRecord};
use super::fileop::{self, CopyEnv, RootfsTree, SourceTree};
use super::rootfs::resolve_in_root;
use super::run_step::{self, MountSources, RunRequest, RunSettings};
use super::sandbox::CancelToken;
use super::schedule::{self, Jobs};
use super::user::resolve_user;
use super::ExecError;
use crate::cache::buildcache::{BuildCache, CachedLayer};
use crate::cache::image::{media, rfc3339, Descriptor, History, ImageConfig};
use crate::cache::layer::{self, Compression, LayerOptions, UnpackMode};
use crate::cache::layer_blob;
use crate::cache::snapshot::{chain_id, Snapshotter, View};
use crate::cache::store::{ImageStore, StoredImage};
use crate::cache::Digest;
use crate::graph::cache_key;
use crate::graph::dag::{Node, StepGraph};
use crate::graph::dispatch::{Base, CopyFrom, CopyOp, CopySource, Op, OpKind, Plan, StagePlan};

/// Unpacks a layer blob of the content store into `dir`.
fn unpack_blob(
    store: &crate::cache::content::ContentStore,
    blob: &Digest,
    dir: &Path,
    mode: UnpackMode,
) -> Result<(), layer::LayerError> {
    let file = store.open_blob(blob).map_err(|e| layer::LayerError::Io {
        op: "open layer blob",
        path: store.blob_path(blob),
        source: std::io::Error::other(e.to_string()),
    })?;
    layer::unpack_layer(std::io::BufReader::new(file), dir, mode).map(|_| ())
}

/// `os/arch[/variant]` of a stage's result.
fn plan_platform(stage: &StagePlan) -> String {
    stage.config.platform_string()
}

/// A layer of an image being built: its uncompressed digest and its blob.
#[derive(Debug, Clone)]
pub struct LayerRef {
    pub diff_id: Digest,
    pub blob: Descriptor,
}

/// What a finished stage leaves for later stages and the export.
#[derive(Debug, Clone)]
/// (Stages run on their own threads; results are shared between them.)
pub struct StageResult {
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
    /// Cache key of the stage's last layer step (what later steps and stages build on).
    pub key: Option<Digest>,
}

impl StageResult {
    fn chain(&self) -> Option<Digest> {
        chain_id(
            &self
                .layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>(),
        )
    }
}

/// Receives progress events (rendered by the CLI as plain lines or a live display).
pub trait Progress {
    /// A step starts: `id` numbers steps in order, `name` is `[stage 1/3] COPY …`.
    fn started(&self, id: usize, name: &str);
    /// A step finished after `seconds`.
    fn done(&self, id: usize, seconds: f64);
    /// A step was not run: its result came from the build cache.
    fn cached(&self, id: usize);
    /// A line of output about a step.
    fn log(&self, id: usize, line: &str);
}

/// Where COPY finds the build context.
pub trait ContextTree: SourceTree {}
impl<T: SourceTree> ContextTree for T {}

/// The state a build needs: the store, the snapshotter, a scratch directory.
pub struct Builder<'a> {
    pub store: &'a ImageStore,
    pub snapshots: &'a dyn Snapshotter,
    pub tmp: PathBuf,
    pub progress: &'a (dyn Progress + Sync),
    /// Protects the blobs this build writes from a concurrent prune until the image is recorded.
    pub lease: &'a crate::cache::gc::Lease,
    /// The build cache index (None: no cache at all).
    pub cache: Option<&'a BuildCache>,
    /// Stages (by name or index) whose steps must not come from the cache (`--no-cache`
    /// is every stage).
    pub no_cache: NoCache,
    /// Secrets, ssh agents and entitlements for RUN steps.
    pub run_settings: RunSettings,
    /// `--explain`: the last build's record, and this build's being written.
    pub explain: Option<Explain>,
    /// How many steps may run at the same time (`--jobs`).
    pub jobs: Jobs,
}

/// State of `--explain`.
#[derive(Debug, Default)]
pub struct Explain {
    pub previous: Option<BuildRecord>,
    pub current: std::sync::Mutex<BuildRecord>,
    /// Print the reasons (`--explain`); without it the record is only kept for next time.
    pub report: bool,
}

/// What a step needs from the build around it.
#[derive(Clone, Copy)]
struct StepCtx<'a> {
    plan: &'a Plan,
    results: &'a Results,
    context: &'a dyn SourceTree,
    step_id: usize,
    cancel: &'a CancelToken,
}

/// Finished stages by plan index, shared with the steps of later stages.
type Results = BTreeMap<usize, Arc<StageResult>>;

/// A stage being built: what its steps so far produced.
struct StageRun {
    /// Cache key of the last layer step (None once a step could not be cached).
    key: Option<Digest>,
    layers: Vec<LayerRef>,
    history: Vec<History>,
    /// The name shown in progress lines (`stage-N` when unnamed).
    name: String,
    skip_cache: bool,
    /// Creation time (unix seconds) of the latest layer step so far: a cached step keeps the
    /// time of the build that made it, so a fully cached rebuild makes the same image.
    clock: Option<i64>,
    /// The base's creation time, for a stage whose steps are all metadata.
    base_time: Option<i64>,
    /// History entries of this stage's metadata steps, timed at the end (with `clock`).
    untimed: Vec<usize>,
    /// How many of `layers` (from the bottom) are known to have snapshots: a step built
    /// here makes one; cache hits from another machine may not have one yet.
    ready: usize,
}

/// Which stages skip cache lookups (their results are still recorded).
#[derive(Debug, Clone, Default)]
pub enum NoCache {
    #[default]
    None,
    All,
    Stages(Vec<String>),
}

impl NoCache {
    fn applies(&self, stage: &StagePlan) -> bool {
        match self {
            NoCache::None => false,
            NoCache::All => true,
            NoCache::Stages(names) => names.iter().any(|n| {
                stage
                    .name
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(n))
                    || n.parse::<usize>().ok() == Some(stage.index)
            }),
        }
    }
}

impl Builder<'_> {
    /// Runs every stage of the plan and stores the target as an image (untagged: the caller tags).
    pub fn build(
        &self,
        plan: &Plan,
        context: &(dyn SourceTree + Sync),
    ) -> Result<StoredImage, ExecError> {
        std::fs::create_dir_all(&self.tmp).map_err(|e| ExecError::io(&self.tmp, e))?;
        let mut results = self.run_stages(plan, context)?;
        let target = plan
            .target()
            .and_then(|t| results.remove(&t.index))
            .ok_or_else(|| ExecError::Store("the build has no target stage".into()))?;
        let target = Arc::unwrap_or_clone(target);
        let config = target.config;
        let layers = target.layers.into_iter().map(|l| l.blob).collect();
        self.store
            .commit_image(&config, layers)
            .map_err(|e| ExecError::Store(e.to_string()))
    }

    /// Runs the plan's step graph: every step as soon as the steps it needs are done, up to
    /// `jobs` at a time (see [`schedule`]). The first failure cancels the rest and is returned.
    fn run_stages(
        &self,
        plan: &Plan,
        context: &(dyn SourceTree + Sync),
    ) -> Result<Results, ExecError> {
        let graph = StepGraph::new(plan).map_err(|e| ExecError::Failed(e.to_string()))?;
        let poisoned = || ExecError::Store("build state lock poisoned".into());
        let results: Mutex<Results> = Mutex::new(BTreeMap::new());
        let runs: BTreeMap<usize, Mutex<Option<StageRun>>> = plan
            .stages
            .iter()
            .map(|s| (s.index, Mutex::new(None)))
            .collect();
        let cancel = CancelToken::new();
        let step_ids = AtomicUsize::new(0);
        let done = || results.lock().map(|g| g.clone()).map_err(|_| poisoned());
        let run = |node: Node| -> Result<(), ExecError> {
            let stage = plan.stage(node.stage()).ok_or_else(|| {
                ExecError::Store(format!("stage {} is not planned", node.stage()))
            })?;
            let mut slot = runs
                .get(&stage.index)
                .ok_or_else(poisoned)?
                .lock()
                .map_err(|_| poisoned())?;
            match node {
                Node::Start(_) => *slot = Some(self.start_stage(plan, stage, &done()?)?),
                Node::Op { op, .. } => {
                    let state = slot.as_mut().ok_or_else(|| {
                        ExecError::Store(format!(
                            "stage {} ran a step before it started",
                            stage.index
                        ))
                    })?;
                    let ctx = StepCtx {
                        plan,
                        results: &done()?,
                        context,
                        step_id: 0,
                        cancel: &cancel,
                    };
                    self.run_step_node(&ctx, stage, op, state, &step_ids)?;
                }
                Node::End(_) => {
                    let state = slot.take().ok_or_else(|| {
                        ExecError::Store(format!("stage {} ended before it started", stage.index))
                    })?;
                    let mut config = stage.config.clone();
                    let created = match plan.source_date_epoch {
                        Some(_) => plan.created,
                        None => state.clock.or(state.base_time).unwrap_or(plan.created),
                    };
                    let mut history = state.history;
                    for i in state.untimed {
                        if let Some(h) = history.get_mut(i) {
                            h.created = Some(rfc3339(created));
                        }
                    }
                    config.history = history;
                    config.created = Some(rfc3339(created));
                    config.rootfs.diff_ids =
                        state.layers.iter().map(|l| l.diff_id.clone()).collect();
                    let result = StageResult {
                        layers: state.layers,
                        config,
                        key: state.key,
                    };
                    results
                        .lock()
                        .map_err(|_| poisoned())?
                        .insert(stage.index, Arc::new(result));
                }
            }
            Ok(())
        };
        let light = |node: Node| match node {
            Node::End(_) => true,
            Node::Start(s) => plan
                .stage(s)
                .is_none_or(|st| !matches!(st.base, Base::Image(_))),
            Node::Op { stage, op } => plan
                .stage(stage)
                .and_then(|st| st.ops.get(op))
                .is_none_or(|o| matches!(o.kind, OpKind::Metadata)),
        };
        schedule::run_graph(&graph, self.jobs, &cancel, &light, &run)?;
        results.into_inner().map_err(|_| poisoned())
    }

    fn base_of(&self, stage: &StagePlan, results: &Results) -> Result<StageResult, ExecError> {
        match &stage.base {
            Base::Scratch => Ok(StageResult {
                layers: Vec::new(),
                config: ImageConfig::default(),
                key: None,
            }),
            Base::Stage(i) => results
                .get(i)
                .map(|r| StageResult::clone(r))
                .ok_or_else(|| {
                    ExecError::Store(format!(
                        "stage {i} was not built before stage {}",
                        stage.index
                    ))
                }),
            Base::Image(img) => self.image_result(&img.manifest_digest),
        }
    }

    /// Makes sure every layer of a stored image is an unpacked snapshot (layers that came
    /// from an imported cache may exist only as blobs).
    pub fn ensure_image_snapshots(&self, manifest: &Digest) -> Result<(), ExecError> {
        self.image_result(manifest).map(|_| ())
    }

    /// The layers of a stored image, with its snapshots unpacked.
    fn image_result(&self, manifest: &Digest) -> Result<StageResult, ExecError> {
        let img = self
            .store
            .image(manifest)
            .map_err(|e| ExecError::Store(e.to_string()))?;
        if img.manifest.layers.len() != img.config.rootfs.diff_ids.len() {
            return Err(ExecError::Store(format!(
                "image {manifest}: {} layers but {} diff_ids in its config",
                img.manifest.layers.len(),
                img.config.rootfs.diff_ids.len()
            )));
        }
        let layers: Vec<LayerRef> = img
            .manifest
            .layers
            .iter()
            .zip(&img.config.rootfs.diff_ids)
            .map(|(blob, diff_id)| LayerRef {
                diff_id: diff_id.clone(),
                blob: blob.clone(),
            })
            .collect();
        self.ensure_snapshots(&layers)?;
        Ok(StageResult {
            layers,
            config: img.config,
            key: None,
        })
    }

    /// Makes sure every prefix of the layer chain is an unpacked snapshot.
    fn ensure_snapshots(&self, layers: &[LayerRef]) -> Result<(), ExecError> {
        let mut parent: Option<Digest> = None;
        for l in layers {
            let id = crate::cache::snapshot::chain_on(parent.as_ref(), &l.diff_id);
            if !self.snapshots.exists(&id) {
                self.unpack_into_snapshot(&id, parent.as_ref(), &l.blob.digest)?;
            }
            parent = Some(id);
        }
        Ok(())
    }

    fn unpack_into_snapshot(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        blob: &Digest,
    ) -> Result<(), ExecError> {
        let store = &self.store.content;
        let mut fill = |dir: &Path, mode: UnpackMode| -> Result<(), layer::LayerError> {
            unpack_blob(store, blob, dir, mode)
        };
        self.snapshots
            .create(id, parent, &mut fill)
            .map_err(|e| ExecError::Store(format!("unpacking layer {blob}: {e}")))
    }

    /// A read-only view of a stage's or image's result, its layers unpacked first if they
    /// came from an imported cache.
    fn view_result(&self, r: &StageResult) -> Result<View, ExecError> {
        self.ensure_snapshots(&r.layers)?;
        self.view(r.chain().as_ref())
    }

    fn view(&self, chain: Option<&Digest>) -> Result<View, ExecError> {
        self.snapshots
            .view(chain)
            .map_err(|e| ExecError::Store(e.to_string()))
    }

    /// The state of a stage once its base is ready (an image's layers unpacked).
    fn start_stage(
        &self,
        plan: &Plan,
        stage: &StagePlan,
        results: &Results,
    ) -> Result<StageRun, ExecError> {
        let base = self.base_of(stage, results)?;
        let stage_keys = |i: usize| results.get(&i).and_then(|r| r.key.clone());
        // SOURCE_DATE_EPOCH changes layer bytes (clamped mtimes), so it is part of every key.
        let platform = match plan.source_date_epoch {
            Some(epoch) => format!("{} source_date_epoch={epoch}", plan_platform(stage)),
            None => plan_platform(stage),
        };
        let key = match &stage.base {
            Base::Stage(_) => base.key.clone(),
            other => cache_key::base_key(other, &platform, &stage_keys),
        };
        Ok(StageRun {
            key,
            layers: base.layers.clone(),
            history: base.config.history.clone(),
            name: stage
                .name
                .clone()
                .unwrap_or_else(|| format!("stage-{}", stage.index)),
            skip_cache: self.no_cache.applies(stage),
            clock: None,
            base_time: base
                .config
                .created
                .as_deref()
                .and_then(crate::cache::image::parse_rfc3339),
            untimed: Vec::new(),
            ready: 0,
        })
    }

    /// Runs instruction `n` of `stage` on top of what its earlier steps produced.
    fn run_step_node(
        &self,
        step: &StepCtx,
        stage: &StagePlan,
        n: usize,
        state: &mut StageRun,
        step_ids: &AtomicUsize,
    ) -> Result<(), ExecError> {
        let StepCtx {
            plan,
            results,
            context,
            cancel,
            ..
        } = *step;
        let op = stage
            .ops
            .get(n)
            .ok_or_else(|| ExecError::Store(format!("stage {} has no step {n}", stage.index)))?;
        let stage_keys = |i: usize| results.get(&i).and_then(|r| r.key.clone());
        let total = stage.ops.len();
        let stage_name = state.name.clone();
        let skip_cache = state.skip_cache;
        let key = state.key.clone();
        {
            if cancel.is_cancelled() {
                return Err(ExecError::Failed(format!(
                    "stage {stage_name} cancelled: another stage failed"
                )));
            }
            let step_id = step_ids.fetch_add(1, Ordering::SeqCst) + 1;
            let shown = op.created_by.trim_end_matches(" # buildkit");
            let label = format!("[{stage_name} {}/{total}] {shown}", n + 1);
            self.progress.started(step_id, &label);
            let started = Instant::now();
            let (step_key, files) = match (&op.kind, &key) {
                (OpKind::Metadata, _) => (None, BTreeMap::new()),
                (_, Some(parent)) => self
                    .step_key(parent, op, &stage_keys, context)
                    .map_err(|e| e.at(op.span, shown))?,
                (_, None) => (None, BTreeMap::new()),
            };
            let record = self.explain.as_ref().map(|_| StepRecord {
                stage: stage_name.clone(),
                position: n,
                instruction: shown.to_string(),
                key: step_key.clone(),
                parent: key.clone(),
                base: (n == 0).then(|| match &stage.base {
                    Base::Scratch => "scratch".to_string(),
                    Base::Stage(i) => format!("stage {i}"),
                    Base::Image(img) => format!("image {}@{}", img.reference, img.manifest_digest),
                }),
                env: match &op.kind {
                    OpKind::Run { env, .. } => env.clone(),
                    _ => Vec::new(),
                },
                command: match &op.kind {
                    OpKind::Run { args, .. } => args.clone(),
                    _ => Vec::new(),
                },
                files,
            });
            let cached = match (&step_key, self.cache, skip_cache) {
                (Some(k), Some(cache), false) => self
                    .cache_hit(cache, k, &state.layers)
                    .map_err(|e| e.at(op.span, shown))?,
                _ => None,
            };
            let (layer, step_time, built_here) = match cached {
                Some((hit, made)) => {
                    self.progress.cached(step_id);
                    (hit, Some(made), false)
                }
                None => {
                    if let (Some(explain), Some(r)) = (&self.explain, &record) {
                        if explain.report && !matches!(op.kind, OpKind::Metadata) {
                            let why = why_missed(explain.previous.as_ref(), r, skip_cache);
                            self.progress.log(step_id, &format!("cache miss: {why}"));
                        }
                    }
                    // Earlier steps may have been cache hits whose layers came from another
                    // machine (--cache-from): unpack them before building on top.
                    if state.ready < state.layers.len() {
                        self.ensure_snapshots(&state.layers)
                            .map_err(|e| e.at(op.span, shown))?;
                        state.ready = state.layers.len();
                    }
                    let layer = self
                        .run_op(&StepCtx { step_id, ..*step }, op, &state.layers)
                        .map_err(|e| e.at(op.span, shown))?;
                    if let (Some(k), Some(cache)) = (&step_key, self.cache) {
                        let record = layer.as_ref().map(|l| CachedLayer {
                            diff_id: l.diff_id.clone(),
                            blob: l.blob.clone(),
                            chain: chain_id(
                                &state
                                    .layers
                                    .iter()
                                    .chain([l])
                                    .map(|l| l.diff_id.clone())
                                    .collect::<Vec<_>>(),
                            ),
                        });
                        cache
                            .put(k, record, shown, plan.created)
                            .map_err(|e| ExecError::Store(e.to_string()))?;
                    }
                    self.progress.done(step_id, started.elapsed().as_secs_f64());
                    let ran = (!matches!(op.kind, OpKind::Metadata)).then_some(plan.created);
                    (layer, ran, true)
                }
            };
            // SOURCE_DATE_EPOCH pins every time.
            let step_time = match plan.source_date_epoch {
                Some(_) => Some(plan.created),
                None => step_time,
            };
            if let Some(t) = step_time {
                state.clock = Some(state.clock.map_or(t, |c| c.max(t)));
            } else {
                state.untimed.push(state.history.len());
            }
            if let (Some(explain), Some(r)) = (&self.explain, record) {
                if !matches!(op.kind, OpKind::Metadata) {
                    if let Ok(mut current) = explain.current.lock() {
                        current.steps.push(r);
                    }
                }
            }
            if !matches!(op.kind, OpKind::Metadata) {
                // An uncacheable step makes everything after it uncacheable too.
                state.key = step_key;
            }
            let empty = layer.is_none();
            if let Some(l) = layer {
                state.layers.push(l);
                if built_here && state.ready + 1 == state.layers.len() {
                    state.ready = state.layers.len();
                }
            }
            state.history.push(History {
                created: step_time.map(rfc3339),
                created_by: Some(op.created_by.clone()),
                comment: Some("buildkit.dockerfile.v0".into()),
                empty_layer: empty,
                ..Default::default()
            });
        }
        Ok(())
    }

    /// The cache key of a layer step: its expanded form plus the content of what it reads
    /// (with the per-file digests of the context files it reads, for `--explain`). The key is
    /// `None` when the step cannot be cached (a download without `--checksum`).
    fn step_key(
        &self,
        parent: &Digest,
        op: &Op,
        stage_keys: &dyn Fn(usize) -> Option<Digest>,
        context: &dyn SourceTree,
    ) -> Result<(Option<Digest>, BTreeMap<String, String>), ExecError> {
        let mut inputs = Vec::new();
        let mut files = BTreeMap::new();
        let mut from_repr = None;
        match &op.kind {
            OpKind::Copy(c) => {
                from_repr = Some(cache_key::copy_from_repr(&c.from, stage_keys));
                let mut patterns = Vec::new();
                for s in &c.sources {
                    match s {
                        CopySource::Path(p) => patterns.push(p.clone()),
                        CopySource::Url(_) if c.checksum.is_none() => return Ok((None, files)),
                        _ => {}
                    }
                }
                if matches!(c.from, CopyFrom::Context) && !patterns.is_empty() {
                    if let Some(content) = context.content(&patterns)? {
                        inputs.push(content.digest.to_string());
                        files = content.files;
                    }
                }
            }
            OpKind::Run { parsed_mounts, .. } => {
                for m in parsed_mounts {
                    if m.kind != crate::parser::mount::MountType::Bind {
                        continue;
                    }
                    match &m.from {
                        None => {
                            let src = m.source.clone().unwrap_or_else(|| ".".into());
                            if let Some(content) = context.content(&[src])? {
                                inputs.push(content.digest.to_string());
                            }
                        }
                        Some(from) => inputs.push(format!("from {from}")),
                    }
                }
            }
            OpKind::Mkdir { .. } | OpKind::Metadata => {}
        }
        Ok((
            cache_key::step_key(parent, op, from_repr.as_deref(), &inputs),
            files,
        ))
    }

    /// A usable cache record for `key`: its blob is still in the store, or (a layer built
    /// here and not exported yet) its snapshot on top of `below` still exists.
    fn cache_hit(
        &self,
        cache: &BuildCache,
        key: &Digest,
        below: &[LayerRef],
    ) -> Result<Option<(Option<LayerRef>, i64)>, ExecError> {
        let store = |e: String| ExecError::Store(e);
        let Some(record) = cache.lookup(key).map_err(|e| store(e.to_string()))? else {
            return Ok(None);
        };
        let layer = match &record.layer {
            None => None,
            Some(l) => {
                let stored = self
                    .lease
                    .protect_existing(&self.store.content, &l.blob.digest)
                    .map_err(|e| store(e.to_string()))?;
                if !stored {
                    let mut ids: Vec<Digest> = below.iter().map(|l| l.diff_id.clone()).collect();
                    ids.push(l.diff_id.clone());
                    let snapshot = chain_id(&ids).filter(|c| {
                        l.blob.digest == l.diff_id && self.snapshots.layer_dir(c).is_some()
                    });
                    let Some(chain) = snapshot else {
                        return Ok(None);
                    };
                    // Keeps a concurrent prune away from the snapshot until the image is recorded.
                    self.lease.add(&chain).map_err(|e| store(e.to_string()))?;
                }
                Some(LayerRef {
                    diff_id: l.diff_id.clone(),
                    blob: l.blob.clone(),
                })
            }
        };
        cache.mark_used(key);
        Ok(Some((layer, record.created)))
    }

    fn run_op(
        &self,
        step: &StepCtx,
        op: &Op,
        layers: &[LayerRef],
    ) -> Result<Option<LayerRef>, ExecError> {
        let StepCtx {
            plan,
            results,
            context,
            ..
        } = *step;
        let chain = chain_id(&layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
        match &op.kind {
            OpKind::Metadata => Ok(None),
            OpKind::Run {
                args,
                env,
                user,
                workdir,
                parsed_mounts,
                network,
                security,
                ..
            } => {
                let req = RunRequest {
                    args,
                    env,
                    user: user.as_deref(),
                    workdir,
                    mounts: parsed_mounts,
                    network,
                    security,
                };
                self.run_step(step, &req, chain.as_ref())
            }
            OpKind::Mkdir { path, user } => {
                let view = self.view(chain.as_ref())?;
                let existing = resolve_in_root(view.path(), path, true)?;
                if existing.is_dir() {
                    return Ok(None);
                }
                let owner = match user {
                    Some(u) => {
                        let r = resolve_user(u, Some(view.path()))?;
                        (r.uid, r.gid)
                    }
                    None => (0, 0),
                };
                let upper =
                    tempfile::tempdir_in(&self.tmp).map_err(|e| ExecError::io(&self.tmp, e))?;
                fileop::mkdir(Some(view.path()), upper.path(), path, owner)?;
                drop(view);
                self.commit_layer(plan, upper.path(), chain.as_ref())
                    .map(Some)
            }
            OpKind::Copy(c) => {
                let view = self.view(if c.link { None } else { chain.as_ref() })?;
                let upper =
                    tempfile::tempdir_in(&self.tmp).map_err(|e| ExecError::io(&self.tmp, e))?;
                let wrote = self.copy(c, view.path(), upper.path(), results, context)?;
                drop(view);
                if !wrote {
                    return Ok(None);
                }
                self.commit_layer(plan, upper.path(), chain.as_ref())
                    .map(Some)
            }
        }
    }

    fn copy(
        &self,
        c: &CopyOp,
        base: &Path,
        upper: &Path,
        results: &Results,
        context: &dyn SourceTree,
    ) -> Result<bool, ExecError> {
        let excludes = crate::context::dockerignore::IgnoreMatcher::from_patterns(&c.excludes)
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        let excluded =
            |rel: &str, is_dir: bool| !c.excludes.is_empty() && excludes.is_excluded(rel, is_dir);
        let extract = |archive: &Path, dest: &Path| -> Result<bool, ExecError> {
            crate::cache::archive::extract_archive(archive, dest)
                .map(|_| true)
                .map_err(|e| ExecError::Failed(format!("extracting {}: {e}", archive.display())))
        };
        let env = CopyEnv {
            base: Some(base),
            upper,
            excluded: &excluded,
            extract: &extract,
        };
        if c.sources
            .iter()
            .any(|s| matches!(s, crate::graph::dispatch::CopySource::Url(_)))
        {
            return super::download::add_urls(c, &env, &self.tmp);
        }
        match &c.from {
            CopyFrom::Context => fileop::copy(c, context, &env),
            CopyFrom::Stage(i) => {
                let src = results
                    .get(i)
                    .ok_or_else(|| ExecError::Store(format!("stage {i} was not built")))?;
                let view = self.view_result(src)?;
                let tree = RootfsTree {
                    root: view.path(),
                    name: format!("stage {i}"),
                };
                fileop::copy(c, &tree, &env)
            }
            CopyFrom::Image(img) => {
                // image_result has unpacked its layers already.
                let src = self.image_result(&img.manifest_digest)?;
                let view = self.view(src.chain().as_ref())?;
                let tree = RootfsTree {
                    root: view.path(),
                    name: format!("image {}", img.reference),
                };
                fileop::copy(c, &tree, &env)
            }
        }
    }

    /// A read-only view of what a RUN `--mount from=` names: a stage (name or index) or an image.
    fn view_of(&self, plan: &Plan, name: &str, results: &Results) -> Result<View, ExecError> {
        if let Some(s) = plan.stage_named(name) {
            let r = results.get(&s.index).ok_or_else(|| {
                ExecError::Store(format!("stage {name} was not built before it was mounted"))
            })?;
            return self.view_result(r);
        }
        let img = self
            .store
            .lookup(name)
            .map_err(|e| ExecError::Store(e.to_string()))?;
        let r = self.image_result(&img.manifest_digest)?;
        self.view(r.chain().as_ref())
    }

    fn run_step(
        &self,
        step: &StepCtx,
        req: &RunRequest,
        chain: Option<&Digest>,
    ) -> Result<Option<LayerRef>, ExecError> {
        let StepCtx {
            plan,
            results,
            context,
            step_id,
            cancel,
        } = *step;
        let mut active = self
            .snapshots
            .prepare_active(chain)
            .map_err(|e| ExecError::Store(format!("preparing the step's filesystem: {e}")))?;
        let context_path = |rel: &str| context.host_path(rel.trim_start_matches('/'), true);
        let from = |name: &str| self.view_of(plan, name, results);
        let sources = MountSources {
            context: &context_path,
            from: &from,
            cache_dir: self.store.root().join("cache").join("mounts"),
            tmp: &self.tmp,
        };
        let created = run_step::run(
            req,
            &active.rootfs,
            &sources,
            &self.run_settings,
            cancel,
            &mut |line| self.progress.log(step_id, line),
        )?;
        // Mount points the sandbox had to create are not part of the step's result.
        super::sandbox::remove_created_mountpoints(&active.rootfs, &created).map_err(|e| {
            ExecError::Store(format!(
                "removing mount points from the step's changes: {e}"
            ))
        })?;
        let upper = active
            .diff()
            .map_err(|e| ExecError::Store(format!("computing the step's changes: {e}")))?
            .to_path_buf();
        let empty = std::fs::read_dir(&upper)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        // The overlay goes first: the upper dir's entries then move into the new snapshot.
        active
            .unmount()
            .map_err(|e| ExecError::Store(format!("unmounting the step's filesystem: {e}")))?;
        let layer = if empty {
            None
        } else {
            Some(self.commit_layer(plan, &upper, chain)?)
        };
        active
            .close()
            .map_err(|e| ExecError::Store(e.to_string()))?;
        Ok(layer)
    }

    /// Turns a layer directory into a layer on top of `parent`: a committed snapshot, and a
    /// blob in the content store unless the layer can live as a snapshot only. `upper` is a
    /// private directory that is consumed: an overlay snapshot takes its entries by rename
    /// instead of unpacking the blob again (one write of the layer's bytes instead of two),
    /// and no blob is written at all (the tar is only hashed; `cache::layer_blob` writes it
    /// if the image leaves the machine).
    fn commit_layer(
        &self,
        plan: &Plan,
        upper: &Path,
        parent: Option<&Digest>,
    ) -> Result<LayerRef, ExecError> {
        let store = |e: String| ExecError::Store(e);
        let opts = LayerOptions {
            source_date_epoch: plan.source_date_epoch,
        };
        // Clamped mtimes (SOURCE_DATE_EPOCH) exist only in the tar: those layers are
        // written and unpacked.
        let movable = plan.source_date_epoch.is_none();
        let snapshot_only = movable && self.snapshots.keeps_layer_diffs();
        let (diff_id, digest, size) = if snapshot_only {
            let (diff_id, size) = layer_blob::hash_layer(upper, &opts)
                .map_err(|e| store(format!("hashing layer: {e}")))?;
            (diff_id.clone(), diff_id, size)
        } else {
            let mut writer = self
                .store
                .content
                .writer()
                .map_err(|e| store(e.to_string()))?;
            let info = layer::write_layer(upper, Compression::Uncompressed, &opts, &mut writer)
                .map_err(|e| store(format!("writing layer: {e}")))?;
            let (digest, size) = self
                .lease
                .commit(writer, Some(&info.digest), Some(info.size))
                .map_err(|e| store(e.to_string()))?;
            (info.diff_id, digest, size)
        };
        let layer = LayerRef {
            blob: Descriptor {
                media_type: media::OCI_LAYER.to_string(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            },
            diff_id,
        };
        let id = crate::cache::snapshot::chain_on(parent, &layer.diff_id);
        if snapshot_only {
            // The snapshot is the layer's only copy: protect it like a blob.
            self.lease.add(&id).map_err(|e| store(e.to_string()))?;
        }
        if !self.snapshots.exists(&id) {
            if movable {
                self.move_into_snapshot(&id, parent, upper, &layer.blob.digest)?;
            } else {
                self.unpack_into_snapshot(&id, parent, &layer.blob.digest)?;
            }
        }
        Ok(layer)
    }

    /// Creates snapshot `id` from a layer directory: by renaming its entries when the
    /// snapshotter stores diffs (overlay), else by unpacking the blob.
    fn move_into_snapshot(
        &self,
        id: &Digest,
        parent: Option<&Digest>,
        upper: &Path,
        blob: &Digest,
    ) -> Result<(), ExecError> {
        let store = &self.store.content;
        let mut fill = |dir: &Path, mode: UnpackMode| -> Result<(), layer::LayerError> {
            let io = |op: &'static str, path: &Path| {
                let path = path.to_path_buf();
                move |source| layer::LayerError::Io { op, path, source }
            };
            if matches!(mode, UnpackMode::OverlayDiff) {
                for entry in std::fs::read_dir(upper).map_err(io("read layer dir", upper))? {
                    let entry = entry.map_err(io("read layer dir", upper))?;
                    let to = dir.join(entry.file_name());
                    std::fs::rename(entry.path(), &to).map_err(io("move into snapshot", &to))?;
                }
                return Ok(());
            }
            unpack_blob(store, blob, dir, mode)
        };
        self.snapshots
            .create(id, parent, &mut fill)
            .map_err(|e| ExecError::Store(format!("creating snapshot {id}: {e}")))
    }
}
