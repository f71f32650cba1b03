//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`: docker's flags and output, with
//! docker-style per-layer progress bars on a terminal (plain status lines otherwise).

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::build::CompressionArg;
use super::engine::Engine;
use super::Outcome;
use crate::cache::export::LayerCompression;
use crate::cache::Digest;
use crate::graph::Platform;
use crate::push::client::{parse_reference, runtime, Registry, RegistrySettings};
use crate::push::credentials::{self, Credentials, DockerConfig};
use crate::push::progress::{Progress, Silent};
use crate::push::pull::{self, familiar, PullOptions};
use crate::push::push::{self as pusher, PushOptions};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pull from a multi-platform image (os/arch[/variant]; default: the host's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Suppress verbose output (print only the image name).
    #[arg(short, long)]
    pub quiet: bool,
    /// Allow plain HTTP (and unverified TLS) for this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub image: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Suppress verbose output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Layer compression (default: keep compressed layers, gzip the others).
    #[arg(long, value_enum, value_name = "gzip|zstd|uncompressed")]
    pub compression: Option<CompressionArg>,
    /// Allow plain HTTP (and unverified TLS) for this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// The image to push (a name in the store).
    #[arg(value_name = "NAME[:TAG]")]
    pub image: String,
    /// Push under another name than IMAGE (like `podman push SRC DEST`).
    #[arg(value_name = "DESTINATION")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (insecure: use --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Take the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Allow plain HTTP (and unverified TLS) for this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// The progress display of pull and push: bars on a terminal, status lines otherwise.
pub fn transfer_progress(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(Silent)
    } else if std::io::stdout().is_terminal() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress {
            out: Mutex::new(std::io::stdout()),
        })
    }
}

/// Plain lines (`abcdef012345: Pull complete`), without the byte-by-byte updates.
struct LineProgress {
    out: Mutex<std::io::Stdout>,
}

impl LineProgress {
    fn line(&self, s: &str) {
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{s}");
        }
    }
}

impl Progress for LineProgress {
    fn start(&self, blob: &Digest, _size: u64, status: &str) {
        self.line(&format!("{}: {status}", blob.short()));
    }
    fn status(&self, blob: &Digest, status: &str) {
        if status != "Downloading" && status != "Pushing" {
            self.line(&format!("{}: {status}", blob.short()));
        }
    }
    fn message(&self, text: &str) {
        self.line(text);
    }
}

/// One indicatif bar per blob.
struct BarProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl BarProgress {
    fn new() -> BarProgress {
        BarProgress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn with_bar(&self, blob: &Digest, f: impl FnOnce(&ProgressBar)) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(b) = bars.get(blob) {
                f(b);
            }
        }
    }
}

fn idle_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg:<12} [{bar:50}] {bytes}/{total_bytes}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for BarProgress {
    fn start(&self, blob: &Digest, size: u64, status: &str) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(idle_style());
        bar.set_prefix(blob.short().to_string());
        bar.set_message(status.to_string());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(blob.clone(), bar);
        }
    }
    fn advance(&self, blob: &Digest, bytes: u64) {
        self.with_bar(blob, |b| b.inc(bytes));
    }
    fn restart(&self, blob: &Digest) {
        self.with_bar(blob, |b| b.set_position(0));
    }
    fn status(&self, blob: &Digest, status: &str) {
        self.with_bar(blob, |b| {
            if status == "Downloading" || status == "Pushing" {
                b.set_style(bar_style());
                b.set_message(status.to_string());
            } else {
                b.set_style(idle_style());
                b.set_message(status.to_string());
                b.tick();
            }
        });
    }
    fn message(&self, text: &str) {
        let _ = self.multi.println(text);
    }
}

fn platform(arg: Option<&str>) -> anyhow::Result<Platform> {
    Ok(match arg {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    })
}

pub fn pull(args: &PullArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let reference = parse_reference(&args.image)?;
    let settings = RegistrySettings::load(&args.insecure_registry)?;
    let progress = transfer_progress(args.quiet);
    let snapshots = engine.snapshotter()?;
    let opts = PullOptions {
        platform: platform(args.platform.as_deref())?,
        settings: &settings,
        progress: progress.as_ref(),
        snapshots: Some(snapshots.as_ref()),
    };
    let pulled = pull::pull(&engine.store, &reference, &opts)?;
    drop(progress);
    println!("{}", pulled.reference);
    Ok(Outcome::Success)
}

pub fn push(args: &PushArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let image = engine.store.lookup(&args.image)?;
    let target = parse_reference(args.destination.as_deref().unwrap_or(&args.image))?;
    let settings = RegistrySettings::load(&args.insecure_registry)?;
    let progress = transfer_progress(args.quiet);
    let opts = PushOptions {
        settings: &settings,
        progress: progress.as_ref(),
        compression: args
            .compression
            .map(CompressionArg::layer)
            .unwrap_or(LayerCompression::Keep),
    };
    let pushed = pusher::push(&engine.store, &image.manifest_digest, &target, &opts)?;
    drop(progress);
    if args.quiet {
        println!("{}", familiar(&pushed.reference));
    }
    Ok(Outcome::Success)
}

/// `https://host/v2/` or `host` → `host`; nothing → Docker Hub.
fn server_host(server: Option<&str>) -> String {
    credentials::registry_host(server.unwrap_or_default())
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a password from the terminal without echoing it.
fn prompt_hidden(label: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning off echo")?;
    let result = prompt(label);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    result
}

pub fn login(args: &LoginArgs) -> anyhow::Result<Outcome> {
    let host = server_host(args.server.as_deref());
    let interactive = std::io::stdin().is_terminal();
    if args.password.is_some() && args.password_stdin {
        bail!("--password and --password-stdin are mutually exclusive");
    }
    if args.password_stdin && args.username.is_none() {
        bail!("must provide --username with --password-stdin");
    }
    let username = match &args.username {
        Some(u) => u.trim().to_string(),
        None if interactive => prompt("Username: ")?,
        None => bail!("cannot perform an interactive login from a non TTY device"),
    };
    if username.is_empty() {
        bail!("username is empty");
    }
    let password = if let Some(p) = &args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if args.password_stdin {
        let mut p = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut p)
            .context("reading the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if interactive {
        prompt_hidden("Password: ")?
    } else {
        bail!("cannot perform an interactive login from a non TTY device");
    };
    if password.is_empty() {
        bail!("password is empty");
    }
    let creds = Credentials::basic(username, password);
    let settings = RegistrySettings::load(&args.insecure_registry)?;
    let rt = runtime()?;
    let outcome = rt
        .block_on(async {
            let registry = Registry::connect_with(&host, &settings, Some(&creds)).await?;
            registry.verify_login(&creds).await
        })
        .with_context(|| format!("login to {host} failed"))?;
    // Like docker: a refresh token from the token server is stored instead of the password.
    let creds = match outcome.identity_token {
        Some(token) => Credentials::identity_token(creds.username, token),
        None => creds,
    };
    DockerConfig::from_env()?
        .store(&host, &creds)
        .with_context(|| format!("storing the credentials for {host}"))?;
    println!("Login Succeeded");
    Ok(Outcome::Success)
}

pub fn logout(args: &LogoutArgs) -> anyhow::Result<Outcome> {
    let host = server_host(args.server.as_deref());
    let key = credentials::server_key(&host);
    let config = DockerConfig::from_env()?;
    if config.lookup(&host)?.is_none() {
        println!("Not logged in to {key}");
        return Ok(Outcome::Success);
    }
    println!("Removing login credentials for {key}");
    config.erase(&host)?;
    Ok(Outcome::Success)
}
