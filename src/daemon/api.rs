//! Routing: the optional `/v1.NN` prefix (refused when newer than [`API_VERSION`] or older
//! than [`MIN_API_VERSION`]), then method + path to a handler. Every response carries
//! docker's `Api-Version`, `Docker-Experimental`, `Ostype` and `Server` headers; every
//! failure is `{"message": …}` with docker's status code.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{ApiError, ApiResult, Body, Query};
use super::{
    archive, attach, build, containers, events, exec, images, networks, registry, system, volumes,
    State, API_VERSION, MIN_API_VERSION,
};

/// `1.43` → (1, 43).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Splits `/v1.43/images/json` into (`Some("1.43")`, `/images/json`).
fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let (version, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if parse_version(version).is_some() {
            return (Some(version), tail);
        }
    }
    (None, path)
}

fn check_version(version: Option<&str>) -> Result<(), ApiError> {
    let Some(v) = version else { return Ok(()) };
    let (Some(asked), Some(max), Some(min)) = (
        parse_version(v),
        parse_version(API_VERSION),
        parse_version(MIN_API_VERSION),
    ) else {
        return Err(ApiError::bad_request(format!("invalid API version {v:?}")));
    };
    if asked > max {
        return Err(ApiError::bad_request(format!(
            "client version {v} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if asked < min {
        return Err(ApiError::bad_request(format!(
            "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok(())
}

/// Handles one request; never fails (errors become docker-style responses).
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (version, route) = split_version(&path);
    tracing::debug!("{method} {path}");
    let result = match check_version(version) {
        Ok(()) => dispatch(state, req, &method, route).await,
        Err(e) => Err(e),
    };
    let mut resp = result.unwrap_or_else(|e| {
        if e.status.is_server_error() {
            tracing::warn!("{method} {path}: {}", e.message);
        }
        e.response()
    });
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert(
        hyper::header::SERVER,
        HeaderValue::from_static(concat!("kiln/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    Ok(resp)
}

/// `/images/{name}/{action}` with a name that may hold slashes: (name, action).
fn image_action<'a>(route: &'a str, actions: &[&str]) -> Option<(&'a str, &'a str)> {
    let rest = route.strip_prefix("/images/")?;
    let (name, action) = rest.rsplit_once('/')?;
    (!name.is_empty() && actions.contains(&action)).then_some((name, action))
}

/// `/containers/{id}/{action}` → `id`.
fn container_action<'a>(route: &'a str, action: &str) -> Option<&'a str> {
    object_action(route, "/containers/", action)
}

/// `{prefix}{id}/{action}` → `id`.
fn object_action<'a>(route: &'a str, prefix: &str, action: &str) -> Option<&'a str> {
    let rest = route.strip_prefix(prefix)?;
    let (id, act) = rest.split_once('/')?;
    (!id.is_empty() && act == action).then_some(id)
}

/// `/networks/{id}/connect|disconnect` → (`id`, action).
fn network_action(route: &str) -> Option<(&str, &str)> {
    let rest = route.strip_prefix("/networks/")?;
    let (id, action) = rest.split_once('/')?;
    (!id.is_empty() && matches!(action, "connect" | "disconnect")).then_some((id, action))
}

/// `/networks/{id}` → `id` (one non-empty path segment after the prefix).
fn one_segment<'a>(route: &'a str, prefix: &str) -> Option<&'a str> {
    route
        .strip_prefix(prefix)
        .filter(|r| !r.is_empty() && !r.contains('/'))
}

async fn dispatch(
    state: Arc<State>,
    req: Request<Incoming>,
    method: &Method,
    route: &str,
) -> ApiResult {
    let query = Query::parse(req.uri().query());
    let m = method.clone();
    match (m, route) {
        (Method::GET | Method::HEAD, "/_ping") => system::ping(method),
        (Method::GET, "/version") => system::version(&state),
        (Method::GET, "/info") => system::info(&state).await,
        (Method::GET, "/events") => events::stream_events(&state, &query),
        (Method::GET, "/system/df") => system::df(&state).await,
        (Method::GET, "/images/json") => images::list(&state, &query).await,
        (Method::POST, "/images/prune") => images::prune(&state, &query).await,
        (Method::GET, "/images/get") => images::save(&state, query.all("names")).await,
        (Method::POST, "/images/load") => images::load(&state, &query, req).await,
        (Method::POST, "/images/create") => registry::pull(&state, &query, req).await,
        (Method::POST, "/auth") => registry::auth(req).await,
        (Method::POST, "/build") => build::build(&state, &query, req).await,
        (Method::POST, "/build/prune") => build::prune(&state, &query).await,
        (Method::GET, "/containers/json") => containers::list(&state, &query).await,
        (Method::POST, "/containers/create") => containers::create(&state, &query, req).await,
        (Method::POST, r) if container_action(r, "start").is_some() => {
            containers::start(&state, container_action(r, "start").unwrap_or_default()).await
        }
        (Method::GET, r) if container_action(r, "json").is_some() => {
            containers::inspect(&state, container_action(r, "json").unwrap_or_default()).await
        }
        (Method::GET, r) if container_action(r, "logs").is_some() => {
            containers::logs(
                &state,
                container_action(r, "logs").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::POST, r) if container_action(r, "attach").is_some() => {
            let id = container_action(r, "attach")
                .unwrap_or_default()
                .to_string();
            attach::attach(&state, &id, &query, req).await
        }
        (Method::POST, r) if container_action(r, "resize").is_some() => {
            attach::resize(
                &state,
                container_action(r, "resize").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::POST, r) if container_action(r, "exec").is_some() => {
            let id = container_action(r, "exec").unwrap_or_default().to_string();
            exec::create(&state, &id, req).await
        }
        (Method::POST, r) if object_action(r, "/exec/", "start").is_some() => {
            let id = object_action(r, "/exec/", "start")
                .unwrap_or_default()
                .to_string();
            exec::start(&state, &id, req).await
        }
        (Method::GET, r) if object_action(r, "/exec/", "json").is_some() => {
            exec::inspect(
                &state,
                object_action(r, "/exec/", "json").unwrap_or_default(),
            )
            .await
        }
        (Method::POST, r) if object_action(r, "/exec/", "resize").is_some() => {
            exec::resize(
                &state,
                object_action(r, "/exec/", "resize").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::POST, r) if container_action(r, "stop").is_some() => {
            containers::stop(
                &state,
                container_action(r, "stop").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::POST, r) if container_action(r, "restart").is_some() => {
            let id = container_action(r, "restart").unwrap_or_default();
            containers::restart(&state, id, &query).await
        }
        (Method::POST, "/containers/prune") => containers::prune(&state, &query).await,
        (Method::GET | Method::HEAD | Method::PUT, r)
            if container_action(r, "archive").is_some() =>
        {
            let id = container_action(r, "archive")
                .unwrap_or_default()
                .to_string();
            archive::serve(&state, &id, &query, req).await
        }
        (Method::POST, r) if network_action(r).is_some() => {
            let (id, action) = network_action(r).unwrap_or_default();
            let (id, join) = (id.to_string(), action == "connect");
            networks::connect(&state, &id, req, join).await
        }
        (Method::POST, r) if container_action(r, "kill").is_some() => {
            containers::kill(
                &state,
                container_action(r, "kill").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::POST, r) if container_action(r, "wait").is_some() => {
            containers::wait(
                &state,
                container_action(r, "wait").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::DELETE, r) if one_segment(r, "/containers/").is_some() => {
            containers::remove(
                &state,
                one_segment(r, "/containers/").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::GET, "/volumes") => volumes::list(&state, &query).await,
        (Method::POST, "/volumes/create") => volumes::create(&state, req).await,
        (Method::POST, "/volumes/prune") => volumes::prune(&state, &query).await,
        (Method::GET, r) if one_segment(r, "/volumes/").is_some() => {
            volumes::inspect(&state, one_segment(r, "/volumes/").unwrap_or_default()).await
        }
        (Method::DELETE, r) if one_segment(r, "/volumes/").is_some() => {
            volumes::remove(
                &state,
                one_segment(r, "/volumes/").unwrap_or_default(),
                &query,
            )
            .await
        }
        (Method::GET, "/networks") => networks::list(&state, &query).await,
        (Method::POST, "/networks/create") => networks::create(&state, req).await,
        (Method::POST, "/networks/prune") => networks::prune(&state, &query).await,
        (Method::GET, r) if one_segment(r, "/networks/").is_some() => {
            networks::inspect(&state, one_segment(r, "/networks/").unwrap_or_default()).await
        }
        (Method::DELETE, r) if one_segment(r, "/networks/").is_some() => {
            networks::remove(&state, one_segment(r, "/networks/").unwrap_or_default()).await
        }
        (Method::GET, r) if image_action(r, &["json"]).is_some() => {
            let (name, _) = image_action(r, &["json"]).unwrap_or_default();
            images::inspect(&state, name).await
        }
        (Method::GET, r) if image_action(r, &["history"]).is_some() => {
            let (name, _) = image_action(r, &["history"]).unwrap_or_default();
            images::history(&state, name).await
        }
        (Method::GET, r) if image_action(r, &["get"]).is_some() => {
            let (name, _) = image_action(r, &["get"]).unwrap_or_default();
            images::save(&state, vec![name]).await
        }
        (Method::POST, r) if image_action(r, &["push"]).is_some() => {
            let (name, _) = image_action(r, &["push"]).unwrap_or_default();
            let name = name.to_string();
            registry::push(&state, &name, &query, req).await
        }
        (Method::POST, r) if image_action(r, &["tag"]).is_some() => {
            let (name, _) = image_action(r, &["tag"]).unwrap_or_default();
            images::tag(&state, name, &query).await
        }
        (Method::DELETE, r) if r.starts_with("/images/") && r.len() > "/images/".len() => {
            images::remove(&state, &r["/images/".len()..], &query).await
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "page not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix() {
        assert_eq!(
            split_version("/v1.43/images/json"),
            (Some("1.43"), "/images/json")
        );
        assert_eq!(split_version("/_ping"), (None, "/_ping"));
        assert_eq!(split_version("/v1.43"), (Some("1.43"), "/"));
        assert_eq!(
            split_version("/volumes/vx/json"),
            (None, "/volumes/vx/json")
        );
        assert!(check_version(Some("1.41")).is_ok());
        assert!(check_version(None).is_ok());
        let e = check_version(Some("1.50")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("too new"), "{}", e.message);
        assert!(check_version(Some("1.12")).is_err());
    }

    #[test]
    fn image_names_with_slashes() {
        assert_eq!(
            image_action("/images/localhost:5000/a/b:1/json", &["json"]),
            Some(("localhost:5000/a/b:1", "json"))
        );
        assert_eq!(image_action("/images/json", &["json"]), None);
        assert_eq!(image_action("/images/x/tag", &["json"]), None);
    }
}
