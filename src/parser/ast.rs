//! Stage one of the frontend: Dockerfile text → raw AST.
//!
//! This layer knows the *lexical* rules of Dockerfiles and nothing of their meaning: parser
//! directives (`# syntax=`, `# escape=`, `# check=`), comments, line continuations (with comment
//! and blank lines inside them), CRLF, a UTF-8 BOM, heredocs, and each instruction's way of
//! splitting its arguments (JSON or shell form, `key=value` pairs, whitespace lists). It mirrors
//! BuildKit's `frontend/dockerfile/parser` so that BuildKit's own test vectors produce exactly the
//! same dump (see [`Node::dump`]). Meaning (typed flags, argument counts) is stage two, in
//! `instructions`.

use std::collections::BTreeMap;

use super::directives::{DirectiveParser, Directives};
use super::error::{ParseError, Result};
use super::line_parsers::{self, LineArgs};
use super::shell::Lexer;
use super::span::Span;

/// A heredoc attached to an instruction (`RUN <<EOF`, `COPY <<-"EOT" /file`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed.
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub fd: u32,
    /// False when any part of the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the terminator.
    pub chomp: bool,
    /// The body, every line with its line terminator, as written (tabs are stripped later
    /// by [`Heredoc::body`] when `chomp` is set).
    pub content: String,
}

impl Heredoc {
    /// The body as it should be used: with leading tabs removed for `<<-`.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction as written: keyword, raw flags, and arguments split the way BuildKit splits
/// them for this keyword. No variable has been expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The keyword as written (case preserved; compare with `eq_ignore_ascii_case`).
    pub keyword: String,
    /// Flags as written before the arguments, e.g. `--from=builder`, `--link`.
    pub flags: Vec<String>,
    /// The arguments after the instruction's own splitting rules.
    pub args: LineArgs,
    /// ONBUILD's nested instruction.
    pub child: Option<Box<Node>>,
    /// Heredocs whose bodies follow the instruction.
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined, comments dropped), keyword included.
    pub original: String,
    /// Lines the instruction spans, heredoc bodies included.
    pub span: Span,
    /// Comment lines directly above the instruction.
    pub comments: Vec<String>,
}

impl Node {
    /// Lower-cased keyword, for dispatch.
    pub fn name(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// BuildKit's s-expression dump of the node: `(keyword ["--flag"] "arg" ...)` without the
    /// outer parentheses. Used by the conformance tests.
    pub fn dump(&self) -> String {
        let mut out = self.name();
        if !self.flags.is_empty() {
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out.push_str(&format!(" [{}]", quoted.join(" ")));
        }
        if let Some(child) = &self.child {
            out.push_str(&format!(" ({})", child.dump()));
        }
        for arg in self.args.values() {
            out.push(' ');
            out.push_str(&go_quote(arg));
        }
        out
    }
}

/// The raw AST of a whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct Ast {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    /// Lines that were blank continuation lines (BuildKit warns about them).
    pub empty_continuation_lines: Vec<usize>,
}

impl Ast {
    /// BuildKit's dump format: one `(node)` per line.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push('(');
            out.push_str(&node.dump());
            out.push_str(")\n");
        }
        out
    }
}

/// Parses Dockerfile text into the raw AST.
pub fn parse(text: &str) -> Result<Ast> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n').peekable();
    let mut directive_parser = DirectiveParser::default();
    let mut directives = Directives::default();
    let mut nodes = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut empty_continuation_lines = Vec::new();
    let mut current_line = 0usize;

    while let Some(raw) = lines.next() {
        if is_comment(raw) {
            let comment = raw.trim_start()[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        current_line += 1;
        let trimmed = trim_newline(raw).trim_start();
        let found = directive_parser
            .parse_line(trimmed, current_line)?
            .map(|d| directives.apply(d))
            .transpose()?;
        if found.is_some() {
            comments.pop();
        }
        let processed = trim_comment(trimmed);

        let start_line = current_line;
        let (first, mut end_of_line) = trim_continuation(processed, directives.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut logical = first.to_string();
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            current_line += 1;
            directive_parser.parse_line(trim_newline(raw), current_line)?;
            if is_comment(raw) {
                continue;
            }
            let processed = trim_newline(raw);
            if processed.trim_start().is_empty() {
                empty_continuation_lines.push(current_line);
                continue;
            }
            let (part, eol) = trim_continuation(processed, directives.escape);
            logical.push_str(part);
            end_of_line = eol;
        }

        let mut node = node_from_line(&logical, directives.escape, Span::lines(start_line, 0))
            .map_err(|e| e.with_span(Span::lines(start_line, current_line)))?;

        if can_contain_heredoc(&node) && logical.contains("<<") {
            let heredocs = heredocs_from_line(&logical)
                .map_err(|e| e.with_span(Span::lines(start_line, current_line)))?;
            for mut heredoc in heredocs {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::UnterminatedHeredoc {
                        span: Span::lines(start_line, current_line),
                        name: heredoc.name,
                    });
                }
                node.heredocs.push(heredoc);
            }
        }
        node.span = Span::lines(start_line, current_line);
        node.comments = std::mem::take(&mut comments);
        nodes.push(node);
    }

    if nodes.is_empty() {
        return Err(ParseError::NoInstructions {
            span: Span::lines(current_line.max(1), current_line.max(1)),
        });
    }
    Ok(Ast {
        directives,
        nodes,
        empty_continuation_lines,
    })
}

/// Builds a node from one logical line (keyword, flags, arguments).
fn node_from_line(line: &str, escape: char, span: Span) -> Result<Node> {
    let (keyword, rest) = line_parsers::split_command(line);
    let (flags, args_text) = line_parsers::extract_builder_flags(rest);
    let args_text = args_text.trim();
    let lower = keyword.to_ascii_lowercase();
    let mut child = None;
    let args = if lower == "onbuild" {
        if !args_text.is_empty() {
            child = Some(Box::new(node_from_line(args_text, escape, span)?));
        }
        LineArgs::List(Vec::new())
    } else {
        line_parsers::parse_args(&lower, args_text, escape).map_err(|e| e.with_span(span))?
    };
    Ok(Node {
        keyword: keyword.to_string(),
        flags,
        args,
        child,
        heredocs: Vec::new(),
        original: line.to_string(),
        span,
        comments: Vec::new(),
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let node = match (&node.child, node.name().as_str()) {
        (Some(child), "onbuild") => child.as_ref(),
        _ => node,
    };
    matches!(node.name().as_str(), "run" | "copy" | "add") && !node.args.is_json()
}

/// Finds every heredoc marker (`<<EOF`, `<<-EOF`, `3<<"EOF"`) among the words of a line.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>> {
    let lexer = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let empty: BTreeMap<String, String> = BTreeMap::new();
    let words = match lexer.process_words(line, &empty) {
        Ok((words, _)) => words,
        Err(_) => return Ok(Vec::new()),
    };
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one word as a heredoc marker, if it is one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>> {
    let Some((fd, chomp, rest)) = line_parsers::heredoc_marker(word) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let empty: BTreeMap<String, String> = BTreeMap::new();
    let heredoc_err = |e: super::shell::ShellError| ParseError::Heredoc {
        span: Span::default(),
        message: format!("invalid heredoc delimiter {rest:?}: {e}"),
    };
    let unquoted = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let (words, _) = unquoted.process_words(rest, &empty).map_err(heredoc_err)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = Lexer {
        raw_quotes: true,
        ..unquoted
    };
    let (raw_words, _) = raw.process_words(rest, &empty).map_err(heredoc_err)?;
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw_words.len() == 1 && quotes(&words[0]) == quotes(&raw_words[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn trim_comment(line: &str) -> &str {
    if is_comment(line) {
        ""
    } else {
        line
    }
}

/// Strips a trailing continuation token (the escape character followed only by spaces or
/// tabs, and not itself escaped). Returns the remaining text and whether the logical line ends.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// Go's `strconv.Quote`: the format BuildKit's dumps use for every argument.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || c == '\u{feff}' || c == '\u{ad}' => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(text: &str) -> String {
        parse(text)
            .map(|a| a.dump())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("a \\", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a \\  \t", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a \\\\", '\\'), ("a \\\\", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a `", '`'), ("a ", false));
    }

    #[test]
    fn crlf_and_bom() {
        assert_eq!(
            dump("\u{feff}FROM a\r\nRUN x \\\r\n  y\r\n"),
            "(from \"a\")\n(run \"x   y\")\n"
        );
    }

    #[test]
    fn heredoc_bodies_and_spans() {
        let ast = parse("FROM a\nRUN <<EOF cat <<-\"EOT\"\necho $x\nEOF\n\tbody\n\tEOT\nCMD x\n")
            .unwrap();
        let run = &ast.nodes[1];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[0].content, "echo $x\n");
        assert_eq!(run.heredocs[1].name, "EOT");
        assert!(!run.heredocs[1].expand);
        assert!(run.heredocs[1].chomp);
        assert_eq!(run.heredocs[1].body(), "body\n");
        assert_eq!((run.span.start_line, run.span.end_line), (2, 6));
        assert_eq!(ast.nodes[2].span.start_line, 7);
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let err = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
        assert!(matches!(err, ParseError::UnterminatedHeredoc { .. }));
        assert_eq!(err.span().start_line, 2);
    }

    #[test]
    fn json_run_has_no_heredoc() {
        let ast = parse("FROM a\nRUN [\"<<EOF\"]\n").unwrap();
        assert!(ast.nodes[1].heredocs.is_empty());
    }

    #[test]
    fn directives_then_comments() {
        let ast =
            parse("# syntax=docker/dockerfile:1\n# escape=`\n# hello\nFROM a\nRUN a `\n  b\n")
                .unwrap();
        assert_eq!(ast.directives.escape, '`');
        assert_eq!(
            ast.directives.syntax.as_deref(),
            Some("docker/dockerfile:1")
        );
        assert_eq!(ast.nodes[0].comments, vec!["hello".to_string()]);
        assert_eq!(ast.nodes[1].dump(), "run \"a   b\"");
    }

    #[test]
    fn go_quote_matches_go() {
        assert_eq!(go_quote("a\"b\\c\td\n"), "\"a\\\"b\\\\c\\td\\n\"");
        assert_eq!(go_quote("\u{1}"), "\"\\x01\"");
        assert_eq!(go_quote("한국어"), "\"한국어\"");
    }
}
