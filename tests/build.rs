//! `kiln build` end to end without RUN: COPY/ADD rules, metadata → config, multi-stage,
//! reproducibility, outputs. Expected values are BuildKit's documented behaviour (the Dockerfile
//! reference) written down here.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{kiln, run, stderr, stdout};

/// A test root plus helpers to run kiln against it.
pub struct Kiln {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Kiln {
    pub fn new() -> Kiln {
        Kiln {
            root: tempfile::tempdir().expect("root"),
            work: tempfile::tempdir().expect("work"),
        }
    }

    /// Runs kiln; panics with its output if the exit status is not `ok`.
    pub fn expect(&self, args: &[&str], ok: bool) -> (String, String) {
        let mut cmd = kiln(self.root.path());
        cmd.args(args);
        let out = run(cmd, None);
        let (o, e) = (stdout(&out), stderr(&out));
        assert_eq!(
            out.status.success(),
            ok,
            "kiln {args:?}\nstdout:\n{o}\nstderr:\n{e}"
        );
        (o, e)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.expect(args, true).0
    }

    /// A context directory with the given files (path → content) and Dockerfile.
    pub fn context(&self, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).expect("context dir");
        std::fs::write(dir.join("Dockerfile"), dockerfile).expect("Dockerfile");
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("parents");
            std::fs::write(&p, content).expect("file");
        }
        dir
    }

    pub fn build(&self, ctx: &Path, extra: &[&str]) -> String {
        let mut args = vec!["build", "-q"];
        args.extend_from_slice(extra);
        let ctx = ctx.to_string_lossy().to_string();
        args.push(&ctx);
        self.ok(&args).trim().to_string()
    }

    /// Builds `ctx`, which must fail; returns kiln's stderr.
    pub fn build_fails(&self, ctx: &Path) -> String {
        self.expect(&["build", ctx.to_str().expect("utf8")], false)
            .1
    }

    pub fn inspect(&self, image: &str) -> Value {
        let out = self.ok(&["image", "inspect", image]);
        let v: Value = serde_json::from_str(&out).expect("inspect JSON");
        v[0].clone()
    }

    /// Builds the image and exports its files to a fresh directory.
    pub fn files(&self, ctx: &Path, extra: &[&str]) -> PathBuf {
        let dest = self.work.path().join(format!("out-{}", rand_suffix()));
        let spec = format!("type=local,dest={}", dest.display());
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--output", &spec]);
        self.build(ctx, &args);
        dest
    }

    /// `busybox:test`: a base image made without RUN from Debian's static busybox, with
    /// applet symlinks, /etc/passwd and /etc/group (user `app` 1000:1000, group `staff` 50).
    pub fn busybox(&self) -> &'static str {
        let ctx = self.work.path().join("busybox-ctx");
        let bin = ctx.join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("busybox-static must be installed (scripts/test.sh does it)");
        for applet in [
            "sh", "ls", "cat", "echo", "true", "httpd", "sleep", "id", "wc", "find",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        std::fs::create_dir_all(ctx.join("rootfs/etc")).expect("etc");
        std::fs::write(
            ctx.join("rootfs/etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            ctx.join("rootfs/etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
        )
        .expect("group");
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
        )
        .expect("Dockerfile");
        self.build(&ctx, &["-t", "busybox:test"]);
        "busybox:test"
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn copy_follows_dockers_rules() {
    let k = Kiln::new();
    let ctx = k.context(
        "copy",
        r#"FROM scratch
COPY a.txt /single
COPY a.txt /todir/
COPY dir /dircontents
COPY *.txt /glob/
COPY link /followed
COPY dir/ /keeplinks/
COPY --chown=1000:1001 --chmod=0640 a.txt /owned/a.txt
COPY --chmod=u+x,g=r a.txt /symbolic/a.txt
COPY --parents dir/sub/d.txt /parents/
COPY --exclude=**/*.txt dir /excluded/
COPY --exclude=*.txt dir /toplevel-excluded/
COPY a.txt b.txt /deep/new/parents/
COPY <<EOF /heredoc.txt
inline $PATH
EOF
"#,
        &[
            ("a.txt", "A"),
            ("b.txt", "B"),
            ("ignored.txt", "I"),
            ("dir/c.txt", "C"),
            ("dir/e.md", "E"),
            ("dir/sub/d.txt", "D"),
            (".dockerignore", "ignored.txt\n"),
        ],
    );
    std::os::unix::fs::symlink("a.txt", ctx.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../a.txt", ctx.join("dir/up")).expect("symlink");
    std::fs::set_permissions(ctx.join("a.txt"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("single")), "A");
    assert_eq!(read(&out.join("todir/a.txt")), "A");
    assert_eq!(
        read(&out.join("dircontents/c.txt")),
        "C",
        "a directory source copies its contents"
    );
    assert!(!out.join("dircontents/dir").exists());
    assert_eq!(read(&out.join("dircontents/sub/d.txt")), "D");
    assert_eq!(read(&out.join("glob/a.txt")), "A");
    assert_eq!(read(&out.join("glob/b.txt")), "B");
    assert!(
        !out.join("glob/ignored.txt").exists(),
        ".dockerignore applies"
    );
    let followed = std::fs::symlink_metadata(out.join("followed")).expect("followed");
    assert!(followed.is_file(), "a source named directly is followed");
    assert_eq!(read(&out.join("followed")), "A");
    assert!(
        std::fs::symlink_metadata(out.join("keeplinks/up"))
            .expect("up")
            .file_type()
            .is_symlink(),
        "symlinks inside are kept"
    );
    assert_eq!(owner(&out.join("owned/a.txt")), (1000, 1001));
    assert_eq!(mode(&out.join("owned/a.txt")), 0o640);
    assert_eq!(
        owner(&out.join("single")),
        (0, 0),
        "context files are root-owned"
    );
    assert_eq!(mode(&out.join("symbolic/a.txt")), 0o744);
    assert_eq!(read(&out.join("parents/dir/sub/d.txt")), "D");
    assert!(out.join("excluded/e.md").exists());
    assert!(!out.join("excluded/c.txt").exists() && !out.join("excluded/sub/d.txt").exists());
    assert!(
        !out.join("toplevel-excluded/c.txt").exists(),
        "patterns are relative to the source"
    );
    assert!(
        out.join("toplevel-excluded/sub/d.txt").exists(),
        "`*.txt` matches one level only"
    );
    assert_eq!(read(&out.join("deep/new/parents/b.txt")), "B");
    assert_eq!(mode(&out.join("deep/new")), 0o755);
    assert_eq!(
        read(&out.join("heredoc.txt")),
        "inline /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn copy_errors_name_the_step() {
    let k = Kiln::new();
    let ctx = k.context(
        "copyerr",
        "FROM scratch\nCOPY a.txt b.txt /notadir\n",
        &[("a.txt", "A"), ("b.txt", "B")],
    );
    let err = k.build_fails(&ctx);
    assert!(err.contains("Dockerfile:2:1: error: COPY a.txt b.txt /notadir: When using COPY with more than one source file, the destination must be a directory and end with a /"), "{err}");
    assert!(err.contains(" 2 | COPY a.txt b.txt /notadir"), "{err}");

    let ctx = k.context("missing", "FROM scratch\nCOPY nothere /x\n", &[]);
    let err = k.build_fails(&ctx);
    assert!(
        err.contains("\"nothere\": not found in the build context"),
        "{err}"
    );

    // Missing images are pulled; port 1 of loopback refuses (tests never reach Docker Hub).
    let ctx = k.context("noimage", "FROM 127.0.0.1:1/nosuchimage\n", &[]);
    let err = k.build_fails(&ctx);
    assert!(
        err.contains("127.0.0.1:1/nosuchimage:latest")
            && err.contains("not in the local store, and pulling it failed")
            && err.contains("cannot reach 127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn metadata_produces_dockers_config() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "meta",
        &format!(
            r#"FROM {base}
ENV A=1 B="two words"
ENV LEGACY legacy value
LABEL org.example.a="x y" b=$A
EXPOSE 80 53/udp
VOLUME ["/data"]
USER app
WORKDIR /srv/app
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --retries=2 CMD wget -q -O- localhost || exit 1
SHELL ["/bin/sh", "-e", "-c"]
ENTRYPOINT echo entry
ONBUILD COPY . /app
ARG SECRET=never-in-config
"#
        ),
        &[],
    );
    k.build(&ctx, &["-t", "meta", "--label", "cli=yes"]);
    let v = k.inspect("meta");
    let c = &v["Config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        env.contains(&"A=1")
            && env.contains(&"B=two words")
            && env.contains(&"LEGACY=legacy value"),
        "{env:?}"
    );
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert_eq!(c["Labels"]["org.example.a"], "x y");
    assert_eq!(c["Labels"]["b"], "1");
    assert_eq!(c["Labels"]["cli"], "yes");
    assert!(c["ExposedPorts"]["80/tcp"].is_object() && c["ExposedPorts"]["53/udp"].is_object());
    assert!(c["Volumes"]["/data"].is_object());
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(
        c["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q -O- localhost || exit 1"])
    );
    assert_eq!(c["Healthcheck"]["Interval"], 30_000_000_000i64);
    assert_eq!(c["Healthcheck"]["Retries"], 2);
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-e", "-c"]));
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/sh", "-e", "-c", "echo entry"])
    );
    assert!(
        c["Cmd"].is_null(),
        "ENTRYPOINT resets the inherited CMD: {}",
        c["Cmd"]
    );
    assert_eq!(c["OnBuild"], serde_json::json!(["COPY . /app"]));
    assert!(
        !v.to_string().contains("never-in-config"),
        "ARG values never reach the config"
    );

    // WORKDIR created in the filesystem, owned by USER.
    let out = k.files(&ctx, &[]);
    assert!(out.join("srv/app").is_dir());
    assert_eq!(owner(&out.join("srv/app")), (1000, 1000));

    // History: one entry per instruction, metadata ones without layers.
    let h = k.ok(&["history", "--no-trunc", "meta"]);
    assert!(h.contains("WORKDIR /srv/app"), "{h}");
    assert!(h.contains("ENV A=1 B=two words"), "{h}");

    // ONBUILD triggers run in the child and are not inherited.
    let child = k.context("child", "FROM meta\n", &[("hello.txt", "hi")]);
    k.build(&child, &["-t", "child"]);
    let cv = k.inspect("child");
    assert!(
        cv["Config"]["OnBuild"].is_null(),
        "{}",
        cv["Config"]["OnBuild"]
    );
    let out = k.files(&child, &[]);
    assert_eq!(read(&out.join("app/hello.txt")), "hi");
}

#[test]
fn chown_by_name_uses_the_stage_passwd() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "chown",
        &format!("FROM {base}\nCOPY --chown=app:staff f /f\nCOPY --chown=app g /g\n"),
        &[("f", "x"), ("g", "y")],
    );
    let out = k.files(&ctx, &[]);
    assert_eq!(owner(&out.join("f")), (1000, 50));
    assert_eq!(owner(&out.join("g")), (1000, 1000));
    let bad = k.context(
        "chownbad",
        &format!("FROM {base}\nCOPY --chown=nobody f /f\n"),
        &[("f", "x")],
    );
    let err = k.build_fails(&bad);
    assert!(err.contains("unable to find user nobody"), "{err}");
}

#[test]
fn multi_stage_target_and_from() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "multi",
        &format!(
            r#"ARG FLAVOR=plain
FROM scratch AS one
COPY one.txt /one.txt
FROM scratch AS unused
COPY doesnotexist /x
FROM {base} AS two
COPY --from=one /one.txt /from-one.txt
COPY --from=0 /one.txt /from-index.txt
COPY --from={base} /bin/busybox /from-image-busybox
FROM two
ARG FLAVOR
COPY ${{FLAVOR}}.txt /flavor.txt
"#
        ),
        &[("one.txt", "1"), ("plain.txt", "p"), ("fancy.txt", "f")],
    );
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("from-one.txt")), "1");
    assert_eq!(read(&out.join("from-index.txt")), "1");
    assert!(out.join("from-image-busybox").is_file());
    assert_eq!(read(&out.join("flavor.txt")), "p");
    let out = k.files(&ctx, &["--build-arg", "FLAVOR=fancy"]);
    assert_eq!(read(&out.join("flavor.txt")), "f");
    let out = k.files(&ctx, &["--target", "one"]);
    assert_eq!(read(&out.join("one.txt")), "1");
    assert!(!out.join("bin").exists());
    let (_, err) = k.expect(
        &["build", "--target", "nope", ctx.to_str().expect("utf8")],
        false,
    );
    assert!(
        err.contains("target stage \"nope\" could not be found"),
        "{err}"
    );
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    let k = Kiln::new();
    let ctx = k.context(
        "repro",
        "FROM scratch\nCOPY . /src/\nLABEL x=y\n",
        &[("a", "1"), ("d/b", "2")],
    );
    let first = k.build(&ctx, &["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
    // Touch everything: mtimes change, content does not.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(ctx.join("a"), "1").expect("rewrite");
    let k2 = Kiln::new();
    let second = k2.build(&ctx, &["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
    assert_eq!(first, second, "same image ID for the same inputs");
    let v = k.inspect(&first);
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
}

#[test]
fn add_extracts_local_archives() {
    let k = Kiln::new();
    let ctx = k.context("add", "FROM scratch\n", &[]);
    let payload = ctx.join("payload");
    std::fs::create_dir_all(payload.join("inner")).expect("payload");
    std::fs::write(payload.join("inner/file.txt"), "tarred").expect("file");
    let mut dockerfile = String::from("FROM scratch\n");
    for (ext, flag) in [
        ("tar", ""),
        ("tar.gz", "z"),
        ("tar.bz2", "j"),
        ("tar.xz", "J"),
        ("tar.zst", "--zstd"),
    ] {
        let name = format!("a.{ext}");
        let mut cmd = std::process::Command::new("tar");
        cmd.current_dir(&payload).arg("-c");
        if flag.starts_with("--") {
            cmd.arg(flag);
        } else if !flag.is_empty() {
            cmd.arg(format!("-{flag}"));
        }
        let status = cmd
            .arg("-f")
            .arg(ctx.join(&name))
            .arg("inner")
            .status()
            .expect("tar");
        assert!(status.success(), "tar {ext}");
        dockerfile.push_str(&format!("ADD {name} /x/{ext}/\n"));
    }
    dockerfile.push_str("ADD --unpack=false a.tar.gz /kept/\n");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("Dockerfile");
    let out = k.files(&ctx, &[]);
    for ext in ["tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst"] {
        assert_eq!(
            read(&out.join(format!("x/{ext}/inner/file.txt"))),
            "tarred",
            "{ext}"
        );
    }
    assert!(out.join("kept/a.tar.gz").is_file());
}

#[test]
fn add_rejects_malicious_archives() {
    let k = Kiln::new();
    let ctx = k.context("evil", "FROM scratch\nADD evil.tar /dst/\n", &[]);
    let outside = k.work.path().join("outside-target");
    // A tar with an entry that climbs out of the destination.
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        let body = b"pwned";
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let name = format!("../../../../../../..{}", outside.display());
        let bytes = h.as_old_mut().name.as_mut();
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &body[..]).expect("append");
        b.finish().expect("finish");
    }
    std::fs::write(ctx.join("evil.tar"), data).expect("write");
    let err = k.build_fails(&ctx);
    assert!(err.contains("evil.tar"), "{err}");
    assert!(
        !outside.exists(),
        "nothing may be written outside the destination"
    );
}

#[test]
fn add_downloads_urls_with_checksum() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = b"downloaded";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    let sum = "sha256:6ea3ac2b6a5e1d27a36fc4f06d5d6c9e9d5c1f2ac1d5c2e4d3e1d9a0d6c7b8a9";
    let k = Kiln::new();
    let good = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(b"downloaded")
    );
    let ctx = k.context(
        "url",
        &format!(
            "FROM scratch\nADD --checksum={good} http://127.0.0.1:{port}/files/data.bin /d/\n"
        ),
        &[],
    );
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("d/data.bin")), "downloaded");
    assert_eq!(mode(&out.join("d/data.bin")), 0o600);
    assert_eq!(
        std::fs::metadata(out.join("d/data.bin"))
            .expect("meta")
            .mtime(),
        784_111_777
    );
    let bad = k.context(
        "urlbad",
        &format!("FROM scratch\nADD --checksum={sum} http://127.0.0.1:{port}/x /x\n"),
        &[],
    );
    let err = k.build_fails(&bad);
    assert!(err.contains("checksum mismatch"), "{err}");
    let _ = server.join();
}

#[test]
fn unchanged_steps_come_from_the_cache() {
    let k = Kiln::new();
    let ctx = k.context(
        "cache",
        "FROM scratch\nCOPY a /a\nENV X=1\nCOPY b /b\nWORKDIR /w\n",
        &[("a", "1"), ("b", "2")],
    );
    let path = ctx.to_str().expect("utf8").to_string();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(&path);
        k.expect(&args, true).1
    };
    let first = build(&[]);
    assert!(!first.contains("CACHED"), "{first}");
    let second = build(&[]);
    assert_eq!(
        second.matches("CACHED").count(),
        3,
        "every layer step is cached:\n{second}"
    );
    // mtime-only change: still cached (keys use content, never mtime).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(ctx.join("a"), "1").expect("touch");
    assert_eq!(build(&[]).matches("CACHED").count(), 3);
    // Changing b re-runs COPY b and what follows, not COPY a.
    std::fs::write(ctx.join("b"), "changed").expect("change");
    let third = build(&[]);
    assert_eq!(third.matches("CACHED").count(), 1, "{third}");
    assert!(third.contains("#1 CACHED"), "{third}");
    // --no-cache runs everything; with SOURCE_DATE_EPOCH the images are the same.
    let fourth = build(&["--no-cache"]);
    assert!(!fourth.contains("CACHED"), "{fourth}");
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let id1 = k.build(&ctx, &epoch);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let id2 = k.build(&ctx, &[epoch[0], epoch[1], "--no-cache"]);
    assert_eq!(
        id1, id2,
        "a cached build and a fresh one give the same image"
    );
    let v1 = k.inspect(&id1);
    let v2 = k.inspect(&id2);
    assert_eq!(
        v1["RootFS"], v2["RootFS"],
        "same layers with and without the cache"
    );
}

#[test]
fn explain_says_why_steps_missed_the_cache() {
    let k = Kiln::new();
    let ctx = k.context(
        "explain",
        "FROM scratch\nARG V=1\nCOPY src/ /src/\nCOPY other /other\n",
        &[("src/a.go", "a"), ("src/b.go", "b"), ("other", "o")],
    );
    let path = ctx.to_str().expect("utf8").to_string();
    let (_, first) = k.expect(&["build", "--explain", "--progress", "plain", &path], true);
    assert!(
        first.contains("cache miss: no earlier build of this Dockerfile"),
        "{first}"
    );
    std::fs::write(ctx.join("src/b.go"), "changed").expect("change");
    let (_, second) = k.expect(&["build", "--explain", "--progress", "plain", &path], true);
    assert!(
        second.contains("cache miss: file src/b.go changed"),
        "{second}"
    );
    assert!(
        second.contains("cache miss: an earlier step of this stage (or its base) was rebuilt"),
        "{second}"
    );
    assert!(!second.contains("a.go changed"), "{second}");
}

/// Layers built here are snapshots only (no blob written) until the image leaves the machine;
/// `save` then writes them from the snapshots, and a snapshot changed behind kiln's back is
/// refused rather than exported as a different image.
#[test]
fn local_layers_stay_snapshots_until_exported() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "lazy",
        &format!("FROM {base}\nRUN echo made-here > /made\nCOPY a /a\n"),
        &[("a", "data")],
    );
    let id = k.build(&ctx, &["-t", "lazy"]);
    let layers: Vec<String> = k.inspect("lazy")["RootFS"]["Layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l.as_str().expect("digest").to_string())
        .collect();
    let blob = |d: &str| {
        k.root
            .path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let built_here = &layers[layers.len() - 2..];
    assert!(built_here.iter().all(|d| !blob(d).exists()), "{layers:?}");

    let archive = k.work.path().join("lazy.tar");
    k.ok(&["save", "-o", archive.to_str().expect("utf8"), "lazy"]);
    // Compressed straight from the snapshots: still no uncompressed copy in the store.
    assert!(built_here.iter().all(|d| !blob(d).exists()));
    let other = tempfile::tempdir().expect("tempdir");
    let mut load = kiln(other.path());
    load.args(["load", "-i", archive.to_str().expect("utf8")]);
    let out = run(load, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut ids = kiln(other.path());
    ids.args(["images", "-q", "--no-trunc"]);
    assert_eq!(stdout(&run(ids, None)).trim(), id);

    // Tamper with the COPY layer's snapshot: an export that reads it again refuses.
    let snapshot_file = walkdir::WalkDir::new(k.root.path().join("snapshots"))
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name() == "a" && e.path().parent().is_some_and(|p| p.ends_with("fs")))
        .expect("the COPY layer's snapshot")
        .into_path();
    std::fs::write(&snapshot_file, "changed").expect("tamper");
    let (_, err) = k.expect(
        &[
            "save",
            "--compression",
            "zstd",
            "-o",
            archive.to_str().expect("utf8"),
            "lazy",
        ],
        false,
    );
    assert!(err.contains("no longer matches its layer"), "{err}");
}

/// `--cache-from` into an empty root: steps of an intermediate stage hit (their layers exist
/// only as imported blobs), a later step misses and builds on top of them, and the output is
/// right (the imported layers are unpacked when needed).
#[test]
fn imported_cache_hits_then_a_miss_in_an_intermediate_stage() {
    let dockerfile = "FROM scratch AS build\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo one > /one\"]\nCOPY f /f\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"cat /one /f > /out\"]\nFROM scratch\nCOPY --from=build /out /out\n";
    let setup = |k: &Kiln, f: &str| {
        let ctx = k.context("imported", dockerfile, &[("f", f)]);
        std::fs::create_dir_all(ctx.join("rootfs/bin")).expect("mkdir");
        std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox")).expect("busybox");
        ctx
    };
    let a = Kiln::new();
    let cache_dir = a.work.path().join("exported-cache");
    let to = format!("type=local,dest={},mode=max", cache_dir.display());
    a.build(&setup(&a, "v1\n"), &["--cache-to", &to]);

    let b = Kiln::new();
    let ctx = setup(&b, "v2\n");
    let from = format!("type=local,src={}", cache_dir.display());
    let path = ctx.to_str().expect("utf8").to_string();
    let (_, err) = b.expect(
        &["build", "--progress=plain", "--cache-from", &from, &path],
        true,
    );
    assert!(err.matches("CACHED").count() >= 2, "{err}");
    let out = b.files(&ctx, &["--cache-from", &from]);
    assert_eq!(
        std::fs::read_to_string(out.join("out")).expect("out"),
        "one\nv2\n"
    );
}
