//! TLS for tests: [`TestPki`], a throw-away certificate authority that signs a broker certificate
//! (for `127.0.0.1` and `localhost`) and a client certificate, written as PEM files; and
//! [`TlsProxy`], a TLS-terminating TCP proxy in front of a plaintext broker.
//!
//! The proxy exists because Tansu 0.6.0 cannot serve TLS: `tansu broker` puts `--cert` and
//! `--key` in one clap group, so they exclude each other (tansu-cli 0.6.0,
//! `src/cli/broker.rs`), and the broker builds a `TlsAcceptor` it never uses
//! (`let _acceptor = ...` in tansu-broker 0.6.0, `src/broker.rs`), serving plain TCP either way.
//! The proxy plays the part of the broker's TLS listener, like stunnel would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::error::{Result, TestkitError};

/// A certificate authority made for one test, with a broker and a client certificate it signed.
/// The PEM files live in a temporary directory removed on drop.
///
/// ```no_run
/// let pki = connector_testkit::TestPki::generate()?;
/// assert!(pki.ca_file().exists());
/// # Ok::<(), connector_testkit::TestkitError>(())
/// ```
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// Generates the CA, a broker certificate for `127.0.0.1` and `localhost`, and a client
    /// certificate (`CN=connector-test-client`), and writes them with their keys as PEM files.
    ///
    /// # Errors
    /// When generating or writing fails.
    pub fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("test-pki-")
            .tempdir()
            .map_err(|e| TestkitError::io("create PKI dir", e))?;
        let tls = |what: &str, e: rcgen::Error| TestkitError::Tls(format!("{what}: {e}"));

        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| tls("CA", e))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "connector test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(|e| tls("CA key", e))?;
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| tls("CA certificate", e))?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).map_err(|e| tls(cn, e))?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().map_err(|e| tls(cn, e))?;
            let cert = params.signed_by(&key, &issuer).map_err(|e| tls(cn, e))?;
            Ok::<_, TestkitError>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf(vec![], "connector-test-client", ExtendedKeyUsagePurpose::ClientAuth)?;

        let pki = Self { dir };
        for (path, pem) in [
            (pki.ca_file(), ca_cert.pem()),
            (pki.server_cert_file(), server_cert),
            (pki.server_key_file(), server_key),
            (pki.client_cert_file(), client_cert),
            (pki.client_key_file(), client_key),
        ] {
            std::fs::write(&path, pem)
                .map_err(|e| TestkitError::io(format!("write {}", path.display()), e))?;
        }
        Ok(pki)
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The broker's certificate (PEM), for `127.0.0.1` and `localhost`.
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The broker's private key (PEM, PKCS#8).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate (PEM) for mutual TLS.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client certificate's private key (PEM, PKCS#8).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A rustls server configuration presenting the broker certificate; with
    /// `require_client_certificate`, clients must present a certificate this CA signed.
    ///
    /// # Errors
    /// When the files cannot be read back.
    pub fn server_config(&self, require_client_certificate: bool) -> Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TestkitError::Tls(format!("protocol versions: {e}")))?;
        let builder = if require_client_certificate {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&self.ca_file())? {
                roots.add(cert).map_err(|e| TestkitError::Tls(format!("CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TestkitError::Tls(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(self.server_key_file())
            .map_err(|e| TestkitError::Tls(format!("server key: {e}")))?;
        let config = builder
            .with_single_cert(read_certs(&self.server_cert_file())?, key)
            .map_err(|e| TestkitError::Tls(format!("server certificate: {e}")))?;
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| TestkitError::Tls(format!("{}: {e}", path.display())))
}

/// A TLS-terminating TCP proxy: accepts TLS connections and relays the plaintext to `target`.
/// Stops (and drops every relayed connection) when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    addr: SocketAddr,
    failed_handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every relay.
        self.task.abort();
    }
}

impl TlsProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(target: SocketAddr, config: Arc<ServerConfig>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TestkitError::io("bind TLS proxy", e))?;
        let addr = listener.local_addr().map_err(|e| TestkitError::io("TLS proxy address", e))?;
        let failed_handshakes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            TlsAcceptor::from(config),
            Arc::clone(&failed_handshakes),
        ));
        Ok(Self { addr, failed_handshakes, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS handshakes that failed so far (untrusted certificate, missing client certificate).
    pub fn failed_handshakes(&self) -> u64 {
        self.failed_handshakes.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    acceptor: TlsAcceptor,
    failed: Arc<AtomicU64>,
) {
    let mut relays = JoinSet::new();
    loop {
        let Ok((client, peer)) = listener.accept().await else { continue };
        while relays.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let failed = Arc::clone(&failed);
        relays.spawn(async move {
            let _ = client.set_nodelay(true);
            let mut tls = match acceptor.accept(client).await {
                Ok(tls) => tls,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, error = %e, "TLS proxy: handshake failed");
                    return;
                }
            };
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                debug!(%peer, %target, "TLS proxy: upstream not reachable");
                return;
            };
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        });
    }
}
