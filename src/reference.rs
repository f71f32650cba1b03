//! Image references, parsed and normalized exactly like docker's `distribution/reference`:
//! `busybox` → `docker.io/library/busybox:latest`, `host:5000/ns/img@sha256:…`.
//! Shared by the frontend (is this `--from` an image?), the image store and the registry client.

use std::fmt;

/// Docker Hub's canonical domain and the namespace of official images.
pub const DEFAULT_DOMAIN: &str = "docker.io";
pub const OFFICIAL_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub path: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: {0:?} is empty")]
    Empty(String),
    #[error("invalid reference format: repository name {0:?} must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format: {0:?}")]
    Invalid(String),
    #[error("invalid reference format: tag in {0:?} is not valid (use [A-Za-z0-9_.-], at most 128 characters)")]
    Tag(String),
    #[error(
        "invalid reference format: digest in {0:?} is not valid (expected sha256:<64 hex digits>)"
    )]
    Digest(String),
    #[error("invalid reference format: {0:?} is longer than 255 characters")]
    TooLong(String),
}

impl Reference {
    /// Parses and normalizes a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(ReferenceError::Digest(input.to_string()));
                }
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::Tag(input.to_string()));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Invalid(input.to_string()));
        }
        if name.len() > 255 {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(ReferenceError::Invalid(input.to_string()));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(if component.chars().any(|c| c.is_ascii_uppercase()) {
                    ReferenceError::Uppercase(input.to_string())
                } else {
                    ReferenceError::Invalid(input.to_string())
                });
            }
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The reference with `:latest` added when it has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form docker prints (`busybox`, `localhost:5000/app`).
    pub fn familiar_repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            let domain = if first == "index.docker.io" {
                DEFAULT_DOMAIN.to_string()
            } else {
                first.to_string()
            };
            let path = if domain == DEFAULT_DOMAIN && !rest.contains('/') {
                format!("{OFFICIAL_NAMESPACE}/{rest}")
            } else {
                rest.to_string()
            };
            (domain, path)
        }
        Some(_) => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        None => (
            DEFAULT_DOMAIN.to_string(),
            format!("{OFFICIAL_NAMESPACE}/{name}"),
        ),
    }
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let bytes: Vec<char> = c.chars().collect();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep: String = bytes[start..i].iter().collect();
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `algorithm:hex` with a known algorithm and the right length.
pub fn valid_digest(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().with_default_tag().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("user/app:1.0"), "docker.io/user/app:1.0");
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            norm("index.docker.io/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(norm("127.0.0.1:5000/a/b/c:t"), "127.0.0.1:5000/a/b/c:t");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("app@{d}")),
            format!("docker.io/library/app@{d}")
        );
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar_repository(),
            "busybox"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Upper",
            "a b",
            "app:",
            "app:-x",
            "app@sha256:12",
            "-app",
            "a//b",
            "host:x/app",
            "app/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
