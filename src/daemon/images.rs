//! Image endpoints over the store: `GET /images/json` (filters dangling, reference, label,
//! before, since), `GET /images/{name}/json` (docker's ImageInspect), `/history`, `POST
//! /images/{name}/tag`, `DELETE /images/{name}`, `POST /images/prune`, `GET /images/get` and
//! `/images/{name}/get` (docker archives), `POST /images/load`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::http::{
    json, json_line, no_content, stream, ApiError, ApiResult, BodyReader, ChannelWriter, Filters,
    Query,
};
use super::{blocking, State};
use crate::cache::export::{self, LayerCompression};
use crate::engine::events::Event;
use crate::engine::images::{created_secs, familiar, familiar_tag, summary, Listed, Removal};
use crate::engine::EngineError;
use crate::graph::Platform;
use crate::reference::Reference;

/// Images containers use (docker keeps those).
fn in_use(state: &State) -> ApiResult<crate::engine::images::InUse> {
    crate::run::state::Containers::open(&state.engine.root)
        .and_then(|c| c.images_in_use())
        .map_err(|e| ApiError::internal(format!("reading the containers: {e}")))
}

/// `reference=` patterns match the familiar name or `name:tag` (docker's FamiliarMatch).
fn reference_matches(patterns: &[String], tags: &[String]) -> bool {
    patterns.is_empty()
        || tags.iter().any(|t| {
            let (repo, tag) = familiar(t);
            let full = format!("{repo}:{tag}");
            patterns
                .iter()
                .any(|p| glob_match(p, &repo) || glob_match(p, &full))
        })
}

/// Shell-style matching of a whole name (`*` does not cross `/`, like Go's path.Match).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (ps, ns): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), name.split('/').collect());
    ps.len() == ns.len()
        && ps
            .iter()
            .zip(&ns)
            .all(|(p, n)| crate::context::match_segment(p, n))
}

fn keep_listed(
    f: &Filters,
    l: &Listed,
    before: Option<i64>,
    since: Option<i64>,
) -> ApiResult<bool> {
    let created = created_secs(&l.image).unwrap_or(0);
    let dangling = l.tags.is_empty();
    let dangling_ok = match f.values("dangling") {
        [] => true,
        [v] if v == "true" || v == "1" => dangling,
        [v] if v == "false" || v == "0" => !dangling,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'dangling={}'",
                other.join(",")
            )))
        }
    };
    let labels = l.image.config.config.labels.clone().unwrap_or_default();
    Ok(dangling_ok
        && reference_matches(f.values("reference"), &l.tags)
        && f.labels_match("label", &labels)
        && before.is_none_or(|b| created < b)
        && since.is_none_or(|s| created > s))
}

/// The creation time of the image a `before=`/`since=` filter names.
fn filter_image_time(state: &State, f: &Filters, key: &str) -> ApiResult<Option<i64>> {
    match f.values(key).first() {
        None => Ok(None),
        Some(name) => {
            let img = state.engine.store.lookup(name).map_err(EngineError::from)?;
            Ok(Some(created_secs(&img).unwrap_or(0)))
        }
    }
}

pub async fn list(state: &Arc<State>, query: &Query) -> ApiResult {
    let filters = query.filters()?;
    filters.only(&["dangling", "reference", "label", "before", "since"])?;
    let st = state.clone();
    let mut rows: Vec<(i64, Value)> = blocking(move || {
        let before = filter_image_time(&st, &filters, "before")?;
        let since = filter_image_time(&st, &filters, "since")?;
        let mut rows = Vec::new();
        for l in crate::engine::images::list(&st.engine.store)? {
            if keep_listed(&filters, &l, before, since)? {
                rows.push((created_secs(&l.image).unwrap_or(0), summary(&l)));
            }
        }
        Ok(rows)
    })
    .await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    json(&rows.into_iter().map(|r| r.1).collect::<Vec<_>>())
}

pub async fn inspect(state: &Arc<State>, name: &str) -> ApiResult {
    let st = state.clone();
    let name = name.to_string();
    let doc = blocking(move || {
        let store = &st.engine.store;
        let img = store.lookup(&name).map_err(EngineError::from)?;
        let tags = store
            .tags_of(&img.manifest_digest)
            .map_err(EngineError::from)?;
        let driver = st
            .engine
            .snapshotter()
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        Ok(crate::engine::images::inspect_json(&img, &tags, &driver))
    })
    .await?;
    json(&doc)
}

pub async fn history(state: &Arc<State>, name: &str) -> ApiResult {
    let st = state.clone();
    let name = name.to_string();
    let rows = blocking(move || {
        let store = &st.engine.store;
        let img = store.lookup(&name).map_err(EngineError::from)?;
        let tags: Vec<String> = store
            .tags_of(&img.manifest_digest)
            .map_err(EngineError::from)?
            .iter()
            .map(|t| familiar_tag(t))
            .collect();
        Ok(crate::engine::images::history(&img)
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                json!({
                    "Id": if i == 0 { img.id().to_string() } else { "<missing>".to_string() },
                    "Created": h.created.unwrap_or(0),
                    "CreatedBy": h.created_by,
                    "Tags": if i == 0 { json!(tags) } else { Value::Null },
                    "Size": h.size,
                    "Comment": h.comment,
                })
            })
            .collect::<Vec<_>>())
    })
    .await?;
    json(&rows)
}

pub async fn tag(state: &Arc<State>, name: &str, query: &Query) -> ApiResult {
    let repo = query.get("repo").unwrap_or("").to_string();
    if repo.is_empty() {
        return Err(ApiError::bad_request(
            "repository name must have at least one component",
        ));
    }
    let target = match query.get("tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo,
    };
    let st = state.clone();
    let name = name.to_string();
    blocking(move || {
        let (img, target) = crate::engine::images::tag(&st.engine.store, &name, &target)?;
        st.engine.events.publish(
            Event::new("image", "tag", img.id().as_str())
                .with("name", &familiar_tag(&target.to_string())),
        );
        Ok(())
    })
    .await?;
    no_content(StatusCode::CREATED)
}

fn removal_json(r: &Removal) -> Value {
    match r {
        Removal::Untagged(t) => json!({ "Untagged": t }),
        Removal::Deleted(id) => json!({ "Deleted": id.to_string() }),
    }
}

fn publish_removals(state: &State, removed: &[Removal], id_of_untagged: &str) {
    for r in removed {
        let event = match r {
            Removal::Untagged(t) => Event::new("image", "untag", id_of_untagged).with("name", t),
            Removal::Deleted(id) => Event::new("image", "delete", id.as_str()),
        };
        state.engine.events.publish(event);
    }
}

pub async fn remove(state: &Arc<State>, name: &str, query: &Query) -> ApiResult {
    let force = query.flag("force");
    let noprune = query.flag("noprune");
    let st = state.clone();
    let name = name.to_string();
    let removed = blocking(move || {
        let store = &st.engine.store;
        let id = store
            .lookup(&name)
            .map(|i| i.id().to_string())
            .map_err(EngineError::from)?;
        let removed = crate::engine::images::remove(store, &name, force, &in_use(&st)?)?;
        publish_removals(&st, &removed, &id);
        if !noprune {
            crate::engine::images::collect_garbage(store, false)?;
        }
        Ok(removed)
    })
    .await?;
    json(&removed.iter().map(removal_json).collect::<Vec<_>>())
}

pub async fn prune(state: &Arc<State>, query: &Query) -> ApiResult {
    let filters = query.filters()?;
    filters.only(&["dangling", "label", "label!", "until"])?;
    let all = matches!(filters.values("dangling"), [v] if v == "false" || v == "0");
    let until = match filters.values("until").first() {
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("invalid filter 'until={v}': expected unix seconds"))
        })?),
        None => None,
    };
    let st = state.clone();
    let (removed, reclaimed) = blocking(move || {
        let keep = |l: &Listed| {
            let labels = l.image.config.config.labels.clone().unwrap_or_default();
            let not_labels = filters.values("label!");
            !filters.labels_match("label", &labels)
                || (!not_labels.is_empty()
                    && not_labels.iter().any(|nl| {
                        Filters(std::iter::once(("l".to_string(), vec![nl.clone()])).collect())
                            .labels_match("l", &labels)
                    }))
                || until.is_some_and(|u| created_secs(&l.image).unwrap_or(0) >= u)
        };
        let (removed, reclaimed) =
            crate::engine::images::prune(&st.engine.store, all, &in_use(&st)?, keep)?;
        publish_removals(&st, &removed, "");
        Ok((removed, reclaimed))
    })
    .await?;
    json(&json!({
        "ImagesDeleted": if removed.is_empty() { Value::Null } else { json!(removed.iter().map(removal_json).collect::<Vec<_>>()) },
        "SpaceReclaimed": reclaimed,
    }))
}

pub async fn save(state: &Arc<State>, names: Vec<&str>) -> ApiResult {
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given (names=…)"));
    }
    let names: Vec<String> = names.into_iter().map(str::to_string).collect();
    let st = state.clone();
    // Look everything up (and compress what must be) before the first byte: a missing image
    // is a 404, not a broken archive.
    let images = blocking(move || {
        let store = &st.engine.store;
        let mut images = Vec::new();
        for name in &names {
            let img = store.lookup(name).map_err(EngineError::from)?;
            let all_tags = store
                .tags_of(&img.manifest_digest)
                .map_err(EngineError::from)?;
            let tags = match Reference::parse(name) {
                Ok(r) if r.digest.is_none() => {
                    let t = r.with_default_tag().to_string();
                    if all_tags.contains(&t) {
                        vec![t]
                    } else {
                        all_tags
                    }
                }
                _ => all_tags,
            };
            let exported =
                export::prepare_for_export(store, &img.manifest_digest, LayerCompression::Keep)
                    .map_err(EngineError::from)?;
            st.engine
                .events
                .publish(Event::new("image", "save", img.id().as_str()).with("name", name));
            images.push((tags, exported));
        }
        Ok((st, images))
    })
    .await?;
    let (tx, resp) = stream("application/x-tar");
    let (st, images) = images;
    tokio::task::spawn_blocking(move || {
        let mut w = std::io::BufWriter::with_capacity(
            1 << 20,
            ChannelWriter {
                tx: tx.clone(),
                frame: None,
            },
        );
        let result = export::write_docker_archive(&st.engine.store, &images, &mut w)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| std::io::Write::flush(&mut w));
        drop(w);
        if let Err(e) = result {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!("saving images: {e}");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    Ok(resp)
}

pub async fn load(state: &Arc<State>, query: &Query, req: Request<Incoming>) -> ApiResult {
    let _quiet = query.flag("quiet");
    let reader = BodyReader::new(req.into_body());
    let st = state.clone();
    let loaded = blocking(move || {
        let loaded = crate::cache::import::load_archive(
            &st.engine.store,
            std::io::BufReader::new(reader),
            &Platform::host(),
        )
        .map_err(EngineError::from)?;
        if loaded.is_empty() {
            return Err(ApiError::bad_request(format!(
                "the archive holds no image for {}",
                Platform::host()
            )));
        }
        for img in &loaded {
            let mut e = Event::new("image", "load", img.id.as_str());
            if let Some(t) = img.tags.first() {
                e = e.with("name", &familiar_tag(t));
            }
            st.engine.events.publish(e);
        }
        Ok(loaded)
    })
    .await?;
    let (tx, resp) = stream("application/json");
    let mut lines = Vec::new();
    for img in &loaded {
        if img.tags.is_empty() {
            lines.push(format!("Loaded image ID: {}\n", img.id));
        }
        for t in &img.tags {
            lines.push(format!("Loaded image: {}\n", familiar_tag(t)));
        }
    }
    tokio::spawn(async move {
        for l in lines {
            if tx.send(json_line(&json!({ "stream": l }))).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filter() {
        let tags = vec!["docker.io/library/busybox:test".to_string()];
        assert!(reference_matches(&["busybox".into()], &tags));
        assert!(reference_matches(&["busybox:test".into()], &tags));
        assert!(reference_matches(&["busy*".into()], &tags));
        assert!(!reference_matches(&["busybox:latest".into()], &tags));
        assert!(!reference_matches(&["other".into()], &tags));
        assert!(reference_matches(&[], &[]));
    }
}
