//! Where the API listens: `unix:///path` (created 0660, group `kiln` when that group
//! exists; a stale socket file is replaced, a live one refused) and `tcp://addr:port`, which
//! needs mutual TLS (rustls, client certificates checked against `--tlscacert`) unless the
//! address is loopback and `--insecure-tcp` is given.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::{Config, DaemonError, TlsFiles};

/// A connection's byte stream, whatever the transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Stream = Box<dyn Io>;

/// A bound listener.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, SocketAddr, Option<TlsAcceptor>),
}

/// An accepted connection, before its TLS handshake.
pub enum Accepted {
    Plain(Stream),
    Tls(TcpStream, TlsAcceptor),
}

impl Accepted {
    /// Completes the TLS handshake (a client without a valid certificate fails here).
    pub async fn ready(self) -> std::io::Result<Stream> {
        match self {
            Accepted::Plain(s) => Ok(s),
            Accepted::Tls(tcp, acceptor) => Ok(Box::new(acceptor.accept(tcp).await?)),
        }
    }
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
            Listener::Tcp(_, a, Some(_)) => format!("tcp://{a} (mutual TLS)"),
            Listener::Tcp(_, a, None) => format!("tcp://{a} (insecure, loopback)"),
        }
    }

    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Unix(l, _) => Ok(Accepted::Plain(Box::new(l.accept().await?.0))),
            Listener::Tcp(l, _, tls) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(match tls {
                    Some(a) => Accepted::Tls(s, a.clone()),
                    None => Accepted::Plain(Box::new(s)),
                })
            }
        }
    }

    /// Stops listening; a Unix socket file is removed.
    pub fn close(self) {
        if let Listener::Unix(l, path) = self {
            drop(l);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Binds one `-H` address under the rules above.
pub async fn bind(host: &str, config: &Config) -> Result<Listener, DaemonError> {
    let bad = |message: &str| DaemonError::Host {
        host: host.to_string(),
        message: message.to_string(),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(bad("expected unix:///absolute/path"));
        }
        return bind_unix(Path::new(path)).await;
    }
    let Some(addr) = host.strip_prefix("tcp://") else {
        return Err(bad("expected unix:///path or tcp://ADDR:PORT"));
    };
    let addr = addr.trim_end_matches('/');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(&format!("cannot resolve the address: {e}")))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(bad("the address resolves to nothing"));
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    let tls = match (&config.tls, config.insecure_tcp && loopback) {
        (Some(files), _) => Some(acceptor(files)?),
        (None, true) => None,
        (None, false) => {
            return Err(DaemonError::Refused(format!(
                "refusing to listen on {host} without mutual TLS: give --tlsverify --tlscacert \
                 --tlscert --tlskey (plain TCP is allowed only on a loopback address, with \
                 --insecure-tcp)"
            )))
        }
    };
    let listener = TcpListener::bind(first)
        .await
        .map_err(|source| DaemonError::Listen {
            what: host.to_string(),
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(first);
    Ok(Listener::Tcp(listener, bound, tls))
}

async fn bind_unix(path: &Path) -> Result<Listener, DaemonError> {
    let listen_err = |source| DaemonError::Listen {
        what: format!("unix://{}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::Refused(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::Refused(format!(
                "another daemon is listening on unix://{}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
    match nix::unistd::Group::from_name("kiln") {
        Ok(Some(group)) => {
            if let Err(e) = nix::unistd::chown(path, None, Some(group.gid)) {
                tracing::warn!("cannot give {} to group kiln: {e}", path.display());
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot look up group kiln: {e}"),
    }
    Ok(Listener::Unix(listener, path.to_path_buf()))
}

/// A TLS acceptor that requires client certificates signed by the CA.
fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, DaemonError> {
    let tls = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        DaemonError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls("cannot read certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls("bad certificate in", &files.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls("cannot read private key", &files.key, &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| tls("cannot read CA", &files.ca, &e))?
    {
        let ca = ca.map_err(|e| tls("bad CA certificate in", &files.ca, &e))?;
        roots
            .add(ca)
            .map_err(|e| tls("unusable CA certificate in", &files.ca, &e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| DaemonError::Tls(format!("client verifier: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DaemonError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key do not work together:", &files.cert, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
