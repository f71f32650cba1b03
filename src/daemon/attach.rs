//! `POST /containers/{id}/attach` and `POST /containers/{id}/resize`. An attach hijacks the
//! connection (101, `Upgrade: tcp`): the container's output comes back in docker's
//! multiplexed format (raw for a tty) until it exits, and with `stdin=1` what the client
//! writes goes to the container's stdin through its monitor's attach socket
//! ([`crate::run::attach`]); the client closing its side (docker's CloseWrite on EOF) closes
//! the container's stdin when it was created with StdinOnce. Output without a tty comes from
//! the json-file log (so nothing is lost when the attach comes before the start, as in
//! `docker run`); a tty's comes live from the monitor, which keeps what the pty wrote before
//! the first client came.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::{find, output_writer};
use super::http::{self, ApiError, ApiResult, Chunk, Query};
use super::{blocking, State};
use crate::run::state::Container;

/// How often a waiting attach looks for the monitor's socket or the log.
const POLL: Duration = Duration::from_millis(20);

/// The 101 response of a hijacked connection.
pub(super) fn hijacked(tty: bool) -> hyper::Response<http::Body> {
    let mut resp = hyper::Response::new(http::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(hyper::header::UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(if tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        }),
    );
    resp
}

/// The hijacked connection's halves: what the client sends, and a channel whose chunks are
/// written to it (the connection's write side is shut down when the channel closes; await
/// the task for that).
pub(super) async fn split_upgraded(
    upgrade: hyper::upgrade::OnUpgrade,
) -> Option<(
    tokio::io::ReadHalf<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    mpsc::Sender<Chunk>,
    tokio::task::JoinHandle<()>,
)> {
    let io = match upgrade.await {
        Ok(u) => hyper_util::rt::TokioIo::new(u),
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return None;
        }
    };
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    let writer = tokio::spawn(async move {
        while let Some(Ok(chunk)) = rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    Some((rd, tx, writer))
}

/// Whether the container has run and stopped since it had started at `started_before`.
fn ran_and_stopped(root: &std::path::Path, c: &Container, started_before: i128) -> bool {
    match crate::run::monitor::settle(root, c) {
        Ok(s) => !s.is_running() && s.started_at != started_before,
        Err(_) => true,
    }
}

/// Connects to the container's attach socket, waiting for its monitor (the attach may come
/// before the start); None once the container ran and stopped or the client left.
async fn reach_monitor(
    root: &std::path::Path,
    c: &Container,
    started_before: i128,
    tx: &mpsc::Sender<Chunk>,
) -> Option<tokio::net::UnixStream> {
    let mut backoff = crate::run::Backoff::up_to(POLL);
    loop {
        if let Ok(s) = crate::run::attach::connect(c) {
            if s.set_nonblocking(true).is_ok() {
                if let Ok(s) = tokio::net::UnixStream::from_std(s) {
                    return Some(s);
                }
            }
        }
        let stopped = {
            let (root, c) = (root.to_path_buf(), c.clone());
            tokio::task::spawn_blocking(move || ran_and_stopped(&root, &c, started_before))
                .await
                .unwrap_or(true)
        };
        if tx.is_closed() || stopped {
            return None;
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

pub async fn attach(
    state: &Arc<State>,
    key: &str,
    query: &Query,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult {
    let (want_out, want_err) = (query.flag("stdout"), query.flag("stderr"));
    let c = {
        let st = state.clone();
        let key = key.to_string();
        blocking(move || find(&st, &key)).await?
    };
    // docker ignores stdin=1 for a container created without OpenStdin.
    let want_in = query.flag("stdin") && c.config.open_stdin;
    // `logs=1`: what the container wrote so far comes first; `stream=0`: only that.
    let (replay, stream) = (
        query.flag("logs"),
        query.get("stream").is_none() || query.flag("stream"),
    );
    let offset = std::fs::metadata(c.log_path())
        .map(|m| m.len())
        .unwrap_or(0);
    let tty = c.config.tty;
    let upgrade = hyper::upgrade::on(&mut req);
    let root = state.engine.root.clone();
    tokio::spawn(async move {
        let Some((mut rd, tx, writer)) = split_upgraded(upgrade).await else {
            return;
        };
        let started_before = c.state().map(|s| s.started_at).unwrap_or(0);
        if replay {
            let (c, tx) = (c.clone(), tx.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let (mut out, mut err) = (
                    super::containers::output_writer(&tx, want_out, tty, 1),
                    super::containers::output_writer(&tx, want_err, tty, 2),
                );
                let show = crate::run::logs::Show { timestamps: false };
                let _ = crate::run::logs::print_range(
                    &c.log_path(),
                    offset,
                    show,
                    &mut *out,
                    &mut *err,
                );
            })
            .await;
        }
        if !stream {
            drop(tx);
            let _ = writer.await;
            return;
        }
        let hello: &[u8] = if want_in {
            b"attach stdin\n"
        } else {
            b"attach\n"
        };
        let mut stdin_task = None;
        let mut live = None;
        if tty {
            // The pty's output comes from the monitor, and stdin goes to it.
            if let Some(sock) = reach_monitor(&root, &c, started_before, &tx).await {
                let (sr, mut sw) = sock.into_split();
                if sw.write_all(hello).await.is_ok() {
                    live = Some(sr);
                    stdin_task = Some(tokio::spawn(async move {
                        if want_in {
                            let _ = tokio::io::copy(&mut rd, &mut sw).await;
                            let _ = sw.shutdown().await;
                        }
                        // Keeps the monitor's side open until the output ends.
                        std::future::pending::<()>().await;
                    }));
                }
            }
        } else if want_in {
            let (root, c, tx) = (root.clone(), c.clone(), tx.clone());
            stdin_task = Some(tokio::spawn(async move {
                let Some(sock) = reach_monitor(&root, &c, started_before, &tx).await else {
                    return;
                };
                drop(tx);
                let (_sr, mut sw) = sock.into_split();
                if sw.write_all(hello).await.is_ok() {
                    let _ = tokio::io::copy(&mut rd, &mut sw).await;
                    let _ = sw.shutdown().await;
                }
                std::future::pending::<()>().await;
            }));
        }
        match live {
            Some(mut sr) => {
                let mut buf = vec![0u8; 8192];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if want_out
                                && tx
                                    .send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                                    .await
                                    .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            }
            None => {
                let tx = tx.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    follow_log(
                        &root,
                        &c,
                        offset,
                        started_before,
                        tty,
                        want_out,
                        want_err,
                        tx,
                    )
                })
                .await;
            }
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        drop(tx);
        let _ = writer.await;
    });
    Ok(hijacked(tty))
}

/// The container's log from `offset` on, until it has run and stopped (it may not have
/// started yet) or the client left.
#[allow(clippy::too_many_arguments)]
fn follow_log(
    root: &std::path::Path,
    c: &Container,
    offset: u64,
    started_before: i128,
    tty: bool,
    want_out: bool,
    want_err: bool,
    tx: mpsc::Sender<Chunk>,
) {
    let (mut out, mut err) = (
        output_writer(&tx, want_out, tty, 1),
        output_writer(&tx, want_err, tty, 2),
    );
    let done = || tx.is_closed() || ran_and_stopped(root, c, started_before);
    let show = crate::run::logs::Show { timestamps: false };
    if let Err(e) =
        crate::run::logs::follow(&c.log_path(), offset, show, &mut *out, &mut *err, &done)
    {
        tracing::debug!("attach to {}: {e}", c.id());
    }
}

/// `h` and `w` of a resize request.
pub(super) fn size(query: &Query) -> ApiResult<(u16, u16)> {
    let get = |k: &str| {
        let v = query.get(k).unwrap_or("");
        v.parse::<u16>().map_err(|_| {
            ApiError::bad_request(format!("invalid {k} {v:?}: expected a number of cells"))
        })
    };
    Ok((get("h")?, get("w")?))
}

/// `POST /containers/{id}/resize?h=&w=`: the pty of a running `-t` container.
pub async fn resize(state: &Arc<State>, key: &str, query: &Query) -> ApiResult {
    let (h, w) = size(query)?;
    let st = state.clone();
    let key = key.to_string();
    blocking(move || {
        let c = find(&st, &key)?;
        if !c.state()?.is_running() {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                c.id()
            )));
        }
        Ok(crate::run::attach::resize(&c, h, w)?)
    })
    .await?;
    http::no_content(StatusCode::OK)
}
