//! The check rules. Names, meanings and messages follow BuildKit's build checks
//! (https://docs.docker.com/reference/build-checks/) for the rules that can be decided without
//! the base images; stage-reference errors are kiln's own.
//!
//! Variables: a stage whose base is `scratch` (or an earlier stage rooted at scratch) has a
//! fully known environment, so every undefined variable is reported. A stage on an external
//! image may inherit variables from that image's ENV, which `check` cannot see: there only
//! names that look like a typo of a visible variable are reported.

use std::collections::BTreeMap;

use crate::graph::dispatch::ImageSource;
use crate::graph::{BuildOptions, Scope};
use crate::parser::ast::{Ast, Node};
use crate::parser::instructions::{ArgDecl, CommandLine, Healthcheck, Instruction, Source};
use crate::parser::line_parsers::LineArgs;
use crate::parser::shell::{Expansion, Lexer};
use crate::parser::suggest;
use crate::parser::{Dockerfile, SourceLines, Span, Stage};
use crate::reference::Reference;

use super::{Problem, Severity};

/// Runs every rule over a parsed file.
pub(super) fn run(
    ast: &Ast,
    file: &Dockerfile,
    src: &SourceLines,
    opts: &BuildOptions,
    images: Option<&dyn ImageSource>,
) -> Vec<Problem> {
    let mut out = Lints {
        src,
        problems: Vec::new(),
    };
    out.instruction_casing(ast);
    for line in &ast.empty_continuation_lines {
        out.warn(
            "NoEmptyContinuation",
            Span::lines(*line, *line),
            "Empty continuation line found: empty continuation lines will become errors in a future release".into(),
        );
    }
    let lexer = Lexer::new(ast.directives.escape);
    let meta: Vec<ArgDecl> = file.meta_args.iter().map(|a| a.node.clone()).collect();
    let global = match Scope::global(&meta, opts, &lexer) {
        Ok((global, expansions)) => {
            for (arg, e) in file.meta_args.iter().zip(expansions) {
                if let (Some(e), Some(default)) = (e, &arg.node.default) {
                    out.undefined_vars(default, &e, &global, arg.span, true);
                }
            }
            global
        }
        Err(e) => {
            out.error(
                "ExpansionError",
                file.meta_args.first().map(|a| a.span).unwrap_or_default(),
                e.to_string(),
            );
            return out.problems;
        }
    };
    let nodes: BTreeMap<usize, &Node> = ast.nodes.iter().map(|n| (n.span.start_line, n)).collect();
    let mut finished: Vec<StageState> = Vec::with_capacity(file.stages.len());
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for stage in &file.stages {
        let from_node = nodes.get(&stage.span.start_line).copied();
        out.stage_header(stage, from_node, &global, &lexer, &mut seen_names);
        let base = file
            .stage_ref(&base_name(stage, &global, &lexer), stage.index)
            .filter(|s| s.index < stage.index)
            .map(|s| s.index);
        // A base image found locally tells its ENV: the stage's variables are then all known.
        let image_env = match (base, images) {
            (None, Some(images)) if !stage.base.eq_ignore_ascii_case("scratch") => images
                .resolve(&base_name(stage, &global, &lexer))
                .ok()
                .map(|img| img.config.config.env.unwrap_or_default()),
            _ => None,
        };
        let state = out.stage_body(
            stage,
            file,
            initial_state(
                stage,
                base.and_then(|i| finished.get(i)),
                image_env.as_deref(),
            ),
            &global,
            opts,
            &lexer,
        );
        finished.push(state);
    }
    out.problems
}

/// What later stages inherit from a finished stage.
#[derive(Clone)]
struct StageState {
    scope: Scope,
    complete: bool,
    workdir_set: bool,
}

/// Where a stage's variable checking starts: the ENV of an earlier stage it builds on, of a
/// base image found locally, or nothing (scratch: complete; an unknown image: incomplete).
fn initial_state(
    stage: &Stage,
    parent: Option<&StageState>,
    image_env: Option<&[String]>,
) -> StageState {
    let from_scratch = stage.base.eq_ignore_ascii_case("scratch");
    match (parent, image_env) {
        (Some(p), _) => {
            let mut s = p.clone();
            s.scope = Scope::for_stage(p.scope.env_list().iter().map(String::as_str));
            s
        }
        (None, Some(env)) => StageState {
            scope: Scope::for_stage(env.iter().map(String::as_str)),
            complete: true,
            workdir_set: false,
        },
        (None, None) => StageState {
            scope: Scope::for_stage([]),
            complete: from_scratch,
            workdir_set: false,
        },
    }
}

fn base_name(stage: &Stage, global: &Scope, lexer: &Lexer) -> String {
    lexer
        .process_word(&stage.base, global)
        .map(|e| e.word)
        .unwrap_or_else(|_| stage.base.clone())
}

struct Lints<'a> {
    src: &'a SourceLines,
    problems: Vec<Problem>,
}

fn rule_url(rule: &str) -> String {
    let mut kebab = String::new();
    for (i, c) in rule.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev_upper = rule
                .chars()
                .nth(i - 1)
                .is_some_and(|p| p.is_ascii_uppercase());
            let next_lower = rule
                .chars()
                .nth(i + 1)
                .is_some_and(|n| n.is_ascii_lowercase());
            if !prev_upper || next_lower {
                kebab.push('-');
            }
        }
        kebab.push(c.to_ascii_lowercase());
    }
    format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
}

impl Lints<'_> {
    fn warn(&mut self, rule: &str, span: Span, message: String) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            rule: rule.to_string(),
            message,
            span,
            url: Some(rule_url(rule)),
        });
    }

    fn error(&mut self, rule: &str, span: Span, message: String) {
        self.problems.push(Problem {
            severity: Severity::Error,
            rule: rule.to_string(),
            message,
            span,
            url: None,
        });
    }

    /// ConsistentInstructionCasing: keywords should be all upper or all lower case, and
    /// follow the file's majority.
    fn instruction_casing(&mut self, ast: &Ast) {
        let upper = ast
            .nodes
            .iter()
            .filter(|n| n.keyword == n.keyword.to_ascii_uppercase())
            .count();
        let lower = ast
            .nodes
            .iter()
            .filter(|n| n.keyword == n.keyword.to_ascii_lowercase())
            .count();
        let majority_upper = upper >= lower;
        for node in &ast.nodes {
            let is_upper = node.keyword == node.keyword.to_ascii_uppercase();
            let is_lower = node.keyword == node.keyword.to_ascii_lowercase();
            let message = if !is_upper && !is_lower {
                format!("Command '{}' should be consistently cased", node.keyword)
            } else if is_upper != majority_upper {
                format!(
                    "Command '{}' should match the case of the command majority ({})",
                    node.keyword,
                    if majority_upper {
                        "uppercase"
                    } else {
                        "lowercase"
                    }
                )
            } else {
                continue;
            };
            let span = self.src.keyword(node.span);
            self.warn("ConsistentInstructionCasing", span, message);
        }
    }

    fn stage_header(
        &mut self,
        stage: &Stage,
        from_node: Option<&Node>,
        global: &Scope,
        lexer: &Lexer,
        seen_names: &mut BTreeMap<String, usize>,
    ) {
        if let Some(name) = &stage.name {
            let at = self.src.locate(stage.span, name);
            if name != &name.to_ascii_lowercase() {
                self.warn(
                    "StageNameCasing",
                    at,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
            let lower = name.to_ascii_lowercase();
            if lower == "scratch" || lower == "context" {
                self.warn(
                    "ReservedStageName",
                    at,
                    format!("Stage name should not use the same name as reserved stage {lower:?}"),
                );
            }
            if seen_names.insert(lower, stage.index).is_some() {
                self.warn(
                    "DuplicateStageName",
                    at,
                    format!("Duplicate stage name {name:?}, stage names should be unique"),
                );
            }
        }
        if let Some(node) = from_node {
            if let LineArgs::List(args) = &node.args {
                if let [_, as_kw, _] = args.as_slice() {
                    let from_upper = node.keyword == node.keyword.to_ascii_uppercase();
                    let as_upper = as_kw == &as_kw.to_ascii_uppercase();
                    if from_upper != as_upper {
                        let at = self.src.locate(node.span, &format!(" {as_kw} ")).shifted(1);
                        self.warn(
                            "FromAsCasing",
                            at,
                            format!(
                                "'{as_kw}' and '{}' keywords' casing do not match",
                                node.keyword
                            ),
                        );
                    }
                }
            }
        }
        for word in std::iter::once(&stage.base).chain(stage.platform.as_ref()) {
            match lexer.process_word(word, global) {
                Ok(e) => {
                    for name in &e.unmatched {
                        if global.is_declared(name) {
                            continue;
                        }
                        let hint = suggest::closest(name, global.names())
                            .map(|s| format!(" (did you mean {s}?)"))
                            .unwrap_or_default();
                        let at = self.locate_var(stage.span, name);
                        self.warn(
                            "UndefinedArgInFrom",
                            at,
                            format!("FROM argument '{name}' is not declared{hint}"),
                        );
                    }
                }
                Err(e) => self.error("ExpansionError", stage.span, format!("FROM {word}: {e}")),
            }
        }
    }

    fn locate_var(&self, span: Span, name: &str) -> Span {
        let braced = self.src.locate(span, &format!("${{{name}"));
        if braced.has_columns() {
            return braced;
        }
        self.src.locate(span, &format!("${name}"))
    }

    /// UndefinedVar for one expansion of `word`. A variable used only with a fallback
    /// (`${X:-default}`, `${X:+alt}`, `${X:?msg}`) is deliberate, not a mistake.
    fn undefined_vars(
        &mut self,
        word: &str,
        e: &Expansion,
        scope: &Scope,
        span: Span,
        complete: bool,
    ) {
        for name in &e.unmatched {
            if scope.is_declared(name) || !used_without_fallback(word, name) {
                continue;
            }
            let suggestion = suggest::closest(name, scope.names());
            if !complete && suggestion.is_none() {
                continue;
            }
            let hint = suggestion
                .map(|s| format!(" (did you mean ${s}?)"))
                .unwrap_or_default();
            let at = self.locate_var(span, name);
            self.warn(
                "UndefinedVar",
                at,
                format!("Usage of undefined variable '${name}'{hint}"),
            );
        }
    }

    fn expand_checked(
        &mut self,
        word: &str,
        scope: &Scope,
        lexer: &Lexer,
        span: Span,
        complete: bool,
    ) -> Option<String> {
        match lexer.process_word(word, scope) {
            Ok(e) => {
                self.undefined_vars(word, &e, scope, span, complete);
                Some(e.word)
            }
            Err(err) => {
                if complete {
                    self.error(
                        "ExpansionError",
                        span,
                        format!("cannot expand {word:?}: {err}"),
                    );
                }
                None
            }
        }
    }

    /// Checks a `--from` (COPY) or `from=` (RUN --mount) reference: an earlier stage by name
    /// or index, or else something that can be an image.
    fn stage_reference(
        &mut self,
        what: &str,
        reference: &str,
        file: &Dockerfile,
        stage: &Stage,
        span: Span,
    ) {
        if reference.contains('$') {
            return;
        }
        let at = self.src.locate(span, reference);
        if let Ok(index) = reference.parse::<usize>() {
            if index >= stage.index {
                self.error(
                    "StageReference",
                    at,
                    format!(
                        "{what}={reference}: stage index {index} is not an earlier stage (this is stage {}; only 0..{} can be used)",
                        stage.index,
                        stage.index.saturating_sub(1)
                    ),
                );
            }
            return;
        }
        if let Some(target) = file.stage_by_name(reference) {
            if target.index >= stage.index {
                let message = if target.index == stage.index {
                    format!(
                        "{what}={reference}: a stage cannot copy from itself (circular dependency)"
                    )
                } else {
                    format!(
                        "{what}={reference}: stage {reference:?} is defined later, at line {}; only earlier stages can be used",
                        target.span.start_line
                    )
                };
                self.error("StageReference", at, message);
            }
            return;
        }
        if let Err(e) = Reference::parse(reference) {
            let names = file
                .stages
                .iter()
                .take(stage.index)
                .filter_map(|s| s.name.as_deref());
            let hint = suggest::closest(reference, names)
                .map(|s| format!(" (did you mean stage {s:?}?)"))
                .unwrap_or_default();
            self.error(
                "StageReference",
                at,
                format!("{what}={reference}: no stage has this name, and it is not an image reference either: {e}{hint}"),
            );
        }
    }

    fn stage_body(
        &mut self,
        stage: &Stage,
        file: &Dockerfile,
        start: StageState,
        global: &Scope,
        opts: &BuildOptions,
        lexer: &Lexer,
    ) -> StageState {
        let mut state = start;
        let mut shell_changed = false;
        let mut last_of: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
        for item in &stage.instructions {
            let span = item.span;
            let complete = state.complete;
            match &item.node {
                Instruction::Arg { args } => {
                    for decl in args {
                        match state.scope.declare_arg(decl, opts, Some(global), lexer) {
                            Ok(Some(e)) => {
                                let default = decl.default.as_deref().unwrap_or_default();
                                self.undefined_vars(default, &e, &state.scope, span, complete)
                            }
                            Ok(None) => {}
                            Err(err) => self.error(
                                "ExpansionError",
                                span,
                                format!("ARG {}: {err}", decl.name),
                            ),
                        }
                    }
                }
                Instruction::Env { pairs } => {
                    for kv in pairs {
                        match state.scope.set_env(&kv.key, &kv.value, lexer) {
                            Ok(e) => {
                                self.undefined_vars(&kv.value, &e, &state.scope, span, complete)
                            }
                            Err(err) => {
                                self.error("ExpansionError", span, format!("ENV {}: {err}", kv.key))
                            }
                        }
                    }
                    self.legacy_key_value("ENV", pairs.iter().any(|p| p.legacy), span);
                }
                Instruction::Label { pairs } => {
                    for kv in pairs {
                        self.expand_checked(&kv.key, &state.scope, lexer, span, complete);
                        self.expand_checked(&kv.value, &state.scope, lexer, span, complete);
                    }
                    self.legacy_key_value("LABEL", pairs.iter().any(|p| p.legacy), span);
                }
                Instruction::Maintainer { .. } => self.warn(
                    "MaintainerDeprecated",
                    self.src.keyword(span),
                    "Maintainer instruction is deprecated in favor of using label".into(),
                ),
                Instruction::Workdir { path } => {
                    if let Some(p) = self.expand_checked(path, &state.scope, lexer, span, complete)
                    {
                        if p.starts_with('/') {
                            state.workdir_set = true;
                        } else if !state.workdir_set && !p.is_empty() {
                            self.warn(
                                "WorkdirRelativePath",
                                self.src.locate(span, path),
                                format!("Relative workdir {p:?} can have unexpected results if the base image changes"),
                            );
                        }
                    }
                }
                Instruction::User { user: word } | Instruction::Stopsignal { signal: word } => {
                    self.expand_checked(word, &state.scope, lexer, span, complete);
                }
                Instruction::Expose { ports: words } | Instruction::Volume { paths: words } => {
                    for w in words {
                        self.expand_checked(w, &state.scope, lexer, span, complete);
                    }
                }
                Instruction::Copy(c) => {
                    self.paths(&c.sources, &c.dest, &state.scope, lexer, span, complete);
                    for w in c.chown.iter().chain(&c.chmod) {
                        self.expand_checked(w, &state.scope, lexer, span, complete);
                    }
                    if let Some(from) = &c.from {
                        self.stage_reference("COPY --from", from, file, stage, span);
                    }
                }
                Instruction::Add(a) => {
                    self.paths(&a.sources, &a.dest, &state.scope, lexer, span, complete);
                    for w in a.chown.iter().chain(&a.chmod).chain(&a.checksum) {
                        self.expand_checked(w, &state.scope, lexer, span, complete);
                    }
                }
                Instruction::Run(run) => {
                    for m in &run.mounts {
                        if let Some(from) = &m.from {
                            self.stage_reference("RUN --mount from", from, file, stage, span);
                        }
                    }
                }
                Instruction::Shell { .. } => shell_changed = true,
                Instruction::Cmd { command } | Instruction::Entrypoint { command } => {
                    let kw = item.node.keyword();
                    last_of.entry(kw).or_default().push(span);
                    if matches!(command, CommandLine::Shell(_)) && !shell_changed {
                        self.warn(
                            "JSONArgsRecommended",
                            span,
                            format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
                        );
                    }
                }
                Instruction::Healthcheck(h) => {
                    if matches!(h, Healthcheck::Cmd { .. }) {
                        last_of.entry("HEALTHCHECK").or_default().push(span);
                    }
                }
                Instruction::From(_) | Instruction::Onbuild { .. } => {}
            }
        }
        for (kw, spans) in last_of {
            for span in spans.iter().take(spans.len().saturating_sub(1)) {
                self.warn(
                    "MultipleInstructionsDisallowed",
                    self.src.keyword(*span),
                    format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                );
            }
        }
        state
    }

    fn paths(
        &mut self,
        sources: &[Source],
        dest: &str,
        scope: &Scope,
        lexer: &Lexer,
        span: Span,
        complete: bool,
    ) {
        for s in sources {
            if let Source::Path(p) = s {
                self.expand_checked(p, scope, lexer, span, complete);
            }
        }
        self.expand_checked(dest, scope, lexer, span, complete);
    }

    fn legacy_key_value(&mut self, kw: &str, legacy: bool, span: Span) {
        if legacy {
            self.warn(
                "LegacyKeyValueFormat",
                self.src.keyword(span),
                format!(
                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                ),
            );
        }
    }
}

/// True when `word` uses `$name` or `${name}` (or a pattern operator on it) rather than only
/// forms with a fallback value.
fn used_without_fallback(word: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let plain = format!("${name}");
    let plain_use = word
        .match_indices(&plain)
        .any(|(i, _)| !word[i + plain.len()..].starts_with(is_ident));
    let braced = format!("${{{name}");
    let braced_use = word.match_indices(&braced).any(|(i, _)| {
        let after = &word[i + braced.len()..];
        !(after.starts_with(":-")
            || after.starts_with(":+")
            || after.starts_with(":?")
            || after.starts_with('-')
            || after.starts_with('+')
            || after.starts_with('?')
            || after.starts_with(is_ident))
    });
    plain_use || braced_use
}

trait Shift {
    fn shifted(self, by: usize) -> Self;
}

impl Shift for Span {
    /// Moves a located token span right by `by` characters and shortens it accordingly
    /// (used to drop the leading space of a " AS " match).
    fn shifted(self, by: usize) -> Span {
        if !self.has_columns() {
            return self;
        }
        Span {
            start_col: self.start_col + by,
            end_col: self.end_col.saturating_sub(by).max(self.start_col + by + 1),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rule_url, used_without_fallback};

    #[test]
    fn fallback_forms_are_deliberate() {
        assert!(used_without_fallback("$A/x", "A"));
        assert!(used_without_fallback("${A}", "A"));
        assert!(used_without_fallback("${A#x}", "A"));
        assert!(!used_without_fallback("$AB", "A"));
        assert!(!used_without_fallback("${A:-d}", "A"));
        assert!(!used_without_fallback("${A+x}", "A"));
    }

    #[test]
    fn urls_are_kebab_case() {
        assert_eq!(
            rule_url("JSONArgsRecommended"),
            "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
        );
        assert_eq!(
            rule_url("FromAsCasing"),
            "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
        );
    }
}
