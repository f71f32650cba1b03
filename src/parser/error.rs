//! The parser's error type. Every variant carries the [`Span`] it refers to, so callers can
//! always print `Dockerfile:LINE:COL` with the offending source line.

use super::span::Span;

/// Why a Dockerfile could not be parsed. One enum for the whole `parser` module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("file with no instructions")]
    NoInstructions { span: Span },
    #[error("invalid escape token '{token}' does not match ` or \\")]
    InvalidEscapeToken { span: Span, token: String },
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective { span: Span, name: String },
    #[error("unterminated heredoc: no line {name:?} closes the heredoc started here")]
    UnterminatedHeredoc { span: Span, name: String },
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray { span: Span },
    #[error("{message}")]
    Heredoc { span: Span, message: String },
    #[error("unknown instruction: {name}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction {
        span: Span,
        name: String,
        suggestion: Option<String>,
    },
    #[error("unknown flag: --{flag} ({hint})")]
    UnknownFlag {
        span: Span,
        instruction: String,
        flag: String,
        /// "did you mean --x?" or the list of valid flags.
        hint: String,
    },
    #[error("{instruction} --{flag}: {message}")]
    BadFlag {
        span: Span,
        instruction: String,
        flag: String,
        message: String,
    },
    #[error("{message}")]
    Arguments { span: Span, message: String },
    #[error("{message}")]
    Stage { span: Span, message: String },
}

impl ParseError {
    /// Where the problem is.
    pub fn span(&self) -> Span {
        match self {
            ParseError::NoInstructions { span }
            | ParseError::InvalidEscapeToken { span, .. }
            | ParseError::DuplicateDirective { span, .. }
            | ParseError::UnterminatedHeredoc { span, .. }
            | ParseError::NotStringArray { span }
            | ParseError::Heredoc { span, .. }
            | ParseError::UnknownInstruction { span, .. }
            | ParseError::UnknownFlag { span, .. }
            | ParseError::BadFlag { span, .. }
            | ParseError::Arguments { span, .. }
            | ParseError::Stage { span, .. } => *span,
        }
    }

    /// The same error pointing somewhere more precise.
    pub fn with_span(mut self, new: Span) -> ParseError {
        match &mut self {
            ParseError::NoInstructions { span }
            | ParseError::InvalidEscapeToken { span, .. }
            | ParseError::DuplicateDirective { span, .. }
            | ParseError::UnterminatedHeredoc { span, .. }
            | ParseError::NotStringArray { span }
            | ParseError::Heredoc { span, .. }
            | ParseError::UnknownInstruction { span, .. }
            | ParseError::UnknownFlag { span, .. }
            | ParseError::BadFlag { span, .. }
            | ParseError::Arguments { span, .. }
            | ParseError::Stage { span, .. } => *span = new,
        }
        self
    }

    /// A short stable identifier for machine-readable output.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::NoInstructions { .. } => "NoInstructions",
            ParseError::InvalidEscapeToken { .. } => "InvalidEscapeToken",
            ParseError::DuplicateDirective { .. } => "DuplicateDirective",
            ParseError::UnterminatedHeredoc { .. } => "UnterminatedHeredoc",
            ParseError::NotStringArray { .. } => "NotStringArray",
            ParseError::Heredoc { .. } => "Heredoc",
            ParseError::UnknownInstruction { .. } => "UnknownInstruction",
            ParseError::UnknownFlag { .. } => "UnknownFlag",
            ParseError::BadFlag { .. } => "BadFlag",
            ParseError::Arguments { .. } => "Arguments",
            ParseError::Stage { .. } => "Stage",
        }
    }
}

pub type Result<T, E = ParseError> = std::result::Result<T, E>;
