//! Parser directives: `# syntax=`, `# escape=` and `# check=` comments at the very top of a
//! Dockerfile. They must precede every instruction and every other comment, and each may
//! appear only once; the first line that is not a known directive ends the header.

use nom::{
    bytes::complete::{take_while, take_while1},
    character::complete::{char, satisfy},
    combinator::recognize,
    sequence::{pair, preceded, tuple},
    IResult,
};

use serde::Serialize;

use super::error::{ParseError, Result};
use super::span::Span;

/// A directive as found in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// The `# check=` directive: which lint rules to skip and whether warnings fail the check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CheckDirective {
    /// Rule names to skip; `all` skips every rule.
    pub skip: Vec<String>,
    /// `error=true`: every warning becomes an error.
    pub error: bool,
}

impl CheckDirective {
    /// Parses `skip=Rule1,Rule2;error=true` (both parts optional, in any order).
    pub fn parse(value: &str, span: Span) -> Result<CheckDirective> {
        let mut out = CheckDirective::default();
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, val)) = part.split_once('=') else {
                return Err(ParseError::Arguments {
                    span,
                    message: format!("invalid check directive {part:?}: expected key=value"),
                });
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => out.skip.extend(
                    val.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                ),
                "error" => {
                    out.error = parse_go_bool(val.trim()).ok_or_else(|| ParseError::Arguments {
                        span,
                        message: format!(
                            "invalid check directive error value {val:?}: expected true or false"
                        ),
                    })?
                }
                other => {
                    return Err(ParseError::Arguments {
                        span,
                        message: format!(
                            "invalid check directive key {other:?}: expected skip or error"
                        ),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Whether a rule is switched off by this directive.
    pub fn skips(&self, rule: &str) -> bool {
        self.skip
            .iter()
            .any(|s| s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case(rule))
    }
}

/// Go's `strconv.ParseBool`, which BuildKit uses for every boolean value.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The directives in effect for a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// The escape and line-continuation character: `\` (default) or `` ` ``.
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<CheckDirective>,
    /// Every directive in order, as written.
    #[serde(skip)]
    pub all: Vec<Directive>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
            all: Vec::new(),
        }
    }
}

impl Directives {
    /// Records a directive; fails on a bad escape token or a malformed check directive.
    pub fn apply(&mut self, d: Directive) -> Result<()> {
        let span = Span::lines(d.line, d.line);
        match d.name.as_str() {
            "escape" => {
                self.escape = match d.value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError::InvalidEscapeToken {
                            span,
                            token: d.value,
                        })
                    }
                }
            }
            "syntax" => self.syntax = Some(d.value.clone()),
            "check" => self.check = Some(CheckDirective::parse(&d.value, span)?),
            _ => {}
        }
        self.all.push(d);
        Ok(())
    }
}

const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

/// Recognizes directive lines at the top of a file, then stays silent for the rest of it.
#[derive(Debug, Default)]
pub struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    /// Looks at one line (newline and leading whitespace already removed). Returns the
    /// directive it holds, `None` for any other line (which ends the header).
    pub fn parse_line(&mut self, line: &str, line_no: usize) -> Result<Option<Directive>> {
        if self.done {
            return Ok(None);
        }
        let Ok(("", (name, value))) = directive_line(line) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(ParseError::DuplicateDirective {
                span: Span::lines(line_no, line_no),
                name,
            });
        }
        self.seen.push(name.clone());
        Ok(Some(Directive {
            name,
            value: value.to_string(),
            line: line_no,
        }))
    }
}

fn is_re2_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}')
}

/// `#\s*NAME\s*=\s*VALUE\s*` with NAME = `[a-zA-Z][a-zA-Z0-9]*` and a non-empty VALUE.
fn directive_line(input: &str) -> IResult<&str, (&str, &str)> {
    let (rest, name) = preceded(
        pair(char('#'), take_while(is_re2_space)),
        recognize(pair(
            satisfy(|c| c.is_ascii_alphabetic()),
            take_while(|c: char| c.is_ascii_alphanumeric()),
        )),
    )(input)?;
    let (rest, _) = tuple((
        take_while(is_re2_space),
        char('='),
        take_while(is_re2_space),
    ))(rest)?;
    let (rest, value) = take_while1(|_| true)(rest)?;
    let value = value.trim_end_matches(is_re2_space);
    if value.is_empty() {
        return Err(nom::Err::Error(nom::error::Error::new(
            rest,
            nom::error::ErrorKind::TakeWhile1,
        )));
    }
    Ok((rest, (name, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_directives() {
        let mut p = DirectiveParser::default();
        let d = p.parse_line("# escape = `  ", 1).unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.value.as_str()), ("escape", "`"));
        assert!(p
            .parse_line("#SYNTAX=docker/dockerfile:1", 2)
            .unwrap()
            .is_some());
        assert!(matches!(
            p.parse_line("# escape=\\", 3),
            Err(ParseError::DuplicateDirective { .. })
        ));
    }

    #[test]
    fn header_ends_at_first_other_line() {
        let mut p = DirectiveParser::default();
        assert!(p.parse_line("# a comment", 1).unwrap().is_none());
        assert!(p.parse_line("# escape=`", 2).unwrap().is_none());
        let mut p = DirectiveParser::default();
        assert!(p.parse_line("# unknown=1", 1).unwrap().is_none());
        assert!(p.parse_line("# escape=`", 2).unwrap().is_none());
    }

    #[test]
    fn check_directive() {
        let c = CheckDirective::parse(
            "skip=JSONArgsRecommended,StageNameCasing;error=true",
            Span::default(),
        )
        .unwrap();
        assert!(c.error);
        assert!(c.skips("stagenamecasing"));
        assert!(!c.skips("FromAsCasing"));
        assert!(CheckDirective::parse("error=maybe", Span::default()).is_err());
        assert!(CheckDirective::parse("skip=all", Span::default())
            .unwrap()
            .skips("X"));
    }
}
