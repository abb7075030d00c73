//! [`TlsFiles`]: the `tls` table of an MQTT connector (CA file, client certificate and key, server
//! name), and the rustls client configuration built from it ([`client_config`]).
//!
//! Only file paths live in the config; the files are read when a connection is set up, so a key
//! never appears in a config dump, a `Debug` print or a log line.

use std::path::PathBuf;
use std::sync::Arc;

use connector_core::{ConfigErrors, Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS settings for an `mqtts://` broker. Without them (or with every key left out) the system's
/// root certificates are trusted and no client certificate is sent.
///
/// ```
/// use connector_mqtt_common::TlsFiles;
///
/// let tls: TlsFiles = toml::from_str(r#"
///     ca_file = "/etc/iiot/ca.pem"
///     cert_file = "/etc/iiot/bridge.pem"
///     key_file = "/etc/iiot/bridge.key"
/// "#).unwrap();
/// assert!(tls.validate().is_empty());
/// assert!(format!("{tls:?}").contains("bridge.key"), "paths only, never key material");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust, instead of the operating system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) sent to brokers that authenticate clients by
    /// certificate. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1). Keep it
    /// readable by the connector's user only.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name to check the broker's certificate against, when it differs from the URL's host
    /// (for example when connecting by IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Every problem with these keys (pure: files are read only when connecting).
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => e.push("key_file", "a client certificate needs its key_file"),
            (None, Some(_)) => e.push("cert_file", "a key_file needs its cert_file"),
            _ => {}
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                e.push("server_name", format!("{name:?} is not a DNS name or IP address"));
            }
        }
        e
    }
}

/// The rustls client configuration for `tls` (system roots when `tls` is `None` or has no
/// `ca_file`), with the ring crypto provider.
///
/// # Errors
/// Fatal, naming the file, when a file cannot be read or holds no usable certificate or key.
pub fn client_config(tls: Option<&TlsFiles>) -> Result<rustls::ClientConfig> {
    let default = TlsFiles::default();
    let tls = tls.unwrap_or(&default);
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &tls.ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| {
                Error::fatal(format!("tls.ca_file {}: unusable CA certificate", path.display()))
                    .with_source(e)
            })?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // An unparsable system certificate is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(Error::fatal(format!(
                "TLS: no usable root certificates in the system store ({} errors); set tls.ca_file",
                found.errors.len()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal("TLS setup failed").with_source(e))?;
    let roots = Arc::new(roots);
    let builder = match &tls.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let expected = ServerName::try_from(name.clone()).map_err(|_| {
                Error::config(
                    "tls.server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::fatal("TLS setup failed").with_source(e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, expected }))
        }
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::fatal(format!("tls.key_file {}: no usable private key", key.display()))
                    .with_source(e)
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::fatal(format!(
                    "tls.cert_file {}: the certificate does not go with the key",
                    cert.display()
                ))
                .with_source(e)
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Whether a failed TLS handshake failed on certificates (ours or the broker's), which retrying
/// cannot fix, rather than on the network.
pub(crate) fn is_certificate_problem(e: &std::io::Error) -> bool {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|r| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::AlertReceived(_)
                | rustls::Error::NoCertificatesPresented
        )
    })
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |e: rustls::pki_types::pem::Error| {
        Error::fatal(format!("TLS: cannot read certificates from {}", path.display()))
            .with_source(e)
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(Error::fatal(format!("TLS: no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// Checks the broker's certificate with the usual WebPKI rules, against the configured name
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_its_key_and_names_must_parse() {
        let tls = TlsFiles { cert_file: Some("c.pem".into()), ..TlsFiles::default() };
        assert_eq!(tls.validate().iter().map(|e| e.path.clone()).collect::<Vec<_>>(), ["key_file"]);
        let tls = TlsFiles { server_name: Some("not a name".into()), ..TlsFiles::default() };
        assert_eq!(tls.validate().iter().count(), 1);
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = TlsFiles { ca_file: Some("/no/such/ca.pem".into()), ..TlsFiles::default() };
        let e = client_config(Some(&tls)).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/ca.pem"), "{e}");
    }
}
