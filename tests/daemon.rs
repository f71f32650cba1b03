//! `kiln daemon` driven by the real docker CLI (`/usr/local/bin/docker`) over a Unix socket,
//! plus raw requests with curl for docker-style errors, and the listener rules (TCP needs
//! mutual TLS unless loopback + --insecure-tcp). Each test runs its own daemon on a temp root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::build::Kiln;
use crate::util::{kiln, run, stderr, stdout};

const DOCKER: &str = "/usr/local/bin/docker";

/// A running `kiln daemon` on `<tmp>/kiln.sock`, sharing the fixture's root (so images built
/// in-process are visible through the API).
pub(crate) struct Daemon {
    pub(crate) k: Kiln,
    child: Option<Child>,
    pub(crate) sock: PathBuf,
    cfg: tempfile::TempDir,
}

impl Daemon {
    pub(crate) fn start() -> Daemon {
        let k = Kiln::new();
        let sock = k.work.path().join("kiln.sock");
        let mut cmd = kiln(k.root.path());
        cmd.args(["daemon", "-H", &format!("unix://{}", sock.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("starting kiln daemon");
        let d = Daemon {
            k,
            child: Some(child),
            sock,
            cfg: tempfile::tempdir().expect("docker config dir"),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            assert!(Instant::now() < deadline, "kiln daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.cfg.path())
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        c
    }

    /// Runs docker; panics with its output unless it exits as `ok` says.
    pub(crate) fn docker_expect(&self, args: &[&str], ok: bool) -> (String, String) {
        let out = run(self.docker_cmd(args), None);
        let (o, e) = (stdout(&out), stderr(&out));
        assert_eq!(
            out.status.success(),
            ok,
            "docker {args:?}\nstdout:\n{o}\nstderr:\n{e}"
        );
        (o, e)
    }

    /// `docker run -d --name NAME FLAGS… busybox:test sleep 300`: a container to work on;
    /// its ID.
    pub(crate) fn sleeper(&self, name: &str, flags: &[&str]) -> String {
        let base = self.k.busybox();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[base, "sleep", "300"]);
        self.docker(&args).trim().to_string()
    }

    pub(crate) fn docker(&self, args: &[&str]) -> String {
        self.docker_expect(args, true).0
    }

    /// A raw request: (HTTP status, body).
    fn curl(&self, method: &str, path: &str, body: Option<&Path>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"]);
        if method == "HEAD" {
            c.arg("-I");
        } else {
            c.args(["-X", method]);
        }
        c.arg("--unix-socket")
            .arg(&self.sock)
            .arg(format!("http://kiln{path}"));
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", b.display()));
        }
        let out = run(c, None);
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("daemon running");
        let pid = nix_pid(&child);
        // SAFETY-free: kill(2) via the command line tool keeps the test crate dependency-free.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kiln daemon did not stop within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

fn nix_pid(child: &Child) -> String {
    child.id().to_string()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test leaves no container (nor its monitor) running.
        if let Ok(out) = kiln(self.k.root.path()).args(["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = kiln(self.k.root.path())
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A two-stage Dockerfile FROM the busybox test image, with RUN, COPY --from and LABEL.
fn multi_stage(d: &Daemon) -> PathBuf {
    let base = d.k.busybox();
    d.k.context(
        "app",
        &format!(
            "FROM {base} AS build\nRUN echo built > /out.txt\nCOPY hello.txt /hello.txt\n\n\
             FROM {base}\nCOPY --from=build /out.txt /hello.txt /\nLABEL a=b\nCMD [\"cat\", \"/out.txt\"]\n"
        ),
        &[("hello.txt", "hello\n")],
    )
}

#[test]
fn docker_version_and_info_show_kiln() {
    let mut d = Daemon::start();
    let v = d.docker(&["version"]);
    assert!(v.contains("Server: kiln"), "{v}");
    assert!(
        v.contains(&format!("Version:          {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.contains("API version:      1.43 (minimum version 1.24)"),
        "{v}"
    );
    let info = d.docker(&["info"]);
    assert!(
        info.contains(&format!("Server Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    assert!(
        info.contains(&format!("Docker Root Dir: {}", d.k.root.path().display())),
        "{info}"
    );
    assert!(info.contains("Images: 0"), "{info}");
    // The socket is group-only, and goes away on SIGTERM.
    let mode = std::fs::metadata(&d.sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("socket");
    assert_eq!(mode, 0o660);
    let (status, err) = d.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("shutting down"), "{err}");
    assert!(!d.sock.exists(), "socket left behind");
}

#[test]
fn docker_build_images_inspect_tag_rmi() {
    let d = Daemon::start();
    let ctx = multi_stage(&d);
    let (out, _) = d.docker_expect(&["build", "-t", "x", ctx.to_str().expect("utf8")], true);
    assert!(
        out.contains("Step 1/7 : FROM busybox:test AS build"),
        "{out}"
    );
    assert!(
        out.contains("Step 2/7 : RUN echo built > /out.txt"),
        "{out}"
    );
    assert!(
        out.contains("Step 5/7 : COPY --from=build /out.txt /hello.txt /"),
        "{out}"
    );
    assert!(out.contains("Successfully built "), "{out}");
    assert!(out.contains("Successfully tagged x:latest"), "{out}");
    // The same build again comes from the cache.
    let again = d.docker(&["build", "-t", "x", ctx.to_str().expect("utf8")]);
    assert!(again.contains(" ---> Using cache"), "{again}");
    // (A rebuild a second later is a new image: `created` is part of the config.)
    let quiet = d.docker(&["build", "-q", "-t", "x", ctx.to_str().expect("utf8")]);
    let id = quiet.trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{quiet}");

    let images = d.docker(&["images"]);
    let row = images
        .lines()
        .find(|l| l.starts_with("x "))
        .unwrap_or_else(|| panic!("no x in:\n{images}"));
    assert!(
        row.contains("latest") && row.contains(&id[7..19]),
        "{images}"
    );
    assert!(images.contains("busybox"), "{images}");

    let inspect: serde_json::Value =
        serde_json::from_str(&d.docker(&["image", "inspect", "x"])).expect("inspect JSON");
    assert_eq!(inspect[0]["Id"], id.as_str());
    assert_eq!(inspect[0]["RepoTags"][0], "x:latest");
    assert_eq!(inspect[0]["Config"]["Labels"]["a"], "b");
    assert_eq!(inspect[0]["Config"]["Cmd"][1], "/out.txt");
    let fmt = d.docker(&["image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", "x"]);
    assert!(fmt.trim().starts_with("linux/"), "{fmt}");
    let history = d.docker(&["history", "x"]);
    assert!(history.contains("LABEL a=b"), "{history}");

    d.docker(&["tag", "x", "registry.local:5000/team/y:1"]);
    let listed = d.docker(&["images", "registry.local:5000/team/y"]);
    assert!(
        listed.contains("registry.local:5000/team/y   1"),
        "{listed}"
    );
    // By ID, an image with two names needs --force (docker's 409 conflict).
    let (_, e) = d.docker_expect(&["rmi", &id[7..19]], false);
    assert!(e.contains("must be forced"), "{e}");
    let rm = d.docker(&["rmi", "registry.local:5000/team/y:1"]);
    assert!(
        rm.contains("Untagged: registry.local:5000/team/y:1"),
        "{rm}"
    );
    let rm = d.docker(&["rmi", "x"]);
    assert!(rm.contains("Untagged: x:latest"), "{rm}");
    assert!(rm.contains(&format!("Deleted: {id}")), "{rm}");
    let (_, e) = d.docker_expect(&["rmi", "x"], false);
    assert!(e.contains("No such image: x"), "{e}");
    let (_, e) = d.docker_expect(&["image", "inspect", "nope"], false);
    assert!(e.contains("No such image: nope"), "{e}");
}

#[test]
fn docker_build_failure_is_reported() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let ctx =
        d.k.context("bad", &format!("FROM {base}\nRUN exit 3\n"), &[]);
    let (o, e) = d.docker_expect(&["build", "-t", "bad", ctx.to_str().expect("utf8")], false);
    assert!(e.contains("RUN exit 3"), "{o}{e}");
    assert!(e.contains("exit code: 3") || e.contains("code 3"), "{o}{e}");
    let ctx = d.k.context("missing", "FROM nope:1\n", &[]);
    let (o, e) = d.docker_expect(&["build", ctx.to_str().expect("utf8")], false);
    assert!(e.contains("nope"), "{o}{e}");
    // The daemon is fine afterwards.
    d.docker(&["version"]);
}

#[test]
fn docker_save_load_and_prune() {
    let d = Daemon::start();
    let ctx = multi_stage(&d);
    d.docker(&["build", "-q", "-t", "x", ctx.to_str().expect("utf8")]);
    let id = d.docker(&["image", "inspect", "-f", "{{.Id}}", "x"]);
    let tar = d.k.work.path().join("x.tar");
    d.docker(&["save", "-o", tar.to_str().expect("utf8"), "x"]);
    assert!(std::fs::metadata(&tar).expect("archive").len() > 1000);
    d.docker(&["rmi", "x"]);
    let loaded = d.docker(&["load", "-i", tar.to_str().expect("utf8")]);
    assert!(loaded.contains("Loaded image: x:latest"), "{loaded}");
    assert_eq!(
        d.docker(&["image", "inspect", "-f", "{{.Id}}", "x"]),
        id,
        "same image ID after save | load"
    );
    // docker save | docker load through pipes.
    let mut save = d.docker_cmd(&["save", "x"]);
    let saved = save.stdout(Stdio::piped()).output().expect("docker save");
    assert!(saved.status.success());
    let mut load = d.docker_cmd(&["load"]);
    load.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = load.spawn().expect("docker load");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &saved.stdout)
        .expect("piping");
    let out: Output = child.wait_with_output().expect("docker load");
    assert!(
        stdout(&out).contains("Loaded image: x:latest"),
        "{}",
        stderr(&out)
    );

    // An untagged image is dangling and pruned; tagged ones stay.
    d.docker(&["tag", "x", "keep:1"]);
    d.docker(&["rmi", "x"]);
    let df = d.docker(&["system", "df"]);
    assert!(df.contains("Images"), "{df}");
    let prune = d.docker(&["image", "prune", "-f"]);
    assert!(prune.contains("Total reclaimed space"), "{prune}");
    assert!(d.docker(&["images", "-q", "keep"]).trim().len() == 12);
    let prune = d.docker(&["image", "prune", "-a", "-f"]);
    assert!(prune.contains("untagged: keep:1"), "{prune}");
    let left = d.docker(&["images", "-q"]);
    assert!(left.trim().is_empty(), "{left}");
    // The build cache goes with `docker builder prune` (here: what the builds left).
    let pruned = d.docker(&["builder", "prune", "-a", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert!(pruned.contains("Deleted build cache objects"), "{pruned}");
    let again = d.docker(&["builder", "prune", "-a", "-f"]);
    assert!(!again.contains("Deleted build cache objects"), "{again}");
}

#[test]
fn events_stream_image_actions() {
    let d = Daemon::start();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    // A live stream that ends when `until` passes.
    let mut follow = d.docker_cmd(&[
        "events",
        "--filter",
        "type=image",
        "--until",
        &(start + 4).to_string(),
    ]);
    let follower = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker events");
    std::thread::sleep(Duration::from_millis(500));
    let base = d.k.busybox();
    d.docker(&["tag", base, "ev:1"]);
    d.docker(&["rmi", "ev:1"]);
    let out = follower.wait_with_output().expect("docker events");
    let live = stdout(&out);
    assert!(
        live.contains(" image tag sha256:"),
        "{live}{}",
        stderr(&out)
    );
    assert!(live.contains("name=ev:1"), "{live}");
    assert!(live.contains(" image untag "), "{live}");
    // Past events with since/until and an event filter.
    let past = d.docker(&[
        "events",
        "--since",
        &start.to_string(),
        "--until",
        &(start + 60).min(start + 5).to_string(),
        "--filter",
        "event=untag",
    ]);
    assert!(
        past.contains(" image untag ") && !past.contains(" image tag "),
        "{past}"
    );
}

#[test]
fn bad_requests_get_docker_errors() {
    let d = Daemon::start();
    let (code, body) = d.curl("GET", "/v1.43/images/nope/json", None);
    assert_eq!(
        (code, body.trim()),
        (404, r#"{"message":"No such image: nope"}"#)
    );
    let (code, body) = d.curl("GET", "/images/json?filters=%7Bbad", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with(r#"{"message":"invalid filter"#), "{body}");
    let (code, body) = d.curl(
        "GET",
        "/images/json?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D",
        None,
    );
    assert_eq!(
        (code, body.trim()),
        (400, r#"{"message":"invalid filter 'nope'"}"#)
    );
    let (code, body) = d.curl("GET", "/v1.99/version", None);
    assert_eq!(code, 400);
    assert!(
        body.contains("Maximum supported API version is 1.43"),
        "{body}"
    );
    let (code, body) = d.curl("GET", "/v1.43/no/such/route", None);
    assert_eq!(
        (code, body.trim()),
        (404, r#"{"message":"page not found"}"#)
    );
    let (code, body) = d.curl("POST", "/images/nope/tag?repo=x", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = d.curl("DELETE", "/images/nope", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = d.curl("GET", "/images/get?names=nope", None);
    assert_eq!(code, 404, "{body}");
    let junk = d.k.work.path().join("junk.tar");
    std::fs::write(&junk, b"this is not an archive").expect("junk");
    let (code, body) = d.curl("POST", "/images/load", Some(&junk));
    assert!(code == 400 || code == 500, "{code} {body}");
    assert!(body.starts_with(r#"{"message":"#), "{body}");
    // JSON bodies: malformed → 400, over the 16 MiB limit → 413, both as {"message"}.
    let bad = d.k.work.path().join("bad.json");
    std::fs::write(&bad, b"{\"Name\": ").expect("bad json");
    let (code, body) = d.curl("POST", "/networks/create", Some(&bad));
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with(r#"{"message":"invalid JSON"#), "{body}");
    let huge = d.k.work.path().join("huge.json");
    let mut big = b"{\"Name\": \"".to_vec();
    big.resize(20 << 20, b'a');
    big.extend_from_slice(b"\"}");
    std::fs::write(&huge, &big).expect("huge json");
    let (code, body) = d.curl("POST", "/networks/create", Some(&huge));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("larger than the limit"), "{body}");
    let (code, _) = d.curl("HEAD", "/_ping", None);
    assert_eq!(code, 200);
    // Still alive.
    let (code, body) = d.curl("GET", "/_ping", None);
    assert_eq!((code, body.as_str()), (200, "OK"));
}

#[test]
fn tcp_needs_mutual_tls_unless_loopback_and_insecure() {
    let k = Kiln::new();
    let mut cmd = kiln(k.root.path());
    cmd.args(["daemon", "-H", "tcp://0.0.0.0:0"]);
    let out = run(cmd, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without mutual TLS"),
        "{}",
        stderr(&out)
    );
    let mut cmd = kiln(k.root.path());
    cmd.args(["daemon", "-H", "tcp://0.0.0.0:0", "--insecure-tcp"]);
    let out = run(cmd, None);
    assert!(!out.status.success(), "--insecure-tcp is only for loopback");

    // Mutual TLS with a throwaway CA: a client with a signed certificate gets in, one
    // without is refused during the handshake.
    let dir = k.work.path();
    let sh = |script: &str| {
        let s = Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=kiln-test-ca 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\\n' > client.ext
        openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=client 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 -extfile client.ext 2>/dev/null");
    let mut cmd = kiln(k.root.path());
    cmd.args(["daemon", "-H", "tcp://127.0.0.1:0", "--tlsverify"])
        .arg("--tlscacert")
        .arg(dir.join("ca.pem"))
        .arg("--tlscert")
        .arg(dir.join("server.pem"))
        .arg("--tlskey")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("daemon");
    let mut stderr_pipe = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr_pipe, &mut line).expect("listening line");
    let addr = line
        .split("tcp://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let curl = |with_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "10", "--cacert"])
            .arg(dir.join("ca.pem"));
        if with_cert {
            c.arg("--cert")
                .arg(dir.join("client.pem"))
                .arg("--key")
                .arg(dir.join("client.key"));
        }
        c.arg(format!("https://{addr}/_ping"));
        c.output().expect("curl")
    };
    let ok = curl(true);
    let refused = curl(false);
    // The docker CLI and kiln's client mode over mutual TLS.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client.key", "key.pem"),
    ] {
        std::fs::copy(dir.join(from), certs.join(to)).expect("copy cert");
    }
    let cfg = tempfile::tempdir().expect("docker config");
    let docker = Command::new(DOCKER)
        .args([
            "--tlsverify",
            "-H",
            &format!("tcp://{addr}"),
            "version",
            "--format",
            "{{.Server.Version}}",
        ])
        .env("DOCKER_CERT_PATH", &certs)
        .env("DOCKER_CONFIG", cfg.path())
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker");
    let mut client = kiln(k.root.path());
    client
        .env("KILN_CERT_PATH", &certs)
        .args(["-H", &format!("tcp://{addr}"), "images", "-q"]);
    let via_kiln = run(client, None);
    // A hijacked connection (stdin in, output out, half-close) over mutual TLS.
    let base = k.busybox();
    let mut client = kiln(k.root.path());
    client.env("KILN_CERT_PATH", &certs).args([
        "-H",
        &format!("tcp://{addr}"),
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        base,
        "cat",
    ]);
    let interactive = run(client, Some("over tls\n"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        stdout(&interactive),
        "over tls\n",
        "{}",
        stderr(&interactive)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "OK", "{ok:?}");
    assert!(
        !refused.status.success(),
        "a client without a certificate got in"
    );
    assert_eq!(
        String::from_utf8_lossy(&docker.stdout).trim(),
        env!("CARGO_PKG_VERSION"),
        "{}",
        String::from_utf8_lossy(&docker.stderr)
    );
    assert!(via_kiln.status.success(), "{}", stderr(&via_kiln));
}

/// The table without its CREATED column (which moves with the clock).
fn without_created(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            let cols: Vec<String> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            cols.into_iter()
                .enumerate()
                .filter(|(i, _)| *i != 3)
                .map(|(_, c)| c)
                .collect()
        })
        .collect()
}

#[test]
fn kiln_client_mode_goes_through_the_api() {
    let d = Daemon::start();
    let ctx = multi_stage(&d);
    let host = format!("unix://{}", d.sock.display());
    let client = |args: &[&str]| {
        // An empty root of its own: everything it shows must come from the daemon.
        let mut c = kiln(d.k.work.path().join("client-root").as_path());
        c.arg("-H").arg(&host).args(args);
        run(c, None)
    };
    let out = client(&[
        "build",
        "--progress=plain",
        "-t",
        "viaclient",
        ctx.to_str().expect("utf8"),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("[build 1/2] RUN /bin/sh -c echo built > /out.txt"),
        "{err}"
    );
    assert!(err.contains(" writing image sha256:"), "{err}");
    assert!(
        err.contains(" naming to docker.io/library/viaclient:latest done"),
        "{err}"
    );
    let quiet = client(&["build", "-q", ctx.to_str().expect("utf8")]);
    assert!(
        stdout(&quiet).trim().starts_with("sha256:"),
        "{}",
        stderr(&quiet)
    );

    // Same output as in-process use of the daemon's root.
    let via_api = stdout(&client(&["images"]));
    let in_process = d.k.ok(&["images"]);
    assert_eq!(without_created(&via_api), without_created(&in_process));
    assert!(via_api.contains("viaclient"), "{via_api}");
    let inspect_api: serde_json::Value =
        serde_json::from_str(&stdout(&client(&["image", "inspect", "viaclient"]))).expect("json");
    let mut in_process = d.k.inspect("viaclient");
    in_process["GraphDriver"] = inspect_api[0]["GraphDriver"].clone();
    assert_eq!(inspect_api[0], in_process);

    let out = client(&["tag", "viaclient", "vc:2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = client(&["rmi", "vc:2", "nope"]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "Untagged: vc:2\n");
    assert!(
        stderr(&out).contains("Error response from daemon: No such image: nope"),
        "{}",
        stderr(&out)
    );

    let out = client(&["image", "prune", "-f"]);
    assert!(
        stdout(&out).contains("Total reclaimed space"),
        "{}",
        stderr(&out)
    );
    let out = client(&["builder", "prune"]);
    assert!(
        stdout(&out).starts_with("Deleted build cache objects: "),
        "{}",
        stderr(&out)
    );

    // Networks through the API print what in-process commands print.
    let net = format!("kc{}", std::process::id() % 100_000);
    // A subnet of this test process's own (parallel runs of the suite must not overlap).
    let pid = std::process::id();
    let subnet = format!("10.213.{}.0/24", pid % 250);
    let out = client(&["network", "create", "--subnet", &subnet, &net]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(
        stdout(&client(&["network", "ls"])),
        d.k.ok(&["network", "ls"])
    );
    assert_eq!(
        stdout(&client(&["network", "inspect", &net])),
        d.k.ok(&["network", "inspect", &net])
    );
    let out = client(&["network", "rm", &net, "nope"]);
    assert_eq!(stdout(&out), format!("{net}\n"));
    assert!(
        stderr(&out).contains("kiln: error: network nope not found"),
        "{}",
        stderr(&out)
    );

    // DOCKER_HOST naming a kiln daemon is used too.
    let mut c = kiln(d.k.work.path().join("client-root").as_path());
    c.env("DOCKER_HOST", &host)
        .env_remove("KILN_HOST")
        .arg("images");
    let out = run(c, None);
    assert!(stdout(&out).contains("viaclient"), "{}", stderr(&out));
}

#[test]
fn docker_network_create_ls_inspect_rm() {
    let d = Daemon::start();
    let name = format!("kn{}", std::process::id() % 100_000);
    let id = d.docker(&["network", "create", "--label", "team=a", &name]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let ls = d.docker(&["network", "ls"]);
    assert!(ls.contains(&name) && ls.contains("bridge"), "{ls}");
    let filtered = d.docker(&["network", "ls", "-q", "--filter", "label=team=a"]);
    assert_eq!(filtered.trim(), &id.trim()[..12], "{filtered}");
    let inspect: serde_json::Value =
        serde_json::from_str(&d.docker(&["network", "inspect", &name])).expect("inspect JSON");
    assert_eq!(inspect[0]["Name"], name.as_str());
    assert!(
        inspect[0]["IPAM"]["Config"][0]["Subnet"]
            .as_str()
            .is_some_and(|s| s.ends_with("/24")),
        "{inspect}"
    );
    let (_, e) = d.docker_expect(&["network", "create", &name], false);
    assert!(e.contains("already exists"), "{e}");
    let (_, e) = d.docker_expect(&["network", "rm", "bridge"], false);
    assert!(e.contains("pre-defined network"), "{e}");
    let rm = d.docker(&["network", "rm", &name]);
    assert_eq!(rm.trim(), name);
    let (_, e) = d.docker_expect(&["network", "inspect", &name], false);
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn docker_push_and_pull_with_the_test_registry() {
    let reg = crate::registry::TestRegistry::start(None);
    let d = Daemon::start();
    let ctx = multi_stage(&d);
    let name = format!("{}/team/app:1", reg.addr);
    d.docker(&["build", "-q", "-t", &name, ctx.to_str().expect("utf8")]);
    let id = d.docker(&["image", "inspect", "-f", "{{.Id}}", &name]);
    let pushed = d.docker(&["push", &name]);
    assert!(
        pushed.contains(&format!(
            "The push refers to repository [{}/team/app]",
            reg.addr
        )),
        "{pushed}"
    );
    assert!(pushed.contains("Pushed"), "{pushed}");
    assert!(pushed.contains("1: digest: sha256:"), "{pushed}");
    // Remove it locally (and its layers), then pull it back.
    d.docker(&["rmi", &name]);
    d.docker(&["image", "prune", "-a", "-f"]);
    let pulled = d.docker(&["pull", &name]);
    assert!(pulled.contains("Pull complete"), "{pulled}");
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    assert!(pulled.trim_end().ends_with(&name), "{pulled}");
    assert_eq!(d.docker(&["image", "inspect", "-f", "{{.Id}}", &name]), id);
    // A build FROM an image only the registry has pulls it, as docker's builder does.
    d.docker(&["rmi", &name]);
    d.docker(&["image", "prune", "-a", "-f"]);
    let from_reg =
        d.k.context("from-reg", &format!("FROM {name}\nLABEL pulled=yes\n"), &[]);
    let built = d.docker(&["build", "-t", "fromreg", from_reg.to_str().expect("utf8")]);
    assert!(
        built.contains("Successfully tagged fromreg:latest"),
        "{built}"
    );
    let labels = d.docker(&["image", "inspect", "-f", "{{.Config.Labels}}", "fromreg"]);
    assert!(
        labels.contains("a:b") && labels.contains("pulled:yes"),
        "{labels}"
    );
    let (_, e) = d.docker_expect(&["pull", &format!("{}/team/nope:1", reg.addr)], false);
    assert!(e.contains("manifest unknown"), "{e}");
    let (_, e) = d.docker_expect(&["push", &format!("{}/team/absent:1", reg.addr)], false);
    assert!(e.contains("does not exist locally"), "{e}");
    // kiln -H push SOURCE DESTINATION: pushed under the other name, which the daemon does
    // not keep afterwards (as in-process).
    let other = format!("{}/team/other:2", reg.addr);
    let host = format!("unix://{}", d.sock.display());
    let out = d.k.ok(&["-H", &host, "push", "-q", "fromreg", &other]);
    assert!(out.contains("team/other:2"), "{out}");
    let (_, e) = d.docker_expect(&["image", "inspect", &other], false);
    assert!(e.contains("No such image"), "{e}");
    let pulled = d.docker(&["pull", &other]);
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
}

#[test]
fn unix_socket_is_not_stolen_and_stale_ones_are_replaced() {
    let d = Daemon::start();
    // A second daemon on the same live socket is refused and leaves it alone.
    let mut cmd = kiln(d.k.root.path());
    cmd.args(["daemon", "-H", &format!("unix://{}", d.sock.display())]);
    let out = run(cmd, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another daemon is listening"),
        "{}",
        stderr(&out)
    );
    d.docker(&["version"]);
    // A regular file where the socket should be is never replaced.
    let file = d.k.work.path().join("not-a-socket");
    std::fs::write(&file, "data").expect("file");
    let mut cmd = kiln(d.k.root.path());
    cmd.args(["daemon", "-H", &format!("unix://{}", file.display())]);
    let out = run(cmd, None);
    assert!(stderr(&out).contains("is not a socket"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).expect("file"), "data");
    // A stale socket (nobody listening) is replaced.
    let stale = d.k.work.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("stale socket"));
    let mut second = Daemon {
        k: Kiln::new(),
        child: None,
        sock: stale.clone(),
        cfg: tempfile::tempdir().expect("cfg"),
    };
    let mut cmd = kiln(second.k.root.path());
    cmd.args(["daemon", "-H", &format!("unix://{}", stale.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    second.child = Some(cmd.spawn().expect("daemon"));
    second.wait_ready();
    let v = second.docker(&["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(v.trim(), env!("CARGO_PKG_VERSION"));
    let (status, _) = second.stop();
    assert!(status.success());
}

#[test]
fn docker_build_with_dockerfile_outside_the_context_or_on_stdin() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let ctx =
        d.k.context("ctx", "FROM scratch\n", &[("hello.txt", "hello\n")]);
    // -f outside the context: the CLI adds it to the context under a private name.
    let outside = d.k.work.path().join("elsewhere.Dockerfile");
    std::fs::write(&outside, format!("FROM {base}\nCOPY hello.txt /\n")).expect("Dockerfile");
    let out = d.docker(&[
        "build",
        "-f",
        outside.to_str().expect("utf8"),
        "-t",
        "outside",
        ctx.to_str().expect("utf8"),
    ]);
    assert!(out.contains("Step 2/2 : COPY hello.txt /"), "{out}");
    assert!(out.contains("Successfully tagged outside:latest"), "{out}");
    // `docker build - < Dockerfile`: no context, the body is the Dockerfile itself.
    let mut cmd = d.docker_cmd(&["build", "-t", "fromstdin", "-"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("docker build -");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        format!("FROM {base}\nRUN echo from-stdin\n").as_bytes(),
    )
    .expect("Dockerfile on stdin");
    let out = child.wait_with_output().expect("docker build -");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("from-stdin"), "{text}");
    assert!(
        text.contains("Successfully tagged fromstdin:latest"),
        "{text}"
    );
}

#[test]
fn docker_login_then_push_to_a_registry_with_basic_auth() {
    let reg = crate::registry::TestRegistry::start(Some(("kiln", "s3cret")));
    let d = Daemon::start();
    let base = d.k.busybox();
    let name = format!("{}/private/app:1", reg.addr);
    d.docker(&["tag", base, &name]);
    let (_, e) = d.docker_expect(&["push", &name], false);
    assert!(
        e.contains("requires authentication") || e.contains("401"),
        "{e}"
    );
    let mut login = d.docker_cmd(&["login", &reg.addr, "-u", "kiln", "--password-stdin"]);
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"wrong\n").expect("stdin");
    let out = child.wait_with_output().expect("docker login");
    assert!(!out.status.success(), "a wrong password logged in");
    let mut login = d.docker_cmd(&["login", &reg.addr, "-u", "kiln", "--password-stdin"]);
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"s3cret\n").expect("stdin");
    let out = child.wait_with_output().expect("docker login");
    assert!(
        stdout(&out).contains("Login Succeeded"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // The CLI keeps the credentials and sends them with the push (X-Registry-Auth).
    let pushed = d.docker(&["push", &name]);
    assert!(pushed.contains("1: digest: sha256:"), "{pushed}");
    d.docker(&["rmi", &name]);
    let pulled = d.docker(&["pull", &name]);
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    // A build FROM the private image pulls it with the credentials the CLI sends along
    // (X-Registry-Config); the daemon itself has none.
    d.docker(&["rmi", &name]);
    d.docker(&["image", "prune", "-a", "-f"]);
    let ctx = d.k.context(
        "private-from",
        &format!("FROM {name}\nLABEL from=private\n"),
        &[],
    );
    let built = d.docker(&["build", "-t", "fromprivate", ctx.to_str().expect("utf8")]);
    assert!(
        built.contains("Successfully tagged fromprivate:latest"),
        "{built}"
    );
}

/// The docker CLI against a token-auth registry through kiln's daemon: `/auth` returns the
/// token server's refresh token as `IdentityToken`, the CLI stores it instead of the
/// password and sends it back in `X-Registry-Auth`, and kiln exchanges it for access tokens.
#[test]
fn docker_login_and_push_pull_through_a_token_registry() {
    use crate::registry_token::{TokenRegistry, PASSWORD, USER};
    let tr = TokenRegistry::start();
    let d = Daemon::start();
    let base = d.k.busybox();
    let name = format!("{}/private/app:1", tr.reg.addr);
    d.docker(&["tag", base, &name]);
    let mut login = d.docker_cmd(&["login", &tr.reg.addr, "-u", USER, "--password-stdin"]);
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        format!("{PASSWORD}\n").as_bytes(),
    )
    .expect("stdin");
    let out = child.wait_with_output().expect("docker login");
    assert!(
        stdout(&out).contains("Login Succeeded"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.cfg.path().join("config.json")).expect("docker config"),
    )
    .expect("docker config JSON");
    let identity = config["auths"][&tr.reg.addr]["identitytoken"]
        .as_str()
        .unwrap_or_default();
    assert!(identity.starts_with("rt-"), "{config}");
    assert!(!config.to_string().contains(PASSWORD), "{config}");

    let pushed = d.docker(&["push", &name]);
    assert!(pushed.contains("1: digest: sha256:"), "{pushed}");
    assert!(
        !tr.requests(&[
            "POST grant=refresh_token user=alice client_id=kiln",
            "scopes=repository:private/app:pull,push"
        ])
        .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
    d.docker(&["rmi", &name]);
    let pulled = d.docker(&["pull", &name]);
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    tr.assert_no_secrets(&[pushed, pulled]);
}

#[test]
fn docker_volume_create_ls_inspect_rm_prune() {
    let d = Daemon::start();
    assert_eq!(d.docker(&["volume", "create", "data1"]).trim(), "data1");
    let anon = d.docker(&["volume", "create"]).trim().to_string();
    assert_eq!(anon.len(), 64, "{anon}");
    let ls = d.docker(&["volume", "ls"]);
    assert!(ls.contains("DRIVER    VOLUME NAME"), "{ls}");
    assert!(ls.contains("local     data1"), "{ls}");
    let filtered = d.docker(&["volume", "ls", "-q", "--filter", "name=data"]);
    assert_eq!(filtered.trim(), "data1");
    let inspect: serde_json::Value =
        serde_json::from_str(&d.docker(&["volume", "inspect", "data1"])).expect("inspect JSON");
    assert_eq!(inspect[0]["Name"], "data1");
    assert_eq!(inspect[0]["Driver"], "local");
    let mountpoint = inspect[0]["Mountpoint"].as_str().expect("mountpoint");
    assert!(std::path::Path::new(mountpoint).is_dir(), "{mountpoint}");
    // The same volume as in-process commands see.
    assert_eq!(
        d.k.ok(&["volume", "ls", "-q"]),
        d.docker(&["volume", "ls", "-q"])
    );
    // dangling: the volumes no container uses.
    let user = format!("kv{}", std::process::id() % 100_000);
    d.docker(&[
        "create",
        "--name",
        &user,
        "-v",
        "data1:/data",
        d.k.busybox(),
        "true",
    ]);
    let unused = d.docker(&["volume", "ls", "-q", "--filter", "dangling=true"]);
    let used = d.docker(&["volume", "ls", "-q", "--filter", "dangling=false"]);
    assert_eq!(unused.trim(), anon);
    assert_eq!(used.trim(), "data1");
    d.docker(&["rm", &user]);
    let (_, e) = d.docker_expect(&["volume", "create", "bad/name"], false);
    assert!(e.contains("invalid characters"), "{e}");
    let (_, e) = d.docker_expect(&["volume", "inspect", "nope"], false);
    assert!(e.contains("No such volume"), "{e}");
    assert_eq!(d.docker(&["volume", "rm", "data1"]).trim(), "data1");
    // Prune takes the anonymous volume (and all unused ones with --all).
    let pruned = d.docker(&["volume", "prune", "-f"]);
    assert!(pruned.contains(&anon), "{pruned}");
    assert!(d.docker(&["volume", "ls", "-q"]).trim().is_empty());
}

#[test]
fn docker_ps_inspect_stop_wait_rm_on_containers_kiln_ran() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let name = format!("kd{}", std::process::id() % 100_000);
    // Started in-process: the daemon shares the store.
    let id =
        d.k.ok(&["run", "-d", "--name", &name, base, "sleep", "300"])
            .trim()
            .to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = d.docker(&["ps"]);
    let row = ps
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{name} not in:\n{ps}"));
    assert!(row.starts_with(&id[..12]) && row.contains("Up "), "{ps}");
    assert!(row.contains("\"sleep 300\""), "{ps}");
    let running = d.docker(&["inspect", "-f", "{{.State.Running}} {{.Name}}", &name]);
    assert_eq!(running.trim(), format!("true /{name}"));
    assert_eq!(d.docker(&["stop", "-t", "1", &name]).trim(), name);
    let ps_a = d.docker(&["ps", "-a", "--filter", &format!("name={name}")]);
    assert!(ps_a.contains("Exited ("), "{ps_a}");
    assert!(!d.docker(&["ps", "-q"]).contains(&id[..12]));
    let code = d.docker(&["wait", &name]);
    assert!(code.trim().parse::<i32>().is_ok_and(|c| c != 0), "{code}");
    assert_eq!(d.docker(&["rm", &name]).trim(), name);
    assert!(!d.docker(&["ps", "-a"]).contains(&name));
    let (_, e) = d.docker_expect(&["rm", &name], false);
    assert!(e.contains("No such container"), "{e}");
}

#[test]
fn docker_run_detached_with_a_published_port() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let ctx = d.k.context(
        "web",
        &format!("FROM {base}\nCOPY index.html /www/index.html\nEXPOSE 80\n"),
        &[("index.html", "served by kiln\n")],
    );
    d.docker(&["build", "-q", "-t", "web", ctx.to_str().expect("utf8")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let name = format!("kw{}", std::process::id() % 100_000);
    let id = d.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "web",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("served by kiln") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ps = d.docker(&["ps"]);
    let stopped = d.docker(&["rm", "-f", &name]);
    assert_eq!(body, "served by kiln\n", "docker ps:\n{ps}");
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");
    assert_eq!(stopped.trim(), name);
    let (_, e) = d.docker_expect(&["run", "-d", "nope:1", "true"], false);
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn docker_logs_and_logs_follow() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let name = format!("kl{}", std::process::id() % 100_000);
    d.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        base,
        "sh",
        "-c",
        "echo first; echo oops >&2; sleep 1; echo second",
    ]);
    // -f follows until the container exits.
    let (out, err) = d.docker_expect(&["logs", "-f", &name], true);
    assert_eq!(out, "first\nsecond\n", "stderr: {err}");
    assert_eq!(err, "oops\n");
    let (out, _) = d.docker_expect(&["logs", "--tail", "1", &name], true);
    assert_eq!(out, "second\n");
    // attach?logs=1&stream=0 (what SDKs use to read a finished container's output): the
    // log in docker's multiplexed frames on the hijacked connection, then the end.
    let raw = {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(&d.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "POST /v1.43/containers/{name}/attach?logs=1&stream=0&stdout=1&stderr=1 HTTP/1.1\r\n\
             Host: kiln\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("request");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    };
    let text = String::from_utf8_lossy(&raw);
    let body = &raw[text.find("\r\n\r\n").map_or(raw.len(), |i| i + 4)..];
    let frames: Vec<(u8, String)> = {
        let mut v = Vec::new();
        let mut rest = body;
        while rest.len() >= 8 {
            let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let end = (8 + len).min(rest.len());
            v.push((rest[0], String::from_utf8_lossy(&rest[8..end]).into_owned()));
            rest = &rest[end..];
        }
        v
    };
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // Each stream in order (stdout and stderr are separate pipes: their interleaving in
    // the log is the order the monitor read them, as with docker).
    let of = |stream: u8| -> Vec<String> {
        frames
            .iter()
            .filter(|f| f.0 == stream)
            .map(|f| f.1.clone())
            .collect()
    };
    assert_eq!(of(1), ["first\n", "second\n"], "{text}");
    assert_eq!(of(2), ["oops\n"], "{text}");
    d.docker(&["rm", &name]);
}

#[test]
fn docker_run_prints_the_output_and_exit_code() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let out = d.docker(&["run", "--rm", base, "echo", "hi"]);
    assert_eq!(out, "hi\n");
    assert!(
        d.docker(&["ps", "-a", "-q"]).trim().is_empty(),
        "--rm left the container"
    );
    let mut cmd = d.docker_cmd(&["run", base, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = cmd.output().expect("docker run");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
}

impl Daemon {
    /// Runs docker with `input` on its stdin: (exit code, stdout, stderr).
    fn docker_with_input(&self, args: &[&str], input: &str) -> (Option<i32>, String, String) {
        let mut cmd = self.docker_cmd(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("docker");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(input.as_bytes())
                .expect("writing docker's stdin");
        }
        let o = wait_output(child, &format!("docker {args:?}"));
        (o.status.code(), stdout(&o), stderr(&o))
    }

    /// Runs a shell command line under a pseudo-terminal of 33 rows × 101 columns (util-linux
    /// `script`) with `input` typed in: (exit code, what the terminal showed).
    fn under_pty(&self, command: &str, input: &str) -> (Option<i32>, String) {
        let mut cmd = Command::new("script");
        cmd.args([
            "-qec",
            &format!("stty rows 33 cols 101; {DOCKER} {command}"),
            "/dev/null",
        ])
        .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
        .env("DOCKER_CONFIG", self.cfg.path())
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("script (util-linux)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(input.as_bytes())
                .expect("writing script's stdin");
        }
        let o = wait_output(child, command);
        (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
    }

    /// Monitor processes (`kiln __monitor ROOT …`) still running for this daemon's root
    /// (after up to 10 s: a `--rm` container's monitor exits right after removing it).
    fn monitors(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.monitors_now();
            if found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn monitors_now(&self) -> Vec<String> {
        let root = self.k.root.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .filter(|c| c.contains("__monitor") && c.contains(&root))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Containers left in the store (directories under `ROOT/containers`).
    fn container_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.k.root.path().join("containers"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 64)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Waits up to 60 s for a child's output; kills it (and fails) after that.
fn wait_output(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish within 60s\nstdout:\n{}\nstderr:\n{}",
                stdout(&o),
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn docker_exec_runs_commands_in_a_running_container() {
    let mut d = Daemon::start();
    let name = format!("ke{}", std::process::id() % 100_000);
    d.sleeper(&name, &["--network", "none"]);
    assert_eq!(d.docker(&["exec", &name, "echo", "hi"]), "hi\n");
    let (code, out, err) = d.docker_with_input(&["exec", &name, "sh", "-c", "exit 3"], "");
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let events = d.docker(&[
        "events",
        "--since",
        "0",
        "--until",
        &(now + 1).to_string(),
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}} {{.Actor.Attributes.exitCode}}",
    ]);
    for want in [
        "exec_create: echo hi",
        "exec_start: echo hi",
        "exec_die 0",
        "exec_die 3",
    ] {
        assert!(events.contains(want), "{want} not in:\n{events}");
    }
    let (code, out, err) =
        d.docker_with_input(&["exec", &name, "sh", "-c", "echo out; echo err >&2"], "");
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(0), "out\n", "err\n")
    );
    // -i: stdin reaches the process, and its end is the process's EOF.
    let (code, out, err) = d.docker_with_input(&["exec", "-i", &name, "cat"], "hello\n");
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"), "stderr: {err}");
    // -e, -w and -u are the process's.
    let out = d.docker(&[
        "exec",
        "-e",
        "GREETING=hey",
        "-w",
        "/bin",
        "-u",
        "65534",
        &name,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u)",
    ]);
    assert_eq!(out, "hey /bin 65534\n");
    // --privileged: every capability the host has, more than the default set.
    let caps = |privileged: bool| {
        let mut args = vec!["exec"];
        if privileged {
            args.push("--privileged");
        }
        args.extend([name.as_str(), "sh", "-c", "grep CapEff /proc/self/status"]);
        let out = d.docker(&args);
        let hex = out.split_whitespace().last().unwrap_or("").to_string();
        u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("CapEff in {out:?}"))
    };
    let (default, privileged) = (caps(false), caps(true));
    assert!(
        privileged & default == default && privileged.count_ones() > default.count_ones(),
        "default {default:x}, privileged {privileged:x}"
    );
    // -d: runs on its own.
    d.docker(&["exec", "-d", &name, "sh", "-c", "echo detached > /detached"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = d.docker_with_input(&["exec", &name, "cat", "/detached"], "");
        if out == "detached\n" {
            break;
        }
        assert!(Instant::now() < deadline, "exec -d did not run: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A running exec is listed in the container's ExecIDs, a finished one is not.
    d.docker(&["exec", "-d", &name, "sleep", "30"]);
    let ids = d.docker(&["inspect", "-f", "{{len .ExecIDs}}", &name]);
    assert_eq!(ids.trim(), "1", "{ids}");
    let (_, err) = d.docker_expect(&["exec", &name, "nope-not-a-command"], false);
    assert!(err.contains("nope-not-a-command"), "{err}");
    // The API directly: a detached Tty exec resized while it runs, its record, errors.
    let body = d.k.work.path().join("exec.json");
    std::fs::write(
        &body,
        r#"{"Tty": true, "Cmd": ["sh", "-c", "while [ ! -e /go ]; do sleep 1; done; stty size > /size"]}"#,
    )
    .expect("exec body");
    let (status, created) = d.curl("POST", &format!("/containers/{name}/exec"), Some(&body));
    assert_eq!(status, 201, "{created}");
    let exec_id = created.split('"').nth(3).expect("an exec id").to_string();
    std::fs::write(&body, r#"{"Detach": true, "Tty": true}"#).expect("start body");
    let (status, out) = d.curl("POST", &format!("/exec/{exec_id}/start"), Some(&body));
    assert_eq!(status, 200, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, out) = d.curl("POST", &format!("/exec/{exec_id}/resize?h=44&w=99"), None);
        if status == 200 {
            break;
        }
        if Instant::now() > deadline {
            let (_, inspect) = d.curl("GET", &format!("/exec/{exec_id}/json"), None);
            let (_, err) = d.stop();
            panic!("exec resize: {status} {out}\n{inspect}\ndaemon:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d.docker(&["exec", &name, "sh", "-c", "> /go"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = d.docker_with_input(&["exec", &name, "cat", "/size"], "");
        if out == "44 99\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the exec's pty size: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, inspect) = d.curl("GET", &format!("/exec/{exec_id}/json"), None);
    assert_eq!(status, 200, "{inspect}");
    assert!(inspect.contains(r#""ExitCode":0"#), "{inspect}");
    assert!(inspect.contains(r#""Running":false"#), "{inspect}");
    let (status, out) = d.curl("GET", "/exec/nope/json", None);
    assert_eq!(status, 404, "{out}");
    assert!(out.contains("No such exec instance"), "{out}");
    let (status, out) = d.curl("POST", &format!("/containers/{name}/exec"), Some(&body));
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("No exec command specified"), "{out}");
    std::fs::write(&body, r#"{"Cmd": ["true"]}"#).expect("exec body");
    let (status, out) = d.curl("POST", "/containers/nope/exec", Some(&body));
    assert_eq!(status, 404, "{out}");
    d.docker(&["kill", &name]);
    d.docker(&["wait", &name]);
    let (_, err) = d.docker_expect(&["exec", &name, "echo", "hi"], false);
    assert!(err.contains("is not running"), "{err}");
    d.docker(&["rm", &name]);
    assert!(d.container_dirs().is_empty(), "{:?}", d.container_dirs());
    assert!(d.monitors().is_empty(), "{:?}", d.monitors());
}

#[test]
fn docker_run_interactive_feeds_stdin_and_closes_it() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let (code, out, err) = d.docker_with_input(
        &["run", "-i", "--rm", "--network", "none", base, "cat"],
        "hi\n",
    );
    assert_eq!((code, out.as_str()), (Some(0), "hi\n"), "stderr: {err}");
    let (code, out, err) = d.docker_with_input(
        &[
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            base,
            "sh",
            "-c",
            "wc -l; exit 4",
        ],
        "a\nb\nc\n",
    );
    assert_eq!((code, out.trim()), (Some(4), "3"), "stderr: {err}");
    assert!(d.docker(&["ps", "-a", "-q"]).trim().is_empty());
    assert!(d.container_dirs().is_empty(), "{:?}", d.container_dirs());
    assert!(d.monitors().is_empty(), "{:?}", d.monitors());
}

#[test]
fn docker_run_and_exec_with_a_terminal() {
    let d = Daemon::start();
    let base = d.k.busybox();
    // docker run -it: a pty of the terminal's size, typed input, the shell's exit code.
    let (code, screen) = d.under_pty(
        &format!("run -it --rm --network none {base} sh"),
        "tty; stty size; echo $((6*7)); exit 7\n",
    );
    assert_eq!(code, Some(7), "{screen}");
    assert!(screen.contains("42\r\n"), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("33 101"), "{screen}");
    assert!(d.container_dirs().is_empty(), "{:?}", d.container_dirs());
    assert!(d.monitors().is_empty(), "{:?}", d.monitors());

    // A detached -it container: resize, exec -it, attach; its output is logged.
    let name = format!("kt{}", std::process::id() % 100_000);
    d.docker(&[
        "run",
        "-dit",
        "--network",
        "none",
        "--name",
        &name,
        base,
        "sh",
    ]);
    let (status, body) = d.curl(
        "POST",
        &format!("/containers/{name}/resize?h=50&w=120"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        d.docker(&["exec", &name, "sh", "-c", "stty -F /dev/pts/0 size"]),
        "50 120\n"
    );
    let (code, screen) = d.under_pty(
        &format!("exec -it {name} sh"),
        "tty; stty size; echo $((6*7)); exit 5\n",
    );
    assert_eq!(code, Some(5), "{screen}");
    assert!(screen.contains("42\r\n"), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("33 101"), "{screen}");
    let (code, screen) = d.under_pty(
        &format!("attach {name}"),
        "echo attached $((6*7)); exit 6\n",
    );
    assert_eq!(code, Some(6), "{screen}");
    assert!(screen.contains("attached 42"), "{screen}");
    let logs = d.docker(&["logs", &name]);
    assert!(logs.contains("attached 42"), "{logs}");
    let state = d.docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        &name,
    ]);
    assert_eq!(state.trim(), "exited 6");
    d.docker(&["rm", &name]);
    assert!(d.container_dirs().is_empty(), "{:?}", d.container_dirs());
    assert!(d.monitors().is_empty(), "{:?}", d.monitors());
}

#[test]
fn daemon_stops_while_an_exec_runs() {
    let mut d = Daemon::start();
    let name = format!("ks{}", std::process::id() % 100_000);
    d.sleeper(&name, &["--network", "none"]);
    let mut exec = d.docker_cmd(&["exec", &name, "sleep", "100"]);
    exec.stdout(Stdio::null()).stderr(Stdio::null());
    let mut exec = exec.spawn().expect("docker exec");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = d.docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done",
        ]);
        if ps.contains("sleep\u{0}100") {
            break;
        }
        assert!(Instant::now() < deadline, "the exec did not start:\n{ps}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, err) = d.stop();
    assert!(status.success(), "{err}");
    let _ = exec.kill();
    let _ = exec.wait();
}
