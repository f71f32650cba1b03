//! `kiln daemon`: serve the Docker-compatible API (see [`crate::daemon`]). The listen
//! addresses are the global `-H/--host` values.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::Outcome;
use crate::daemon::{Config, TlsFiles};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Require mutual TLS on TCP listeners (clients need a certificate signed by --tlscacert).
    #[arg(long)]
    pub tlsverify: bool,
    /// Trust client certificates signed by this CA.
    #[arg(long, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// The server's TLS certificate.
    #[arg(long, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// The server's TLS key.
    #[arg(long, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Allow plain TCP without TLS, on a loopback address only.
    #[arg(long)]
    pub insecure_tcp: bool,
}

pub fn run(args: &DaemonArgs, root: &std::path::Path, hosts: &[String]) -> anyhow::Result<Outcome> {
    let tls = match (&args.tlscacert, &args.tlscert, &args.tlskey) {
        (Some(ca), Some(cert), Some(key)) if args.tlsverify => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None) if !args.tlsverify => None,
        _ => bail!("mutual TLS needs all of --tlsverify --tlscacert --tlscert --tlskey"),
    };
    crate::daemon::run(Config {
        root: root.to_path_buf(),
        hosts: hosts.to_vec(),
        tls,
        insecure_tcp: args.insecure_tcp,
    })?;
    Ok(Outcome::Success)
}
