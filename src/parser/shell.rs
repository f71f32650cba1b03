//! Shell-word expansion for Dockerfile instructions, done the way BuildKit does it.
//!
//! Most Dockerfile instructions (`ENV`, `ARG`, `COPY`, `ADD`, `WORKDIR`, `FROM`, `USER`,
//! `EXPOSE`, `LABEL`, `VOLUME`, `STOPSIGNAL`, `ONBUILD`, …) expand `$VAR` / `${VAR…}`
//! references themselves instead of handing the text to `/bin/sh`. The rules are not POSIX
//! sh: they are whatever `frontend/dockerfile/shell/lex.go` in moby/buildkit does, quirks
//! included, and Dockerfiles in the wild depend on them. This module reproduces that lexer so
//! kiln produces the same words, the same values and the same errors as `docker build`.
//!
//! What is supported, exactly as in BuildKit:
//!
//! * `$name`, `${name}`, positional and special parameters (`$1`, `${999}`, `$@`, `$#`, `$?`,
//!   `$$`, …) which are looked up like any other name and are therefore normally empty;
//! * `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?msg}`, `${v?msg}`;
//! * `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`, `${v/p/r}`, `${v//p/r}` where `p` is a glob with
//!   `*` and `?` (neither matches a newline, as in BuildKit's regexp translation) and the
//!   escapes `\*`, `\?`, `\\`, `\}` and `\/`. Brackets are literal characters in BuildKit;
//!   [`Lexer::bracket_globs`] opts in to `[...]` classes;
//! * single quotes, double quotes and the escape character of the Dockerfile (`\` or `` ` ``);
//! * word splitting after expansion ([`Lexer::process_words`]);
//! * reporting which variables were referenced and found or not found ([`Expansion`]).
//!
//! BuildKit quirks kept on purpose: quotes inside a pattern are removed before it is compiled
//! (`${v#'*'}` is `${v#*}`); the pattern escape is always `\`, whatever the Dockerfile's escape
//! character; `%`/`%%` match a reversed pattern against the reversed value; in a `${v//p/r}`
//! replacement `$0` is the matched text and `$$` is `$` (Go's `ReplaceAllString`), while
//! `${v/p/r}` inserts `r` as is; `${v/p}` without the second `/` is an error.
//!
//! Differences, all on input BuildKit also rejects or mangles: `${name` at the end of the input
//! is reported as a missing `}` (BuildKit: "unsupported modifier (\u{fffd})"); with
//! [`Lexer::skip_unset_env`], `${v//p/r}` is kept with both slashes (BuildKit drops one);
//! nesting deeper than [`MAX_NESTING`] is an error.
//!
//! Nothing here panics on any input, and the glob matching is an NFA simulation whose cost is
//! `O(value length × pattern length)`, never exponential.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::iter::Peekable;
use std::str::Chars;

/// How deeply `${…}` operands (and quotes inside them) may nest before expansion gives up with
/// [`ShellError::TooDeeplyNested`]. BuildKit has no limit (Go stacks grow); we need one so that
/// hostile input cannot overflow the stack. Real Dockerfiles nest two or three levels.
pub const MAX_NESTING: usize = 64;

/// Where variable values come from.
pub trait Env {
    /// The value of `name`, or `None` when the variable is unset (which is different from set
    /// to the empty string for `${v-w}`, `${v+w}` and `${v?msg}`).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<T: Env + ?Sized> Env for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

impl<V: AsRef<str>> Env for BTreeMap<String, V> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(AsRef::as_ref)
    }
}

impl<V: AsRef<str>, S: BuildHasher> Env for HashMap<String, V, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(AsRef::as_ref)
    }
}

/// Pairs in definition order; a later pair overrides an earlier one with the same name.
impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Env for [(K, V); N] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// `NAME=value` entries, as in an image config's `Env` or BuildKit's `EnvsFromSlice`: a later
/// entry overrides an earlier one, and an entry without `=` sets the name to the empty string.
impl Env for [String] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find_map(|entry| match entry.split_once('=') {
                Some((key, value)) => (key == name).then_some(value),
                None => (entry == name).then_some(""),
            })
    }
}

impl Env for Vec<String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// The expander's settings; the fields mirror BuildKit's `shell.Lex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    /// The escape character: `\` by default, `` ` `` after a `# escape=`` ` directive.
    pub escape: char,
    /// Keep the quote characters in the result (`'a'` stays `'a'`). BuildKit's `RawQuotes`.
    pub raw_quotes: bool,
    /// Keep escape characters in the result (`\$x` stays `\$x`). BuildKit's `RawEscapes`.
    pub raw_escapes: bool,
    /// Leave references to unset variables as they were written (`$X`, `${X:-y}`) instead of
    /// expanding them, and never fail on `${X?msg}`. BuildKit's `SkipUnsetEnv`.
    pub skip_unset_env: bool,
    /// Treat `'` and `"` as ordinary characters (used for heredoc bodies). BuildKit's
    /// `SkipProcessQuotes`.
    pub skip_process_quotes: bool,
    /// Not in BuildKit, off by default: let `[...]` in `#`/`%`/`/` patterns be a bracket
    /// expression (`[abc]`, `[!a-z]`, `[[:digit:]]`), and let `\` escape any character in a
    /// pattern. With it off, `[` and `]` are literal characters, as in BuildKit.
    pub bracket_globs: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word (quotes removed, escapes resolved, variables substituted).
    pub word: String,
    /// Names that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Names that were referenced but unset (this includes positional and special parameters
    /// such as `1` or `@`, which are never set unless the environment defines them).
    pub unmatched: BTreeSet<String>,
}

/// Why a word could not be expanded. Every variant carries the whole word being processed, and
/// the message reads like BuildKit's: `failed to process "<word>": <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A `'` with no closing `'`.
    #[error(
        "failed to process {input:?}: unexpected end of statement while looking for matching single-quote"
    )]
    UnterminatedSingleQuote { input: String },
    /// A `"` with no closing `"`.
    #[error(
        "failed to process {input:?}: unexpected end of statement while looking for matching double-quote"
    )]
    UnterminatedDoubleQuote { input: String },
    /// `${` with no closing `}`.
    #[error("failed to process {input:?}: syntax error: missing '}}'")]
    MissingBrace { input: String },
    /// `${v/pattern` with no `/` after the pattern.
    #[error("failed to process {input:?}: syntax error: missing '/' in ${{}}")]
    MissingSlash { input: String },
    /// `${}`, `${{…}`, `${:…}`.
    #[error("failed to process {input:?}: syntax error: bad substitution")]
    BadSubstitution { input: String },
    /// An operator BuildKit does not know, e.g. `${v:=w}`, `${v=w}`, `${v:#p}` or `${v.}`.
    #[error("failed to process {input:?}: unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier { input: String, modifier: String },
    /// `${v?msg}` or `${v:?msg}` with `v` unset.
    #[error(
        "failed to process {input:?}: {name}: {}",
        message.as_deref().unwrap_or("is not allowed to be unset")
    )]
    UnsetVariable {
        input: String,
        name: String,
        /// The expanded `msg`, `None` when it was empty.
        message: Option<String>,
    },
    /// `${v:?msg}` with `v` set to the empty string.
    #[error(
        "failed to process {input:?}: {name}: {}",
        message.as_deref().unwrap_or("is not allowed to be empty")
    )]
    EmptyVariable {
        input: String,
        name: String,
        /// The expanded `msg`, `None` when it was empty.
        message: Option<String>,
    },
    /// A `#`, `%` or `/` pattern with a bad escape (e.g. `\x`, or a trailing `\`).
    #[error("failed to process {input:?}: invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        input: String,
        pattern: String,
        reason: String,
    },
    /// `${…}` operands nested more than [`MAX_NESTING`] levels deep.
    #[error(
        "failed to process {input:?}: substitutions nested more than {} levels deep",
        MAX_NESTING
    )]
    TooDeeplyNested { input: String },
}

impl ShellError {
    /// The word whose expansion failed.
    pub fn input(&self) -> &str {
        match self {
            ShellError::UnterminatedSingleQuote { input }
            | ShellError::UnterminatedDoubleQuote { input }
            | ShellError::MissingBrace { input }
            | ShellError::MissingSlash { input }
            | ShellError::BadSubstitution { input }
            | ShellError::UnsupportedModifier { input, .. }
            | ShellError::UnsetVariable { input, .. }
            | ShellError::EmptyVariable { input, .. }
            | ShellError::InvalidPattern { input, .. }
            | ShellError::TooDeeplyNested { input } => input,
        }
    }
}

impl Lexer {
    /// A lexer with the given escape character and every other option off (BuildKit's
    /// `NewLex`).
    pub const fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
            bracket_globs: false,
        }
    }

    /// Expand `word` as one word: spaces are kept, nothing is split. BuildKit's
    /// `ProcessWordWithMatches`.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut expander = Expander::new(self, word, env);
        let (word, _) = expander.run(false)?;
        Ok(Expansion {
            word,
            matched: expander.matched,
            unmatched: expander.unmatched,
        })
    }

    /// Expand `word` and split the result into words at unquoted, unescaped whitespace
    /// (including whitespace that came out of a variable's value). Empty words are dropped.
    /// Returns the words and the names that were referenced but unset. BuildKit's
    /// `ProcessWords`.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<(Vec<String>, BTreeSet<String>), ShellError> {
        let mut expander = Expander::new(self, word, env);
        let (_, words) = expander.run(true)?;
        Ok((words, expander.unmatched))
    }
}

/// Collects the split words during [`Lexer::process_words`]; a no-op when splitting is off.
struct Words {
    enabled: bool,
    current: String,
    done: Vec<String>,
}

impl Words {
    fn new(enabled: bool) -> Self {
        Words {
            enabled,
            current: String::new(),
            done: Vec::new(),
        }
    }

    /// An unquoted character: whitespace ends the current word.
    fn push_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        if !ch.is_whitespace() {
            self.current.push(ch);
        } else if !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    /// A quoted or escaped character: always part of the word.
    fn push_raw_char(&mut self, ch: char) {
        if self.enabled {
            self.current.push(ch);
        }
    }

    /// The value of a variable: split like unquoted text.
    fn push_split(&mut self, s: &str) {
        if self.enabled {
            s.chars().for_each(|ch| self.push_char(ch));
        }
    }

    /// The contents of quotes: never split.
    fn push_raw(&mut self, s: &str) {
        if self.enabled {
            self.current.push_str(s);
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// One expansion in progress: BuildKit's `shellWord`.
struct Expander<'a> {
    lexer: Lexer,
    env: &'a dyn Env,
    input: &'a str,
    chars: Peekable<Chars<'a>>,
    /// The raw-escapes mode in force: the lexer's at the top level, on inside `#`, `%` and `/`
    /// operands (so that pattern escapes survive to the glob compiler), off inside the others.
    raw_escapes: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Expander<'a> {
    fn new(lexer: &Lexer, input: &'a str, env: &'a dyn Env) -> Self {
        Expander {
            lexer: *lexer,
            env,
            input,
            chars: input.chars().peekable(),
            raw_escapes: lexer.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn run(&mut self, split: bool) -> Result<(String, Vec<String>), ShellError> {
        // Go's text/scanner, which BuildKit reads the word with, drops a leading BOM.
        if self.chars.peek() == Some(&'\u{feff}') {
            self.chars.next();
        }
        let mut words = Words::new(split);
        let word = self.process_until(None, self.lexer.raw_escapes, &mut words)?;
        Ok((word, words.finish()))
    }

    fn at_end(&mut self) -> bool {
        self.chars.peek().is_none()
    }

    fn input(&self) -> String {
        self.input.to_owned()
    }

    /// Expand up to (and consuming) `stop`, or to the end of the input when `stop` is `None`.
    /// BuildKit's `processStopOn`.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        words: &mut Words,
    ) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return Err(ShellError::TooDeeplyNested {
                input: self.input(),
            });
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.process_until_inner(stop, words);
        self.raw_escapes = saved;
        self.depth -= 1;
        result
    }

    fn process_until_inner(
        &mut self,
        stop: Option<char>,
        words: &mut Words,
    ) -> Result<String, ShellError> {
        let mut out = String::new();
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(&ch) = self.chars.peek() {
            if Some(ch) == stop {
                self.chars.next();
                return Ok(out);
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    words.push_split(&value);
                    out.push_str(&value);
                }
                '\'' if quotes => {
                    let value = self.single_quoted()?;
                    words.push_raw(&value);
                    out.push_str(&value);
                }
                '"' if quotes => {
                    let value = self.double_quoted()?;
                    words.push_raw(&value);
                    out.push_str(&value);
                }
                _ => {
                    self.chars.next();
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            words.push_raw_char(ch);
                            out.push(ch);
                        }
                        // An escape at the very end of the input is dropped.
                        let Some(escaped) = self.chars.next() else {
                            break;
                        };
                        words.push_raw_char(escaped);
                        out.push(escaped);
                    } else {
                        words.push_char(ch);
                        out.push(ch);
                    }
                }
            }
        }
        match stop {
            None => Ok(out),
            Some('/') => Err(ShellError::MissingSlash {
                input: self.input(),
            }),
            Some(_) => Err(ShellError::MissingBrace {
                input: self.input(),
            }),
        }
    }

    /// `'...'`: everything up to the next `'` is literal; there is no way to escape `'`.
    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.chars.next();
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.chars.next() {
                None => {
                    return Err(ShellError::UnterminatedSingleQuote {
                        input: self.input(),
                    })
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(ch) => out.push(ch),
            }
        }
    }

    /// `"..."`: literal except for `$` expansions; the escape character escapes only `"`, `$`
    /// and itself and is kept before anything else.
    fn double_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.chars.next();
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            match self.chars.peek().copied() {
                None => {
                    return Err(ShellError::UnterminatedDoubleQuote {
                        input: self.input(),
                    })
                }
                Some('"') => {
                    self.chars.next();
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    out.push_str(&value);
                }
                Some(mut ch) => {
                    self.chars.next();
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.chars.peek().copied() {
                            // An escape right before the end is dropped (the missing `"` is
                            // reported on the next turn).
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.chars.next();
                                ch = next;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    /// `$name` or `${...}`, with the `$` next in the input. BuildKit's `processDollar`.
    fn process_dollar(&mut self) -> Result<String, ShellError> {
        self.chars.next();
        if self.chars.peek() != Some(&'{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value.to_owned(),
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.chars.next();
        match self.chars.peek() {
            None => {
                return Err(ShellError::MissingBrace {
                    input: self.input(),
                })
            }
            Some('{' | '}' | ':') => {
                return Err(ShellError::BadSubstitution {
                    input: self.input(),
                })
            }
            Some(_) => {}
        }
        let name = self.process_name();
        match self.chars.next() {
            // BuildKit says "unsupported modifier (\u{fffd})" here; a missing brace is clearer.
            None => Err(ShellError::MissingBrace {
                input: self.input(),
            }),
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value.to_owned(),
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => match self.chars.next() {
                None => Err(ShellError::MissingBrace {
                    input: self.input(),
                }),
                Some(op) => self.modifier(&name, op, true),
            },
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => self.modifier(&name, op, false),
            Some('/') => self.substitute(&name),
            Some(other) => Err(ShellError::UnsupportedModifier {
                input: self.input(),
                modifier: other.to_string(),
            }),
        }
    }

    /// Read an operand of `${name<op>operand}` up to `stop`. Any failure that ran into the end
    /// of the input is reported as the missing terminator, as BuildKit does.
    fn operand(&mut self, stop: char, raw_escapes: bool) -> Result<String, ShellError> {
        let mut no_words = Words::new(false);
        self.process_until(Some(stop), raw_escapes, &mut no_words)
            .map_err(|err| match (self.at_end(), stop) {
                (false, _) => err,
                (true, '/') => ShellError::MissingSlash {
                    input: self.input(),
                },
                (true, _) => ShellError::MissingBrace {
                    input: self.input(),
                },
            })
    }

    /// `${name<op>word}` and `${name:<op>word}` for op in `- + ? # %` (anything else after a
    /// `:` is read and then rejected, as BuildKit does).
    fn modifier(&mut self, name: &str, op: char, colon: bool) -> Result<String, ShellError> {
        let modifier = if colon {
            format!(":{op}")
        } else {
            op.to_string()
        };
        let is_pattern = matches!(op, '#' | '%');
        if colon && is_pattern {
            return Err(ShellError::UnsupportedModifier {
                input: self.input(),
                modifier,
            });
        }
        let word = self.operand('}', is_pattern)?;
        let value = self.get_env(name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let set = value.is_some();
        let value = value.unwrap_or_default();
        let null = !set || (colon && value.is_empty());
        match op {
            '-' => Ok(if null { word } else { value.to_owned() }),
            '+' => Ok(if null { String::new() } else { word }),
            '?' => {
                let message = (!word.is_empty()).then_some(word);
                if !set {
                    Err(ShellError::UnsetVariable {
                        input: self.input(),
                        name: name.to_owned(),
                        message,
                    })
                } else if null {
                    Err(ShellError::EmptyVariable {
                        input: self.input(),
                        name: name.to_owned(),
                        message,
                    })
                } else {
                    Ok(value.to_owned())
                }
            }
            '#' | '%' => {
                // `##` and `%%` remove the longest match, `#` and `%` the shortest. Like
                // BuildKit this looks at the expanded operand, so `${v#'#'x}` is greedy too.
                let (longest, pattern) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                self.trim(value, pattern, op == '%', longest)
            }
            _ => Err(ShellError::UnsupportedModifier {
                input: self.input(),
                modifier,
            }),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`, with the first `/`
    /// already read.
    fn substitute(&mut self, name: &str) -> Result<String, ShellError> {
        let all = self.chars.peek() == Some(&'/');
        if all {
            self.chars.next();
        }
        let pattern = self.operand('/', true)?;
        let replacement = self.operand('}', true)?;
        let value = self.get_env(name);
        let Some(value) = value else {
            if self.lexer.skip_unset_env {
                let slashes = if all { "//" } else { "/" };
                return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let glob = self.compile(&pattern, false)?;
        let text: Vec<char> = value.chars().collect();
        Ok(if all {
            glob.replace_all(&text, &replacement)
        } else {
            glob.replace_first(&text, &replacement)
        })
    }

    /// Remove the shortest or longest prefix (or suffix) of `value` that matches `pattern`.
    fn trim(
        &self,
        value: &str,
        pattern: &str,
        suffix: bool,
        longest: bool,
    ) -> Result<String, ShellError> {
        let text: Vec<char> = value.chars().collect();
        if suffix {
            // Like BuildKit, match a reversed pattern against the reversed value.
            let glob = self.compile(pattern, true)?;
            let reversed: Vec<char> = text.iter().rev().copied().collect();
            Ok(match glob.match_prefix(&reversed, longest) {
                Some(len) => text
                    .get(..text.len().saturating_sub(len))
                    .unwrap_or_default()
                    .iter()
                    .collect(),
                None => value.to_owned(),
            })
        } else {
            let glob = self.compile(pattern, false)?;
            Ok(match glob.match_prefix(&text, longest) {
                Some(len) => text.get(len..).unwrap_or_default().iter().collect(),
                None => value.to_owned(),
            })
        }
    }

    fn compile(&self, pattern: &str, reversed: bool) -> Result<Glob, ShellError> {
        let chars: Vec<char> = pattern.chars().collect();
        let compiled = if self.lexer.bracket_globs {
            Glob::parse(&chars, true).map(|glob| if reversed { glob.reversed() } else { glob })
        } else if reversed {
            // BuildKit reverses the pattern text, keeping `\x` pairs together, then compiles it.
            Glob::parse(&reverse_pattern(&chars), false)
        } else {
            Glob::parse(&chars, false)
        };
        compiled.map_err(|reason| ShellError::InvalidPattern {
            input: self.input(),
            pattern: pattern.to_owned(),
            reason,
        })
    }

    /// A name after `$`: a run of digits, one special-parameter character, or letters, digits
    /// and `_` (letters and digits in Unicode's sense, as Go's `unicode.IsLetter`/`IsDigit`).
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(&ch) = self.chars.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(digit) = self.chars.next_if(|&c| is_go_digit(c)) {
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.chars.next();
                name.push(ch);
                return name;
            }
            if !is_go_letter(ch) && !is_go_digit(ch) && ch != '_' {
                break;
            }
            self.chars.next();
            name.push(ch);
        }
        name
    }

    fn get_env(&mut self, name: &str) -> Option<&'a str> {
        let value = self.env.lookup(name);
        let seen = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        if !seen.contains(name) {
            seen.insert(name.to_owned());
        }
        value
    }
}

/// POSIX special parameters (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`).
fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `unicode.IsLetter`: general category L.
fn is_go_letter(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphabetic()
    } else {
        in_table(ch, unicode_tables::LETTER)
    }
}

/// Go's `unicode.IsDigit`: general category Nd.
fn is_go_digit(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_digit()
    } else {
        in_table(ch, unicode_tables::DECIMAL_DIGIT)
    }
}

fn in_table(ch: char, table: &[(u32, u32)]) -> bool {
    let code = u32::from(ch);
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < code {
                std::cmp::Ordering::Less
            } else if lo > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Reverse a pattern, keeping each `\x` pair in order (`a\*c` becomes `c\*a`). A trailing lone
/// `\` ends up in front, exactly as in BuildKit's `reversePattern`.
fn reverse_pattern(pattern: &[char]) -> Vec<char> {
    let mut units: Vec<&[char]> = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let len = if let ['\\', _, ..] = rest { 2 } else { 1 };
        let (unit, tail) = rest.split_at(len.min(rest.len()));
        units.push(unit);
        rest = tail;
    }
    units.into_iter().rev().flatten().copied().collect()
}

/// Go's `Regexp.Expand` for a pattern without capture groups, which BuildKit's `${v//p/r}`
/// applies to `r` through `ReplaceAllString`: `$$` is `$`, `$0`/`${0}` the matched text, any
/// other `$name`/`${name}` nothing, and a `$` not followed by a name stays as it is.
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('$') {
        out.push_str(before);
        rest = after;
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let name_len: usize = body
            .chars()
            .take_while(|&c| is_go_letter(c) || is_go_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        let (name, tail) = body.split_at(name_len.min(body.len()));
        let tail = if braced {
            tail.strip_prefix('}')
        } else {
            Some(tail)
        };
        match tail {
            Some(tail) if !name.is_empty() => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = tail;
            }
            // Not a reference: the `$` is literal.
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// One element of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: any one character except a newline.
    AnyChar,
    /// `*`: any run of characters without a newline.
    AnyString,
    /// `[...]` (only with [`Lexer::bracket_globs`]).
    Class(CharClass),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CharClass {
    negated: bool,
    items: Vec<ClassItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClassItem {
    Char(char),
    Range(char, char),
    Named(NamedClass),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamedClass {
    Alnum,
    Alpha,
    Blank,
    Cntrl,
    Digit,
    Graph,
    Lower,
    Print,
    Punct,
    Space,
    Upper,
    Xdigit,
}

impl NamedClass {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "alnum" => NamedClass::Alnum,
            "alpha" => NamedClass::Alpha,
            "blank" => NamedClass::Blank,
            "cntrl" => NamedClass::Cntrl,
            "digit" => NamedClass::Digit,
            "graph" => NamedClass::Graph,
            "lower" => NamedClass::Lower,
            "print" => NamedClass::Print,
            "punct" => NamedClass::Punct,
            "space" => NamedClass::Space,
            "upper" => NamedClass::Upper,
            "xdigit" => NamedClass::Xdigit,
            _ => return None,
        })
    }

    fn matches(self, ch: char) -> bool {
        match self {
            NamedClass::Alnum => ch.is_alphanumeric(),
            NamedClass::Alpha => ch.is_alphabetic(),
            NamedClass::Blank => ch == ' ' || ch == '\t',
            NamedClass::Cntrl => ch.is_control(),
            NamedClass::Digit => ch.is_ascii_digit(),
            NamedClass::Graph => !ch.is_whitespace() && !ch.is_control(),
            NamedClass::Lower => ch.is_lowercase(),
            NamedClass::Print => !ch.is_control(),
            NamedClass::Punct => ch.is_ascii_punctuation(),
            NamedClass::Space => ch.is_whitespace(),
            NamedClass::Upper => ch.is_uppercase(),
            NamedClass::Xdigit => ch.is_ascii_hexdigit(),
        }
    }
}

impl CharClass {
    fn matches(&self, ch: char) -> bool {
        let hit = self.items.iter().any(|item| match *item {
            ClassItem::Char(c) => c == ch,
            ClassItem::Range(lo, hi) => (lo..=hi).contains(&ch),
            ClassItem::Named(class) => class.matches(ch),
        });
        hit != self.negated
    }

    /// Parse the inside of `[...]`, `pattern` starting right after the `[`. Returns the class
    /// and how many characters it used (including the `]`), or `None` when there is no closing
    /// `]`, in which case the `[` is a literal.
    fn parse(pattern: &[char]) -> Result<Option<(CharClass, usize)>, String> {
        let mut i = 0;
        let negated = matches!(pattern.first(), Some('!' | '^'));
        if negated {
            i += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let Some(&c) = pattern.get(i) else {
                return Ok(None);
            };
            i += 1;
            if c == ']' && !first {
                return Ok(Some((CharClass { negated, items }, i)));
            }
            first = false;
            let lo = match c {
                '[' if pattern.get(i) == Some(&':') => {
                    let body = pattern.get(i + 1..).unwrap_or_default();
                    if let Some(len) = body.windows(2).position(|w| w == [':', ']']) {
                        let name: String = body.get(..len).unwrap_or_default().iter().collect();
                        let class = NamedClass::from_name(&name)
                            .ok_or_else(|| format!("unknown character class [:{name}:]"))?;
                        items.push(ClassItem::Named(class));
                        i += 1 + len + 2;
                        continue;
                    }
                    c
                }
                '\\' => {
                    let Some(&escaped) = pattern.get(i) else {
                        return Ok(None);
                    };
                    i += 1;
                    escaped
                }
                c => c,
            };
            let is_range =
                pattern.get(i) == Some(&'-') && pattern.get(i + 1).is_some_and(|&next| next != ']');
            if !is_range {
                items.push(ClassItem::Char(lo));
                continue;
            }
            i += 1;
            let mut hi = pattern.get(i).copied();
            if hi == Some('\\') {
                i += 1;
                hi = pattern.get(i).copied();
            }
            let Some(hi) = hi else {
                return Ok(None);
            };
            i += 1;
            items.push(ClassItem::Range(lo, hi));
        }
    }
}

impl Token {
    /// Whether this single-character token accepts `ch` (`AnyString` is handled by the NFA).
    fn accepts(&self, ch: char) -> bool {
        match self {
            Token::Literal(c) => *c == ch,
            Token::AnyChar | Token::AnyString => ch != '\n',
            Token::Class(class) => class.matches(ch),
        }
    }
}

/// A compiled `#`/`%`/`/` pattern, matched by simulating its NFA: the states are the positions
/// between tokens, state `tokens.len()` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compile a pattern. Without `brackets` this is BuildKit's `convertShellPatternToRegex`:
    /// `*`, `?`, and `\` escaping only `*`, `?` and `\` (and dropped before `}` and `/`, which
    /// had to be escaped inside `${}`); every other character is literal.
    fn parse(pattern: &[char], brackets: bool) -> Result<Glob, String> {
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = pattern.get(i) {
            i += 1;
            let token = match c {
                '*' => {
                    if tokens.last() != Some(&Token::AnyString) {
                        tokens.push(Token::AnyString);
                    }
                    continue;
                }
                '?' => Token::AnyChar,
                '\\' => match pattern.get(i) {
                    Some('}' | '/') if !brackets => continue,
                    Some(&escaped) if brackets || matches!(escaped, '*' | '?' | '\\') => {
                        i += 1;
                        Token::Literal(escaped)
                    }
                    Some(&escaped) => return Err(format!("invalid escape '\\{escaped}'")),
                    None => return Err("invalid escape: '\\' at the end of the pattern".into()),
                },
                '[' if brackets => match CharClass::parse(pattern.get(i..).unwrap_or_default())? {
                    Some((class, used)) => {
                        i += used;
                        Token::Class(class)
                    }
                    None => Token::Literal('['),
                },
                c => Token::Literal(c),
            };
            tokens.push(token);
        }
        Ok(Glob { tokens })
    }

    /// The same glob matching reversed text.
    fn reversed(mut self) -> Glob {
        self.tokens.reverse();
        self
    }

    /// Follow the empty transitions: a `*` may match nothing. Each state carries the earliest
    /// start position of a match attempt that reached it.
    fn close(&self, states: &mut [Option<usize>]) {
        for (i, token) in self.tokens.iter().enumerate() {
            if *token != Token::AnyString {
                continue;
            }
            if let Some(start) = states.get(i).copied().flatten() {
                if let Some(next) = states.get_mut(i + 1) {
                    *next = Some(next.map_or(start, |s| s.min(start)));
                }
            }
        }
    }

    /// Consume `ch` from every live state of `cur` into `next`.
    fn step(&self, cur: &[Option<usize>], ch: char, next: &mut [Option<usize>]) {
        next.fill(None);
        for (i, (token, state)) in self.tokens.iter().zip(cur).enumerate() {
            let Some(start) = *state else { continue };
            if !token.accepts(ch) {
                continue;
            }
            let target = if *token == Token::AnyString { i } else { i + 1 };
            if let Some(slot) = next.get_mut(target) {
                *slot = Some(slot.map_or(start, |s| s.min(start)));
            }
        }
    }

    /// The match Go's regexp engine reports for this glob in `text[from..]`: when `anchored`,
    /// a match must start at `from` (and is the shortest one unless `longest`); otherwise the
    /// match that starts leftmost, and the longest of those (all `*` are greedy).
    fn find(
        &self,
        text: &[char],
        from: usize,
        anchored: bool,
        longest: bool,
    ) -> Option<(usize, usize)> {
        let mut cur: Vec<Option<usize>> = vec![None; self.tokens.len() + 1];
        let mut next = cur.clone();
        let mut best: Option<(usize, usize)> = None;
        let mut pos = from;
        loop {
            if best.is_none() && (!anchored || pos == from) {
                if let Some(first) = cur.first_mut() {
                    first.get_or_insert(pos);
                }
            }
            self.close(&mut cur);
            if let Some(&Some(start)) = cur.last() {
                let better = best.is_none_or(|(best_start, best_end)| {
                    start < best_start || (start == best_start && pos > best_end)
                });
                if better {
                    best = Some((start, pos));
                }
                if !longest {
                    return best;
                }
            }
            if let Some((best_start, _)) = best {
                // Attempts that started later than the match found can no longer win.
                cur.iter_mut()
                    .filter(|state| state.is_some_and(|start| start > best_start))
                    .for_each(|state| *state = None);
            }
            let Some(&ch) = text.get(pos) else { break };
            if (anchored || best.is_some()) && cur.iter().all(Option::is_none) {
                break;
            }
            self.step(&cur, ch, &mut next);
            std::mem::swap(&mut cur, &mut next);
            pos += 1;
        }
        best
    }

    /// The length of the shortest (or longest) prefix of `text` that matches.
    fn match_prefix(&self, text: &[char], longest: bool) -> Option<usize> {
        self.find(text, 0, true, longest).map(|(_, end)| end)
    }

    /// `${v/p/r}`: replace the leftmost-longest match; `r` is inserted literally.
    fn replace_first(&self, text: &[char], replacement: &str) -> String {
        match self.find(text, 0, false, true) {
            Some((start, end)) => {
                let mut out: String = text.get(..start).unwrap_or_default().iter().collect();
                out.push_str(replacement);
                out.extend(text.get(end..).unwrap_or_default());
                out
            }
            None => text.iter().collect(),
        }
    }

    /// `${v//p/r}`: Go's `Regexp.ReplaceAllString`, including its handling of empty matches
    /// and its `$` expansion of the replacement.
    fn replace_all(&self, text: &[char], replacement: &str) -> String {
        let mut out = String::new();
        let mut last_end = 0;
        let mut search = 0;
        while search <= text.len() {
            let Some((start, end)) = self.find(text, search, false, true) else {
                break;
            };
            out.extend(text.get(last_end..start).unwrap_or_default());
            // No replacement for an empty match right after the previous match.
            if end > last_end || start == 0 {
                let matched: String = text.get(start..end).unwrap_or_default().iter().collect();
                expand_template(replacement, &matched, &mut out);
            }
            last_end = end;
            search = if search + 1 > end { search + 1 } else { end };
        }
        out.extend(text.get(last_end..).unwrap_or_default());
        out
    }
}

/// Unicode general-category tables for Go's `unicode.IsLetter` and `unicode.IsDigit`, generated
/// from the Unicode Character Database 15.0.0 (the version Go's `unicode` package implements).
mod unicode_tables {
    /// General category L (Lu, Ll, Lt, Lm, Lo), Unicode 15.0.0: 659 ranges.
    #[rustfmt::skip]
    pub(super) const LETTER: &[(u32, u32)] = &[
        (0x00041, 0x0005A), (0x00061, 0x0007A), (0x000AA, 0x000AA), (0x000B5, 0x000B5), (0x000BA, 0x000BA),
        (0x000C0, 0x000D6), (0x000D8, 0x000F6), (0x000F8, 0x002C1), (0x002C6, 0x002D1), (0x002E0, 0x002E4),
        (0x002EC, 0x002EC), (0x002EE, 0x002EE), (0x00370, 0x00374), (0x00376, 0x00377), (0x0037A, 0x0037D),
        (0x0037F, 0x0037F), (0x00386, 0x00386), (0x00388, 0x0038A), (0x0038C, 0x0038C), (0x0038E, 0x003A1),
        (0x003A3, 0x003F5), (0x003F7, 0x00481), (0x0048A, 0x0052F), (0x00531, 0x00556), (0x00559, 0x00559),
        (0x00560, 0x00588), (0x005D0, 0x005EA), (0x005EF, 0x005F2), (0x00620, 0x0064A), (0x0066E, 0x0066F),
        (0x00671, 0x006D3), (0x006D5, 0x006D5), (0x006E5, 0x006E6), (0x006EE, 0x006EF), (0x006FA, 0x006FC),
        (0x006FF, 0x006FF), (0x00710, 0x00710), (0x00712, 0x0072F), (0x0074D, 0x007A5), (0x007B1, 0x007B1),
        (0x007CA, 0x007EA), (0x007F4, 0x007F5), (0x007FA, 0x007FA), (0x00800, 0x00815), (0x0081A, 0x0081A),
        (0x00824, 0x00824), (0x00828, 0x00828), (0x00840, 0x00858), (0x00860, 0x0086A), (0x00870, 0x00887),
        (0x00889, 0x0088E), (0x008A0, 0x008C9), (0x00904, 0x00939), (0x0093D, 0x0093D), (0x00950, 0x00950),
        (0x00958, 0x00961), (0x00971, 0x00980), (0x00985, 0x0098C), (0x0098F, 0x00990), (0x00993, 0x009A8),
        (0x009AA, 0x009B0), (0x009B2, 0x009B2), (0x009B6, 0x009B9), (0x009BD, 0x009BD), (0x009CE, 0x009CE),
        (0x009DC, 0x009DD), (0x009DF, 0x009E1), (0x009F0, 0x009F1), (0x009FC, 0x009FC), (0x00A05, 0x00A0A),
        (0x00A0F, 0x00A10), (0x00A13, 0x00A28), (0x00A2A, 0x00A30), (0x00A32, 0x00A33), (0x00A35, 0x00A36),
        (0x00A38, 0x00A39), (0x00A59, 0x00A5C), (0x00A5E, 0x00A5E), (0x00A72, 0x00A74), (0x00A85, 0x00A8D),
        (0x00A8F, 0x00A91), (0x00A93, 0x00AA8), (0x00AAA, 0x00AB0), (0x00AB2, 0x00AB3), (0x00AB5, 0x00AB9),
        (0x00ABD, 0x00ABD), (0x00AD0, 0x00AD0), (0x00AE0, 0x00AE1), (0x00AF9, 0x00AF9), (0x00B05, 0x00B0C),
        (0x00B0F, 0x00B10), (0x00B13, 0x00B28), (0x00B2A, 0x00B30), (0x00B32, 0x00B33), (0x00B35, 0x00B39),
        (0x00B3D, 0x00B3D), (0x00B5C, 0x00B5D), (0x00B5F, 0x00B61), (0x00B71, 0x00B71), (0x00B83, 0x00B83),
        (0x00B85, 0x00B8A), (0x00B8E, 0x00B90), (0x00B92, 0x00B95), (0x00B99, 0x00B9A), (0x00B9C, 0x00B9C),
        (0x00B9E, 0x00B9F), (0x00BA3, 0x00BA4), (0x00BA8, 0x00BAA), (0x00BAE, 0x00BB9), (0x00BD0, 0x00BD0),
        (0x00C05, 0x00C0C), (0x00C0E, 0x00C10), (0x00C12, 0x00C28), (0x00C2A, 0x00C39), (0x00C3D, 0x00C3D),
        (0x00C58, 0x00C5A), (0x00C5D, 0x00C5D), (0x00C60, 0x00C61), (0x00C80, 0x00C80), (0x00C85, 0x00C8C),
        (0x00C8E, 0x00C90), (0x00C92, 0x00CA8), (0x00CAA, 0x00CB3), (0x00CB5, 0x00CB9), (0x00CBD, 0x00CBD),
        (0x00CDD, 0x00CDE), (0x00CE0, 0x00CE1), (0x00CF1, 0x00CF2), (0x00D04, 0x00D0C), (0x00D0E, 0x00D10),
        (0x00D12, 0x00D3A), (0x00D3D, 0x00D3D), (0x00D4E, 0x00D4E), (0x00D54, 0x00D56), (0x00D5F, 0x00D61),
        (0x00D7A, 0x00D7F), (0x00D85, 0x00D96), (0x00D9A, 0x00DB1), (0x00DB3, 0x00DBB), (0x00DBD, 0x00DBD),
        (0x00DC0, 0x00DC6), (0x00E01, 0x00E30), (0x00E32, 0x00E33), (0x00E40, 0x00E46), (0x00E81, 0x00E82),
        (0x00E84, 0x00E84), (0x00E86, 0x00E8A), (0x00E8C, 0x00EA3), (0x00EA5, 0x00EA5), (0x00EA7, 0x00EB0),
        (0x00EB2, 0x00EB3), (0x00EBD, 0x00EBD), (0x00EC0, 0x00EC4), (0x00EC6, 0x00EC6), (0x00EDC, 0x00EDF),
        (0x00F00, 0x00F00), (0x00F40, 0x00F47), (0x00F49, 0x00F6C), (0x00F88, 0x00F8C), (0x01000, 0x0102A),
        (0x0103F, 0x0103F), (0x01050, 0x01055), (0x0105A, 0x0105D), (0x01061, 0x01061), (0x01065, 0x01066),
        (0x0106E, 0x01070), (0x01075, 0x01081), (0x0108E, 0x0108E), (0x010A0, 0x010C5), (0x010C7, 0x010C7),
        (0x010CD, 0x010CD), (0x010D0, 0x010FA), (0x010FC, 0x01248), (0x0124A, 0x0124D), (0x01250, 0x01256),
        (0x01258, 0x01258), (0x0125A, 0x0125D), (0x01260, 0x01288), (0x0128A, 0x0128D), (0x01290, 0x012B0),
        (0x012B2, 0x012B5), (0x012B8, 0x012BE), (0x012C0, 0x012C0), (0x012C2, 0x012C5), (0x012C8, 0x012D6),
        (0x012D8, 0x01310), (0x01312, 0x01315), (0x01318, 0x0135A), (0x01380, 0x0138F), (0x013A0, 0x013F5),
        (0x013F8, 0x013FD), (0x01401, 0x0166C), (0x0166F, 0x0167F), (0x01681, 0x0169A), (0x016A0, 0x016EA),
        (0x016F1, 0x016F8), (0x01700, 0x01711), (0x0171F, 0x01731), (0x01740, 0x01751), (0x01760, 0x0176C),
        (0x0176E, 0x01770), (0x01780, 0x017B3), (0x017D7, 0x017D7), (0x017DC, 0x017DC), (0x01820, 0x01878),
        (0x01880, 0x01884), (0x01887, 0x018A8), (0x018AA, 0x018AA), (0x018B0, 0x018F5), (0x01900, 0x0191E),
        (0x01950, 0x0196D), (0x01970, 0x01974), (0x01980, 0x019AB), (0x019B0, 0x019C9), (0x01A00, 0x01A16),
        (0x01A20, 0x01A54), (0x01AA7, 0x01AA7), (0x01B05, 0x01B33), (0x01B45, 0x01B4C), (0x01B83, 0x01BA0),
        (0x01BAE, 0x01BAF), (0x01BBA, 0x01BE5), (0x01C00, 0x01C23), (0x01C4D, 0x01C4F), (0x01C5A, 0x01C7D),
        (0x01C80, 0x01C88), (0x01C90, 0x01CBA), (0x01CBD, 0x01CBF), (0x01CE9, 0x01CEC), (0x01CEE, 0x01CF3),
        (0x01CF5, 0x01CF6), (0x01CFA, 0x01CFA), (0x01D00, 0x01DBF), (0x01E00, 0x01F15), (0x01F18, 0x01F1D),
        (0x01F20, 0x01F45), (0x01F48, 0x01F4D), (0x01F50, 0x01F57), (0x01F59, 0x01F59), (0x01F5B, 0x01F5B),
        (0x01F5D, 0x01F5D), (0x01F5F, 0x01F7D), (0x01F80, 0x01FB4), (0x01FB6, 0x01FBC), (0x01FBE, 0x01FBE),
        (0x01FC2, 0x01FC4), (0x01FC6, 0x01FCC), (0x01FD0, 0x01FD3), (0x01FD6, 0x01FDB), (0x01FE0, 0x01FEC),
        (0x01FF2, 0x01FF4), (0x01FF6, 0x01FFC), (0x02071, 0x02071), (0x0207F, 0x0207F), (0x02090, 0x0209C),
        (0x02102, 0x02102), (0x02107, 0x02107), (0x0210A, 0x02113), (0x02115, 0x02115), (0x02119, 0x0211D),
        (0x02124, 0x02124), (0x02126, 0x02126), (0x02128, 0x02128), (0x0212A, 0x0212D), (0x0212F, 0x02139),
        (0x0213C, 0x0213F), (0x02145, 0x02149), (0x0214E, 0x0214E), (0x02183, 0x02184), (0x02C00, 0x02CE4),
        (0x02CEB, 0x02CEE), (0x02CF2, 0x02CF3), (0x02D00, 0x02D25), (0x02D27, 0x02D27), (0x02D2D, 0x02D2D),
        (0x02D30, 0x02D67), (0x02D6F, 0x02D6F), (0x02D80, 0x02D96), (0x02DA0, 0x02DA6), (0x02DA8, 0x02DAE),
        (0x02DB0, 0x02DB6), (0x02DB8, 0x02DBE), (0x02DC0, 0x02DC6), (0x02DC8, 0x02DCE), (0x02DD0, 0x02DD6),
        (0x02DD8, 0x02DDE), (0x02E2F, 0x02E2F), (0x03005, 0x03006), (0x03031, 0x03035), (0x0303B, 0x0303C),
        (0x03041, 0x03096), (0x0309D, 0x0309F), (0x030A1, 0x030FA), (0x030FC, 0x030FF), (0x03105, 0x0312F),
        (0x03131, 0x0318E), (0x031A0, 0x031BF), (0x031F0, 0x031FF), (0x03400, 0x04DBF), (0x04E00, 0x0A48C),
        (0x0A4D0, 0x0A4FD), (0x0A500, 0x0A60C), (0x0A610, 0x0A61F), (0x0A62A, 0x0A62B), (0x0A640, 0x0A66E),
        (0x0A67F, 0x0A69D), (0x0A6A0, 0x0A6E5), (0x0A717, 0x0A71F), (0x0A722, 0x0A788), (0x0A78B, 0x0A7CA),
        (0x0A7D0, 0x0A7D1), (0x0A7D3, 0x0A7D3), (0x0A7D5, 0x0A7D9), (0x0A7F2, 0x0A801), (0x0A803, 0x0A805),
        (0x0A807, 0x0A80A), (0x0A80C, 0x0A822), (0x0A840, 0x0A873), (0x0A882, 0x0A8B3), (0x0A8F2, 0x0A8F7),
        (0x0A8FB, 0x0A8FB), (0x0A8FD, 0x0A8FE), (0x0A90A, 0x0A925), (0x0A930, 0x0A946), (0x0A960, 0x0A97C),
        (0x0A984, 0x0A9B2), (0x0A9CF, 0x0A9CF), (0x0A9E0, 0x0A9E4), (0x0A9E6, 0x0A9EF), (0x0A9FA, 0x0A9FE),
        (0x0AA00, 0x0AA28), (0x0AA40, 0x0AA42), (0x0AA44, 0x0AA4B), (0x0AA60, 0x0AA76), (0x0AA7A, 0x0AA7A),
        (0x0AA7E, 0x0AAAF), (0x0AAB1, 0x0AAB1), (0x0AAB5, 0x0AAB6), (0x0AAB9, 0x0AABD), (0x0AAC0, 0x0AAC0),
        (0x0AAC2, 0x0AAC2), (0x0AADB, 0x0AADD), (0x0AAE0, 0x0AAEA), (0x0AAF2, 0x0AAF4), (0x0AB01, 0x0AB06),
        (0x0AB09, 0x0AB0E), (0x0AB11, 0x0AB16), (0x0AB20, 0x0AB26), (0x0AB28, 0x0AB2E), (0x0AB30, 0x0AB5A),
        (0x0AB5C, 0x0AB69), (0x0AB70, 0x0ABE2), (0x0AC00, 0x0D7A3), (0x0D7B0, 0x0D7C6), (0x0D7CB, 0x0D7FB),
        (0x0F900, 0x0FA6D), (0x0FA70, 0x0FAD9), (0x0FB00, 0x0FB06), (0x0FB13, 0x0FB17), (0x0FB1D, 0x0FB1D),
        (0x0FB1F, 0x0FB28), (0x0FB2A, 0x0FB36), (0x0FB38, 0x0FB3C), (0x0FB3E, 0x0FB3E), (0x0FB40, 0x0FB41),
        (0x0FB43, 0x0FB44), (0x0FB46, 0x0FBB1), (0x0FBD3, 0x0FD3D), (0x0FD50, 0x0FD8F), (0x0FD92, 0x0FDC7),
        (0x0FDF0, 0x0FDFB), (0x0FE70, 0x0FE74), (0x0FE76, 0x0FEFC), (0x0FF21, 0x0FF3A), (0x0FF41, 0x0FF5A),
        (0x0FF66, 0x0FFBE), (0x0FFC2, 0x0FFC7), (0x0FFCA, 0x0FFCF), (0x0FFD2, 0x0FFD7), (0x0FFDA, 0x0FFDC),
        (0x10000, 0x1000B), (0x1000D, 0x10026), (0x10028, 0x1003A), (0x1003C, 0x1003D), (0x1003F, 0x1004D),
        (0x10050, 0x1005D), (0x10080, 0x100FA), (0x10280, 0x1029C), (0x102A0, 0x102D0), (0x10300, 0x1031F),
        (0x1032D, 0x10340), (0x10342, 0x10349), (0x10350, 0x10375), (0x10380, 0x1039D), (0x103A0, 0x103C3),
        (0x103C8, 0x103CF), (0x10400, 0x1049D), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10500, 0x10527),
        (0x10530, 0x10563), (0x10570, 0x1057A), (0x1057C, 0x1058A), (0x1058C, 0x10592), (0x10594, 0x10595),
        (0x10597, 0x105A1), (0x105A3, 0x105B1), (0x105B3, 0x105B9), (0x105BB, 0x105BC), (0x10600, 0x10736),
        (0x10740, 0x10755), (0x10760, 0x10767), (0x10780, 0x10785), (0x10787, 0x107B0), (0x107B2, 0x107BA),
        (0x10800, 0x10805), (0x10808, 0x10808), (0x1080A, 0x10835), (0x10837, 0x10838), (0x1083C, 0x1083C),
        (0x1083F, 0x10855), (0x10860, 0x10876), (0x10880, 0x1089E), (0x108E0, 0x108F2), (0x108F4, 0x108F5),
        (0x10900, 0x10915), (0x10920, 0x10939), (0x10980, 0x109B7), (0x109BE, 0x109BF), (0x10A00, 0x10A00),
        (0x10A10, 0x10A13), (0x10A15, 0x10A17), (0x10A19, 0x10A35), (0x10A60, 0x10A7C), (0x10A80, 0x10A9C),
        (0x10AC0, 0x10AC7), (0x10AC9, 0x10AE4), (0x10B00, 0x10B35), (0x10B40, 0x10B55), (0x10B60, 0x10B72),
        (0x10B80, 0x10B91), (0x10C00, 0x10C48), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x10D00, 0x10D23),
        (0x10E80, 0x10EA9), (0x10EB0, 0x10EB1), (0x10F00, 0x10F1C), (0x10F27, 0x10F27), (0x10F30, 0x10F45),
        (0x10F70, 0x10F81), (0x10FB0, 0x10FC4), (0x10FE0, 0x10FF6), (0x11003, 0x11037), (0x11071, 0x11072),
        (0x11075, 0x11075), (0x11083, 0x110AF), (0x110D0, 0x110E8), (0x11103, 0x11126), (0x11144, 0x11144),
        (0x11147, 0x11147), (0x11150, 0x11172), (0x11176, 0x11176), (0x11183, 0x111B2), (0x111C1, 0x111C4),
        (0x111DA, 0x111DA), (0x111DC, 0x111DC), (0x11200, 0x11211), (0x11213, 0x1122B), (0x1123F, 0x11240),
        (0x11280, 0x11286), (0x11288, 0x11288), (0x1128A, 0x1128D), (0x1128F, 0x1129D), (0x1129F, 0x112A8),
        (0x112B0, 0x112DE), (0x11305, 0x1130C), (0x1130F, 0x11310), (0x11313, 0x11328), (0x1132A, 0x11330),
        (0x11332, 0x11333), (0x11335, 0x11339), (0x1133D, 0x1133D), (0x11350, 0x11350), (0x1135D, 0x11361),
        (0x11400, 0x11434), (0x11447, 0x1144A), (0x1145F, 0x11461), (0x11480, 0x114AF), (0x114C4, 0x114C5),
        (0x114C7, 0x114C7), (0x11580, 0x115AE), (0x115D8, 0x115DB), (0x11600, 0x1162F), (0x11644, 0x11644),
        (0x11680, 0x116AA), (0x116B8, 0x116B8), (0x11700, 0x1171A), (0x11740, 0x11746), (0x11800, 0x1182B),
        (0x118A0, 0x118DF), (0x118FF, 0x11906), (0x11909, 0x11909), (0x1190C, 0x11913), (0x11915, 0x11916),
        (0x11918, 0x1192F), (0x1193F, 0x1193F), (0x11941, 0x11941), (0x119A0, 0x119A7), (0x119AA, 0x119D0),
        (0x119E1, 0x119E1), (0x119E3, 0x119E3), (0x11A00, 0x11A00), (0x11A0B, 0x11A32), (0x11A3A, 0x11A3A),
        (0x11A50, 0x11A50), (0x11A5C, 0x11A89), (0x11A9D, 0x11A9D), (0x11AB0, 0x11AF8), (0x11C00, 0x11C08),
        (0x11C0A, 0x11C2E), (0x11C40, 0x11C40), (0x11C72, 0x11C8F), (0x11D00, 0x11D06), (0x11D08, 0x11D09),
        (0x11D0B, 0x11D30), (0x11D46, 0x11D46), (0x11D60, 0x11D65), (0x11D67, 0x11D68), (0x11D6A, 0x11D89),
        (0x11D98, 0x11D98), (0x11EE0, 0x11EF2), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),
        (0x11FB0, 0x11FB0), (0x12000, 0x12399), (0x12480, 0x12543), (0x12F90, 0x12FF0), (0x13000, 0x1342F),
        (0x13441, 0x13446), (0x14400, 0x14646), (0x16800, 0x16A38), (0x16A40, 0x16A5E), (0x16A70, 0x16ABE),
        (0x16AD0, 0x16AED), (0x16B00, 0x16B2F), (0x16B40, 0x16B43), (0x16B63, 0x16B77), (0x16B7D, 0x16B8F),
        (0x16E40, 0x16E7F), (0x16F00, 0x16F4A), (0x16F50, 0x16F50), (0x16F93, 0x16F9F), (0x16FE0, 0x16FE1),
        (0x16FE3, 0x16FE3), (0x17000, 0x187F7), (0x18800, 0x18CD5), (0x18D00, 0x18D08), (0x1AFF0, 0x1AFF3),
        (0x1AFF5, 0x1AFFB), (0x1AFFD, 0x1AFFE), (0x1B000, 0x1B122), (0x1B132, 0x1B132), (0x1B150, 0x1B152),
        (0x1B155, 0x1B155), (0x1B164, 0x1B167), (0x1B170, 0x1B2FB), (0x1BC00, 0x1BC6A), (0x1BC70, 0x1BC7C),
        (0x1BC80, 0x1BC88), (0x1BC90, 0x1BC99), (0x1D400, 0x1D454), (0x1D456, 0x1D49C), (0x1D49E, 0x1D49F),
        (0x1D4A2, 0x1D4A2), (0x1D4A5, 0x1D4A6), (0x1D4A9, 0x1D4AC), (0x1D4AE, 0x1D4B9), (0x1D4BB, 0x1D4BB),
        (0x1D4BD, 0x1D4C3), (0x1D4C5, 0x1D505), (0x1D507, 0x1D50A), (0x1D50D, 0x1D514), (0x1D516, 0x1D51C),
        (0x1D51E, 0x1D539), (0x1D53B, 0x1D53E), (0x1D540, 0x1D544), (0x1D546, 0x1D546), (0x1D54A, 0x1D550),
        (0x1D552, 0x1D6A5), (0x1D6A8, 0x1D6C0), (0x1D6C2, 0x1D6DA), (0x1D6DC, 0x1D6FA), (0x1D6FC, 0x1D714),
        (0x1D716, 0x1D734), (0x1D736, 0x1D74E), (0x1D750, 0x1D76E), (0x1D770, 0x1D788), (0x1D78A, 0x1D7A8),
        (0x1D7AA, 0x1D7C2), (0x1D7C4, 0x1D7CB), (0x1DF00, 0x1DF1E), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D),
        (0x1E100, 0x1E12C), (0x1E137, 0x1E13D), (0x1E14E, 0x1E14E), (0x1E290, 0x1E2AD), (0x1E2C0, 0x1E2EB),
        (0x1E4D0, 0x1E4EB), (0x1E7E0, 0x1E7E6), (0x1E7E8, 0x1E7EB), (0x1E7ED, 0x1E7EE), (0x1E7F0, 0x1E7FE),
        (0x1E800, 0x1E8C4), (0x1E900, 0x1E943), (0x1E94B, 0x1E94B), (0x1EE00, 0x1EE03), (0x1EE05, 0x1EE1F),
        (0x1EE21, 0x1EE22), (0x1EE24, 0x1EE24), (0x1EE27, 0x1EE27), (0x1EE29, 0x1EE32), (0x1EE34, 0x1EE37),
        (0x1EE39, 0x1EE39), (0x1EE3B, 0x1EE3B), (0x1EE42, 0x1EE42), (0x1EE47, 0x1EE47), (0x1EE49, 0x1EE49),
        (0x1EE4B, 0x1EE4B), (0x1EE4D, 0x1EE4F), (0x1EE51, 0x1EE52), (0x1EE54, 0x1EE54), (0x1EE57, 0x1EE57),
        (0x1EE59, 0x1EE59), (0x1EE5B, 0x1EE5B), (0x1EE5D, 0x1EE5D), (0x1EE5F, 0x1EE5F), (0x1EE61, 0x1EE62),
        (0x1EE64, 0x1EE64), (0x1EE67, 0x1EE6A), (0x1EE6C, 0x1EE72), (0x1EE74, 0x1EE77), (0x1EE79, 0x1EE7C),
        (0x1EE7E, 0x1EE7E), (0x1EE80, 0x1EE89), (0x1EE8B, 0x1EE9B), (0x1EEA1, 0x1EEA3), (0x1EEA5, 0x1EEA9),
        (0x1EEAB, 0x1EEBB), (0x20000, 0x2A6DF), (0x2A700, 0x2B739), (0x2B740, 0x2B81D), (0x2B820, 0x2CEA1),
        (0x2CEB0, 0x2EBE0), (0x2F800, 0x2FA1D), (0x30000, 0x3134A), (0x31350, 0x323AF),
    ];

    /// General category Nd, Unicode 15.0.0: 64 ranges.
    #[rustfmt::skip]
    pub(super) const DECIMAL_DIGIT: &[(u32, u32)] = &[
        (0x00030, 0x00039), (0x00660, 0x00669), (0x006F0, 0x006F9), (0x007C0, 0x007C9), (0x00966, 0x0096F),
        (0x009E6, 0x009EF), (0x00A66, 0x00A6F), (0x00AE6, 0x00AEF), (0x00B66, 0x00B6F), (0x00BE6, 0x00BEF),
        (0x00C66, 0x00C6F), (0x00CE6, 0x00CEF), (0x00D66, 0x00D6F), (0x00DE6, 0x00DEF), (0x00E50, 0x00E59),
        (0x00ED0, 0x00ED9), (0x00F20, 0x00F29), (0x01040, 0x01049), (0x01090, 0x01099), (0x017E0, 0x017E9),
        (0x01810, 0x01819), (0x01946, 0x0194F), (0x019D0, 0x019D9), (0x01A80, 0x01A89), (0x01A90, 0x01A99),
        (0x01B50, 0x01B59), (0x01BB0, 0x01BB9), (0x01C40, 0x01C49), (0x01C50, 0x01C59), (0x0A620, 0x0A629),
        (0x0A8D0, 0x0A8D9), (0x0A900, 0x0A909), (0x0A9D0, 0x0A9D9), (0x0A9F0, 0x0A9F9), (0x0AA50, 0x0AA59),
        (0x0ABF0, 0x0ABF9), (0x0FF10, 0x0FF19), (0x104A0, 0x104A9), (0x10D30, 0x10D39), (0x11066, 0x1106F),
        (0x110F0, 0x110F9), (0x11136, 0x1113F), (0x111D0, 0x111D9), (0x112F0, 0x112F9), (0x11450, 0x11459),
        (0x114D0, 0x114D9), (0x11650, 0x11659), (0x116C0, 0x116C9), (0x11730, 0x11739), (0x118E0, 0x118E9),
        (0x11950, 0x11959), (0x11C50, 0x11C59), (0x11D50, 0x11D59), (0x11DA0, 0x11DA9), (0x11F50, 0x11F59),
        (0x16A60, 0x16A69), (0x16AC0, 0x16AC9), (0x16B50, 0x16B59), (0x1D7CE, 0x1D7FF), (0x1E140, 0x1E149),
        (0x1E2F0, 0x1E2F9), (0x1E4F0, 0x1E4F9), (0x1E950, 0x1E959), (0x1FBF0, 0x1FBF9),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn word(input: &str, pairs: &[(&str, &str)]) -> Result<String, ShellError> {
        Lexer::new('\\')
            .process_word(input, &env(pairs))
            .map(|e| e.word)
    }

    fn ok(input: &str, pairs: &[(&str, &str)]) -> String {
        match word(input, pairs) {
            Ok(w) => w,
            Err(e) => panic!("{input:?} failed: {e}"),
        }
    }

    fn words(input: &str, pairs: &[(&str, &str)]) -> Result<Vec<String>, ShellError> {
        Lexer::new('\\')
            .process_words(input, &env(pairs))
            .map(|(w, _)| w)
    }

    fn read_vectors(name: &str) -> String {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/conformance/buildkit/shell/"
        );
        let path = format!("{dir}{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// BuildKit's `TestProcessWithMatches` cases: value, matched and unmatched names.
    #[test]
    fn buildkit_process_with_matches() {
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let foo_bar: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
        let cases: &[Case] = &[
            ("x", &[("DUMMY", "dummy")], Some("x"), &[], &[]),
            (
                "x ${UNUSED}",
                &[("DUMMY", "dummy")],
                Some("x "),
                &[],
                &["UNUSED"],
            ),
            ("x ${FOO}", &[("FOO", "y")], Some("x y"), &["FOO"], &[]),
            (
                "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
                foo_bar,
                Some("xxx  ccc"),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                foo_bar,
                Some("xxx bbb ccc"),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            ("${FOO:-}", foo_bar, Some("xxx"), &["FOO"], &[]),
            ("${FOO:-}", &[], Some(""), &[], &["FOO"]),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                foo_bar,
                Some("aaa bbb "),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                foo_bar,
                Some("aaa  "),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            ("${FOO?aaa}", foo_bar, Some("xxx"), &["FOO"], &[]),
            ("${BAR?bbb}", foo_bar, Some(""), &["BAR"], &[]),
            ("${BAZ?ccc}", foo_bar, None, &[], &[]),
            ("${FOO:?aaa}", foo_bar, Some("xxx"), &["FOO"], &[]),
            ("${BAR:?bbb}", foo_bar, None, &[], &[]),
            ("${BAZ:?ccc}", foo_bar, None, &[], &[]),
            ("${BAZ:?}", foo_bar, None, &[], &[]),
            ("${FOO=aaa}", foo_bar, None, &[], &[]),
            ("${FOO=:aaa}", foo_bar, None, &[], &[]),
            ("${FOO=}", &[], None, &[], &[]),
            (
                r"${FOO#()[]{\}^$.\*\?|\\}",
                &[("FOO", r"()[]{}^$.*?|\x")],
                Some("x"),
                &["FOO"],
                &[],
            ),
            (
                r"${FOO%%\**}",
                &[("FOO", "xx**")],
                Some("xx"),
                &["FOO"],
                &[],
            ),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]),
            ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "x")],
                Some("xyy"),
                &["FOO", "BAR"],
                &[],
            ),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("xxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy"), &["FOO"], &[]),
            ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (r"${FOO#?\?}", &[("FOO", "???y")], Some("?y"), &["FOO"], &[]),
            (
                "${ABC:-.}${FOO%x}${ABC:-.}",
                &[("FOO", "xxyy")],
                Some(".xxyy."),
                &["FOO"],
                &["ABC"],
            ),
            (
                r"${FOO%%\**\*}",
                &[("FOO", "a***yy*")],
                Some("a"),
                &["FOO"],
                &[],
            ),
            ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${FOO%%$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("xxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO:#}", &[], None, &[], &[]),
            ("${FOO:##}", &[], None, &[], &[]),
            ("${FOO:%}", &[], None, &[], &[]),
            ("${FOO:%%}", &[], None, &[], &[]),
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", r"\*/")],
                Some("/foo.*/*.txt - /foo..*.txt"),
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                Some("/tmp/bar.txt - /bar.txt"),
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "/a/foo/b/c.txt"),
                    ("NEEDLE", "/?/"),
                    ("REPLACEMENT", "/"),
                ],
                Some("/foo/b/c.txt - /foo/c.txt"),
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("REPLACEMENT", "https://"),
                ],
                Some("https://google.de"),
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                r"${FOO//\//\/}",
                &[("FOO", "/tmp/foo.txt")],
                Some(r"\/tmp\/foo.txt"),
                &["FOO"],
                &[],
            ),
            (
                "${FOO/$BAR/ww}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("wwxxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO//ww}", &[("FOO", "xxyy")], None, &[], &[]),
            ("${FOO//}", &[("FOO", "xxyy")], None, &[], &[]),
            ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO///}", &[], Some(""), &[], &["FOO"]),
        ];
        let lexer = Lexer::new('\\');
        let mut failures = Vec::new();
        for (input, pairs, expected, matched, unmatched) in cases {
            let got = lexer.process_word(input, &env(pairs));
            let want = expected.map(|w| Expansion {
                word: w.to_owned(),
                matched: set(matched),
                unmatched: set(unmatched),
            });
            match (&got, want) {
                (Err(_), None) => {}
                (Ok(got), Some(want)) if *got == want => {}
                (got, want) => failures.push(format!("{input:?}: expected {want:?}, got {got:?}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// BuildKit's `TestProcessWithMatchesPlatform`.
    #[test]
    fn optional_suffix_in_file_names() {
        let release = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
        let arm = [
            base.as_slice(),
            &[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")],
        ]
        .concat();
        assert_eq!(ok(release, &arm), "something-v1.2.3.linux-arm-v7.tar.gz");
        let arm64 = [
            base.as_slice(),
            &[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")],
        ]
        .concat();
        assert_eq!(ok(release, &arm64), "something-v1.2.3.linux-arm64.tar.gz");
        let expansion = Lexer::default()
            .process_word(
                release,
                &env(&[("VERSION", "v1.2.3"), ("TARGETOS", "linux")]),
            )
            .expect("expands");
        assert_eq!(expansion.word, "something-v1.2.3.linux-.tar.gz");
        assert_eq!(expansion.matched, set(&["TARGETOS", "VERSION"]));
        assert_eq!(expansion.unmatched, set(&["TARGETARCH", "TARGETVARIANT"]));
    }

    /// BuildKit's `TestShellParserMandatoryEnvVars`, plus the exact messages.
    #[test]
    fn required_variables() {
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        let set_env = [("VAR", "plain"), ("ARG", "x")];
        let empty_env = [("VAR", ""), ("ARG", "x")];
        let unset_env = [("ARG", "x")];

        assert_eq!(ok(no_empty, &set_env), "plain");
        let err = word(no_empty, &empty_env).expect_err("empty VAR is refused");
        assert_eq!(
            err.to_string(),
            r#"failed to process "${VAR:?message here$ARG}": VAR: message herex"#
        );
        assert!(matches!(err, ShellError::EmptyVariable { .. }));
        let err = word(no_empty, &unset_env).expect_err("unset VAR is refused");
        assert!(err.to_string().ends_with("VAR: message herex"), "{err}");

        assert_eq!(ok(no_unset, &set_env), "plain");
        assert_eq!(ok(no_unset, &empty_env), "");
        let err = word(no_unset, &unset_env).expect_err("unset VAR is refused");
        assert_eq!(
            err,
            ShellError::UnsetVariable {
                input: no_unset.to_owned(),
                name: "VAR".to_owned(),
                message: Some("message herex".to_owned()),
            }
        );

        let err = word("${v:?}", &[]).expect_err("unset");
        assert_eq!(
            err.to_string(),
            r#"failed to process "${v:?}": v: is not allowed to be unset"#
        );
        assert_eq!(err.input(), "${v:?}");
        let err = word("${v:?}", &[("v", "")]).expect_err("empty");
        assert_eq!(
            err.to_string(),
            r#"failed to process "${v:?}": v: is not allowed to be empty"#
        );
        let err = word("a ${v?must be set} b", &[]).expect_err("unset");
        assert_eq!(
            err.to_string(),
            r#"failed to process "a ${v?must be set} b": v: must be set"#
        );
    }

    #[test]
    fn default_and_alternative_values() {
        let vars = [("SET", "value"), ("EMPTY", "")];
        for (input, expected) in [
            ("${SET:-w}", "value"),
            ("${EMPTY:-w}", "w"),
            ("${UNSET:-w}", "w"),
            ("${SET-w}", "value"),
            ("${EMPTY-w}", ""),
            ("${UNSET-w}", "w"),
            ("${SET:+w}", "w"),
            ("${EMPTY:+w}", ""),
            ("${UNSET:+w}", ""),
            ("${SET+w}", "w"),
            ("${EMPTY+w}", "w"),
            ("${UNSET+w}", ""),
            ("${UNSET:-$SET}", "value"),
            ("${UNSET:-${SET:+[$SET]}}", "[value]"),
            ("${UNSET:-'${SET}'}", "${SET}"),
            ("${UNSET:-\"$SET\"}", "value"),
            ("${UNSET:-a\\}b}", "a}b"),
            ("${SET?}", "value"),
            ("${SET:?}", "value"),
            ("${EMPTY?}", ""),
        ] {
            assert_eq!(ok(input, &vars), expected, "{input}");
        }
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let vars = [
            ("P", "/usr/local/lib/libfoo.so.1.2"),
            ("K", "한국어-한국어"),
        ];
        for (input, expected) in [
            ("${P#*/}", "usr/local/lib/libfoo.so.1.2"),
            ("${P##*/}", "libfoo.so.1.2"),
            ("${P%.*}", "/usr/local/lib/libfoo.so.1"),
            ("${P%%.*}", "/usr/local/lib/libfoo"),
            ("${P#/usr}", "/local/lib/libfoo.so.1.2"),
            ("${P#nomatch}", "/usr/local/lib/libfoo.so.1.2"),
            ("${P%/lib*}", "/usr/local/lib"),
            ("${P%%/lib*}", "/usr/local"),
            ("${P#/???/}", "local/lib/libfoo.so.1.2"),
            ("${P%?}", "/usr/local/lib/libfoo.so.1."),
            ("${P%%?}", "/usr/local/lib/libfoo.so.1."),
            ("${P##*}", ""),
            ("${P%%*}", ""),
            ("${P%*}", "/usr/local/lib/libfoo.so.1.2"),
            ("${UNSET#*}", ""),
            ("${K#?}", "국어-한국어"),
            ("${K##*-}", "한국어"),
            ("${K%-*}", "한국어"),
            ("${K%%국*}", "한"),
            ("${K%어}", "한국어-한국"),
        ] {
            assert_eq!(ok(input, &vars), expected, "{input}");
        }
    }

    #[test]
    fn pattern_substitution() {
        let vars = [("V", "a-b-c"), ("E", ""), ("S", "x y"), ("R", "<${0}>")];
        for (input, expected) in [
            ("${V/-/+}", "a+b-c"),
            ("${V//-/+}", "a+b+c"),
            ("${V/-/}", "ab-c"),
            ("${V//-/}", "abc"),
            ("${V/b*/X}", "a-X"),
            ("${V//?/.}", "....."),
            ("${V/*/X}", "X"),
            ("${V//*/X}", "X"),
            ("${V//$E/.}", ".a.-.b.-.c."),
            ("${V/$E/.}", ".a-b-c"),
            ("${V/nomatch/X}", "a-b-c"),
            ("${UNSET/a/b}", ""),
            ("${S// /_}", "x_y"),
            (r"${V//\//x}", "a-b-c"),
            // `$$`, `$0` and `${0}` in a replace-all replacement are Go template references.
            (r"${V//b/\$0\$0}", r"a-\b\b-c"),
            ("${V//b/$R}", "a-<b>-c"),
            ("${V//b/$R$R}", "a-<b><b>-c"),
            ("${V/b/$R}", "a-<${0}>-c"),
            (r"${V/b/\$0}", r"a-\$0-c"),
            (r"${V//b/$}", "a-$-c"),
        ] {
            assert_eq!(ok(input, &vars), expected, "{input}");
        }
    }

    #[test]
    fn patterns_and_escapes() {
        let vars = [("V", "*a?b\\c}d/e[f]"), ("NL", "a\nb")];
        for (input, expected) in [
            (r"${V#\*}", "a?b\\c}d/e[f]"),
            (r"${V#*\?}", "b\\c}d/e[f]"),
            (r"${V#*\\}", "c}d/e[f]"),
            (r"${V#*\}}", "d/e[f]"),
            (r"${V/\//|}", "*a?b\\c}d|e[f]"),
            // Brackets are plain characters in BuildKit's patterns.
            ("${V%[f]}", "*a?b\\c}d/e"),
            ("${V%[ef]}", "*a?b\\c}d/e[f]"),
            // Quotes are removed before the pattern is compiled, so a quoted `*` is still a
            // wildcard, as in BuildKit (unlike a POSIX shell).
            ("${V#'*'}", "*a?b\\c}d/e[f]"),
            ("${V##'*'}", ""),
            ("${V#\"*a\"}", "?b\\c}d/e[f]"),
            // `*` and `?` do not match a newline (BuildKit compiles them to `.*` and `.`).
            ("${NL#*b}", "a\nb"),
            ("${NL#a?}", "a\nb"),
            ("${NL#a\nb}", ""),
            ("${NL//?/x}", "x\nx"),
        ] {
            assert_eq!(ok(input, &vars), expected, "{input}");
        }
        for bad in [r"${V#\x}", r"${V%a\b}", r"${V/\q/x}"] {
            let err = word(bad, &vars).expect_err(bad);
            assert!(
                matches!(err, ShellError::InvalidPattern { .. }),
                "{bad}: {err:?}"
            );
        }
        let err = word(r"${V#\x}", &vars).expect_err("bad escape");
        assert_eq!(
            err.to_string(),
            r#"failed to process "${V#\\x}": invalid pattern (\x) in substitution: invalid escape '\x'"#
        );
        // A trailing `\` from a variable: an error as a prefix; as a suffix BuildKit reverses
        // the pattern text first, so `*\` becomes `\*`, a literal star.
        let vars = [("V", "ab*"), ("P", "*\\")];
        assert!(matches!(
            word("${V#$P}", &vars),
            Err(ShellError::InvalidPattern { .. })
        ));
        assert_eq!(ok("${V%$P}", &vars), "ab");
    }

    #[test]
    fn reverse_pattern_keeps_escape_pairs() {
        for (pattern, expected) in [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ] {
            let chars: Vec<char> = pattern.chars().collect();
            let reversed: String = reverse_pattern(&chars).into_iter().collect();
            assert_eq!(reversed, expected, "{pattern}");
        }
    }

    #[test]
    fn backtick_escape() {
        let lexer = Lexer::new('`');
        let vars = env(&[("PWD", "/home")]);
        let expand = |input: &str| lexer.process_word(input, &vars).map(|e| e.word);
        assert_eq!(expand("he`$PWD").as_deref(), Ok("he$PWD"));
        assert_eq!(expand("he\\$PWD").as_deref(), Ok("he\\/home"));
        assert_eq!(expand("C:\\path\\to").as_deref(), Ok("C:\\path\\to"));
        assert_eq!(expand("a``b").as_deref(), Ok("a`b"));
        assert_eq!(expand("a`'b").as_deref(), Ok("a'b"));
        assert_eq!(expand("end`").as_deref(), Ok("end"));
        assert_eq!(expand("\"`\"`$PWD``\\\"").as_deref(), Ok("\"$PWD`\\"));
        assert_eq!(expand("\"`a\"").as_deref(), Ok("`a"));
        assert_eq!(expand("${X:-`}}").as_deref(), Ok("}"));
        assert_eq!(
            lexer.process_words("a` b c", &vars).map(|(w, _)| w),
            Ok(vec!["a b".to_owned(), "c".to_owned()])
        );
        // With the backtick as escape, `\` is an ordinary character, also in patterns.
        let vars = env(&[("P", "C:\\a\\b")]);
        assert_eq!(
            lexer
                .process_word("${P##*\\\\}", &vars)
                .map(|e| e.word)
                .as_deref(),
            Ok("b")
        );
    }

    #[test]
    fn unset_variables_are_reported() {
        let lexer = Lexer::new('\\');
        let vars = env(&[("A", "1"), ("EMPTY", "")]);
        let expansion = lexer
            .process_word(
                "$A ${B} ${C:-x} ${EMPTY:-y} $1 ${@} \"$D\" '$E' \\$F ${A/$G/z}",
                &vars,
            )
            .expect("expands");
        assert_eq!(expansion.word, "1  x y    $E $F z1");
        assert_eq!(expansion.matched, set(&["A", "EMPTY"]));
        assert_eq!(expansion.unmatched, set(&["1", "@", "B", "C", "D", "G"]));
        let (words, unmatched) = lexer.process_words("$A $NOPE b", &vars).expect("splits");
        assert_eq!(words, ["1", "b"]);
        assert_eq!(unmatched, set(&["NOPE"]));
    }

    #[test]
    fn names_follow_go_unicode_rules() {
        let vars = [("x", "1"), ("한국어", "K"), ("สว", "short"), ("x_1", "2")];
        // `²` is a number but not a decimal digit: it ends the name.
        assert_eq!(ok("$x²", &vars), "1²");
        assert_eq!(ok("$x_1.", &vars), "2.");
        assert_eq!(ok("$한국어!", &vars), "K!");
        // A Thai vowel sign is a mark, not a letter, so the name stops before it.
        assert_eq!(ok("$สวัสดี", &vars), "shortัสดี");
        // Arabic-Indic digits are decimal digits: a positional parameter.
        assert_eq!(ok("$١٢x", &vars), "x");
        // `Ⅳ` (a letter number) cannot start a name, so the `$` is literal.
        assert_eq!(ok("$Ⅳ", &vars), "$Ⅳ");
        assert_eq!(ok("${한국어:+${한국어}}", &vars), "K");
    }

    #[test]
    fn multibyte_input() {
        let vars = [("E", "🚀x🚀y🚀"), ("K", "한국어")];
        for (input, expected) in [
            ("${E#🚀}", "x🚀y🚀"),
            ("${E##*🚀}", ""),
            ("${E%🚀*}", "🚀x🚀y"),
            ("${E%%🚀*}", ""),
            ("${E//🚀/-}", "-x-y-"),
            ("${E/?/-}", "-x🚀y🚀"),
            ("'🚀'\"$K\"é", "🚀한국어é"),
            ("안녕\\ 하세요", "안녕 하세요"),
        ] {
            assert_eq!(ok(input, &vars), expected, "{input}");
        }
        assert_eq!(
            words("🚀 $K\u{3000}x", &vars),
            Ok(vec!["🚀".to_owned(), "한국어".to_owned(), "x".to_owned()])
        );
    }

    #[test]
    fn word_splitting() {
        let vars = [("SP", "  a  b  "), ("EMPTY", "")];
        let cases: &[(&str, &[&str])] = &[
            ("a b", &["a", "b"]),
            ("  a   b  ", &["a", "b"]),
            ("a '' b", &["a", "b"]),
            ("''", &[]),
            ("", &[]),
            ("x${SP}y", &["x", "a", "b", "y"]),
            ("x\"${SP}\"y", &["x  a  b  y"]),
            ("a\\ b", &["a b"]),
            ("a${EMPTY}b c", &["ab", "c"]),
            ("${UNSET:-\"p q\"} r", &["p", "q", "r"]),
            ("a\tb\nc", &["a", "b", "c"]),
        ];
        for (input, expected) in cases {
            let expected: Vec<String> = expected.iter().map(|w| (*w).to_owned()).collect();
            assert_eq!(words(input, &vars), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn syntax_errors() {
        let missing_brace = |input: &str| ShellError::MissingBrace {
            input: input.to_owned(),
        };
        for (input, expected) in [
            ("${", missing_brace("${")),
            ("${A", missing_brace("${A")),
            ("${A:", missing_brace("${A:")),
            ("${A:-x", missing_brace("${A:-x")),
            ("${A:-${B:?no}", missing_brace("${A:-${B:?no}")),
            (
                "${A/x",
                ShellError::MissingSlash {
                    input: "${A/x".to_owned(),
                },
            ),
            ("${A/x/y", missing_brace("${A/x/y")),
            (
                "${}",
                ShellError::BadSubstitution {
                    input: "${}".to_owned(),
                },
            ),
            (
                "${:-a}",
                ShellError::BadSubstitution {
                    input: "${:-a}".to_owned(),
                },
            ),
            (
                "${{a}",
                ShellError::BadSubstitution {
                    input: "${{a}".to_owned(),
                },
            ),
            (
                "${a:=b}",
                ShellError::UnsupportedModifier {
                    input: "${a:=b}".to_owned(),
                    modifier: ":=".to_owned(),
                },
            ),
            (
                "${a=b}",
                ShellError::UnsupportedModifier {
                    input: "${a=b}".to_owned(),
                    modifier: "=".to_owned(),
                },
            ),
            (
                "${a:#b}",
                ShellError::UnsupportedModifier {
                    input: "${a:#b}".to_owned(),
                    modifier: ":#".to_owned(),
                },
            ),
            (
                "${a:}x}",
                ShellError::UnsupportedModifier {
                    input: "${a:}x}".to_owned(),
                    modifier: ":}".to_owned(),
                },
            ),
            (
                "${.}",
                ShellError::UnsupportedModifier {
                    input: "${.}".to_owned(),
                    modifier: ".".to_owned(),
                },
            ),
            (
                "'abc",
                ShellError::UnterminatedSingleQuote {
                    input: "'abc".to_owned(),
                },
            ),
            (
                "\"abc\\\"",
                ShellError::UnterminatedDoubleQuote {
                    input: "\"abc\\\"".to_owned(),
                },
            ),
            ("${A:-'x}", missing_brace("${A:-'x}")),
        ] {
            assert_eq!(word(input, &[]), Err(expected), "{input}");
        }
        assert_eq!(
            word("${", &[]).map_err(|e| e.to_string()),
            Err(r#"failed to process "${": syntax error: missing '}'"#.to_owned())
        );
        assert_eq!(
            word("x${A/b", &[]).map_err(|e| e.to_string()),
            Err(r#"failed to process "x${A/b": syntax error: missing '/' in ${}"#.to_owned())
        );
        assert_eq!(
            word("'x", &[]).map_err(|e| e.to_string()),
            Err(r#"failed to process "'x": unexpected end of statement while looking for matching single-quote"#
                .to_owned())
        );
        // An error that did not run into the end of the input is reported as it is.
        assert!(matches!(
            word("${A:-${B:?no}}", &[]),
            Err(ShellError::UnsetVariable { .. })
        ));
    }

    #[test]
    fn lexer_options() {
        let vars = env(&[("A", "1")]);
        let raw_quotes = Lexer {
            raw_quotes: true,
            ..Lexer::default()
        };
        assert_eq!(
            raw_quotes
                .process_word("'a b' \"$A\" $B", &vars)
                .map(|e| e.word)
                .as_deref(),
            Ok("'a b' \"1\" ")
        );
        let raw_escapes = Lexer {
            raw_escapes: true,
            ..Lexer::default()
        };
        assert_eq!(
            raw_escapes
                .process_word(r#"\$A \\ "\"\t""#, &vars)
                .map(|e| e.word)
                .as_deref(),
            Ok(r#"\$A \\ \"\\t"#)
        );
        let skip_unset = Lexer {
            skip_unset_env: true,
            raw_quotes: true,
            ..Lexer::default()
        };
        assert_eq!(
            skip_unset
                .process_word(
                    "$A $B ${B} ${B:-x} ${B?msg} ${B#p} ${B/a/b} ${B//a/b} ${A:-x}",
                    &vars
                )
                .map(|e| e.word)
                .as_deref(),
            Ok("1 $B ${B} ${B:-x} ${B?msg} ${B#p} ${B/a/b} ${B//a/b} 1")
        );
        let skip_quotes = Lexer {
            skip_process_quotes: true,
            ..Lexer::default()
        };
        assert_eq!(
            skip_quotes
                .process_word("'$A' \"$A\" it's", &vars)
                .map(|e| e.word)
                .as_deref(),
            Ok("'1' \"1\" it's")
        );
    }

    #[test]
    fn bracket_globs_are_opt_in() {
        let vars = env(&[("V", "file-42.tar.gz"), ("B", "a[b]c")]);
        let lexer = Lexer {
            bracket_globs: true,
            ..Lexer::default()
        };
        let expand = |input: &str| lexer.process_word(input, &vars).map(|e| e.word);
        assert_eq!(expand("${V##*[0-9]}").as_deref(), Ok(".tar.gz"));
        assert_eq!(expand("${V%%[.-]*}").as_deref(), Ok("file"));
        assert_eq!(expand("${V#[!a-e]}").as_deref(), Ok("ile-42.tar.gz"));
        assert_eq!(expand("${V#[^f]}").as_deref(), Ok("file-42.tar.gz"));
        assert_eq!(
            expand("${V//[[:digit:]]/N}").as_deref(),
            Ok("file-NN.tar.gz")
        );
        assert_eq!(
            expand("${V%[[:alpha:]][[:alpha:]]}").as_deref(),
            Ok("file-42.tar.")
        );
        assert_eq!(expand("${B/[]]/}").as_deref(), Ok("a[bc"));
        assert_eq!(expand(r"${B/\[?\]/-}").as_deref(), Ok("a-c"));
        assert_eq!(expand("${B/[b/-}").as_deref(), Ok("a-]c"));
        assert_eq!(expand("${V%[a-z].gz}").as_deref(), Ok("file-42.ta"));
        assert!(matches!(
            expand("${V#[[:nope:]]}"),
            Err(ShellError::InvalidPattern { .. })
        ));
        // Without the option, brackets are literal.
        assert_eq!(
            Lexer::default()
                .process_word("${B/[b]/-}", &vars)
                .map(|e| e.word)
                .as_deref(),
            Ok("a-c")
        );
    }

    #[test]
    fn environment_sources() {
        let input = "$A-$B-${C-unset}";
        let lexer = Lexer::default();
        let expand = |env: &dyn Env| lexer.process_word(input, env).map(|e| e.word);
        let pairs = vec![
            ("A".to_owned(), "old".to_owned()),
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
        ];
        assert_eq!(expand(&pairs).as_deref(), Ok("1-2-unset"));
        assert_eq!(expand(&pairs.as_slice()).as_deref(), Ok("1-2-unset"));
        assert_eq!(
            expand(&[("A", "1"), ("B", "2")]).as_deref(),
            Ok("1-2-unset")
        );
        let entries = vec![
            "A=0".to_owned(),
            "A=1".to_owned(),
            "B=2=3".to_owned(),
            "C".to_owned(),
        ];
        assert_eq!(expand(&entries).as_deref(), Ok("1-2=3-"));
        let hash: HashMap<String, String> =
            [("A".to_owned(), "1".to_owned())].into_iter().collect();
        assert_eq!(expand(&hash).as_deref(), Ok("1--unset"));
        let tree: BTreeMap<String, &str> = [("B".to_owned(), "2")].into_iter().collect();
        assert_eq!(expand(&tree).as_deref(), Ok("-2-unset"));
    }

    #[test]
    fn leading_byte_order_mark_is_dropped() {
        assert_eq!(ok("\u{feff}a\u{feff}", &[]), "a\u{feff}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 10_000;
        let nested = format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
        assert!(matches!(
            word(&nested, &[]),
            Err(ShellError::TooDeeplyNested { .. })
        ));
        let quoted = format!("{}x{}", "${A:-\"".repeat(depth), "\"}".repeat(depth));
        assert!(matches!(
            word(&quoted, &[]),
            Err(ShellError::TooDeeplyNested { .. })
        ));
        // The deepest nesting allowed works, even on a thread with a small stack.
        let levels = MAX_NESTING - 1;
        let deepest = format!("{}x{}", "${A:-\"".repeat(levels), "\"}".repeat(levels));
        let handle = std::thread::Builder::new()
            .stack_size(1 << 19)
            .spawn(move || word(&deepest, &[]))
            .expect("spawn");
        assert_eq!(handle.join().expect("no overflow"), Ok("x".to_owned()));
    }

    #[test]
    fn glob_matching_is_not_exponential() {
        let value = "a".repeat(5_000);
        let pattern = "*a".repeat(200) + "b";
        let vars = [("V", value.as_str()), ("P", pattern.as_str())];
        assert_eq!(ok("${V#$P}", &vars), value);
        assert_eq!(ok("${V##$P}", &vars), value);
        assert_eq!(ok("${V%%$P}", &vars), value);
        assert_eq!(ok("${V/$P/x}", &vars), value);
        assert_eq!(ok("${V//$P/x}", &vars), value);
        let pattern = "*a".repeat(200);
        let vars = [("V", value.as_str()), ("P", pattern.as_str())];
        assert_eq!(ok("${V##$P}", &vars), "");
        assert_eq!(ok("${V#$P}", &vars), "a".repeat(5_000 - 200));
        assert_eq!(ok("${V//a/b}", &vars), "b".repeat(5_000));
    }

    /// A small deterministic generator, so the test needs no extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }
    }

    #[test]
    fn never_panics() {
        const PIECES: &[&str] = &[
            "$",
            "{",
            "}",
            ":",
            "-",
            "+",
            "?",
            "#",
            "%",
            "/",
            "\\",
            "`",
            "'",
            "\"",
            "*",
            "[",
            "]",
            "!",
            "^",
            "=",
            "a",
            "V",
            "P",
            "1",
            "@",
            "0",
            " ",
            "\n",
            "é",
            "한",
            "🚀",
            "\u{feff}",
            "\0",
            "${",
            "${V",
            "${P:-",
            "$V",
            "[:alpha:]",
            "[!",
            "\\}",
            "\\/",
        ];
        let lexers = [
            Lexer::new('\\'),
            Lexer::new('`'),
            Lexer {
                raw_quotes: true,
                raw_escapes: true,
                skip_unset_env: true,
                ..Lexer::new('\\')
            },
            Lexer {
                skip_process_quotes: true,
                bracket_globs: true,
                ..Lexer::new('\\')
            },
            Lexer {
                bracket_globs: true,
                ..Lexer::new('`')
            },
        ];
        let vars = env(&[("V", "*a\\b[c]\n🚀 x"), ("P", "\\"), ("a", "[!"), ("E", "")]);
        let check = |input: &str| {
            for lexer in &lexers {
                let single = lexer.process_word(input, &vars);
                let split = lexer.process_words(input, &vars);
                assert_eq!(single.is_ok(), split.is_ok(), "{input:?}");
            }
        };
        for a in PIECES {
            for b in PIECES {
                check(&format!("{a}{b}"));
                for c in ["}", "V}", "$", "\\", "'"] {
                    check(&format!("{a}{b}{c}"));
                }
            }
        }
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = rng.below(24);
            let input: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            check(&input);
        }
    }

    /// BuildKit's `TestShellParser4EnvVars`, on its own vectors.
    #[test]
    fn conformance_env_var_test() {
        let text = read_vectors("envVarTest");
        let environment = env(&[
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ]);
        let lexer = Lexer::new('\\');
        let mut checked = 0;
        let mut failures = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.trim().split('|').collect();
            let [platform, input, expected] = fields.as_slice() else {
                failures.push(format!(
                    "line {number}: not `PLATFORM|input|expected`: {line:?}"
                ));
                continue;
            };
            let (platform, input, expected) = (platform.trim(), input.trim(), expected.trim());
            match platform {
                "A" | "U" => {}
                "W" => continue,
                other => {
                    failures.push(format!("line {number}: unknown platform {other:?}"));
                    continue;
                }
            }
            checked += 1;
            let got = lexer.process_word(input, &environment).map(|e| e.word);
            let passed = match (&got, expected) {
                (Err(_), "error") => true,
                (Ok(w), expected) => expected != "error" && w == expected,
                (Err(_), _) => false,
            };
            if !passed {
                failures.push(format!(
                    "line {number}: {input:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {checked} envVarTest lines failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(
            checked > 200,
            "only {checked} envVarTest lines were checked"
        );
    }

    /// BuildKit's `TestShellParser4Words`, on its own vectors.
    #[test]
    fn conformance_words_test() {
        let text = read_vectors("wordsTest");
        let lexer = Lexer::new('\\');
        let mut environment: Vec<String> = Vec::new();
        let mut checked = 0;
        let mut failures = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.starts_with('#') {
                continue;
            }
            if let Some(definition) = line.strip_prefix("ENV ") {
                // The value keeps its trailing spaces.
                environment.push(definition.trim_start_matches(' ').to_owned());
                continue;
            }
            let Some((input, expected)) = line.split_once('|') else {
                failures.push(format!("line {number}: no `|` in {line:?}"));
                continue;
            };
            if expected.contains('|') {
                failures.push(format!("line {number}: more than one `|` in {line:?}"));
                continue;
            }
            let input = input.trim();
            let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
            checked += 1;
            let got = match lexer.process_words(input, &environment) {
                Ok((words, _)) => words,
                Err(_) => vec!["error".to_owned()],
            };
            if got != expected {
                failures.push(format!(
                    "line {number}: {input:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {checked} wordsTest lines failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(checked > 20, "only {checked} wordsTest lines were checked");
    }
}
