//! `HEAD|GET|PUT /containers/{id}/archive?path=`: what `docker cp` uses. HEAD and GET
//! answer with the path's stat in `X-Docker-Container-Path-Stat` (base64 JSON); GET
//! streams the path as a tar archive; PUT unpacks a tar archive into the directory `path`.
//! The work is [`crate::run::archive`]'s.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};

use super::http::{no_content, ApiError, ApiResult, BodyReader, ChannelWriter, Query};
use super::{blocking, State};
use crate::push::credentials::base64;
use crate::run::archive;
use crate::run::state::Containers;
use crate::run::RunError;

const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn not_found_in(key: &str) -> impl Fn(RunError) -> RunError + '_ {
    move |e| match e {
        RunError::NotFound(m) => RunError::NotFound(format!("{m} in container {key}")),
        e => e,
    }
}

pub async fn serve(
    state: &Arc<State>,
    key: &str,
    query: &Query,
    req: Request<Incoming>,
) -> ApiResult {
    let path = query
        .get("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("path is required"))?
        .to_string();
    let method = req.method().clone();
    let root = state.engine.root.clone();
    let key = key.to_string();
    if method == Method::PUT {
        let body = BodyReader::new(req.into_body());
        blocking(move || {
            let c = Containers::open(&root)?.find(&key)?;
            archive::write_into(&root, &c, &path, body).map_err(not_found_in(&key))?;
            Ok(())
        })
        .await?;
        return no_content(StatusCode::OK);
    }
    let (tx, mut resp) = super::http::stream("application/x-tar");
    let (stat_tx, stat_rx) = tokio::sync::oneshot::channel::<Result<String, ApiError>>();
    let head = method == Method::HEAD;
    tokio::task::spawn_blocking(move || {
        let prepared = Containers::open(&root)
            .and_then(|cs| cs.find(&key))
            .and_then(|c| archive::prepare_read(&root, &c, &path))
            .map_err(not_found_in(&key));
        let (fs, host, stat) = match prepared {
            Ok(x) => x,
            Err(e) => {
                let _ = stat_tx.send(Err(e.into()));
                return;
            }
        };
        let header = serde_json::to_vec(&stat).unwrap_or_default();
        if stat_tx.send(Ok(base64::encode(&header))).is_err() || head {
            return;
        }
        let written = crate::executor::export_fs::write_tar_named(
            &host,
            &stat.name,
            ChannelWriter {
                tx: tx.clone(),
                frame: None,
            },
        );
        if let Err(e) = written {
            tracing::debug!("archive of {}: {e}", host.display());
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        drop(fs);
    });
    let stat = stat_rx
        .await
        .map_err(|_| ApiError::internal("the archive task ended early"))??;
    let value = HeaderValue::from_str(&stat).map_err(|e| ApiError::internal(e.to_string()))?;
    resp.headers_mut().insert(STAT_HEADER, value);
    if head {
        *resp.body_mut() = super::http::empty();
    }
    Ok(resp)
}
