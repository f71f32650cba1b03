//! Bearer tokens from a registry's token server, fetched the way docker does
//! ([token protocol](https://distribution.github.io/distribution/spec/auth/token/) and its
//! [OAuth2 variant](https://distribution.github.io/distribution/spec/auth/oauth/)):
//!
//! - identity token (docker's `identitytoken`, an OAuth2 refresh token):
//!   `POST realm` with `grant_type=refresh_token`;
//! - username and password: `GET realm?service=…&scope=…&account=…` with Basic auth;
//! - no credentials: the same GET without `Authorization`.
//!
//! kiln asks for the scopes itself (oci-client only asks for the target repository, which
//! is not enough for a cross-repository mount) and hands the tokens to oci-client's cache.
//! Tokens are cached per scope set until shortly before they expire. `kiln login` verifies
//! credentials with the OAuth2 password grant (`access_type=offline`), falling back to the
//! GET, and keeps a refresh token the server returns as the identity token.
//!
//! Secrets only ever travel in headers and form bodies; errors and logs name the realm, the
//! scopes and the status, never a password or a token.

use std::time::{Duration, Instant};

use super::challenge::{self, Challenge, TokenResponse};
use super::client::{Registry, RegistryError, Result};
use super::credentials::Credentials;

/// `client_id` kiln sends in OAuth2 token requests (docker sends `docker`).
pub const CLIENT_ID: &str = "kiln";
/// A cached token is not used in its last seconds (requests take time).
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A token server's `Bearer` challenge: where to ask and for which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenServer {
    pub realm: String,
    pub service: Option<String>,
}

/// How kiln authenticates to a registry, found once per connection by `GET /v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthScheme {
    /// `/v2/` answered without a challenge, or with a `Basic` one (oci-client handles it).
    Plain,
    /// Token authentication.
    Token(TokenServer),
}

/// A token and when it stops being usable.
#[derive(Clone)]
pub(crate) struct CachedToken {
    token: String,
    usable_until: Instant,
}

/// What a login check learned: a refresh token to store instead of the password, if the
/// token server issued one.
pub struct LoginOutcome {
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOutcome")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The first `Bearer` challenge of a response's `WWW-Authenticate` headers.
fn bearer_of(res: &reqwest::Response) -> Result<Option<TokenServer>> {
    let headers: Vec<&str> = res
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let challenges = challenge::parse_all(headers)?;
    Ok(challenges.into_iter().find_map(|c| match c {
        Challenge::Bearer { realm, service, .. } => Some(TokenServer { realm, service }),
        Challenge::Basic { .. } => None,
    }))
}

/// A short, secret-free excerpt of a token server's error answer: the OAuth2
/// `error`/`error_description`, the Distribution `errors[0]`, or the text itself.
fn token_server_says(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
        errors: Option<Vec<ApiError>>,
        details: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        code: Option<String>,
        message: Option<String>,
    }
    let said = match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => {
            if let Some(first) = e.errors.as_ref().and_then(|v| v.first()) {
                [first.code.clone(), first.message.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            } else {
                [e.error, e.error_description, e.details]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            }
        }
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    let said: String = said.chars().take(200).collect();
    if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    }
}

impl Registry {
    /// How this registry authenticates (cached for the connection): `GET /v2/` without
    /// credentials and read its challenge.
    pub(crate) async fn auth_scheme(&self, reference: &str) -> Result<AuthScheme> {
        if let Some(s) = self.scheme_cache.lock().ok().and_then(|g| g.clone()) {
            return Ok(s);
        }
        let url = self.url("/v2/");
        let res = super::client::retry(|| async {
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|e| self.transport(reference, &e))
        })
        .await?;
        let scheme = match (res.status().as_u16(), bearer_of(&res)?) {
            (401, Some(server)) => AuthScheme::Token(server),
            _ => AuthScheme::Plain,
        };
        tracing::debug!(registry = %self.domain, ?scheme, "authentication scheme");
        if let Ok(mut g) = self.scheme_cache.lock() {
            *g = Some(scheme.clone());
        }
        Ok(scheme)
    }

    /// A bearer token for `scopes` (`repository:a/b:pull,push`…), from the cache or the
    /// token server, with the connection's credentials.
    pub(crate) async fn token_for(
        &self,
        server: &TokenServer,
        scopes: &[String],
        reference: &str,
    ) -> Result<String> {
        let mut key: Vec<&str> = scopes.iter().map(String::as_str).collect();
        key.sort_unstable();
        let key = key.join(" ");
        let mut cache = self.token_cache.lock().await;
        if let Some(t) = cache.get(&key).filter(|t| t.usable_until > Instant::now()) {
            return Ok(t.token.clone());
        }
        let answer = super::client::retry(|| self.fetch_token(server, scopes, reference)).await?;
        let lifetime = answer.expires_in.saturating_sub(EXPIRY_MARGIN);
        cache.insert(
            key,
            CachedToken {
                token: answer.token.clone(),
                usable_until: Instant::now() + lifetime,
            },
        );
        Ok(answer.token)
    }

    /// One token request with the connection's credentials.
    async fn fetch_token(
        &self,
        server: &TokenServer,
        scopes: &[String],
        reference: &str,
    ) -> Result<TokenResponse> {
        let creds = self.credentials();
        let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let (grant, req) = match creds {
            Some(Credentials {
                identity_token: Some(refresh),
                ..
            }) => {
                let joined = scope_refs.join(" ");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", CLIENT_ID),
                ];
                if let Some(s) = &server.service {
                    form.push(("service", s.as_str()));
                }
                if !joined.is_empty() {
                    form.push(("scope", &joined));
                }
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                let req = self
                    .http
                    .post(&server.realm)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body);
                ("refresh_token", req)
            }
            Some(c) if !c.username.is_empty() || !c.password.is_empty() => {
                let url = challenge::token_url(
                    &server.realm,
                    server.service.as_deref(),
                    &scope_refs,
                    Some(&c.username),
                )?;
                let req = self
                    .http
                    .get(url)
                    .header(reqwest::header::AUTHORIZATION, c.basic_auth_header());
                ("basic", req)
            }
            _ => {
                let url = challenge::token_url(
                    &server.realm,
                    server.service.as_deref(),
                    &scope_refs,
                    None,
                )?;
                ("anonymous", self.http.get(url))
            }
        };
        tracing::debug!(realm = %server.realm, scopes = %scope_refs.join(" "), grant, "requesting a token");
        let res = req
            .send()
            .await
            .map_err(|e| self.transport(reference, &e))?;
        let status = res.status().as_u16();
        let body = res
            .bytes()
            .await
            .map_err(|e| self.transport(reference, &e))?;
        match status {
            200 => Ok(TokenResponse::parse(&body)?),
            401 | 403 => Err(RegistryError::Unauthorized {
                reference: reference.to_string(),
                registry: self.domain.clone(),
                hint: format!(
                    ": the token server {} refused {} (HTTP {status}){}",
                    server.realm,
                    match grant {
                        "refresh_token" => "the stored identity token".to_string(),
                        "basic" => "the stored credentials".to_string(),
                        _ => format!("anonymous access; log in with `kiln login {}`", self.domain),
                    },
                    token_server_says(&body)
                ),
            }),
            s => Err(RegistryError::Http {
                reference: reference.to_string(),
                registry: server.realm.clone(),
                status: s,
                body: token_server_says(&body)
                    .trim_start_matches(": ")
                    .to_string(),
            }),
        }
    }

    /// Checks `creds` for `kiln login` against a token server the way docker does: the
    /// OAuth2 password grant with `access_type=offline` (its refresh token becomes the
    /// identity token); a server without OAuth2 (404, 405, 400) is asked with a Basic GET.
    pub(crate) async fn login_with_token_server(
        &self,
        server: &TokenServer,
        creds: &Credentials,
    ) -> Result<LoginOutcome> {
        let reference = self.domain.clone();
        let mut form = vec![
            ("grant_type", "password"),
            ("username", creds.username.as_str()),
            ("password", creds.password.as_str()),
            ("client_id", CLIENT_ID),
            ("access_type", "offline"),
        ];
        if let Some(s) = &server.service {
            form.push(("service", s.as_str()));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        tracing::debug!(realm = %server.realm, "login: OAuth2 password grant");
        let res = self
            .http
            .post(&server.realm)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(&reference, &e))?;
        let status = res.status().as_u16();
        let body = res
            .bytes()
            .await
            .map_err(|e| self.transport(&reference, &e))?;
        let (status, body) = if matches!(status, 400 | 404 | 405) {
            tracing::debug!(realm = %server.realm, status, "no OAuth2 password grant; login with a Basic GET");
            let mut url = reqwest::Url::parse(&challenge::token_url(
                &server.realm,
                server.service.as_deref(),
                &[],
                Some(&creds.username),
            )?)
            .map_err(|e| self.protocol(&reference, format!("token realm: {e}")))?;
            url.query_pairs_mut()
                .append_pair("offline_token", "true")
                .append_pair("client_id", CLIENT_ID);
            let res = self
                .http
                .get(url)
                .header(reqwest::header::AUTHORIZATION, creds.basic_auth_header())
                .send()
                .await
                .map_err(|e| self.transport(&reference, &e))?;
            let status = res.status().as_u16();
            let body = res
                .bytes()
                .await
                .map_err(|e| self.transport(&reference, &e))?;
            (status, body)
        } else {
            (status, body)
        };
        match status {
            200 => Ok(LoginOutcome {
                identity_token: TokenResponse::parse(&body)?.refresh_token,
            }),
            401 | 403 => Err(RegistryError::Unauthorized {
                reference: reference.clone(),
                registry: self.domain.clone(),
                hint: format!(
                    ": incorrect username or password (the token server {} answered HTTP {status}{})",
                    server.realm,
                    token_server_says(&body)
                ),
            }),
            s => Err(RegistryError::Http {
                reference,
                registry: server.realm.clone(),
                status: s,
                body: token_server_says(&body)
                    .trim_start_matches(": ")
                    .to_string(),
            }),
        }
    }

    /// Mounts blob `digest` from repository `from` into `to` (same registry), with a token
    /// that may pull `from` and push `to`. `Ok(false)` when the registry opened an upload
    /// session instead (it does not hold the blob there, or the mount is not allowed); the
    /// session is cancelled.
    pub(crate) async fn mount_blob(
        &self,
        to: &str,
        from: &str,
        digest: &str,
        reference: &str,
    ) -> Result<bool> {
        let token = match self.auth_scheme(reference).await? {
            AuthScheme::Token(server) => Some(
                self.token_for(
                    &server,
                    &[
                        format!("repository:{to}:pull,push"),
                        format!("repository:{from}:pull"),
                    ],
                    reference,
                )
                .await?,
            ),
            AuthScheme::Plain => None,
        };
        let mut url = reqwest::Url::parse(&self.url(&format!("/v2/{to}/blobs/uploads/")))
            .map_err(|e| self.protocol(reference, format!("upload URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let res = self
            .request(reqwest::Method::POST, url.as_str(), token.as_deref())
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await
            .map_err(|e| self.transport(reference, &e))?;
        let status = res.status().as_u16();
        match status {
            201 => Ok(true),
            202 => {
                if let Some(loc) = res
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    let _ = self
                        .request(reqwest::Method::DELETE, &self.url(loc), token.as_deref())
                        .send()
                        .await;
                }
                Ok(false)
            }
            s => {
                let body = res.bytes().await.unwrap_or_default();
                Err(self.status_error(reference, s, &body))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_server_errors_are_summarized() {
        assert_eq!(
            token_server_says(
                br#"{"error":"invalid_grant","error_description":"bad refresh token"}"#
            ),
            ": invalid_grant: bad refresh token"
        );
        assert_eq!(
            token_server_says(br#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#),
            ": UNAUTHORIZED: no"
        );
        assert_eq!(token_server_says(b"  denied \n"), ": denied");
        assert_eq!(token_server_says(b""), "");
        assert_eq!(token_server_says(&[b'x'; 500]).len(), 202);
    }
}
