//! The stage model: typed instructions grouped into build stages. ARGs before the first FROM
//! are the file's meta args; every other instruction belongs to the stage its FROM opened.

use serde::Serialize;

use super::ast::Ast;
use super::directives::Directives;
use super::error::{ParseError, Result};
use super::instructions::{from_node, ArgDecl, Instruction};
use super::span::{SourceLines, Span, Spanned};

/// A build stage: one FROM and the instructions after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// Position in the file, 0-based (usable as `--from=N`).
    pub index: usize,
    /// `AS name`, as written.
    pub name: Option<String>,
    /// The base as written, before meta-arg expansion: an image, an earlier stage, `scratch`.
    pub base: String,
    pub platform: Option<String>,
    /// The FROM instruction's own location.
    pub span: Span,
    /// The instructions after FROM.
    pub instructions: Vec<Spanned<Instruction>>,
}

impl Stage {
    /// True when `reference` (a name, compared case-insensitively, or an index) names this stage.
    pub fn is_named(&self, reference: &str) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(reference))
            || reference.parse::<usize>().ok() == Some(self.index)
    }
}

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs declared before the first FROM.
    pub meta_args: Vec<Spanned<ArgDecl>>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage a `--from`/`FROM` reference names, if any: by name, or by index when the
    /// reference is a number lower than `before` (stages can only use earlier stages).
    pub fn stage_ref(&self, reference: &str, before: usize) -> Option<&Stage> {
        self.stages
            .iter()
            .take(before)
            .rev()
            .find(|s| s.is_named(reference))
    }

    /// The stage with this name (case-insensitive), if any.
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }
}

/// Groups typed instructions into stages. Stops at the first error.
pub fn build(ast: &Ast, src: &SourceLines) -> Result<Dockerfile> {
    let mut errors = Vec::new();
    let file = build_collecting(ast, src, &mut errors);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(file),
    }
}

/// Groups typed instructions into stages, collecting every error instead of stopping, so that
/// `kiln check` can report all of them at once. Bad instructions are left out of the result.
pub fn build_collecting(ast: &Ast, src: &SourceLines, errors: &mut Vec<ParseError>) -> Dockerfile {
    let mut file = Dockerfile {
        directives: ast.directives.clone(),
        meta_args: Vec::new(),
        stages: Vec::new(),
    };
    for node in &ast.nodes {
        let instruction = match from_node(node, Some(src)) {
            Ok(i) => i,
            Err(e) => {
                errors.push(e);
                if node.keyword.eq_ignore_ascii_case("from") {
                    // Keep a stage open so the instructions after a bad FROM are still
                    // checked as part of a stage rather than reported as misplaced.
                    file.stages.push(Stage {
                        index: file.stages.len(),
                        name: None,
                        base: node
                            .args
                            .values()
                            .first()
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                        platform: None,
                        span: node.span,
                        instructions: Vec::new(),
                    });
                }
                continue;
            }
        };
        match (instruction, file.stages.last_mut()) {
            (Instruction::From(from), _) => file.stages.push(Stage {
                index: file.stages.len(),
                name: from.name,
                base: from.image,
                platform: from.platform,
                span: node.span,
                instructions: Vec::new(),
            }),
            (instruction, Some(stage)) => stage.instructions.push(Spanned {
                span: node.span,
                node: instruction,
            }),
            (Instruction::Arg { args }, None) => {
                file.meta_args.extend(args.into_iter().map(|a| Spanned {
                    span: node.span,
                    node: a,
                }))
            }
            (instruction, None) => errors.push(ParseError::Stage {
                span: src.keyword(node.span),
                message: format!(
                    "{} before the first FROM: only ARG may come before FROM (no build stage in current context)",
                    instruction.keyword()
                ),
            }),
        }
    }
    if file.stages.is_empty() && !errors.iter().any(|e| matches!(e, ParseError::Stage { .. })) {
        let last = ast.nodes.last().map(|n| n.span.end_line).unwrap_or(1);
        errors.push(ParseError::Stage {
            span: Span::lines(1, last),
            message: "the Dockerfile has no FROM instruction: every build needs at least one stage"
                .into(),
        });
    }
    file
}
