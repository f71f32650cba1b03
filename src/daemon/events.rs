//! `GET /events`: the engine's event bus as docker's JSON event stream, with `filters`
//! (type, event, image, container, volume, network, label), `since` and `until` (unix
//! seconds with optional fraction). Past events are sent only when `since` is given; the
//! stream ends at `until`, when the client goes, or when the daemon stops.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::http::{json_line, stream, ApiError, ApiResult, Filters, Query};
use super::State;
use crate::engine::events::Event;

/// `1700000000`, `1700000000.5` → nanoseconds since the epoch.
fn parse_time(key: &str, v: &str) -> ApiResult<i64> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid {key} {v:?}: expected unix seconds"))
    })?;
    let mut nanos = 0i64;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let parsed: i64 = digits.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid {key} {v:?}: expected unix seconds"))
        })?;
        nanos = parsed * 10i64.pow(9 - digits.len() as u32);
    }
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Whether an event passes the filters.
fn matches(f: &Filters, e: &Event) -> bool {
    let any = |key: &str, values: &[&str]| {
        let wanted = f.values(key);
        wanted.is_empty() || wanted.iter().any(|w| values.contains(&w.as_str()))
    };
    let name = e.attributes.get("name").map(String::as_str).unwrap_or("");
    let image = e.attributes.get("image").map(String::as_str).unwrap_or("");
    let object = |kind: &str| {
        if e.kind == kind {
            vec![e.id.as_str(), name]
        } else {
            Vec::new()
        }
    };
    let mut image_values = object("image");
    image_values.push(image);
    any("type", &[&e.kind])
        && any("event", &[&e.action])
        && (f.values("image").is_empty() || any("image", &image_values))
        && (f.values("container").is_empty() || any("container", &object("container")))
        && (f.values("volume").is_empty() || any("volume", &object("volume")))
        && (f.values("network").is_empty() || any("network", &object("network")))
        && f.labels_match("label", &e.attributes)
}

/// Docker's JSON for an event.
fn render(e: &Event) -> serde_json::Value {
    let mut v = json!({
        "Type": e.kind,
        "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": e.attributes},
        "scope": "local",
        "time": e.time_nano / 1_000_000_000,
        "timeNano": e.time_nano,
    });
    // The old top-level fields, still read by older clients.
    if matches!(e.kind.as_str(), "image" | "container") {
        v["status"] = json!(e.action);
        v["id"] = json!(e.id);
        if let Some(from) = e.attributes.get("image") {
            v["from"] = json!(from);
        }
    }
    v
}

pub fn stream_events(state: &Arc<State>, query: &Query) -> ApiResult {
    let filters = query.filters()?;
    filters.only(&[
        "type",
        "event",
        "image",
        "container",
        "volume",
        "network",
        "label",
    ])?;
    let since = query
        .get("since")
        .filter(|v| !v.is_empty())
        .map(|v| parse_time("since", v))
        .transpose()?;
    let until = query
        .get("until")
        .filter(|v| !v.is_empty())
        .map(|v| parse_time("until", v))
        .transpose()?;
    let (past, mut live) = state.engine.events.subscribe_with(since.is_some());
    let mut shutdown = state.shutdown.clone();
    let (tx, resp) = stream("application/json");
    let in_window = move |e: &Event| {
        since.is_none_or(|s| e.time_nano >= s) && until.is_none_or(|u| e.time_nano <= u)
    };
    tokio::spawn(async move {
        if since.is_some() {
            for e in past.iter().filter(|e| in_window(e) && matches(&filters, e)) {
                if tx.send(json_line(&render(e))).await.is_err() {
                    return;
                }
            }
        }
        let now = i64::try_from(crate::run::state::now_nanos()).unwrap_or(i64::MAX);
        let remaining = match until {
            Some(u) if u <= now => return,
            Some(u) => Duration::from_nanos(u64::try_from(u - now).unwrap_or(0)),
            None => Duration::from_secs(u64::MAX / 4),
        };
        let deadline = tokio::time::sleep(remaining);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if in_window(&e) && matches(&filters, &e)
                            && tx.send(json_line(&render(&e))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("an /events client fell behind; {n} events skipped");
                    }
                    Err(_) => return,
                },
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("since", "12").unwrap(), 12_000_000_000);
        assert_eq!(parse_time("since", "12.5").unwrap(), 12_500_000_000);
        assert_eq!(parse_time("since", "1.000000001").unwrap(), 1_000_000_001);
        assert!(parse_time("since", "soon").is_err());
    }

    #[test]
    fn filters_select_events() {
        let e = Event::new("image", "tag", "sha256:abc").with("name", "app:latest");
        let q = |s: &str| {
            Query::parse(Some(&format!(
                "filters={}",
                form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
            )))
            .filters()
            .unwrap()
        };
        assert!(matches(&q(r#"{"type":["image"]}"#), &e));
        assert!(!matches(&q(r#"{"type":["container"]}"#), &e));
        assert!(matches(&q(r#"{"event":{"tag":true}}"#), &e));
        assert!(matches(&q(r#"{"image":["app:latest"]}"#), &e));
        assert!(!matches(&q(r#"{"image":["other"]}"#), &e));
        assert!(!matches(&q(r#"{"container":["x"]}"#), &e));
        let r = render(&e);
        assert_eq!(r["Actor"]["Attributes"]["name"], "app:latest");
        assert_eq!(r["status"], "tag");
    }
}
