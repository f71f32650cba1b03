//! Stage two of the frontend: raw AST nodes → typed instructions.
//!
//! One variant per Dockerfile instruction, with typed, validated flags and checked argument
//! counts. Nothing is expanded here: values keep their `$VAR`s and quotes, because expansion
//! needs the build's ARG/ENV scope (see `graph::scope`).

use serde::Serialize;

use super::ast::{parse_heredoc, Heredoc, Node};
use super::error::{ParseError, Result};
use super::flags::{parse_go_duration, FlagKind, Flags};
use super::line_parsers::LineArgs;
use super::mount::{parse_mount, Mount};
use super::span::{SourceLines, Span};
use super::suggest;

/// Every instruction keyword, upper-case.
pub const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A command in exec (JSON) or shell form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandLine {
    /// `["executable", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `executable arg`: run through the stage's SHELL.
    Shell(String),
}

impl CommandLine {
    pub fn is_shell(&self) -> bool {
        matches!(self, CommandLine::Shell(_))
    }
}

/// `key=value` of ENV or LABEL, or `name[=default]` of ARG; raw (quotes kept, unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written in the deprecated `KEY value` form.
    pub legacy: bool,
}

/// One declared build argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct From {
    pub image: String,
    pub name: Option<String>,
    /// The `AS` keyword as written (for casing checks).
    pub as_keyword: Option<String>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
    /// The `--mount` values as written; expanded and re-parsed at dispatch.
    pub mount_specs: Vec<String>,
    /// The mounts as far as they can be known before expansion.
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    pub security: Option<Security>,
}

/// A source of COPY/ADD: a path (or URL, glob) or an inline heredoc file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Path(String),
    Heredoc(Heredoc),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub sources: Vec<Source>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    pub sources: Vec<Source>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub unpack: Option<bool>,
    pub excludes: Vec<String>,
}

/// HEALTHCHECK options; durations in nanoseconds as in the image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HealthcheckOptions {
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub start_interval: Option<i64>,
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Cmd {
        command: CommandLine,
        options: HealthcheckOptions,
    },
}

/// A typed Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "lowercase")]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd {
        command: CommandLine,
    },
    Entrypoint {
        command: CommandLine,
    },
    Label {
        pairs: Vec<KeyValue>,
    },
    Maintainer {
        name: String,
    },
    Expose {
        ports: Vec<String>,
    },
    Env {
        pairs: Vec<KeyValue>,
    },
    Add(Add),
    Copy(Copy),
    Volume {
        paths: Vec<String>,
    },
    User {
        user: String,
    },
    Workdir {
        path: String,
    },
    Arg {
        args: Vec<ArgDecl>,
    },
    Onbuild {
        trigger: Box<Instruction>,
        expression: String,
    },
    Stopsignal {
        signal: String,
    },
    Healthcheck(Healthcheck),
    Shell {
        shell: Vec<String>,
    },
}

impl Instruction {
    /// The upper-case keyword of this instruction.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd { .. } => "CMD",
            Instruction::Entrypoint { .. } => "ENTRYPOINT",
            Instruction::Label { .. } => "LABEL",
            Instruction::Maintainer { .. } => "MAINTAINER",
            Instruction::Expose { .. } => "EXPOSE",
            Instruction::Env { .. } => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Volume { .. } => "VOLUME",
            Instruction::User { .. } => "USER",
            Instruction::Workdir { .. } => "WORKDIR",
            Instruction::Arg { .. } => "ARG",
            Instruction::Onbuild { .. } => "ONBUILD",
            Instruction::Stopsignal { .. } => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell { .. } => "SHELL",
        }
    }
}

/// Context for converting one node: where it is, for precise error locations.
struct Req<'a> {
    node: &'a Node,
    keyword: String,
    src: Option<&'a SourceLines>,
}

impl Req<'_> {
    fn span(&self) -> Span {
        self.node.span
    }

    fn flags(&self, declared: &[(&'static str, FlagKind)]) -> Result<Flags> {
        Flags::parse(
            &self.keyword,
            &self.node.flags,
            declared,
            self.span(),
            self.src,
        )
    }

    fn args_error(&self, message: impl Into<String>) -> ParseError {
        ParseError::Arguments {
            span: self.span(),
            message: message.into(),
        }
    }

    fn at_least_one(&self) -> ParseError {
        self.args_error(format!("{} requires at least one argument", self.keyword))
    }

    fn exactly_one(&self) -> ParseError {
        self.args_error(format!("{} requires exactly one argument", self.keyword))
    }

    fn bad_flag(&self, flags: &Flags, flag: &str, message: String) -> ParseError {
        ParseError::BadFlag {
            span: flags.span_of(flag, self.span()),
            instruction: self.keyword.clone(),
            flag: flag.to_string(),
            message,
        }
    }

    fn values(&self) -> Vec<String> {
        self.node
            .args
            .values()
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn single(&self) -> Result<String> {
        match self.values().as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(self.exactly_one()),
        }
    }

    fn command_line(&self) -> Option<CommandLine> {
        match &self.node.args {
            LineArgs::Json(v) => Some(CommandLine::Exec(v.clone())),
            LineArgs::Shell(s) => Some(CommandLine::Shell(s.clone())),
            _ => None,
        }
    }
}

/// Converts one AST node into a typed instruction, validating flags and argument counts.
/// `src` (the file's lines) lets errors point at the exact column of a bad flag or word.
pub fn from_node(node: &Node, src: Option<&SourceLines>) -> Result<Instruction> {
    let keyword = node.keyword.to_ascii_uppercase();
    let req = Req {
        node,
        keyword: keyword.clone(),
        src,
    };
    let no_flags = |req: &Req| req.flags(&[]);
    match keyword.as_str() {
        "FROM" => parse_from(&req),
        "RUN" => parse_run(&req),
        "CMD" | "ENTRYPOINT" => {
            no_flags(&req)?;
            let command = req.command_line().ok_or_else(|| req.at_least_one())?;
            Ok(if keyword == "CMD" {
                Instruction::Cmd { command }
            } else {
                Instruction::Entrypoint { command }
            })
        }
        "LABEL" | "ENV" => {
            no_flags(&req)?;
            let LineArgs::Pairs(pairs) = &node.args else {
                return Err(req.at_least_one());
            };
            if pairs.is_empty() {
                return Err(req.at_least_one());
            }
            let pairs = pairs
                .iter()
                .map(|p| KeyValue {
                    key: p.key.clone(),
                    value: p.value.clone(),
                    legacy: p.sep.is_empty(),
                })
                .collect();
            Ok(if keyword == "ENV" {
                Instruction::Env { pairs }
            } else {
                Instruction::Label { pairs }
            })
        }
        "MAINTAINER" => {
            no_flags(&req)?;
            Ok(Instruction::Maintainer {
                name: req.single()?,
            })
        }
        "EXPOSE" => {
            no_flags(&req)?;
            let ports = req.values();
            if ports.is_empty() {
                return Err(req.at_least_one());
            }
            Ok(Instruction::Expose { ports })
        }
        "ADD" => parse_add(&req),
        "COPY" => parse_copy(&req),
        "VOLUME" => {
            no_flags(&req)?;
            let paths = req.values();
            if paths.is_empty() {
                return Err(req.at_least_one());
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(req.args_error("VOLUME specified can not be an empty string"));
            }
            Ok(Instruction::Volume { paths })
        }
        "USER" => {
            no_flags(&req)?;
            Ok(Instruction::User {
                user: req.single()?,
            })
        }
        "WORKDIR" => {
            no_flags(&req)?;
            Ok(Instruction::Workdir {
                path: req.single()?,
            })
        }
        "ARG" => parse_arg(&req),
        "ONBUILD" => parse_onbuild(&req),
        "STOPSIGNAL" => {
            no_flags(&req)?;
            Ok(Instruction::Stopsignal {
                signal: req.single()?,
            })
        }
        "HEALTHCHECK" => parse_healthcheck(&req),
        "SHELL" => {
            no_flags(&req)?;
            match &node.args {
                LineArgs::Json(v) if v.is_empty() => Err(req.at_least_one()),
                LineArgs::Json(v) => Ok(Instruction::Shell { shell: v.clone() }),
                LineArgs::Shell(_) => {
                    Err(req.args_error("SHELL requires the arguments to be in JSON form"))
                }
                _ => Err(req.at_least_one()),
            }
        }
        _ => Err(ParseError::UnknownInstruction {
            span: src.map(|s| s.keyword(node.span)).unwrap_or(node.span),
            name: node.keyword.clone(),
            suggestion: suggest::closest(&keyword, KEYWORDS).map(String::from),
        }),
    }
}

/// Stage names: a letter, then letters, digits, `-`, `_` or `.`.
pub fn valid_stage_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let mut chars = lower.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_from(req: &Req) -> Result<Instruction> {
    let flags = req.flags(&[("platform", FlagKind::String)])?;
    let args = req.values();
    let (image, as_keyword, name) = match args.as_slice() {
        [image] => (image.clone(), None, None),
        [image, kw, name] if kw.eq_ignore_ascii_case("as") => {
            (image.clone(), Some(kw.clone()), Some(name.clone()))
        }
        [_, kw, _] => {
            return Err(ParseError::Arguments {
                span: req
                    .src
                    .map(|s| s.locate(req.span(), kw))
                    .unwrap_or(req.span()),
                message: format!(
                    "FROM requires the second of three arguments to be AS, found {kw:?}"
                ),
            })
        }
        _ => {
            return Err(req.args_error(
                "FROM requires either one argument (FROM image) or three (FROM image AS name)",
            ))
        }
    };
    if let Some(name) = &name {
        if !valid_stage_name(name) {
            return Err(ParseError::Stage {
                span: req.src.map(|s| s.locate(req.span(), name)).unwrap_or(req.span()),
                message: format!(
                    "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                ),
            });
        }
    }
    Ok(Instruction::From(From {
        image,
        name,
        as_keyword,
        platform: flags.string("platform"),
    }))
}

fn parse_run(req: &Req) -> Result<Instruction> {
    let flags = req.flags(&[
        ("mount", FlagKind::Repeated),
        ("network", FlagKind::String),
        ("security", FlagKind::String),
    ])?;
    let command = req.command_line().ok_or_else(|| req.at_least_one())?;
    let mount_specs = flags.repeated("mount");
    let mut mounts = Vec::with_capacity(mount_specs.len());
    for spec in &mount_specs {
        let mount = parse_mount(spec, None).map_err(|message| ParseError::BadFlag {
            span: req
                .src
                .map(|s| s.locate(req.span(), spec))
                .unwrap_or(req.span()),
            instruction: "RUN".into(),
            flag: "mount".into(),
            message,
        })?;
        mounts.push(mount);
    }
    let network = match flags.string("network") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "default" => NetworkMode::Default,
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            _ => {
                return Err(req.bad_flag(
                    &flags,
                    "network",
                    format!("unsupported network mode {v:?}: expected default, none or host"),
                ))
            }
        }),
    };
    let security = match flags.string("security") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "sandbox" => Security::Sandbox,
            "insecure" => Security::Insecure,
            _ => {
                return Err(req.bad_flag(
                    &flags,
                    "security",
                    format!("unsupported security mode {v:?}: expected sandbox or insecure"),
                ))
            }
        }),
    };
    Ok(Instruction::Run(Run {
        command,
        heredocs: req.node.heredocs.iter().map(finished_heredoc).collect(),
        mount_specs,
        mounts,
        network,
        security,
    }))
}

/// A heredoc as instructions use it: with `<<-` tab stripping already applied.
fn finished_heredoc(h: &Heredoc) -> Heredoc {
    Heredoc {
        content: h.body(),
        ..h.clone()
    }
}

/// Splits COPY/ADD arguments into sources and destination, turning heredoc markers into
/// inline files.
fn sources_and_dest(req: &Req) -> Result<(Vec<Source>, String)> {
    let args = req.values();
    if args.len() < 2 {
        return Err(req.args_error(match args.len() {
            0 => format!("{} requires at least two arguments (sources and a destination), but none were provided", req.keyword),
            _ => format!("{} requires at least two arguments, but only one was provided. Destination could not be determined", req.keyword),
        }));
    }
    let (dest, srcs) = args.split_last().ok_or_else(|| req.at_least_one())?;
    let mut sources = Vec::with_capacity(srcs.len());
    for src in srcs {
        let heredoc = if req.node.args.is_json() {
            None
        } else {
            parse_heredoc(src)?.and_then(|h| req.node.heredocs.iter().find(|d| d.name == h.name))
        };
        sources.push(match heredoc {
            Some(h) => Source::Heredoc(finished_heredoc(h)),
            None => Source::Path(src.clone()),
        });
    }
    Ok((sources, dest.clone()))
}

fn check_chmod(req: &Req, flags: &Flags) -> Result<Option<String>> {
    let Some(mode) = flags.string("chmod") else {
        return Ok(None);
    };
    if !mode.contains('$') && !valid_chmod(&mode) {
        return Err(req.bad_flag(
            flags,
            "chmod",
            format!("invalid chmod value {mode:?}: expected an octal mode (0755) or a symbolic one (u+x,g-w)"),
        ));
    }
    Ok(Some(mode))
}

/// Octal up to 4 digits, or symbolic `[ugoa]*[+-=][rwxXst]*` clauses separated by commas.
pub fn valid_chmod(mode: &str) -> bool {
    if mode.chars().all(|c| c.is_digit(8)) {
        return !mode.is_empty() && mode.len() <= 4;
    }
    mode.split(',').all(|clause| {
        let ops_start = clause.find(['+', '-', '=']);
        let Some(i) = ops_start else { return false };
        clause[..i].chars().all(|c| "ugoa".contains(c))
            && clause[i..]
                .split(['+', '-', '='])
                .all(|perm| perm.chars().all(|c| "rwxXstugo".contains(c)))
    })
}

fn parse_copy(req: &Req) -> Result<Instruction> {
    let flags = req.flags(&[
        ("from", FlagKind::String),
        ("chown", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("parents", FlagKind::Bool),
        ("exclude", FlagKind::Repeated),
    ])?;
    let chmod = check_chmod(req, &flags)?;
    let (sources, dest) = sources_and_dest(req)?;
    if let Some(from) = flags.string("from") {
        if from.is_empty() {
            return Err(req.bad_flag(
                &flags,
                "from",
                "requires a stage name, index or image".into(),
            ));
        }
    }
    Ok(Instruction::Copy(Copy {
        sources,
        dest,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod,
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        excludes: flags.repeated("exclude"),
    }))
}

fn parse_add(req: &Req) -> Result<Instruction> {
    let flags = req.flags(&[
        ("chown", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("checksum", FlagKind::String),
        ("keep-git-dir", FlagKind::Bool),
        ("unpack", FlagKind::Bool),
        ("exclude", FlagKind::Repeated),
    ])?;
    let chmod = check_chmod(req, &flags)?;
    let (sources, dest) = sources_and_dest(req)?;
    let checksum = flags.string("checksum");
    if let Some(sum) = &checksum {
        if !sum.contains('$') && !valid_checksum(sum) {
            return Err(req.bad_flag(
                &flags,
                "checksum",
                format!(
                    "invalid checksum {sum:?}: expected sha256:<64 hex digits> (or sha384/sha512)"
                ),
            ));
        }
        if sources.len() != 1 {
            return Err(req.bad_flag(
                &flags,
                "checksum",
                "checksum can't be specified for multiple sources".into(),
            ));
        }
    }
    Ok(Instruction::Add(Add {
        sources,
        dest,
        chown: flags.string("chown"),
        chmod,
        link: flags.bool("link").unwrap_or(false),
        checksum,
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
        excludes: flags.repeated("exclude"),
    }))
}

fn valid_checksum(sum: &str) -> bool {
    let Some((algo, hex)) = sum.split_once(':') else {
        return false;
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit())
}

fn parse_arg(req: &Req) -> Result<Instruction> {
    req.flags(&[])?;
    let words = req.values();
    if words.is_empty() {
        return Err(req.at_least_one());
    }
    let args = words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((name, value)) => ArgDecl {
                name: name.to_string(),
                default: Some(value.to_string()),
            },
            None => ArgDecl {
                name: w,
                default: None,
            },
        })
        .collect::<Vec<_>>();
    if let Some(bad) = args.iter().find(|a| a.name.is_empty()) {
        return Err(req.args_error(format!(
            "ARG names can not be blank (in {:?})",
            bad.default.as_deref().unwrap_or_default()
        )));
    }
    Ok(Instruction::Arg { args })
}

fn parse_onbuild(req: &Req) -> Result<Instruction> {
    req.flags(&[])?;
    let Some(child) = &req.node.child else {
        return Err(req.at_least_one());
    };
    let trigger_kw = child.keyword.to_ascii_uppercase();
    let at_trigger = req
        .src
        .map(|s| s.locate(req.span(), &child.keyword))
        .unwrap_or(req.span());
    match trigger_kw.as_str() {
        "ONBUILD" => {
            return Err(ParseError::Arguments {
                span: at_trigger,
                message: "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
            })
        }
        "FROM" | "MAINTAINER" => {
            return Err(ParseError::Arguments {
                span: at_trigger,
                message: format!("{trigger_kw} isn't allowed as an ONBUILD trigger"),
            })
        }
        _ => {}
    }
    let mut child = child.as_ref().clone();
    child.span = req.span();
    child.heredocs = req.node.heredocs.clone();
    let trigger = from_node(&child, req.src)?;
    let expression = super::line_parsers::split_command(&req.node.original)
        .1
        .to_string();
    Ok(Instruction::Onbuild {
        trigger: Box::new(trigger),
        expression,
    })
}

fn parse_healthcheck(req: &Req) -> Result<Instruction> {
    let flags = req.flags(&[
        ("interval", FlagKind::String),
        ("timeout", FlagKind::String),
        ("start-period", FlagKind::String),
        ("start-interval", FlagKind::String),
        ("retries", FlagKind::String),
    ])?;
    let LineArgs::Health { kind, command } = &req.node.args else {
        return Err(req.at_least_one());
    };
    match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !command.is_empty() {
                return Err(req.args_error("HEALTHCHECK NONE takes no arguments"));
            }
            Ok(Instruction::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let command = match command.as_ref() {
                LineArgs::Json(v) if !v.is_empty() => CommandLine::Exec(v.clone()),
                LineArgs::Shell(s) => CommandLine::Shell(s.clone()),
                _ => return Err(req.args_error("Missing command after HEALTHCHECK CMD")),
            };
            let duration = |name: &str| -> Result<Option<i64>> {
                let Some(v) = flags.string(name) else {
                    return Ok(None);
                };
                let d = parse_go_duration(&v).ok_or_else(|| {
                    req.bad_flag(
                        &flags,
                        name,
                        format!("invalid duration {v:?} (use units like 30s, 1m30s, 500ms)"),
                    )
                })?;
                if d < 0 {
                    return Err(req.bad_flag(
                        &flags,
                        name,
                        format!("duration {v:?} can't be negative"),
                    ));
                }
                if d != 0 && d < 1_000_000 {
                    return Err(req.bad_flag(
                        &flags,
                        name,
                        format!("duration {v:?} can't be less than 1ms"),
                    ));
                }
                Ok(Some(d))
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(v) => {
                    let n: i64 = v.parse().map_err(|_| {
                        req.bad_flag(&flags, "retries", format!("invalid number {v:?}"))
                    })?;
                    if n < 0 {
                        return Err(req.bad_flag(
                            &flags,
                            "retries",
                            format!("--retries cannot be negative ({n})"),
                        ));
                    }
                    Some(n)
                }
            };
            Ok(Instruction::Healthcheck(Healthcheck::Cmd {
                command,
                options: HealthcheckOptions {
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                },
            }))
        }
        _ => Err(req.args_error(format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::ast;

    fn one(text: &str) -> Result<Instruction> {
        let ast = ast::parse(text)?;
        let src = SourceLines::new(text);
        from_node(&ast.nodes[0], Some(&src))
    }

    #[test]
    fn chmod_values() {
        for ok in ["755", "0644", "u+x", "u=rwx,g=rx,o=", "a-w", "go+rX"] {
            assert!(valid_chmod(ok), "{ok}");
        }
        for bad in ["", "999", "12345", "x+u", "u+z", "rwx"] {
            assert!(!valid_chmod(bad), "{bad}");
        }
    }

    #[test]
    fn copy_flags_and_heredoc_sources() {
        let Instruction::Copy(c) = one("COPY --from=b --chown=1:2 --chmod=644 --link --parents --exclude=*.md --exclude=x <<EOF a /dst/\nhi\nEOF\n").unwrap() else {
            panic!("not copy")
        };
        assert_eq!(c.from.as_deref(), Some("b"));
        assert_eq!(c.excludes, vec!["*.md", "x"]);
        assert!(c.link && c.parents);
        assert!(matches!(&c.sources[0], Source::Heredoc(h) if h.content == "hi\n"));
        assert_eq!(c.sources[1], Source::Path("a".into()));
        assert_eq!(c.dest, "/dst/");
    }

    #[test]
    fn errors_point_at_columns() {
        let e = one("COPY --form=x a b\n").unwrap_err();
        assert_eq!((e.span().start_line, e.span().start_col), (1, 6));
        let e = one("RUN --mount=type=nope,target=/x true\n").unwrap_err();
        assert_eq!(e.span().start_col, 13);
        let e = one("RUNN true\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown instruction: RUNN (did you mean RUN?)"
        );
    }

    #[test]
    fn healthcheck_forms() {
        assert_eq!(
            one("HEALTHCHECK NONE\n").unwrap(),
            Instruction::Healthcheck(Healthcheck::None)
        );
        let Instruction::Healthcheck(Healthcheck::Cmd { options, command }) =
            one("HEALTHCHECK --interval=5s --retries=3 CMD [\"x\"]\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(options.interval, Some(5_000_000_000));
        assert_eq!(options.retries, Some(3));
        assert_eq!(command, CommandLine::Exec(vec!["x".into()]));
        assert!(one("HEALTHCHECK CMD\n").is_err());
        assert!(one("HEALTHCHECK NONE x\n").is_err());
        assert!(one("HEALTHCHECK FOO x\n").is_err());
        assert!(one("HEALTHCHECK --interval=1ns CMD x\n").is_err());
    }

    #[test]
    fn onbuild_rules() {
        assert!(one("ONBUILD ONBUILD RUN x\n")
            .unwrap_err()
            .to_string()
            .contains("Chaining"));
        assert!(one("ONBUILD FROM x\n")
            .unwrap_err()
            .to_string()
            .contains("isn't allowed"));
        let Instruction::Onbuild {
            trigger,
            expression,
        } = one("ONBUILD COPY --chown=1 a b\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(expression, "COPY --chown=1 a b");
        assert!(matches!(*trigger, Instruction::Copy(_)));
    }
}
