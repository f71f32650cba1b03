//! Dispatch: parsed stages → a build plan with every value expanded.
//!
//! Like BuildKit's `dockerfile2llb`, this walks the stages the target needs, resolves what each
//! FROM and `--from` refers to (scratch, an earlier stage, an image), runs the base image's
//! ONBUILD triggers, applies ARG/ENV scoping to every word, and computes the image config each
//! stage ends with. It touches no filesystem: the steps that change files (COPY, ADD, WORKDIR)
//! become [`Op`]s that the executor carries out.

use std::collections::{BTreeMap, BTreeSet};

use crate::cache::image::{rfc3339, Empty, HealthConfig, ImageConfig};
use crate::cache::Digest;
use crate::parser::instructions::{
    self, CommandLine, Healthcheck, Instruction, NetworkMode, Security, Source,
};
use crate::parser::mount::{parse_mount, Mount};
use crate::parser::shell::Lexer;
use crate::parser::{ast, Dockerfile, SourceLines, Span, Spanned, Stage};

use super::scope::{BuildOptions, Scope};
use super::GraphError;

/// The default PATH BuildKit gives images that have none (linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image found by reference, as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
}

/// Looks images up (in the local store; later also in registries).
pub trait ImageSource {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String>;
}

/// What a stage starts from.
#[derive(Debug, Clone)]
pub enum Base {
    Scratch,
    Stage(usize),
    Image(Box<ResolvedImage>),
}

/// Where COPY takes its sources from.
#[derive(Debug, Clone)]
pub enum CopyFrom {
    Context,
    Stage(usize),
    Image(Box<ResolvedImage>),
}

/// A COPY/ADD source after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path or wildcard pattern (relative to the context or the source stage's root).
    Path(String),
    /// A URL (ADD only).
    Url(String),
    /// An inline file from a heredoc: (file name, content).
    Inline(String, String),
}

/// A COPY or ADD with expanded values.
#[derive(Debug, Clone)]
pub struct CopyOp {
    pub from: CopyFrom,
    pub sources: Vec<CopySource>,
    /// Absolute destination in the image, as written after WORKDIR resolution; a trailing
    /// `/` is kept because it means "a directory".
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    /// ADD only: extract local archives (default true for local files).
    pub unpack: Option<bool>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub is_add: bool,
}

/// A step of a stage.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// Changes files: produces a layer (or nothing if no file changes).
    Copy(CopyOp),
    /// WORKDIR: creates the directory (owned by `user`) if it does not exist.
    Mkdir { path: String, user: Option<String> },
    /// A RUN step (executed by the sandbox).
    Run {
        args: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
        workdir: String,
        /// `--mount` specs as written (for the cache key).
        mounts: Vec<String>,
        /// The same mounts, expanded and parsed.
        parsed_mounts: Vec<Mount>,
        /// `default`, `none` or `host`.
        network: String,
        /// `sandbox` or `insecure`.
        security: String,
    },
    /// Metadata only: a history entry without a layer.
    Metadata,
}

/// One step with its place in the Dockerfile and its history text.
#[derive(Debug, Clone)]
pub struct Op {
    pub span: Span,
    /// `created_by` of the history entry.
    pub created_by: String,
    pub kind: OpKind,
}

/// A stage ready to execute.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub index: usize,
    pub name: Option<String>,
    pub span: Span,
    pub base: Base,
    pub ops: Vec<Op>,
    /// The config the stage ends with, before this stage's layers and history are appended.
    pub config: ImageConfig,
}

/// Everything a build has to do, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Stages to build, dependencies before the stages that use them; the last is the target.
    pub stages: Vec<StagePlan>,
    /// Unix seconds used for `created` timestamps.
    pub created: i64,
    /// Set when SOURCE_DATE_EPOCH was given: timestamps and file mtimes are clamped to it.
    pub source_date_epoch: Option<i64>,
}

impl Plan {
    pub fn target(&self) -> Option<&StagePlan> {
        self.stages.last()
    }

    pub fn stage(&self, index: usize) -> Option<&StagePlan> {
        self.stages.iter().find(|s| s.index == index)
    }

    /// The planned stage a `from=` reference names: by name (case-insensitive) or index.
    pub fn stage_named(&self, reference: &str) -> Option<&StagePlan> {
        self.stages.iter().find(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(reference))
                || reference.parse::<usize>().ok() == Some(s.index)
        })
    }
}

/// Inputs of a dispatch besides the Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct DispatchOptions {
    pub build: BuildOptions,
    /// `--target`: a stage name (or index); default the last stage.
    pub target: Option<String>,
    /// `--label`: added to the target image.
    pub labels: BTreeMap<String, String>,
    /// Build time (unix seconds).
    pub now: i64,
    /// SOURCE_DATE_EPOCH from the environment (a `--build-arg` of that name also counts).
    pub source_date_epoch: Option<i64>,
}

fn err(span: Span, message: impl Into<String>) -> GraphError {
    GraphError::Expansion {
        span,
        message: message.into(),
    }
}

/// Plans a build of `opts.target` (or the last stage).
pub fn dispatch(
    file: &Dockerfile,
    opts: &DispatchOptions,
    images: &dyn ImageSource,
) -> Result<Plan, GraphError> {
    let lexer = Lexer::new(file.directives.escape);
    let meta: Vec<_> = file.meta_args.iter().map(|a| a.node.clone()).collect();
    let (global, _) = Scope::global(&meta, &opts.build, &lexer).map_err(|e| {
        err(
            file.meta_args.first().map(|a| a.span).unwrap_or_default(),
            e.to_string(),
        )
    })?;
    let source_date_epoch = match opts.build.build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            err(
                Span::default(),
                format!("invalid SOURCE_DATE_EPOCH build arg {v:?}: expected unix seconds"),
            )
        })?),
        None => opts.source_date_epoch,
    };
    let created = source_date_epoch.unwrap_or(opts.now);

    let target = match &opts.target {
        None => file
            .stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| err(Span::default(), "the Dockerfile has no stages"))?,
        Some(t) => file
            .stages
            .iter()
            .find(|s| s.is_named(t))
            .map(|s| s.index)
            .ok_or_else(|| {
                let names: Vec<&str> = file
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                err(
                    Span::default(),
                    format!(
                        "target stage {t:?} could not be found (stages: {})",
                        if names.is_empty() {
                            "none named".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            })?,
    };

    let mut d = Dispatcher {
        file,
        opts,
        images,
        lexer,
        global,
        planned: BTreeMap::new(),
        visiting: BTreeSet::new(),
        order: Vec::new(),
    };
    d.plan_stage(target)?;
    let mut stages: Vec<StagePlan> = d.order.iter().filter_map(|i| d.planned.remove(i)).collect();
    if let Some(last) = stages.last_mut() {
        if !opts.labels.is_empty() {
            let labels = last.config.config.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(opts.labels.clone());
        }
    }
    Ok(Plan {
        stages,
        created,
        source_date_epoch,
    })
}

struct Dispatcher<'a> {
    file: &'a Dockerfile,
    opts: &'a DispatchOptions,
    images: &'a dyn ImageSource,
    lexer: Lexer,
    global: Scope,
    planned: BTreeMap<usize, StagePlan>,
    visiting: BTreeSet<usize>,
    order: Vec<usize>,
}

/// Per-stage dispatch state.
struct StageState {
    scope: Scope,
    config: ImageConfig,
    shell: Vec<String>,
    cmd_set: bool,
    ops: Vec<Op>,
}

impl Dispatcher<'_> {
    fn expand(&self, word: &str, scope: &Scope, span: Span) -> Result<String, GraphError> {
        scope
            .expand(word, &self.lexer)
            .map(|e| e.word)
            .map_err(|e| err(span, e.to_string()))
    }

    /// Resolves a FROM/`--from` name: an earlier stage (by name, or by index when `allow_index`),
    /// else `None` (an image).
    fn stage_ref(&self, name: &str, before: usize, allow_index: bool) -> Option<usize> {
        let found = self.file.stages.iter().take(before).rev().find(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
                || (allow_index && name.parse::<usize>().ok() == Some(s.index))
        });
        found.map(|s| s.index)
    }

    fn plan_stage(&mut self, index: usize) -> Result<(), GraphError> {
        if self.planned.contains_key(&index) {
            return Ok(());
        }
        let stage = &self.file.stages[index];
        if !self.visiting.insert(index) {
            return Err(err(
                stage.span,
                format!(
                    "circular dependency detected on stage {}",
                    stage.name.clone().unwrap_or(index.to_string())
                ),
            ));
        }
        let plan = self.dispatch_stage(stage)?;
        self.visiting.remove(&index);
        self.planned.insert(index, plan);
        self.order.push(index);
        Ok(())
    }

    fn resolve_image(&self, name: &str, span: Span) -> Result<ResolvedImage, GraphError> {
        self.images.resolve(name).map_err(|e| err(span, e))
    }

    fn dispatch_stage(&mut self, stage: &Stage) -> Result<StagePlan, GraphError> {
        let base_name = self.expand(&stage.base, &self.global.clone(), stage.span)?;
        if base_name.is_empty() {
            return Err(err(
                stage.span,
                format!("base name ({}) should not be blank", stage.base),
            ));
        }
        let (base, mut config) = if base_name.eq_ignore_ascii_case("scratch") {
            let p = &self.opts.build.target_platform;
            let mut c = ImageConfig {
                architecture: p.arch.clone(),
                os: p.os.clone(),
                variant: p.variant.clone(),
                ..ImageConfig::default()
            };
            c.config.env = Some(vec![format!("PATH={DEFAULT_PATH}")]);
            c.config.working_dir = Some("/".into());
            (Base::Scratch, c)
        } else if let Some(i) = self.stage_ref(&base_name, stage.index, false) {
            self.plan_stage(i)?;
            let parent = self
                .planned
                .get(&i)
                .map(|p| p.config.clone())
                .unwrap_or_default();
            (Base::Stage(i), parent)
        } else {
            let image = self.resolve_image(&base_name, stage.span)?;
            let mut c = image.config.clone();
            if c.env_value("PATH").is_none() {
                c.set_env("PATH", DEFAULT_PATH);
            }
            (Base::Image(Box::new(image)), c)
        };
        let triggers = config.config.on_build.take().unwrap_or_default();
        let env = config.config.env.clone().unwrap_or_default();
        let mut st = StageState {
            scope: Scope::for_stage(env.iter().map(String::as_str)),
            shell: config
                .config
                .shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]),
            config,
            cmd_set: false,
            ops: Vec::new(),
        };
        for trigger in &triggers {
            let instruction = parse_trigger(trigger).map_err(|e| {
                err(
                    stage.span,
                    format!("ONBUILD trigger {trigger:?} from the base image: {e}"),
                )
            })?;
            self.dispatch_instruction(
                stage,
                &mut st,
                &Spanned {
                    span: stage.span,
                    node: instruction,
                },
            )?;
        }
        for item in &stage.instructions {
            self.dispatch_instruction(stage, &mut st, item)?;
        }
        Ok(StagePlan {
            index: stage.index,
            name: stage.name.clone(),
            span: stage.span,
            base,
            ops: st.ops,
            config: st.config,
        })
    }

    fn meta(&self, st: &mut StageState, span: Span, created_by: String) {
        st.ops.push(Op {
            span,
            created_by,
            kind: OpKind::Metadata,
        });
    }

    fn command(&self, st: &StageState, c: &CommandLine) -> Vec<String> {
        match c {
            CommandLine::Exec(v) => v.clone(),
            CommandLine::Shell(s) => {
                let mut v = st.shell.clone();
                v.push(s.clone());
                v
            }
        }
    }

    fn dispatch_instruction(
        &mut self,
        stage: &Stage,
        st: &mut StageState,
        item: &Spanned<Instruction>,
    ) -> Result<(), GraphError> {
        let span = item.span;
        match &item.node {
            Instruction::Arg { args } => {
                for decl in args {
                    st.scope
                        .declare_arg(decl, &self.opts.build, Some(&self.global), &self.lexer)
                        .map_err(|e| err(span, e.to_string()))?;
                }
            }
            Instruction::Env { pairs } => {
                let mut parts = Vec::new();
                for kv in pairs {
                    let key = self.expand(&kv.key, &st.scope, span)?;
                    let e = st
                        .scope
                        .set_env(&key, &kv.value, &self.lexer)
                        .map_err(|e| err(span, e.to_string()))?;
                    st.config.set_env(&key, &e.word);
                    parts.push(format!("{key}={}", e.word));
                }
                self.meta(st, span, format!("ENV {}", parts.join(" ")));
            }
            Instruction::Label { pairs } => {
                let mut parts = Vec::new();
                for kv in pairs {
                    let key = self.expand(&kv.key, &st.scope, span)?;
                    let value = self.expand(&kv.value, &st.scope, span)?;
                    parts.push(format!("{key}={value}"));
                    st.config
                        .config
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
                self.meta(st, span, format!("LABEL {}", parts.join(" ")));
            }
            Instruction::Maintainer { name } => {
                st.config.author = Some(name.clone());
                self.meta(st, span, format!("MAINTAINER {name}"));
            }
            Instruction::User { user } => {
                let user = self.expand(user, &st.scope, span)?;
                st.config.config.user = Some(user.clone());
                self.meta(st, span, format!("USER {user}"));
            }
            Instruction::Workdir { path } => {
                let path = self.expand(path, &st.scope, span)?;
                let current = st
                    .config
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into());
                let resolved = clean_path(&join_path(&current, &path));
                st.config.config.working_dir = Some(resolved.clone());
                st.ops.push(Op {
                    span,
                    created_by: format!("WORKDIR {resolved}"),
                    kind: OpKind::Mkdir {
                        path: resolved,
                        user: st.config.config.user.clone().filter(|u| !u.is_empty()),
                    },
                });
            }
            Instruction::Expose { ports } => {
                let mut added = Vec::new();
                for p in ports {
                    let p = self.expand(p, &st.scope, span)?;
                    for port in expand_port_spec(&p).map_err(|m| err(span, m))? {
                        st.config
                            .config
                            .exposed_ports
                            .get_or_insert_with(BTreeMap::new)
                            .insert(port.clone(), Empty {});
                        added.push(format!("{port}:{{}}"));
                    }
                }
                added.sort();
                self.meta(st, span, format!("EXPOSE map[{}]", added.join(" ")));
            }
            Instruction::Volume { paths } => {
                let mut added = Vec::new();
                for p in paths {
                    let p = self.expand(p, &st.scope, span)?;
                    if p.trim().is_empty() {
                        return Err(err(span, "VOLUME specified can not be an empty string"));
                    }
                    st.config
                        .config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(p.clone(), Empty {});
                    added.push(p);
                }
                self.meta(st, span, format!("VOLUME [{}]", added.join(" ")));
            }
            Instruction::Stopsignal { signal } => {
                let signal = self.expand(signal, &st.scope, span)?;
                validate_signal(&signal).map_err(|m| err(span, m))?;
                st.config.config.stop_signal = Some(signal.clone());
                self.meta(st, span, format!("STOPSIGNAL {signal}"));
            }
            Instruction::Healthcheck(h) => {
                let (hc, text) = match h {
                    Healthcheck::None => (
                        HealthConfig {
                            test: vec!["NONE".into()],
                            ..Default::default()
                        },
                        "NONE".to_string(),
                    ),
                    Healthcheck::Cmd { command, options } => {
                        let test = match command {
                            CommandLine::Exec(v) => std::iter::once("CMD".to_string())
                                .chain(v.iter().cloned())
                                .collect::<Vec<_>>(),
                            CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                        };
                        let text = format!("{test:?}");
                        (
                            HealthConfig {
                                test,
                                interval: options.interval.unwrap_or(0),
                                timeout: options.timeout.unwrap_or(0),
                                start_period: options.start_period.unwrap_or(0),
                                start_interval: options.start_interval.unwrap_or(0),
                                retries: options.retries.unwrap_or(0),
                            },
                            text,
                        )
                    }
                };
                st.config.config.healthcheck = Some(hc);
                self.meta(st, span, format!("HEALTHCHECK {text}"));
            }
            Instruction::Shell { shell } => {
                st.shell = shell.clone();
                st.config.config.shell = Some(shell.clone());
                self.meta(st, span, format!("SHELL {shell:?}"));
            }
            Instruction::Cmd { command } => {
                let cmd = self.command(st, command);
                self.meta(st, span, format!("CMD {cmd:?}"));
                st.config.config.cmd = Some(cmd);
                st.cmd_set = true;
            }
            Instruction::Entrypoint { command } => {
                let ep = self.command(st, command);
                self.meta(st, span, format!("ENTRYPOINT {ep:?}"));
                st.config.config.entrypoint = Some(ep);
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
            }
            Instruction::Onbuild { expression, .. } => {
                st.config
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(expression.clone());
                self.meta(st, span, format!("ONBUILD {expression}"));
            }
            Instruction::Copy(c) => {
                let from = match &c.from {
                    None => CopyFrom::Context,
                    Some(f) => {
                        let f = self.expand(f, &st.scope, span)?;
                        match self.stage_ref(&f, stage.index, true) {
                            Some(i) => {
                                self.plan_stage(i)?;
                                CopyFrom::Stage(i)
                            }
                            None => CopyFrom::Image(Box::new(self.resolve_image(&f, span)?)),
                        }
                    }
                };
                let op = self.copy_op(
                    st,
                    span,
                    from,
                    &c.sources,
                    &c.dest,
                    c.chown.as_deref(),
                    c.chmod.as_deref(),
                    false,
                )?;
                let op = CopyOp {
                    link: c.link,
                    parents: c.parents,
                    excludes: self.expand_all(&c.excludes, &st.scope, span)?,
                    ..op
                };
                st.ops.push(Op {
                    span,
                    created_by: copy_history("COPY", &c.sources, &c.dest),
                    kind: OpKind::Copy(op),
                });
            }
            Instruction::Add(a) => {
                let op = self.copy_op(
                    st,
                    span,
                    CopyFrom::Context,
                    &a.sources,
                    &a.dest,
                    a.chown.as_deref(),
                    a.chmod.as_deref(),
                    true,
                )?;
                let checksum = a
                    .checksum
                    .as_ref()
                    .map(|c| self.expand(c, &st.scope, span))
                    .transpose()?;
                let op = CopyOp {
                    link: a.link,
                    excludes: self.expand_all(&a.excludes, &st.scope, span)?,
                    unpack: a.unpack,
                    checksum,
                    keep_git_dir: a.keep_git_dir,
                    ..op
                };
                st.ops.push(Op {
                    span,
                    created_by: copy_history("ADD", &a.sources, &a.dest),
                    kind: OpKind::Copy(op),
                });
            }
            Instruction::Run(run) => {
                let args = match &run.command {
                    CommandLine::Exec(v) => v.clone(),
                    CommandLine::Shell(s) => {
                        let mut v = st.shell.clone();
                        v.push(shell_script(s, &run.heredocs));
                        v
                    }
                };
                let env: Vec<String> = st
                    .scope
                    .build_env()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let mut mounts = Vec::with_capacity(run.mount_specs.len());
                let mut parsed_mounts = Vec::with_capacity(run.mount_specs.len());
                for spec in &run.mount_specs {
                    let scope = &st.scope;
                    let lexer = self.lexer;
                    let expand = |v: &str| {
                        scope
                            .expand(v, &lexer)
                            .map(|e| e.word)
                            .map_err(|e| e.to_string())
                    };
                    let mount = parse_mount(spec, Some(&expand))
                        .map_err(|m| err(span, format!("--mount={spec}: {m}")))?;
                    // A stage mounted with `from=` must be built first, like `COPY --from`.
                    if let Some(i) = mount
                        .from
                        .as_deref()
                        .and_then(|f| self.stage_ref(f, stage.index, true))
                    {
                        self.plan_stage(i)?;
                    }
                    parsed_mounts.push(mount);
                    mounts.push(spec.clone());
                }
                let network = match run.network {
                    Some(NetworkMode::None) => "none",
                    Some(NetworkMode::Host) => "host",
                    _ => "default",
                };
                let security = match run.security {
                    Some(Security::Insecure) => "insecure",
                    _ => "sandbox",
                };
                let shown = match &run.command {
                    CommandLine::Exec(v) => format!("{v:?}"),
                    CommandLine::Shell(s) => format!("{} {s}", st.shell.join(" ")),
                };
                st.ops.push(Op {
                    span,
                    created_by: format!("RUN {shown} # buildkit"),
                    kind: OpKind::Run {
                        args,
                        env,
                        user: st.config.config.user.clone().filter(|u| !u.is_empty()),
                        workdir: st
                            .config
                            .config
                            .working_dir
                            .clone()
                            .unwrap_or_else(|| "/".into()),
                        mounts,
                        parsed_mounts,
                        network: network.into(),
                        security: security.into(),
                    },
                });
            }
            Instruction::From(_) => {}
        }
        Ok(())
    }

    fn expand_all(
        &self,
        words: &[String],
        scope: &Scope,
        span: Span,
    ) -> Result<Vec<String>, GraphError> {
        words.iter().map(|w| self.expand(w, scope, span)).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_op(
        &self,
        st: &StageState,
        span: Span,
        from: CopyFrom,
        sources: &[Source],
        dest: &str,
        chown: Option<&str>,
        chmod: Option<&str>,
        is_add: bool,
    ) -> Result<CopyOp, GraphError> {
        let mut out = Vec::with_capacity(sources.len());
        for s in sources {
            out.push(match s {
                Source::Path(p) => {
                    let p = self.expand(p, &st.scope, span)?;
                    if is_add
                        && (p.starts_with("http://") || p.starts_with("https://") || is_git_url(&p))
                    {
                        CopySource::Url(p)
                    } else {
                        CopySource::Path(p)
                    }
                }
                Source::Heredoc(h) => {
                    let content = if h.expand {
                        self.expand_heredoc(&h.content, &st.scope, span)?
                    } else {
                        h.content.clone()
                    };
                    CopySource::Inline(h.name.clone(), content)
                }
            });
        }
        let dest_expanded = self.expand(dest, &st.scope, span)?;
        let workdir = st
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let trailing =
            dest_expanded.ends_with('/') || dest_expanded == "." || dest_expanded.ends_with("/.");
        let mut dest_abs = clean_path(&join_path(&workdir, &dest_expanded));
        if trailing && !dest_abs.ends_with('/') {
            dest_abs.push('/');
        }
        Ok(CopyOp {
            from,
            sources: out,
            dest: dest_abs,
            chown: chown.map(|c| self.expand(c, &st.scope, span)).transpose()?,
            chmod: chmod.map(|c| self.expand(c, &st.scope, span)).transpose()?,
            link: false,
            parents: false,
            excludes: Vec::new(),
            unpack: None,
            checksum: None,
            keep_git_dir: false,
            is_add,
        })
    }

    /// Expands variables in a heredoc body like BuildKit: shell-style, quotes kept literally.
    fn expand_heredoc(
        &self,
        content: &str,
        scope: &Scope,
        span: Span,
    ) -> Result<String, GraphError> {
        let lexer = Lexer {
            skip_process_quotes: true,
            ..self.lexer
        };
        lexer
            .process_word(content, scope)
            .map(|e| e.word)
            .map_err(|e| err(span, e.to_string()))
    }
}

/// `git@host:repo`, `git://…` or an https URL of a `.git` repository.
pub fn is_git_url(s: &str) -> bool {
    s.starts_with("git@")
        || s.starts_with("git://")
        || (s.starts_with("https://") && s.contains(".git"))
}

/// The script a shell-form RUN hands to the shell. With heredocs, BuildKit's rule: a RUN
/// that is only `<<EOF` runs the heredoc body as the script; otherwise the command line and
/// the heredoc bodies are given to the shell together, which expands them itself.
fn shell_script(command: &str, heredocs: &[crate::parser::ast::Heredoc]) -> String {
    if heredocs.is_empty() {
        return command.to_string();
    }
    let trimmed = command.trim();
    if heredocs.len() == 1
        && crate::parser::ast::parse_heredoc(trimmed)
            .ok()
            .flatten()
            .is_some_and(|h| h.name == heredocs[0].name)
    {
        return heredocs[0].content.clone();
    }
    let mut script = String::from(command);
    script.push('\n');
    for h in heredocs {
        script.push_str(&h.content);
        if !h.content.is_empty() && !h.content.ends_with('\n') {
            script.push('\n');
        }
        script.push_str(&h.name);
        script.push('\n');
    }
    script
}

/// BuildKit-style history text for COPY/ADD: the instruction as written plus `# buildkit`.
fn copy_history(kw: &str, sources: &[Source], dest: &str) -> String {
    let srcs: Vec<String> = sources
        .iter()
        .map(|s| match s {
            Source::Path(p) => p.clone(),
            Source::Heredoc(h) => format!("<<{}", h.name),
        })
        .collect();
    format!("{kw} {} {dest} # buildkit", srcs.join(" "))
}

/// Parses one ONBUILD trigger (`RUN echo hi`) into an instruction.
fn parse_trigger(text: &str) -> Result<Instruction, String> {
    let tree = ast::parse(text).map_err(|e| e.to_string())?;
    let node = tree.nodes.first().ok_or("empty trigger")?;
    instructions::from_node(node, Some(&SourceLines::new(text))).map_err(|e| e.to_string())
}

/// Joins `path` onto `base` unless it is absolute.
pub fn join_path(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else if base.ends_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// Lexically cleans an absolute path: no `.`/`..`/empty components, no trailing slash.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `80` → `80/tcp`, `53/UDP` → `53/udp`, `8000-8002` → three ports.
fn expand_port_spec(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid proto {proto:?} in EXPOSE {spec}: expected tcp, udp or sctp"
        ));
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid port {s:?} in EXPOSE {spec}"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("invalid port range {ports:?} in EXPOSE {spec}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Accepts `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`.
fn validate_signal(s: &str) -> Result<(), String> {
    if s.parse::<u32>().is_ok_and(|n| n > 0 && n < 65) {
        return Ok(());
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if NAMES.contains(&name)
        || name.starts_with("RTMIN")
        || name.starts_with("RTMAX")
        || name == "IOT"
        || name == "POLL"
    {
        Ok(())
    } else {
        Err(format!("invalid signal {s:?} for STOPSIGNAL"))
    }
}

/// The `created` timestamp string of a plan.
pub fn created_string(plan: &Plan) -> String {
    rfc3339(plan.created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Platform;

    struct NoImages;
    impl ImageSource for NoImages {
        fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
            if reference == "base" {
                let mut config = ImageConfig {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                    ..Default::default()
                };
                config.config.env = Some(vec!["HOME=/root".into()]);
                config.config.cmd = Some(vec!["sh".into()]);
                config.config.on_build = Some(vec!["LABEL from.trigger=yes".into()]);
                return Ok(ResolvedImage {
                    reference: "docker.io/library/base:latest".into(),
                    manifest_digest: Digest::of(b"m"),
                    config,
                });
            }
            Err(format!("image {reference:?} not found"))
        }
    }

    fn plan(text: &str, target: Option<&str>) -> Result<Plan, GraphError> {
        let file = crate::parser::parse(text).expect("parses");
        let mut opts = DispatchOptions {
            target: target.map(String::from),
            now: 1_700_000_000,
            ..Default::default()
        };
        opts.build.target_platform = Platform::parse("linux/amd64").unwrap();
        dispatch(&file, &opts, &NoImages)
    }

    #[test]
    fn metadata_instructions_shape_the_config() {
        let p = plan(
            "FROM scratch\nENV A=1 B=\"$A two\"\nLABEL l=$B\nWORKDIR app\nWORKDIR sub\nUSER 1000\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data\nSTOPSIGNAL SIGINT\nCMD echo hi\nENTRYPOINT [\"/e\"]\nHEALTHCHECK --interval=5s CMD true\n",
            None,
        )
        .unwrap();
        let c = &plan_target(&p).config;
        assert_eq!(
            c.config.env.as_ref().unwrap(),
            &vec![
                format!("PATH={DEFAULT_PATH}"),
                "A=1".into(),
                "B=1 two".into()
            ]
        );
        assert_eq!(c.config.labels.as_ref().unwrap()["l"], "1 two");
        assert_eq!(c.config.working_dir.as_deref(), Some("/app/sub"));
        assert_eq!(c.config.user.as_deref(), Some("1000"));
        let ports: Vec<&String> = c.config.exposed_ports.as_ref().unwrap().keys().collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(
            c.config.cmd.as_ref().unwrap(),
            &vec!["/bin/sh".to_string(), "-c".into(), "echo hi".into()]
        );
        assert_eq!(
            c.config.entrypoint.as_ref().unwrap(),
            &vec!["/e".to_string()]
        );
        assert_eq!(
            c.config.healthcheck.as_ref().unwrap().test,
            vec!["CMD-SHELL".to_string(), "true".into()]
        );
        assert_eq!(
            c.config.healthcheck.as_ref().unwrap().interval,
            5_000_000_000
        );
        assert_eq!(c.config.stop_signal.as_deref(), Some("SIGINT"));
    }

    fn plan_target(p: &Plan) -> &StagePlan {
        p.target().expect("target")
    }

    #[test]
    fn entrypoint_resets_inherited_cmd_only() {
        let p = plan("FROM base\nENTRYPOINT [\"/e\"]\n", None).unwrap();
        assert_eq!(plan_target(&p).config.config.cmd, None);
        let p = plan("FROM base\nCMD [\"x\"]\nENTRYPOINT [\"/e\"]\n", None).unwrap();
        assert_eq!(
            plan_target(&p).config.config.cmd,
            Some(vec!["x".to_string()])
        );
    }

    #[test]
    fn onbuild_triggers_run_and_are_not_inherited() {
        let p = plan("FROM base\nONBUILD RUN echo child\n", None).unwrap();
        let c = &plan_target(&p).config;
        assert_eq!(c.config.labels.as_ref().unwrap()["from.trigger"], "yes");
        assert_eq!(c.config.on_build, Some(vec!["RUN echo child".to_string()]));
    }

    #[test]
    fn only_needed_stages_are_planned_in_dependency_order() {
        let text = "FROM scratch AS a\nFROM scratch AS unused\nFROM scratch AS b\nCOPY --from=a /x /x\nFROM b AS c\n";
        let p = plan(text, None).unwrap();
        let order: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
        assert_eq!(order, vec![0, 2, 3]);
        let p = plan(text, Some("unused")).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert!(plan(text, Some("nope")).is_err());
    }

    #[test]
    fn copy_destinations_resolve_against_workdir() {
        let p = plan(
            "FROM scratch\nWORKDIR /srv\nCOPY a b ./\nCOPY c d\nCOPY e /abs/\n",
            None,
        )
        .unwrap();
        let dests: Vec<String> = plan_target(&p)
            .ops
            .iter()
            .filter_map(|o| match &o.kind {
                OpKind::Copy(c) => Some(c.dest.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(dests, vec!["/srv/", "/srv/d", "/abs/"]);
    }

    #[test]
    fn missing_images_and_bad_values_are_located_errors() {
        let e = plan("FROM nope\n", None).unwrap_err();
        assert!(e.to_string().contains("image \"nope\" not found"), "{e}");
        assert!(plan("FROM scratch\nEXPOSE 99999\n", None).is_err());
        assert!(plan("FROM scratch\nSTOPSIGNAL SIGFOO\n", None).is_err());
    }

    #[test]
    fn ports_and_paths() {
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(join_path("/srv", "a"), "/srv/a");
        assert_eq!(expand_port_spec("53/UDP").unwrap(), vec!["53/udp"]);
    }
}
