//! Container and volume commands through a daemon (`kiln -H …`): the
//! [`ContainerBackend`]/[`VolumeBackend`] of [`ApiClient`], and the commands that need a
//! live connection to the container (`run`, `start -a`, `exec`, `cp`). Those hijack the
//! HTTP connection as docker's CLI does (`Upgrade: tcp`): the container's output comes back
//! on it (multiplexed, or raw with a tty), our stdin goes out on it, and closing our side
//! for writing is the container's end of input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::client::{bare, enc, progress_stream_to, ApiClient};
use super::container::{AttachArgs, ExecArgs, RunArgs, StartArgs};
use super::container_backend::{ContainerBackend, LogOptions, VolumeBackend};
use super::Outcome;
use crate::run::archive::PathStat;
use crate::run::create::CreateOptions;

impl ApiClient {
    fn post_empty(&self, path: &str) -> anyhow::Result<reqwest::blocking::Response> {
        self.send(self.http.post(self.url(path))).map_err(bare)
    }

    fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .send(self.http.post(self.url(path)).json(body))
            .map_err(bare)?;
        serde_json::from_reader(resp).context("reading the daemon's answer")
    }

    /// Creates a container; pulls its image first when the daemon does not have it (as
    /// docker's CLI does), with the pull's progress on stderr.
    fn create_container(&self, opts: &CreateOptions) -> anyhow::Result<String> {
        let body = crate::engine::containers::create_body(opts)?;
        let path = match &opts.name {
            Some(n) => format!("/containers/create?name={}", enc(n)),
            None => "/containers/create".to_string(),
        };
        let created = match self.post_json(&path, &body) {
            Err(e) if e.to_string().starts_with("No such image") => {
                let r = crate::push::client::parse_reference(&opts.image)?;
                eprintln!("Unable to find image '{r}' locally");
                let mut q = format!("fromImage={}", enc(&format!("{}/{}", r.domain, r.path)));
                match (&r.digest, &r.tag) {
                    (Some(d), _) => q.push_str(&format!("&tag={}", enc(d))),
                    (None, Some(t)) => q.push_str(&format!("&tag={}", enc(t))),
                    _ => {}
                }
                let resp = self.post_empty(&format!("/images/create?{q}"))?;
                progress_stream_to(resp, false, &mut std::io::stderr().lock())?;
                self.post_json(&path, &body)?
            }
            other => other?,
        };
        Ok(created["Id"].as_str().unwrap_or_default().to_string())
    }

    /// Opens a raw connection to the daemon (hijacking needs the socket itself); a TLS host
    /// is reached through [`tls_bridge`].
    fn connect_raw(&self) -> anyhow::Result<Conn> {
        let unreachable = || format!("cannot reach the kiln daemon at {}", self.host);
        if let Some(path) = self.host.strip_prefix("unix://") {
            let s = std::os::unix::net::UnixStream::connect(path).with_context(unreachable)?;
            return Ok(Conn::Unix(s));
        }
        let addr = self
            .host
            .strip_prefix("tcp://")
            .unwrap_or(&self.host)
            .trim_end_matches('/');
        if self.base.starts_with("https://") {
            let certs = std::env::var_os("KILN_CERT_PATH")
                .or_else(|| std::env::var_os("DOCKER_CERT_PATH"))
                .map(std::path::PathBuf::from)
                .context("a TLS host needs KILN_CERT_PATH or DOCKER_CERT_PATH")?;
            return Ok(Conn::Unix(
                tls_bridge(addr, &certs).with_context(unreachable)?,
            ));
        }
        let s = std::net::TcpStream::connect(addr).with_context(unreachable)?;
        Ok(Conn::Tcp(s))
    }

    /// `POST path` (with a JSON `body` when given: exec start; attach has none, whatever
    /// follows the headers is the container's input) with `Upgrade: tcp`.
    fn hijack(&self, path: &str, body: Option<&Value>) -> anyhow::Result<(BufReader<Conn>, Conn)> {
        let mut conn = self.connect_raw()?;
        let body = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let prefix = self
            .base
            .find("/v")
            .map(|i| &self.base[i..])
            .unwrap_or_default();
        let head = format!(
            "POST {prefix}{path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kiln\r\n\
             Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(&body)?;
        let writer = conn.try_clone()?;
        let mut reader = BufReader::new(conn);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad answer from the daemon: {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if status != 101 && status != 200 {
            let mut text = vec![0; length.min(1 << 20)];
            reader.read_exact(&mut text)?;
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
            return Err(anyhow::anyhow!("{message}"));
        }
        Ok((reader, writer))
    }

    fn is_tty(&self, key: &str) -> anyhow::Result<bool> {
        let doc = self.inspect(key)?;
        Ok(doc["Config"]["Tty"].as_bool().unwrap_or(false))
    }
}

/// A mutual-TLS connection to the daemon at `addr` (client certificate and CA from
/// `certs`: `ca.pem`, `cert.pem`, `key.pem`) as one end of a local socket pair. A thread
/// runs the TLS stream (tokio-rustls) and copies both ways, so the hijacked connection can be
/// read and written from two threads and half-closed (`close_notify`) like a plain socket.
fn tls_bridge(addr: &str, certs: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let file = |name: &str| certs.join(name);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(file("ca.pem"))
        .with_context(|| format!("cannot read {}", file("ca.pem").display()))?
    {
        roots
            .add(ca.with_context(|| format!("bad certificate in {}", file("ca.pem").display()))?)?;
    }
    let chain = CertificateDer::pem_file_iter(file("cert.pem"))
        .with_context(|| format!("cannot read {}", file("cert.pem").display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate in {}", file("cert.pem").display()))?;
    let key = PrivateKeyDer::from_pem_file(file("key.pem"))
        .with_context(|| format!("cannot read {}", file("key.pem").display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the client certificate and key do not work together")?;
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a host name"))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        runtime.block_on(async move {
            let connected = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                    .connect(name, tcp)
                    .await?;
                theirs.set_nonblocking(true)?;
                let local = tokio::net::UnixStream::from_std(theirs)?;
                anyhow::Ok((tls, local))
            };
            match connected.await {
                Ok((mut tls, mut local)) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut local).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the TLS connection thread ended"))??;
    Ok(ours)
}

/// A raw connection to the daemon.
enum Conn {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies a container's output stream to our stdout and stderr until it ends: raw with a
/// tty, else docker's frames (`[stream, 0, 0, 0, len (u32 BE)]` + bytes).
fn copy_output(mut from: impl Read, tty: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    if tty {
        let mut buf = [0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The daemon closing a hijacked connection may reset it.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut header = [0u8; 8];
    loop {
        match from.read_exact(&mut header) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as u64;
        let w: &mut dyn Write = if header[0] == 2 { &mut err } else { &mut out };
        std::io::copy(&mut (&mut from).take(len), w)?;
        w.flush()?;
    }
}

/// Copies our stdin to the connection, then closes its write side (the container's EOF).
fn forward_stdin(mut conn: Conn) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        conn.shutdown_write();
    })
}

/// Keeps the remote pty's size equal to our terminal's (polled: no signal handler needed
/// in a multi-threaded CLI), until `done`.
fn follow_size(
    api: &ApiClient,
    resize_path: String,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let http = api.http.clone();
    let url = api.url(&resize_path);
    std::thread::spawn(move || {
        let mut last = None;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let size = crate::run::exec::terminal_size(0);
            if size.is_some() && size != last {
                if let Some((rows, cols)) = size {
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let _ = http.post(format!("{url}{sep}h={rows}&w={cols}")).send();
                }
                last = size;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
}

/// Output (and input with `stdin`) of a hijacked connection until the stream ends.
fn interact(
    api: &ApiClient,
    reader: BufReader<Conn>,
    writer: Conn,
    tty: bool,
    stdin: bool,
    resize_path: Option<String>,
    after_attach: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let raw = if tty && stdin {
        crate::run::exec::RawMode::enter(0)
    } else {
        None
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = (|| {
        after_attach()?;
        if let (true, Some(p)) = (tty, resize_path) {
            follow_size(api, p, done.clone());
        }
        if stdin {
            // Not joined: a read of our stdin may block after the container is gone.
            drop(forward_stdin(writer));
        } else {
            drop(writer);
        }
        copy_output(reader, tty)
    })();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(raw);
    result
}

fn exit_outcome(code: i64) -> Outcome {
    if code == 0 {
        Outcome::Success
    } else {
        Outcome::Exit(code.clamp(0, 255) as u8)
    }
}

/// `kiln -H … run`: create (pulling if needed), then `-d`: start and print the ID; else
/// attach, start, stream until the container exits, and exit with its code.
pub fn run(api: &ApiClient, args: &RunArgs) -> anyhow::Result<Outcome> {
    // docker: a container attached to our stdin gets its EOF when we close it.
    let created = super::container::options(&args.create).and_then(|mut opts| {
        opts.stdin_once = opts.interactive && !args.detach;
        if opts.tty && !args.detach {
            opts.console_size = crate::run::exec::terminal_size(0);
        }
        api.create_container(&opts)
    });
    let id = match created {
        Ok(id) => id,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            return Ok(Outcome::Exit(125));
        }
    };
    if args.detach {
        if let Err(e) = api.start(&id) {
            eprintln!("kiln: error: {e:#}");
            return Ok(Outcome::Exit(125));
        }
        println!("{id}");
        return Ok(Outcome::Success);
    }
    let stdin = args.create.interactive;
    let q = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1{}",
        if stdin { "&stdin=1" } else { "" }
    );
    let (reader, writer) = api.hijack(&q, None)?;
    // Registered before the start, so a fast (or --rm) container's exit is not missed.
    let wait = api.post_empty(&format!("/containers/{id}/wait?condition=next-exit"))?;
    let waiter = std::thread::spawn(move || -> anyhow::Result<i64> {
        let v: Value = serde_json::from_reader(wait).context("reading the wait result")?;
        if let Some(m) = v["Error"]["Message"].as_str() {
            bail!("{m}");
        }
        Ok(v["StatusCode"].as_i64().unwrap_or(-1))
    });
    let started = interact(
        api,
        reader,
        writer,
        args.create.tty,
        stdin,
        Some(format!("/containers/{id}/resize")),
        || api.start(&id),
    );
    if let Err(e) = started {
        eprintln!("kiln: error: {e:#}");
        return Ok(Outcome::Exit(125));
    }
    let code = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the wait for the container failed"))??;
    Ok(exit_outcome(code))
}

/// `kiln -H … start -a [-i] CONTAINER`.
pub fn start_attached(api: &ApiClient, key: &str, args: &StartArgs) -> anyhow::Result<Outcome> {
    let doc = api.inspect(key)?;
    if doc["State"]["Running"].as_bool() == Some(true) {
        bail!("container {key} is already running");
    }
    let tty = doc["Config"]["Tty"].as_bool().unwrap_or(false);
    let id = doc["Id"].as_str().unwrap_or(key).to_string();
    let q = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1{}",
        if args.interactive { "&stdin=1" } else { "" }
    );
    let (reader, writer) = api.hijack(&q, None)?;
    let wait = api.post_empty(&format!("/containers/{id}/wait?condition=next-exit"))?;
    interact(
        api,
        reader,
        writer,
        tty,
        args.interactive,
        Some(format!("/containers/{id}/resize")),
        || api.start(&id),
    )?;
    let v: Value = serde_json::from_reader(wait).context("reading the wait result")?;
    Ok(exit_outcome(v["StatusCode"].as_i64().unwrap_or(-1)))
}

/// `kiln -H … attach`: the attach endpoint on a running container, then its exit code.
pub fn attach(api: &ApiClient, args: &AttachArgs) -> anyhow::Result<Outcome> {
    let doc = api.inspect(&args.container)?;
    if doc["State"]["Running"].as_bool() != Some(true) {
        bail!("You cannot attach to a stopped container, start it first");
    }
    let tty = doc["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = !args.no_stdin && doc["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let id = doc["Id"].as_str().unwrap_or(&args.container).to_string();
    let q = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1{}",
        if stdin { "&stdin=1" } else { "" }
    );
    let (reader, writer) = api.hijack(&q, None)?;
    interact(
        api,
        reader,
        writer,
        tty,
        stdin,
        Some(format!("/containers/{id}/resize")),
        || Ok(()),
    )?;
    Ok(exit_outcome(i64::from(api.wait(&id)?)))
}

/// `kiln -H … exec`: docker's exec create, start (hijacked) and inspect for the code.
pub fn exec(api: &ApiClient, args: &ExecArgs) -> anyhow::Result<Outcome> {
    let env: Vec<String> = args
        .env
        .iter()
        .filter_map(|e| match super::parse_key_value(e) {
            Ok((k, Some(v))) => Some(format!("{k}={v}")),
            _ => None,
        })
        .collect();
    let body = json!({
        "AttachStdin": args.interactive && !args.detach,
        "AttachStdout": !args.detach,
        "AttachStderr": !args.detach,
        "Tty": args.tty,
        "Cmd": args.command,
        "Env": env,
        "User": args.user.clone().unwrap_or_default(),
        "WorkingDir": args.workdir.clone().unwrap_or_default(),
        "ConsoleSize": args
            .tty
            .then(|| crate::run::exec::terminal_size(0))
            .flatten()
            .map(|(rows, cols)| [rows, cols]),
    });
    let created = api.post_json(&format!("/containers/{}/exec", enc(&args.container)), &body)?;
    let exec_id = created["Id"].as_str().unwrap_or_default().to_string();
    let start = json!({"Detach": args.detach, "Tty": args.tty});
    if args.detach {
        api.send(
            api.http
                .post(api.url(&format!("/exec/{exec_id}/start")))
                .json(&start),
        )
        .map_err(bare)?;
        return Ok(Outcome::Success);
    }
    let (reader, writer) = api.hijack(&format!("/exec/{exec_id}/start"), Some(&start))?;
    interact(
        api,
        reader,
        writer,
        args.tty,
        args.interactive,
        Some(format!("/exec/{exec_id}/resize")),
        || Ok(()),
    )?;
    let doc = api
        .get_json(&format!("/exec/{exec_id}/json"))
        .map_err(bare)?;
    Ok(exit_outcome(doc["ExitCode"].as_i64().unwrap_or(-1)))
}

/// The stat header of `HEAD|GET /containers/{id}/archive`.
fn path_stat(resp: &reqwest::blocking::Response) -> anyhow::Result<PathStat> {
    let header = resp
        .headers()
        .get("X-Docker-Container-Path-Stat")
        .and_then(|v| v.to_str().ok())
        .context("the daemon sent no path stat")?;
    let bytes = crate::push::credentials::base64::decode(header)
        .context("the daemon's path stat is not base64")?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn archive_url(api: &ApiClient, container: &str, path: &str) -> String {
    api.url(&format!(
        "/containers/{}/archive?path={}",
        enc(container),
        enc(path)
    ))
}

impl ContainerBackend for ApiClient {
    fn create(&self, opts: &CreateOptions) -> anyhow::Result<String> {
        self.create_container(opts)
    }

    fn start(&self, key: &str) -> anyhow::Result<()> {
        self.post_empty(&format!("/containers/{}/start", enc(key)))?;
        Ok(())
    }

    fn stop(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()> {
        let q = timeout.map(|t| format!("?t={t}")).unwrap_or_default();
        self.post_empty(&format!("/containers/{}/stop{q}", enc(key)))?;
        Ok(())
    }

    fn restart(&self, key: &str, timeout: Option<i64>) -> anyhow::Result<()> {
        let q = timeout.map(|t| format!("?t={t}")).unwrap_or_default();
        self.post_empty(&format!("/containers/{}/restart{q}", enc(key)))?;
        Ok(())
    }

    fn kill(&self, key: &str, signal: Option<&str>) -> anyhow::Result<()> {
        let q = signal
            .map(|s| format!("?signal={}", enc(s)))
            .unwrap_or_default();
        self.post_empty(&format!("/containers/{}/kill{q}", enc(key)))?;
        Ok(())
    }

    fn remove(&self, key: &str, force: bool, volumes: bool) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(&format!(
            "/containers/{}?force={force}&v={volumes}",
            enc(key)
        ))))
        .map_err(bare)?;
        Ok(())
    }

    fn wait(&self, key: &str) -> anyhow::Result<i32> {
        let resp = self.post_empty(&format!("/containers/{}/wait", enc(key)))?;
        let v: Value = serde_json::from_reader(resp).context("reading the wait result")?;
        if let Some(m) = v["Error"]["Message"].as_str() {
            bail!("{m}");
        }
        Ok(v["StatusCode"].as_i64().unwrap_or(-1) as i32)
    }

    fn list(&self, all: bool) -> anyhow::Result<Vec<Value>> {
        let v = self
            .get_json(&format!("/containers/json?all={all}"))
            .map_err(bare)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    fn inspect(&self, key: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/containers/{}/json", enc(key)))
            .map_err(bare)
    }

    fn inspect_image(&self, key: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/images/{key}/json")).map_err(bare)
    }

    fn logs(&self, key: &str, opts: LogOptions) -> anyhow::Result<()> {
        let tty = self.is_tty(key)?;
        let tail = opts
            .tail
            .map(|t| t.to_string())
            .unwrap_or_else(|| "all".into());
        let resp = self
            .send(self.http.get(self.url(&format!(
                "/containers/{}/logs?stdout=1&stderr=1&follow={}&timestamps={}&tail={tail}",
                enc(key),
                opts.follow,
                opts.timestamps
            ))))
            .map_err(bare)?;
        copy_output(resp, tty)
    }

    fn prune(&self) -> anyhow::Result<Vec<String>> {
        let v: Value = serde_json::from_reader(self.post_empty("/containers/prune")?)
            .context("reading the daemon's answer")?;
        Ok(strings(&v["ContainersDeleted"]))
    }

    fn stat_path(&self, key: &str, path: &str) -> anyhow::Result<Option<PathStat>> {
        let head = self
            .http
            .head(archive_url(self, key, path))
            .send()
            .with_context(|| format!("cannot reach the kiln daemon at {}", self.host))?;
        let status = head.status();
        if status.is_success() {
            return Ok(Some(path_stat(&head)?));
        }
        // A HEAD answer has no body: a missing container is told apart by asking for it.
        self.inspect(key)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        bail!("Error response from daemon: {status} for {key}:{path}")
    }

    fn read_path(&self, key: &str, path: &str) -> anyhow::Result<(PathStat, Box<dyn Read + Send>)> {
        let resp = self
            .send(self.http.get(archive_url(self, key, path)))
            .map_err(bare)?;
        Ok((path_stat(&resp)?, Box::new(resp)))
    }

    fn write_path(&self, key: &str, dir: &str, tar: Box<dyn Read + Send>) -> anyhow::Result<()> {
        self.send(
            self.http
                .put(archive_url(self, key, dir))
                .header("Content-Type", "application/x-tar")
                .body(reqwest::blocking::Body::new(tar)),
        )
        .map_err(bare)?;
        Ok(())
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl VolumeBackend for ApiClient {
    fn create_volume(&self, name: Option<&str>) -> anyhow::Result<String> {
        let v = self.post_json(
            "/volumes/create",
            &json!({"Name": name.unwrap_or_default()}),
        )?;
        Ok(v["Name"].as_str().unwrap_or_default().to_string())
    }

    fn list_volumes(&self) -> anyhow::Result<Vec<String>> {
        let v = self.get_json("/volumes").map_err(bare)?;
        Ok(v["Volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["Name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn inspect_volume(&self, name: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/volumes/{}", enc(name)))
            .map_err(bare)
    }

    fn remove_volume(&self, name: &str, force: bool) -> anyhow::Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/volumes/{}?force={force}", enc(name)))),
        )
        .map_err(bare)?;
        Ok(())
    }

    fn prune_volumes(&self, all: bool) -> anyhow::Result<Vec<String>> {
        let path = if all {
            format!("/volumes/prune?filters={}", enc(r#"{"all":["true"]}"#))
        } else {
            "/volumes/prune".to_string()
        };
        let v: Value = serde_json::from_reader(self.post_empty(&path)?)
            .context("reading the daemon's answer")?;
        Ok(strings(&v["VolumesDeleted"]))
    }
}
