//! Registry endpoints over [`crate::push`]: `POST /images/create?fromImage=…&tag=…` (pull)
//! and `POST /images/{name}/push?tag=…`, both streaming docker's JSON progress messages
//! (`{"status":"Pull complete","id":"<blob>"}`, `progressDetail` for bytes). Credentials
//! come from the client's `X-Registry-Auth` header when it carries any (written to a private
//! docker config for the one operation), else from the daemon's own docker config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::http::{json_line, stream, ApiError, ApiResult, Chunk, Query};
use super::State;
use crate::cache::export::LayerCompression;
use crate::cache::Digest;
use crate::engine::events::Event;
use crate::graph::Platform;
use crate::push::client::{parse_reference, RegistryError, RegistrySettings};
use crate::push::credentials::{base64, Credentials, DockerConfig};
use crate::push::progress::Progress;
use crate::reference::Reference;

/// Transfer events as docker's JSON messages (sent from the registry client's tasks, so
/// through an unbounded channel that never blocks them).
struct JsonProgress {
    tx: mpsc::UnboundedSender<Chunk>,
    verb: &'static str,
    sizes: Mutex<HashMap<Digest, (u64, u64)>>,
}

impl JsonProgress {
    fn send(&self, v: Value) {
        let _ = self.tx.send(json_line(&v));
    }
}

impl Progress for JsonProgress {
    fn start(&self, blob: &Digest, size: u64, status: &str) {
        if let Ok(mut s) = self.sizes.lock() {
            s.insert(blob.clone(), (0, size));
        }
        self.send(json!({"status": status, "progressDetail": {}, "id": blob.short()}));
    }

    fn advance(&self, blob: &Digest, bytes: u64) {
        let (current, total) = match self.sizes.lock() {
            Ok(mut s) => {
                let e = s.entry(blob.clone()).or_insert((0, 0));
                e.0 += bytes;
                *e
            }
            Err(_) => return,
        };
        self.send(json!({
            "status": self.verb,
            "progressDetail": {"current": current, "total": total},
            "id": blob.short(),
        }));
    }

    fn restart(&self, blob: &Digest) {
        if let Ok(mut s) = self.sizes.lock() {
            if let Some(e) = s.get_mut(blob) {
                e.0 = 0;
            }
        }
    }

    fn status(&self, blob: &Digest, status: &str) {
        if status != self.verb {
            self.send(json!({"status": status, "progressDetail": {}, "id": blob.short()}));
        }
    }

    fn message(&self, text: &str) {
        self.send(json!({ "status": text }));
    }
}

fn error_line(message: &str) -> Chunk {
    json_line(&json!({"errorDetail": {"message": message}, "error": message}))
}

/// Decodes a base64url JSON header (`X-Registry-Auth`, `X-Registry-Config`).
fn decode_header(header: &str, name: &str) -> ApiResult<Value> {
    let mut std_b64: String = header
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std_b64.len().is_multiple_of(4) {
        std_b64.push('=');
    }
    base64::decode(&std_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::bad_request(format!("invalid {name} header")))
}

/// One AuthConfig (`{username, password | identitytoken}`) as credentials, if it has any.
fn credentials_of(auth: &Value) -> Option<Credentials> {
    let user = auth["username"].as_str().unwrap_or_default();
    match (auth["identitytoken"].as_str(), auth["password"].as_str()) {
        (Some(t), _) if !t.is_empty() => Some(Credentials::identity_token(user, t)),
        (_, Some(p)) if !user.is_empty() => Some(Credentials::basic(user, p)),
        _ => None,
    }
}

/// Registry settings for a build: the daemon's, with every registry's credentials from the
/// client's `X-Registry-Config` (base64url JSON `{registry: AuthConfig}`) in a private
/// docker config.
pub fn settings_for_build(
    req: &Request<Incoming>,
) -> ApiResult<(RegistrySettings, Option<tempfile::TempDir>)> {
    let mut settings = RegistrySettings::load(&[])
        .map_err(|e| ApiError::internal(format!("registry settings: {e}")))?;
    let Some(header) = req
        .headers()
        .get("X-Registry-Config")
        .and_then(|h| h.to_str().ok())
    else {
        return Ok((settings, None));
    };
    let configs = decode_header(header, "X-Registry-Config")?;
    let entries: Vec<(String, Credentials)> = configs
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(registry, auth)| {
                    let host = crate::push::credentials::registry_host(registry);
                    credentials_of(auth).map(|c| (host, c))
                })
                .collect()
        })
        .unwrap_or_default();
    if entries.is_empty() {
        return Ok((settings, None));
    }
    let dir = tempfile::tempdir()
        .map_err(|e| ApiError::internal(format!("temporary credentials dir: {e}")))?;
    let config = DockerConfig::new(dir.path());
    for (host, creds) in &entries {
        config
            .store(host, creds)
            .map_err(|e| ApiError::internal(format!("storing the request's credentials: {e}")))?;
    }
    settings.docker_config = Some(dir.path().to_path_buf());
    Ok((settings, Some(dir)))
}

/// Registry settings for one request: the daemon's, with the client's credentials from
/// `X-Registry-Auth` (base64url JSON `{username, password | identitytoken, serveraddress}`)
/// in a private docker config when given.
fn settings_for(
    req: &Request<Incoming>,
    registry: &str,
) -> ApiResult<(RegistrySettings, Option<tempfile::TempDir>)> {
    let mut settings = RegistrySettings::load(&[])
        .map_err(|e| ApiError::internal(format!("registry settings: {e}")))?;
    let Some(header) = req
        .headers()
        .get("X-Registry-Auth")
        .and_then(|h| h.to_str().ok())
    else {
        return Ok((settings, None));
    };
    let auth = decode_header(header, "X-Registry-Auth")?;
    let Some(creds) = credentials_of(&auth) else {
        return Ok((settings, None));
    };
    let dir = tempfile::tempdir()
        .map_err(|e| ApiError::internal(format!("temporary credentials dir: {e}")))?;
    DockerConfig::new(dir.path())
        .store(registry, &creds)
        .map_err(|e| ApiError::internal(format!("storing the request's credentials: {e}")))?;
    settings.docker_config = Some(dir.path().to_path_buf());
    Ok((settings, Some(dir)))
}

/// Runs `job` on its own thread (the registry client starts its own runtime) and streams
/// what it reports; its final answer (or error) ends the stream.
fn run_streamed(
    verb: &'static str,
    job: impl FnOnce(&JsonProgress) -> Result<Vec<Value>, String> + Send + 'static,
) -> ApiResult {
    let (tx, resp) = stream("application/json");
    let (utx, mut urx) = mpsc::unbounded_channel::<Chunk>();
    tokio::spawn(async move {
        while let Some(chunk) = urx.recv().await {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    std::thread::Builder::new()
        .name("kiln-api-registry".into())
        .spawn(move || {
            let progress = JsonProgress {
                tx: utx.clone(),
                verb,
                sizes: Mutex::new(HashMap::new()),
            };
            match job(&progress) {
                Ok(lines) => {
                    for l in lines {
                        let _ = utx.send(json_line(&l));
                    }
                }
                Err(e) => {
                    let _ = utx.send(error_line(&e));
                }
            }
        })
        .map_err(|e| ApiError::internal(format!("cannot start the transfer: {e}")))?;
    Ok(resp)
}

pub async fn pull(state: &Arc<State>, query: &Query, req: Request<Incoming>) -> ApiResult {
    if query.get("fromSrc").is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "importing a root filesystem (fromSrc) is not supported by kiln",
        ));
    }
    let from = query
        .get("fromImage")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage is required"))?;
    let name = match query.get("tag").filter(|t| !t.is_empty()) {
        Some(t) if t.contains(':') => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.to_string(),
    };
    let reference = parse_reference(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let platform = match query.get("platform").filter(|p| !p.is_empty()) {
        Some(p) => Platform::parse(p).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Platform::host(),
    };
    let (settings, creds_dir) = settings_for(&req, &reference.domain)?;
    let st = state.clone();
    run_streamed("Downloading", move |progress| {
        let _keep = creds_dir;
        let snapshots = st.engine.snapshotter().map_err(|e| e.to_string())?;
        let opts = crate::push::pull::PullOptions {
            platform,
            settings: &settings,
            progress,
            snapshots: Some(snapshots.as_ref()),
        };
        let pulled = crate::push::pull::pull(&st.engine.store, &reference, &opts)
            .map_err(|e| crate::push::client::error_chain(&e))?;
        st.engine.events.publish(
            Event::new("image", "pull", pulled.id.as_str())
                .with("name", &crate::push::pull::familiar(&pulled.reference)),
        );
        Ok(Vec::new())
    })
}

pub async fn push(
    state: &Arc<State>,
    name: &str,
    query: &Query,
    req: Request<Incoming>,
) -> ApiResult {
    let tag = query
        .get("tag")
        .filter(|t| !t.is_empty())
        .unwrap_or("latest");
    let full = if tag.contains(':') {
        format!("{name}@{tag}")
    } else {
        format!("{name}:{tag}")
    };
    let target: Reference =
        parse_reference(&full).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let image = state.engine.store.lookup(&full).map_err(|_| {
        ApiError::not_found(format!(
            "An image does not exist locally with the tag: {name}"
        ))
    })?;
    let (settings, creds_dir) = settings_for(&req, &target.domain)?;
    let st = state.clone();
    let tag = tag.to_string();
    run_streamed("Pushing", move |progress| {
        let _keep = creds_dir;
        let opts = crate::push::push::PushOptions {
            settings: &settings,
            progress,
            compression: LayerCompression::Keep,
        };
        let pushed =
            crate::push::push::push(&st.engine.store, &image.manifest_digest, &target, &opts)
                .map_err(|e| crate::push::client::error_chain(&e))?;
        st.engine.events.publish(
            Event::new("image", "push", image.id().as_str())
                .with("name", &crate::push::pull::familiar(&pushed.reference)),
        );
        // (The push itself reported `TAG: digest: … size: …`.)
        Ok(vec![json!({
            "progressDetail": {},
            "aux": {"Tag": tag, "Digest": pushed.digest.to_string(), "Size": pushed.size},
        })])
    })
}

/// docker's AuthConfig as `docker login` sends it.
#[derive(Debug, serde::Deserialize)]
struct AuthRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    serveraddress: String,
}

/// `POST /auth` (`docker login`): checks the credentials against the registry (the client
/// stores them); 401 with the registry's reason when they are refused.
pub async fn auth(req: Request<Incoming>) -> ApiResult {
    let body: Option<AuthRequest> = super::http::read_json(req).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("the request needs a JSON body"))?;
    if body.username.is_empty() || body.password.is_empty() {
        return Err(ApiError::bad_request("username and password are required"));
    }
    let host = crate::push::credentials::registry_host(&body.serveraddress);
    let settings = RegistrySettings::load(&[])
        .map_err(|e| ApiError::internal(format!("registry settings: {e}")))?;
    let creds = Credentials::basic(body.username, body.password);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kiln-api-login".into())
        .spawn(move || {
            let result = crate::push::client::runtime().and_then(|rt| {
                rt.block_on(async {
                    let registry =
                        crate::push::client::Registry::connect_with(&host, &settings, Some(&creds))
                            .await?;
                    registry.verify_login(&creds).await
                })
            });
            let _ = tx.send(result.map_err(|e| {
                let status = match e {
                    RegistryError::Unauthorized { .. } => hyper::StatusCode::UNAUTHORIZED,
                    RegistryError::Transport { .. } => hyper::StatusCode::BAD_GATEWAY,
                    _ => hyper::StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(
                    status,
                    format!(
                        "login to {host} failed: {}",
                        crate::push::client::error_chain(&e)
                    ),
                )
            }));
        })
        .map_err(|e| ApiError::internal(format!("cannot start the login check: {e}")))?;
    match rx.await {
        Ok(Ok(outcome)) => super::http::json(&json!({
            "Status": "Login Succeeded",
            "IdentityToken": outcome.identity_token.unwrap_or_default(),
        })),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::internal(
            "the login check ended without an answer",
        )),
    }
}
