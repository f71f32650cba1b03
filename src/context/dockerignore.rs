//! `.dockerignore` files and exclude-pattern lists, with Docker's semantics.
//!
//! This ports the *behaviour* of BuildKit's `frontend/dockerfile/dockerignore.ReadAll` (how a
//! file becomes a pattern list) and of `moby/patternmatcher` (how patterns match), as the
//! build-context walker `tonistiigi/fsutil` uses them:
//!
//! - One pattern per line; a UTF-8 BOM on the first line is dropped; a line whose *first
//!   character* is `#` is a comment (` #x` is a pattern); surrounding whitespace is trimmed
//!   and blank lines are skipped.
//! - `!` makes an exception (re-include); whitespace after the `!` is trimmed too. A lone `!`
//!   is an error.
//! - Each pattern is cleaned like Go's `filepath.Clean` (`a//b/./c/../d` → `a/b/d`, trailing
//!   `/` removed) and a leading `/` is dropped: patterns are relative to the context root.
//!   Because of the cleaning, `dir/` also matches a *file* named `dir`.
//! - `*`, `?`, `[...]` and `\` escapes follow Go's `filepath.Match`; `*` and `?` never match
//!   `/`. `**` matches any number of directories, including none (`**/*.go` matches `a.go`
//!   and `x/y/a.go`); patternmatcher's special forms are kept: a pattern *starting* with
//!   `**` and otherwise literal is a suffix match (`**.go` matches `a/b.go`), and a literal
//!   pattern ending in `**` is a prefix match (`dir/**`).
//! - The last matching pattern wins. A path is matched with its parents' results (fsutil's
//!   `MatchesUsingParentResults`): a pattern that matched a directory matches everything
//!   under it, so `docs` excludes `docs/a/b`, and an exception that matched a directory
//!   re-includes everything under it.
//! - An excluded directory is still descended into when an exception could match something
//!   inside it ([`IgnoreMatcher::may_include_below`]); it is then sent only as the parent of
//!   what gets re-included (`docs` + `!docs/README.md` sends `docs/` and `docs/README.md`).
//!
//! Deliberate differences from Docker, all in patterns Docker mishandles:
//! - A `\` escape is always a literal character. patternmatcher hands `\d`, `\w`, `\b`... to
//!   Go's regexp engine, where they become classes or anchors.
//! - Character classes are parsed as `filepath.Match` parses them; patternmatcher copies them
//!   into a regexp without tracking them, so a `*` or `?` inside `[...]` breaks there.
//! - A class range written backwards (`[z-a]`) is rejected when the file is parsed; Docker
//!   accepts the file and then fails the whole build when the first path is matched.
//! - A `^` outside a class is literal (Docker copies it into the regexp as an anchor).
//!
//! The Dockerfile and the ignore file may be excluded like any other file: that keeps them out
//! of `COPY`/`ADD`, but the build still reads them (see
//! [`BuildContext::read_build_file`](super::BuildContext::read_build_file)).

use std::fmt;
use std::path::{Path, PathBuf};

use super::glob::{self, Token};
use super::walk::clean;
use super::ContextError;

/// Where a bad pattern came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternOrigin {
    /// A line of an ignore file (`.dockerignore`, `Dockerfile.dockerignore`).
    IgnoreFile,
    /// An item of a pattern list (`COPY --exclude`).
    List,
}

impl fmt::Display for PatternOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternOrigin::IgnoreFile => "ignore file line",
            PatternOrigin::List => "pattern list item",
        })
    }
}

/// How one compiled pattern matches (patternmatcher's match types).
#[derive(Debug, Clone)]
enum Kind {
    /// No wildcards: the path equals the pattern.
    Exact,
    /// A literal pattern ending in `**`: the path starts with this.
    Prefix(String),
    /// A pattern starting with `**` and otherwise literal: the path ends with this (or, when it
    /// starts with `/`, equals it without the `/`).
    Suffix(String),
    /// Anything else.
    Glob(Vec<Token>),
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
struct Pattern {
    /// Cleaned, root-relative, without the `!`.
    text: String,
    /// `!pattern`: an exception that re-includes.
    exception: bool,
    kind: Kind,
}

impl Pattern {
    fn compile(text: String, exception: bool) -> Result<Pattern, String> {
        let kind = compile_kind(&text)?;
        Ok(Pattern {
            text,
            exception,
            kind,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Kind::Glob(tokens) => glob::matches(tokens, path),
        }
    }

    /// Whether this pattern could match some path strictly below `dir_slash` (`dir` + `/`).
    /// Conservative: true when unsure.
    fn could_match_below(&self, dir_slash: &str) -> bool {
        match &self.kind {
            Kind::Exact => self.text.starts_with(dir_slash),
            Kind::Prefix(p) => p.starts_with(dir_slash) || dir_slash.starts_with(p.as_str()),
            Kind::Suffix(_) => true,
            Kind::Glob(tokens) => glob::viable_prefix(tokens, dir_slash),
        }
    }
}

/// Translates a cleaned pattern the way patternmatcher's `compile` does, deciding the match
/// type as it goes (its quirks included: see `Kind`).
fn compile_kind(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut ty = Ty::Exact;
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is treated as `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if ty == Ty::Exact {
                        ty = Ty::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        ty = Ty::Glob;
                    }
                } else {
                    tokens.push(Token::DirStar);
                    ty = Ty::Glob;
                }
                if first {
                    ty = Ty::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                ty = Ty::Glob;
            }
            '?' => {
                tokens.push(Token::One);
                ty = Ty::Glob;
            }
            '\\' => match chars.get(i) {
                Some(&e) => {
                    tokens.push(Token::Lit(e));
                    i += 1;
                    ty = Ty::Glob;
                }
                None => return Err("trailing backslash escapes nothing".to_string()),
            },
            '[' => {
                let (class, next) = glob::parse_class(&chars, i)?;
                if class.has_reversed_range() {
                    return Err("character class range is out of order".to_string());
                }
                tokens.push(Token::Class(class));
                i = next;
                ty = Ty::Glob;
            }
            ']' => {
                tokens.push(Token::Lit(']'));
                ty = Ty::Glob;
            }
            c => tokens.push(Token::Lit(c)),
        }
        first = false;
    }
    Ok(match ty {
        Ty::Exact => Kind::Exact,
        // The pattern ends in `**`: strip those two characters.
        Ty::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Ty::Suffix => Kind::Suffix(pattern[2..].to_string()),
        Ty::Glob => Kind::Glob(tokens),
    })
}

/// Per-pattern match results of a directory, handed down to its children (patternmatcher's
/// `MatchInfo`). The default value means "no parent information" (a top-level path).
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchState {
    /// Whether the path is excluded.
    pub(crate) excluded: bool,
    /// Which patterns matched the path (or one of its parents).
    flags: Vec<bool>,
}

/// A compiled `.dockerignore` (or `COPY --exclude` list).
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
    has_exceptions: bool,
}

impl IgnoreMatcher {
    /// A matcher that excludes nothing.
    pub fn empty() -> IgnoreMatcher {
        IgnoreMatcher::default()
    }

    /// Parses the text of an ignore file. A bad pattern is an error naming its 1-based line.
    pub fn parse(text: &str) -> Result<IgnoreMatcher, ContextError> {
        let mut patterns = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let mut line = raw.strip_suffix('\r').unwrap_or(raw);
            if index == 0 {
                line = line.strip_prefix('\u{feff}').unwrap_or(line);
            }
            if line.starts_with('#') {
                continue;
            }
            if let Some(p) = normalize(line, PatternOrigin::IgnoreFile, index + 1)? {
                patterns.push(p);
            }
        }
        Ok(IgnoreMatcher::new(patterns))
    }

    /// Builds a matcher from patterns given one by one (`COPY --exclude`). Each is normalized
    /// like an ignore-file line (trimmed, `!`, cleaned, leading `/` dropped), but `#` is not
    /// special. A bad pattern is an error naming its 1-based position.
    pub fn from_patterns(patterns: &[String]) -> Result<IgnoreMatcher, ContextError> {
        let mut out = Vec::with_capacity(patterns.len());
        for (index, p) in patterns.iter().enumerate() {
            if let Some(p) = normalize(p, PatternOrigin::List, index + 1)? {
                out.push(p);
            }
        }
        Ok(IgnoreMatcher::new(out))
    }

    fn new(patterns: Vec<Pattern>) -> IgnoreMatcher {
        let has_exceptions = patterns.iter().any(|p| p.exception);
        IgnoreMatcher {
            patterns,
            has_exceptions,
        }
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The normalized patterns, exceptions prefixed with `!` (e.g. for a cache key).
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// Whether the patterns exclude `rel_path` ('/'-separated, relative to the root; it is
    /// cleaned first, and the root itself is never excluded). The path is matched together
    /// with its parents, as the context walker does, so `docs` excludes `docs/a/b`.
    ///
    /// `is_dir` does not change the answer: Docker's matcher does not look at file types
    /// (`dir/` is cleaned to `dir` and also matches a file). For a directory, a `true` answer
    /// means the directory itself is excluded; it may still be sent as the parent of something
    /// an exception re-includes (see [`IgnoreMatcher::may_include_below`]).
    pub fn is_excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        let _ = is_dir;
        if self.patterns.is_empty() {
            return false;
        }
        self.state_of(&clean_rel(rel_path)).excluded
    }

    /// Whether an exception could re-include something strictly below the directory
    /// `rel_dir`. When this is false and the directory is excluded, nothing under it is sent
    /// and the walker skips it without reading it. Conservative: it may answer true when
    /// nothing actually gets re-included.
    pub fn may_include_below(&self, rel_dir: &str) -> bool {
        if !self.has_exceptions {
            return false;
        }
        let dir = clean_rel(rel_dir);
        let dir_slash = if dir == "." {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.patterns
            .iter()
            .any(|p| p.exception && p.could_match_below(&dir_slash))
    }

    /// The state of a clean relative path, computed through its parents.
    pub(crate) fn state_of(&self, rel: &str) -> MatchState {
        let mut state = MatchState::default();
        if rel == "." || rel.is_empty() || self.patterns.is_empty() {
            return state;
        }
        let mut end = 0;
        for component in rel.split('/') {
            end += component.len();
            state = self.step(&rel[..end], &state);
            end += 1;
        }
        state
    }

    /// Matches `path` given its parent directory's state (patternmatcher's
    /// `MatchesUsingParentResults`): a pattern that matched the parent counts as matched; the
    /// others are evaluated only when they could change the outcome (an exception only while
    /// the path is excluded, an exclusion only while it is not).
    pub(crate) fn step(&self, path: &str, parent: &MatchState) -> MatchState {
        if self.patterns.is_empty() {
            return MatchState::default();
        }
        let mut excluded = false;
        let mut flags = vec![false; self.patterns.len()];
        for (i, p) in self.patterns.iter().enumerate() {
            let mut matched = parent.flags.get(i).copied().unwrap_or(false);
            if !matched {
                if p.exception != excluded {
                    continue;
                }
                matched = p.matches(path);
            }
            flags[i] = matched;
            if matched {
                excluded = !p.exception;
            }
        }
        MatchState { excluded, flags }
    }
}

/// Cleans a relative path for matching: Go's `path.Clean` with any leading `/` removed.
fn clean_rel(rel: &str) -> String {
    let c = clean(rel);
    match c.trim_start_matches('/') {
        "" => ".".to_string(),
        s => s.to_string(),
    }
}

/// One line or list item → a compiled pattern (ReadAll's normalization, then
/// patternmatcher's `New` checks). `None` for a blank line.
fn normalize(
    raw: &str,
    origin: PatternOrigin,
    line: usize,
) -> Result<Option<Pattern>, ContextError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let bad = |reason: &str| ContextError::BadPattern {
        origin,
        line,
        pattern: trimmed.to_string(),
        reason: reason.to_string(),
    };
    let (exception, rest) = match trimmed.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, trimmed),
    };
    let mut text = String::new();
    if !rest.is_empty() {
        text = clean(rest);
        if text.len() > 1 {
            if let Some(stripped) = text.strip_prefix('/') {
                text = stripped.to_string();
            }
        }
    }
    // patternmatcher cleans `!` + pattern once more, which turns `!/` into `!`.
    if exception && (text.is_empty() || text == "/") {
        return Err(bad("an exception needs a pattern after '!'"));
    }
    Pattern::compile(text, exception)
        .map(Some)
        .map_err(|reason| bad(&reason))
}

/// The ignore file Docker uses for a build: `<Dockerfile name>.dockerignore` next to the
/// Dockerfile when it exists (it takes precedence), otherwise `.dockerignore` at the root of
/// the context, otherwise none. `-` (a Dockerfile on stdin) has no file of its own.
pub fn ignore_file_for(dockerfile: &Path, context_dir: &Path) -> Option<PathBuf> {
    if dockerfile != Path::new("-") {
        if let Some(name) = dockerfile.file_name() {
            let mut own = name.to_os_string();
            own.push(".dockerignore");
            let own = dockerfile.with_file_name(own);
            if own.is_file() {
                return Some(own);
            }
        }
    }
    let shared = context_dir.join(".dockerignore");
    shared.is_file().then_some(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> IgnoreMatcher {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        match IgnoreMatcher::from_patterns(&owned) {
            Ok(m) => m,
            Err(e) => panic!("{patterns:?}: {e}"),
        }
    }

    /// patternmatcher's `MatchesUsingParentResults` test driver: the text's parent
    /// directories (from Go's `filepath.Dir`, so a trailing `/` is kept in the text) are
    /// matched first and their results handed down.
    fn chain_match(m: &IgnoreMatcher, text: &str) -> bool {
        let parent = match text.rfind('/') {
            Some(i) => clean(&text[..i]),
            None => ".".to_string(),
        };
        let mut state = MatchState::default();
        if parent != "." {
            let mut prefix = String::new();
            for c in parent.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(c);
                state = m.step(&prefix, &state);
            }
        }
        m.step(text, &state).excluded
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Want {
        Fail,
        Exact,
        Inexact,
    }
    use Want::*;

    /// patternmatcher_test.go `TestMatches`: one pattern against one text. `Exact` must
    /// match the text itself; `Inexact` matches only through a parent directory.
    const MATCHES: &[(&str, &str, Want)] = &[
        ("**", "file", Exact),
        ("**", "file/", Exact),
        ("**/", "file", Exact),
        ("**/", "file/", Exact),
        ("**", "/", Exact),
        ("**/", "/", Exact),
        ("**", "dir/file", Exact),
        ("**/", "dir/file", Exact),
        ("**", "dir/file/", Exact),
        ("**/", "dir/file/", Exact),
        ("**/**", "dir/file", Exact),
        ("**/**", "dir/file/", Exact),
        ("dir/**", "dir/file", Exact),
        ("dir/**", "dir/file/", Exact),
        ("dir/**", "dir/dir2/file", Exact),
        ("dir/**", "dir/dir2/file/", Exact),
        ("**/dir", "dir", Exact),
        ("**/dir", "dir/file", Inexact),
        ("**/dir2/*", "dir/dir2/file", Exact),
        ("**/dir2/*", "dir/dir2/file/", Inexact),
        ("**/dir2/**", "dir/dir2/dir3/file", Exact),
        ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
        ("**file", "file", Exact),
        ("**file", "dir/file", Exact),
        ("**/file", "dir/file", Exact),
        ("**file", "dir/dir/file", Exact),
        ("**/file", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file.txt", Exact),
        ("**/file*txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt*", "dir/dir/file.txt", Exact),
        ("**/**/*.txt", "dir/dir/file.txt", Exact),
        ("**/**/*.txt2", "dir/dir/file.txt", Fail),
        ("**/*.txt", "file.txt", Exact),
        ("**/**/*.txt", "file.txt", Exact),
        ("a**/*.txt", "a/file.txt", Exact),
        ("a**/*.txt", "a/dir/file.txt", Exact),
        ("a**/*.txt", "a/dir/dir/file.txt", Exact),
        ("a/*.txt", "a/dir/file.txt", Fail),
        ("a/*.txt", "a/file.txt", Exact),
        ("a/*.txt**", "a/file.txt", Exact),
        ("a[b-d]e", "ae", Fail),
        ("a[b-d]e", "ace", Exact),
        ("a[b-d]e", "aae", Fail),
        ("a[^b-d]e", "aze", Exact),
        (".*", ".foo", Exact),
        (".*", "foo", Fail),
        ("abc.def", "abcdef", Fail),
        ("abc.def", "abc.def", Exact),
        ("abc.def", "abcZdef", Fail),
        ("abc?def", "abcZdef", Exact),
        ("abc?def", "abcdef", Fail),
        ("**/foo/bar", "foo/bar", Exact),
        ("**/foo/bar", "dir/foo/bar", Exact),
        ("**/foo/bar", "dir/dir2/foo/bar", Exact),
        ("abc/**", "abc", Fail),
        ("abc/**", "abc/def", Exact),
        ("abc/**", "abc/def/ghi", Exact),
        ("**/.foo", ".foo", Exact),
        ("**/.foo", "bar.foo", Fail),
        ("a(b)c/def", "a(b)c/def", Exact),
        ("a(b)c/def", "a(b)c/xyz", Fail),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        ("a\\\\", "a\\", Exact),
        ("a\\*b", "a*b", Exact),
    ];

    #[test]
    fn patternmatcher_matches_table() {
        for &(pattern, text, want) in MATCHES {
            let m = matcher(&[pattern]);
            let exact = m.patterns[0].matches(text);
            assert_eq!(
                exact,
                want == Exact,
                "MatchesExact(pattern={pattern:?}, text={text:?})"
            );
            assert_eq!(
                chain_match(&m, text),
                want != Fail,
                "chain(pattern={pattern:?}, text={text:?})"
            );
        }
    }

    /// patternmatcher_test.go `multiPatternTests`.
    #[test]
    fn patternmatcher_multi_pattern_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for &(patterns, text, want) in cases {
            let m = matcher(patterns);
            assert_eq!(chain_match(&m, text), want, "{patterns:?} {text:?}");
            assert_eq!(m.is_excluded(text, false), want, "{patterns:?} {text:?}");
        }
    }

    /// patternmatcher_test.go `matchTests` (Go's filepath.Match table run through the
    /// matcher, parents included): `Some(bool)` is the result, `None` a bad pattern.
    #[test]
    fn patternmatcher_filepath_table() {
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("abc", "abc", Some(true)),
            ("*", "abc", Some(true)),
            ("*c", "abc", Some(true)),
            ("a*", "a", Some(true)),
            ("a*", "abc", Some(true)),
            ("a*", "ab/c", Some(true)),
            ("a*/b", "abc/b", Some(true)),
            ("a*/b", "a/c/b", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Some(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
            ("ab[c]", "abc", Some(true)),
            ("ab[b-d]", "abc", Some(true)),
            ("ab[e-g]", "abc", Some(false)),
            ("ab[^c]", "abc", Some(false)),
            ("ab[^b-d]", "abc", Some(false)),
            ("ab[^e-g]", "abc", Some(true)),
            ("a\\*b", "a*b", Some(true)),
            ("a\\*b", "ab", Some(false)),
            ("a?b", "a☺b", Some(true)),
            ("a[^a]b", "a☺b", Some(true)),
            ("a???b", "a☺b", Some(false)),
            ("a[^a][^a][^a]b", "a☺b", Some(false)),
            ("[a-ζ]*", "α", Some(true)),
            ("*[a-ζ]", "A", Some(false)),
            ("a?b", "a/b", Some(false)),
            ("a*b", "a/b", Some(false)),
            ("[\\]a]", "]", Some(true)),
            ("[\\-]", "-", Some(true)),
            ("[x\\-]", "x", Some(true)),
            ("[x\\-]", "-", Some(true)),
            ("[x\\-]", "z", Some(false)),
            ("[\\-x]", "x", Some(true)),
            ("[\\-x]", "-", Some(true)),
            ("[\\-x]", "a", Some(false)),
            ("[]a]", "]", None),
            ("[-]", "-", None),
            ("[x-]", "x", None),
            ("[x-]", "-", None),
            ("[x-]", "z", None),
            ("[-x]", "x", None),
            ("[-x]", "-", None),
            ("[-x]", "a", None),
            ("\\", "a", None),
            ("[a-b-c]", "a", None),
            ("[", "a", None),
            ("[^", "a", None),
            ("[^bc", "a", None),
            ("a[", "a", None),
            ("a[", "ab", None),
            ("*x", "xxx", Some(true)),
        ];
        for &(pattern, text, want) in cases {
            let got = IgnoreMatcher::from_patterns(&[pattern.to_string()])
                .map(|m| m.is_excluded(text, false));
            match want {
                Some(w) => assert_eq!(got.ok(), Some(w), "Matches({text:?}, [{pattern:?}])"),
                None => assert!(
                    matches!(got, Err(ContextError::BadPattern { .. })),
                    "{pattern:?} should be a bad pattern"
                ),
            }
        }
    }

    /// patternmatcher_test.go `compileTests`: the match type chosen for each pattern.
    #[test]
    fn patternmatcher_compile_types() {
        let cases: &[(&str, &str)] = &[
            ("*", "glob"),
            ("file*", "glob"),
            ("*file", "glob"),
            ("a*/b", "glob"),
            ("**", "suffix"),
            ("**/**", "glob"),
            ("dir/**", "prefix"),
            ("**/dir", "suffix"),
            ("**/dir2/*", "glob"),
            ("**/dir2/**", "glob"),
            ("**file", "suffix"),
            ("**/file*txt", "glob"),
            ("**/**/*.txt", "glob"),
            ("a[b-d]e", "glob"),
            (".*", "glob"),
            ("abc.def", "exact"),
            ("abc?def", "glob"),
            ("**/foo/bar", "suffix"),
            ("a(b)c/def", "exact"),
            ("a.|)$(}+{bc", "exact"),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "exact",
            ),
        ];
        for &(pattern, want) in cases {
            let got = match compile_kind(&clean(pattern)) {
                Ok(Kind::Exact) => "exact",
                Ok(Kind::Prefix(_)) => "prefix",
                Ok(Kind::Suffix(_)) => "suffix",
                Ok(Kind::Glob(_)) => "glob",
                Err(e) => panic!("{pattern:?}: {e}"),
            };
            assert_eq!(got, want, "{pattern:?}");
        }
    }

    /// BuildKit dockerignore_test.go `TestReadAll`, plus the lone-`!` lines it ends with,
    /// which patternmatcher then refuses.
    #[test]
    fn read_all_normalization() {
        let text =
            "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n";
        let m = IgnoreMatcher::parse(text).unwrap();
        assert_eq!(
            m.patterns(),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path"
            ]
        );

        for (text, line) in [
            ("a\n!\n", 2),
            ("a\nb\n! \n", 3),
            ("!/", 1),
            ("ok\n\n[z-a]", 3),
            ("x\\", 1),
        ] {
            match IgnoreMatcher::parse(text) {
                Err(ContextError::BadPattern {
                    line: l, origin, ..
                }) => {
                    assert_eq!((l, origin), (line, PatternOrigin::IgnoreFile), "{text:?}")
                }
                other => panic!("{text:?}: expected a bad pattern, got {other:?}"),
            }
        }
        let err = IgnoreMatcher::parse("a\n[\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"[\""), "{err}");
    }

    #[test]
    fn comments_whitespace_bom_crlf() {
        let m = IgnoreMatcher::parse(
            "\u{feff}#c\r\n  *.log  \r\n #notacomment\r\n\t\r\n./a/../b//c/\r\n",
        )
        .unwrap();
        assert_eq!(m.patterns(), ["*.log", "#notacomment", "b/c"]);
        assert!(m.is_excluded("x.log", false));
        assert!(m.is_excluded("#notacomment", false));
        assert!(m.is_excluded("b/c", true));
        assert!(m.is_excluded("b/c/deep/file", false));
        assert!(!m.is_excluded("#c", false));
        // A BOM only counts at the very start.
        let m = IgnoreMatcher::parse("\u{feff}secret\n").unwrap();
        assert!(m.is_excluded("secret", false));
    }

    /// Docker's documented examples (docs.docker.com/build/concepts/context/#dockerignore-files)
    /// and the behaviours the brief lists: (patterns, path, excluded?).
    #[test]
    fn documented_behaviour_table() {
        let cases: &[(&str, &str, bool)] = &[
            // "# comment / */temp* / */*/temp* / temp?"
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/temp*", "somedir/temp", true),
            ("*/temp*", "temp.txt", false),
            ("*/temp*", "a/b/temp.txt", false),
            ("*/*/temp*", "somedir/subdir/temporary.txt", true),
            ("*/*/temp*", "somedir/temporary.txt", false),
            ("temp?", "tempa", true),
            ("temp?", "tempb/inner/file", true),
            ("temp?", "temp", false),
            ("temp?", "tempab", false),
            // Root-relative: `/foo/bar` and `foo/bar` are the same, and neither matches deeper.
            ("/foo/bar", "foo/bar", true),
            ("foo/bar", "x/foo/bar", false),
            ("/foo/bar", "foo/bar/baz", true),
            // Trailing slash is cleaned away: it also matches a file.
            ("build/", "build", true),
            ("build/", "build/out.o", true),
            // `**`
            ("**/*.go", "main.go", true),
            ("**/*.go", "cmd/tool/main.go", true),
            ("**/*.go", "main.golden", false),
            ("**/node_modules", "node_modules", true),
            ("**/node_modules", "web/app/node_modules/x/index.js", true),
            ("docs/**/*.md", "docs/a.md", true),
            ("docs/**/*.md", "docs/x/y/a.md", true),
            ("docs/**/*.md", "a.md", false),
            // Escapes, classes, `?`
            ("\\*.txt", "*.txt", true),
            ("\\*.txt", "a.txt", false),
            ("[a-c]*.txt", "b1.txt", true),
            ("[a-c]*.txt", "d1.txt", false),
            ("[!a]x", "!x", true),
            ("file?.txt", "file1.txt", true),
            ("file?.txt", "file/.txt", false),
            // Cleaning
            ("./a/./b/../c", "a/c", true),
            ("a//b", "a/b", true),
            // `**` in the middle spans whole directories only.
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/xb", false),
            ("**/dir2/*", "xdir2/file", false),
            ("**/dir2/*", "dir2/file", true),
        ];
        for &(pattern, path, want) in cases {
            let m = matcher(&[pattern]);
            assert_eq!(m.is_excluded(path, false), want, "{pattern:?} vs {path:?}");
        }
    }

    #[test]
    fn exceptions_last_match_wins() {
        // The docs' README example, both orders.
        let m = IgnoreMatcher::parse("*.md\n!README*.md\nREADME-secret.md\n").unwrap();
        assert!(m.is_excluded("CHANGES.md", false));
        assert!(!m.is_excluded("README.md", false));
        assert!(!m.is_excluded("README-public.md", false));
        assert!(m.is_excluded("README-secret.md", false));
        let m = IgnoreMatcher::parse("*.md\nREADME-secret.md\n!README*.md\n").unwrap();
        assert!(!m.is_excluded("README-secret.md", false));
        assert!(m.is_excluded("CHANGES.md", false));

        // An exception before the pattern it should override does nothing.
        let m = matcher(&["!fileutils.go", "*.go"]);
        assert!(m.is_excluded("fileutils.go", false));
        let m = matcher(&["*.go", "!fileutils.go"]);
        assert!(!m.is_excluded("fileutils.go", false));
    }

    #[test]
    fn exception_inside_excluded_directory() {
        for first in ["docs", "docs/", "docs/*"] {
            let m = matcher(&[first, "!docs/README.md"]);
            assert!(!m.is_excluded("docs/README.md", false), "{first}");
            assert!(m.is_excluded("docs/other.md", false), "{first}");
            assert!(m.may_include_below("docs"), "{first}");
            assert!(!m.may_include_below("src"), "{first}");
        }
        // An excluded directory with no exception that could reach inside.
        let m = matcher(&["node_modules", "!src/keep"]);
        assert!(m.is_excluded("node_modules/a/b.js", false));
        assert!(!m.may_include_below("node_modules"));
        assert!(!matcher(&["node_modules"]).may_include_below("node_modules"));
        // Wildcard exceptions.
        let m = matcher(&["vendor", "!vendor/*/LICENSE"]);
        assert!(m.may_include_below("vendor"));
        assert!(m.may_include_below("vendor/lib"));
        assert!(!m.may_include_below("vendor/lib/sub"));
        assert!(!m.is_excluded("vendor/lib/LICENSE", false));
        assert!(m.is_excluded("vendor/lib/code.go", false));
        let m = matcher(&["**", "!**/*.go"]);
        assert!(m.may_include_below("any/dir"));
        assert!(!m.is_excluded("any/dir/x.go", false));
        assert!(m.is_excluded("any/dir/x.c", false));
        // An exception matching a directory re-includes what is under it.
        let m = matcher(&["*", "!keep"]);
        assert!(!m.is_excluded("keep/a/b", false));
        assert!(m.is_excluded("other/a", false));
    }

    /// Parent results are handed down (fsutil's walker), so a later exception that names a
    /// parent of an excluded directory does not re-include it.
    #[test]
    fn parent_results_are_inherited() {
        let m = matcher(&["x/y/z", "!x/y"]);
        assert!(m.is_excluded("x/y/z", true));
        assert!(m.is_excluded("x/y/z/w", false));
        assert!(!m.is_excluded("x/y/other", false));
    }

    #[test]
    fn root_and_odd_paths() {
        let m = matcher(&["**"]);
        assert!(!m.is_excluded(".", true));
        assert!(!m.is_excluded("", true));
        assert!(!m.is_excluded("/", true));
        assert!(m.is_excluded("/a/./b/", false));
        assert!(!IgnoreMatcher::empty().is_excluded("a", false));
        assert!(IgnoreMatcher::parse("\n\n# only comments\n").is_ok_and(|m| m.is_empty()));
    }

    #[test]
    fn exclude_list_errors_name_the_item() {
        let err = IgnoreMatcher::from_patterns(&["ok".to_string(), "!".to_string()]);
        match err {
            Err(ContextError::BadPattern { origin, line, .. }) => {
                assert_eq!((origin, line), (PatternOrigin::List, 2))
            }
            other => panic!("{other:?}"),
        }
        // `#` is not special in a list.
        let m = matcher(&["#tmp"]);
        assert!(m.is_excluded("#tmp", false));
    }

    #[test]
    fn ignore_file_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let df_dir = dir.path().join("build");
        for d in [&ctx, &df_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dockerfile = df_dir.join("app.Dockerfile");
        assert_eq!(ignore_file_for(&dockerfile, &ctx), None);
        std::fs::write(ctx.join(".dockerignore"), "a\n").unwrap();
        assert_eq!(
            ignore_file_for(&dockerfile, &ctx),
            Some(ctx.join(".dockerignore"))
        );
        std::fs::write(df_dir.join("app.Dockerfile.dockerignore"), "b\n").unwrap();
        assert_eq!(
            ignore_file_for(&dockerfile, &ctx),
            Some(df_dir.join("app.Dockerfile.dockerignore"))
        );
        // The default Dockerfile name follows the same rule.
        std::fs::write(ctx.join("Dockerfile.dockerignore"), "c\n").unwrap();
        assert_eq!(
            ignore_file_for(&ctx.join("Dockerfile"), &ctx),
            Some(ctx.join("Dockerfile.dockerignore"))
        );
        assert_eq!(
            ignore_file_for(Path::new("-"), &ctx),
            Some(ctx.join(".dockerignore"))
        );
    }
}
