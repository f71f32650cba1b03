//! Containers, networks and volumes through `kiln daemon`: the docker CLI's network
//! connect/disconnect and name resolution between containers, restart, port, cp and
//! container prune; and kiln itself as a client (`kiln -H …`) for the container and volume
//! commands, printing what in-process kiln prints.

use std::process::Stdio;

use crate::daemon::Daemon;
use crate::util::{run, stderr, stdout};

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

#[test]
fn docker_network_containers_resolve_each_other_connect_disconnect() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let (net, other) = (unique("kan"), unique("kao"));
    let (a, b) = (unique("kaa"), unique("kab"));
    d.docker(&["network", "create", &net]);
    d.docker(&["network", "create", &other]);
    d.sleeper(&a, &["--network", &net]);
    d.sleeper(&b, &["--network", &other]);
    // a by name from a third container on the same network.
    let ping = |target: &str| {
        let mut c = d.docker_cmd(&[
            "run",
            "--rm",
            "--network",
            &net,
            base,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            target,
        ]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        run(c, None)
    };
    let o = ping(&a);
    let a_ip = d.docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &a,
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(a_ip.trim()), "{} vs {a_ip}", stdout(&o));
    // b is on another network: not reachable by name until it is connected.
    assert!(!ping(&b).status.success());
    // (If b ever stops here, say how: a CI run once found it not running.)
    let state = d.docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}} {{.State.StartedAt}} {{.State.FinishedAt}}",
        &b,
    ]);
    assert!(state.starts_with("running "), "{b}: {state}");
    d.docker(&["network", "connect", "--alias", "bee", &net, &b]);
    let o = ping("bee");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let nets = d.docker(&["inspect", "-f", "{{len .NetworkSettings.Networks}}", &b]);
    assert_eq!(nets.trim(), "2");
    d.docker(&["network", "disconnect", &net, &b]);
    assert!(!ping("bee").status.success());
    let (_, e) = d.docker_expect(&["network", "disconnect", &net, &b], false);
    assert!(e.contains("is not connected"), "{e}");
    d.docker(&["rm", "-f", &a, &b]);
    d.docker(&["network", "rm", &net, &other]);
}

#[test]
fn docker_restart_port_cp_and_container_prune() {
    let d = Daemon::start();
    let name = unique("kar");
    let id = d.sleeper(&name, &["-p", "127.0.0.1::80"]);
    let id = id.as_str();
    let port = d.docker(&["port", &name, "80"]);
    assert!(port.trim().starts_with("127.0.0.1:"), "{port}");
    let started = |d: &Daemon| d.docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    let before = started(&d);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(d.docker(&["restart", "-t", "1", &name]).trim(), name);
    assert_ne!(started(&d), before, "restart did not start it again");
    assert!(d.docker(&["ps"]).contains(&name));

    // docker cp, both ways: a file, a directory, a new name.
    let host = d.k.work.path().join("cp");
    std::fs::create_dir_all(host.join("dir/sub")).expect("dirs");
    std::fs::write(host.join("file.txt"), "one\n").expect("file");
    std::fs::write(host.join("dir/sub/deep.txt"), "deep\n").expect("file");
    let h = |p: &str| host.join(p).to_string_lossy().into_owned();
    d.docker(&["cp", &h("file.txt"), &format!("{name}:/etc/")]);
    d.docker(&["cp", &h("dir"), &format!("{name}:/etc/dir")]);
    d.docker(&["cp", &h("file.txt"), &format!("{name}:/etc/renamed.txt")]);
    d.docker(&["cp", &format!("{name}:/etc/file.txt"), &h("back.txt")]);
    d.docker(&["cp", &format!("{name}:/etc/dir"), &h("dirback")]);
    d.docker(&["cp", &format!("{name}:/etc/renamed.txt"), &h("dir")]);
    assert_eq!(
        std::fs::read_to_string(h("back.txt")).unwrap_or_default(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(h("dirback/sub/deep.txt")).unwrap_or_default(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(h("dir/renamed.txt")).unwrap_or_default(),
        "one\n"
    );
    // SRC/. copies a directory's contents, through the daemon and in-process alike.
    std::fs::create_dir_all(host.join("contents")).expect("dir");
    d.docker(&["cp", &format!("{name}:/etc/dir/."), &h("contents")]);
    assert!(host.join("contents/sub/deep.txt").exists());
    assert!(!host.join("contents/dir").exists());
    std::fs::create_dir_all(host.join("local")).expect("dir");
    d.k.ok(&["cp", &format!("{name}:/etc/dir/."), &h("local")]);
    assert!(host.join("local/sub/deep.txt").exists() && !host.join("local/dir").exists());
    d.k.ok(&["cp", &format!("{}/.", h("dir")), &format!("{name}:/etc/")]);
    d.k.ok(&["cp", &format!("{name}:/etc/sub/deep.txt"), &h("deep.txt")]);
    assert_eq!(
        std::fs::read_to_string(h("deep.txt")).unwrap_or_default(),
        "deep\n"
    );
    let (_, e) =
        d.k.expect(&["cp", &h("dir"), &format!("{name}:/etc/passwd")], false);
    assert!(e.contains("cannot copy a directory to a file"), "{e}");
    let (_, e) = d.docker_expect(&["cp", &format!("{name}:/nope"), &h("x")], false);
    assert!(e.contains("Could not find the file /nope"), "{e}");

    d.docker(&["stop", "-t", "1", &name]);
    let pruned = d.docker(&["container", "prune", "-f"]);
    assert!(
        pruned.starts_with("Deleted Containers:\n") && pruned.contains(id),
        "{pruned}"
    );
    assert!(d.docker(&["ps", "-a", "-q"]).trim().is_empty());
}

/// `kiln -H unix://…` for the container and volume commands.
#[test]
fn kiln_client_mode_runs_and_manages_containers() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let host = format!("unix://{}", d.sock.display());
    let client = |args: &[&str]| {
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        d.k.expect(&all, true).0
    };
    let client_fails = |args: &[&str]| {
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        d.k.expect(&all, false)
    };
    assert_eq!(client(&["run", "--rm", base, "echo", "hi"]), "hi\n");
    let mut cmd = crate::util::kiln(d.k.root.path());
    cmd.args([
        "-H",
        &host,
        "run",
        "--rm",
        base,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    let o = run(cmd, None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        (stdout(&o).as_str(), stderr(&o).as_str()),
        ("out\n", "err\n")
    );

    let name = unique("kac");
    let id = client(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        "127.0.0.1::80",
        base,
        "sh",
        "-c",
        "echo started; sleep 300",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    // The same rows through the daemon as in-process.
    let fmt = "{{.ID}} {{.Image}} {{.Names}} {{.Ports}} {{.Command}}";
    let remote = client(&["ps", "--format", fmt]);
    let local = d.k.ok(&["ps", "--format", fmt]);
    assert_eq!(remote, local);
    assert!(
        remote.contains(&id[..12]) && remote.contains("->80/tcp"),
        "{remote}"
    );
    assert_eq!(client(&["ps", "-q"]), d.k.ok(&["ps", "-q"]));
    // Disk usage counts the running container, the same through the daemon.
    let df = client(&["system", "df"]);
    assert_eq!(df, d.k.ok(&["system", "df"]));
    let row = df
        .lines()
        .find(|l| l.starts_with("Containers"))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().skip(1).take(2).collect::<Vec<_>>(),
        ["1", "1"],
        "{df}"
    );
    assert_eq!(client(&["port", &name]), d.k.ok(&["port", &name]));
    assert_eq!(
        client(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.Config.Image}}",
            &name
        ]),
        format!("running {base}\n")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while client(&["logs", &name]) != "started\n" {
        assert!(std::time::Instant::now() < deadline, "no log line");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // cp through the API.
    let f = d.k.work.path().join("in.txt");
    std::fs::write(&f, "copied\n").expect("file");
    client(&[
        "cp",
        f.to_str().expect("utf8"),
        &format!("{name}:/etc/in.txt"),
    ]);
    let back = d.k.work.path().join("back.txt");
    client(&[
        "cp",
        &format!("{name}:/etc/in.txt"),
        back.to_str().expect("utf8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(&back).unwrap_or_default(),
        "copied\n"
    );

    assert_eq!(client(&["restart", "-t", "1", &name]), format!("{name}\n"));
    assert_eq!(client(&["stop", "-t", "1", &name]), format!("{name}\n"));
    let code = client(&["wait", &name]);
    assert!(code.trim().parse::<i32>().is_ok(), "{code}");
    let (_, e) = client_fails(&["kill", &name]);
    assert!(e.contains("is not running"), "{e}");
    let pruned = client(&["container", "prune", "-f"]);
    assert!(pruned.contains(&id), "{pruned}");
    let (_, e) = client_fails(&["rm", &name]);
    assert!(e.contains("No such container"), "{e}");

    // Volumes.
    let vol = unique("kav");
    assert_eq!(client(&["volume", "create", &vol]), format!("{vol}\n"));
    assert!(client(&["volume", "ls", "-q"]).lines().any(|l| l == vol));
    assert_eq!(client(&["volume", "ls"]), d.k.ok(&["volume", "ls"]));
    let doc = client(&["volume", "inspect", &vol]);
    assert!(doc.contains(&format!("\"Name\": \"{vol}\"")), "{doc}");
    assert_eq!(client(&["volume", "rm", &vol]), format!("{vol}\n"));
    assert!(!client(&["volume", "ls", "-q"]).contains(&vol));
}

/// Runs `kiln -H HOST ARGS` (or `kiln --root ROOT ARGS` when `host` is a directory) under a
/// pseudo-terminal of 33 rows × 101 columns (util-linux `script`) with `input` typed in:
/// (exit code, what the terminal showed).
fn kiln_under_pty(host: &str, args: &str, input: &str) -> (Option<i32>, String) {
    let target = if host.starts_with('/') {
        format!("--root {host}")
    } else {
        format!("-H {host}")
    };
    let mut cmd = std::process::Command::new("script");
    cmd.args([
        "-qec",
        &format!(
            "stty rows 33 cols 101; {} {target} {args}",
            env!("CARGO_BIN_EXE_kiln")
        ),
        "/dev/null",
    ]);
    let o = run(cmd, Some(input));
    (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
}

/// `kiln -H …` with standard input and terminals: `run -i`, `exec [-i]`, `run -it`,
/// `exec -it`, as in-process kiln and docker's CLI behave.
#[test]
fn kiln_client_mode_stdin_exec_and_terminals() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let host = format!("unix://{}", d.sock.display());
    let with_host = |args: &[&str]| {
        let mut cmd = crate::util::kiln(d.k.root.path());
        cmd.arg("-H").arg(&host).args(args);
        cmd
    };
    // Standard input reaches the container (-i), and its end is the container's EOF.
    let o = run(
        with_host(&["run", "-i", "--rm", base, "cat"]),
        Some("piped in\n"),
    );
    assert_eq!(stdout(&o), "piped in\n", "{}", stderr(&o));
    assert!(o.status.success());

    let name = unique("kae");
    let o = run(
        with_host(&["run", "-d", "--name", &name, base, "sleep", "300"]),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(with_host(&["exec", &name, "echo", "hi"]), None);
    assert_eq!(stdout(&o), "hi\n", "{}", stderr(&o));
    let o = run(
        with_host(&["exec", &name, "sh", "-c", "echo err >&2; exit 3"]),
        None,
    );
    assert_eq!((o.status.code(), stderr(&o).as_str()), (Some(3), "err\n"));
    let o = run(with_host(&["exec", "-i", &name, "cat"]), Some("hello\n"));
    assert_eq!(stdout(&o), "hello\n", "{}", stderr(&o));
    let o = run(
        with_host(&[
            "exec",
            "-e",
            "V=1",
            "-w",
            "/etc",
            &name,
            "sh",
            "-c",
            "echo $V $PWD",
        ]),
        None,
    );
    assert_eq!(stdout(&o), "1 /etc\n", "{}", stderr(&o));

    // A terminal: the pty has our size, typed input arrives, the exit code comes back.
    let (code, screen) = kiln_under_pty(
        &host,
        &format!("exec -it {name} sh"),
        "tty; stty size; echo $((6*7)); exit 5\n",
    );
    assert_eq!(code, Some(5), "{screen}");
    assert!(
        screen.contains("42\r\n") && screen.contains("/dev/pts/"),
        "{screen}"
    );
    assert!(screen.contains("33 101"), "{screen}");
    let (code, screen) = kiln_under_pty(
        &host,
        &format!("run -it --rm {base} sh"),
        "tty; stty size; echo $((6*7)); exit 7\n",
    );
    assert_eq!(code, Some(7), "{screen}");
    assert!(
        screen.contains("42\r\n") && screen.contains("/dev/pts/"),
        "{screen}"
    );
    assert!(screen.contains("33 101"), "{screen}");

    // attach, in-process and through the daemon, to -it containers.
    let root = d.k.root.path().to_string_lossy().into_owned();
    for (n, via) in [("local", root.as_str()), ("api", host.as_str())] {
        let c = format!("{name}{n}");
        let o = run(with_host(&["run", "-dit", "--name", &c, base, "sh"]), None);
        assert!(o.status.success(), "{}", stderr(&o));
        let (code, screen) = kiln_under_pty(
            via,
            &format!("attach {c}"),
            "stty size; echo attached $((6*7)); exit 6\n",
        );
        assert_eq!(code, Some(6), "{n}: {screen}");
        assert!(screen.contains("attached 42"), "{n}: {screen}");
        assert!(screen.contains("33 101"), "{n}: {screen}");
        let o = run(with_host(&["logs", &c]), None);
        assert!(stdout(&o).contains("attached 42"), "{n}: {}", stdout(&o));
        let (_, e) = d.k.expect(&["attach", &c], false);
        assert!(
            e.contains("You cannot attach to a stopped container"),
            "{e}"
        );
    }

    let o = run(with_host(&["rm", "-f", &name]), None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(with_host(&["exec", &name, "true"]), None);
    assert!(stderr(&o).contains("No such container"), "{}", stderr(&o));
}

/// `kiln -H … build` applies the ignore file on the client, as docker's CLI does: the
/// context's `.dockerignore`, or `<Dockerfile>.dockerignore` next to a Dockerfile kept
/// outside the context.
#[test]
fn kiln_client_mode_build_sends_what_the_ignore_file_lets_through() {
    let d = Daemon::start();
    let base = d.k.busybox();
    let host = format!("unix://{}", d.sock.display());
    let check = "RUN test -e /c/keep.txt && test ! -e /c/secret.txt && test ! -e /c/Dockerfile.in";
    let ctx = d.k.context(
        "ignored",
        &format!("FROM {base}\nCOPY . /c\n{check}\n"),
        &[
            ("keep.txt", "k"),
            ("secret.txt", "s"),
            ("Dockerfile.in", "x"),
            (".dockerignore", "secret.txt\nDockerfile*\n"),
        ],
    );
    d.k.ok(&["-H", &host, "build", "-q", ctx.to_str().expect("utf8")]);
    // A Dockerfile outside the context with its own ignore file (which wins).
    let outside = d.k.work.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    std::fs::write(
        outside.join("Dockerfile"),
        format!("FROM {base}\nCOPY . /c\nRUN test ! -e /c/keep.txt && test -e /c/secret.txt\n"),
    )
    .expect("Dockerfile");
    std::fs::write(outside.join("Dockerfile.dockerignore"), "keep.txt\n").expect("ignore");
    let df = outside.join("Dockerfile");
    d.k.ok(&[
        "-H",
        &host,
        "build",
        "-q",
        "-f",
        df.to_str().expect("utf8"),
        ctx.to_str().expect("utf8"),
    ]);
}
