//! Optional TLS (rustls, ring crypto) for gRPC and for the workers' ring: the PEM files a
//! process is given (`--tls-cert`, `--tls-key`, `--tls-ca`), checked once at start, turned into
//! tonic's and rustls' configurations.
//!
//! The CA is what peers are checked against: a coordinator given one requires workers to show
//! a certificate it signed (mutual TLS); a worker given one checks the coordinator's. Ring
//! links are mutual whenever a worker has all three files: the dialer checks that the
//! certificate of the rank it dials names the address that rank advertises.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    Incomplete,
    #[error("TLS handshake with {peer}: {cause}")]
    Handshake { peer: String, cause: std::io::Error },
}

/// The PEM files of one process: the `--tls-*` options of the coordinator and the worker.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate chain (PEM) of this process. A coordinator (or worker daemon) with
    /// --tls-key serves gRPC over TLS, and workers join it at https://; a worker shows it to
    /// a coordinator that requires client certificates and to its ring neighbours. Local
    /// workers and daemons are given the coordinator's files, so for local workers it must
    /// name 127.0.0.1; ring neighbours check that it names the address its holder advertises.
    #[arg(long = "tls-cert", value_name = "FILE", help_heading = "Security")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", help_heading = "Security")]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) peers are checked against: a coordinator takes only workers
    /// showing a certificate it signed (mutual TLS); a worker checks the coordinator and its
    /// ring neighbours with it (ring links use mutual TLS when a worker has all three files).
    #[arg(long = "tls-ca", value_name = "FILE", help_heading = "Security")]
    pub ca: Option<PathBuf>,
}

/// Loaded certificates and key.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    ca_pem: Option<Vec<u8>>,
    certs: Vec<CertificateDer<'static>>,
    key: Option<Arc<PrivateKeyDer<'static>>>,
    roots: Option<Arc<rustls::RootCertStore>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.cert_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certs_of(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            reason: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Whether any TLS option was given.
    pub fn any(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }

    /// Reads and checks the files; `None` when no TLS option was given.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        if !self.any() {
            return Ok(None);
        }
        let (cert_pem, certs, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let (cert, key_pem) = (read(c)?, read(k)?);
                let certs = certs_of(c, &cert)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
                    path: k.clone(),
                    reason: format!("not a PEM private key: {e}"),
                })?;
                (Some((cert, key_pem)), certs, Some(Arc::new(key)))
            }
            (None, None) => (None, Vec::new(), None),
            _ => return Err(TlsError::Incomplete),
        };
        let (ca_pem, roots) = match &self.ca {
            Some(path) => {
                let pem = read(path)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs_of(path, &pem)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        path: path.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                (Some(pem), Some(Arc::new(roots)))
            }
            None => (None, None),
        };
        let tls = Tls {
            cert_pem,
            ca_pem,
            certs,
            key,
            roots,
        };
        // Built once here so a bad key or CA fails at start, naming the files.
        if tls.key.is_some() {
            tls.ring_server().map_err(|e| {
                TlsError::Config(format!(
                    "{} with {}: {e}",
                    self.cert.as_deref().unwrap_or(Path::new("?")).display(),
                    self.key.as_deref().unwrap_or(Path::new("?")).display()
                ))
            })?;
        }
        Ok(Some(tls))
    }

    /// The options again, for a worker process this one starts.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        for (flag, path) in [
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
            ("--tls-ca", &self.ca),
        ] {
            if let Some(p) = path {
                out.push(flag.into());
                out.push(p.clone().into_os_string());
            }
        }
        out
    }
}

impl Tls {
    /// For a gRPC server: its identity, and client certificates required when a CA is given.
    pub fn grpc_server(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        let (cert, key) = self
            .cert_pem
            .as_ref()
            .ok_or_else(|| TlsError::Config("serving TLS needs --tls-cert and --tls-key".into()))?;
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &self.ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Ok(config)
    }

    /// For a gRPC client: the CA to check the server against, and this process's identity
    /// when it has one (for a server that requires client certificates).
    pub fn grpc_client(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.cert_pem {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }

    /// Whether ring links can use TLS: an identity to show and a CA to check peers against.
    pub fn for_ring(&self) -> bool {
        self.key.is_some() && self.roots.is_some()
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| TlsError::Config("no --tls-key".into()))?;
        Ok((self.certs.clone(), key.clone_key()))
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        self.roots
            .clone()
            .ok_or_else(|| TlsError::Config("no --tls-ca".into()))
    }

    fn ring_server(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (certs, key) = self.identity()?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.roots {
            Some(roots) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // The ring's accepted link only ever carries data towards this rank.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    fn ring_client(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let (certs, key) = self.identity()?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// The TLS client end of a ring link this rank dialed to `host` (the address the peer
    /// advertised), handshake done.
    pub fn ring_dial(
        &self,
        stream: TcpStream,
        host: IpAddr,
    ) -> Result<Box<dyn Write + Send>, TlsError> {
        let config = self.ring_client()?;
        let conn = rustls::ClientConnection::new(config, ServerName::IpAddress(host.into()))
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        handshake(&mut tls.conn, &mut tls.sock, &host.to_string())?;
        Ok(Box::new(tls))
    }

    /// The TLS server end of a ring link this rank accepted from `peer`, handshake done.
    pub fn ring_accept(
        &self,
        stream: TcpStream,
        peer: &str,
    ) -> Result<Box<dyn Read + Send>, TlsError> {
        let conn = rustls::ServerConnection::new(self.ring_server()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        handshake(&mut tls.conn, &mut tls.sock, peer)?;
        Ok(Box::new(tls))
    }
}

fn handshake<C, S>(conn: &mut C, sock: &mut TcpStream, peer: &str) -> Result<(), TlsError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    while conn.is_handshaking() {
        conn.complete_io(sock)
            .map_err(|source| TlsError::Handshake {
                peer: peer.to_string(),
                cause: source,
            })?;
    }
    // Flush the last handshake bytes (a client's Finished) before the link carries data.
    while conn.wants_write() {
        conn.complete_io(sock)
            .map_err(|source| TlsError::Handshake {
                peer: peer.to_string(),
                cause: source,
            })?;
    }
    Ok(())
}
