//! Docker-compatible registry credentials, so `docker login` works for kiln as it is.
//!
//! The source of truth is docker's `config.json` in `$DOCKER_CONFIG`, else `~/.docker`:
//!
//! ```json
//! {
//!   "auths": { "https://index.docker.io/v1/": { "auth": "dXNlcjpwYXNz" },
//!              "registry.example": { "auth": "…", "identitytoken": "…" } },
//!   "credHelpers": { "gcr.io": "gcloud" },
//!   "credsStore": "desktop"
//! }
//! ```
//!
//! Lookup follows docker's CLI (`cli/config/configfile`, `cli/config/credentials`):
//! a registry's `credHelpers` entry wins, then `credsStore`; with a helper configured,
//! `docker-credential-<name> get` is the only source (its "credentials not found" means
//! none). Without one, `auths` is read: the exact key first (`https://index.docker.io/v1/`
//! for Docker Hub, the bare host otherwise), then any key that names the same host
//! (`https://host`, `http://host/v2/`, …).
//!
//! `store` (login) and `erase` (logout) go to the helper when one is configured, and
//! otherwise rewrite `auths` atomically (temp file, mode 0600, rename), keeping every other
//! key of the file as it was.
//!
//! Secrets never appear in error messages or `Debug` output.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

/// The server address docker uses as the key for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The username a credential helper returns when its secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// File name of docker's client configuration.
const CONFIG_FILE: &str = "config.json";

/// Why credentials could not be read, stored or erased. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `$DOCKER_CONFIG` nor `$HOME` is set.
    #[error("cannot find the docker config directory: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir,
    #[error("cannot read docker config {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The config file is not valid JSON, or its known keys have the wrong types.
    #[error("malformed docker config {path}: {reason} at line {line}, column {column}")]
    Malformed {
        path: PathBuf,
        reason: &'static str,
        line: usize,
        column: usize,
    },
    /// An `auths` entry cannot be decoded.
    #[error("malformed docker config {path}: auths entry {key:?}: {reason}")]
    InvalidEntry {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
    #[error("cannot write docker config {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// `credsStore`/`credHelpers` names something that cannot be a helper program.
    #[error("invalid credential helper name {name:?}")]
    InvalidHelperName { name: String },
    #[error("credential helper {program} not found in PATH")]
    HelperNotFound { program: String },
    #[error("cannot run credential helper {program}: {source}")]
    HelperSpawn { program: String, source: io::Error },
    /// The helper exited unsuccessfully; `message` is its (trimmed, shortened) output.
    #[error("credential helper {program} {action} failed ({status}): {message}")]
    HelperFailed {
        program: String,
        action: &'static str,
        status: String,
        message: String,
    },
    /// The helper succeeded but printed something that is not its JSON answer.
    #[error("credential helper {program} {action} printed malformed output: {reason}")]
    HelperOutput {
        program: String,
        action: &'static str,
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, CredentialsError>;

/// Credentials for one registry: a username and password, or (when `identity_token` is
/// set) an OAuth2 identity/refresh token obtained by `docker login`, with which the token
/// server is asked for access tokens instead of the password. `Debug` redacts the secrets.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Username and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            identity_token: None,
        }
    }

    /// An identity token (the username may be empty).
    pub fn identity_token(username: impl Into<String>, token: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: String::new(),
            identity_token: Some(token.into()),
        }
    }

    /// The `Authorization` header value for HTTP Basic auth: `Basic base64(user:pass)`.
    pub fn basic_auth_header(&self) -> String {
        format!(
            "Basic {}",
            base64::encode(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }

    fn is_empty(&self) -> bool {
        self.username.is_empty() && self.password.is_empty() && self.identity_token.is_none()
    }
}

/// Docker's config directory from the given `DOCKER_CONFIG` and `HOME` values.
pub fn config_dir_from(docker_config: Option<&OsStr>, home: Option<&OsStr>) -> Result<PathBuf> {
    match (
        docker_config.filter(|d| !d.is_empty()),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(d), _) => Ok(PathBuf::from(d)),
        (None, Some(h)) => Ok(Path::new(h).join(".docker")),
        (None, None) => Err(CredentialsError::NoConfigDir),
    }
}

/// Docker's config directory of this process: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn config_dir() -> Result<PathBuf> {
    config_dir_from(
        std::env::var_os("DOCKER_CONFIG").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// Looks up the credentials for `registry_host` in the process's docker config.
pub fn lookup(registry_host: &str) -> Result<Option<Credentials>> {
    DockerConfig::from_env()?.lookup(registry_host)
}

/// Stores credentials for `registry_host` (what `docker login` does).
pub fn store(registry_host: &str, credentials: &Credentials) -> Result<()> {
    DockerConfig::from_env()?.store(registry_host, credentials)
}

/// Removes the credentials for `registry_host` (what `docker logout` does).
pub fn erase(registry_host: &str) -> Result<()> {
    DockerConfig::from_env()?.erase(registry_host)
}

/// `https://host/v2/` → `host`: strips the scheme and any path, like docker's
/// `ConvertToHostname`.
pub fn convert_to_hostname(address: &str) -> &str {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    rest.split('/').next().unwrap_or(rest)
}

/// The registry host a login address names (`https://index.docker.io/v1/` → `docker.io`,
/// `host:5000/x` → `host:5000`); empty → Docker Hub.
pub fn registry_host(address: &str) -> String {
    let host = convert_to_hostname(address.trim());
    if host.is_empty() || is_docker_hub(host) {
        crate::reference::DEFAULT_DOMAIN.to_string()
    } else {
        host.to_string()
    }
}

/// Whether a hostname is Docker Hub's (whose credentials are stored under [`DOCKER_HUB_KEY`]).
fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        crate::reference::DEFAULT_DOMAIN
            | "index.docker.io"
            | "registry-1.docker.io"
            | "registry.hub.docker.com"
    )
}

/// The key docker stores a registry's credentials under: [`DOCKER_HUB_KEY`] for Docker Hub,
/// the bare `host[:port]` otherwise. Accepts hosts and URLs.
pub fn server_key(registry: &str) -> String {
    let host = convert_to_hostname(registry.trim());
    if is_docker_hub(host) {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// Whether a config key (`host`, `https://host/v1/`, …) names the same registry as `key`.
fn same_registry(config_key: &str, key: &str) -> bool {
    config_key == key || server_key(config_key) == key
}

/// A docker config directory, with the `PATH` used to find credential helpers.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    dir: PathBuf,
    helper_path: Option<OsString>,
}

impl DockerConfig {
    /// The config in `dir`; helpers are searched in the process's `PATH`.
    pub fn new(dir: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig {
            dir: dir.into(),
            helper_path: None,
        }
    }

    /// The config of this process ([`config_dir`]).
    pub fn from_env() -> Result<DockerConfig> {
        Ok(DockerConfig::new(config_dir()?))
    }

    /// Searches credential helpers in `path` (a `PATH`-style list) instead of `$PATH`; the
    /// helper also runs with it as its `PATH`.
    pub fn with_helper_path(mut self, path: impl Into<OsString>) -> DockerConfig {
        self.helper_path = Some(path.into());
        self
    }

    /// The path of `config.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Reads the config as a JSON object; a missing file is an empty config.
    fn read(&self) -> Result<Map<String, Value>> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => {
                tracing::warn!(path = %path.display(), error = %source, "cannot read docker config");
                return Err(CredentialsError::Read { path, source });
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        // serde_json's messages may quote values (secrets), so keep only the position.
        serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|e| {
            let err = CredentialsError::Malformed {
                reason: match e.classify() {
                    serde_json::error::Category::Data => "not a JSON object",
                    serde_json::error::Category::Eof => "truncated JSON",
                    _ => "invalid JSON",
                },
                line: e.line(),
                column: e.column(),
                path: path.clone(),
            };
            tracing::warn!(error = %err, "malformed docker config");
            err
        })
    }

    fn malformed(&self, reason: &'static str) -> CredentialsError {
        CredentialsError::Malformed {
            path: self.path(),
            reason,
            line: 0,
            column: 0,
        }
    }

    /// The helper configured for `key`: its `credHelpers` entry, else `credsStore`.
    fn helper_for(&self, config: &Map<String, Value>, key: &str) -> Result<Option<String>> {
        if let Some(helpers) = config.get("credHelpers") {
            let helpers = helpers
                .as_object()
                .ok_or_else(|| self.malformed("credHelpers is not an object"))?;
            let found = helpers.get(key).or_else(|| {
                helpers
                    .iter()
                    .find(|(k, _)| same_registry(k, key))
                    .map(|(_, v)| v)
            });
            if let Some(name) = found {
                let name = name
                    .as_str()
                    .ok_or_else(|| self.malformed("credHelpers value is not a string"))?;
                if !name.is_empty() {
                    return Ok(Some(name.to_string()));
                }
            }
        }
        match config.get("credsStore") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.malformed("credsStore is not a string")),
        }
    }

    fn auths<'a>(&self, config: &'a Map<String, Value>) -> Result<Option<&'a Map<String, Value>>> {
        match config.get("auths") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.malformed("auths is not an object")),
        }
    }

    /// The credentials for `registry_host` (`docker.io`, `host:5000`, or a URL), if any.
    pub fn lookup(&self, registry_host: &str) -> Result<Option<Credentials>> {
        let key = server_key(registry_host);
        let config = self.read()?;
        if let Some(helper) = self.helper_for(&config, &key)? {
            return self.helper(&helper)?.get(&key);
        }
        let Some(auths) = self.auths(&config)? else {
            return Ok(None);
        };
        let entry = auths
            .get_key_value(key.as_str())
            .or_else(|| auths.iter().find(|(k, _)| same_registry(k, &key)));
        match entry {
            None => Ok(None),
            Some((k, v)) => self.decode_entry(k, v),
        }
    }

    /// Decodes one `auths` entry: `auth` (base64 `user:pass`), else the legacy
    /// `username`/`password` fields; plus `identitytoken`.
    fn decode_entry(&self, key: &str, entry: &Value) -> Result<Option<Credentials>> {
        let invalid = |reason| CredentialsError::InvalidEntry {
            path: self.path(),
            key: key.to_string(),
            reason,
        };
        let entry = entry.as_object().ok_or_else(|| invalid("not an object"))?;
        let field = |name: &str| -> Result<Option<&str>> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(invalid("a field is not a string")),
            }
        };
        let mut creds = Credentials::default();
        if let Some(auth) = field("auth")? {
            let decoded =
                base64::decode(auth).ok_or_else(|| invalid("auth is not valid base64"))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| invalid("auth is not valid UTF-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("auth is not base64(\"user:password\")"))?;
            creds.username = user.to_string();
            creds.password = pass.trim_end_matches('\0').to_string();
        } else {
            creds.username = field("username")?.unwrap_or_default().to_string();
            creds.password = field("password")?.unwrap_or_default().to_string();
        }
        creds.identity_token = field("identitytoken")?.map(str::to_string);
        Ok((!creds.is_empty()).then_some(creds))
    }

    /// Stores `credentials` for `registry_host`: in the configured helper (leaving an empty
    /// `auths` entry, as docker does), else base64-encoded in `auths`.
    pub fn store(&self, registry_host: &str, credentials: &Credentials) -> Result<()> {
        let key = server_key(registry_host);
        let mut config = self.read()?;
        let helper = self.helper_for(&config, &key)?;
        let mut entry = Map::new();
        match &helper {
            Some(name) => self.helper(name)?.store(&key, credentials)?,
            None => {
                entry.insert(
                    "auth".into(),
                    Value::String(base64::encode(
                        format!("{}:{}", credentials.username, credentials.password).as_bytes(),
                    )),
                );
                if let Some(t) = &credentials.identity_token {
                    entry.insert("identitytoken".into(), Value::String(t.clone()));
                }
            }
        }
        self.auths(&config)?;
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(auths) = auths {
            // Drop other spellings of the same registry so lookup cannot find stale ones.
            auths.retain(|k, _| !same_registry(k, &key));
            auths.insert(key, Value::Object(entry));
        } else {
            *auths = Value::Object(Map::from_iter([(key, Value::Object(entry))]));
        }
        self.write(&config)
    }

    /// Removes the credentials for `registry_host` from the helper (if configured) and
    /// every `auths` entry naming it. Nothing stored is not an error.
    pub fn erase(&self, registry_host: &str) -> Result<()> {
        let key = server_key(registry_host);
        let mut config = self.read()?;
        if let Some(name) = self.helper_for(&config, &key)? {
            self.helper(&name)?.erase(&key)?;
        }
        let before = self.auths(&config)?.map_or(0, Map::len);
        if let Some(Value::Object(auths)) = config.get_mut("auths") {
            auths.retain(|k, _| !same_registry(k, &key));
            if auths.len() != before {
                return self.write(&config);
            }
        }
        Ok(())
    }

    /// Writes the config atomically: a temp file (mode 0600) beside the target, fsync,
    /// rename, fsync the directory. A symlinked `config.json` is written through.
    fn write(&self, config: &Map<String, Value>) -> Result<()> {
        let mut path = self.path();
        if let Ok(target) = std::fs::canonicalize(&path) {
            path = target;
        }
        let wrap = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialsError::Write { path, source }
        };
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        create_private_dir(&dir).map_err(wrap(&dir))?;
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(config, &mut ser)
            .map_err(|e| wrap(&path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        buf.push(b'\n');
        // tempfile creates the file with mode 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".config.json.")
            .tempfile_in(&dir)
            .map_err(wrap(&dir))?;
        tmp.write_all(&buf).map_err(wrap(tmp.path()))?;
        tmp.as_file().sync_all().map_err(wrap(tmp.path()))?;
        tmp.persist(&path).map_err(|e| wrap(&path)(e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Best effort: the rename is already visible.
            let _ = d.sync_all();
        }
        tracing::debug!(path = %path.display(), "wrote docker config");
        Ok(())
    }

    fn helper(&self, name: &str) -> Result<Helper> {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(CredentialsError::InvalidHelperName {
                name: name.to_string(),
            });
        }
        let program = format!("docker-credential-{name}");
        let path_env = self
            .helper_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let resolved = std::env::split_paths(&path_env)
            .map(|d| d.join(&program))
            .find(|p| is_executable(p))
            .ok_or_else(|| CredentialsError::HelperNotFound {
                program: program.clone(),
            })?;
        Ok(Helper {
            program,
            resolved,
            path_env: self.helper_path.clone(),
        })
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A `docker-credential-<name>` program (docker-credential-helpers protocol).
struct Helper {
    program: String,
    resolved: PathBuf,
    path_env: Option<OsString>,
}

/// The helper protocol's credentials object.
#[derive(serde::Serialize, serde::Deserialize)]
struct HelperCredentials {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

enum HelperResult {
    Ok(Vec<u8>),
    NotFound,
}

impl Helper {
    /// Runs `<helper> <action>` with `input` on stdin.
    fn run(&self, action: &'static str, input: &[u8]) -> Result<HelperResult> {
        let mut cmd = Command::new(&self.resolved);
        cmd.arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.path_env {
            cmd.env("PATH", p);
        }
        let spawn_err = |source| CredentialsError::HelperSpawn {
            program: self.program.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // Input is tiny (fits a pipe buffer); a helper that exits without reading it
            // gives EPIPE, which is not our failure.
            match stdin.write_all(input) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_err(e));
                }
                _ => {}
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(HelperResult::Ok(out.stdout));
        }
        // Helpers report errors on stdout (the protocol); some use stderr.
        let mut message = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        if message
            .to_ascii_lowercase()
            .contains("credentials not found")
        {
            return Ok(HelperResult::NotFound);
        }
        if message.chars().count() > 200 {
            message = message.chars().take(200).collect::<String>() + "…";
        }
        let err = CredentialsError::HelperFailed {
            program: self.program.clone(),
            action,
            status: out.status.to_string(),
            message,
        };
        tracing::warn!(error = %err, "credential helper failed");
        Err(err)
    }

    fn get(&self, key: &str) -> Result<Option<Credentials>> {
        let out = match self.run("get", key.as_bytes())? {
            HelperResult::NotFound => return Ok(None),
            HelperResult::Ok(out) => out,
        };
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        // Never quote the output: it holds the secret.
        let c: HelperCredentials =
            serde_json::from_slice(&out).map_err(|_| CredentialsError::HelperOutput {
                program: self.program.clone(),
                action: "get",
                reason: "not a JSON object with Username and Secret",
            })?;
        let creds = if c.username == TOKEN_USERNAME {
            Credentials::identity_token("", c.secret)
        } else {
            Credentials::basic(c.username, c.secret)
        };
        Ok((!creds.is_empty()).then_some(creds))
    }

    fn store(&self, key: &str, creds: &Credentials) -> Result<()> {
        let c = match &creds.identity_token {
            Some(t) => HelperCredentials {
                server_url: key.to_string(),
                username: TOKEN_USERNAME.to_string(),
                secret: t.clone(),
            },
            None => HelperCredentials {
                server_url: key.to_string(),
                username: creds.username.clone(),
                secret: creds.password.clone(),
            },
        };
        let input = serde_json::to_vec(&c).map_err(|_| CredentialsError::HelperOutput {
            program: self.program.clone(),
            action: "store",
            reason: "cannot encode credentials",
        })?;
        match self.run("store", &input)? {
            HelperResult::Ok(_) => Ok(()),
            HelperResult::NotFound => Err(CredentialsError::HelperFailed {
                program: self.program.clone(),
                action: "store",
                status: "error".into(),
                message: "credentials not found".into(),
            }),
        }
    }

    fn erase(&self, key: &str) -> Result<()> {
        match self.run("erase", key.as_bytes())? {
            HelperResult::Ok(_) | HelperResult::NotFound => Ok(()),
        }
    }
}

/// Standard base64 (RFC 4648 §4), as docker writes `auth`: the `base64` crate, decoding
/// with or without padding and ignoring surrounding whitespace.
pub mod base64 {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;

    /// Encodes with `=` padding.
    pub fn encode(input: &[u8]) -> String {
        STANDARD.encode(input)
    }

    /// Decodes standard base64, padded exactly or not at all (surrounding whitespace is
    /// ignored); `None` if the input is not base64.
    pub fn decode(input: &str) -> Option<Vec<u8>> {
        let input = input.trim();
        if input.contains('=') {
            STANDARD.decode(input).ok()
        } else {
            STANDARD_NO_PAD.decode(input).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_config(dir: &Path, json: &str) {
        std::fs::write(dir.join(CONFIG_FILE), json).unwrap();
    }

    fn read_config(dir: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap()
    }

    /// A fake `docker-credential-test` keeping its store as files in `<bin>/store/`.
    /// `get` of `fail.example` fails with a message, of `garbage.example` prints non-JSON.
    fn fake_helper(bin: &Path) -> OsString {
        let store = bin.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let script = format!(
            r#"#!/bin/sh
store='{store}'
input=$(cat)
name=$(printf '%s' "$input" | sed -e 's/.*"ServerURL":"\([^"]*\)".*/\1/' | tr '/:' '__')
case "$1" in
get)
  key=$(printf '%s' "$input" | tr '/:' '__')
  printf '%s\n' "$input" > "$store/last-get"
  case "$input" in
    fail.example) echo "the keychain is locked"; exit 3;;
    garbage.example) echo "Secret=hunter2"; exit 0;;
  esac
  if [ -f "$store/$key" ]; then cat "$store/$key"; else echo "credentials not found in native keychain"; exit 1; fi;;
store)
  printf '%s' "$input" > "$store/$name";;
erase)
  key=$(printf '%s' "$input" | tr '/:' '__')
  if [ -f "$store/$key" ]; then rm "$store/$key"; else echo "credentials not found in native keychain"; exit 1; fi;;
*) echo "unknown action $1"; exit 2;;
esac
"#,
            store = store.display()
        );
        let p = bin.join("docker-credential-test");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The helper's directory first, then the usual PATH for sh, sed, tr, cat.
        let mut dirs = vec![bin.to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        ));
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn base64_round_trip_and_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64::encode(plain.as_bytes()), enc);
            assert_eq!(base64::decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64::decode("Zg").unwrap(), b"f");
        assert_eq!(base64::decode(" Zm8=\n").unwrap(), b"fo");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64::decode(&base64::encode(&all)).unwrap(), all);
        for bad in ["Z", "Zg=", "Z===", "Zm9v!", "Zm=9", "Zm9vY", "=Zm9"] {
            assert_eq!(base64::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_dir_resolution() {
        assert_eq!(
            config_dir_from(Some(OsStr::new("/cfg")), Some(OsStr::new("/home/u"))).unwrap(),
            PathBuf::from("/cfg")
        );
        assert_eq!(
            config_dir_from(Some(OsStr::new("")), Some(OsStr::new("/home/u"))).unwrap(),
            PathBuf::from("/home/u/.docker")
        );
        assert!(matches!(
            config_dir_from(None, None),
            Err(CredentialsError::NoConfigDir)
        ));
    }

    #[test]
    fn key_normalization() {
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "https://registry-1.docker.io/v2/",
        ] {
            assert_eq!(server_key(hub), DOCKER_HUB_KEY, "{hub}");
        }
        assert_eq!(server_key("localhost:5000"), "localhost:5000");
        assert_eq!(server_key("http://localhost:5000/v2/"), "localhost:5000");
        assert_eq!(convert_to_hostname("https://ghcr.io"), "ghcr.io");
        let r = crate::reference::Reference::parse("busybox").unwrap();
        assert_eq!(server_key(&r.domain), DOCKER_HUB_KEY);
    }

    #[test]
    fn missing_and_empty_config_mean_no_credentials() {
        let d = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::new(d.path().join("nonexistent"));
        assert_eq!(cfg.lookup("docker.io").unwrap(), None);
        write_config(d.path(), "");
        assert_eq!(DockerConfig::new(d.path()).lookup("x").unwrap(), None);
        write_config(d.path(), r#"{"auths":{"https://index.docker.io/v1/":{}}}"#);
        assert_eq!(
            DockerConfig::new(d.path()).lookup("docker.io").unwrap(),
            None
        );
    }

    #[test]
    fn malformed_config_names_the_file_without_secrets() {
        let d = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::new(d.path());
        for json in [
            r#"{"auths": {"x": {"auth": "c2VjcmV0OnNlY3JldA==""#,
            r#"["topsecret"]"#,
            r#"{"auths": "topsecret"}"#,
            r#"{"credsStore": 7}"#,
        ] {
            write_config(d.path(), json);
            let err = cfg.lookup("x").unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, CredentialsError::Malformed { .. }), "{msg}");
            assert!(msg.contains(&cfg.path().display().to_string()), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
            assert!(!format!("{err:?}").contains("secret"));
        }
        for json in [
            r#"{"auths": {"x": {"auth": "!!topsecret!!"}}}"#,
            r#"{"auths": {"x": {"auth": "dG9wc2VjcmV0"}}}"#, // "topsecret", no colon
            r#"{"auths": {"x": "topsecret"}}"#,
        ] {
            write_config(d.path(), json);
            let err = cfg.lookup("x").unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(
                matches!(err, CredentialsError::InvalidEntry { .. }),
                "{msg}"
            );
            assert!(!msg.contains("topsecret") && !msg.contains("dG9w"), "{msg}");
        }
    }

    #[test]
    fn auths_lookup_with_key_normalization() {
        let d = tempfile::tempdir().unwrap();
        write_config(
            d.path(),
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "http://localhost:5000/v2/": {{"auth": "{}"}},
                    "https://ghcr.io": {{"auth": "{}", "identitytoken": "idtok"}},
                    "legacy.example": {{"username": "lu", "password": "lp"}},
                    "exact.example": {{"auth": "{}"}},
                    "https://exact.example": {{"auth": "{}"}}
                }}}}"#,
                base64::encode(b"hubuser:hubpass"),
                base64::encode(b"local:pw:with:colons"),
                base64::encode(b"ghuser:"),
                base64::encode(b"exact:1"),
                base64::encode(b"url:2"),
            ),
        );
        let cfg = DockerConfig::new(d.path());
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                cfg.lookup(hub).unwrap(),
                Some(Credentials::basic("hubuser", "hubpass"))
            );
        }
        assert_eq!(
            cfg.lookup("localhost:5000").unwrap(),
            Some(Credentials::basic("local", "pw:with:colons"))
        );
        assert_eq!(
            cfg.lookup("ghcr.io").unwrap(),
            Some(Credentials {
                username: "ghuser".into(),
                password: String::new(),
                identity_token: Some("idtok".into())
            })
        );
        assert_eq!(
            cfg.lookup("legacy.example").unwrap(),
            Some(Credentials::basic("lu", "lp"))
        );
        // The exact key wins over another spelling.
        assert_eq!(
            cfg.lookup("exact.example").unwrap(),
            Some(Credentials::basic("exact", "1"))
        );
        assert_eq!(cfg.lookup("localhost:5001").unwrap(), None);
        assert_eq!(cfg.lookup("other.example").unwrap(), None);
    }

    #[test]
    fn store_and_erase_in_auths_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("new-dir");
        let cfg = DockerConfig::new(&dir);
        cfg.store("docker.io", &Credentials::basic("u", "p"))
            .unwrap();
        let mode = std::fs::metadata(cfg.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_config(&dir)["auths"][DOCKER_HUB_KEY]["auth"],
            base64::encode(b"u:p")
        );
        assert_eq!(
            cfg.lookup("index.docker.io").unwrap(),
            Some(Credentials::basic("u", "p"))
        );

        // Other keys survive; another spelling of the same registry is replaced.
        write_config(
            &dir,
            r#"{"psFormat": "table", "auths": {"https://localhost:5000/v2/": {"auth": "b2xkOm9sZA=="}, "keep.example": {"auth": "azp2"}}}"#,
        );
        cfg.store("localhost:5000", &Credentials::identity_token("me", "tok"))
            .unwrap();
        let v = read_config(&dir);
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["auths"]["keep.example"]["auth"], "azp2");
        assert!(v["auths"].get("https://localhost:5000/v2/").is_none());
        assert_eq!(v["auths"]["localhost:5000"]["identitytoken"], "tok");
        assert_eq!(
            cfg.lookup("localhost:5000").unwrap(),
            Some(Credentials::identity_token("me", "tok"))
        );

        cfg.erase("localhost:5000").unwrap();
        assert_eq!(cfg.lookup("localhost:5000").unwrap(), None);
        assert_eq!(read_config(&dir)["psFormat"], "table");
        // Erasing what is not there is fine, also without a file.
        cfg.erase("localhost:5000").unwrap();
        DockerConfig::new(d.path().join("none")).erase("x").unwrap();
        assert!(!d.path().join("none").exists());
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from(CONFIG_FILE)]);
    }

    #[test]
    fn store_writes_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        std::os::unix::fs::symlink(&real, d.path().join(CONFIG_FILE)).unwrap();
        let cfg = DockerConfig::new(d.path());
        cfg.store("r.example", &Credentials::basic("a", "b"))
            .unwrap();
        assert!(std::fs::symlink_metadata(cfg.path())
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            cfg.lookup("r.example").unwrap(),
            Some(Credentials::basic("a", "b"))
        );
    }

    #[test]
    fn helper_store_get_erase() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = fake_helper(&bin);
        let dir = d.path().join("cfg");
        std::fs::create_dir(&dir).unwrap();
        write_config(&dir, r#"{"credsStore": "test"}"#);
        let cfg = DockerConfig::new(&dir).with_helper_path(path);

        assert_eq!(cfg.lookup("docker.io").unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(bin.join("store/last-get")).unwrap(),
            format!("{DOCKER_HUB_KEY}\n")
        );
        cfg.store("docker.io", &Credentials::basic("hu", "hp"))
            .unwrap();
        assert_eq!(
            cfg.lookup("docker.io").unwrap(),
            Some(Credentials::basic("hu", "hp"))
        );
        // docker leaves an empty auths entry and no secret in the file.
        let text = std::fs::read_to_string(cfg.path()).unwrap();
        assert!(!text.contains("hp") && !text.contains("auth\""), "{text}");
        assert_eq!(
            read_config(&dir)["auths"][DOCKER_HUB_KEY],
            serde_json::json!({})
        );

        cfg.store("reg.example:5000", &Credentials::identity_token("", "idt"))
            .unwrap();
        assert_eq!(
            cfg.lookup("https://reg.example:5000/v2/").unwrap(),
            Some(Credentials::identity_token("", "idt"))
        );

        cfg.erase("docker.io").unwrap();
        assert_eq!(cfg.lookup("docker.io").unwrap(), None);
        assert!(read_config(&dir)["auths"].get(DOCKER_HUB_KEY).is_none());
        // Not found on erase is not an error.
        cfg.erase("docker.io").unwrap();

        let err = cfg.lookup("fail.example").unwrap_err();
        assert!(
            matches!(err, CredentialsError::HelperFailed { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("the keychain is locked"), "{err}");
        let err = cfg.lookup("garbage.example").unwrap_err();
        assert!(
            matches!(err, CredentialsError::HelperOutput { .. }),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn cred_helpers_override_creds_store_and_auths() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = fake_helper(&bin);
        std::fs::write(
            bin.join("store/helped.example"),
            r#"{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}"#,
        )
        .unwrap();
        let dir = d.path().join("cfg");
        std::fs::create_dir(&dir).unwrap();
        write_config(
            &dir,
            &format!(
                r#"{{"credHelpers": {{"helped.example": "test", "https://url.example": "test"}},
                    "auths": {{"helped.example": {{"auth": "{0}"}}, "plain.example": {{"auth": "{0}"}}}}}}"#,
                base64::encode(b"file:pw")
            ),
        );
        let cfg = DockerConfig::new(&dir).with_helper_path(path);
        assert_eq!(
            cfg.lookup("helped.example").unwrap(),
            Some(Credentials::basic("hu", "hs"))
        );
        assert_eq!(
            cfg.lookup("plain.example").unwrap(),
            Some(Credentials::basic("file", "pw"))
        );
        // A helper key spelled as a URL applies to the host; not found means none.
        assert_eq!(cfg.lookup("url.example").unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(bin.join("store/last-get")).unwrap(),
            "url.example\n"
        );
    }

    #[test]
    fn missing_or_invalid_helper_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        write_config(d.path(), r#"{"credsStore": "nonexistent"}"#);
        let cfg = DockerConfig::new(d.path()).with_helper_path(d.path().join("empty"));
        assert!(matches!(
            cfg.lookup("x").unwrap_err(),
            CredentialsError::HelperNotFound { .. }
        ));
        write_config(d.path(), r#"{"credsStore": "../../bin/sh"}"#);
        assert!(matches!(
            cfg.lookup("x").unwrap_err(),
            CredentialsError::InvalidHelperName { .. }
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            username: "alice".into(),
            password: "p4ssw0rd".into(),
            identity_token: Some("id-t0ken".into()),
        };
        let d = format!("{c:?} {c:#?}");
        assert!(d.contains("alice"));
        assert!(!d.contains("p4ssw0rd") && !d.contains("id-t0ken"), "{d}");
        assert_eq!(
            Credentials::basic("user", "pass").basic_auth_header(),
            "Basic dXNlcjpwYXNz"
        );
    }
}
