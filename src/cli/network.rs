//! `kiln network create|ls|inspect|rm|prune`: docker's flags and output over
//! [`crate::run::network::Networks`].

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::format::table;
use super::Outcome;
use crate::engine::networks::inspect_json;
use crate::run::network::{CreateOptions, NetworkInfo, Networks};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(name = "ls", visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks.
    Inspect(InspectArgs),
    /// Remove one or more networks.
    #[command(name = "rm", visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove all unused networks.
    Prune(PruneArgs),
    /// Connect a running container to a network.
    Connect(ConnectArgs),
    /// Disconnect a container from a network.
    Disconnect(DisconnectArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Add a network-scoped alias for the container.
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// IPv4 address for the container on this network.
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    pub network: String,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Accepted for docker compatibility.
    #[arg(short, long)]
    pub force: bool,
    pub network: String,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the network (only "bridge").
    #[arg(short, long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR format (IPv4), e.g. 10.10.0.0/24.
    #[arg(long)]
    pub subnet: Option<String>,
    /// IPv4 gateway for the subnet.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on the network (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display network IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output: "table", "json", or a template with {{.ID}} {{.Name}} {{.Driver}}
    /// {{.Scope}} {{.Internal}} {{.CreatedAt}} {{.Labels}}.
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(command: &NetworkCommand, root: &Path) -> anyhow::Result<Outcome> {
    run_with(command, &Networks::open(root)?)
}

/// Where network commands go: the local networks, or a daemon (`kiln -H`). Errors are the
/// bare messages (printed as `kiln: error: …` either way).
pub trait NetworkBackend {
    fn create(&self, name: &str, opts: &CreateOptions) -> anyhow::Result<String>;
    fn list(&self) -> anyhow::Result<Vec<NetworkInfo>>;
    /// docker's `network inspect` object.
    fn inspect(&self, name: &str) -> anyhow::Result<serde_json::Value>;
    fn remove(&self, name: &str) -> anyhow::Result<()>;
    /// Names of the removed networks.
    fn prune(&self) -> anyhow::Result<Vec<String>>;
    /// A running container joins a network.
    fn connect(&self, a: &ConnectArgs) -> anyhow::Result<()>;
    fn disconnect(&self, a: &DisconnectArgs) -> anyhow::Result<()>;
}

impl NetworkBackend for Networks {
    fn create(&self, name: &str, opts: &CreateOptions) -> anyhow::Result<String> {
        Ok(Networks::create(self, name, opts)?.id)
    }
    fn list(&self) -> anyhow::Result<Vec<NetworkInfo>> {
        Ok(Networks::list(self)?)
    }
    fn inspect(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(inspect_json(&Networks::inspect(self, name)?))
    }
    fn remove(&self, name: &str) -> anyhow::Result<()> {
        Ok(Networks::remove(self, name)?)
    }
    fn prune(&self) -> anyhow::Result<Vec<String>> {
        Ok(Networks::prune(self)?)
    }
    fn connect(&self, a: &ConnectArgs) -> anyhow::Result<()> {
        let root = self.root();
        let c = crate::run::state::Containers::open(root)?.find(&a.container)?;
        crate::run::net::connect_running(root, &c, &a.network, a.aliases.clone(), a.ip)?;
        Ok(())
    }
    fn disconnect(&self, a: &DisconnectArgs) -> anyhow::Result<()> {
        let root = self.root();
        let c = crate::run::state::Containers::open(root)?.find(&a.container)?;
        crate::run::net::disconnect(root, &c, &a.network)?;
        Ok(())
    }
}

/// Runs a network command against `nets`.
pub fn run_with(command: &NetworkCommand, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    match command {
        NetworkCommand::Create(a) => create(a, nets),
        NetworkCommand::Ls(a) => ls(a, nets),
        NetworkCommand::Inspect(a) => inspect(a, nets),
        NetworkCommand::Rm(a) => rm(a, nets),
        NetworkCommand::Prune(a) => prune(a, nets),
        NetworkCommand::Connect(a) => nets.connect(a).map(|()| Outcome::Success),
        NetworkCommand::Disconnect(a) => nets.disconnect(a).map(|()| Outcome::Success),
    }
}

fn create(a: &CreateArgs, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            anyhow::bail!("invalid label {l:?}: the key is empty");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let subnet = a
        .subnet
        .as_deref()
        .map(|s| {
            s.parse().with_context(|| {
                format!("invalid --subnet {s:?}: expected an IPv4 CIDR like 10.10.0.0/24")
            })
        })
        .transpose()?;
    let gateway = a
        .gateway
        .as_deref()
        .map(|s| {
            s.parse()
                .with_context(|| format!("invalid --gateway {s:?}: expected an IPv4 address"))
        })
        .transpose()?;
    let opts = CreateOptions {
        driver: Some(a.driver.clone()),
        subnet,
        gateway,
        internal: a.internal,
        labels,
    };
    let id = nets.create(&a.name, &opts)?;
    println!("{id}");
    Ok(Outcome::Success)
}

fn ls(a: &LsArgs, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    let all = nets.list()?;
    let id = |n: &NetworkInfo| {
        if a.no_trunc {
            n.id.clone()
        } else {
            n.short_id().to_string()
        }
    };
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for n in &all {
            writeln!(out, "{}", id(n))?;
        }
        return Ok(Outcome::Success);
    }
    match a.format.as_deref() {
        None | Some("table") => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|n| {
                    vec![
                        id(n),
                        n.name.clone(),
                        n.driver.clone(),
                        n.scope().to_string(),
                    ]
                })
                .collect();
            out.write_all(table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows).as_bytes())?;
        }
        Some("json") => {
            for n in &all {
                let v = json!({
                    "CreatedAt": n.created, "Driver": n.driver, "ID": id(n),
                    "IPv6": "false", "Internal": n.internal.to_string(), "Labels": labels(n),
                    "Name": n.name, "Scope": n.scope(),
                });
                writeln!(out, "{v}")?;
            }
        }
        Some(template) => {
            let (header, template) = match template.strip_prefix("table ") {
                Some(t) => (true, t),
                None => (false, template),
            };
            let fields = |n: &NetworkInfo| -> Vec<(&str, String)> {
                vec![
                    ("ID", id(n)),
                    ("Name", n.name.clone()),
                    ("Driver", n.driver.clone()),
                    ("Scope", n.scope().to_string()),
                    ("Internal", n.internal.to_string()),
                    ("IPv6", "false".to_string()),
                    ("CreatedAt", n.created.clone()),
                    ("Labels", labels(n)),
                ]
            };
            let render = |t: &str, vals: &[(&str, String)]| {
                let mut s = t.replace("\\t", "\t");
                for (k, v) in vals {
                    s = s.replace(&format!("{{{{.{k}}}}}"), v);
                    s = s.replace(&format!("{{{{ .{k} }}}}"), v);
                }
                s
            };
            if header {
                let names: Vec<(&str, String)> = [
                    ("ID", "NETWORK ID"),
                    ("Name", "NAME"),
                    ("Driver", "DRIVER"),
                    ("Scope", "SCOPE"),
                    ("Internal", "INTERNAL"),
                    ("IPv6", "IPV6"),
                    ("CreatedAt", "CREATED AT"),
                    ("Labels", "LABELS"),
                ]
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
                writeln!(out, "{}", render(template, &names))?;
            }
            for n in &all {
                writeln!(out, "{}", render(template, &fields(n)))?;
            }
        }
    }
    Ok(Outcome::Success)
}

fn labels(n: &NetworkInfo) -> String {
    n.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn inspect(a: &InspectArgs, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.networks {
        match nets.inspect(name) {
            Ok(n) => found.push(n),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&found, &mut ser)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    writeln!(out)?;
    for e in &errors {
        eprintln!("kiln: error: {e}");
    }
    Ok(if errors.is_empty() {
        Outcome::Success
    } else {
        Outcome::Problems
    })
}

fn rm(a: &RmArgs, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    let mut failed = false;
    for name in &a.networks {
        match nets.remove(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("kiln: error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

fn prune(a: &PruneArgs, nets: &dyn NetworkBackend) -> anyhow::Result<Outcome> {
    if !a.force {
        eprint!("WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!();
            return Ok(Outcome::Success);
        }
    }
    let removed = nets.prune()?;
    if !removed.is_empty() {
        println!("Deleted Networks:");
        for n in removed {
            println!("{n}");
        }
    }
    Ok(Outcome::Success)
}
