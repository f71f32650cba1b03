//! Typed `--flag` parsing for instructions (BuildKit's `BFlags`): each instruction declares
//! its flags as bool, string or repeatable string; values are checked here, so later stages
//! never see an unknown, duplicated or malformed flag.

use std::collections::BTreeMap;

use super::directives::parse_go_bool;
use super::error::{ParseError, Result};
use super::span::{SourceLines, Span};

/// The kind of value a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    Bool,
    String,
    /// May be given several times; every value is kept.
    Repeated,
}

/// A parsed flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bool(bool),
    String(String),
    Repeated(Vec<String>),
}

/// The flags given to one instruction, validated against its declaration.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<&'static str, Value>,
    spans: BTreeMap<&'static str, Span>,
}

impl Flags {
    /// Parses `raw` (`--name=value` / `--name`) against `declared`. `span` is the instruction's
    /// span; `src` lets errors point at the flag's own column.
    pub fn parse(
        instruction: &str,
        raw: &[String],
        declared: &[(&'static str, FlagKind)],
        span: Span,
        src: Option<&SourceLines>,
    ) -> Result<Flags> {
        let mut flags = Flags::default();
        for arg in raw {
            let at = src.map(|s| s.locate(span, arg)).unwrap_or(span);
            let Some(body) = arg.strip_prefix("--") else {
                return Err(ParseError::BadFlag {
                    span: at,
                    instruction: instruction.to_string(),
                    flag: arg.clone(),
                    message: "flags must start with --".into(),
                });
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(decl_name, kind)) = declared.iter().find(|(n, _)| *n == name) else {
                let valid: Vec<String> = declared.iter().map(|(n, _)| format!("--{n}")).collect();
                let hint = match super::suggest::closest(name, declared.iter().map(|(n, _)| *n)) {
                    Some(s) => format!("did you mean --{s}?"),
                    None if valid.is_empty() => format!("{instruction} takes no flags"),
                    None => format!("valid flags for {instruction}: {}", valid.join(", ")),
                };
                return Err(ParseError::UnknownFlag {
                    span: at,
                    instruction: instruction.to_string(),
                    flag: name.to_string(),
                    hint,
                });
            };
            let bad = |message: String| ParseError::BadFlag {
                span: at,
                instruction: instruction.to_string(),
                flag: decl_name.to_string(),
                message,
            };
            if kind != FlagKind::Repeated && flags.values.contains_key(decl_name) {
                return Err(bad("duplicate flag specified".into()));
            }
            let parsed = match (kind, value) {
                (FlagKind::Bool, None) => Value::Bool(true),
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(bad(format!("expecting boolean value, not: {v:?}"))),
                },
                (_, None) => return Err(bad("missing a value (use --flag=value)".into())),
                (FlagKind::String, Some(v)) => Value::String(v.to_string()),
                (FlagKind::Repeated, Some(v)) => {
                    let mut all = match flags.values.remove(decl_name) {
                        Some(Value::Repeated(all)) => all,
                        _ => Vec::new(),
                    };
                    all.push(v.to_string());
                    Value::Repeated(all)
                }
            };
            flags.values.insert(decl_name, parsed);
            flags.spans.entry(decl_name).or_insert(at);
        }
        Ok(flags)
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<String> {
        match self.values.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn repeated(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::Repeated(v)) => v.clone(),
            _ => Vec::new(),
        }
    }

    /// Where a flag was written (the instruction's span when unknown).
    pub fn span_of(&self, name: &str, fallback: Span) -> Span {
        self.spans.get(name).copied().unwrap_or(fallback)
    }
}

/// Go's `time.ParseDuration`, as used for HEALTHCHECK intervals. Returns nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let ns = total as i64;
    Some(if neg { -ns } else { ns })
}

/// Go's boolean parsing for flag-like values inside `--mount` options.
pub fn parse_bool_option(s: &str) -> Option<bool> {
    parse_go_bool(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECL: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Repeated),
    ];

    fn parse(raw: &[&str]) -> Result<Flags> {
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        Flags::parse("COPY", &raw, DECL, Span::lines(1, 1), None)
    }

    #[test]
    fn typed_values() {
        let f = parse(&["--from=a", "--link", "--exclude=x", "--exclude=y"]).unwrap();
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert_eq!(f.bool("link"), Some(true));
        assert_eq!(f.repeated("exclude"), vec!["x", "y"]);
        assert_eq!(parse(&["--link=FALSE"]).unwrap().bool("link"), Some(false));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse(&["--nope"]),
            Err(ParseError::UnknownFlag { .. })
        ));
        assert!(matches!(
            parse(&["--from"]),
            Err(ParseError::BadFlag { .. })
        ));
        assert!(matches!(
            parse(&["--from=a", "--from=b"]),
            Err(ParseError::BadFlag { .. })
        ));
        assert!(matches!(
            parse(&["--link=yes"]),
            Err(ParseError::BadFlag { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
    }
}
