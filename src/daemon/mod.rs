//! `kiln daemon`: the engine behind a Docker-compatible REST API, so the stock docker CLI,
//! the Docker SDKs and CI tools that speak the Docker Engine API drive kiln. Listeners
//! ([`listen`]) are a Unix socket (0660, group `kiln`) and TCP with mutual TLS (plain TCP
//! only on loopback with `--insecure-tcp`); [`api`] routes requests (with or without the
//! `/v1.NN` prefix) to handlers over [`crate::engine`]. The daemon shares the store with
//! in-process CLI use (the store's own locks keep them apart) and stops cleanly on
//! SIGTERM/SIGINT: listeners close, sockets are removed, streams end, running requests get
//! a grace period.

mod api;
mod archive;
mod attach;
mod build;
mod containers;
mod events;
mod exec;
pub mod http;
mod images;
pub mod listen;
mod networks;
mod registry;
mod system;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::engine::Engine;

/// The Docker Engine API version kiln implements (clients negotiate down to it).
pub const API_VERSION: &str = "1.43";
/// The oldest API version kiln accepts.
pub const MIN_API_VERSION: &str = "1.24";
/// Where the daemon listens when no `-H` is given.
pub const DEFAULT_HOST: &str = "unix:///run/kiln/kiln.sock";
/// How long running requests may continue after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid -H {host:?}: {message}")]
    Host { host: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("cannot listen on {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// TLS files for TCP listeners (`--tlsverify --tlscacert --tlscert --tlskey`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    /// `-H` values (`unix:///path`, `tcp://addr:port`).
    pub hosts: Vec<String>,
    /// Mutual TLS for TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Allow plain TCP on a loopback address.
    pub insecure_tcp: bool,
}

/// What every handler shares.
pub struct State {
    pub engine: Engine,
    /// Flips to true when the daemon stops: long streams (`/events`) end.
    pub shutdown: watch::Receiver<bool>,
    /// When the daemon started (unix seconds).
    pub started: i64,
    /// Exec instances (`docker exec`), kept in memory as docker does.
    pub execs: exec::Execs,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let engine = Engine::open(&config.root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-daemon")
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(serve(config, engine));
    // Blocking work still going (an exec's process, a log follower) is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn serve(config: Config, engine: Engine) -> Result<(), DaemonError> {
    let hosts = if config.hosts.is_empty() {
        vec![DEFAULT_HOST.to_string()]
    } else {
        config.hosts.clone()
    };
    let mut listeners = Vec::new();
    for host in &hosts {
        listeners.push(listen::bind(host, &config).await?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(State {
        engine,
        shutdown: stop_rx.clone(),
        started: crate::cache::image::unix_now(),
        execs: exec::Execs::default(),
    });
    // Every connection holds a clone of `alive`; shutdown waits until all are dropped.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    for listener in listeners {
        tracing::info!("API listening on {}", listener.describe());
        eprintln!("kiln daemon: API listening on {}", listener.describe());
        tasks.push(tokio::spawn(accept_loop(
            listener,
            state.clone(),
            alive.clone(),
            stop_rx.clone(),
        )));
    }
    wait_for_signal().await;
    eprintln!("kiln daemon: shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    drop(alive);
    if tokio::time::timeout(GRACE, all_closed.recv())
        .await
        .is_err()
    {
        eprintln!(
            "kiln daemon: requests still running after {}s; stopping anyway",
            GRACE.as_secs()
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can only be killed; keep serving.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Accepts connections until the daemon stops; the listener (and its socket file) goes then.
async fn accept_loop(
    listener: listen::Listener,
    state: Arc<State>,
    alive: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => break,
        };
        match conn {
            Ok(io) => {
                let state = state.clone();
                let (alive, stop) = (alive.clone(), stop.clone());
                tokio::spawn(async move {
                    match io.ready().await {
                        Ok(stream) => serve_connection(stream, state, stop).await,
                        Err(e) => tracing::debug!("connection set-up failed: {e}"),
                    }
                    drop(alive);
                });
            }
            Err(e) => {
                tracing::warn!("accept on {}: {e}", listener.describe());
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    listener.close();
}

/// Serves one connection; when the daemon stops, the connection finishes its current
/// request and closes.
async fn serve_connection(
    stream: listen::Stream,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| api::handle(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// Runs blocking engine work (store reads and writes, builds) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, http::ApiError> + Send + 'static,
) -> http::ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| http::ApiError::internal(format!("internal task failed: {e}")))?
}
