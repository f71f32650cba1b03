//! Registries end to end, against Debian's `docker-registry` (Distribution 2.8) started on
//! 127.0.0.1 with a random port (open, or htpasswd basic auth), plus skopeo for interop and a
//! small fault-injecting proxy (dropped connections, 500s, corrupted blobs).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::build::Kiln;
use crate::util::{free_port, kiln, run, stderr, stdout};

/// A `docker-registry serve` process with its storage in a temp dir; killed on drop.
pub struct TestRegistry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

fn wait_listening(addr: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl TestRegistry {
    /// Starts a registry; with `user`, htpasswd basic auth for (user, password).
    pub fn start(user: Option<(&str, &str)>) -> TestRegistry {
        Self::start_config(user, "")
    }

    /// Starts a registry with an `auth:` section of its own (token auth).
    pub fn start_with_auth(auth: &str) -> TestRegistry {
        Self::start_config(None, auth)
    }

    fn start_config(user: Option<(&str, &str)>, auth_section: &str) -> TestRegistry {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("registry dir");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut auth = auth_section.to_string();
            if let Some((u, p)) = user {
                let htpasswd = dir.path().join("htpasswd");
                let st = Command::new("htpasswd")
                    .args(["-Bbc", htpasswd.to_str().expect("utf8"), u, p])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("htpasswd (apache2-utils) must be installed");
                assert!(st.success());
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            let config = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("docker-registry must be installed (scripts/test.sh does it)");
            let mut reg = TestRegistry { child, addr, dir };
            if wait_listening(&reg.addr) && reg.child.try_wait().ok().flatten().is_none() {
                return reg;
            }
            // Port taken between probing and binding: try another.
        }
        panic!("could not start docker-registry");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kiln with its root and a private docker config dir.
fn k(kl: &Kiln, docker_config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = kiln(kl.root.path());
    cmd.env("DOCKER_CONFIG", docker_config).args(args);
    run(cmd, stdin)
}

fn ok(kl: &Kiln, dc: &Path, args: &[&str]) -> String {
    let out = k(kl, dc, args, None);
    assert!(
        out.status.success(),
        "kiln {args:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn fails(kl: &Kiln, dc: &Path, args: &[&str]) -> String {
    let out = k(kl, dc, args, None);
    assert!(
        !out.status.success(),
        "kiln {args:?} should fail\nstdout:\n{}",
        stdout(&out)
    );
    stderr(&out)
}

/// `digest: sha256:… size: N` from push output.
pub fn pushed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in push output:\n{out}"))
        .to_string()
}

/// `Digest: sha256:…` from pull output.
pub fn pulled_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in pull output:\n{out}"))
        .trim()
        .to_string()
}

/// An image with a busybox layer plus a layer of random bytes.
pub fn app_image(kl: &Kiln, tag: &str) -> String {
    let base = kl.busybox();
    let noise: String = (0..20000).map(|i| (i * 7919 % 251) as u8 as char).collect();
    let ctx = kl.context(
        &format!("app-{}", tag.replace(['/', ':'], "-")),
        &format!("FROM {base}\nCOPY noise.txt /noise.txt\nENV APP=1\n"),
        &[("noise.txt", &noise)],
    );
    kl.build(&ctx, &["-t", tag])
}

fn blob_files(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ingest_files(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("ingest"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn push_wipe_pull_gives_the_same_digests() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/team/app:1", reg.addr);
    let id = app_image(&a, &name);
    let out = ok(&a, dc.path(), &["push", &name]);
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}/team/app]",
            reg.addr
        )),
        "{out}"
    );
    assert!(out.contains(": Pushed"), "{out}");
    let digest = pushed_digest(&out);

    // Again: every blob is already there.
    let again = ok(&a, dc.path(), &["push", &name]);
    assert!(
        again.contains("Layer already exists") && !again.contains(": Pushed"),
        "{again}"
    );
    assert_eq!(pushed_digest(&again), digest);

    // A fresh store pulls the same image.
    let b = Kiln::new();
    let out = ok(&b, dc.path(), &["pull", &name]);
    assert_eq!(pulled_digest(&out), digest, "{out}");
    assert!(
        out.contains("Pull complete") && out.contains("Status: Downloaded newer image"),
        "{out}"
    );
    assert!(out.trim_end().ends_with(&name), "{out}");
    assert_eq!(b.inspect(&name)["Id"], serde_json::json!(id));
    // The pull unpacked both layers into snapshots (one per chain).
    let snapshots: Vec<String> = std::fs::read_dir(b.root.path().join("snapshots/overlayfs"))
        .or_else(|_| std::fs::read_dir(b.root.path().join("snapshots/copy")))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let up = ok(&b, dc.path(), &["pull", "-q", &name]);
    assert_eq!(up.trim(), name);
    let up = ok(&b, dc.path(), &["pull", &name]);
    assert!(up.contains("Status: Image is up to date"), "{up}");

    // By digest, and the pulled image builds (FROM a pulled image, RUN in it).
    let by_digest = format!("{}/team/app@{digest}", reg.addr);
    let c = Kiln::new();
    ok(&c, dc.path(), &["pull", &by_digest]);
    let ctx = c.context(
        "from-pulled",
        &format!("FROM {by_digest}\nRUN cat /noise.txt > /copy\n"),
        &[],
    );
    c.build(&ctx, &["-t", "derived"]);

    // Unknown tags and repositories: the registry's own error code, the reference, the status.
    let err = fails(
        &b,
        dc.path(),
        &["pull", &format!("{}/team/app:nope", reg.addr)],
    );
    assert!(
        err.contains(&format!("{}/team/app:nope", reg.addr))
            && err.contains("MANIFEST_UNKNOWN")
            && err.contains("(HTTP 404)"),
        "{err}"
    );
}

#[test]
fn build_pulls_missing_base_images_and_pushes() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let base = format!("{}/base/busybox:test", reg.addr);
    a.busybox();
    ok(&a, dc.path(), &["tag", "busybox:test", &base]);
    ok(&a, dc.path(), &["push", &base]);

    // An empty store: FROM pulls the base, RUN runs in it, --push sends the result.
    let b = Kiln::new();
    let target = format!("{}/built/app:v2", reg.addr);
    let ctx = b.context(
        "pull-on-demand",
        &format!("FROM {base}\nRUN echo made > /made.txt\n"),
        &[],
    );
    let out = k(
        &b,
        dc.path(),
        &[
            "build",
            "--progress=plain",
            "-t",
            &target,
            "--push",
            ctx.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("pulling {base}")), "{err}");
    assert!(
        err.contains(&format!("pushing {target} with digest sha256:")),
        "{err}"
    );

    // skopeo sees what kiln pushed, with the digest kiln printed.
    let pushed = err
        .split("with digest ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ])
        .output()
        .expect("skopeo");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Digest"], serde_json::json!(pushed));
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2));

    // --output type=registry,name=… (zstd layers) is readable by skopeo too.
    let other = format!("{}/built/zstd:1", reg.addr);
    let spec = format!("type=registry,name={other}");
    let out = k(
        &b,
        dc.path(),
        &[
            "build",
            "-q",
            "--compression",
            "zstd",
            "--output",
            &spec,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{other}"),
        ])
        .output()
        .expect("skopeo");
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert!(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{m}"
    );
}

/// Layers kiln gzips on all cores (several 1 MiB blocks, compressible and incompressible)
/// are valid gzip for Go's readers: skopeo copies them to an OCI layout and umoci unpacks
/// it. Pushing twice compresses twice to the same bytes.
#[test]
fn parallel_gzip_layers_decode_in_skopeo_and_umoci() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let base = a.busybox();
    let text: String = (0..300_000).map(|i| format!("line {i}\n")).collect();
    let ctx = a.context(
        "pargz",
        &format!("FROM {base}\nCOPY text.txt noise.bin /data/\n"),
        &[("text.txt", &text)],
    );
    let mut x = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..3_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(ctx.join("noise.bin"), &noise).unwrap();
    let name = format!("{}/pargz/app:1", reg.addr);
    a.build(&ctx, &["-t", &name]);
    let first = pushed_digest(&ok(&a, dc.path(), &["push", &name]));
    let again = pushed_digest(&ok(&a, dc.path(), &["push", &name]));
    assert_eq!(
        first, again,
        "compressing the same layers twice gave other bytes"
    );

    let layout = a.work.path().join("layout");
    let st = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci:{}:app", layout.display()),
        ])
        .output()
        .expect("skopeo");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let bundle = a.work.path().join("bundle");
    let st = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:app", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(std::fs::read(rootfs.join("data/noise.bin")).unwrap(), noise);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/text.txt")).unwrap(),
        text
    );
    assert!(rootfs.join("bin/busybox").exists());
}

#[test]
fn skopeo_interop_both_ways() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/interop/app:1", reg.addr);
    let id = app_image(&a, &name);
    let digest = pushed_digest(&ok(&a, dc.path(), &["push", &name]));

    // skopeo copies kiln's image (kiln → skopeo), then pushes a docker-archive of its own.
    let copy = format!("{}/interop/copied:1", reg.addr);
    let st = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{name}"),
            &format!("docker://{copy}"),
        ])
        .output()
        .expect("skopeo");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let archive = a.work.path().join("app.tar");
    ok(
        &a,
        dc.path(),
        &["save", "-o", archive.to_str().unwrap(), &name],
    );
    let from_skopeo = format!("{}/interop/skopeo:1", reg.addr);
    let st = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{}", archive.display()),
            &format!("docker://{from_skopeo}"),
        ])
        .output()
        .expect("skopeo");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    // kiln pulls both: same image ID (config digest) as the original.
    let b = Kiln::new();
    let out = ok(&b, dc.path(), &["pull", &copy]);
    assert_eq!(pulled_digest(&out), digest);
    ok(&b, dc.path(), &["pull", &from_skopeo]);
    assert_eq!(b.inspect(&copy)["Id"], serde_json::json!(id));
    assert_eq!(b.inspect(&from_skopeo)["Id"], serde_json::json!(id));
}

/// PUTs a manifest with curl-like raw HTTP (the index is hand-made).
fn put_manifest(addr: &str, path: &str, tag: &str, media_type: &str, body: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PUT /v2/{path}/manifests/{tag} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
}

#[test]
fn multi_arch_index_pull_picks_the_platform() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let mut entries = Vec::new();
    let mut by_arch = std::collections::BTreeMap::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8")), ("arm", Some("v7"))] {
        let platform = match variant {
            Some(v) => format!("linux/{arch}/{v}"),
            None => format!("linux/{arch}"),
        };
        let ctx = a.context(
            &format!("arch-{arch}"),
            "FROM scratch\nARG TARGETPLATFORM\nCOPY f.txt /f.txt\n",
            &[("f.txt", arch)],
        );
        let tag = format!("{}/multi/app:{arch}", reg.addr);
        a.build(&ctx, &["--platform", &platform, "-t", &tag]);
        let out = ok(&a, dc.path(), &["push", &tag]);
        let digest = pushed_digest(&out);
        let size: u64 = out
            .split(" size: ")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap();
        let mut p = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            p["variant"] = serde_json::json!(v);
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": p
        }));
        by_arch.insert(arch, digest);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    });
    let body = serde_json::to_vec(&index).unwrap();
    put_manifest(
        &reg.addr,
        "multi/app",
        "all",
        "application/vnd.oci.image.index.v1+json",
        &body,
    );
    let all = format!("{}/multi/app:all", reg.addr);

    for (platform, arch) in [
        (None, "amd64"),
        (Some("linux/arm64"), "arm64"),
        (Some("linux/arm/v7"), "arm"),
    ] {
        let b = Kiln::new();
        let mut args = vec!["pull"];
        if let Some(p) = platform {
            args.extend(["--platform", p]);
        }
        args.push(&all);
        let out = ok(&b, dc.path(), &args);
        // The digest shown is the index's; the image stored is the platform's.
        assert_ne!(pulled_digest(&out), by_arch[arch]);
        let inspect = b.inspect(&all);
        assert_eq!(
            inspect["Architecture"],
            serde_json::json!(arch),
            "{inspect}"
        );
    }
    let b = Kiln::new();
    let err = fails(&b, dc.path(), &["pull", "--platform", "linux/s390x", &all]);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/amd64, linux/arm64/v8, linux/arm/v7"),
        "{err}"
    );
}

#[test]
fn push_to_another_repository_mounts_blobs() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let first = format!("{}/one/app:1", reg.addr);
    app_image(&a, &first);
    ok(&a, dc.path(), &["push", &first]);
    let second = format!("{}/two/app:1", reg.addr);
    let out = ok(&a, dc.path(), &["push", &first, &second]);
    assert!(out.contains("Mounted from one/app"), "{out}");
    assert!(!out.contains(": Pushed"), "{out}");
    let log = reg.log();
    assert!(
        log.contains("POST /v2/two/app/blobs/uploads/?mount=sha256")
            && log.contains("from=one%2Fapp HTTP/1.1\" 201"),
        "registry log:\n{log}"
    );
}

#[test]
fn basic_auth_login_push_pull_logout() {
    let password = "s3cret-Pa55word";
    let reg = TestRegistry::start(Some(("alice", password)));
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/private/app:1", reg.addr);
    app_image(&a, &name);

    let err = fails(&a, dc.path(), &["push", &name]);
    assert!(
        err.contains("requires authentication (HTTP 401)")
            && err.contains(&format!("kiln login {}", reg.addr)),
        "{err}"
    );
    let out = k(
        &a,
        dc.path(),
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        Some("wrong\n"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    assert!(!dc.path().join("config.json").exists());

    let out = k(
        &a,
        dc.path(),
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        Some(&format!("{password}\n")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "Login Succeeded");
    let config = std::fs::read_to_string(dc.path().join("config.json")).unwrap();
    assert!(config.contains(&reg.addr), "{config}");

    let out = ok(&a, dc.path(), &["push", &name]);
    let digest = pushed_digest(&out);
    let b = Kiln::new();
    let out = k(&b, dc.path(), &["pull", &name], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pulled_digest(&stdout(&out)), digest);
    for text in [stdout(&out), stderr(&out), reg.log()] {
        assert!(!text.contains(password), "secret leaked:\n{text}");
    }

    let out = ok(&a, dc.path(), &["logout", &reg.addr]);
    assert!(
        out.contains(&format!("Removing login credentials for {}", reg.addr)),
        "{out}"
    );
    let c = Kiln::new();
    let err = fails(&c, dc.path(), &["pull", &name]);
    assert!(err.contains("requires authentication (HTTP 401)"), "{err}");
    assert!(!err.contains(password));
}

#[test]
fn cache_export_then_import_into_an_empty_root_gives_cached_steps() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let dockerfile = "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /out\"]\nCOPY app.txt /app.txt\n";
    let setup = |kl: &Kiln| {
        let ctx = kl.context("cached", dockerfile, &[("app.txt", "v1")]);
        std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox")).unwrap();
        ctx
    };
    let cache = format!("{}/cache/app:buildcache", reg.addr);
    let a = Kiln::new();
    let ctx = setup(&a);
    let local = a.work.path().join("local-cache");
    let to_registry = format!("type=registry,ref={cache},mode=max");
    let to_local = format!("type=local,dest={}", local.display());
    let out = k(
        &a,
        dc.path(),
        &[
            "build",
            "--progress=plain",
            "--cache-to",
            &to_registry,
            "--cache-to",
            &to_local,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(3 steps, 3 layers) done"),
        "{}",
        stderr(&out)
    );

    for from in [
        format!("type=registry,ref={cache}"),
        format!("type=local,src={}", local.display()),
    ] {
        let b = Kiln::new();
        let ctx = setup(&b);
        let out = k(
            &b,
            dc.path(),
            &[
                "build",
                "--progress=plain",
                "--cache-from",
                &from,
                ctx.to_str().unwrap(),
            ],
            None,
        );
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("imported build cache from") && err.contains("3 steps, 3 layers"),
            "{err}"
        );
        assert_eq!(err.matches("CACHED").count(), 3, "{err}");

        // A changed file misses from there on.
        std::fs::write(ctx.join("app.txt"), "v2").unwrap();
        let out = k(
            &b,
            dc.path(),
            &[
                "build",
                "--progress=plain",
                "--cache-from",
                &from,
                ctx.to_str().unwrap(),
            ],
            None,
        );
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.matches("CACHED").count(), 2, "{err}");
    }

    // A cache that does not exist yet is not an error (the first build of a fleet).
    let c = Kiln::new();
    let ctx = setup(&c);
    let missing = format!("type=registry,ref={}/cache/none:x", reg.addr);
    let out = k(
        &c,
        dc.path(),
        &[
            "build",
            "-q",
            "--cache-from",
            &missing,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// What the fault proxy does to blob GETs.
#[derive(Clone, Copy)]
enum Fault {
    /// Send half the body, then close the connection (the first `n` blob requests).
    Drop(usize),
    /// Answer 500 (the first `n` blob requests).
    ServerError(usize),
    /// Flip a byte of every blob.
    Corrupt,
    /// Refuse streamed uploads (`PATCH`), as registries without chunked uploads do; forward
    /// everything else, request bodies included.
    RefusePatch,
}

/// A one-request-per-connection HTTP proxy in front of a registry that injects faults into
/// blob downloads. Counts blob requests.
struct FaultProxy {
    addr: String,
    blob_requests: Arc<AtomicUsize>,
    /// The `Range` header of every blob GET ("" without one).
    ranges: Arc<std::sync::Mutex<Vec<String>>>,
}

fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some((String::from_utf8_lossy(&buf).into_owned(), buf))
}

impl FaultProxy {
    fn start(upstream: String, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let blob_requests = count.clone();
        let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ranges.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let upstream = upstream.clone();
                let count = count.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let Some((head, _)) = read_head(&mut client) else {
                        return;
                    };
                    let first = head.lines().next().unwrap_or_default().to_string();
                    let is_blob_get = first.starts_with("GET ") && first.contains("/blobs/sha256:");
                    let n = if is_blob_get {
                        let range = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Range: ").or(l.strip_prefix("range: ")))
                            .unwrap_or_default();
                        seen.lock().unwrap().push(range.to_string());
                        count.fetch_add(1, Ordering::SeqCst)
                    } else {
                        usize::MAX
                    };
                    if let Fault::RefusePatch = fault {
                        if first.starts_with("PATCH ") {
                            let body =
                                br#"{"errors":[{"code":"UNSUPPORTED","message":"no chunked uploads here"}]}"#;
                            let _ = write!(client, "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                            let _ = client.write_all(body);
                            return;
                        }
                    }
                    if let Fault::ServerError(k) = fault {
                        if n < k {
                            let body =
                                br#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#;
                            let _ = write!(client, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                            let _ = client.write_all(body);
                            return;
                        }
                    }
                    // Forward with Connection: close, read the whole answer.
                    let mut forwarded: Vec<String> = head
                        .split("\r\n")
                        .filter(|l| {
                            !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")
                        })
                        .map(str::to_string)
                        .collect();
                    forwarded.push("Connection: close".into());
                    let Ok(mut up) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = up.write_all(format!("{}\r\n\r\n", forwarded.join("\r\n")).as_bytes());
                    // The request body (uploads), by Content-Length.
                    let body_len: u64 = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let _ = std::io::copy(&mut (&mut client).take(body_len), &mut up);
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    let split = resp
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| p + 4)
                        .unwrap_or(resp.len());
                    let ok = resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.1 206");
                    match fault {
                        Fault::Drop(k) if is_blob_get && ok && n < k => {
                            let body_len = resp.len() - split;
                            let _ = client.write_all(&resp[..split + body_len / 2]);
                            let _ = client.flush();
                            return;
                        }
                        Fault::Corrupt if is_blob_get && ok && resp.len() > split => {
                            let last = resp.len() - 1;
                            resp[last] ^= 0xff;
                        }
                        _ => {}
                    }
                    let _ = client.write_all(&resp);
                });
            }
        });
        FaultProxy {
            addr,
            blob_requests,
            ranges,
        }
    }
}

/// Pushes an app image to `reg` and returns its path for pulls through a proxy.
fn seed(reg: &TestRegistry, dc: &Path, repo: &str) {
    let a = Kiln::new();
    let name = format!("{}/{repo}:1", reg.addr);
    app_image(&a, &name);
    ok(&a, dc, &["push", &name]);
}

#[test]
fn pull_retries_dropped_connections_and_server_errors() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    seed(&reg, dc.path(), "faults/app");
    for fault in [Fault::Drop(2), Fault::ServerError(2)] {
        let proxy = FaultProxy::start(reg.addr.clone(), fault);
        let b = Kiln::new();
        let name = format!("{}/faults/app:1", proxy.addr);
        let out = k(&b, dc.path(), &["pull", &name], None);
        assert!(out.status.success(), "{}", stderr(&out));
        // Two layers and a config, two of the requests failed and were repeated.
        assert_eq!(proxy.blob_requests.load(Ordering::SeqCst), 5);
        let ranges = proxy.ranges.lock().unwrap().clone();
        if let Fault::Drop(_) = fault {
            // The dropped downloads resumed where they stopped, not from byte 0.
            let resumed = ranges
                .iter()
                .filter(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-"))
                .count();
            assert_eq!(resumed, 2, "{ranges:?}");
        }
        assert!(ingest_files(b.root.path()).is_empty());
        b.inspect(&name);
    }
}

#[test]
fn pull_fails_clearly_and_stores_nothing_partial() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    seed(&reg, dc.path(), "faults/bad");

    // A registry that keeps failing: the error, after retries, names the status and code.
    let proxy = FaultProxy::start(reg.addr.clone(), Fault::ServerError(usize::MAX));
    let b = Kiln::new();
    let name = format!("{}/faults/bad:1", proxy.addr);
    let err = fails(&b, dc.path(), &["pull", &name]);
    assert!(
        err.contains(&name) && err.contains("UNKNOWN: injected failure (HTTP 500)"),
        "{err}"
    );
    assert_eq!(
        proxy.blob_requests.load(Ordering::SeqCst),
        5,
        "one blob, five attempts"
    );
    assert!(ingest_files(b.root.path()).is_empty());
    assert!(b.expect(&["images", "-q"], true).0.trim().is_empty());

    // Bytes that do not match the digest: an error, no retry, nothing stored.
    let proxy = FaultProxy::start(reg.addr.clone(), Fault::Corrupt);
    let c = Kiln::new();
    let name = format!("{}/faults/bad:1", proxy.addr);
    let err = fails(&c, dc.path(), &["pull", &name]);
    assert!(
        err.contains("does not match its digest") && err.contains("nothing was stored"),
        "{err}"
    );
    let expected = err
        .split("expected sha256:")
        .nth(1)
        .and_then(|r| r.get(..64))
        .unwrap()
        .to_string();
    assert!(!blob_files(c.root.path()).contains(&expected));
    assert!(ingest_files(c.root.path()).is_empty());

    // The proxy drops every blob mid-way: after the retries, a clear transport error.
    let proxy = FaultProxy::start(reg.addr.clone(), Fault::Drop(usize::MAX));
    let d = Kiln::new();
    let name = format!("{}/faults/bad:1", proxy.addr);
    let err = fails(&d, dc.path(), &["pull", &name]);
    assert!(err.contains("connection ended after"), "{err}");
    assert!(ingest_files(d.root.path()).is_empty());
}

#[test]
fn run_pulls_a_missing_image() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let image = format!("{}/run/busybox:test", reg.addr);
    a.busybox();
    ok(&a, dc.path(), &["tag", "busybox:test", &image]);
    ok(&a, dc.path(), &["push", &image]);
    // An empty store: run pulls the image first, as docker does.
    let b = Kiln::new();
    let out = k(
        &b,
        dc.path(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            "echo pulled and ran",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pulled and ran\n");
    assert!(
        stderr(&out).contains("Unable to find image"),
        "{}",
        stderr(&out)
    );
    assert!(ok(&b, dc.path(), &["images"]).contains("run/busybox"));
}

/// Layers compressed for the push are streamed to the registry while they compress (one
/// `PATCH` each, committed under the digest of the blob the store verified); a second push
/// reuses the compressed blobs and sends nothing; the pulled image is the pushed one.
#[test]
fn push_streams_layers_while_they_compress() {
    let reg = TestRegistry::start(None);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/stream/app:1", reg.addr);
    app_image(&a, &name);
    let out = ok(&a, dc.path(), &["push", &name]);
    let digest = pushed_digest(&out);
    let log = reg.log();
    let patches = log
        .lines()
        .filter(|l| {
            l.contains("\"PATCH /v2/stream/app/blobs/uploads/") && l.contains("HTTP/1.1\" 202")
        })
        .count();
    // Both layers of the app image (busybox, noise) were built here, so both compress.
    assert_eq!(patches, 2, "registry log:\n{log}");

    let zstd = format!("{}/stream/zstd:1", reg.addr);
    ok(&a, dc.path(), &["tag", &name, &zstd]);
    let zstd_digest = pushed_digest(&ok(
        &a,
        dc.path(),
        &["push", "--compression", "zstd", &zstd],
    ));

    // Again: the blobs compressed the first time are reused, the registry has them.
    let again = ok(&a, dc.path(), &["push", &name]);
    assert!(
        again.contains("Layer already exists") && !again.contains(": Pushed"),
        "{again}"
    );
    assert_eq!(pushed_digest(&again), digest);
    let log = reg.log();
    let patches_after = log
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/stream/"))
        .count();
    assert_eq!(patches_after, 4, "registry log:\n{log}");

    // Pulls verify every blob and unpack every layer.
    for (image, pushed) in [(&name, &digest), (&zstd, &zstd_digest)] {
        let b = Kiln::new();
        let pulled = ok(&b, dc.path(), &["pull", image]);
        assert_eq!(&pulled_digest(&pulled), pushed, "{pulled}");
    }
}

/// A registry that refuses streamed uploads still gets the image: the stored blobs are
/// uploaded the ordinary way.
#[test]
fn push_falls_back_when_the_registry_refuses_streamed_uploads() {
    let reg = TestRegistry::start(None);
    let proxy = FaultProxy::start(reg.addr.clone(), Fault::RefusePatch);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/nostream/app:1", proxy.addr);
    app_image(&a, &name);
    let out = ok(&a, dc.path(), &["push", &name]);
    let digest = pushed_digest(&out);
    assert!(out.contains(": Pushed"), "{out}");
    let b = Kiln::new();
    let direct = format!("{}/nostream/app:1", reg.addr);
    let pulled = ok(&b, dc.path(), &["pull", &direct]);
    assert_eq!(pulled_digest(&pulled), digest, "{pulled}");
}
