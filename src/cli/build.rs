//! `kiln build [OPTIONS] CONTEXT`: docker build's flags, BuildKit's behaviour.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::progress::{self, ProgressMode};
use super::{parse_key_value, Outcome};
use crate::cache::export::LayerCompression;
use crate::context::hashcache::CachingFileHasher;
use crate::context::ContextSource;
use crate::engine::build::{BuildProgress, BuildRequest, DockerfileSource, Output};
use crate::executor::build::NoCache;
use crate::executor::run_step::RunSettings;
use crate::executor::schedule::Jobs;
use crate::push::cache_export::CacheSpec;
use crate::push::client::RegistrySettings;

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

    /// Layer compression for exported and pushed images (oci/docker outputs, --push, type=registry).
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

/// The terminal display as the engine's progress: step events, output notes, and cache
/// import messages on stderr (unless `-q`).
struct Shown<'a> {
    display: &'a dyn progress::Display,
    quiet: bool,
}

impl crate::executor::build::Progress for Shown<'_> {
    fn started(&self, id: usize, name: &str) {
        self.display.started(id, name);
    }
    fn done(&self, id: usize, seconds: f64) {
        self.display.done(id, seconds);
    }
    fn cached(&self, id: usize) {
        self.display.cached(id);
    }
    fn log(&self, id: usize, line: &str) {
        self.display.log(id, line);
    }
}

impl BuildProgress for Shown<'_> {
    fn note(&self, id: usize, text: &str) {
        self.display.note(id, text);
    }
    fn message(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

pub fn run(args: &BuildArgs, root: &Path) -> anyhow::Result<Outcome> {
    if let Some(bad) = args
        .allow
        .iter()
        .find(|a| *a != "security.insecure" && *a != "network.host")
    {
        bail!("unknown --allow entitlement {bad:?} (security.insecure, network.host)");
    }
    let mut outputs = args
        .output
        .iter()
        .map(|o| parse_output(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.push && !outputs.iter().any(|o| matches!(o, Output::Registry(_))) {
        if outputs.is_empty() {
            outputs.push(Output::Image);
        }
        outputs.push(Output::Registry(None));
    }

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
    let from_stdin = args.file.as_deref() == Some(Path::new("-"));
    if from_stdin && args.context == "-" {
        bail!("the Dockerfile and the context cannot both come from standard input");
    }
    // A context from stdin holds its Dockerfile; otherwise it is read from its path.
    let (dockerfile, dockerfile_path) = match (&args.file, &context_dir) {
        (_, _) if from_stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Dockerfile from standard input")?;
            let name = "Dockerfile".to_string();
            (DockerfileSource::Text { name, text }, None)
        }
        (file, Some(dir)) => {
            let path = file.clone().unwrap_or_else(|| dir.join("Dockerfile"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read Dockerfile {}", path.display()))?;
            let name = path.display().to_string();
            (DockerfileSource::Text { name, text }, Some(path))
        }
        (file, None) => {
            let inside = file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "Dockerfile".into());
            (DockerfileSource::InContext(inside), None)
        }
    };
    let ignore = match (&context_dir, &dockerfile_path) {
        (Some(dir), Some(path)) => crate::context::dockerignore::ignore_file_for(path, dir)
            .and_then(|p| std::fs::read_to_string(p).ok()),
        (Some(dir), None) => std::fs::read_to_string(dir.join(".dockerignore")).ok(),
        _ => None,
    };
    let hasher = std::sync::Arc::new(match &context_dir {
        Some(dir) => CachingFileHasher::open(&CachingFileHasher::index_path(root, dir)),
        None => CachingFileHasher::open(&root.join("cache").join("context").join("stdin.json")),
    });

    let mut request = BuildRequest::new(source);
    request.ignore = ignore;
    request.hasher = Some(hasher.clone());
    request.dockerfile = dockerfile;
    request.tags = args.tags.clone();
    request.platform = args.platform.clone();
    request.build_args = args
        .build_args
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    request.labels = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect();
    request.source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .with_context(|| format!("invalid SOURCE_DATE_EPOCH {v:?}"))?,
        ),
        _ => None,
    };
    request.target = args.target.clone();
    request.no_cache = if args.no_cache {
        NoCache::All
    } else if !args.no_cache_filter.is_empty() {
        NoCache::Stages(args.no_cache_filter.clone())
    } else {
        NoCache::None
    };
    request.jobs = args.jobs.map_or_else(Jobs::adaptive, Jobs::fixed);
    request.run_settings = RunSettings {
        secrets: args.secrets.iter().cloned().collect(),
        ssh: args.ssh.iter().cloned().collect(),
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
    };
    request.explain = args.explain;
    request.registry = Some(RegistrySettings::load(&args.insecure_registry)?);
    request.quiet = args.quiet;
    request.cache_to = args
        .cache_to
        .iter()
        .map(|s| CacheSpec::parse(s, true))
        .collect::<Result<Vec<_>, _>>()?;
    request.cache_from = args
        .cache_from
        .iter()
        .map(|s| CacheSpec::parse(s, false))
        .collect::<Result<Vec<_>, _>>()?;
    request.outputs = outputs;
    request.compression = args.compression.map(CompressionArg::layer);

    let engine = crate::engine::Engine::open(root)?;
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let display = progress::display(mode);
    let shown = Shown {
        display: display.as_ref(),
        quiet: args.quiet,
    };
    let built = crate::engine::build::build(&engine, request, &shown);
    display.finish();
    if context_dir.is_some() {
        if let Err(e) = hasher.save() {
            tracing::warn!("could not save the context hash index: {e}");
        }
    }
    let image = built?.image;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, image.id().as_str())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.quiet {
        println!("{}", image.id());
    }
    Ok(Outcome::Success)
}
