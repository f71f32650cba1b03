//! One connection to one registry: scheme (HTTPS, or plain HTTP for loopback and
//! `--insecure-registry` hosts), credentials from docker's config, an [`oci_client::Client`]
//! for the Distribution API, retries with backoff, and errors that carry the registry's own
//! code and message, the reference and the HTTP status.
//!
//! oci-client does almost everything; a plain `reqwest` client (the same reqwest) is used only
//! where it falls short: manifest GETs (oci-client drops the HTTP status and the
//! `Content-Type` of a manifest), the HTTPS probe of loopback registries, verifying
//! credentials for `kiln login` (oci-client's `auth` never checks Basic credentials), and
//! token auth and blob mounts ([`super::token`]: oci-client asks tokens for one repository
//! only and knows no identity tokens).
//!
//! Everything here is async; the public entry points of [`super::pull`] and [`super::push`]
//! create a tokio runtime with [`runtime`] and block on it, so the rest of kiln stays sync.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use super::challenge;
use super::credentials::{Credentials, DockerConfig};
use super::token::{AuthScheme, CachedToken, LoginOutcome};
use crate::cache::Digest;
use crate::reference::Reference;

/// Accept header for manifests: every kind kiln can read.
pub const MANIFEST_ACCEPT: &[&str] = &[
    crate::cache::image::media::OCI_MANIFEST,
    crate::cache::image::media::OCI_INDEX,
    crate::cache::image::media::DOCKER_MANIFEST,
    crate::cache::image::media::DOCKER_MANIFEST_LIST,
];

/// Manifests larger than this are refused (the Distribution default limit is 4 MiB).
const MANIFEST_LIMIT: usize = 16 << 20;
/// Attempts of one request (or one blob transfer) before giving up.
const ATTEMPTS: u32 = 5;
/// First retry delay; doubled after each failure.
const BACKOFF: Duration = Duration::from_millis(200);

/// Errors talking to a registry. None of them ever contains a password or a token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an error document (`{"errors":[{"code":…,"message":…}]}`).
    #[error("{reference}: {registry} says {code}: {message}{}", http_status(.status))]
    Api {
        reference: String,
        registry: String,
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// An error status without an error document.
    #[error("{reference}: {registry} answered HTTP {status}{}", body_excerpt(.body))]
    Http {
        reference: String,
        registry: String,
        status: u16,
        body: String,
    },
    #[error("{reference}: {registry} requires authentication (HTTP 401){hint}")]
    Unauthorized {
        reference: String,
        registry: String,
        hint: String,
    },
    #[error("{reference}: cannot reach {registry}: {message}")]
    Transport {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{reference}: {what} from {registry} does not match its digest: expected {expected}, got {actual}; nothing was stored")]
    DigestMismatch {
        reference: String,
        registry: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: {registry} broke the protocol: {message}")]
    Protocol {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{reference}: no image for platform {platform} (the index has: {})", available.join(", "))]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: Vec<String>,
    },
    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },
    #[error("invalid reference {input:?}: {source}")]
    Reference {
        input: String,
        #[source]
        source: crate::reference::ReferenceError,
    },
    #[error("kiln config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot start the registry client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
    #[error(transparent)]
    Challenge(#[from] challenge::ChallengeError),
    #[error(transparent)]
    Content(#[from] crate::cache::content::ContentError),
    #[error(transparent)]
    Store(#[from] crate::cache::store::StoreError),
    #[error(transparent)]
    Gc(#[from] crate::cache::gc::GcError),
    #[error(transparent)]
    Export(#[from] crate::cache::export::ExportError),
    #[error(transparent)]
    BuildCache(#[from] crate::cache::buildcache::BuildCacheError),
    #[error(transparent)]
    Lock(#[from] crate::cache::lock::LockError),
    #[error(transparent)]
    LayerBlob(#[from] crate::cache::layer_blob::LayerBlobError),
    #[error("unpacking layer {blob}: {message}")]
    Unpack { blob: Digest, message: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn http_status(status: &Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn body_excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(200).collect();
    format!(": {cut}")
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// Worth another attempt: connection problems and server-side (5xx, 429) failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Api { status, code, .. } => {
                status.is_some_and(|s| s >= 500 || s == 429) || code == "TOOMANYREQUESTS"
            }
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::Api { status, code, .. } => {
                *status == Some(404)
                    || matches!(
                        code.as_str(),
                        "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "NOT_FOUND"
                    )
            }
            RegistryError::Http { status, .. } => *status == 404,
            _ => false,
        }
    }
}

/// A tokio runtime for one registry operation (kiln is sync everywhere else).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("kiln-registry")
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)
}

/// Registry settings of one command: which hosts may use plain HTTP, where credentials are.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `--insecure-registry` hosts plus the config file's `insecure-registries`.
    pub insecure: Vec<String>,
    /// Docker's config directory (None: `$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<PathBuf>,
}

/// kiln's config file: `$KILN_CONFIG`, else `/etc/kiln/config.json`.
pub fn config_path() -> PathBuf {
    std::env::var_os("KILN_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/kiln/config.json"))
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default, rename = "insecure-registries")]
    insecure_registries: Vec<String>,
}

impl RegistrySettings {
    /// The `--insecure-registry` flags plus the config file's list (a missing file is fine).
    pub fn load(insecure_flags: &[String]) -> Result<RegistrySettings> {
        Self::load_from(&config_path(), insecure_flags)
    }

    pub fn load_from(path: &Path, insecure_flags: &[String]) -> Result<RegistrySettings> {
        let file: ConfigFile = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(source) => {
                return Err(RegistryError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut insecure: Vec<String> = insecure_flags.to_vec();
        insecure.extend(file.insecure_registries);
        Ok(RegistrySettings {
            insecure,
            docker_config: None,
        })
    }

    fn docker_config(&self) -> Result<DockerConfig> {
        Ok(match &self.docker_config {
            Some(d) => DockerConfig::new(d),
            None => DockerConfig::from_env()?,
        })
    }

    /// Whether `host[:port]` may be spoken to over plain HTTP: loopback (`localhost`,
    /// `127.0.0.0/8`, `::1`) always, others only when listed (by `host:port` or `host`).
    pub fn allows_http(&self, domain: &str) -> bool {
        let host = host_of(domain);
        if host == "localhost" {
            return true;
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
        }
        self.insecure.iter().any(|i| {
            let i = super::credentials::convert_to_hostname(i.trim());
            i == domain || i == host
        })
    }
}

/// `host` of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(domain: &str) -> &str {
    if domain.starts_with('[') {
        return domain
            .split(']')
            .next()
            .map_or(domain, |h| &domain[..=h.len()]);
    }
    domain.split(':').next().unwrap_or(domain)
}

/// An open registry: the address to use, the credentials, the clients.
#[derive(Clone)]
pub struct Registry {
    /// As in references (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Where requests go (`index.docker.io` for `docker.io`).
    api_host: String,
    scheme: &'static str,
    auth: RegistryAuth,
    /// The stored credentials, for token requests (`push::token`).
    creds: Option<Credentials>,
    has_credentials: bool,
    pub(crate) client: oci_client::Client,
    pub(super) http: reqwest::Client,
    /// How the registry authenticates, once known (`GET /v2/`).
    pub(super) scheme_cache: Arc<Mutex<Option<AuthScheme>>>,
    /// Bearer tokens by their (sorted, space-joined) scopes; locked while a token is
    /// fetched, so parallel blobs share one request.
    pub(super) token_cache: Arc<tokio::sync::Mutex<HashMap<String, CachedToken>>>,
}

/// What oci-client gets for registries without token auth, and as the fallback with which
/// it renews a token that expired in its cache. An identity token is no Basic password: it
/// is only ever exchanged for access tokens (`push::token`), so oci-client gets nothing.
fn to_auth(c: Option<&Credentials>) -> RegistryAuth {
    match c {
        Some(c) if c.identity_token.is_some() => RegistryAuth::Anonymous,
        Some(c) if !c.username.is_empty() || !c.password.is_empty() => {
            RegistryAuth::Basic(c.username.clone(), c.password.clone())
        }
        _ => RegistryAuth::Anonymous,
    }
}

impl Registry {
    /// Connects to `domain` with the credentials docker's config holds for it.
    pub async fn connect(domain: &str, settings: &RegistrySettings) -> Result<Registry> {
        let creds = settings.docker_config()?.lookup(domain)?;
        Self::connect_with(domain, settings, creds.as_ref()).await
    }

    /// Connects with the given credentials (None: anonymous).
    pub async fn connect_with(
        domain: &str,
        settings: &RegistrySettings,
        creds: Option<&Credentials>,
    ) -> Result<Registry> {
        let api_host = if domain == crate::reference::DEFAULT_DOMAIN {
            "index.docker.io".to_string()
        } else {
            domain.to_string()
        };
        let insecure = settings.allows_http(domain);
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| RegistryError::Transport {
                reference: domain.to_string(),
                registry: domain.to_string(),
                message: error_chain(&e),
            })?;
        let scheme = if insecure && !probe_https(&http, &api_host).await {
            tracing::debug!(registry = domain, "using plain HTTP");
            "http"
        } else {
            "https"
        };
        let config = ClientConfig {
            protocol: if scheme == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: insecure,
            use_monolithic_push: true,
            platform_resolver: None,
            max_concurrent_upload: 4,
            max_concurrent_download: 4,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        Ok(Registry {
            domain: domain.to_string(),
            api_host,
            scheme,
            auth: to_auth(creds),
            creds: creds.cloned(),
            has_credentials: creds.is_some(),
            client: oci_client::Client::new(config),
            http,
            scheme_cache: Arc::default(),
            token_cache: Arc::default(),
        })
    }

    /// The credentials of this connection (None: anonymous).
    pub(super) fn credentials(&self) -> Option<&Credentials> {
        self.creds.as_ref()
    }

    /// The oci-client reference for `path` (the tag only matters for manifest requests).
    pub fn oci_ref(&self, path: &str, tag_or_digest: Option<&str>) -> oci_client::Reference {
        match tag_or_digest {
            Some(d) if d.contains(':') => {
                oci_client::Reference::with_digest(self.domain.clone(), path.into(), d.into())
            }
            Some(t) => oci_client::Reference::with_tag(self.domain.clone(), path.into(), t.into()),
            None => oci_client::Reference::with_tag(
                self.domain.clone(),
                path.into(),
                crate::reference::DEFAULT_TAG.into(),
            ),
        }
    }

    /// Authenticates for `op` on `repo`. Under token auth, kiln fetches the token itself
    /// (`push::token`: identity tokens, scopes of its own) and puts it into oci-client's
    /// cache for `repo` and `op`; otherwise oci-client handles Basic auth. Returns the
    /// bearer token, if any.
    pub async fn authenticate(
        &self,
        repo: &oci_client::Reference,
        op: RegistryOperation,
        reference: &str,
    ) -> Result<Option<String>> {
        if let AuthScheme::Token(server) = self.auth_scheme(reference).await? {
            let actions = match op {
                RegistryOperation::Pull => "pull",
                RegistryOperation::Push => "pull,push",
            };
            let scope = format!("repository:{}:{actions}", repo.repository());
            let token = self.token_for(&server, &[scope], reference).await?;
            // The fallback oci-client renews expired tokens with (first call wins).
            self.client
                .store_auth_if_needed(repo.resolve_registry(), &self.auth)
                .await;
            // A push token also serves oci-client's pull-side requests (HEAD of a blob).
            let ops: &[RegistryOperation] = match op {
                RegistryOperation::Pull => &[RegistryOperation::Pull],
                RegistryOperation::Push => &[RegistryOperation::Push, RegistryOperation::Pull],
            };
            for op in ops {
                self.client
                    .auth(repo, &RegistryAuth::Bearer(token.clone()), *op)
                    .await
                    .map_err(|e| self.map_err(reference, e))?;
            }
            return Ok(Some(token));
        }
        retry(|| async {
            self.client
                .auth(repo, &self.auth, op)
                .await
                .map_err(|e| self.map_err(reference, e))
        })
        .await
    }

    /// Before each blob transfer under token auth: puts a fresh token into oci-client's
    /// cache (from kiln's cache, renewed shortly before it expires), so a long pull never
    /// runs into an expired token that oci-client would renew without the identity token.
    pub async fn renew_token(
        &self,
        repo: &oci_client::Reference,
        op: RegistryOperation,
        reference: &str,
    ) -> Result<()> {
        if matches!(self.auth_scheme(reference).await?, AuthScheme::Token(_)) {
            self.authenticate(repo, op, reference).await?;
        }
        Ok(())
    }

    /// A request to `url` on this registry, with the authorization for `token` (from
    /// [`Registry::authenticate`]) or the Basic credentials.
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(a) = self.authorization(token) {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req
    }

    /// The absolute URL of API path `path` (`/v2/...`), or of a `Location` the registry
    /// answered (absolute, or relative to the registry).
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}://{}{}", self.scheme, self.api_host, path)
        }
    }

    fn authorization(&self, token: Option<&str>) -> Option<String> {
        match (token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => Some(Credentials::basic(u, p).basic_auth_header()),
            _ => None,
        }
    }

    /// GETs a manifest (by tag or digest): its bytes, media type and digest (verified against
    /// the requested digest and the `Docker-Content-Digest` header).
    pub async fn get_manifest(
        &self,
        path: &str,
        tag_or_digest: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest)> {
        let repo = self.oci_ref(path, Some(tag_or_digest));
        let token = self
            .authenticate(&repo, RegistryOperation::Pull, reference)
            .await?;
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme, self.api_host, path, tag_or_digest
        );
        retry(|| async {
            let mut req = self
                .http
                .get(&url)
                .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT.join(", "));
            if let Some(a) = self.authorization(token.as_deref()) {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let res = req
                .send()
                .await
                .map_err(|e| self.transport(reference, &e))?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = res
                .bytes()
                .await
                .map_err(|e| self.transport(reference, &e))?;
            if !status.is_success() {
                return Err(self.status_error(reference, status.as_u16(), &body));
            }
            if body.len() > MANIFEST_LIMIT {
                return Err(self.protocol(
                    reference,
                    format!("manifest of {} bytes is too large", body.len()),
                ));
            }
            let actual = Digest::of(&body);
            let header_digest = headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let expected = if tag_or_digest.contains(':') {
                Some(tag_or_digest.to_string())
            } else {
                header_digest.filter(|h| h.starts_with("sha256:"))
            };
            if let Some(expected) = expected {
                if expected != actual.as_str() {
                    return Err(RegistryError::DigestMismatch {
                        reference: reference.to_string(),
                        registry: self.domain.clone(),
                        what: "the manifest".into(),
                        expected,
                        actual: actual.to_string(),
                    });
                }
            }
            let content_type = headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
                .unwrap_or_default();
            Ok((body.to_vec(), content_type, actual))
        })
        .await
    }

    /// Checks credentials the way `docker login` does: `GET /v2/` with them; when the
    /// registry uses token auth, a token request to its realm (`push::token`). Returns the
    /// identity token to store instead of the password, when the token server issued one.
    pub async fn verify_login(&self, creds: &Credentials) -> Result<LoginOutcome> {
        let reference = self.domain.clone();
        let url = format!("{}://{}/v2/", self.scheme, self.api_host);
        let res = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, creds.basic_auth_header())
            .send()
            .await
            .map_err(|e| self.transport(&reference, &e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(LoginOutcome {
                identity_token: None,
            });
        }
        if status.as_u16() != 401 {
            let body = res.bytes().await.unwrap_or_default();
            return Err(self.status_error(&reference, status.as_u16(), &body));
        }
        let AuthScheme::Token(server) = self.auth_scheme(&reference).await? else {
            return Err(self.rejected(&reference));
        };
        self.login_with_token_server(&server, creds).await
    }

    fn rejected(&self, reference: &str) -> RegistryError {
        RegistryError::Unauthorized {
            reference: reference.to_string(),
            registry: self.domain.clone(),
            hint: ": incorrect username or password".into(),
        }
    }

    /// A 401, with what the registry said (`UNAUTHORIZED: authentication required`).
    fn unauthorized(&self, reference: &str, said: Option<String>) -> RegistryError {
        let said = said
            .map(|s| format!(": {s};"))
            .unwrap_or_else(|| ":".into());
        RegistryError::Unauthorized {
            reference: reference.to_string(),
            registry: self.domain.clone(),
            hint: if self.has_credentials {
                format!("{said} the stored credentials were refused or lack access")
            } else {
                format!("{said} log in with `kiln login {}`", self.domain)
            },
        }
    }

    pub(crate) fn transport(&self, reference: &str, e: &dyn std::error::Error) -> RegistryError {
        RegistryError::Transport {
            reference: reference.to_string(),
            registry: self.domain.clone(),
            message: error_chain(e),
        }
    }

    pub(crate) fn protocol(&self, reference: &str, message: String) -> RegistryError {
        RegistryError::Protocol {
            reference: reference.to_string(),
            registry: self.domain.clone(),
            message,
        }
    }

    /// An error for an HTTP error status and its body (an error document, or not).
    pub(crate) fn status_error(&self, reference: &str, status: u16, body: &[u8]) -> RegistryError {
        match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(env) if !env.errors.is_empty() => self.envelope_error(reference, Some(status), &env),
            _ if status == 401 => self.unauthorized(reference, None),
            _ => RegistryError::Http {
                reference: reference.to_string(),
                registry: self.domain.clone(),
                status,
                body: String::from_utf8_lossy(body).into_owned(),
            },
        }
    }

    fn envelope_error(
        &self,
        reference: &str,
        status: Option<u16>,
        env: &OciEnvelope,
    ) -> RegistryError {
        let first = &env.errors[0];
        let code = serde_json::to_value(&first.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", first.code));
        let mut message = first.message.clone();
        if message.is_empty() {
            message = code.to_lowercase().replace('_', " ");
        }
        if code == "UNAUTHORIZED" || status == Some(401) {
            return self.unauthorized(reference, Some(format!("{code}: {message}")));
        }
        RegistryError::Api {
            reference: reference.to_string(),
            registry: self.domain.clone(),
            status,
            code,
            message,
        }
    }

    /// Maps an oci-client error to ours.
    pub(crate) fn map_err(&self, reference: &str, e: OciDistributionError) -> RegistryError {
        match e {
            OciDistributionError::RegistryError { envelope, .. } if !envelope.errors.is_empty() => {
                self.envelope_error(reference, None, &envelope)
            }
            OciDistributionError::ServerError { code, message, .. } => {
                self.status_error(reference, code, message.as_bytes())
            }
            OciDistributionError::UnauthorizedError { .. } => self.unauthorized(reference, None),
            OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
                reference: reference.to_string(),
                registry: self.domain.clone(),
                hint: ": the token server refused the credentials".into(),
            },
            // `error_for_status` errors (HEAD of a blob) carry only the status.
            OciDistributionError::RequestError(e) => match e.status() {
                Some(status) => self.status_error(reference, status.as_u16(), b""),
                None => self.transport(reference, &e),
            },
            OciDistributionError::IoError(e) => self.io_error(reference, "a blob", e),
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => RegistryError::DigestMismatch {
                reference: reference.to_string(),
                registry: self.domain.clone(),
                what: "a blob".into(),
                expected,
                actual,
            },
            other => self.protocol(reference, other.to_string()),
        }
    }

    /// Maps an error of a blob stream (oci-client reports digest failures as I/O errors).
    pub(crate) fn io_error(&self, reference: &str, what: &str, e: std::io::Error) -> RegistryError {
        if let Some(DigestError::VerificationError { expected, actual }) =
            e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
        {
            return RegistryError::DigestMismatch {
                reference: reference.to_string(),
                registry: self.domain.clone(),
                what: what.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        self.transport(reference, &e)
    }
}

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Whether `host` speaks HTTPS (any TLS answer counts, even with a bad certificate).
async fn probe_https(http: &reqwest::Client, host: &str) -> bool {
    let res = http
        .get(format!("https://{host}/v2/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match res {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(host, error = %error_chain(&e), "HTTPS probe failed");
            false
        }
    }
}

/// An error and its sources, `: `-joined (reqwest hides the interesting part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Runs `f` until it succeeds, fails for good, or [`ATTEMPTS`] are used, sleeping
/// 200 ms, 400 ms, 800 ms… between attempts.
pub async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = BACKOFF;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "retrying in {} ms", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Parses a reference given on the command line, normalized with `:latest`.
pub fn parse_reference(input: &str) -> Result<Reference> {
    Reference::parse(input)
        .map(Reference::with_default_tag)
        .map_err(|source| RegistryError::Reference {
            input: input.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let s = RegistrySettings {
            insecure: vec!["reg.example:5000".into(), "other.example".into()],
            docker_config: None,
        };
        for ok in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "reg.example:5000",
            "other.example:443",
        ] {
            assert!(s.allows_http(ok), "{ok}");
        }
        for no in [
            "reg.example",
            "reg.example:5001",
            "docker.io",
            "10.0.0.1:5000",
        ] {
            assert!(!s.allows_http(no), "{no}");
        }
    }

    #[test]
    fn config_file_adds_insecure_registries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, br#"{"insecure-registries":["10.0.0.1:5000"]}"#).unwrap();
        let s = RegistrySettings::load_from(&p, &["a.example".into()]).unwrap();
        assert!(s.allows_http("10.0.0.1:5000"));
        assert!(s.allows_http("a.example:1"));
        std::fs::write(&p, b"{").unwrap();
        let e = RegistrySettings::load_from(&p, &[]).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let missing = RegistrySettings::load_from(&dir.path().join("none"), &[]).unwrap();
        assert!(missing.insecure.is_empty());
    }

    #[test]
    fn identity_tokens_are_never_basic_passwords() {
        let id = Credentials::identity_token("alice", "refresh-secret");
        assert!(matches!(to_auth(Some(&id)), RegistryAuth::Anonymous));
        let basic = Credentials::basic("alice", "pw");
        assert!(
            matches!(to_auth(Some(&basic)), RegistryAuth::Basic(u, p) if u == "alice" && p == "pw")
        );
        assert!(matches!(to_auth(None), RegistryAuth::Anonymous));
    }

    #[test]
    fn retryable_errors() {
        let api = |status, code: &str| RegistryError::Api {
            reference: "r".into(),
            registry: "h".into(),
            status,
            code: code.into(),
            message: "m".into(),
        };
        assert!(api(Some(503), "UNAVAILABLE").is_retryable());
        assert!(!api(Some(404), "MANIFEST_UNKNOWN").is_retryable());
        assert!(api(Some(404), "MANIFEST_UNKNOWN").is_not_found());
        assert!(api(None, "TOOMANYREQUESTS").is_retryable());
        let shown = api(Some(404), "MANIFEST_UNKNOWN").to_string();
        assert_eq!(shown, "r: h says MANIFEST_UNKNOWN: m (HTTP 404)");
    }
}
