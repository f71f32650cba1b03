//! Resource limits of a container: memory, CPU quota and pids, on cgroup v1 (one directory
//! per controller under `/sys/fs/cgroup/<ctrl>/kiln/<id>`, this machine's layout) or on a pure
//! cgroup v2 host (`/sys/fs/cgroup/kiln/<id>`). Every container gets its cgroups (as with
//! docker), so OOM kills are always visible; the container's first process writes itself into
//! `cgroup.procs` before its setup, `exec` joins the same way.

use std::path::{Path, PathBuf};

use super::{Result, RunError};

/// Where cgroups live (overridable for tests and odd hosts).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a container gets a directory in.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// docker's CFS period.
const CPU_PERIOD: i64 = 100_000;

/// Limits to apply (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
}

/// A container's cgroup directories.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub v2: bool,
    /// One per controller on v1, one on v2.
    pub dirs: Vec<PathBuf>,
}

fn cg_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(cg_err(path))
}

/// Pure cgroup v2 (`cgroup.controllers` at the root), else v1.
fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

impl Cgroup {
    /// The directories of container `id` (whether they exist or not).
    pub fn locate(id: &str) -> Cgroup {
        Cgroup::locate_in(Path::new(CGROUP_ROOT), id)
    }

    /// [`Cgroup::locate`] under another cgroup mount point (tests).
    pub fn locate_in(root: &Path, id: &str) -> Cgroup {
        if is_v2(root) {
            Cgroup {
                v2: true,
                dirs: vec![root.join("kiln").join(id)],
            }
        } else {
            Cgroup {
                v2: false,
                dirs: V1_CONTROLLERS
                    .iter()
                    .map(|c| root.join(c).join("kiln").join(id))
                    .filter(|d| d.parent().and_then(Path::parent).is_some_and(Path::is_dir))
                    .collect(),
            }
        }
    }

    /// Creates the directories and writes the limits.
    pub fn create(id: &str, limits: &Limits) -> Result<Cgroup> {
        Cgroup::create_in(Path::new(CGROUP_ROOT), id, limits)
    }

    /// [`Cgroup::create`] under another cgroup mount point (tests).
    pub fn create_in(root: &Path, id: &str, limits: &Limits) -> Result<Cgroup> {
        let cg = Cgroup::locate_in(root, id);
        if cg.v2 {
            let parent = root.join("kiln");
            std::fs::create_dir_all(&parent).map_err(cg_err(&parent))?;
            for dir in [root, parent.as_path()] {
                let control = dir.join("cgroup.subtree_control");
                let available =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let wanted: Vec<String> = ["memory", "cpu", "pids"]
                    .iter()
                    .filter(|c| available.split_whitespace().any(|a| a == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !wanted.is_empty() {
                    write(&control, &wanted.join(" "))?;
                }
            }
        }
        for dir in &cg.dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir).map_err(cg_err(dir))?
                }
                Err(e) => return Err(cg_err(dir)(e)),
            }
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    fn dir_for(&self, controller: &str) -> Option<&Path> {
        if self.v2 {
            return self.dirs.first().map(PathBuf::as_path);
        }
        self.dirs
            .iter()
            .find(|d| {
                d.parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == controller)
            })
            .map(PathBuf::as_path)
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        if let (Some(mem), Some(dir)) = (limits.memory, self.dir_for("memory")) {
            if self.v2 {
                write(&dir.join("memory.max"), &mem.to_string())?;
                // docker: --memory-swap defaults to twice --memory (as much swap as memory).
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, &mem.to_string())?;
                }
            } else {
                write(&dir.join("memory.limit_in_bytes"), &mem.to_string())?;
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &(mem * 2).to_string())?;
                }
            }
        }
        if let (Some(nano), Some(dir)) = (limits.nano_cpus, self.dir_for("cpu")) {
            let quota = nano * CPU_PERIOD / 1_000_000_000;
            if self.v2 {
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let (Some(pids), Some(dir)) = (limits.pids, self.dir_for("pids")) {
            let v = if pids <= 0 {
                "max".to_string()
            } else {
                pids.to_string()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The number of OOM kills so far (from `memory.events` or `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir_for("memory") else {
            return 0;
        };
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    }

    /// Kills whatever is left in the cgroup (SIGKILL to every listed pid).
    pub fn kill_all(&self) {
        for procs in self.procs_files() {
            if let Ok(text) = std::fs::read_to_string(&procs) {
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Removes the directories (retrying briefly while the last processes are reaped).
    pub fn remove(&self) -> Result<()> {
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        if tries == 20 {
                            self.kill_all();
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => return Err(cg_err(dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// Parses docker's `--memory` (`512m`, `1g`, `100000` bytes, `k`/`b` suffixes).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| RunError::Invalid(format!("invalid size: {s:?}")))?;
    if value < 0.0 {
        return Err(RunError::Invalid(format!("invalid size: {s:?}")));
    }
    Ok((value * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    /// A pure v2 layout imitated in a temp dir (the kernel's files are plain files here).
    #[test]
    fn v2_limits_and_oom() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::create_dir_all(r.join("kiln")).unwrap();
        std::fs::write(r.join("kiln/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let limits = Limits {
            memory: Some(64 << 20),
            nano_cpus: Some(1_500_000_000),
            pids: Some(50),
        };
        let cg = Cgroup::create_in(r, "abc", &limits).unwrap();
        assert!(cg.v2);
        let dir = r.join("kiln/abc");
        assert_eq!(
            read(&r.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(read(&dir.join("memory.max")), (64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(&dir.join("pids.max")), "50");
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
    }

    /// This machine's layout: v1 controllers, each its own directory.
    #[test]
    fn v1_limits_and_oom() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(r.join(c)).unwrap();
        }
        let limits = Limits {
            memory: Some(32 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(-1),
        };
        let cg = Cgroup::create_in(r, "abc", &limits).unwrap();
        assert!(!cg.v2);
        assert_eq!(cg.dirs.len(), 3);
        assert_eq!(
            read(&r.join("memory/kiln/abc/memory.limit_in_bytes")),
            (32 << 20).to_string()
        );
        assert_eq!(read(&r.join("cpu/kiln/abc/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&r.join("pids/kiln/abc/pids.max")), "max");
        std::fs::write(
            r.join("memory/kiln/abc/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert!(parse_bytes("lots").is_err());
    }
}
