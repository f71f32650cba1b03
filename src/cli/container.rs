//! `kiln run`, `create`, `start`, `stop`, `kill`, `restart`, `rm`, `ps`, `logs`, `exec`,
//! `wait`, `inspect`, `port`, `cp`, `container prune`: docker's flags and output on top of
//! [`crate::run`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::ApiClient;
use super::container_backend::{ContainerBackend, Local, LogOptions};
use super::engine::Engine;
use super::format::{human_duration, table};
use super::Outcome;
use crate::run::create::CreateOptions;
use crate::run::exec::{self, ExecOptions, RawMode};
use crate::run::monitor::{self, Attach};
use crate::run::state::{Container, Containers};

/// The flags `run` and `create` share (`-h` is `--hostname`, as in docker).
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct CreateArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to take it from here).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Keep STDIN open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Automatically remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Publish a container's port(s) to the host ([IP:]HOST:CONTAINER[/PROTO]).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to random ports.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Bind mount a volume (SRC:DST[:ro]).
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Attach a filesystem mount (type=volume|bind|tmpfs,source=…,target=…).
    #[arg(long)]
    pub mount: Vec<String>,
    /// Mount a tmpfs directory.
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Connect the container to a network (none, host, bridge or a user network).
    #[arg(long = "network", alias = "net")]
    pub network: Option<String>,
    /// Add a network-scoped alias for the container.
    #[arg(long = "network-alias")]
    pub network_alias: Vec<String>,
    /// IPv4 address on the network.
    #[arg(long)]
    pub ip: Option<String>,
    /// Container host name.
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Add a custom host-to-IP mapping (HOST:IP).
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// Memory limit (e.g. 64m).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Number of CPUs.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tune the container pids limit (-1 for unlimited).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem as read only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Add Linux capabilities.
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Security options (no-new-privileges).
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Restart policy (no, on-failure[:max-retries], always, unless-stopped).
    #[arg(long)]
    pub restart: Option<String>,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    pub init: bool,
    /// Signal to stop the container.
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container.
    #[arg(long = "stop-timeout", allow_negative_numbers = true)]
    pub stop_timeout: Option<i64>,
    /// Command to run to check health.
    #[arg(long = "health-cmd")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h).
    #[arg(long = "health-interval")]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long = "health-timeout")]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long = "health-retries")]
    pub health_retries: Option<i64>,
    /// Start period for the container to initialize before counting retries.
    #[arg(long = "health-start-period")]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
    /// Set meta data on a container.
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// The image to run.
    pub image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Run the container in the background and print its ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach the container's STDIN.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container.
    #[arg(
        short = 't',
        long = "time",
        alias = "timeout",
        allow_negative_numbers = true
    )]
    pub time: Option<i64>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container.
    #[arg(short = 's', long)]
    pub signal: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove anonymous volumes associated with the container.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Format output using a template ({{.ID}}, {{.Names}}, {{.Status}}, …; `table …`).
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" for all).
    #[arg(short = 'n', long)]
    pub tail: Option<String>,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep STDIN open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Detached mode: run the command in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Username or UID.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Set environment variables.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not attach STDIN.
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ContainersArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a template ({{.State.Status}}, {{json .State}}, …).
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// PRIVATE_PORT[/PROTO]
    pub port: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// SRC: CONTAINER:PATH or a host path.
    pub src: String,
    /// DST: CONTAINER:PATH or a host path.
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `kiln container <sub>`.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create and run a new container from an image.
    Run(RunArgs),
    /// Create a new container.
    Create(CreateArgs),
    /// Start one or more stopped containers.
    Start(StartArgs),
    /// Stop one or more running containers.
    Stop(StopArgs),
    /// Kill one or more running containers.
    Kill(KillArgs),
    /// Restart one or more containers.
    Restart(StopArgs),
    /// Remove one or more containers.
    Rm(RmArgs),
    /// List containers.
    #[command(alias = "ps", alias = "list")]
    Ls(PsArgs),
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Execute a command in a running container.
    Exec(ExecArgs),
    /// Attach standard input, output and error to a running container.
    Attach(AttachArgs),
    /// Block until one or more containers stop, then print their exit codes.
    Wait(ContainersArgs),
    /// Display detailed information on one or more containers.
    Inspect(InspectArgs),
    /// List port mappings of a container.
    Port(PortArgs),
    /// Copy files between a container and the host.
    Cp(CpArgs),
    /// Remove all stopped containers.
    Prune(PruneArgs),
}

/// Where a container command goes: this process's store, or a daemon (`kiln -H`).
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Local(&'a Path),
    Api(&'a ApiClient),
}

impl Via<'_> {
    fn with<T>(&self, f: impl FnOnce(&dyn ContainerBackend) -> T) -> T {
        match self {
            Via::Local(root) => f(&Local::new(root)),
            Via::Api(api) => f(*api),
        }
    }
}

pub fn dispatch(cmd: &ContainerCommand, via: Via) -> anyhow::Result<Outcome> {
    match cmd {
        ContainerCommand::Run(a) => run(a, via),
        ContainerCommand::Create(a) => create_cmd(a, via),
        ContainerCommand::Start(a) => start(a, via),
        ContainerCommand::Stop(a) => stop(a, via),
        ContainerCommand::Kill(a) => kill(a, via),
        ContainerCommand::Restart(a) => restart(a, via),
        ContainerCommand::Rm(a) => rm(a, via),
        ContainerCommand::Ls(a) => ps(a, via),
        ContainerCommand::Logs(a) => logs_cmd(a, via),
        ContainerCommand::Exec(a) => exec_cmd(a, via),
        ContainerCommand::Attach(a) => attach(a, via),
        ContainerCommand::Wait(a) => wait(a, via),
        ContainerCommand::Inspect(a) => inspect(a, via),
        ContainerCommand::Port(a) => port(a, via),
        ContainerCommand::Cp(a) => cp(a, via),
        ContainerCommand::Prune(a) => prune(a, via),
    }
}

fn env_from(args: &CreateArgs) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for f in &args.env_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            push_env(&mut env, line)?;
        }
    }
    for e in &args.env {
        push_env(&mut env, e)?;
    }
    Ok(env)
}

/// `KEY=VALUE`, or `KEY` taken from our environment (skipped when unset), as docker.
fn push_env(env: &mut Vec<String>, e: &str) -> anyhow::Result<()> {
    if let (k, Some(v)) = super::parse_key_value(e).map_err(anyhow::Error::msg)? {
        env.push(format!("{k}={v}"));
    }
    Ok(())
}

pub(super) fn options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    Ok(CreateOptions {
        image: args.image.clone(),
        cmd: args.command.clone(),
        name: args.name.clone(),
        entrypoint: args.entrypoint.clone(),
        env: env_from(args)?,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        tty: args.tty,
        interactive: args.interactive,
        stdin_once: false,
        console_size: None,
        network: args.network.clone(),
        network_aliases: args.network_alias.clone(),
        ip: args.ip.clone(),
        publish: args.publish.clone(),
        publish_all: args.publish_all,
        add_hosts: args.add_host.clone(),
        volumes: args.volume.clone(),
        mounts: args.mount.clone(),
        tmpfs: args.tmpfs.clone(),
        read_only: args.read_only,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        security_opts: args.security_opt.clone(),
        memory: args.memory.clone(),
        cpus: args.cpus,
        pids_limit: args.pids_limit,
        restart: args.restart.clone(),
        auto_remove: args.rm,
        init: args.init,
        stop_signal: args.stop_signal.clone(),
        stop_timeout: args.stop_timeout,
        health_cmd: args.health_cmd.clone(),
        health_interval: args.health_interval.clone(),
        health_timeout: args.health_timeout.clone(),
        health_retries: args.health_retries,
        health_start_period: args.health_start_period.clone(),
        no_healthcheck: args.no_healthcheck,
        labels: args.label.clone(),
    })
}

/// Pull progress of `run`/`create` as plain lines on stderr (stdout is the container's).
struct StderrProgress;

impl crate::push::progress::Progress for StderrProgress {
    fn status(&self, blob: &crate::cache::Digest, status: &str) {
        eprintln!("{}: {status}", &blob.hex()[..12.min(blob.hex().len())]);
    }

    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// docker's "Unable to find image locally": pull it (unpacked straight into snapshots).
pub(super) fn pull_if_missing(
    engine: &Engine,
    snapshots: &dyn crate::cache::snapshot::Snapshotter,
    image: &str,
) -> anyhow::Result<()> {
    match engine.store.lookup(image) {
        Err(crate::cache::store::StoreError::NotFound(_)) => {}
        _ => return Ok(()),
    }
    let reference = crate::reference::Reference::parse(image)
        .map(|r| r.with_default_tag().to_string())
        .unwrap_or_else(|_| image.to_string());
    eprintln!("Unable to find image '{reference}' locally");
    let settings = crate::push::client::RegistrySettings::load(&[])?;
    let opts = crate::push::pull::PullOptions {
        platform: crate::graph::Platform::host(),
        settings: &settings,
        progress: &StderrProgress,
        snapshots: Some(snapshots),
    };
    // Known missing: pull at once (pull_if_missing would look it up again).
    crate::push::client::parse_reference(image)
        .map_err(anyhow::Error::from)
        .and_then(|r| Ok(crate::push::pull::pull(&engine.store, &r, &opts)?))
        .with_context(|| {
            format!("image {reference:?} is not in the local store, and pulling it failed")
        })?;
    Ok(())
}

pub fn create_cmd(args: &CreateArgs, via: Via) -> anyhow::Result<Outcome> {
    let opts = options(args)?;
    let id = via.with(|b| b.create(&opts))?;
    println!("{id}");
    Ok(Outcome::Success)
}

fn exit(code: i32) -> Outcome {
    if code == 0 {
        Outcome::Success
    } else {
        Outcome::Exit(code.clamp(0, 255) as u8)
    }
}

/// Runs a container in this process (attached), returning its exit code.
fn run_attached(root: &Path, c: &Container, interactive: bool) -> anyhow::Result<i32> {
    let snapshots = crate::run::rootfs::open_snapshots(root)?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let _raw = if c.config.tty {
        RawMode::enter(0)
    } else {
        None
    };
    let mut stdin = None;
    if interactive && !c.config.tty {
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
        stdin = Some(std::fs::File::from(fd));
    }
    monitor::forward_signals();
    let mut error = None;
    let code = monitor::supervise(
        root,
        snapshots.as_ref(),
        c,
        Some(Attach {
            stdout: &mut stdout,
            stderr: &mut stderr,
            stdin,
            tty_stdin: interactive && c.config.tty,
        }),
        &mut |r| {
            if let Err(e) = r {
                error = Some(e);
            }
        },
    )?;
    if let Some(e) = error {
        drop(_raw);
        eprintln!("kiln: error: {e}");
    }
    Ok(code)
}

pub fn run(args: &RunArgs, via: Via) -> anyhow::Result<Outcome> {
    let root = match via {
        Via::Local(root) => root,
        Via::Api(api) => return super::client_containers::run(api, args),
    };
    let created = options(&args.create).and_then(|opts| Local::new(root).create_container(&opts));
    let c = match created {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            return Ok(Outcome::Exit(125));
        }
    };
    if args.detach {
        if let Err(e) = monitor::spawn(root, &c) {
            eprintln!("kiln: error: {e}");
            return Ok(Outcome::Exit(125));
        }
        println!("{}", c.config.id);
        return Ok(Outcome::Success);
    }
    let code = run_attached(root, &c, args.create.interactive)?;
    Ok(exit(code))
}

fn find(root: &Path, key: &str) -> anyhow::Result<Container> {
    Ok(Containers::open(root)?.find(key)?)
}

/// Runs `f` on each named container; prints the name as docker does; errors are reported and
/// make the command fail at the end.
fn each(names: &[String], f: &mut dyn FnMut(&str) -> anyhow::Result<()>) -> Outcome {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("kiln: error: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    }
}

pub fn start(args: &StartArgs, via: Via) -> anyhow::Result<Outcome> {
    if args.attach || args.interactive {
        let [one] = args.containers.as_slice() else {
            bail!("you cannot start and attach multiple containers at once");
        };
        let root = match via {
            Via::Local(root) => root,
            Via::Api(api) => return super::client_containers::start_attached(api, one, args),
        };
        let c = find(root, one)?;
        let s = monitor::settle(root, &c)?;
        if s.is_running() {
            bail!("container {} is already running", c.short_id());
        }
        c.update_state(|s| s.manually_stopped = false)?;
        let code = run_attached(root, &c, args.interactive)?;
        return Ok(exit(code));
    }
    Ok(via.with(|b| each(&args.containers, &mut |n| b.start(n))))
}

pub fn stop(args: &StopArgs, via: Via) -> anyhow::Result<Outcome> {
    Ok(via.with(|b| each(&args.containers, &mut |n| b.stop(n, args.time))))
}

pub fn restart(args: &StopArgs, via: Via) -> anyhow::Result<Outcome> {
    Ok(via.with(|b| each(&args.containers, &mut |n| b.restart(n, args.time))))
}

pub fn kill(args: &KillArgs, via: Via) -> anyhow::Result<Outcome> {
    Ok(via.with(|b| each(&args.containers, &mut |n| b.kill(n, args.signal.as_deref()))))
}

pub fn rm(args: &RmArgs, via: Via) -> anyhow::Result<Outcome> {
    Ok(via.with(|b| {
        each(&args.containers, &mut |n| {
            b.remove(n, args.force, args.volumes)
        })
    }))
}

pub fn wait(args: &ContainersArgs, via: Via) -> anyhow::Result<Outcome> {
    let mut failed = false;
    via.with(|b| {
        for n in &args.containers {
            match b.wait(n) {
                Ok(code) => println!("{code}"),
                Err(e) => {
                    eprintln!("kiln: error: {e:#}");
                    failed = true;
                }
            }
        }
    });
    Ok(if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

/// docker's COMMAND column: quoted, cut at 20 characters unless `--no-trunc`.
fn command_text(command: &str, trunc: bool) -> String {
    if trunc && command.chars().count() > 20 {
        format!("\"{}…\"", command.chars().take(19).collect::<String>())
    } else {
        format!("\"{command}\"")
    }
}

/// Substitutes `{{.Field}}` (and `{{json .Field}}`) in a docker-style template.
fn render_template(template: &str, fields: &Value) -> String {
    let mut out = String::new();
    let mut rest = template.replace("\\t", "\t").replace("\\n", "\n");
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let expr = rest[start + 2..start + end].trim().to_string();
        let (json, path) = match expr.strip_prefix("json ") {
            Some(p) => (true, p.trim().to_string()),
            None => (false, expr),
        };
        let mut v = fields;
        for part in path
            .trim_start_matches('.')
            .split('.')
            .filter(|p| !p.is_empty())
        {
            v = v.get(part).unwrap_or(&Value::Null);
        }
        if json {
            out.push_str(&v.to_string());
        } else {
            match v {
                Value::String(s) => out.push_str(s),
                Value::Null => out.push_str("<no value>"),
                other => out.push_str(&other.to_string()),
            }
        }
        rest = rest[start + end + 2..].to_string();
    }
    out.push_str(&rest);
    out
}

pub fn ps(args: &PsArgs, via: Via) -> anyhow::Result<Outcome> {
    let summaries = via.with(|b| b.list(args.all))?;
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for c in &summaries {
        let full_id = text(&c["Id"]);
        let id = if args.no_trunc {
            full_id
        } else {
            full_id.chars().take(12).collect()
        };
        ids.push(id.clone());
        let created_secs = c["Created"].as_i64().unwrap_or(0);
        let created = format!(
            "{} ago",
            human_duration(crate::cache::image::unix_now() - created_secs)
        );
        let name = c["Names"][0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let row = vec![
            id.clone(),
            text(&c["Image"]),
            command_text(c["Command"].as_str().unwrap_or_default(), !args.no_trunc),
            created.clone(),
            text(&c["Status"]),
            crate::engine::containers::ports_text(c),
            name.clone(),
        ];
        if let Some(f) = &args.format {
            let labels = c["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let mounts = c["Mounts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| match m["Name"].as_str().filter(|n| !n.is_empty()) {
                            Some(n) => n.to_string(),
                            None => text(&m["Source"]),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let networks = c["NetworkSettings"]["Networks"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            let fields = json!({
                "ID": id,
                "Image": row[1],
                "Command": row[2],
                "CreatedAt": crate::run::state::rfc3339_nanos(i128::from(created_secs) * 1_000_000_000),
                "RunningFor": created,
                "Ports": row[5],
                "State": c["State"],
                "Status": row[4],
                "Names": name,
                "Labels": labels,
                "Mounts": mounts,
                "Networks": networks,
            });
            lines.push(render_template(
                f.strip_prefix("table ").unwrap_or(f),
                &fields,
            ));
        }
        rows.push(row);
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for id in ids {
            writeln!(out, "{id}")?;
        }
    } else if let Some(f) = &args.format {
        if let Some(t) = f.strip_prefix("table ") {
            let header = render_template(
                t,
                &json!({"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
                    "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
                    "State": "STATE", "Status": "STATUS", "Names": "NAMES", "Labels": "LABELS",
                    "Mounts": "MOUNTS", "Networks": "NETWORKS"}),
            );
            writeln!(out, "{header}")?;
        }
        for l in lines {
            writeln!(out, "{l}")?;
        }
    } else {
        write!(
            out,
            "{}",
            table(
                &[
                    "CONTAINER ID",
                    "IMAGE",
                    "COMMAND",
                    "CREATED",
                    "STATUS",
                    "PORTS",
                    "NAMES"
                ],
                &rows
            )
        )?;
    }
    Ok(Outcome::Success)
}

pub fn logs_cmd(args: &LogsArgs, via: Via) -> anyhow::Result<Outcome> {
    let tail = match args.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .with_context(|| format!("invalid --tail value {n:?}"))?,
        ),
    };
    let opts = LogOptions {
        tail,
        follow: args.follow,
        timestamps: args.timestamps,
    };
    via.with(|b| b.logs(&args.container, opts))?;
    Ok(Outcome::Success)
}

pub fn exec_cmd(args: &ExecArgs, via: Via) -> anyhow::Result<Outcome> {
    let root = match via {
        Via::Local(root) => root,
        Via::Api(api) => return super::client_containers::exec(api, args),
    };
    let c = find(root, &args.container)?;
    let snapshots = crate::run::rootfs::open_snapshots(root)?;
    let opts = ExecOptions {
        cmd: args.command.clone(),
        user: args.user.clone(),
        env: args
            .env
            .iter()
            .filter_map(|e| match super::parse_key_value(e) {
                Ok((k, Some(v))) => Some(format!("{k}={v}")),
                _ => None,
            })
            .collect(),
        workdir: args.workdir.clone(),
    };
    if args.detach {
        // The command keeps running after we return: its own session, output discarded.
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--root").arg(root).arg("exec");
        if let Some(u) = &args.user {
            cmd.arg("-u").arg(u);
        }
        for e in &opts.env {
            cmd.arg("-e").arg(e);
        }
        if let Some(w) = &args.workdir {
            cmd.arg("-w").arg(w);
        }
        cmd.arg(&c.config.id).args(&args.command);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        exec::running_pid(&c)?;
        cmd.spawn().context("starting the detached exec")?;
        return Ok(Outcome::Success);
    }
    let code = if args.tty {
        exec::exec_tty(snapshots.as_ref(), &c, &opts, args.interactive)
    } else {
        let stdin = if args.interactive {
            use std::os::fd::AsFd;
            Some(std::fs::File::from(
                std::io::stdin().as_fd().try_clone_to_owned()?,
            ))
        } else {
            None
        };
        exec::exec(
            snapshots.as_ref(),
            &c,
            &opts,
            stdin,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
    };
    match code {
        Ok(code) => Ok(exit(code)),
        Err(crate::run::RunError::Sandbox(e)) => {
            eprintln!("kiln: error: {e}");
            Ok(Outcome::Exit(exec::failure_code(&e) as u8))
        }
        Err(e) => Err(e.into()),
    }
}

/// `attach`: our terminal joins a running container (its stdin when it was created with
/// `-i`, through its monitor's attach socket; its output until it stops); the exit code is
/// the container's.
pub fn attach(args: &AttachArgs, via: Via) -> anyhow::Result<Outcome> {
    let root = match via {
        Via::Local(root) => root,
        Via::Api(api) => return super::client_containers::attach(api, args),
    };
    let c = find(root, &args.container)?;
    if !monitor::settle(root, &c)?.is_running() {
        bail!("You cannot attach to a stopped container, start it first");
    }
    let tty = c.config.tty;
    let stdin = !args.no_stdin && c.config.open_stdin;
    // Only -i and -t containers have an attach socket; the others are followed in the log.
    let socket = if stdin || tty {
        let mut s = crate::run::attach::connect(&c)
            .with_context(|| format!("cannot reach the monitor of container {}", c.short_id()))?;
        s.write_all(if stdin {
            b"attach stdin\n"
        } else {
            b"attach\n"
        })?;
        Some(s)
    } else {
        None
    };
    let _raw = if tty && stdin {
        RawMode::enter(0)
    } else {
        None
    };
    if let (true, Some(s)) = (stdin, &socket) {
        let mut to = s.try_clone()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
    match socket {
        Some(mut s) if tty => {
            let c2 = c.clone();
            std::thread::spawn(move || {
                let mut last = None;
                loop {
                    let size = exec::terminal_size(0);
                    if size.is_some() && size != last {
                        if let Some((rows, cols)) = size {
                            if crate::run::attach::resize(&c2, rows, cols).is_err() {
                                return;
                            }
                        }
                        last = size;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            });
            let mut out = std::io::stdout();
            let mut buf = [0u8; 32 * 1024];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.write_all(&buf[..n])?;
                        out.flush()?;
                    }
                }
            }
        }
        _ => {
            let path = c.log_path();
            let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let c2 = c.clone();
            crate::run::logs::follow(
                &path,
                offset,
                crate::run::logs::Show { timestamps: false },
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                &move || !c2.monitor_alive(),
            )?;
        }
    }
    let code = crate::run::container::wait(root, &c)?;
    drop(_raw);
    Ok(exit(code))
}

/// docker's `inspect` document for a container (or an image of that name, as docker).
pub fn inspect(args: &InspectArgs, via: Via) -> anyhow::Result<Outcome> {
    let mut docs = Vec::new();
    let mut failed = false;
    via.with(|b| {
        for n in &args.containers {
            match b.inspect(n) {
                Ok(d) => docs.push(d),
                Err(e) => match b.inspect_image(n) {
                    Ok(d) => docs.push(d),
                    Err(_) => {
                        eprintln!("kiln: error: {e:#}");
                        failed = true;
                    }
                },
            }
        }
    });
    let mut out = std::io::stdout().lock();
    match &args.format {
        Some(f) => {
            for d in &docs {
                writeln!(out, "{}", render_template(f, d))?;
            }
        }
        None => writeln!(out, "{}", serde_json::to_string_pretty(&docs)?)?,
    }
    Ok(if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

/// `port`: the published ports from the inspect document's `NetworkSettings.Ports`.
pub fn port(args: &PortArgs, via: Via) -> anyhow::Result<Outcome> {
    let doc = via.with(|b| b.inspect(&args.container))?;
    let wanted = args.port.as_ref().map(|p| {
        if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        }
    });
    let mut out = std::io::stdout().lock();
    let mut found = false;
    let empty = serde_json::Map::new();
    for (key, bindings) in doc["NetworkSettings"]["Ports"]
        .as_object()
        .unwrap_or(&empty)
    {
        for b in bindings.as_array().into_iter().flatten() {
            let ip = b["HostIp"]
                .as_str()
                .filter(|i| !i.is_empty())
                .unwrap_or("0.0.0.0");
            let host_port = b["HostPort"].as_str().unwrap_or_default();
            match &wanted {
                Some(w) if w == key => writeln!(out, "{ip}:{host_port}")?,
                Some(_) => continue,
                None => writeln!(out, "{key} -> {ip}:{host_port}")?,
            }
            found = true;
        }
    }
    if !found {
        if let Some(w) = wanted {
            let id: String = doc["Id"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect();
            bail!("no public port '{w}' published for {id}");
        }
    }
    Ok(Outcome::Success)
}

/// `CONTAINER:PATH` (a colon before any slash), else a host path.
fn split_container_path(s: &str) -> Option<(&str, &str)> {
    let (c, p) = s.split_once(':')?;
    if c.is_empty() || c.contains('/') {
        return None;
    }
    Some((c, p))
}

/// `cp`: docker's rules, the same in-process and through a daemon (tar streams through
/// [`ContainerBackend`]). A directory lands inside an existing directory, or becomes the
/// destination when that does not exist; `SRC/.` copies a directory's contents.
pub fn cp(args: &CpArgs, via: Via) -> anyhow::Result<Outcome> {
    match (
        split_container_path(&args.src),
        split_container_path(&args.dst),
    ) {
        (Some((c, p)), None) => via.with(|b| copy_from(b, c, p, Path::new(&args.dst)))?,
        (None, Some((c, p))) => via.with(|b| copy_to(b, &args.src, c, p))?,
        (Some(_), Some(_)) => bail!("copying between containers is not supported"),
        (None, None) => bail!("one of SRC and DST must be CONTAINER:PATH"),
    }
    Ok(Outcome::Success)
}

fn copy_from(
    b: &dyn ContainerBackend,
    container: &str,
    path: &str,
    dst: &Path,
) -> anyhow::Result<()> {
    // The archive's top entry is the path's name, or `.` for `dir/.` (its contents).
    let (stat, tar) = b.read_path(container, path)?;
    if dst.is_dir() {
        return Ok(crate::run::archive::extract_tar(dst, "/", tar)?);
    }
    if dst.exists() && stat.is_dir() {
        bail!(
            "cannot copy a directory to a file: {} is a file",
            dst.display()
        );
    }
    // A new name (or a file replaced): unpack next to it, then rename the one top entry.
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".kiln-cp-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    crate::run::archive::extract_tar(staging.path(), "/", tar)?;
    let copied = if stat.name == "." {
        staging.keep()
    } else {
        staging.path().join(&stat.name)
    };
    std::fs::rename(&copied, dst)
        .with_context(|| format!("copying {container}:{path} to {}", dst.display()))?;
    Ok(())
}

fn copy_to(b: &dyn ContainerBackend, src: &str, container: &str, path: &str) -> anyhow::Result<()> {
    let src_path = Path::new(src);
    let src_meta =
        std::fs::symlink_metadata(src_path).with_context(|| format!("cannot copy {src}"))?;
    let mut dest = b.stat_path(container, path)?;
    // A symlink as the destination: where it points (as docker's CLI resolves it).
    if let Some(st) = dest.as_ref().filter(|st| !st.link_target.is_empty()) {
        let target = if st.link_target.starts_with('/') {
            st.link_target.clone()
        } else {
            let parent = path
                .trim_end_matches('/')
                .rsplit_once('/')
                .map_or("", |p| p.0);
            format!("{parent}/{}", st.link_target)
        };
        dest = b.stat_path(container, &target)?;
    }
    let trimmed = path.trim_end_matches('/');
    let (parent, last) = trimmed.rsplit_once('/').unwrap_or((".", trimmed));
    let parent = if parent.is_empty() { "/" } else { parent };
    let (dir, name) = match dest {
        Some(st) if st.is_dir() => {
            let name = if crate::run::archive::names_contents(src) && src_meta.is_dir() {
                ".".to_string()
            } else {
                src_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("the source has no file name")?
            };
            (path.to_string(), name)
        }
        Some(_) if src_meta.is_dir() => {
            bail!("cannot copy a directory to a file: {container}:{path} is a file")
        }
        // A file replaced, or a new name (a directory is created with the source's contents).
        _ => (parent.to_string(), last.to_string()),
    };
    // Streamed (a tree may be larger than memory): a thread writes the archive into a pipe.
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let source = src_path.to_path_buf();
    let archiver = std::thread::spawn(move || {
        crate::executor::export_fs::write_tar_named(&source, &name, std::io::BufWriter::new(writer))
    });
    let sent = b.write_path(container, &dir, Box::new(reader));
    let archived = archiver
        .join()
        .map_err(|_| anyhow::anyhow!("archiving {src} failed"))?;
    // The receiving side's refusal first: it is why the writer would see a broken pipe.
    sent?;
    archived.with_context(|| format!("archiving {src}"))?;
    Ok(())
}

pub fn prune(_args: &PruneArgs, via: Via) -> anyhow::Result<Outcome> {
    let removed = via.with(|b| b.prune())?;
    let mut out = std::io::stdout().lock();
    if !removed.is_empty() {
        writeln!(out, "Deleted Containers:")?;
        for id in &removed {
            writeln!(out, "{id}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "Total reclaimed space: 0B")?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let v = json!({"ID": "abc", "State": {"Status": "running", "ExitCode": 0}});
        assert_eq!(
            render_template("{{.ID}}\\t{{.State.Status}}", &v),
            "abc\trunning"
        );
        assert_eq!(render_template("{{.State.ExitCode}}", &v), "0");
        assert_eq!(
            render_template("{{json .State}}", &v),
            "{\"Status\":\"running\",\"ExitCode\":0}"
        );
        assert_eq!(render_template("{{.Nope}}", &v), "<no value>");
    }

    #[test]
    fn container_paths() {
        assert_eq!(split_container_path("web:/etc/x"), Some(("web", "/etc/x")));
        assert_eq!(split_container_path("/tmp/a:b"), None);
        assert_eq!(split_container_path("./x"), None);
    }
}
