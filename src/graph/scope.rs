//! ARG and ENV scoping, as BuildKit's dispatcher does it.
//!
//! - ARGs before the first FROM (meta args) form the global scope; FROM lines expand with it.
//!   The predefined platform args (BUILDPLATFORM, TARGETARCH, …) are in that scope too.
//! - Inside a stage nothing is visible until declared: `ARG name` inherits the meta arg's
//!   value, `ARG name=default` uses the default, and a `--build-arg` beats both.
//! - ENV is visible to later instructions and always beats an ARG of the same name.
//! - Proxy args (HTTP_PROXY, …) are predefined: usable with `--build-arg` without a declaration.

use std::collections::{BTreeMap, BTreeSet};

use crate::parser::instructions::ArgDecl;
use crate::parser::shell::{Env, Expansion, Lexer, ShellError};

use super::GraphError;

/// The proxy build args every stage may use without declaring them.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The platform args BuildKit defines in the global scope.
pub const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// An OCI platform: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The machine kiln runs on, with Go/OCI architecture names.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.map(String::from),
        }
    }

    /// Parses `os/arch[/variant]` (`linux/arm64/v8`).
    pub fn parse(s: &str) -> Result<Platform, GraphError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_ascii_lowercase(),
                    arch: arch.to_ascii_lowercase(),
                    variant: Some(variant.to_ascii_lowercase()),
                })
            }
            _ => Err(GraphError::Platform(s.to_string())),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What the user asked for that affects scoping.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--build-arg NAME=VALUE`.
    pub build_args: BTreeMap<String, String>,
    pub build_platform: Platform,
    pub target_platform: Platform,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: BTreeMap::new(),
            build_platform: Platform::host(),
            target_platform: Platform::host(),
        }
    }
}

impl BuildOptions {
    /// The predefined platform args and their values.
    pub fn platform_args(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (prefix, p) in [
            ("TARGET", &self.target_platform),
            ("BUILD", &self.build_platform),
        ] {
            m.insert(format!("{prefix}PLATFORM"), p.to_string());
            m.insert(format!("{prefix}OS"), p.os.clone());
            m.insert(format!("{prefix}ARCH"), p.arch.clone());
            m.insert(
                format!("{prefix}VARIANT"),
                p.variant.clone().unwrap_or_default(),
            );
        }
        m
    }
}

/// A set of visible variables: declared ARGs (with or without a value) and ENV.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    args: BTreeMap<String, Option<String>>,
    env: BTreeMap<String, String>,
    /// Names of ENV entries in definition order (the image config keeps this order).
    env_order: Vec<String>,
}

impl Env for Scope {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .or_else(|| self.args.get(name).and_then(|v| v.as_deref()))
    }
}

impl Scope {
    /// The global scope before the first FROM: the platform args, then the meta ARGs.
    /// Returns the scope and, per meta ARG, the expansion of its default (for lints).
    pub fn global(
        meta: &[ArgDecl],
        opts: &BuildOptions,
        lexer: &Lexer,
    ) -> Result<(Scope, Vec<Option<Expansion>>), ShellError> {
        let mut scope = Scope::default();
        for (k, v) in opts.platform_args() {
            scope.args.insert(k, Some(v));
        }
        let mut expansions = Vec::with_capacity(meta.len());
        for decl in meta {
            expansions.push(scope.declare_arg(decl, opts, None, lexer)?);
        }
        Ok((scope, expansions))
    }

    /// A stage's starting scope: the base image's environment (`KEY=VALUE` entries).
    pub fn for_stage<'a>(image_env: impl IntoIterator<Item = &'a str>) -> Scope {
        let mut scope = Scope::default();
        for entry in image_env {
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            scope.insert_env(k.to_string(), v.to_string());
        }
        scope
    }

    fn insert_env(&mut self, key: String, value: String) {
        if !self.env.contains_key(&key) {
            self.env_order.push(key.clone());
        }
        self.env.insert(key, value);
    }

    /// `ARG name[=default]`. `global` is the meta-arg scope (None while building it).
    /// Returns the expansion of the default, if one was given and used.
    pub fn declare_arg(
        &mut self,
        decl: &ArgDecl,
        opts: &BuildOptions,
        global: Option<&Scope>,
        lexer: &Lexer,
    ) -> Result<Option<Expansion>, ShellError> {
        let mut expansion = None;
        let value = if let Some(v) = opts.build_args.get(&decl.name) {
            Some(v.clone())
        } else if let Some(default) = &decl.default {
            let e = lexer.process_word(default, self)?;
            let word = e.word.clone();
            expansion = Some(e);
            Some(word)
        } else if let Some(g) = global {
            g.args.get(&decl.name).cloned().flatten()
        } else {
            opts.platform_args().get(&decl.name).cloned()
        };
        self.args.insert(decl.name.clone(), value);
        Ok(expansion)
    }

    /// `ENV key=value`: expands the value in the current scope and sets it.
    pub fn set_env(
        &mut self,
        key: &str,
        raw_value: &str,
        lexer: &Lexer,
    ) -> Result<Expansion, ShellError> {
        let e = lexer.process_word(raw_value, self)?;
        self.insert_env(key.to_string(), e.word.clone());
        Ok(e)
    }

    /// Expands one word in this scope.
    pub fn expand(&self, word: &str, lexer: &Lexer) -> Result<Expansion, ShellError> {
        lexer.process_word(word, self)
    }

    /// Whether a name is visible (declared ARG, even without a value, or ENV).
    pub fn is_declared(&self, name: &str) -> bool {
        self.env.contains_key(name) || self.args.contains_key(name)
    }

    /// Every visible name, for "did you mean" suggestions.
    pub fn names(&self) -> BTreeSet<&str> {
        self.env
            .keys()
            .chain(self.args.keys())
            .map(String::as_str)
            .collect()
    }

    /// ENV entries in definition order, as `KEY=VALUE` for the image config.
    pub fn env_list(&self) -> Vec<String> {
        self.env_order
            .iter()
            .filter_map(|k| self.env.get(k).map(|v| format!("{k}={v}")))
            .collect()
    }

    /// The build-time environment of RUN: ENV plus ARGs that have a value.
    pub fn build_env(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        m.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, default: Option<&str>) -> ArgDecl {
        ArgDecl {
            name: name.into(),
            default: default.map(String::from),
        }
    }

    #[test]
    fn meta_args_flow_into_stages_only_when_declared() {
        let lexer = Lexer::new('\\');
        let mut opts = BuildOptions::default();
        opts.build_args.insert("B".into(), "from-cli".into());
        let (global, _) =
            Scope::global(&[decl("A", Some("1")), decl("B", Some("2"))], &opts, &lexer).unwrap();
        assert_eq!(global.lookup("A"), Some("1"));
        assert_eq!(global.lookup("B"), Some("from-cli"));
        assert!(global.lookup("TARGETARCH").is_some());

        let mut stage = Scope::for_stage(["PATH=/bin"]);
        assert_eq!(stage.lookup("A"), None);
        stage
            .declare_arg(&decl("A", None), &opts, Some(&global), &lexer)
            .unwrap();
        assert_eq!(stage.lookup("A"), Some("1"));
        stage
            .declare_arg(&decl("TARGETARCH", None), &opts, Some(&global), &lexer)
            .unwrap();
        assert_eq!(
            stage.lookup("TARGETARCH"),
            Some(Platform::host().arch.as_str())
        );
    }

    #[test]
    fn env_beats_arg_and_build_arg_beats_default() {
        let lexer = Lexer::new('\\');
        let mut opts = BuildOptions::default();
        opts.build_args.insert("V".into(), "cli".into());
        let mut s = Scope::for_stage([]);
        s.declare_arg(&decl("V", Some("default")), &opts, None, &lexer)
            .unwrap();
        assert_eq!(s.lookup("V"), Some("cli"));
        s.set_env("V", "env-$V", &lexer).unwrap();
        assert_eq!(s.lookup("V"), Some("env-cli"));
        s.declare_arg(
            &decl("V", Some("again")),
            &BuildOptions::default(),
            None,
            &lexer,
        )
        .unwrap();
        assert_eq!(s.lookup("V"), Some("env-cli"));
        assert_eq!(s.env_list(), vec!["V=env-cli".to_string()]);
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(Platform::parse("linux").is_err());
    }
}
