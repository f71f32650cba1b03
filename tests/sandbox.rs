//! The sandbox for real: namespaces, mounts, credentials, seccomp and cancellation, on a
//! rootfs built from Debian's static busybox (`/bin/busybox`, package busybox-static). The
//! helper is this package's `kiln` binary (`kiln __sandbox …`). Needs root; skips (and says
//! so) otherwise.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use kiln::executor::sandbox::{
    self, CancelToken, SandboxConfig, SandboxError, SandboxMount, SandboxNetwork, SandboxOutcome,
    Stream,
};

const BUSYBOX: &str = "/bin/busybox";

fn ready() -> bool {
    static INIT: Once = Once::new();
    INIT.call_once(|| std::env::set_var(sandbox::EXE_ENV, env!("CARGO_BIN_EXE_kiln")));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping sandbox test: needs root (namespaces, mounts)");
        return false;
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    true
}

/// A busybox root filesystem: `/bin/busybox` and a symlink per applet, nothing else (no
/// `/etc`, `/proc`, `/dev`, `/sys`: the sandbox has to create those mountpoints).
fn busybox_tree(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
}

/// A plain-directory rootfs.
struct PlainRoot {
    dir: tempfile::TempDir,
}

impl PlainRoot {
    fn new() -> PlainRoot {
        let dir = tempfile::tempdir().unwrap();
        busybox_tree(dir.path());
        PlainRoot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An overlay rootfs as the build executor makes it: busybox below, an empty upper.
struct OverlayRoot {
    _dir: tempfile::TempDir,
    upper: PathBuf,
    merged: PathBuf,
}

impl OverlayRoot {
    fn new() -> OverlayRoot {
        let dir = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|n| dir.path().join(n));
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        busybox_tree(&lower);
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .expect("overlayfs mount");
        OverlayRoot {
            _dir: dir,
            upper,
            merged,
        }
    }

    /// Every path in the upper layer, relative, sorted.
    fn upper_entries(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.symlink_metadata().unwrap().is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.upper, &self.upper, &mut out);
        out.sort();
        out
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn config(rootfs: &Path, script: &str) -> SandboxConfig {
    SandboxConfig {
        rootfs: rootfs.to_path_buf(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "HOME=/root".into(),
        ],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        hostname: "buildkitsandbox".into(),
        network: SandboxNetwork::None,
        mounts: vec![],
        etc_hosts: "127.0.0.1\tlocalhost buildkitsandbox\n".into(),
        resolv_conf: "nameserver 192.0.2.53\n".into(),
        insecure: false,
        no_new_privileges: false,
        stdin: None,
        container: Default::default(),
    }
}

/// Output collected per stream, with the order of chunks kept.
#[derive(Default, Debug)]
struct Output {
    stdout: String,
    stderr: String,
    chunks: usize,
}

fn run(config: &SandboxConfig) -> (Result<SandboxOutcome, SandboxError>, Output) {
    let mut out = Output::default();
    let r = sandbox::run(config, &mut |stream, bytes| {
        out.chunks += 1;
        let s = String::from_utf8_lossy(bytes);
        match stream {
            Stream::Stdout => out.stdout.push_str(&s),
            Stream::Stderr => out.stderr.push_str(&s),
        }
    });
    (r, out)
}

/// Runs a script that must succeed; returns its stdout.
fn sh(config: &SandboxConfig) -> String {
    let (r, out) = run(config);
    let outcome = r.unwrap_or_else(|e| panic!("sandbox error: {e}\n{out:?}"));
    assert_eq!(outcome.exit_code, 0, "{out:?}");
    out.stdout
}

#[test]
fn output_is_streamed_and_exit_codes_reported() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let (r, out) = run(&config(
        root.path(),
        "echo hello; echo oops >&2; seq 1 100000 | tail -n 1; exit 3",
    ));
    let outcome = r.unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(outcome.signal, None);
    assert_eq!(out.stdout, "hello\n100000\n");
    assert_eq!(out.stderr, "oops\n");

    // Nothing is clipped.
    let (r, out) = run(&config(root.path(), "seq 1 200000"));
    assert_eq!(r.unwrap().exit_code, 0);
    let expected: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected);
    assert!(out.chunks > 1);
}

#[test]
fn killed_process_reports_the_signal() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    // PID 1 ignores signals from inside its namespace; the kernel's SIGKILL at the hard CPU
    // limit is delivered all the same.
    let (r, out) = run(&config(root.path(), "ulimit -t 1; while :; do :; done"));
    let outcome = r.unwrap();
    assert_eq!(outcome.exit_code, 128 + 9, "{out:?}");
    assert_eq!(outcome.signal, Some(9));
}

#[test]
fn pid_hostname_proc_dev_sys() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let script = "echo pid=$$; hostname; cat /etc/hostname; \
        test -r /proc/self/status && echo proc; \
        echo x > /dev/null && echo devnull; head -c 4 /dev/zero | wc -c; \
        test -c /dev/urandom && test -d /dev/pts && test -d /dev/shm && test -L /dev/ptmx && echo devices; \
        touch /sys/kernel/x 2>&1 | grep -q 'Read-only file system' && echo sys-ro; \
        ps -o pid,comm | wc -l";
    let stdout = sh(&config(root.path(), script));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "pid=1",
            "buildkitsandbox",
            "buildkitsandbox",
            "proc",
            "devnull",
            "4",
            "devices",
            "sys-ro"
        ],
        "{stdout}"
    );
    // Only the shell and ps (and wc) are visible: a header plus 3 processes at most.
    assert!(lines[8].trim().parse::<u32>().unwrap() <= 4, "{stdout}");
}

#[test]
fn etc_files_and_mountpoints_stay_out_of_the_layer() {
    if !ready() {
        return;
    }
    let root = OverlayRoot::new();
    let mut cfg = config(&root.merged, "cat /etc/hosts /etc/resolv.conf; echo data > /result; echo x > /etc/hosts || echo hosts-ro");
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("f"), "cached\n").unwrap();
    cfg.mounts = vec![
        SandboxMount::Bind {
            source: cache.path().to_path_buf(),
            target: "/cache/dir".into(),
            readonly: true,
        },
        SandboxMount::Tmpfs {
            target: "/cache".into(),
            size: Some(1 << 20),
        },
    ];
    cfg.args[2].push_str("; cat /cache/dir/f; touch /cache/dir/new 2>/dev/null || echo bind-ro; touch /cache/t && echo tmpfs-rw");
    let (r, out) = run(&cfg);
    let outcome = r.unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(outcome.exit_code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "127.0.0.1\tlocalhost buildkitsandbox\nnameserver 192.0.2.53\nhosts-ro\ncached\nbind-ro\ntmpfs-rw\n"
    );
    assert_eq!(
        outcome.created_mountpoints,
        [
            "/proc",
            "/dev",
            "/sys",
            "/etc",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/cache"
        ]
    );
    // The upper layer holds the mountpoints (empty) and what the command wrote …
    assert!(root.upper_entries().contains(&"etc/hosts".to_string()));
    assert_eq!(std::fs::read(root.upper.join("etc/hosts")).unwrap(), b"");
    // … and once the mountpoints are removed, only the command's own file.
    sandbox::remove_created_mountpoints(&root.merged, &outcome.created_mountpoints).unwrap();
    assert_eq!(root.upper_entries(), ["result"]);
    assert!(!cache.path().join("new").exists());
}

#[test]
fn user_groups_and_working_directory() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let mut cfg = config(
        root.path(),
        "id; pwd; stat -c %u:%g:%a .; touch mine && echo writable",
    );
    cfg.uid = 1000;
    cfg.gid = 1000;
    cfg.additional_gids = vec![10, 20];
    cfg.cwd = "/home/app/src".into();
    let stdout = sh(&cfg);
    assert_eq!(
        stdout,
        "uid=1000 gid=1000 groups=10,20\n/home/app/src\n1000:1000:755\nwritable\n"
    );
    let meta = std::fs::metadata(root.path().join("home/app")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

fn caps(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn capabilities_and_seccomp() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let script = "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status";
    let as_root = caps(&sh(&config(root.path(), script)));
    let get = |v: &[(String, String)], k: &str| {
        v.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get(&as_root, "CapBnd"), "00000000a80425fb");
    assert_eq!(get(&as_root, "CapEff"), "00000000a80425fb");
    assert_eq!(get(&as_root, "CapPrm"), "00000000a80425fb");
    assert_eq!(get(&as_root, "CapInh"), "0000000000000000");
    assert_eq!(get(&as_root, "CapAmb"), "0000000000000000");
    assert_eq!(get(&as_root, "Seccomp"), "2");
    assert_eq!(get(&as_root, "NoNewPrivs"), "0");

    let mut cfg = config(root.path(), script);
    cfg.uid = 1000;
    cfg.gid = 1000;
    let user = caps(&sh(&cfg));
    assert_eq!(get(&user, "CapBnd"), "00000000a80425fb");
    assert_eq!(get(&user, "CapEff"), "0000000000000000");
    assert_eq!(get(&user, "CapPrm"), "0000000000000000");

    // mount(2) is refused; unshare(CLONE_NEWUSER), which needs no capability, too (seccomp).
    let stdout = sh(&config(
        root.path(),
        "mkdir /mnt; mount -t tmpfs none /mnt 2>&1 || echo mount-refused; \
         unshare -U true 2>&1 || echo unshare-refused",
    ));
    assert!(stdout.contains("mount-refused"), "{stdout}");
    assert!(stdout.contains("unshare-refused"), "{stdout}");
    assert!(
        stdout.contains("Operation not permitted") || stdout.contains("permission denied"),
        "{stdout}"
    );

    // Insecure: everything allowed, nothing masked.
    let mut cfg = config(
        root.path(),
        "grep -E '^(CapBnd|Seccomp)' /proc/self/status; mkdir -p /mnt; \
         mount -t tmpfs none /mnt && echo mounted; test -c /proc/kcore || echo kcore-unmasked; \
         touch /sys/kernel/x 2>&1 | grep -q 'Read-only' || echo sys-rw",
    );
    cfg.insecure = true;
    let stdout = sh(&cfg);
    let host_bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    assert!(stdout.contains(&format!("CapBnd:\t{host_bnd}")), "{stdout}");
    assert!(stdout.contains("Seccomp:\t0"), "{stdout}");
    assert!(stdout.contains("mounted"), "{stdout}");
    assert!(stdout.contains("kcore-unmasked"), "{stdout}");
    assert!(stdout.contains("sys-rw"), "{stdout}");
}

#[test]
fn masked_and_readonly_paths() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let mut script = String::new();
    let mut expected = String::new();
    for p in sandbox::mounts::MASKED_PATHS {
        script.push_str(&format!(
            "if [ -c {p} ]; then echo \"{p} null $(wc -c < {p})\"; \
             elif [ -d {p} ]; then echo \"{p} dir $(ls -A {p} | wc -l)\"; \
             elif [ -e {p} ]; then echo \"{p} exposed\"; else echo \"{p} absent\"; fi\n"
        ));
        // The kernel decides which of these exist (this machine may lack /proc/kcore).
        let host = Path::new(p);
        let state = if host.is_dir() {
            "dir 0"
        } else if host.exists() {
            "null 0"
        } else {
            "absent"
        };
        expected.push_str(&format!("{p} {state}\n"));
    }
    script.push_str(
        "echo x 2>/dev/null > /proc/sys/kernel/domainname || echo proc-sys-ro\n\
         echo x 2>/dev/null > /proc/sysrq-trigger || echo sysrq-ro\n",
    );
    expected.push_str("proc-sys-ro\nsysrq-ro\n");
    assert_eq!(sh(&config(root.path(), &script)), expected);
    assert!(expected.contains("/proc/keys null 0"), "{expected}");
}

fn interfaces(net_dev: &str) -> Vec<String> {
    let mut v: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn network_modes() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let none = sh(&config(root.path(), "cat /proc/net/dev"));
    assert_eq!(interfaces(&none), ["lo"]);
    let mut cfg = config(root.path(), "cat /proc/net/dev");
    cfg.network = SandboxNetwork::Host;
    let host = sh(&cfg);
    let expected = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&host), expected);
}

#[test]
fn stdin_is_passed() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), "from stdin\n").unwrap();
    let mut cfg = config(root.path(), "cat");
    cfg.stdin = Some(std::fs::File::open(input.path()).unwrap());
    assert_eq!(sh(&cfg), "from stdin\n");
    // Without one, stdin is /dev/null.
    assert_eq!(sh(&config(root.path(), "cat; echo end")), "end\n");
}

#[test]
fn missing_programs_are_clear_errors() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let mut cfg = config(root.path(), "");
    cfg.args = vec!["/bin/foo".into()];
    let (r, _) = run(&cfg);
    let e = r.unwrap_err();
    assert!(matches!(e, SandboxError::Exec { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "exec \"/bin/foo\": no such file or directory in the image"
    );

    cfg.args = vec!["nosuchcommand".into(), "x".into()];
    let e = run(&cfg).0.unwrap_err();
    assert_eq!(
        e.to_string(),
        "exec: \"nosuchcommand\": executable file not found in $PATH"
    );

    // A program whose interpreter is missing.
    std::fs::write(root.path().join("script"), "#!/no/such/interpreter\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.path().join("script"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    cfg.args = vec!["/script".into()];
    let e = run(&cfg).0.unwrap_err();
    assert!(e.to_string().contains("interpreter"), "{e}");

    // A command found through PATH runs with argv[0] untouched.
    cfg.args = vec!["sh".into(), "-c".into(), "echo $0".into()];
    assert_eq!(sh(&cfg), "sh\n");
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

#[test]
fn cancel_kills_everything_and_leaves_no_mounts() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    let marker = "987654";
    let mut cfg = config(
        root.path(),
        &format!("sleep {marker} & sleep {marker}; echo not-reached"),
    );
    cfg.mounts = vec![SandboxMount::Tmpfs {
        target: "/scratch".into(),
        size: None,
    }];
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            // Wait until the sleeps run, then cancel.
            let start = Instant::now();
            while processes_with(marker).len() < 2 && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            token.cancel();
            Instant::now()
        })
    };
    let mut stdout = String::new();
    let r = sandbox::run_with_cancel(
        &cfg,
        &mut |_, b| stdout.push_str(&String::from_utf8_lossy(b)),
        &token,
    );
    let returned = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert!(matches!(r, Err(SandboxError::Cancelled)), "{r:?}");
    assert!(
        returned.duration_since(cancelled_at) < Duration::from_secs(2),
        "cancel took {:?}",
        returned.duration_since(cancelled_at)
    );
    assert!(!stdout.contains("not-reached"));
    assert_eq!(processes_with(marker), Vec::<String>::new());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_path = root.path().canonicalize().unwrap().display().to_string();
    assert!(!mountinfo.contains(&root_path), "{mountinfo}");
}

#[test]
fn parallel_sandboxes() {
    if !ready() {
        return;
    }
    let root = PlainRoot::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let path = root.path();
                s.spawn(move || sh(&config(path, &format!("echo $$ {i}"))))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), format!("1 {i}\n"));
        }
    });
}
