//! [`MqttTlsConfig`]: the `tls` table of an MQTT connector (CA file, client certificate and key,
//! server name), and the rustls client configuration built from it
//! ([`MqttTlsConfig::rustls_config`]).
//!
//! Only file paths live in the config; the files are read when a connection is set up, so a key
//! never appears in a config dump, a `Debug` print or a log line.

use std::path::PathBuf;

use connector_core::{ConfigErrors, Error, Result};
use rustls::pki_types::ServerName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS settings for an `mqtts://` broker. Without them (or with every key left out) the system's
/// root certificates are trusted and no client certificate is sent.
///
/// ```
/// use connector_mqtt_common::MqttTlsConfig;
///
/// let tls: MqttTlsConfig = toml::from_str(r#"
///     ca_file = "/etc/iiot/ca.pem"
///     cert_file = "/etc/iiot/bridge.pem"
///     key_file = "/etc/iiot/bridge.key"
/// "#).unwrap();
/// assert!(tls.validate().is_empty());
/// assert!(format!("{tls:?}").contains("bridge.key"), "paths only, never key material");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
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

impl MqttTlsConfig {
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

    /// The rustls client configuration for these settings (system roots without a `ca_file`),
    /// with the ring provider. Reads the files now.
    ///
    /// # Errors
    /// A config error naming the `tls.*` key and the file when a file cannot be read or holds no
    /// usable certificate or key.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig> {
        let file = connector_core::tls::PemFile::optional;
        let verify_name = match &self.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                Error::config(
                    "tls.server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?),
        };
        connector_core::tls::client_config(&connector_core::tls::TlsFiles {
            ca: file(self.ca_file.as_deref(), "tls.ca_file"),
            client: file(self.cert_file.as_deref(), "tls.cert_file")
                .zip(file(self.key_file.as_deref(), "tls.key_file")),
            verify_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_its_key_and_names_must_parse() {
        let tls = MqttTlsConfig { cert_file: Some("c.pem".into()), ..MqttTlsConfig::default() };
        assert_eq!(tls.validate().iter().map(|e| e.path.clone()).collect::<Vec<_>>(), ["key_file"]);
        let tls =
            MqttTlsConfig { server_name: Some("not a name".into()), ..MqttTlsConfig::default() };
        assert_eq!(tls.validate().iter().count(), 1);
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls =
            MqttTlsConfig { ca_file: Some("/no/such/ca.pem".into()), ..MqttTlsConfig::default() };
        let e = tls.rustls_config().unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/ca.pem"), "{e}");
    }
}
