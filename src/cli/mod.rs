//! The command line: clap structs (docker's flag conventions) parsed into validated options,
//! then handed to one function per command. `main.rs` only calls [`main`].

mod archive;
mod build;
mod builder;
mod check;
mod client;
mod client_containers;
mod container;
mod container_backend;
mod daemon;
mod engine;
pub(crate) mod format;
mod images;
mod network;
mod progress;
mod registry;
mod system;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: build, run and ship container images.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Directory for all of kiln's state (images, cache, containers).
    #[arg(
        long,
        global = true,
        env = "KILN_ROOT",
        default_value = "/var/lib/kiln",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    /// The daemon to talk to (`unix:///run/kiln/kiln.sock`, `tcp://HOST:PORT`); for
    /// `kiln daemon`, where to listen (repeatable).
    #[arg(
        short = 'H',
        long = "host",
        global = true,
        env = "KILN_HOST",
        value_name = "URL"
    )]
    pub host: Vec<String>,

    /// Verbose logs on stderr.
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile.
    Build(Box<build::BuildArgs>),
    /// Parse and lint a Dockerfile without building it (like `docker build --check`).
    Check(check::CheckArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show the history of an image.
    History(images::HistoryArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.
    Tag(images::TagArgs),
    /// Remove one or more images.
    Rmi(images::RmiArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default).
    Save(archive::SaveArgs),
    /// Load an image from a tar archive or STDIN.
    Load(archive::LoadArgs),
    /// Download an image from a registry.
    Pull(registry::PullArgs),
    /// Upload an image to a registry.
    Push(registry::PushArgs),
    /// Log in to a registry.
    Login(registry::LoginArgs),
    /// Log out from a registry.
    Logout(registry::LogoutArgs),
    /// Manage builds.
    Builder {
        #[command(subcommand)]
        command: builder::BuilderCommand,
    },
    /// Serve the Docker-compatible API (the docker CLI and SDKs can drive kiln).
    Daemon(daemon::DaemonArgs),
    /// Manage networks.
    Network {
        #[command(subcommand)]
        command: network::NetworkCommand,
    },
    /// Manage kiln.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Create and run a new container from an image.
    Run(Box<container::RunArgs>),
    /// Create a new container.
    Create(Box<container::CreateArgs>),
    /// Start one or more stopped containers.
    Start(container::StartArgs),
    /// Stop one or more running containers.
    Stop(container::StopArgs),
    /// Kill one or more running containers.
    Kill(container::KillArgs),
    /// Restart one or more containers.
    Restart(container::StopArgs),
    /// Remove one or more containers.
    Rm(container::RmArgs),
    /// List containers.
    Ps(container::PsArgs),
    /// Fetch the logs of a container.
    Logs(container::LogsArgs),
    /// Execute a command in a running container.
    Exec(container::ExecArgs),
    /// Attach standard input, output and error to a running container.
    Attach(container::AttachArgs),
    /// Block until one or more containers stop, then print their exit codes.
    Wait(container::ContainersArgs),
    /// Display detailed information on one or more containers.
    Inspect(container::InspectArgs),
    /// List port mappings of a container.
    Port(container::PortArgs),
    /// Copy files between a container and the host.
    Cp(container::CpArgs),
    /// Manage containers.
    Container {
        #[command(subcommand)]
        command: Box<container::ContainerCommand>,
    },
    /// Manage volumes.
    Volume {
        #[command(subcommand)]
        command: volume::VolumeCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    #[command(flatten)]
    Common(images::ImageCommand),
    /// Save one or more images to a tar archive.
    Save(archive::SaveArgs),
    /// Load an image from a tar archive or STDIN.
    Load(archive::LoadArgs),
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show disk usage.
    Df,
}

/// How a command ended, mapped to the process exit code.
pub enum Outcome {
    /// Everything as asked.
    Success,
    /// The command ran, and found problems (exit code 1).
    Problems,
    /// This exit code (a container's, or docker's 125/126/127).
    Exit(u8),
}

fn init_logging(debug: bool) {
    let filter = if debug { "kiln=debug" } else { "kiln=warn" };
    let env_filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Parses the command line and runs the command. Exit codes: 0 success, 1 problems found
/// (or the command failed), 2 bad usage (clap).
pub fn main() -> ExitCode {
    // The sandbox helper (`kiln __sandbox …`, re-exec'd by RUN) must stay single-threaded and
    // skip everything else: handle it before any parsing or logging set-up.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__sandbox") {
        crate::executor::sandbox::child_main(&argv[2..]);
    }
    if argv.get(1).map(String::as_str) == Some(crate::run::monitor::MONITOR_ARG) {
        crate::run::monitor::monitor_main(&argv[2..]);
    }
    let cli = Cli::parse();
    init_logging(cli.debug);
    tracing::debug!(root = %cli.root.display(), "starting");
    let result = run(&cli);
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    if let Some(api) = client::daemon_client(cli)? {
        return client::run(cli, api);
    }
    let engine = || engine::Engine::open(&cli.root);
    match &cli.command {
        Command::Check(args) => check::run(args, &cli.root),
        Command::Build(args) => build::run(args, &cli.root),
        Command::Images(args) => images::images(args, &engine()?),
        Command::History(args) => images::history(args, &engine()?),
        Command::Tag(args) => images::tag(args, &engine()?),
        Command::Rmi(args) => images::rmi(args, &engine()?),
        Command::Save(args) => archive::save(args, &engine()?),
        Command::Load(args) => archive::load(args, &engine()?),
        Command::Pull(args) => registry::pull(args, &engine()?),
        Command::Push(args) => registry::push(args, &engine()?),
        Command::Login(args) => registry::login(args),
        Command::Logout(args) => registry::logout(args),
        Command::Image { command } => match command {
            ImageCommand::Common(c) => match c {
                images::ImageCommand::Ls(args) => images::images(args, &engine()?),
                images::ImageCommand::Inspect(args) => images::inspect(args, &engine()?),
                images::ImageCommand::History(args) => images::history(args, &engine()?),
                images::ImageCommand::Tag(args) => images::tag(args, &engine()?),
                images::ImageCommand::Rm(args) => images::rmi(args, &engine()?),
                images::ImageCommand::Prune(args) => images::prune(args, &engine()?),
            },
            ImageCommand::Save(args) => archive::save(args, &engine()?),
            ImageCommand::Load(args) => archive::load(args, &engine()?),
        },
        Command::Builder { command } => match command {
            builder::BuilderCommand::Prune(args) => builder::prune(args, &engine()?),
        },
        Command::Daemon(args) => daemon::run(args, &cli.root, &cli.host),
        Command::Network { command } => network::run(command, &cli.root),
        Command::System { command } => match command {
            SystemCommand::Df => system::df(container::Via::Local(&cli.root)),
        },
        Command::Run(a) => container::run(a, container::Via::Local(&cli.root)),
        Command::Create(a) => container::create_cmd(a, container::Via::Local(&cli.root)),
        Command::Start(a) => container::start(a, container::Via::Local(&cli.root)),
        Command::Stop(a) => container::stop(a, container::Via::Local(&cli.root)),
        Command::Kill(a) => container::kill(a, container::Via::Local(&cli.root)),
        Command::Restart(a) => container::restart(a, container::Via::Local(&cli.root)),
        Command::Rm(a) => container::rm(a, container::Via::Local(&cli.root)),
        Command::Ps(a) => container::ps(a, container::Via::Local(&cli.root)),
        Command::Logs(a) => container::logs_cmd(a, container::Via::Local(&cli.root)),
        Command::Exec(a) => container::exec_cmd(a, container::Via::Local(&cli.root)),
        Command::Attach(a) => container::attach(a, container::Via::Local(&cli.root)),
        Command::Wait(a) => container::wait(a, container::Via::Local(&cli.root)),
        Command::Inspect(a) => container::inspect(a, container::Via::Local(&cli.root)),
        Command::Port(a) => container::port(a, container::Via::Local(&cli.root)),
        Command::Cp(a) => container::cp(a, container::Via::Local(&cli.root)),
        Command::Container { command } => {
            container::dispatch(command, container::Via::Local(&cli.root))
        }
        Command::Volume { command } => {
            volume::dispatch(command, &container_backend::Local::new(&cli.root))
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses `KEY=VALUE` (docker's `--build-arg`; a bare `KEY` takes the value from the
/// environment, and is skipped when the environment lacks it).
pub fn parse_key_value(s: &str) -> Result<(String, Option<String>), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid argument {s:?}: the name is empty")),
        Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
        None if s.is_empty() => Err("invalid argument \"\": expected KEY=VALUE".into()),
        None => Ok((s.to_string(), std::env::var(s).ok())),
    }
}
