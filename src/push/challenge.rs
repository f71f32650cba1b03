//! `WWW-Authenticate` challenges (RFC 7235) and Distribution's token authentication.
//!
//! A registry answers an unauthenticated request with `401` and one or more challenges:
//!
//! ```text
//! WWW-Authenticate: Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"
//! WWW-Authenticate: Basic realm="registry"
//! ```
//!
//! [`parse`] turns one header value (which may hold several challenges) into [`Challenge`]s;
//! schemes other than `Basic` and `Bearer` are skipped. For a `Bearer` challenge,
//! [`token_url`] builds the `GET realm?service=…&scope=…` request of the
//! [token protocol](https://distribution.github.io/distribution/spec/auth/token/) and
//! [`TokenResponse::parse`] reads its answer (`token` or `access_token`, `expires_in`).
//!
//! This module does no I/O; the registry client owns the HTTP requests.

use std::fmt;
use std::time::Duration;

/// Token lifetime assumed when the server sends none, or a shorter one (the spec's minimum).
pub const MINIMUM_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Why a challenge header or a token response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The header does not follow the RFC 7235 grammar.
    #[error("malformed WWW-Authenticate header at byte {position}: {reason}")]
    Malformed {
        position: usize,
        reason: &'static str,
    },
    /// A `Bearer` challenge without the `realm` that names the token server.
    #[error("Bearer challenge has no realm")]
    MissingRealm,
    /// The realm is not an absolute http(s) URL.
    #[error("token realm {realm:?} is not an http:// or https:// URL")]
    InvalidRealm { realm: String },
    /// The token server's answer is not the expected JSON object.
    #[error("malformed token response: {reason} (line {line}, column {column})")]
    TokenJson {
        reason: String,
        line: usize,
        column: usize,
    },
    /// The token server's answer has neither `token` nor `access_token`.
    #[error("token response has neither `token` nor `access_token`")]
    NoToken,
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, ChallengeError>;

/// One authentication challenge a registry offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic authentication; send `Authorization: Basic base64(user:pass)`.
    Basic { realm: Option<String> },
    /// Distribution token authentication; fetch a token from `realm`, then send
    /// `Authorization: Bearer <token>`.
    Bearer {
        realm: String,
        service: Option<String>,
        /// Space-separated scopes, e.g. `repository:a/b:pull,push`.
        scope: Option<String>,
    },
}

impl Challenge {
    /// The scopes of a `Bearer` challenge, split on spaces (empty for `Basic`).
    pub fn scopes(&self) -> Vec<&str> {
        match self {
            Challenge::Bearer {
                scope: Some(scope), ..
            } => scope.split(' ').filter(|s| !s.is_empty()).collect(),
            _ => Vec::new(),
        }
    }

    /// For a `Bearer` challenge, the token-request URL for the challenge's own scopes plus
    /// `extra_scopes` (duplicates dropped); `None` for `Basic`.
    pub fn token_url(
        &self,
        extra_scopes: &[&str],
        account: Option<&str>,
    ) -> Option<Result<String>> {
        match self {
            Challenge::Basic { .. } => None,
            Challenge::Bearer { realm, service, .. } => {
                let mut scopes = self.scopes();
                for s in extra_scopes {
                    if !scopes.contains(s) {
                        scopes.push(s);
                    }
                }
                Some(token_url(realm, service.as_deref(), &scopes, account))
            }
        }
    }
}

/// A raw challenge: scheme (lowercased), optional token68, parameters (names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawChallenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one `WWW-Authenticate` header value into the challenges it holds, in order.
/// Unknown schemes are skipped; a malformed header or a `Bearer` challenge without a
/// realm is an error.
pub fn parse(header: &str) -> Result<Vec<Challenge>> {
    let mut out = Vec::new();
    for raw in parse_raw(header)? {
        match raw.scheme.as_str() {
            "basic" => out.push(Challenge::Basic {
                realm: raw.param("realm").map(str::to_string),
            }),
            "bearer" => {
                let realm = raw
                    .param("realm")
                    .filter(|r| !r.is_empty())
                    .ok_or(ChallengeError::MissingRealm)?;
                out.push(Challenge::Bearer {
                    realm: realm.to_string(),
                    service: raw.param("service").map(str::to_string),
                    scope: raw.param("scope").map(str::to_string),
                });
            }
            other => tracing::debug!(scheme = other, "skipping unsupported auth scheme"),
        }
    }
    Ok(out)
}

/// Parses every `WWW-Authenticate` header of a response (a response may repeat the header).
pub fn parse_all<'a>(headers: impl IntoIterator<Item = &'a str>) -> Result<Vec<Challenge>> {
    let mut out = Vec::new();
    for h in headers {
        out.extend(parse(h)?);
    }
    Ok(out)
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// RFC 7235 `token68` character (without the trailing `=`).
fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }
    /// Skips whitespace and empty list elements (`, ,`).
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        // The predicates only accept ASCII, so the slice is valid UTF-8; the lenient
        // bare-value predicate stops only at ASCII delimiters, which keeps char boundaries.
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default()
    }
    fn error(&self, reason: &'static str) -> ChallengeError {
        ChallengeError::Malformed {
            position: self.pos,
            reason,
        }
    }
    /// A quoted-string starting at the opening quote; `\x` stands for `x`.
    fn quoted(&mut self) -> Result<String> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ChallengeError::Malformed {
                        position: start,
                        reason: "unterminated quoted string",
                    })
                }
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                        None => return Err(self.error("escape at end of header")),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| ChallengeError::Malformed {
            position: start,
            reason: "quoted string is not UTF-8",
        })
    }
}

fn parse_raw(header: &str) -> Result<Vec<RawChallenge>> {
    let mut c = Cursor {
        s: header.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        c.skip_ws_and_commas();
        if c.at_end() {
            break;
        }
        let scheme = c.take_while(is_tchar);
        if scheme.is_empty() {
            return Err(c.error("expected an auth scheme"));
        }
        let mut raw = RawChallenge {
            scheme: scheme.to_ascii_lowercase(),
            token68: None,
            params: Vec::new(),
        };
        let had_space = matches!(c.peek(), Some(b' ' | b'\t'));
        c.skip_ws();
        if !had_space || c.at_end() || c.peek() == Some(b',') {
            if !had_space && !c.at_end() && c.peek() != Some(b',') {
                return Err(c.error("expected a space after the auth scheme"));
            }
            out.push(raw);
            continue;
        }
        // token68: `abc+/=` followed by the end or a comma.
        let save = c.pos;
        let t = c.take_while(is_token68_char);
        if !t.is_empty() {
            let mut end = c.pos;
            while c.s.get(end) == Some(&b'=') {
                end += 1;
            }
            let mut after = end;
            while matches!(c.s.get(after), Some(b' ' | b'\t')) {
                after += 1;
            }
            let ends_element = after >= c.s.len() || c.s[after] == b',';
            let only_eq_value = end > c.pos && ends_element;
            if (end == c.pos && ends_element) || only_eq_value {
                raw.token68 = Some(header[save..end].to_string());
                c.pos = after;
                out.push(raw);
                continue;
            }
        }
        c.pos = save;
        // auth-params; a token not followed by '=' starts the next challenge.
        loop {
            c.skip_ws_and_commas();
            if c.at_end() {
                break;
            }
            let save = c.pos;
            let name = c.take_while(is_tchar);
            if name.is_empty() {
                return Err(c.error("expected a parameter name"));
            }
            c.skip_ws();
            if c.peek() != Some(b'=') {
                c.pos = save;
                break;
            }
            c.pos += 1;
            c.skip_ws();
            let value = match c.peek() {
                Some(b'"') => c.quoted()?,
                // Lenient like docker: a bare value runs to the next comma or space, so
                // unquoted URLs (`realm=https://x/token`) are accepted.
                Some(_) => c
                    .take_while(|b| !matches!(b, b',' | b' ' | b'\t' | b'"'))
                    .to_string(),
                None => return Err(c.error("missing parameter value")),
            };
            if value.is_empty() && c.peek() == Some(b'"') {
                return Err(c.error("unexpected quote in parameter value"));
            }
            let name = name.to_ascii_lowercase();
            // RFC 7235: each parameter name occurs once; keep the first if repeated.
            if raw.param(&name).is_none() {
                raw.params.push((name, value));
            }
            c.skip_ws();
            match c.peek() {
                None => break,
                Some(b',') => c.pos += 1,
                Some(_) => return Err(c.error("expected ',' after a parameter")),
            }
        }
        out.push(raw);
    }
    Ok(out)
}

/// Builds a repository scope, e.g. `repository:a/b:pull,push`.
pub fn repository_scope(repository: &str, actions: &[&str]) -> String {
    format!("repository:{repository}:{}", actions.join(","))
}

/// Percent-encodes a query component: everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token-request URL of Distribution's token auth:
/// `realm?service=…&scope=…&scope=…[&account=…]`, each value percent-encoded. A realm that
/// already has a query string is extended with `&`.
pub fn token_url(
    realm: &str,
    service: Option<&str>,
    scopes: &[&str],
    account: Option<&str>,
) -> Result<String> {
    let lower = realm.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) || realm.contains('#') {
        return Err(ChallengeError::InvalidRealm {
            realm: realm.to_string(),
        });
    }
    let mut params = Vec::new();
    if let Some(s) = service.filter(|s| !s.is_empty()) {
        params.push(format!("service={}", percent_encode(s)));
    }
    for s in scopes.iter().filter(|s| !s.is_empty()) {
        params.push(format!("scope={}", percent_encode(s)));
    }
    if let Some(a) = account.filter(|a| !a.is_empty()) {
        params.push(format!("account={}", percent_encode(a)));
    }
    let mut url = realm.to_string();
    if !params.is_empty() {
        if !realm.contains('?') {
            url.push('?');
        } else if !(realm.ends_with('?') || realm.ends_with('&')) {
            url.push('&');
        }
        url.push_str(&params.join("&"));
    }
    Ok(url)
}

/// A bearer token from the token server. `Debug` never shows the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub token: String,
    /// How long the token is valid, at least [`MINIMUM_TOKEN_LIFETIME`].
    pub expires_in: Duration,
    /// RFC 3339 time the token was issued, if the server said.
    pub issued_at: Option<String>,
    /// OAuth2 refresh token, if the server issued one.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct RawToken {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl TokenResponse {
    /// Parses the token server's JSON body. `token` wins over `access_token` (they are the
    /// same per the spec); a missing, zero or short `expires_in` becomes 60 s. Error messages
    /// never quote the body, which holds secrets.
    pub fn parse(body: &[u8]) -> Result<TokenResponse> {
        let raw: RawToken =
            serde_json::from_slice(body).map_err(|e| ChallengeError::TokenJson {
                reason: match e.classify() {
                    serde_json::error::Category::Io => "I/O error",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data => "unexpected field type",
                    serde_json::error::Category::Eof => "truncated JSON",
                }
                .to_string(),
                line: e.line(),
                column: e.column(),
            })?;
        let token = raw
            .token
            .filter(|t| !t.is_empty())
            .or(raw.access_token.filter(|t| !t.is_empty()))
            .ok_or(ChallengeError::NoToken)?;
        let secs = raw.expires_in.unwrap_or(0);
        let expires_in = u64::try_from(secs)
            .map(Duration::from_secs)
            .unwrap_or(MINIMUM_TOKEN_LIFETIME)
            .max(MINIMUM_TOKEN_LIFETIME);
        Ok(TokenResponse {
            token,
            expires_in,
            issued_at: raw.issued_at,
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn bearer_with_all_params() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse(h).unwrap(),
            vec![bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:a/b:pull,push")
            )]
        );
    }

    #[test]
    fn basic_realm() {
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#).unwrap(),
            vec![Challenge::Basic {
                realm: Some("Registry Realm".into())
            }]
        );
        assert_eq!(
            parse("Basic").unwrap(),
            vec![Challenge::Basic { realm: None }]
        );
    }

    #[test]
    fn scheme_and_param_names_are_case_insensitive() {
        assert_eq!(
            parse(r#"bEaReR REALM="https://a/t", Service="s""#).unwrap(),
            vec![bearer("https://a/t", Some("s"), None)]
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        let h =
            r#"Basic realm="r1", Bearer realm="https://a/token",service="svc", Basic realm="r2""#;
        assert_eq!(
            parse(h).unwrap(),
            vec![
                Challenge::Basic {
                    realm: Some("r1".into())
                },
                bearer("https://a/token", Some("svc"), None),
                Challenge::Basic {
                    realm: Some("r2".into())
                },
            ]
        );
    }

    #[test]
    fn unknown_schemes_and_token68_are_skipped() {
        let h = r#"Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg==, NTLM, Bearer realm="https://a/t""#;
        assert_eq!(parse(h).unwrap(), vec![bearer("https://a/t", None, None)]);
        let raw = parse_raw(h).unwrap();
        assert_eq!(
            raw[0].token68.as_deref(),
            Some("YIIBhwYGKwYBBQUCoIIBezCCAXeg==")
        );
        assert_eq!(raw[1].scheme, "ntlm");
        assert_eq!(raw[1].token68, None);
        assert_eq!(
            parse_raw("Foo abc").unwrap()[0].token68.as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn quoted_strings_with_escapes_and_commas() {
        let h = r#"Bearer realm="https://a/t",scope="repository:x/y:pull,push repository:z:pull",service="s \"q\" \\ e""#;
        let c = parse(h).unwrap();
        assert_eq!(
            c,
            vec![bearer(
                "https://a/t",
                Some(r#"s "q" \ e"#),
                Some("repository:x/y:pull,push repository:z:pull")
            )]
        );
        assert_eq!(
            c[0].scopes(),
            vec!["repository:x/y:pull,push", "repository:z:pull"]
        );
    }

    #[test]
    fn bare_token_values_and_whitespace() {
        let h = "Bearer  realm = https://a.example/token , service=registry.example,scope=repository:a:pull";
        assert_eq!(
            parse(h).unwrap(),
            vec![bearer(
                "https://a.example/token",
                Some("registry.example"),
                Some("repository:a:pull")
            )]
        );
    }

    #[test]
    fn empty_list_elements_and_repeated_params() {
        let h = r#" , Bearer realm="https://a/t",, service="one", service="two" ,"#;
        assert_eq!(
            parse(h).unwrap(),
            vec![bearer("https://a/t", Some("one"), None)]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn parse_all_headers() {
        let got = parse_all([r#"Basic realm="x""#, r#"Bearer realm="https://a/t""#]).unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn malformed_headers() {
        for h in [
            r#"Bearer realm="https://a/t"#,    // unterminated
            r#"Bearer realm="a\"#,             // escape at end
            r#"Bearer realm="a" service="b""#, // missing comma
            r#"Bearer service="x", realm="#,   // no value
            r#"="x""#,                         // no scheme
            r#"Bearer realm=a"b""#,            // stray quote
            r#"Bearer"realm""#,                // no space after scheme
        ] {
            assert!(
                matches!(parse(h), Err(ChallengeError::Malformed { .. })),
                "{h}: {:?}",
                parse(h)
            );
        }
        assert_eq!(
            parse(r#"Bearer service="s""#),
            Err(ChallengeError::MissingRealm)
        );
        assert_eq!(
            parse(r#"Bearer realm="""#),
            Err(ChallengeError::MissingRealm)
        );
        // `realm=` alone is a token68 (RFC 7235), so the challenge has no realm parameter.
        assert_eq!(parse("Bearer realm="), Err(ChallengeError::MissingRealm));
    }

    #[test]
    fn token_url_encodes_and_appends() {
        let url = token_url(
            "https://auth.docker.io/token",
            Some("registry.docker.io"),
            &[
                "repository:library/busybox:pull,push",
                "repository:a b:pull",
            ],
            Some("me@x"),
        )
        .unwrap();
        assert_eq!(
            url,
            "https://auth.docker.io/token?service=registry.docker.io\
             &scope=repository%3Alibrary%2Fbusybox%3Apull%2Cpush\
             &scope=repository%3Aa%20b%3Apull&account=me%40x"
        );
        assert_eq!(
            token_url("https://a/t?x=1", Some("s"), &[], None).unwrap(),
            "https://a/t?x=1&service=s"
        );
        assert_eq!(
            token_url("https://a/t?", Some("s"), &[], None).unwrap(),
            "https://a/t?service=s"
        );
        assert_eq!(
            token_url("http://a/t", None, &[], None).unwrap(),
            "http://a/t"
        );
        for bad in ["", "/token", "ftp://a/t", "https://", "https://a/t#frag"] {
            assert!(
                matches!(
                    token_url(bad, None, &[], None),
                    Err(ChallengeError::InvalidRealm { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn challenge_token_url_merges_scopes() {
        let c = bearer("https://a/t", Some("s"), Some("repository:a:pull"));
        let url = c
            .token_url(&["repository:a:pull", "repository:b:pull,push"], None)
            .unwrap()
            .unwrap();
        assert_eq!(
            url,
            "https://a/t?service=s&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apull%2Cpush"
        );
        assert!(Challenge::Basic { realm: None }
            .token_url(&[], None)
            .is_none());
        assert_eq!(
            repository_scope("a/b", &["pull", "push"]),
            "repository:a/b:pull,push"
        );
    }

    #[test]
    fn token_response_forms() {
        let t = TokenResponse::parse(
            br#"{"token":"abc","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(t.token, "abc");
        assert_eq!(t.expires_in, Duration::from_secs(300));
        assert_eq!(t.issued_at.as_deref(), Some("2024-01-01T00:00:00Z"));

        let t = TokenResponse::parse(br#"{"access_token":"xyz","refresh_token":"r"}"#).unwrap();
        assert_eq!(t.token, "xyz");
        assert_eq!(t.expires_in, MINIMUM_TOKEN_LIFETIME);
        assert_eq!(t.refresh_token.as_deref(), Some("r"));

        let t = TokenResponse::parse(br#"{"token":"","access_token":"b","expires_in":5}"#).unwrap();
        assert_eq!(t.token, "b");
        assert_eq!(t.expires_in, MINIMUM_TOKEN_LIFETIME);
        let t = TokenResponse::parse(br#"{"token":"a","expires_in":-5}"#).unwrap();
        assert_eq!(t.expires_in, MINIMUM_TOKEN_LIFETIME);

        assert_eq!(
            TokenResponse::parse(br#"{"expires_in":60}"#),
            Err(ChallengeError::NoToken)
        );
        let err = TokenResponse::parse(br#"{"token": 12345678}"#).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        assert!(matches!(
            TokenResponse::parse(b"{\"token\":\"sec"),
            Err(ChallengeError::TokenJson { .. })
        ));
    }

    #[test]
    fn token_response_debug_is_redacted() {
        let t =
            TokenResponse::parse(br#"{"token":"SECRET-TOKEN","refresh_token":"SECRET-REFRESH"}"#)
                .unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains("SECRET"), "{d}");
        assert!(d.contains("<redacted>"));
    }
}
