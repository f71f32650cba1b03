//! `POST /build`: the classic builder API the docker CLI uses with `DOCKER_BUILDKIT=0`. The
//! body is the context tar; `dockerfile`, `t`, `buildargs`, `labels`, `target`, `nocache`,
//! `q` and `platform` choose what to build. Progress is docker's classic JSON message stream
//! (`{"stream":"Step 1/5 : FROM …"}`, the step output, ` ---> Using cache`), ending with
//! `{"aux":{"ID":"sha256:…"}}`, `Successfully built <id>` and `Successfully tagged
//! <name>`; a failure is `{"errorDetail":{"message":…},"error":…}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::Request;
use serde_json::json;
use tokio::sync::mpsc;

use super::http::{json_line, stream, ApiError, ApiResult, BodyReader, Chunk, Query};
use super::State;
use crate::context::ContextSource;
use crate::engine::build::{BuildProgress, BuildRequest, DockerfileSource, PlannedStage};
use crate::engine::images::familiar_tag;
use crate::executor::build::Progress;

/// Renders the executor's events as the classic builder's messages.
struct ClassicProgress {
    tx: mpsc::Sender<Chunk>,
    quiet: bool,
    steps: Mutex<Steps>,
}

#[derive(Default)]
struct Steps {
    stages: Vec<PlannedStage>,
    total: usize,
    shown: usize,
    froms: BTreeSet<String>,
}

impl ClassicProgress {
    fn say(&self, text: &str) {
        if !self.quiet {
            let _ = self.tx.blocking_send(json_line(&json!({ "stream": text })));
        }
    }
}

/// `[build 2/3] COPY a /a` → (`build`, 2, `COPY a /a`).
fn split_label(label: &str) -> Option<(&str, usize, &str)> {
    let rest = label.strip_prefix('[')?;
    let (head, text) = rest.split_once("] ")?;
    let (stage, pos) = head.rsplit_once(' ')?;
    let n = pos.split_once('/')?.0.parse().ok()?;
    Some((stage, n, text))
}

impl Progress for ClassicProgress {
    fn started(&self, _id: usize, name: &str) {
        let mut lines = Vec::new();
        if let Ok(mut s) = self.steps.lock() {
            let (stage, n, text) = split_label(name).unwrap_or(("", 0, name));
            if n == 1 && s.froms.insert(stage.to_string()) {
                if let Some(from) = s
                    .stages
                    .iter()
                    .find(|p| p.label == stage)
                    .map(|p| p.from.clone())
                {
                    s.shown += 1;
                    lines.push(format!("Step {}/{} : {from}\n", s.shown, s.total));
                }
            }
            let written = s
                .stages
                .iter()
                .find(|p| p.label == stage)
                .and_then(|p| p.steps.get(n.wrapping_sub(1)))
                .filter(|t| !t.is_empty())
                .cloned()
                .unwrap_or_else(|| text.to_string());
            s.shown += 1;
            lines.push(format!(
                "Step {}/{} : {written}\n",
                s.shown,
                s.total.max(s.shown)
            ));
        }
        for l in lines {
            self.say(&l);
        }
    }

    fn done(&self, _id: usize, seconds: f64) {
        self.say(&format!(" ---> Done in {seconds:.1}s\n"));
    }

    fn cached(&self, _id: usize) {
        self.say(" ---> Using cache\n");
    }

    fn log(&self, _id: usize, line: &str) {
        self.say(&format!("{line}\n"));
    }
}

impl BuildProgress for ClassicProgress {
    fn planned(&self, stages: &[PlannedStage]) {
        if let Ok(mut s) = self.steps.lock() {
            s.total = stages.iter().map(|p| p.steps.len() + 1).sum();
            s.stages = stages.to_vec();
        }
    }
}

/// kiln's own clients (`kiln --host … build`) ask for the executor's events as they are
/// (`kilnprogress=1`) and render them exactly as an in-process build does.
struct KilnProgress {
    tx: mpsc::Sender<Chunk>,
}

impl KilnProgress {
    fn send(&self, event: serde_json::Value) {
        let _ = self.tx.blocking_send(json_line(&json!({ "kiln": event })));
    }
}

impl Progress for KilnProgress {
    fn started(&self, id: usize, name: &str) {
        self.send(json!({"started": {"id": id, "name": name}}));
    }

    fn done(&self, id: usize, seconds: f64) {
        self.send(json!({"done": {"id": id, "seconds": seconds}}));
    }

    fn cached(&self, id: usize) {
        self.send(json!({"cached": {"id": id}}));
    }

    fn log(&self, id: usize, line: &str) {
        self.send(json!({"log": {"id": id, "line": line}}));
    }
}

impl BuildProgress for KilnProgress {
    fn note(&self, id: usize, text: &str) {
        self.send(json!({"note": {"id": id, "text": text}}));
    }
}

/// The docker CLI sends a context whose tar stream may stop right after the last file's data
/// (no padding, no end-of-archive blocks, when it adds a Dockerfile from outside the context);
/// Go's tar reader takes that as the end, the `tar` crate as a truncated archive. This reader
/// completes such a stream: for an uncompressed tar (ustar magic in the first header) it adds
/// the missing padding and the two zero blocks at EOF. Anything else passes unchanged.
struct CompleteTar<R> {
    inner: R,
    head: Vec<u8>,
    head_pos: usize,
    is_tar: Option<bool>,
    read: u64,
    tail: Option<u64>,
}

impl<R: std::io::Read> CompleteTar<R> {
    fn new(inner: R) -> Self {
        CompleteTar {
            inner,
            head: Vec::new(),
            head_pos: 0,
            is_tar: None,
            read: 0,
            tail: None,
        }
    }
}

impl<R: std::io::Read> std::io::Read for CompleteTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.is_tar.is_none() {
            let mut block = [0u8; 512];
            let mut n = 0;
            while n < block.len() {
                match self.inner.read(&mut block[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            self.head = block[..n].to_vec();
            self.is_tar = Some(n == 512 && &block[257..262] == b"ustar");
        }
        if self.head_pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            self.read += n as u64;
            return Ok(n);
        }
        if self.tail.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            let pad = (512 - self.read % 512) % 512;
            self.tail = Some(if self.is_tar == Some(true) {
                pad + 1024
            } else {
                0
            });
        }
        let left = self.tail.unwrap_or(0);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.tail = Some(left - n as u64);
        Ok(n)
    }
}

fn error_line(message: &str) -> Chunk {
    json_line(&json!({"errorDetail": {"message": message}, "error": message}))
}

pub async fn build(state: &Arc<State>, query: &Query, req: Request<Incoming>) -> ApiResult {
    if query.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad_request(
            "remote build contexts are not supported by kiln; send the context as the request body",
        ));
    }
    if query.get("version") == Some("2") {
        return Err(ApiError::bad_request(
            "kiln's API implements the classic builder (version=1); set DOCKER_BUILDKIT=0",
        ));
    }
    let build_args: BTreeMap<String, Option<String>> = query.json("buildargs")?.unwrap_or_default();
    let labels: BTreeMap<String, String> = query.json("labels")?.unwrap_or_default();
    let (registry, creds_dir) = super::registry::settings_for_build(&req)?;
    let mut request = BuildRequest::new(ContextSource::Tar(Box::new(CompleteTar::new(
        std::io::BufReader::new(BodyReader::new(req.into_body())),
    ))));
    request.registry = Some(registry);
    request.dockerfile = DockerfileSource::InContext(
        query
            .get("dockerfile")
            .filter(|d| !d.is_empty())
            .unwrap_or("Dockerfile")
            .to_string(),
    );
    request.tags = query.all("t").into_iter().map(str::to_string).collect();
    request.build_args = build_args
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    request.labels = labels;
    request.target = query
        .get("target")
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    if query.flag("nocache") {
        request.no_cache = crate::executor::build::NoCache::All;
    }
    request.platform = query
        .get("platform")
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let quiet = query.flag("q");
    let kiln_events = query.flag("kilnprogress");
    let (tx, resp) = stream("application/json");
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        // The client's registry credentials live as long as the build.
        let _creds = creds_dir;
        if kiln_events {
            let progress = KilnProgress { tx: tx.clone() };
            match crate::engine::build::build(&st.engine, request, &progress) {
                Ok(built) => {
                    let id = built.image.id().to_string();
                    let _ = tx.blocking_send(json_line(&json!({"aux": {"ID": id}})));
                }
                Err(e) => {
                    let _ = tx.blocking_send(error_line(&e.to_string()));
                }
            }
            return;
        }
        let progress = ClassicProgress {
            tx: tx.clone(),
            quiet,
            steps: Mutex::new(Steps::default()),
        };
        match crate::engine::build::build(&st.engine, request, &progress) {
            Ok(built) => {
                let id = built.image.id().to_string();
                let _ = tx.blocking_send(json_line(&json!({"aux": {"ID": id}})));
                if quiet {
                    let _ = tx.blocking_send(json_line(&json!({ "stream": format!("{id}\n") })));
                } else {
                    progress.say(&format!(
                        "Successfully built {}\n",
                        built.image.id().short()
                    ));
                    for t in &built.tags {
                        progress.say(&format!(
                            "Successfully tagged {}\n",
                            familiar_tag(&t.to_string())
                        ));
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(error_line(&e.to_string()));
            }
        }
    });
    Ok(resp)
}

/// `POST /build/prune` (`docker builder prune`): `all`, `keep-storage` (bytes).
pub async fn prune(state: &Arc<State>, query: &Query) -> ApiResult {
    query.filters()?.only(&[])?;
    let all = query.flag("all");
    let keep = match query
        .get("keep-storage")
        .filter(|v| !v.is_empty() && *v != "0")
    {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid keep-storage {v:?}: expected bytes"))
        })?),
        None => None,
    };
    let st = state.clone();
    let (removed, reclaimed) = super::blocking(move || {
        Ok(crate::engine::build::prune_cache(
            &st.engine.store,
            all,
            keep,
        )?)
    })
    .await?;
    super::http::json(&json!({
        "CachesDeleted": removed.iter().map(|d| d.hex().to_string()).collect::<Vec<_>>(),
        "SpaceReclaimed": reclaimed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut CompleteTar::new(bytes), &mut out).expect("read");
        out
    }

    #[test]
    fn truncated_tar_streams_are_completed() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"hello"[..]).expect("append");
        let full = b.into_inner().expect("tar");
        // What the docker CLI may send: the header and the data, nothing after.
        let cut = &full[..512 + 5];
        let fixed = complete(cut);
        assert_eq!(fixed.len(), 512 + 512 + 1024);
        let mut names = Vec::new();
        for e in tar::Archive::new(&fixed[..]).entries().expect("entries") {
            names.push(
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string(),
            );
        }
        assert_eq!(names, vec!["a"]);
        // A complete tar gets two more zero blocks (harmless); other input is unchanged.
        assert_eq!(complete(&full).len(), full.len() + 1024);
        assert_eq!(complete(b"FROM scratch\n"), b"FROM scratch\n");
        assert_eq!(complete(b""), b"");
    }

    #[test]
    fn labels_split() {
        assert_eq!(
            split_label("[build 2/3] COPY a /a"),
            Some(("build", 2, "COPY a /a"))
        );
        assert_eq!(
            split_label("[stage-0 1/1] RUN echo [x] y"),
            Some(("stage-0", 1, "RUN echo [x] y"))
        );
        assert_eq!(split_label("nothing"), None);
    }
}
