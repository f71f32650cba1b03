//! Source locations. Every AST node, typed instruction and error carries a [`Span`] so that
//! problems are reported as `Dockerfile:LINE:COL` with the offending source line.

use serde::Serialize;

/// A region of the Dockerfile: 1-based lines (inclusive) and 1-based character columns.
///
/// `start_col`/`end_col` refer to `start_line`/`end_line` respectively; a whole-instruction span
/// starts at column 1 of its first line. `end_col` is exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start_line: usize,
    pub start_col: usize,
    pub end_line: usize,
    pub end_col: usize,
}

impl Span {
    /// A span covering whole lines `start..=end`.
    pub fn lines(start: usize, end: usize) -> Span {
        Span {
            start_line: start,
            start_col: 1,
            end_line: end,
            end_col: 0,
        }
    }

    /// A span on a single line, from `col` for `len` characters.
    pub fn at(line: usize, col: usize, len: usize) -> Span {
        Span {
            start_line: line,
            start_col: col,
            end_line: line,
            end_col: col + len.max(1),
        }
    }

    /// True when the span names a precise column range rather than whole lines.
    pub fn has_columns(&self) -> bool {
        self.end_col > 0
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start_line == self.end_line || self.end_line == 0 {
            write!(f, "{}", self.start_line)
        } else {
            write!(f, "{}-{}", self.start_line, self.end_line)
        }
    }
}

/// A value with the place it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spanned<T> {
    pub span: Span,
    #[serde(flatten)]
    pub node: T,
}

/// The text of a Dockerfile split into lines (without line terminators), used to point at
/// tokens inside an instruction and to render source excerpts under error messages.
#[derive(Debug, Clone)]
pub struct SourceLines {
    lines: Vec<String>,
}

impl SourceLines {
    pub fn new(text: &str) -> SourceLines {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        SourceLines {
            lines: text
                .split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
                .collect(),
        }
    }

    /// The text of 1-based line `n`, if it exists.
    pub fn line(&self, n: usize) -> Option<&str> {
        n.checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(String::as_str)
    }

    /// Finds `needle` inside the lines covered by `within` and returns its precise span.
    /// Falls back to `within` itself when the text cannot be found (for instance when it was
    /// assembled from several continuation lines).
    pub fn locate(&self, within: Span, needle: &str) -> Span {
        if needle.is_empty() {
            return within;
        }
        for line_no in within.start_line..=within.end_line.max(within.start_line) {
            let Some(text) = self.line(line_no) else {
                break;
            };
            if let Some(byte_idx) = text.find(needle) {
                let col = text[..byte_idx].chars().count() + 1;
                return Span::at(line_no, col, needle.chars().count());
            }
        }
        within
    }

    /// Span of the first non-blank character run of line `within.start_line` (the keyword).
    pub fn keyword(&self, within: Span) -> Span {
        let Some(text) = self.line(within.start_line) else {
            return within;
        };
        let lead = text.chars().take_while(|c| c.is_whitespace()).count();
        let len = text
            .chars()
            .skip(lead)
            .take_while(|c| !c.is_whitespace())
            .count();
        Span::at(within.start_line, lead + 1, len)
    }
}
