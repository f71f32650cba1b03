//! RUN end to end with the busybox base image: process semantics (USER, WORKDIR, SHELL, env,
//! heredocs), whiteouts, every RUN mount type, network modes, failures and the cache.

use std::os::unix::fs::MetadataExt;

use crate::build::Kiln;

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn run_executes_with_dockers_semantics() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "run",
        &format!(
            r#"FROM {base}
RUN mkdir -p /out /tmp && echo hello > /out/hello && id -u > /out/root-uid
ENV A=from-env
ARG B=from-arg
RUN echo "$A $B" > /out/env
WORKDIR /work/dir
RUN pwd > /out/pwd && hostname > /out/hostname && echo $$ > /out/pid && grep NoNewPrivs /proc/self/status > /out/nnp && grep CapBnd /proc/self/status > /out/capbnd
RUN chown app /out
USER app
RUN id > /out/app-id
USER root
SHELL ["/bin/sh", "-e", "-c"]
RUN <<EOF
echo from a heredoc > /out/heredoc
EOF
RUN ["/bin/sh", "-c", "echo exec form > /out/exec"]
"#
        ),
        &[],
    );
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("out/hello")), "hello\n");
    assert_eq!(read(&out.join("out/root-uid")), "0\n");
    assert_eq!(read(&out.join("out/env")), "from-env from-arg\n");
    assert_eq!(read(&out.join("out/pwd")), "/work/dir\n");
    assert_eq!(read(&out.join("out/hostname")), "buildkitsandbox\n");
    assert_eq!(
        read(&out.join("out/pid")),
        "1\n",
        "the step is PID 1 of its own PID namespace"
    );
    let id = read(&out.join("out/app-id"));
    assert!(
        id.starts_with("uid=1000(app) gid=1000(app)") && id.contains("50(staff)"),
        "{id}"
    );
    assert_eq!(read(&out.join("out/heredoc")), "from a heredoc\n");
    assert_eq!(read(&out.join("out/exec")), "exec form\n");
    // The sandbox's own files never reach the image.
    assert!(!out.join("etc/hosts").exists() && !out.join("etc/resolv.conf").exists());
    assert!(!out.join("proc/1").exists());
}

#[test]
fn deletions_become_whiteouts() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "wh",
        &format!(
            "FROM {base}\nRUN mkdir -p /d/x && touch /d/x/f /d/keep\nRUN rm /bin/echo && rm -rf /d && mkdir /d && touch /d/new\n"
        ),
        &[],
    );
    let id = k.build(&ctx, &["-t", "wh"]);
    let out = k.files(&ctx, &[]);
    assert!(!out.join("bin/echo").exists(), "a deleted file is gone");
    assert!(out.join("bin/cat").exists());
    assert!(
        out.join("d/new").exists() && !out.join("d/x").exists() && !out.join("d/keep").exists()
    );
    // The layer carries OCI whiteouts, and survives save/load.
    let archive = k.work.path().join("wh.tar");
    k.ok(&[
        "save",
        "--compression",
        "uncompressed",
        "-o",
        archive.to_str().expect("utf8"),
        "wh",
    ]);
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("mkdir -p {0}/x && tar -xf {1} -C {0}/x && for b in {0}/x/blobs/sha256/*; do tar -tf $b 2>/dev/null; done", k.work.path().display(), archive.display()))
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.lines().any(|l| l.ends_with("bin/.wh.echo")),
        "{names}"
    );
    assert!(
        names.lines().any(|l| l.ends_with("d/.wh..wh..opq")),
        "{names}"
    );
    let other = Kiln::new();
    other.ok(&["load", "-i", archive.to_str().expect("utf8")]);
    assert_eq!(other.inspect("wh")["Id"], id.as_str());
}

#[test]
fn run_mounts() {
    let k = Kiln::new();
    let base = k.busybox();
    let socket_dir = tempfile::tempdir().expect("sock dir");
    let socket = socket_dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
    let secret_file = k.work.path().join("token.txt");
    std::fs::write(&secret_file, "s3cr3t").expect("secret");
    let ctx = k.context(
        "mounts",
        &format!(
            r#"FROM {base}
RUN mkdir /out
RUN --mount=target=/ctx cat /ctx/input.txt > /out/bind
RUN --mount=target=/ctx,rw sh -c 'echo scribble > /ctx/input.txt' && echo ok > /out/rw
RUN --mount=type=bind,from={base},source=/etc,target=/otheretc cat /otheretc/group > /out/from-image
RUN --mount=type=cache,target=/cache sh -c 'echo run >> /cache/log; wc -l < /cache/log > /out/cache-count'
RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/f && grep -q " /scratch tmpfs" /proc/mounts && echo tmpfs > /out/tmpfs'
RUN --mount=type=secret,id=token cat /run/secrets/token > /out/secret-file
RUN --mount=type=secret,id=token,env=TOKEN sh -c 'echo "$TOKEN" > /out/secret-env'
RUN --mount=type=ssh sh -c 'test -S "$SSH_AUTH_SOCK" && echo agent > /out/ssh'
"#
        ),
        &[("input.txt", "from context\n")],
    );
    let secret = format!("id=token,src={}", secret_file.display());
    let ssh = format!("default={}", socket.display());
    let out = k.files(&ctx, &["--secret", &secret, "--ssh", &ssh]);
    assert_eq!(read(&out.join("out/bind")), "from context\n");
    assert_eq!(read(&out.join("out/rw")), "ok\n");
    assert_eq!(
        read(&ctx.join("input.txt")),
        "from context\n",
        "rw bind writes are discarded"
    );
    assert!(read(&out.join("out/from-image")).contains("staff:x:50"));
    assert_eq!(read(&out.join("out/cache-count")).trim(), "1");
    assert_eq!(read(&out.join("out/tmpfs")), "tmpfs\n");
    assert_eq!(read(&out.join("out/secret-file")), "s3cr3t");
    assert_eq!(read(&out.join("out/secret-env")), "s3cr3t\n");
    assert_eq!(read(&out.join("out/ssh")), "agent\n");
    for leaked in [
        "ctx",
        "otheretc",
        "cache",
        "scratch",
        "run/secrets",
        "run/buildkit",
    ] {
        assert!(
            !out.join(leaked).exists(),
            "mount target /{leaked} leaked into the image"
        );
    }
    // The cache mount persists across builds (the step itself re-runs with --no-cache).
    let out = k.files(&ctx, &["--secret", &secret, "--ssh", &ssh, "--no-cache"]);
    assert_eq!(read(&out.join("out/cache-count")).trim(), "2");
    // `builder prune --all` drops cache mounts too.
    k.ok(&["builder", "prune", "--all", "-f"]);
    let out = k.files(&ctx, &["--secret", &secret, "--ssh", &ssh]);
    assert_eq!(read(&out.join("out/cache-count")).trim(), "1");
    // A required secret that is missing fails clearly.
    let bad = k.context(
        "nosecret",
        &format!(
            "FROM {base}\nRUN --mount=type=secret,id=absent,required cat /run/secrets/absent\n"
        ),
        &[],
    );
    let err = k.build_fails(&bad);
    assert!(err.contains("secret absent is required"), "{err}");
}

#[test]
fn network_modes_and_security() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "net",
        &format!("FROM {base}\nRUN --network=none cat /proc/net/dev > /none\nRUN cat /proc/net/dev > /default\n"),
        &[],
    );
    let out = k.files(&ctx, &[]);
    let none = read(&out.join("none"));
    let ifaces: Vec<&str> = none
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{none}");
    let default = read(&out.join("default"));
    assert!(
        default.lines().skip(2).count() > 1,
        "the default network reaches the host's interfaces: {default}"
    );

    let ctx = k.context(
        "insecure",
        &format!("FROM {base}\nRUN --security=insecure true\n"),
        &[],
    );
    let err = k.build_fails(&ctx);
    assert!(err.contains("--allow security.insecure"), "{err}");
    k.build(&ctx, &["--allow", "security.insecure"]);
}

#[test]
fn failures_quote_the_step_and_its_output() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "fail",
        &format!("FROM {base}\nRUN echo preparing\nRUN echo something went wrong >&2; exit 3\n"),
        &[],
    );
    let (_, err) = k.expect(
        &["build", "--progress", "plain", ctx.to_str().expect("utf8")],
        false,
    );
    assert!(
        err.contains("Dockerfile:3:1: error: RUN /bin/sh -c echo something went wrong >&2; exit 3"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("something went wrong"), "{err}");
    assert!(err.contains(" 3 | RUN echo something went wrong"), "{err}");
    let missing = k.context(
        "missingbin",
        &format!("FROM {base}\nRUN [\"/nope\"]\n"),
        &[],
    );
    let err = k.build_fails(&missing);
    assert!(err.contains("/nope"), "{err}");
}

#[test]
fn run_steps_are_cached_by_their_inputs() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "runcache",
        &format!("FROM {base}\nARG V=1\nRUN echo $V > /v\nCOPY f /f\nRUN cat /f > /g\n"),
        &[("f", "one")],
    );
    let path = ctx.to_str().expect("utf8").to_string();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(&path);
        k.expect(&args, true).1
    };
    build(&[]);
    assert_eq!(build(&[]).matches("CACHED").count(), 3);
    let changed_arg = build(&["--build-arg", "V=2"]);
    assert_eq!(
        changed_arg.matches("CACHED").count(),
        0,
        "an ARG used by RUN changes its key:\n{changed_arg}"
    );
    std::fs::write(ctx.join("f"), "two").expect("write");
    let changed_file = build(&[]);
    assert_eq!(changed_file.matches("CACHED").count(), 1, "{changed_file}");
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("g")), "two");
    assert_eq!(std::fs::metadata(out.join("g")).expect("g").uid(), 0);
}

/// A rebuild that takes every step from the cache makes the same image (the same ID), even
/// seconds later: cached steps keep the time of the build that made them, as with docker.
#[test]
fn a_fully_cached_rebuild_gives_the_same_image_id() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "sameid",
        &format!("FROM {base}\nENV A=1\nRUN echo hi > /hi\nCOPY f /f\nLABEL l=v\n"),
        &[("f", "one")],
    );
    let first = k.build(&ctx, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(k.build(&ctx, &[]), first);
    // A changed step is new: a new time, a new image.
    std::fs::write(ctx.join("f"), "two").expect("write");
    assert_ne!(k.build(&ctx, &[]), first);
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let k = Kiln::new();
    let base = k.busybox();
    let id = format!("rendezvous-{}", std::process::id());
    // Each stage waits for the other's marker in a shared cache mount. Run one after the
    // other, the first stage would give up after 20 s and fail the build.
    let wait = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id={id},target=/r sh -c ': > /r/{me}; i=0; while [ ! -e /r/{other} ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; [ -e /r/{other} ]'"
        )
    };
    let ctx = k.context(
        "parallel",
        &format!(
            "FROM {base} AS a\n{}\nFROM {base} AS b\n{}\nFROM {base} AS unused\nRUN exit 1\nFROM {base}\nCOPY --from=a /bin/busybox /a\nCOPY --from=b /bin/busybox /b\n",
            wait("a", "b"),
            wait("b", "a")
        ),
        &[],
    );
    k.build(&ctx, &["--jobs", "2"]);
}

fn sleeping_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|c| c == b"sleep\x001000\x00")
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_failing_stage_cancels_the_others_cleanly() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "cancel",
        &format!("FROM {base} AS slow\nRUN sleep 1000\nFROM {base} AS fails\nRUN sleep 1; exit 7\nFROM {base}\nCOPY --from=slow /bin/sh /s\nCOPY --from=fails /bin/sh /f\n"),
        &[],
    );
    let before = sleeping_processes();
    let mut cmd = crate::util::kiln(k.root.path());
    cmd.args(["build", "--jobs", "2", ctx.to_str().expect("utf8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kiln");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the build did not stop after its failing stage");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert!(!status.success());
    assert!(err.contains("exit code: 7"), "{err}");
    assert_eq!(
        sleeping_processes(),
        before,
        "no process of the cancelled stage survives"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = k.root.path().to_string_lossy().to_string();
    assert!(
        !mounts.contains(&root),
        "no mount under the kiln root survives:\n{mounts}"
    );
}

#[test]
fn a_stage_used_only_by_a_mount_is_built() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "mountfrom",
        &format!("FROM scratch AS assets\nCOPY data.txt /data.txt\nFROM {base}\nRUN --mount=type=bind,from=assets,target=/assets cat /assets/data.txt > /copied\n"),
        &[("data.txt", "from a mounted stage\n")],
    );
    let out = k.files(&ctx, &[]);
    assert_eq!(read(&out.join("copied")), "from a mounted stage\n");
}
