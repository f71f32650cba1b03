//! How each instruction splits its argument text, exactly as BuildKit does it: the keyword and
//! leading `--flags` first, then per keyword a JSON array or shell string, a whitespace list,
//! `key=value` pairs (with the legacy `key value` form), or HEALTHCHECK's type + command.

use nom::{
    bytes::complete::{tag, take_till1, take_while},
    character::complete::{char, digit0},
    combinator::{opt, rest},
    sequence::tuple,
    IResult,
};

use super::error::{ParseError, Result};
use super::span::Span;

/// An instruction's arguments after its splitting rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineArgs {
    /// A JSON array of strings (exec form).
    Json(Vec<String>),
    /// Shell form: the whole argument text as one string (RUN, CMD, ENTRYPOINT, SHELL).
    Shell(String),
    /// A list of words (whitespace-split, or shell-like words for ARG).
    List(Vec<String>),
    /// `key value` (legacy, separator "") or `key=value ...` (separator "=") pairs.
    Pairs(Vec<KeyValueArg>),
    /// HEALTHCHECK: the type word (`CMD`, `NONE`, ...) and the command after it.
    Health {
        kind: String,
        command: Box<LineArgs>,
    },
}

/// One pair of ENV or LABEL, unexpanded, quotes kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValueArg {
    pub key: String,
    pub value: String,
    /// `=` for `key=value`, empty for the legacy `key value` form.
    pub sep: String,
}

impl LineArgs {
    /// The flattened argument strings, as BuildKit's node chain holds them.
    pub fn values(&self) -> Vec<&str> {
        match self {
            LineArgs::Json(v) | LineArgs::List(v) => v.iter().map(String::as_str).collect(),
            LineArgs::Shell(s) => vec![s.as_str()],
            LineArgs::Pairs(p) => p
                .iter()
                .flat_map(|kv| [kv.key.as_str(), kv.value.as_str(), kv.sep.as_str()])
                .collect(),
            LineArgs::Health { kind, command } => {
                let mut v = vec![kind.as_str()];
                v.extend(command.values());
                v
            }
        }
    }

    pub fn is_json(&self) -> bool {
        match self {
            LineArgs::Json(_) => true,
            LineArgs::Health { command, .. } => command.is_json(),
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values().is_empty()
    }
}

fn is_token_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits a logical line into its keyword and the rest (`[\t\v\f\r ]+` separates them).
pub fn split_command(line: &str) -> (&str, &str) {
    fn keyword(i: &str) -> IResult<&str, (&str, &str, &str)> {
        tuple((take_till1(is_token_space), take_while(is_token_space), rest))(i)
    }
    let line = line.trim();
    match keyword(line) {
        Ok((_, (kw, _, rest))) => (kw, rest),
        Err(_) => (line, ""),
    }
}

#[derive(PartialEq, Clone, Copy)]
enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Takes the leading `--flag[=value]` words off an argument text. A `--` word ends the flags.
/// Returns the flags (quotes removed) and the remaining text.
pub fn extract_builder_flags(line: &str) -> (Vec<String>, &str) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let byte_at = |i: usize| chars.get(i).map(|c| c.0).unwrap_or(line.len());
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= n {
        let at_end = pos == n;
        let mut ch = chars.get(pos).map(|c| c.1).unwrap_or('\0');
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            let next = chars.get(pos + 1).map(|c| c.1);
            if ch != '-' || next != Some('-') {
                return (words, &line[byte_at(pos)..]);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (words, &line[byte_at(pos)..]);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == '\\' {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos].1;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == '\\' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos].1;
        }
        word.push(ch);
        pos += 1;
    }
    (words, "")
}

/// Splits shell-like words, keeping quotes and escapes (they are removed at expansion time).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= n {
        let at_end = pos == n;
        let mut ch = chars.get(pos).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

fn split_whitespace_list(rest: &str) -> Vec<String> {
    rest.split(is_token_space)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A JSON array of strings, if `rest` is one. `Ok(None)` means "not JSON, use shell form".
fn parse_json(rest: &str, span: Span) -> Result<Option<Vec<String>>> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ParseError::NotStringArray { span }),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn maybe_json(rest: &str, span: Span) -> Result<LineArgs> {
    if rest.is_empty() {
        return Ok(LineArgs::List(Vec::new()));
    }
    Ok(match parse_json(rest, span)? {
        Some(v) => LineArgs::Json(v),
        None => LineArgs::Shell(rest.to_string()),
    })
}

fn maybe_json_to_list(rest: &str, span: Span) -> Result<LineArgs> {
    Ok(match parse_json(rest, span)? {
        Some(v) => LineArgs::Json(v),
        None => LineArgs::List(split_whitespace_list(rest)),
    })
}

fn name_val(rest: &str, keyword: &str, escape: char, span: Span) -> Result<LineArgs> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(LineArgs::Pairs(Vec::new()));
    };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, is_token_space);
        let key = parts.next().unwrap_or_default();
        let value = parts.next().map(|v| v.trim_start_matches(is_token_space));
        return match value {
            Some(value) if !value.is_empty() => Ok(LineArgs::Pairs(vec![KeyValueArg {
                key: key.to_string(),
                value: value.to_string(),
                sep: String::new(),
            }])),
            _ => Err(ParseError::Arguments {
                span,
                message: format!(
                    "{keyword} must have two arguments: write {keyword} {key}=value (or the legacy {keyword} {key} value)"
                ),
            }),
        };
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in &words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseError::Arguments {
                span,
                message: format!(
                    "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
                ),
            });
        };
        pairs.push(KeyValueArg {
            key: key.to_string(),
            value: value.to_string(),
            sep: "=".to_string(),
        });
    }
    Ok(LineArgs::Pairs(pairs))
}

fn health(rest: &str, span: Span) -> Result<LineArgs> {
    let kind_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if kind_len == 0 {
        return Ok(LineArgs::List(Vec::new()));
    }
    let (kind, after) = rest.split_at(kind_len);
    Ok(LineArgs::Health {
        kind: kind.to_string(),
        command: Box::new(maybe_json(after.trim_start(), span)?),
    })
}

/// Splits `rest` (the text after keyword and flags, trimmed) by `keyword`'s rule.
/// Unknown keywords keep nothing, as in BuildKit; the typed stage reports them.
pub fn parse_args(keyword: &str, rest: &str, escape: char) -> Result<LineArgs> {
    let span = Span::default();
    match keyword {
        "add" | "copy" | "volume" => maybe_json_to_list(rest, span),
        "arg" => Ok(LineArgs::List(parse_words(rest, escape))),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(rest, span),
        "env" => name_val(rest, "ENV", escape, span),
        "label" => name_val(rest, "LABEL", escape, span),
        "expose" | "from" => Ok(LineArgs::List(split_whitespace_list(rest))),
        "healthcheck" => health(rest, span),
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            Ok(LineArgs::List(if rest.is_empty() {
                Vec::new()
            } else {
                vec![rest.to_string()]
            }))
        }
        _ => Ok(LineArgs::List(Vec::new())),
    }
}

/// `^(\d*)<<(-?)([^<]*)$`: a heredoc marker word. Returns (fd, chomp, delimiter text).
pub fn heredoc_marker(word: &str) -> Option<(u32, bool, &str)> {
    fn marker(i: &str) -> IResult<&str, (&str, &str, Option<char>, &str)> {
        tuple((digit0, tag("<<"), opt(char('-')), take_while(|c| c != '<')))(i)
    }
    match marker(word) {
        Ok(("", (fd, _, dash, rest))) => Some((fd.parse().unwrap_or(0), dash.is_some(), rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_split_off() {
        assert_eq!(
            extract_builder_flags("--from=a --link foo bar"),
            (vec!["--from=a".into(), "--link".into()], "foo bar")
        );
        assert_eq!(
            extract_builder_flags("--doit=true -- foo"),
            (vec!["--doit=true".into()], " foo")
        );
        assert_eq!(
            extract_builder_flags("--chown=\"a b\" x"),
            (vec!["--chown=a b".into()], "x")
        );
        assert_eq!(extract_builder_flags("-x y"), (vec![], "-x y"));
        assert_eq!(extract_builder_flags("--only"), (vec!["--only".into()], ""));
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"a="b c" d=e\ f g"#, '\\'),
            vec![r#"a="b c""#, r"d=e\ f", "g"]
        );
    }

    #[test]
    fn heredoc_markers() {
        assert_eq!(heredoc_marker("<<EOF"), Some((0, false, "EOF")));
        assert_eq!(heredoc_marker("3<<-'x'"), Some((3, true, "'x'")));
        assert_eq!(heredoc_marker("a<<EOF"), None);
        assert_eq!(heredoc_marker("<<a<b"), None);
    }

    #[test]
    fn nested_json_is_an_error_and_bad_json_is_shell() {
        assert!(parse_args("cmd", r#"["a", ["b"]]"#, '\\').is_err());
        assert_eq!(
            parse_args("cmd", "['a']", '\\').unwrap(),
            LineArgs::Shell("['a']".into())
        );
    }
}
