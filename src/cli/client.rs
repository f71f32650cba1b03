//! Client mode: with `--host`/`KILN_HOST` (or `DOCKER_HOST` naming a kiln daemon) commands
//! go through the daemon's API instead of opening the store in-process, and print the same
//! output. TCP hosts use mutual TLS when `KILN_CERT_PATH`/`DOCKER_CERT_PATH` holds `ca.pem`,
//! `cert.pem` and `key.pem`. Builds ask the daemon for kiln's own progress events
//! (`kilnprogress=1`) and render them with the in-process display.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use super::build::BuildArgs;
use super::container::{self, Via};
use super::images::{self, ImageRow};
use super::progress::{self, ProgressMode};
use super::{archive, Cli, Command, ImageCommand, Outcome};
use crate::engine::images::HistoryEntry;
use crate::run::network::{CreateOptions, NetworkInfo};

/// A connection to a daemon.
pub struct ApiClient {
    pub(super) http: reqwest::blocking::Client,
    pub(super) base: String,
    pub(super) host: String,
}

/// The daemon this command should use, if any, connected. Commands that are always local
/// (`check`, `login`, `logout`, `daemon`) never look for one, so they never wait on a probe.
pub fn daemon_client(cli: &Cli) -> anyhow::Result<Option<ApiClient>> {
    if matches!(
        cli.command,
        Command::Daemon(_) | Command::Check(_) | Command::Login(_) | Command::Logout(_)
    ) {
        return Ok(None);
    }
    if let Some(h) = cli.host.first() {
        return ApiClient::connect(h).map(Some);
    }
    // DOCKER_HOST only when a kiln daemon answers there (never hijack a real docker).
    let Some(docker) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    Ok(ApiClient::connect(&docker).ok().filter(ApiClient::is_kiln))
}

impl ApiClient {
    pub fn connect(host: &str) -> anyhow::Result<ApiClient> {
        let mut builder = reqwest::blocking::Client::builder().timeout(None);
        let base = if let Some(path) = host.strip_prefix("unix://") {
            // Plain HTTP over the socket: no trust store to load.
            builder = builder
                .unix_socket(PathBuf::from(path))
                .tls_certs_only(std::iter::empty());
            "http://localhost".to_string()
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            let certs = std::env::var_os("KILN_CERT_PATH")
                .or_else(|| std::env::var_os("DOCKER_CERT_PATH"))
                .map(PathBuf::from);
            match certs {
                Some(dir) => {
                    let read = |f: &str| {
                        std::fs::read(dir.join(f))
                            .with_context(|| format!("cannot read {}", dir.join(f).display()))
                    };
                    let mut identity = read("cert.pem")?;
                    identity.extend(read("key.pem")?);
                    builder = builder
                        .tls_certs_only([reqwest::Certificate::from_pem(&read("ca.pem")?)?])
                        .identity(reqwest::Identity::from_pem(&identity)?);
                    format!("https://{}", addr.trim_end_matches('/'))
                }
                None => {
                    builder = builder.tls_certs_only(std::iter::empty());
                    format!("http://{}", addr.trim_end_matches('/'))
                }
            }
        } else {
            bail!("invalid host {host:?}: expected unix:///path or tcp://HOST:PORT");
        };
        Ok(ApiClient {
            http: builder.build().context("setting up the API client")?,
            base: format!("{base}/v{}", crate::daemon::API_VERSION),
            host: host.to_string(),
        })
    }

    fn is_kiln(&self) -> bool {
        self.http
            .get(format!("{}/_ping", self.base))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .ok()
            .and_then(|r| {
                r.headers()
                    .get(reqwest::header::SERVER)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.starts_with("kiln/"))
            })
            .unwrap_or(false)
    }

    /// Sends a request; a non-2xx answer becomes docker's `Error response from daemon: …`.
    pub(super) fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let resp = req
            .send()
            .with_context(|| format!("cannot reach the kiln daemon at {}", self.host))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{status}: {}", text.trim()));
        Err(DaemonError(message).into())
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(super) fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(self.url(path)))?;
        serde_json::from_reader(resp).context("reading the daemon's answer")
    }
}

/// An error answer of the daemon (its message as docker prints it).
#[derive(Debug)]
struct DaemonError(String);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error response from daemon: {}", self.0)
    }
}

impl std::error::Error for DaemonError {}

pub(super) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs a command through the daemon `api`.
pub fn run(cli: &Cli, api: ApiClient) -> anyhow::Result<Outcome> {
    match &cli.command {
        Command::Build(args) => build(&api, args),
        Command::Images(args) => list(&api, args),
        Command::History(args) => history(&api, args),
        Command::Tag(args) => tag(&api, &args.source, &args.target),
        Command::Rmi(args) => rmi(&api, args),
        Command::Save(args) => save(&api, args),
        Command::Load(args) => load(&api, args),
        Command::Image { command } => match command {
            ImageCommand::Common(c) => match c {
                images::ImageCommand::Ls(args) => list(&api, args),
                images::ImageCommand::Inspect(args) => inspect(&api, args),
                images::ImageCommand::History(args) => history(&api, args),
                images::ImageCommand::Tag(args) => tag(&api, &args.source, &args.target),
                images::ImageCommand::Rm(args) => rmi(&api, args),
                images::ImageCommand::Prune(args) => image_prune(&api, args),
            },
            ImageCommand::Save(args) => save(&api, args),
            ImageCommand::Load(args) => load(&api, args),
        },
        Command::Check(args) => super::check::run(args, &cli.root),
        Command::Builder { command } => match command {
            super::builder::BuilderCommand::Prune(args) => builder_prune(&api, args),
        },
        Command::System { command } => match command {
            super::SystemCommand::Df => super::system::df(Via::Api(&api)),
        },
        Command::Network { command } => super::network::run_with(command, &api),
        Command::Run(a) => container::run(a, Via::Api(&api)),
        Command::Create(a) => container::create_cmd(a, Via::Api(&api)),
        Command::Start(a) => container::start(a, Via::Api(&api)),
        Command::Stop(a) => container::stop(a, Via::Api(&api)),
        Command::Kill(a) => container::kill(a, Via::Api(&api)),
        Command::Restart(a) => container::restart(a, Via::Api(&api)),
        Command::Rm(a) => container::rm(a, Via::Api(&api)),
        Command::Ps(a) => container::ps(a, Via::Api(&api)),
        Command::Logs(a) => container::logs_cmd(a, Via::Api(&api)),
        Command::Exec(a) => container::exec_cmd(a, Via::Api(&api)),
        Command::Attach(a) => container::attach(a, Via::Api(&api)),
        Command::Wait(a) => container::wait(a, Via::Api(&api)),
        Command::Inspect(a) => container::inspect(a, Via::Api(&api)),
        Command::Port(a) => container::port(a, Via::Api(&api)),
        Command::Cp(a) => container::cp(a, Via::Api(&api)),
        Command::Container { command } => container::dispatch(command, Via::Api(&api)),
        Command::Volume { command } => super::volume::dispatch(command, &api),
        Command::Pull(args) => pull(&api, args),
        Command::Push(args) => push(&api, args),
        // Credentials belong to the client's user: login/logout stay local.
        Command::Login(args) => super::registry::login(args),
        Command::Logout(args) => super::registry::logout(args),
        Command::Daemon(_) => bail!("kiln daemon does not run through another daemon"),
    }
}

fn list(api: &ApiClient, args: &images::ImagesArgs) -> anyhow::Result<Outcome> {
    let doc = api.get_json("/images/json")?;
    let rows = doc
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|i| ImageRow {
            id: i["Id"].as_str().unwrap_or_default().to_string(),
            created: i["Created"].as_i64().filter(|t| *t > 0),
            size: i["Size"].as_u64().unwrap_or(0),
            tags: i["RepoTags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|x| x.as_str())
                        .filter(|x| *x != "<none>:<none>")
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    images::print_images(args, rows)
}

fn inspect(api: &ApiClient, args: &images::InspectArgs) -> anyhow::Result<Outcome> {
    let mut docs = Vec::new();
    let mut missing = Vec::new();
    for name in &args.images {
        match api.get_json(&format!("/images/{name}/json")) {
            Ok(d) => docs.push(d),
            Err(e) => match e.downcast_ref::<DaemonError>() {
                Some(d) => missing.push(d.0.clone()),
                None => return Err(e),
            },
        }
    }
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&docs)?
    )?;
    for m in &missing {
        eprintln!("Error: {m}");
    }
    Ok(if missing.is_empty() {
        Outcome::Success
    } else {
        Outcome::Problems
    })
}

fn history(api: &ApiClient, args: &images::HistoryArgs) -> anyhow::Result<Outcome> {
    let doc = api.get_json(&format!("/images/{}/history", args.image))?;
    let rows = doc.as_array().map(|a| a.as_slice()).unwrap_or_default();
    let id = rows
        .first()
        .and_then(|r| r["Id"].as_str())
        .unwrap_or_default()
        .to_string();
    let entries = rows
        .iter()
        .map(|r| HistoryEntry {
            created: r["Created"].as_i64().filter(|t| *t > 0),
            created_by: r["CreatedBy"].as_str().unwrap_or_default().to_string(),
            size: r["Size"].as_u64().unwrap_or(0),
            comment: r["Comment"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    images::print_history(args, &id, entries)
}

fn tag(api: &ApiClient, source: &str, target: &str) -> anyhow::Result<Outcome> {
    let r = crate::reference::Reference::parse(target)
        .map_err(|e| anyhow::anyhow!("invalid target {target:?}: {e}"))?;
    let repo = format!("{}/{}", r.domain, r.path);
    let tag = r.tag.unwrap_or_else(|| "latest".into());
    api.send(api.http.post(api.url(&format!(
        "/images/{source}/tag?repo={}&tag={}",
        enc(&repo),
        enc(&tag)
    ))))?;
    Ok(Outcome::Success)
}

fn rmi(api: &ApiClient, args: &images::RmiArgs) -> anyhow::Result<Outcome> {
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for name in &args.images {
        let req = api
            .http
            .delete(api.url(&format!("/images/{name}?force={}", args.force)));
        match api
            .send(req)
            .and_then(|r| Ok(serde_json::from_reader::<_, Value>(r)?))
        {
            Ok(list) => {
                for item in list.as_array().map(|a| a.as_slice()).unwrap_or_default() {
                    if let Some(t) = item["Untagged"].as_str() {
                        writeln!(out, "Untagged: {t}")?;
                    }
                    if let Some(d) = item["Deleted"].as_str() {
                        writeln!(out, "Deleted: {d}")?;
                    }
                }
            }
            Err(e) if e.downcast_ref::<DaemonError>().is_some() => {
                eprintln!("{e}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

fn save(api: &ApiClient, args: &archive::SaveArgs) -> anyhow::Result<Outcome> {
    if args.compression.is_some() {
        bail!("--compression does not work through a daemon yet");
    }
    let query: Vec<String> = args
        .images
        .iter()
        .map(|n| format!("names={}", enc(n)))
        .collect();
    let mut resp = api.send(
        api.http
            .get(api.url(&format!("/images/get?{}", query.join("&")))),
    )?;
    match &args.output {
        Some(path) => {
            let tmp = path.with_extension("kiln-partial");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            std::io::copy(&mut resp, &mut f).context("receiving the archive")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            std::io::copy(&mut resp, &mut std::io::stdout().lock())?;
        }
    }
    Ok(Outcome::Success)
}

fn load(api: &ApiClient, args: &archive::LoadArgs) -> anyhow::Result<Outcome> {
    let body = match &args.input {
        Some(p) => reqwest::blocking::Body::from(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            reqwest::blocking::Body::new(std::io::stdin())
        }
    };
    let resp = api.send(
        api.http
            .post(api.url(&format!("/images/load?quiet={}", args.quiet)))
            .header("Content-Type", "application/x-tar")
            .body(body),
    )?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(resp).lines() {
        let v: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
        if let Some(e) = v["error"].as_str() {
            bail!("{e}");
        }
        if let (Some(s), false) = (v["stream"].as_str(), args.quiet) {
            write!(out, "{s}")?;
        }
    }
    Ok(Outcome::Success)
}

/// Tars a context directory for the daemon (symlinks kept as links); a Dockerfile outside
/// the context (or from stdin) is added under a private name.
/// The build context as a tar file for `/build`, with docker's client-side rules: what the
/// ignore file (`ignore`, from [`crate::context::dockerignore::ignore_file_for`]) excludes is
/// not sent, except the Dockerfile (`keep`) and the context's `.dockerignore` when that is
/// the file in use (`own_ignore`: a `<Dockerfile>.dockerignore` is; then `.dockerignore` is
/// not sent, so the builder does not apply it on top). A Dockerfile from outside the
/// context is added under a private name.
fn context_tar(
    dir: &Path,
    ignore: Option<&str>,
    own_ignore: bool,
    keep: &str,
    dockerfile: Option<(&str, &[u8])>,
) -> anyhow::Result<std::fs::File> {
    let context = crate::context::BuildContext::open(
        crate::context::ContextSource::Dir(dir.to_path_buf()),
        ignore,
    )
    .with_context(|| format!("reading the build context {}", dir.display()))?;
    let entries = context
        .walk(".", None)
        .with_context(|| format!("reading the build context {}", dir.display()))?;
    let file = tempfile::tempfile().context("creating a temporary file for the context")?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let mut add = |path: &Path, rel: &str| {
        tar.append_path_with_name(path, rel)
            .with_context(|| format!("reading {}", path.display()))
    };
    let unsent = |rel: &str| rel == "." || (own_ignore && rel == ".dockerignore");
    for e in entries.iter().filter(|e| !unsent(&e.rel)) {
        add(&e.path, &e.rel)?;
    }
    // The ignore rules never hide the Dockerfile or the ignore file in use from the builder.
    let always: &[&str] = if own_ignore {
        &[keep]
    } else {
        &[keep, ".dockerignore"]
    };
    for &always in always {
        if !entries.iter().any(|e| e.rel == always) {
            if let Ok(path) = context.host_path(always, false) {
                if path.is_file() {
                    add(&path, always)?;
                }
            }
        }
    }
    if let Some((name, bytes)) = dockerfile {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes)?;
    }
    let mut file = tar
        .into_inner()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing the context: {}", e.error()))?;
    std::io::Seek::rewind(&mut file)?;
    Ok(file)
}

fn build(api: &ApiClient, args: &BuildArgs) -> anyhow::Result<Outcome> {
    if !args.output.is_empty()
        || !args.secrets.is_empty()
        || !args.ssh.is_empty()
        || args.explain
        || !args.allow.is_empty()
        || !args.no_cache_filter.is_empty()
        || args.compression.is_some()
    {
        bail!("--output, --secret, --ssh, --allow, --explain, --no-cache-filter and --compression do not work through a daemon yet");
    }
    let private = format!(".kiln-dockerfile.{}", std::process::id());
    let (body, dockerfile): (reqwest::blocking::Body, String) = if args.context == "-" {
        if args.file.as_deref() == Some(Path::new("-")) {
            bail!("the Dockerfile and the context cannot both come from standard input");
        }
        let name = args
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "Dockerfile".into());
        (reqwest::blocking::Body::new(std::io::stdin()), name)
    } else {
        let dir = PathBuf::from(&args.context);
        if !dir.is_dir() {
            bail!(
                "unable to prepare context: path {:?} not found",
                args.context
            );
        }
        let (extra, name) =
            match &args.file {
                None => (None, "Dockerfile".to_string()),
                Some(f) if f == Path::new("-") => {
                    let mut text = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut text)
                        .context("reading the Dockerfile from standard input")?;
                    (Some(text), private.clone())
                }
                Some(f) => {
                    let inside = std::fs::canonicalize(f)
                        .ok()
                        .zip(std::fs::canonicalize(&dir).ok())
                        .and_then(|(f, d)| f.strip_prefix(d).ok().map(|r| r.to_path_buf()));
                    match inside {
                        Some(rel) => (None, rel.display().to_string()),
                        None => (
                            Some(std::fs::read(f).with_context(|| {
                                format!("cannot read Dockerfile {}", f.display())
                            })?),
                            private.clone(),
                        ),
                    }
                }
            };
        let dockerfile_path = match &args.file {
            Some(f) => f.clone(),
            None => dir.join("Dockerfile"),
        };
        let ignore_file = crate::context::dockerignore::ignore_file_for(&dockerfile_path, &dir);
        let own_ignore = ignore_file
            .as_ref()
            .is_some_and(|p| *p != dir.join(".dockerignore"));
        let ignore = ignore_file.and_then(|p| std::fs::read_to_string(p).ok());
        let tar = context_tar(
            &dir,
            ignore.as_deref(),
            own_ignore,
            &name,
            extra.as_deref().map(|b| (private.as_str(), b)),
        )?;
        (reqwest::blocking::Body::from(tar), name)
    };
    let mut q = vec![
        "kilnprogress=1".to_string(),
        format!("dockerfile={}", enc(&dockerfile)),
    ];
    q.extend(args.tags.iter().map(|t| format!("t={}", enc(t))));
    let build_args: serde_json::Map<String, Value> = args
        .build_args
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), Value::from(v.clone()))))
        .collect();
    if !build_args.is_empty() {
        q.push(format!(
            "buildargs={}",
            enc(&Value::Object(build_args).to_string())
        ));
    }
    let labels: serde_json::Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.clone().unwrap_or_default())))
        .collect();
    if !labels.is_empty() {
        q.push(format!(
            "labels={}",
            enc(&Value::Object(labels).to_string())
        ));
    }
    if let Some(t) = &args.target {
        q.push(format!("target={}", enc(t)));
    }
    if let Some(p) = &args.platform {
        q.push(format!("platform={}", enc(p)));
    }
    if args.no_cache {
        q.push("nocache=1".into());
    }
    let resp = api.send(
        api.http
            .post(api.url(&format!("/build?{}", q.join("&"))))
            .header("Content-Type", "application/x-tar")
            .body(body),
    )?;
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let display = progress::display(mode);
    let mut id = None;
    for line in BufReader::new(resp).lines() {
        let line = line.context("reading the build output")?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(e) = v["error"].as_str() {
            display.finish();
            bail!("{e}");
        }
        if let Some(i) = v["aux"]["ID"].as_str() {
            id = Some(i.to_string());
        }
        let k = &v["kiln"];
        let num = |o: &Value| o["id"].as_u64().unwrap_or(0) as usize;
        if let Some(s) = k.get("started") {
            display.started(num(s), s["name"].as_str().unwrap_or_default());
        } else if let Some(s) = k.get("done") {
            display.done(num(s), s["seconds"].as_f64().unwrap_or(0.0));
        } else if let Some(s) = k.get("cached") {
            display.cached(num(s));
        } else if let Some(s) = k.get("log") {
            display.log(num(s), s["line"].as_str().unwrap_or_default());
        } else if let Some(s) = k.get("note") {
            display.note(num(s), s["text"].as_str().unwrap_or_default());
        }
    }
    display.finish();
    let Some(id) = id else {
        bail!("the daemon ended the build without an image ID");
    };
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.quiet {
        writeln!(std::io::stdout().lock(), "{id}")?;
    }
    Ok(Outcome::Success)
}

/// Prints a docker JSON progress stream (pull/push) as plain lines; fails on its error.
fn progress_stream(resp: reqwest::blocking::Response, quiet: bool) -> anyhow::Result<Value> {
    progress_stream_to(resp, quiet, &mut std::io::stdout().lock())
}

/// Prints a daemon's JSON progress messages (pull, push, build) as lines on `out`; the
/// last `aux` object.
pub(super) fn progress_stream_to(
    resp: reqwest::blocking::Response,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Value> {
    let mut aux = Value::Null;
    for line in BufReader::new(resp).lines() {
        let v: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
        if let Some(e) = v["error"].as_str() {
            bail!("{e}");
        }
        if !v["aux"].is_null() {
            aux = v["aux"].clone();
        }
        if quiet || !v["progressDetail"]["current"].is_null() {
            continue;
        }
        match (v["id"].as_str(), v["status"].as_str()) {
            (Some(id), Some(s)) => writeln!(out, "{id}: {s}")?,
            (None, Some(s)) => writeln!(out, "{s}")?,
            _ => {}
        }
    }
    Ok(aux)
}

fn pull(api: &ApiClient, args: &super::registry::PullArgs) -> anyhow::Result<Outcome> {
    if !args.insecure_registry.is_empty() {
        bail!("--insecure-registry is the daemon's setting (its config file) in client mode");
    }
    let r = crate::push::client::parse_reference(&args.image)?;
    let mut q = format!("fromImage={}", enc(&format!("{}/{}", r.domain, r.path)));
    match (&r.digest, &r.tag) {
        (Some(d), _) => q.push_str(&format!("&tag={}", enc(d))),
        (None, Some(t)) => q.push_str(&format!("&tag={}", enc(t))),
        _ => {}
    }
    if let Some(p) = &args.platform {
        q.push_str(&format!("&platform={}", enc(p)));
    }
    let resp = api.send(api.http.post(api.url(&format!("/images/create?{q}"))))?;
    progress_stream(resp, args.quiet)?;
    writeln!(std::io::stdout().lock(), "{r}")?;
    Ok(Outcome::Success)
}

fn push(api: &ApiClient, args: &super::registry::PushArgs) -> anyhow::Result<Outcome> {
    if !args.insecure_registry.is_empty() || args.compression.is_some() {
        bail!(
            "--insecure-registry and --compression are the daemon's settings in client mode \
             (its config file; layers go out as stored)"
        );
    }
    // `push SOURCE DESTINATION`: the API pushes names, so DESTINATION names SOURCE for the
    // push, and afterwards names what it named before (or nothing), as in-process.
    let Some(dest) = args.destination.as_deref() else {
        return push_name(api, &args.image, args.quiet);
    };
    let previous = api
        .get_json(&format!("/images/{dest}/json"))
        .ok()
        .and_then(|v| v["Id"].as_str().map(str::to_string));
    tag(api, &args.image, dest)?;
    let pushed = push_name(api, dest, args.quiet);
    let restored = match &previous {
        Some(id) => tag(api, id, dest).map(|_| ()),
        None => api
            .send(
                api.http
                    .delete(api.url(&format!("/images/{dest}?noprune=1"))),
            )
            .map(|_| ()),
    };
    let outcome = pushed?;
    restored.with_context(|| format!("restoring the name {dest} after the push"))?;
    Ok(outcome)
}

/// Pushes the image named `name` (docker's `POST /images/{name}/push`).
fn push_name(api: &ApiClient, name: &str, quiet: bool) -> anyhow::Result<Outcome> {
    let r = crate::push::client::parse_reference(name)?;
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let resp = api.send(
        api.http
            .post(api.url(&format!(
                "/images/{}/{}/push?tag={}",
                r.domain,
                r.path,
                enc(&tag)
            )))
            .header("X-Registry-Auth", "e30="),
    )?;
    progress_stream(resp, quiet)?;
    if quiet {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            crate::push::pull::familiar(&r)
        )?;
    }
    Ok(Outcome::Success)
}

fn image_prune(api: &ApiClient, args: &images::PruneArgs) -> anyhow::Result<Outcome> {
    if !args.force && !images::confirm_prune(args.all) {
        return Ok(Outcome::Success);
    }
    let filters = if args.all {
        "?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"
    } else {
        ""
    };
    let resp = api.send(api.http.post(api.url(&format!("/images/prune{filters}"))))?;
    let v: Value = serde_json::from_reader(resp).context("reading the daemon's answer")?;
    let lines: Vec<String> = v["ImagesDeleted"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            i["Untagged"]
                .as_str()
                .map(|t| format!("untagged: {t}"))
                .or_else(|| i["Deleted"].as_str().map(|d| format!("deleted: {d}")))
        })
        .collect();
    images::print_prune(&lines, v["SpaceReclaimed"].as_u64().unwrap_or(0))
}

fn builder_prune(api: &ApiClient, args: &super::builder::PruneArgs) -> anyhow::Result<Outcome> {
    let mut q = format!("all={}", args.all);
    if let Some(k) = &args.keep_storage {
        q.push_str(&format!("&keep-storage={}", super::builder::parse_size(k)?));
    }
    let resp = api.send(api.http.post(api.url(&format!("/build/prune?{q}"))))?;
    let v: Value = serde_json::from_reader(resp).context("reading the daemon's answer")?;
    let removed = v["CachesDeleted"].as_array().map_or(0, |a| a.len());
    let mut out = std::io::stdout().lock();
    writeln!(out, "Deleted build cache objects: {removed}")?;
    writeln!(
        out,
        "Total:\t{}",
        super::format::human_size(v["SpaceReclaimed"].as_u64().unwrap_or(0))
    )?;
    Ok(Outcome::Success)
}

/// The daemon's answer to a failed request, as the bare message (network commands print
/// `kiln: error: …` like in-process).
pub(super) fn bare(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<DaemonError>() {
        Ok(d) => anyhow::anyhow!("{}", d.0),
        Err(e) => e,
    }
}

/// docker's network object → kiln's record (what `network ls` needs).
fn network_from_json(v: &Value) -> NetworkInfo {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let ipam = &v["IPAM"]["Config"][0];
    NetworkInfo {
        id: s("Id"),
        name: s("Name"),
        driver: s("Driver"),
        created: s("Created"),
        subnet: ipam["Subnet"].as_str().and_then(|x| x.parse().ok()),
        gateway: ipam["Gateway"].as_str().and_then(|x| x.parse().ok()),
        internal: v["Internal"].as_bool().unwrap_or(false),
        user_subnet: false,
        labels: serde_json::from_value(v["Labels"].clone()).unwrap_or_default(),
        bridge: v["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .map(str::to_string),
        endpoints: Default::default(),
        last_ip: None,
    }
}

impl super::network::NetworkBackend for ApiClient {
    fn create(&self, name: &str, opts: &CreateOptions) -> anyhow::Result<String> {
        let mut config = serde_json::Map::new();
        if let Some(sn) = opts.subnet {
            config.insert("Subnet".into(), Value::from(sn.to_string()));
        }
        if let Some(g) = opts.gateway {
            config.insert("Gateway".into(), Value::from(g.to_string()));
        }
        let body = serde_json::json!({
            "Name": name,
            "Driver": opts.driver.clone().unwrap_or_else(|| "bridge".into()),
            "Internal": opts.internal,
            "Labels": opts.labels,
            "IPAM": {"Driver": "default", "Config": if config.is_empty() { vec![] } else { vec![Value::Object(config)] }},
        });
        let resp = self
            .send(self.http.post(self.url("/networks/create")).json(&body))
            .map_err(bare)?;
        let v: Value = serde_json::from_reader(resp).context("reading the daemon's answer")?;
        Ok(v["Id"].as_str().unwrap_or_default().to_string())
    }

    fn list(&self) -> anyhow::Result<Vec<NetworkInfo>> {
        let v = self.get_json("/networks").map_err(bare)?;
        Ok(v.as_array()
            .map(|a| a.iter().map(network_from_json).collect())
            .unwrap_or_default())
    }

    fn inspect(&self, name: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/networks/{}", enc(name)))
            .map_err(bare)
    }

    fn remove(&self, name: &str) -> anyhow::Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/networks/{}", enc(name)))),
        )
        .map_err(bare)?;
        Ok(())
    }

    fn connect(&self, a: &super::network::ConnectArgs) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "Container": a.container,
            "EndpointConfig": {
                "Aliases": a.aliases,
                "IPAMConfig": a.ip.map(|ip| serde_json::json!({"IPv4Address": ip.to_string()})),
            },
        });
        let path = format!("/networks/{}/connect", enc(&a.network));
        self.send(self.http.post(self.url(&path)).json(&body))
            .map_err(bare)?;
        Ok(())
    }

    fn disconnect(&self, a: &super::network::DisconnectArgs) -> anyhow::Result<()> {
        let body = serde_json::json!({"Container": a.container, "Force": a.force});
        let path = format!("/networks/{}/disconnect", enc(&a.network));
        self.send(self.http.post(self.url(&path)).json(&body))
            .map_err(bare)?;
        Ok(())
    }

    fn prune(&self) -> anyhow::Result<Vec<String>> {
        let resp = self
            .send(self.http.post(self.url("/networks/prune")))
            .map_err(bare)?;
        let v: Value = serde_json::from_reader(resp).context("reading the daemon's answer")?;
        Ok(v["NetworksDeleted"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}
