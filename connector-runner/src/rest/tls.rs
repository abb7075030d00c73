//! The REST API's TLS server configuration from `[rest] tls` (PEM certificate chain and key;
//! rustls with the ring provider). Errors name the config key and the file, never a key's bytes.

use std::sync::Arc;

use connector_core::runner::RestTlsConfig;
use connector_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The rustls server configuration for `files`.
pub(crate) fn server_config(files: &RestTlsConfig) -> Result<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| {
            Error::config(
                "rest.tls.cert_file",
                format!("cannot read {}: {e}", files.cert_file.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(Error::config(
            "rest.tls.cert_file",
            format!("{} holds no PEM certificate", files.cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|_| {
        Error::config(
            "rest.tls.key_file",
            format!(
                "{} is not a readable unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                files.key_file.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal("TLS setup failed").with_source(e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::config(
                "rest.tls.key_file",
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    files.key_file.display(),
                    files.cert_file.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
