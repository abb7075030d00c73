//! TLS client configurations from PEM files, shared by the Kafka client and the MQTT connectors:
//! trusted roots (a CA file, or the operating system's store), an optional client certificate and
//! key, and optionally a fixed name to verify the server's certificate against. rustls with the
//! ring provider. Errors name the config key and the file, never a key's contents.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, Result};

/// A PEM file and the config key it came from (for error messages).
#[derive(Debug, Clone, Copy)]
pub struct PemFile<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its config key, e.g. `kafka.ssl_ca_file`.
    pub key: &'a str,
}

impl<'a> PemFile<'a> {
    /// The file at `path`, if one is set, under config key `key`.
    pub fn optional(path: Option<&'a Path>, key: &'a str) -> Option<Self> {
        path.map(|path| Self { path, key })
    }
}

/// What a TLS client configuration is made of.
///
/// ```
/// use std::path::Path;
/// use connector_core::tls::{client_config, PemFile, TlsFiles};
///
/// let files = TlsFiles {
///     ca: Some(PemFile { path: Path::new("/no/such/ca.pem"), key: "tls.ca_file" }),
///     ..TlsFiles::default()
/// };
/// let err = client_config(&files).unwrap_err().to_string();
/// assert!(err.contains("tls.ca_file") && err.contains("/no/such/ca.pem"), "{err}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TlsFiles<'a> {
    /// CA certificates to trust; the operating system's roots when `None`.
    pub ca: Option<PemFile<'a>>,
    /// Client certificate chain and its private key.
    pub client: Option<(PemFile<'a>, PemFile<'a>)>,
    /// Verify the server's certificate against this name instead of the host connected to.
    pub verify_name: Option<ServerName<'static>>,
}

/// The rustls client configuration for `files`.
///
/// # Errors
/// [`Error::Config`] at the file's key when a file cannot be read or holds nothing usable;
/// fatal when the system store has no usable root.
pub fn client_config(files: &TlsFiles<'_>) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    match files.ca {
        Some(ca) => {
            for cert in read_certificates(ca)? {
                roots.add(cert).map_err(|e| {
                    Error::config(
                        ca.key,
                        format!("{}: not a usable CA certificate: {e}", ca.path.display()),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // An unparsable system certificate is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::fatal(format!(
                    "TLS: no usable root certificates in the system store ({} errors); name a CA file",
                    found.errors.len()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal("TLS setup failed").with_source(e))?;
    let roots = Arc::new(roots);
    let builder = match &files.verify_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::fatal("TLS setup failed").with_source(e))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NamedVerifier {
                inner,
                expected: name.clone(),
            }))
        }
    };
    match files.client {
        Some((cert, key)) => {
            let chain = read_certificates(cert)?;
            let key_der = read_private_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::config(
                    key.key,
                    format!(
                        "{} does not fit the certificate in {}: {e}",
                        key.path.display(),
                        cert.path.display()
                    ),
                )
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(file: PemFile<'_>) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(file.path)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| {
            Error::config(file.key, format!("cannot read {}: {e}", file.path.display()))
        })?;
    if certs.is_empty() {
        return Err(Error::config(
            file.key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                file.path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file. The error never quotes the file's contents.
fn read_private_key(file: PemFile<'_>) -> Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::Error as PemError;
    PrivateKeyDer::from_pem_file(file.path).map_err(|e| {
        let why = match e {
            PemError::Io(io) => format!("cannot read {}: {io}", file.path.display()),
            PemError::NoItemsFound => format!(
                "{} holds no unencrypted private key (PKCS#8, PKCS#1 or SEC1 PEM block)",
                file.path.display()
            ),
            _ => format!("{} is not a readable PEM private key", file.path.display()),
        };
        Error::config(file.key, why)
    })
}

/// Whether an error (or one of its causes) is a TLS failure on certificates, ours or the
/// server's, which retrying cannot fix, rather than a network problem. With TLS 1.3 a server
/// rejects a client certificate after the client finished its handshake, so the alert can come
/// from the first read of a connection as well as from the handshake.
pub fn is_certificate_problem(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = rustls_error_of(err) {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::NoCertificatesPresented
            );
        }
        next = err.source();
    }
    false
}

/// The rustls error `e` is, or carries as an I/O error's inner error (how tokio-rustls reports
/// handshake failures); this level only, not its causes.
pub fn rustls_error_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

/// Checks the server's certificate with the usual WebPKI rules, against the configured name
/// instead of the host the connection was made to.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.expected, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
