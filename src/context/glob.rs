//! Glob patterns with the syntax of Go's `filepath.Match` (`*`, `?`, `[...]`, `\` escapes),
//! plus the `**` tokens of Docker's patternmatcher, matched by a small NFA simulation.
//!
//! Two compilers share one token type and one matcher:
//! - [`compile_match`]: Go's `filepath.Match`, used per path segment for COPY/ADD sources;
//! - `dockerignore::Pattern` builds patternmatcher's flavour (with `**`) from these tokens.
//!
//! The matcher runs in `O(len(path) × len(pattern))`: no backtracking, so patterns such as
//! `a*b*c*d*e*` cannot blow up on long names.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A literal character (escapes already removed).
    Lit(char),
    /// `?`: exactly one character other than `/`.
    One,
    /// `*`: any run of characters other than `/` (possibly empty).
    Star,
    /// `[...]`: one character in (or, negated, not in) the class. Like Go's `filepath.Match`
    /// (and the regexp Docker builds from it), a class may match `/`.
    Class(Class),
    /// `**` followed by more pattern: the regexp `(.*/)?`, i.e. nothing, or anything that ends
    /// in `/` (any number of directories, including zero).
    DirStar,
    /// A trailing `**` after other wildcards: the regexp `.*`, anything at all.
    Rest,
}

/// A character class: ranges of characters, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    /// Whether a range runs backwards (`[z-a]`): Go's `filepath.Match` accepts it (it never
    /// matches) but the regexp Docker's patternmatcher compiles it into does not.
    pub(crate) fn has_reversed_range(&self) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo > hi)
    }
}

/// Parses a class whose `[` is at `chars[start - 1]`; returns it and the index after its `]`.
/// The rules are Go's: an optional leading `^` negates; `]` closes the class only after at
/// least one range; a bare `-` or `]` inside is an error unless escaped with `\`.
pub(crate) fn parse_class(chars: &[char], start: usize) -> Result<(Class, usize), String> {
    let mut i = start;
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1)?;
            hi = h;
            i = next;
        }
        ranges.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: usize) -> Result<(char, usize), String> {
    match chars.get(i) {
        None => Err("unterminated character class '['".to_string()),
        Some('-') | Some(']') => {
            Err("'-' and ']' must be escaped inside a character class".to_string())
        }
        Some('\\') => match chars.get(i + 1) {
            None => Err("unterminated character class '['".to_string()),
            Some(&c) => Ok((c, i + 2)),
        },
        Some(&c) => Ok((c, i + 1)),
    }
}

/// Compiles a pattern with exactly Go's `filepath.Match` syntax (no `**`: two stars are one).
pub(crate) fn compile_match(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::One),
            '[' => {
                let (class, next) = parse_class(&chars, i)?;
                tokens.push(Token::Class(class));
                i = next;
            }
            '\\' => match chars.get(i) {
                Some(&e) => {
                    tokens.push(Token::Lit(e));
                    i += 1;
                }
                None => return Err("trailing backslash escapes nothing".to_string()),
            },
            c => tokens.push(Token::Lit(c)),
        }
    }
    Ok(tokens)
}

/// Whether a name contains wildcards as BuildKit's `containsWildcards` sees them: `*`, `?` or
/// `[`, where a `\` hides the character after it.
pub(crate) fn contains_wildcards(name: &str) -> bool {
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Whether a segment needs matching at all: no `*`, `?`, `[` or `\`, so it names one entry.
pub(crate) fn is_plain(name: &str) -> bool {
    !name.contains(['*', '?', '[', '\\'])
}

/// NFA states: `at[i]` means "before token i" (`at[n]` accepts); `inside[i]` means "inside the
/// `(.*/)?` group of the `DirStar` at i", which, unlike `at[i]`, cannot skip the group.
struct States {
    at: Vec<bool>,
    inside: Vec<bool>,
}

impl States {
    fn new(n: usize) -> States {
        States {
            at: vec![false; n + 1],
            inside: vec![false; n],
        }
    }

    fn clear(&mut self) {
        self.at.iter_mut().for_each(|b| *b = false);
        self.inside.iter_mut().for_each(|b| *b = false);
    }

    fn any(&self) -> bool {
        self.at.iter().chain(&self.inside).any(|&b| b)
    }
}

/// Runs the NFA over `s` from the start state; returns the final set of states.
fn run(tokens: &[Token], s: &str) -> States {
    let mut cur = States::new(tokens.len());
    let mut next = States::new(tokens.len());
    cur.at[0] = true;
    close(tokens, &mut cur.at);
    for c in s.chars() {
        next.clear();
        for (i, token) in tokens.iter().enumerate() {
            if cur.inside[i] || (cur.at[i] && *token == Token::DirStar) {
                // `.*` eats `c`; a `/` may also end the group.
                next.inside[i] = true;
                if c == '/' {
                    next.at[i + 1] = true;
                }
            }
            if !cur.at[i] {
                continue;
            }
            let advance = match token {
                Token::Lit(x) => c == *x,
                Token::One => c != '/',
                Token::Class(class) => class.matches(c),
                Token::Star => {
                    if c != '/' {
                        next.at[i] = true;
                    }
                    false
                }
                Token::Rest => {
                    next.at[i] = true;
                    false
                }
                Token::DirStar => false,
            };
            if advance {
                next.at[i + 1] = true;
            }
        }
        close(tokens, &mut next.at);
        std::mem::swap(&mut cur, &mut next);
        if !cur.any() {
            break;
        }
    }
    cur
}

/// Adds the states reachable without consuming input (every star may match nothing).
fn close(tokens: &[Token], at: &mut [bool]) {
    for i in 0..tokens.len() {
        if at[i] && matches!(tokens[i], Token::Star | Token::Rest | Token::DirStar) {
            at[i + 1] = true;
        }
    }
}

/// Whether the whole of `s` matches.
pub(crate) fn matches(tokens: &[Token], s: &str) -> bool {
    run(tokens, s).at[tokens.len()]
}

/// Whether some string that starts with `prefix` could match (conservative: it answers true
/// when the automaton is still alive after `prefix`).
pub(crate) fn viable_prefix(tokens: &[Token], prefix: &str) -> bool {
    run(tokens, prefix).any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_match(pattern: &str, name: &str) -> Result<bool, String> {
        compile_match(pattern).map(|t| matches(&t, name))
    }

    /// Go's own `filepath.Match` table (path/filepath/match_test.go), as data.
    #[test]
    fn go_filepath_match_table() {
        let ok: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
            ("**", "abc", true),
        ];
        for &(p, s, want) in ok {
            assert_eq!(go_match(p, s), Ok(want), "Match({p:?}, {s:?})");
        }
        for bad in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "[\\",
        ] {
            assert!(
                go_match(bad, "a").is_err(),
                "{bad:?} should be a bad pattern"
            );
        }
    }

    #[test]
    fn wildcard_detection() {
        assert!(contains_wildcards("*.go"));
        assert!(contains_wildcards("a[bc]"));
        assert!(!contains_wildcards("a\\*b"));
        assert!(!contains_wildcards("plain.txt"));
        assert!(is_plain("plain.txt"));
        assert!(!is_plain("a\\b"));
    }

    #[test]
    fn dirstar_and_prefixes() {
        let t = vec![Token::DirStar, Token::Lit('x')];
        assert!(matches(&t, "x"));
        assert!(matches(&t, "a/b/x"));
        assert!(!matches(&t, "ax"));
        let t = compile_match("src/*/keep").unwrap();
        assert!(viable_prefix(&t, "src/"));
        assert!(viable_prefix(&t, "src/a/"));
        assert!(!viable_prefix(&t, "lib/"));
        assert!(!viable_prefix(&t, "src/a/keep/"));
    }
}
