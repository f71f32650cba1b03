//! `kiln build [OPTIONS] CONTEXT`: docker build's flags, BuildKit's behaviour.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::engine::Engine;
use super::progress::{self, ProgressMode};
use super::{parse_key_value, Outcome};
use crate::cache::export::{self, LayerCompression};
use crate::context::hashcache::CachingFileHasher;
use crate::context::{BuildContext, ContextSource};
use crate::executor::build::{Builder, Explain, NoCache};
use crate::executor::explain::BuildRecord;
use crate::executor::run_step::RunSettings;
use crate::executor::ExecError;
use crate::graph::dispatch::{dispatch, DispatchOptions};
use crate::graph::{BuildOptions, GraphError, Platform};
use crate::lint::{render, Problem};
use crate::parser::{self, SourceLines, Span};
use crate::push::cache_export::{self, CacheLocation, CacheSpec};
use crate::push::client::RegistrySettings;
use crate::push::progress::Silent;
use crate::push::push::PushOptions;
use crate::reference::Reference;

/// How a cache spec is named in messages.
fn spec_name(spec: &CacheSpec) -> String {
    match &spec.location {
        CacheLocation::Registry(r) => r.to_string(),
        CacheLocation::Local(d) => d.display().to_string(),
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (`name:tag`); may be given several times.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,

    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Set build-time variables.
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub build_args: Vec<(String, Option<String>)>,

    /// Set the target build stage to build.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Set metadata for the image.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, Option<String>)>,

    /// Do not use cache when building the image.
    #[arg(long)]
    pub no_cache: bool,

    /// Secret to expose to RUN --mount=type=secret: `id=ID,src=FILE` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR", value_parser = crate::executor::run_step::parse_secret)]
    pub secrets: Vec<(String, crate::executor::run_step::SecretSource)>,

    /// SSH agent socket for RUN --mount=type=ssh: `default` or `ID=SOCKET`.
    #[arg(long = "ssh", value_name = "default|ID=SOCKET", value_parser = crate::executor::run_step::parse_ssh)]
    pub ssh: Vec<(String, PathBuf)>,

    /// Extra privileges: `security.insecure` allows RUN --security=insecure.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,

    /// How many steps may run at the same time (default: one per CPU, and more, up to four
    /// per CPU, while CPUs sit idle).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// For every step that misses the cache, say why (which file, arg, env value or base
    /// changed since the last build of this Dockerfile and target).
    #[arg(long)]
    pub explain: bool,

    /// Do not use the cache for these stages (repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,

    /// Type of progress output.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,

    /// Suppress the build output and print the image ID on success.
    #[arg(short, long)]
    pub quiet: bool,

    /// Write the image ID to the file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,

    /// Output destination: `type=image` (default), `type=oci|docker|tar,dest=FILE`, `type=local,dest=DIR`.
    #[arg(short = 'o', long = "output", value_name = "type=TYPE[,dest=PATH]")]
    pub output: Vec<String>,

    /// Layer compression for exported images (oci/docker outputs).
    #[arg(long, value_enum, value_name = "gzip|zstd|uncompressed")]
    pub compression: Option<CompressionArg>,

    /// Push the image to its registry after the build (`--output type=registry`).
    #[arg(long)]
    pub push: bool,

    /// Export build cache: `type=registry,ref=NAME[,mode=min|max]` or `type=local,dest=DIR`.
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,

    /// Import build cache: `type=registry,ref=NAME`, `type=local,src=DIR`, or `NAME`.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,

    /// Allow plain HTTP (and unverified TLS) for this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,

    /// Target platform (os/arch[/variant]).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Build context: a directory, or `-` for a tar on stdin.
    #[arg(value_name = "CONTEXT")]
    pub context: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    Uncompressed,
}

impl CompressionArg {
    pub fn layer(self) -> LayerCompression {
        match self {
            CompressionArg::Gzip => LayerCompression::Gzip,
            CompressionArg::Zstd => LayerCompression::Zstd,
            CompressionArg::Uncompressed => LayerCompression::Uncompressed,
        }
    }
}

/// Where the result goes (`--output`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Image,
    Oci(PathBuf),
    Docker(PathBuf),
    Tar(PathBuf),
    Local(PathBuf),
    /// Push to `name`, or to every `-t` tag.
    Registry(Option<String>),
}

fn parse_output(spec: &str) -> anyhow::Result<Output> {
    let mut kind = None;
    let mut dest = None;
    let mut name = None;
    let mut push = false;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("dest", v)) => dest = Some(PathBuf::from(v)),
            Some(("name", v)) => name = Some(v.to_string()),
            Some(("push", v)) => push = v == "true",
            None if kind.is_none() => dest = Some(PathBuf::from(part)),
            _ => bail!("invalid --output {spec:?}: expected type=TYPE[,dest=PATH]"),
        }
    }
    let kind = kind.unwrap_or_else(|| "local".into());
    let need = |d: Option<PathBuf>| {
        d.ok_or_else(|| anyhow::anyhow!("--output type={kind} needs dest=PATH"))
    };
    Ok(match kind.as_str() {
        "image" if push => Output::Registry(name),
        "image" => Output::Image,
        "registry" => Output::Registry(name),
        "oci" => Output::Oci(need(dest.clone())?),
        "docker" => Output::Docker(need(dest.clone())?),
        "tar" => Output::Tar(need(dest.clone())?),
        "local" => Output::Local(need(dest.clone())?),
        other => {
            bail!("unsupported --output type {other:?} (image, registry, oci, docker, tar, local)")
        }
    })
}

/// A build failure printed like `kiln check` does: file:line:col, source line, caret.
fn located(file: &str, src: &SourceLines, span: Span, message: String) -> anyhow::Error {
    let text = render::problem_text(&Problem::error(span, "BuildError", message), file, src);
    anyhow::anyhow!("{}", text.trim_end())
}

pub fn run(args: &BuildArgs, root: &Path) -> anyhow::Result<Outcome> {
    if let Some(bad) = args
        .allow
        .iter()
        .find(|a| *a != "security.insecure" && *a != "network.host")
    {
        bail!("unknown --allow entitlement {bad:?} (security.insecure, network.host)");
    }
    let outputs = args
        .output
        .iter()
        .map(|o| parse_output(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outputs = if outputs.is_empty() {
        vec![Output::Image]
    } else {
        outputs
    };
    if args.push && !outputs.iter().any(|o| matches!(o, Output::Registry(_))) {
        outputs.push(Output::Registry(None));
    }
    let tags = args
        .tags
        .iter()
        .map(|t| {
            Reference::parse(t)
                .map(|r| r.with_default_tag())
                .map_err(|e| anyhow::anyhow!("invalid tag {t:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // The context, the Dockerfile and its ignore file.
    let (source, context_dir) = if args.context == "-" {
        (ContextSource::Tar(Box::new(std::io::stdin())), None)
    } else {
        let dir = PathBuf::from(&args.context);
        if !dir.is_dir() {
            bail!(
                "unable to prepare context: path {:?} not found",
                args.context
            );
        }
        (ContextSource::Dir(dir.clone()), Some(dir))
    };
    let dockerfile_path = match (&args.file, &context_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(d)) => d.join("Dockerfile"),
        (None, None) => PathBuf::from("Dockerfile"),
    };
    let ignore_text = match &context_dir {
        Some(dir) => crate::context::dockerignore::ignore_file_for(&dockerfile_path, dir)
            .and_then(|p| std::fs::read_to_string(p).ok()),
        None => None,
    };
    let hasher = std::sync::Arc::new(match &context_dir {
        Some(dir) => CachingFileHasher::open(&CachingFileHasher::index_path(root, dir)),
        None => CachingFileHasher::open(&root.join("cache").join("context").join("stdin.json")),
    });
    let context = BuildContext::open(source, ignore_text.as_deref())
        .context("opening the build context")?
        .with_hasher(hasher.clone());
    let dockerfile_path = if context_dir.is_none() && args.file.is_none() {
        context.root().join("Dockerfile")
    } else if context_dir.is_none() {
        context.root().join(dockerfile_path)
    } else {
        dockerfile_path
    };
    let mut text = String::new();
    let from_stdin = args.file.as_deref() == Some(Path::new("-"));
    if from_stdin {
        if args.context == "-" {
            bail!("the Dockerfile and the context cannot both come from standard input");
        }
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the Dockerfile from standard input")?;
    } else {
        std::fs::File::open(&dockerfile_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read Dockerfile {}", dockerfile_path.display()))?;
    }
    let file_name = if from_stdin {
        "Dockerfile".to_string()
    } else {
        dockerfile_path.display().to_string()
    };
    let src = SourceLines::new(&text);
    let dockerfile =
        parser::parse(&text).map_err(|e| located(&file_name, &src, e.span(), e.to_string()))?;

    // Options.
    let mut build = BuildOptions::default();
    if let Some(p) = &args.platform {
        build.target_platform = Platform::parse(p)?;
    }
    for (k, v) in &args.build_args {
        if let Some(v) = v {
            build.build_args.insert(k.clone(), v.clone());
        }
    }
    let labels: BTreeMap<String, String> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect();
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .with_context(|| format!("invalid SOURCE_DATE_EPOCH {v:?}"))?,
        ),
        _ => None,
    };
    let opts = DispatchOptions {
        build,
        target: args.target.clone(),
        labels,
        now: crate::cache::image::unix_now(),
        source_date_epoch,
    };

    let engine = Engine::open(root)?;
    let settings = RegistrySettings::load(&args.insecure_registry)?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|s| CacheSpec::parse(s, true))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|s| CacheSpec::parse(s, false))
        .collect::<Result<Vec<_>, _>>()?;
    let snapshots = engine.snapshotter()?;
    let images = super::engine::PullingImages {
        store: &engine.store,
        settings: &settings,
        platform: opts.build.target_platform.clone(),
        snapshots: Some(snapshots.as_ref()),
        quiet: args.quiet,
    };
    let plan = dispatch(&dockerfile, &opts, &images).map_err(|e| match e {
        GraphError::Expansion { span, message } if span.start_line > 0 => {
            located(&file_name, &src, span, message)
        }
        e => anyhow::anyhow!(e),
    })?;
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let progress = progress::display(mode);
    let scratch = engine.tmp();
    let lease =
        crate::cache::gc::Leases::acquire(&engine.root, "build").context("starting the build")?;
    let cache = crate::cache::buildcache::BuildCache::open(&engine.root)?;
    let cache_env = cache_export::CacheEnv {
        settings: &settings,
        progress: &Silent,
        snapshots: Some(snapshots.as_ref()),
    };
    for spec in &cache_from {
        let got = cache_export::import_cache(&engine.store, &cache, spec, &cache_env)
            .with_context(|| format!("importing build cache from {}", spec_name(spec)))?;
        if !args.quiet {
            eprintln!(
                "imported build cache from {}: {} steps, {} layers",
                spec_name(spec),
                got.records,
                got.layers
            );
        }
    }
    let explain_path = BuildRecord::path(&engine.root, &dockerfile_path, args.target.as_deref());
    let no_cache = if args.no_cache {
        NoCache::All
    } else if !args.no_cache_filter.is_empty() {
        NoCache::Stages(args.no_cache_filter.clone())
    } else {
        NoCache::None
    };
    let builder = Builder {
        store: &engine.store,
        snapshots: snapshots.as_ref(),
        tmp: scratch.clone(),
        progress: progress.as_ref(),
        lease: &lease,
        cache: Some(&cache),
        no_cache,
        jobs: args
            .jobs
            .map_or_else(crate::executor::schedule::Jobs::adaptive, |n| {
                crate::executor::schedule::Jobs::fixed(n)
            }),
        explain: Some(Explain {
            previous: if args.explain {
                BuildRecord::load(&explain_path)
            } else {
                None
            },
            current: Default::default(),
            report: args.explain,
        }),
        run_settings: RunSettings {
            secrets: args.secrets.iter().cloned().collect(),
            ssh: args.ssh.iter().cloned().collect(),
            allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        },
    };
    let tree = crate::executor::context_tree::ContextTree::new(&context, hasher.clone());
    let image = builder.build(&plan, &tree).map_err(|e| match e {
        ExecError::Step {
            span,
            instruction,
            message,
        } => located(&file_name, &src, span, format!("{instruction}: {message}")),
        e => anyhow::anyhow!(e),
    })?;

    let first_step = plan.stages.iter().map(|s| s.ops.len()).sum::<usize>() + 1;
    for (step, output) in (first_step..).zip(outputs.iter()) {
        match output {
            Output::Image => {
                progress.note(step, &format!("writing image {} done", image.id()));
                for t in &tags {
                    engine.store.tag(t, &image.manifest_digest)?;
                    progress.note(step, &format!("naming to {t} done"));
                }
            }
            Output::Oci(dest) | Output::Docker(dest) => {
                let compression = args
                    .compression
                    .map(CompressionArg::layer)
                    .unwrap_or(LayerCompression::Keep);
                let exported =
                    export::prepare_for_export(&engine.store, &image.manifest_digest, compression)?;
                let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
                let file = std::fs::File::create(dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                let mut w = std::io::BufWriter::new(file);
                if matches!(output, Output::Oci(_)) {
                    export::write_oci_archive(&engine.store, &[(names, exported)], &mut w)?;
                } else {
                    export::write_docker_archive(&engine.store, &[(names, exported)], &mut w)?;
                }
                w.flush()?;
                progress.note(step, &format!("exporting to {} done", dest.display()));
            }
            Output::Local(dest) | Output::Tar(dest) => {
                builder.ensure_image_snapshots(&image.manifest_digest)?;
                let chain = crate::cache::snapshot::chain_id(&image.config.rootfs.diff_ids);
                let view = snapshots.view(chain.as_ref())?;
                if let Output::Local(dir) = output {
                    crate::executor::export_fs::copy_tree(view.path(), dir)?;
                } else {
                    let file = std::fs::File::create(dest)
                        .with_context(|| format!("cannot create {}", dest.display()))?;
                    crate::executor::export_fs::write_tar(
                        view.path(),
                        std::io::BufWriter::new(file),
                    )?;
                }
                progress.note(step, &format!("exporting files to {} done", dest.display()));
            }
            Output::Registry(name) => {
                let targets = match name {
                    Some(n) => vec![Reference::parse(n)
                        .map(|r| r.with_default_tag())
                        .map_err(|e| anyhow::anyhow!("invalid name {n:?}: {e}"))?],
                    None if tags.is_empty() => {
                        bail!(
                            "pushing needs a name: use -t NAME or --output type=registry,name=NAME"
                        )
                    }
                    None => tags.clone(),
                };
                let push_opts = PushOptions {
                    settings: &settings,
                    progress: &Silent,
                    compression: args
                        .compression
                        .map(CompressionArg::layer)
                        .unwrap_or(LayerCompression::Keep),
                };
                for t in &targets {
                    engine.store.tag(t, &image.manifest_digest)?;
                    let pushed = crate::push::push::push(
                        &engine.store,
                        &image.manifest_digest,
                        t,
                        &push_opts,
                    )?;
                    progress.note(
                        step,
                        &format!("pushing {t} with digest {} done", pushed.digest),
                    );
                }
            }
        }
    }
    for spec in &cache_to {
        let sent = cache_export::export_cache(
            &engine.store,
            &cache,
            &cache.touched(),
            &image.config.rootfs.diff_ids,
            spec,
            &cache_env,
        )
        .with_context(|| format!("exporting build cache to {}", spec_name(spec)))?;
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
    progress.finish();
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(e) = cache.flush_uses() {
        tracing::warn!("could not record build cache use: {e}");
    }
    if context_dir.is_some() {
        if let Err(e) = hasher.save() {
            tracing::warn!("could not save the context hash index: {e}");
        }
    }
    if let Some(explain) = &builder.explain {
        if let Ok(current) = explain.current.lock() {
            if let Err(e) = current.save(&explain_path) {
                tracing::warn!("could not save the --explain record: {e}");
            }
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, image.id().as_str())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.quiet {
        println!("{}", image.id());
    }
    Ok(Outcome::Success)
}
