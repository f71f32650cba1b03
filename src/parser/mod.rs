//! The Dockerfile frontend: text → raw AST ([`ast`]) → typed instructions ([`instructions`])
//! → stages ([`stages`]). Shell-word expansion ([`shell`]) is its own module, used later by
//! the graph layer when ARG/ENV values are known. Nothing here touches the filesystem or
//! knows about builds.

pub mod ast;
pub mod directives;
pub mod error;
pub mod flags;
pub mod instructions;
pub mod line_parsers;
pub mod mount;
pub mod shell;
pub mod span;
pub mod stages;
pub mod suggest;

pub use error::{ParseError, Result};
pub use instructions::{CommandLine, Instruction};
pub use span::{SourceLines, Span, Spanned};
pub use stages::{Dockerfile, Stage};

/// Parses a whole Dockerfile into stages, stopping at the first error.
pub fn parse(text: &str) -> Result<Dockerfile> {
    let ast = ast::parse(text)?;
    stages::build(&ast, &SourceLines::new(text))
}
