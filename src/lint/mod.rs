//! `kiln check`: parse and lint a Dockerfile without building it, like `docker build --check`.
//!
//! Parse errors (stage one and two of the frontend) are reported as errors; the BuildKit check
//! rules that can be decided statically are reported as warnings (or errors under
//! `# check=error=true`), each with its rule name and location. [`render`] prints them.

pub mod render;
mod rules;

use serde::Serialize;

use crate::graph::dispatch::ImageSource;
use crate::graph::BuildOptions;
use crate::parser::{ast, stages, ParseError, SourceLines, Span};

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One thing wrong with the Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// The BuildKit rule name for lint warnings, or the error kind for parse errors.
    pub rule: String,
    pub message: String,
    pub span: Span,
    /// Documentation of the rule, for lint warnings.
    pub url: Option<String>,
}

impl Problem {
    /// An error at `span` (build failures use this to print like `check`).
    pub fn error(span: Span, rule: &str, message: String) -> Problem {
        Problem {
            severity: Severity::Error,
            rule: rule.to_string(),
            message,
            span,
            url: None,
        }
    }

    /// A parse error as an error-severity problem.
    pub fn from_parse_error(e: &ParseError) -> Problem {
        Problem {
            severity: Severity::Error,
            rule: e.code().to_string(),
            message: e.to_string(),
            span: e.span(),
            url: None,
        }
    }
}

/// The outcome of checking one file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, s: Severity) -> usize {
        self.problems.iter().filter(|p| p.severity == s).count()
    }
}

/// Parses and lints `text`. Never fails: every problem, fatal or not, is in the report.
pub fn check(text: &str, opts: &BuildOptions) -> Report {
    check_with_images(text, opts, None)
}

/// [`check`], with base images looked up (in the local store) so their ENV is known and
/// `UndefinedVar` can be exact on stages built on them.
pub fn check_with_images(
    text: &str,
    opts: &BuildOptions,
    images: Option<&dyn ImageSource>,
) -> Report {
    let src = SourceLines::new(text);
    let mut problems = Vec::new();
    let ast = match ast::parse(text) {
        Ok(ast) => ast,
        Err(e) => {
            problems.push(Problem::from_parse_error(&e));
            return Report { problems };
        }
    };
    let mut errors = Vec::new();
    let file = stages::build_collecting(&ast, &src, &mut errors);
    problems.extend(errors.iter().map(Problem::from_parse_error));

    let mut lints = rules::run(&ast, &file, &src, opts, images);
    let check = ast.directives.check.clone().unwrap_or_default();
    lints.retain(|p| !check.skips(&p.rule));
    if check.error {
        for p in &mut lints {
            p.severity = Severity::Error;
        }
    }
    problems.extend(lints);
    problems.sort_by_key(|p| (p.span.start_line, p.span.start_col));
    Report { problems }
}
