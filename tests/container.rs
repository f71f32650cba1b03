//! `kiln run` and friends end to end with real containers from the busybox base image:
//! attached and detached runs, stop/kill/wait/rm, logs, exec, restart policies, OOM kills,
//! volumes, monitor crashes, and that nothing is left behind (mounts, cgroups, state).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::build::Kiln;
use crate::util::{free_port, iptables_save, kiln, run, stderr, stdout};

/// A test root with the busybox image; removes every container on drop.
pub struct Lab {
    pub k: Kiln,
    pub image: &'static str,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut cmd = kiln(self.k.root.path());
        cmd.args(["ps", "-aq", "--no-trunc"]);
        let ids = stdout(&run(cmd, None));
        for id in ids.lines() {
            let mut cmd = kiln(self.k.root.path());
            cmd.args(["rm", "-f", "-v", id]);
            let _ = run(cmd, None);
        }
    }
}

impl Lab {
    pub fn new() -> Lab {
        let k = Kiln::new();
        let image = k.busybox();
        Lab { k, image }
    }

    pub fn root(&self) -> &Path {
        self.k.root.path()
    }

    /// Runs kiln, returns (exit code, stdout, stderr).
    pub fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = kiln(self.root());
        cmd.args(args);
        let out = run(cmd, None);
        (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.kiln(args);
        assert_eq!(code, 0, "kiln {args:?}\nstdout:\n{out}\nstderr:\n{err}");
        out
    }

    pub fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).expect("inspect JSON");
        v[0].clone()
    }

    /// Polls `f` every 50 ms until it holds (panics after `secs`).
    pub fn until(&self, secs: u64, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self, name: &str) -> String {
        self.inspect(name)["State"]["Status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// No container directory, no mount under the root, no cgroup of `ids` is left.
    pub fn assert_nothing_left(&self, ids: &[String]) {
        let dir = self.root().join("containers");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "container state left: {left:?}");
        let netns: Vec<_> = std::fs::read_dir(self.root().join("netns"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(netns.is_empty(), "network namespaces left: {netns:?}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = self.root().to_string_lossy().into_owned();
        assert!(
            !mountinfo.lines().any(|l| l.contains(&root)),
            "mounts left under {root}"
        );
        for id in ids {
            for ctrl in ["memory", "cpu", "pids", ""] {
                let p = Path::new("/sys/fs/cgroup").join(ctrl).join("kiln").join(id);
                assert!(!p.exists(), "cgroup left: {}", p.display());
            }
        }
    }
}

#[test]
fn attached_run_streams_output_and_returns_the_exit_code() {
    let b = Lab::new();
    let (code, out, err) = b.kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        b.image,
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; cat /etc/hostname; echo $HOME; exit 3",
    ]);
    assert_eq!(code, 3, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "out");
    // hostname = short id, also in /etc/hostname.
    assert_eq!(lines[1].len(), 12, "{out}");
    assert_eq!(lines[1], lines[2]);
    assert_eq!(lines[3], "/root");
    assert!(err.contains("err"), "{err}");
    b.assert_nothing_left(&[]);

    // Setup failures are docker's 127 with a clear message; nothing is left either.
    let (code, _, err) = b.kiln(&["run", "--rm", "--network", "none", b.image, "nope"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    b.assert_nothing_left(&[]);

    // Missing images are pulled (here from a registry that is not there: 127.0.0.1:1).
    let (code, _, err) = b.kiln(&["run", "--rm", "127.0.0.1:1/missing:image", "true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("not in the local store, and pulling it failed"),
        "{err}"
    );
}

#[test]
fn detached_container_lifecycle() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            "--stop-signal",
            "USR1",
            b.image,
            "sh",
            "-c",
            "echo started; trap 'echo got usr1; exit 7' USR1; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let ps = b.ok(&["ps"]);
    assert!(ps.starts_with("CONTAINER ID"), "{ps}");
    assert!(
        ps.contains(&id[..12]) && ps.contains("web") && ps.contains("Up "),
        "{ps}"
    );
    assert_eq!(b.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert_eq!(
        b.ok(&["ps", "--format", "{{.Names}} {{.State}}"]).trim(),
        "web running"
    );
    b.until(10, "the first log line", || {
        b.ok(&["logs", "web"]).contains("started")
    });

    // exec runs in the container's namespaces.
    let ns = b.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "for n in pid mnt uts ipc net; do [ $(readlink /proc/1/ns/$n) = $(readlink /proc/self/ns/$n) ] || echo differs $n; done; hostname",
    ]);
    assert_eq!(ns.trim(), &id[..12], "{ns}");
    assert_eq!(
        b.ok(&[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/etc",
            "-u",
            "app",
            "web",
            "sh",
            "-c",
            "echo $X $(pwd) $(id -u)"
        ])
        .trim(),
        "1 /etc 1000"
    );
    let (code, _, _) = b.kiln(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(code, 4);

    let v = b.inspect("web");
    assert_eq!(v["State"]["Status"], "running");
    assert_eq!(v["State"]["Running"], true);
    assert!(v["State"]["Pid"].as_i64().unwrap_or(0) > 0);
    assert_eq!(v["Name"], "/web");
    assert_eq!(v["Config"]["StopSignal"], "USR1");

    // A running container is not removed without -f.
    let (code, _, err) = b.kiln(&["rm", "web"]);
    assert_ne!(code, 0);
    assert!(err.contains("running"), "{err}");

    // stop sends the STOPSIGNAL: the trap's exit code is recorded.
    b.ok(&["stop", "web"]);
    let v = b.inspect("web");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 7);
    assert_eq!(b.ok(&["wait", "web"]).trim(), "7");
    let logs = b.ok(&["logs", "web"]);
    assert_eq!(logs, "started\ngot usr1\n");
    assert!(b
        .ok(&["logs", "-t", "--tail", "1", "web"])
        .ends_with("Z got usr1\n"));
    assert!(b.ok(&["ps"]).lines().count() == 1);
    assert!(b.ok(&["ps", "-a"]).contains("Exited (7)"));

    // Started again, it keeps its log and gets a new process.
    b.ok(&["start", "web"]);
    assert_eq!(b.status("web"), "running");
    b.ok(&["kill", "web"]);
    assert_eq!(b.ok(&["wait", "web"]).trim(), "137");
    b.ok(&["rm", "web"]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn stop_kills_after_the_timeout() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            b.image,
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    b.until(10, "ready", || b.ok(&["logs", &id]).contains("ready"));
    let t = Instant::now();
    b.ok(&["stop", "-t", "1", &id]);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(b.inspect(&id)["State"]["ExitCode"], 137);
    b.ok(&["rm", &id]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn restart_on_failure_restarts_n_times() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--restart",
            "on-failure:2",
            b.image,
            "sh",
            "-c",
            "echo run; exit 1",
        ])
        .trim()
        .to_string();
    b.until(20, "the restarts to end", || {
        let v = b.inspect(&id);
        v["State"]["Status"] == "exited" && v["RestartCount"] == 2
    });
    // Three runs in all, and no more come.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.ok(&["logs", &id]), "run\nrun\nrun\n");
    assert_eq!(b.inspect(&id)["State"]["ExitCode"], 1);
    b.ok(&["rm", &id]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let b = Lab::new();
    let (code, _, err) = b.kiln(&[
        "run",
        "--name",
        "hog",
        "--network",
        "none",
        "--memory",
        "16m",
        b.image,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    ]);
    assert_eq!(code, 137, "{err}");
    let v = b.inspect("hog");
    assert_eq!(v["State"]["OOMKilled"], true, "{v}");
    assert_eq!(v["State"]["ExitCode"], 137);
    assert_eq!(v["HostConfig"]["Memory"], 16 << 20);
    assert!(b.ok(&["ps", "-a"]).contains("Exited (137)"));
    let id = v["Id"].as_str().unwrap_or_default().to_string();
    b.ok(&["rm", "hog"]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn limits_caps_and_read_only_root() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--pids-limit",
            "20",
            "--cpus",
            "0.5",
            "--memory",
            "64m",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--tmpfs",
            "/scratch",
            "--security-opt",
            "no-new-privileges",
            b.image,
            "sleep",
            "100",
        ])
        .trim()
        .to_string();
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("kiln")
                .join(&id)
                .join(file),
        )
        .unwrap_or_default()
        .trim()
        .to_string()
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(cg("", "pids.max"), "20");
        assert_eq!(cg("", "cpu.max"), "50000 100000");
        assert_eq!(cg("", "memory.max"), (64 << 20).to_string());
    } else {
        assert_eq!(cg("pids", "pids.max"), "20");
        assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            cg("memory", "memory.limit_in_bytes"),
            (64 << 20).to_string()
        );
    }
    let out = b.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo wrote-root; touch /scratch/x && echo wrote-tmpfs; \
         grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
    ]);
    assert!(!out.contains("wrote-root"), "{out}");
    assert!(out.contains("wrote-tmpfs"), "{out}");
    // NET_ADMIN (12) only.
    assert!(out.contains("CapEff:\t0000000000001000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    b.ok(&["rm", "-f", &id]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn volumes_keep_data_across_containers() {
    let b = Lab::new();
    assert_eq!(b.ok(&["volume", "create", "data"]).trim(), "data");
    b.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "data:/data",
        b.image,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    let out = b.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "data:/data:ro",
        b.image,
        "sh",
        "-c",
        "cat /data/f; touch /data/g 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out, "kept\nread-only\n");
    assert!(b.ok(&["volume", "ls"]).contains("data"));
    let v: Value = serde_json::from_str(&b.ok(&["volume", "inspect", "data"])).expect("json");
    assert!(v[0]["Mountpoint"]
        .as_str()
        .unwrap_or("")
        .ends_with("volumes/data/_data"));

    // An image VOLUME becomes an anonymous volume pre-filled from the image.
    let ctx = b.k.context(
        "vol",
        &format!("FROM {}\nCOPY seed /vol/seed\nVOLUME /vol\n", b.image),
        &[("seed", "from the image\n")],
    );
    b.k.build(&ctx, &["-t", "vol:test"]);
    let out = b.ok(&[
        "run",
        "--name",
        "v1",
        "--network",
        "none",
        "vol:test",
        "cat",
        "/vol/seed",
    ]);
    assert_eq!(out, "from the image\n");
    let anon = b.inspect("v1")["Mounts"][0]["Name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(anon.len(), 64);
    // In use: not removable; `rm -v` takes it away with the container.
    assert_ne!(b.kiln(&["volume", "rm", &anon]).0, 0);
    b.ok(&["rm", "-v", "v1"]);
    assert!(!b.ok(&["volume", "ls", "-q"]).contains(&anon));

    // Bind mounts.
    let host = b.k.work.path().join("bind");
    std::fs::create_dir_all(&host).expect("dir");
    let spec = format!("type=bind,source={},target=/b", host.display());
    b.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        &spec,
        b.image,
        "sh",
        "-c",
        "echo hi > /b/f",
    ]);
    assert_eq!(std::fs::read_to_string(host.join("f")).expect("f"), "hi\n");

    b.ok(&["volume", "rm", "data"]);
    assert!(b.ok(&["volume", "ls", "-q"]).trim().is_empty());
    b.assert_nothing_left(&[]);
}

#[test]
fn logs_follow_until_the_container_exits() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            b.image,
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; sleep 0.3; done",
        ])
        .trim()
        .to_string();
    let mut cmd = kiln(b.root());
    cmd.args(["logs", "-f", &id]).stdout(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().expect("logs -f");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line1\nline2\nline3\n"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    b.ok(&["rm", &id]);
}

#[test]
fn init_reaps_orphans_and_forwards_signals() {
    let b = Lab::new();
    let out = b.ok(&[
        "run",
        "--rm",
        "--init",
        "--network",
        "none",
        b.image,
        "sh",
        "-c",
        "echo pid=$$; sh -c 'sleep 0.2 &'; sleep 1; ps -o stat,comm | grep -c '^Z' || true",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], "0", "zombies left: {out}");
    // stop reaches the command through the init.
    let id = b
        .ok(&[
            "run",
            "-d",
            "--init",
            "--network",
            "none",
            b.image,
            "sh",
            "-c",
            "trap 'exit 5' TERM; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    b.ok(&["stop", "-t", "5", &id]);
    assert_eq!(b.inspect(&id)["State"]["ExitCode"], 5);
    b.ok(&["rm", &id]);
}

#[test]
fn monitor_crash_is_reported_truthfully() {
    let b = Lab::new();
    let id = b
        .ok(&["run", "-d", "--network", "none", b.image, "sleep", "100"])
        .trim()
        .to_string();
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(b.root().join("containers").join(&id).join("state.json"))
            .expect("state"),
    )
    .expect("json");
    let monitor = state["MonitorPid"].as_i64().expect("monitor pid");
    let pid = state["Pid"].as_i64().expect("pid");
    Command::new("kill")
        .args(["-9", &monitor.to_string()])
        .status()
        .expect("kill");
    b.until(10, "the container to die with its monitor", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let ps = b.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (255)"), "{ps}");
    assert_eq!(b.ok(&["ps", "-q"]).trim(), "");
    b.ok(&["rm", &id]);
    b.assert_nothing_left(&[id]);
}

#[test]
fn cp_health_and_prune() {
    let b = Lab::new();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "hc",
            "--network",
            "none",
            "--health-cmd",
            "test -f /etc/ok",
            "--health-interval",
            "200ms",
            "--health-retries",
            "1",
            b.image,
            "sleep",
            "100",
        ])
        .trim()
        .to_string();
    b.until(10, "unhealthy", || {
        b.inspect("hc")["State"]["Health"]["Status"] == "unhealthy"
    });
    let file = b.k.work.path().join("ok");
    std::fs::write(&file, "fine\n").expect("write");
    b.ok(&["cp", file.to_str().unwrap_or_default(), "hc:/etc/ok"]);
    b.until(10, "healthy", || {
        b.inspect("hc")["State"]["Health"]["Status"] == "healthy"
    });
    assert!(b.ok(&["ps"]).contains("(healthy)"));
    let back = b.k.work.path().join("back");
    b.ok(&["cp", "hc:/etc/ok", back.to_str().unwrap_or_default()]);
    assert_eq!(std::fs::read_to_string(&back).expect("back"), "fine\n");
    b.ok(&["stop", "-t", "0", "hc"]);
    // A stopped container's files can still be copied out.
    let back2 = b.k.work.path().join("back2");
    b.ok(&["cp", "hc:/etc/ok", back2.to_str().unwrap_or_default()]);
    assert_eq!(std::fs::read_to_string(&back2).expect("back2"), "fine\n");
    let out = b.ok(&["container", "prune", "-f"]);
    assert!(out.contains(&id), "{out}");
    assert!(b.ok(&["ps", "-aq"]).trim().is_empty());
    b.assert_nothing_left(&[id]);
}

fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A unique network name (bridges are machine-wide).
fn net_name(tag: &str) -> String {
    format!("kt{tag}{}", std::process::id() % 100_000)
}

#[test]
fn busybox_httpd_answers_on_a_published_port() {
    let b = Lab::new();
    let www = b.k.work.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello from kiln\n").expect("index");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let vol = format!("{}:/www:ro", www.display());
    let id = b
        .ok(&[
            "run", "-d", "--name", "web", "-p", &publish, "-v", &vol, b.image, "httpd", "-f", "-p",
            "80", "-h", "/www",
        ])
        .trim()
        .to_string();
    b.until(10, "httpd to answer", || {
        http_get(port).is_some_and(|r| r.contains("hello from kiln"))
    });
    assert_eq!(
        b.ok(&["port", "web", "80"]).trim(),
        format!("127.0.0.1:{port}")
    );
    assert!(b.ok(&["ps"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
    let v = b.inspect("web");
    let ip = v["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(ip.starts_with("172.") || ip.starts_with("10."), "{v}");
    // Another container reaches it by address.
    let fetch = format!("wget -qO- http://{ip}/");
    assert_eq!(
        b.ok(&["run", "--rm", b.image, "sh", "-c", &fetch]),
        "hello from kiln\n"
    );
    assert!(iptables_save().contains(&id[..12]));
    b.ok(&["stop", "web"]);
    // The port is gone with the container's process, and so are its rules and veth.
    assert!(http_get(port).is_none());
    assert!(!iptables_save().contains(&id[..12]));
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    b.ok(&["rm", "web"]);
    b.assert_nothing_left(std::slice::from_ref(&id));
    let after = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert!(after.lines().count() <= links.lines().count());
}

/// `network connect` puts a running container on a second network (reachable there by name),
/// `network disconnect` takes it off again.
#[test]
fn network_connect_and_disconnect_a_running_container() {
    let b = Lab::new();
    let (n1, n2) = (net_name("c"), net_name("d"));
    b.ok(&["network", "create", &n1]);
    b.ok(&["network", "create", &n2]);
    let server = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "late",
            "--network",
            &n2,
            b.image,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ])
        .trim()
        .to_string();
    let fetch = |code_expected: i32| {
        let (code, out, err) = b.kiln(&[
            "run",
            "--rm",
            "--network",
            &n1,
            b.image,
            "sh",
            "-c",
            "timeout 3 wget -qO- http://late/hostname || echo unreachable",
        ]);
        assert_eq!(code, code_expected, "{err}");
        out
    };
    assert!(fetch(0).contains("unreachable"));
    b.ok(&["network", "connect", "--alias", "also", &n1, "late"]);
    let inspect = b.ok(&["inspect", "late"]);
    assert!(inspect.contains(&n1) && inspect.contains(&n2), "{inspect}");
    let joined = fetch(0);
    assert!(joined.contains(&server[..12]), "{joined}");
    b.ok(&["network", "disconnect", &n1, "late"]);
    assert!(fetch(0).contains("unreachable"));
    let (code, _, err) = b.kiln(&["network", "disconnect", &n1, "late"]);
    assert_ne!(code, 0);
    assert!(err.contains("not connected"), "{err}");
    b.ok(&["rm", "-f", "late"]);
    b.ok(&["network", "rm", &n1, &n2]);
    b.assert_nothing_left(&[server]);
}

#[test]
fn containers_reach_each_other_by_name_on_a_user_network_only() {
    let b = Lab::new();
    let (n1, n2) = (net_name("a"), net_name("b"));
    b.ok(&["network", "create", &n1]);
    b.ok(&["network", "create", &n2]);
    let server = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "srv",
            "--network",
            &n1,
            "--network-alias",
            "web",
            b.image,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ])
        .trim()
        .to_string();
    let out = b.ok(&[
        "run",
        "--rm",
        "--network",
        &n1,
        b.image,
        "sh",
        "-c",
        "cat /etc/resolv.conf; wget -qO- http://srv/hostname; wget -qO- http://web/hostname",
    ]);
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    assert_eq!(out.matches(&server[..12]).count(), 2, "{out}");
    let (code, out, _) = b.kiln(&[
        "run",
        "--rm",
        "--network",
        &n2,
        b.image,
        "sh",
        "-c",
        "timeout 3 wget -qO- http://srv/hostname || echo unreachable",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("unreachable") && !out.contains(&server[..12]),
        "{out}"
    );
    b.ok(&["rm", "-f", "srv"]);
    b.ok(&["network", "rm", &n1, &n2]);
    b.assert_nothing_left(&[server]);
}

/// The README's first command: build the bundled example (with busybox from the host) and
/// serve its page on a published port.
#[test]
fn readme_example_serves_its_page() {
    let b = Lab::new();
    let ctx = b.k.work.path().join("hello");
    std::fs::create_dir_all(&ctx).expect("ctx");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    for f in ["Dockerfile", "index.html"] {
        std::fs::copy(example.join(f), ctx.join(f)).expect("copy example");
    }
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static");
    b.k.build(&ctx, &["-t", "hello"]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let id = b
        .ok(&[
            "run", "-d", "--rm", "-p", &publish, "--name", "hello", "hello",
        ])
        .trim()
        .to_string();
    b.until(10, "the page", || {
        http_get(port).is_some_and(|r| r.contains("Hello from kiln"))
    });
    b.ok(&["stop", "hello"]);
    // --rm: gone once stopped (the monitor removes it right after the exit).
    b.until(10, "removal", || {
        std::fs::read_dir(b.root().join("containers"))
            .map(|d| d.count() == 1)
            .unwrap_or(false)
    });
    b.assert_nothing_left(&[id]);
}

/// A pty for kiln's own terminal: (master, slave) of the given size.
fn open_pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use nix::libc;
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors we then own.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: fresh descriptors from openpty.
    unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
}

#[test]
fn run_it_gives_a_real_pty_with_size_and_ctrl_c() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let b = Lab::new();
    let (mut master, slave) = open_pty(33, 101);
    let mut cmd = kiln(b.root());
    cmd.args([
        "run",
        "--rm",
        "-it",
        "--network",
        "none",
        b.image,
        "sh",
        "-c",
        "tty; stty size; trap 'echo got-int; exit 9' INT; echo ready; sleep 20 & wait",
    ]);
    cmd.stdin(slave.try_clone().expect("slave"))
        .stdout(slave.try_clone().expect("slave"))
        .stderr(slave.try_clone().expect("slave"));
    // SAFETY: setsid and TIOCSCTTY in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::setsid();
            nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("kiln");
    drop(slave);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().expect("master");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !out.contains("ready") {
        let chunk = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no ready: {out}"));
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    master.write_all(b"\x03").expect("ctrl-c");
    let status = child.wait().expect("wait");
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(300)) {
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("got-int"), "{out}");
    assert_eq!(status.code(), Some(9), "{out}");
}

#[test]
fn images_used_by_containers_are_kept() {
    let b = Lab::new();
    b.k.build(
        &b.k.context("img", &format!("FROM {}\nENV X=1\n", b.image), &[]),
        &["-t", "mine:1"],
    );
    let id = b
        .ok(&[
            "create",
            "--network",
            "none",
            "mine:1",
            "sh",
            "-c",
            "echo still here",
        ])
        .trim()
        .to_string();
    let (code, _, err) = b.kiln(&["rmi", "mine:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("is using its referenced image"), "{err}");
    // Forced: the tag goes, the image stays for the container (even through a prune).
    b.ok(&["rmi", "-f", "mine:1"]);
    b.ok(&["image", "prune", "-f", "-a"]);
    assert_eq!(b.ok(&["start", "-a", &id]), "still here\n");
    b.ok(&["rm", &id]);
}

#[test]
fn stdin_is_forwarded_with_i() {
    let b = Lab::new();
    let mut cmd = kiln(b.root());
    cmd.args([
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        b.image,
        "sh",
        "-c",
        "tr a-z A-Z; echo done",
    ]);
    let out = run(cmd, Some("hello\n"));
    assert_eq!(stdout(&out), "HELLO\ndone\n", "{}", stderr(&out));
    let id = b
        .ok(&["run", "-d", "--network", "none", b.image, "sleep", "100"])
        .trim()
        .to_string();
    let mut cmd = kiln(b.root());
    cmd.args(["exec", "-i", &id, "sh", "-c", "cat > /etc/in; cat /etc/in"]);
    let out = run(cmd, Some("via exec\n"));
    assert_eq!(stdout(&out), "via exec\n", "{}", stderr(&out));
    b.ok(&["rm", "-f", &id]);
}

#[test]
fn restart_always_until_stopped_with_the_images_stopsignal() {
    let b = Lab::new();
    b.k.build(
        &b.k.context(
            "sig",
            &format!("FROM {}\nSTOPSIGNAL SIGUSR1\n", b.image),
            &[],
        ),
        &["-t", "sig:1"],
    );
    let id = b
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--restart",
            "always",
            "sig:1",
            "sh",
            "-c",
            "trap 'echo usr1; exit 0' USR1; echo up; sleep 0.3 & wait",
        ])
        .trim()
        .to_string();
    b.until(20, "two restarts", || {
        b.inspect(&id)["RestartCount"].as_u64().unwrap_or(0) >= 2
    });
    b.until(10, "running again", || b.status(&id) == "running");
    b.ok(&["stop", &id]);
    let v = b.inspect(&id);
    assert_eq!(v["State"]["Status"], "exited", "{v}");
    assert_eq!(v["Config"]["StopSignal"], "SIGUSR1");
    let count = v["RestartCount"].as_u64();
    // Stopped by hand: no restart follows.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(b.inspect(&id)["RestartCount"].as_u64(), count);
    assert_eq!(b.status(&id), "exited");
    b.ok(&["rm", &id]);
    b.assert_nothing_left(&[id]);
}
