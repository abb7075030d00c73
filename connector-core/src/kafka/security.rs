//! TLS and SASL for broker connections: the `ssl_*` and `sasl_*` keys of `[kafka]` turned, once
//! per [`KafkaClient`](super::KafkaClient), into a rustls client configuration (CA file or system
//! roots, optional client certificate) and resolved SASL credentials; and the mapping of TLS and
//! SASL failures onto errors that say whether a retry can help.
//!
//! A certificate the broker's chain does not verify against, or a refused login, is fatal: a
//! retry sends the same certificate or password again. Messages name the broker and mechanism,
//! never a password or key.

use std::fmt;
use std::sync::Arc;

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messenger::{RequestError, SaslError};
use rskafka::client::{Credentials, SaslConfig};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::warn;

use crate::kafka::config::{KafkaConfig, SaslMechanism};
use crate::{Error, Result};

/// How every connection of one client is secured, loaded from the config once.
#[derive(Debug, Default)]
pub(crate) struct Security {
    /// TLS, for `ssl` and `sasl_ssl`.
    pub(crate) tls: Option<Tls>,
    /// SASL login, for `sasl_plaintext` and `sasl_ssl`.
    pub(crate) sasl: Option<Sasl>,
}

/// A TLS client configuration.
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    /// `ssl_server_name`: verify this name instead of each broker's host.
    pub(crate) server_name: Option<ServerName<'static>>,
    /// Whether the roots came from `ssl_ca_file`, for error messages.
    ca_file: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// SASL credentials. `Debug` never shows the password.
pub(crate) struct Sasl {
    pub(crate) mechanism: SaslMechanism,
    pub(crate) username: String,
    password: String,
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Sasl {
    /// rskafka's login configuration. Its `Debug` shows the password: never log it.
    pub(crate) fn rskafka_config(&self) -> SaslConfig {
        let credentials = Credentials::new(self.username.clone(), self.password.clone());
        match self.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        }
    }
}

impl Security {
    /// Reads the CA, certificate, key and password files and resolves `${VAR}` secrets.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key of a file that cannot be read or holds nothing usable;
    /// fatal for an unset environment variable or an empty system root store.
    pub(crate) fn load(config: &KafkaConfig) -> Result<Self> {
        let protocol = config.security_protocol;
        let tls = protocol.uses_tls().then(|| load_tls(config)).transpose()?;
        let sasl = protocol.uses_sasl().then(|| load_sasl(config)).transpose()?;
        if let Some(s) = &sasl {
            if tls.is_none() && s.mechanism == SaslMechanism::Plain {
                warn!(
                    "kafka.security_protocol = \"sasl_plaintext\" with PLAIN sends the password \
                     unencrypted; use \"sasl_ssl\" or a SCRAM mechanism"
                );
            }
        }
        Ok(Self { tls, sasl })
    }
}

fn load_tls(config: &KafkaConfig) -> Result<Tls> {
    let file = crate::tls::PemFile::optional;
    let files = crate::tls::TlsFiles {
        ca: file(config.ssl_ca_file.as_deref(), "kafka.ssl_ca_file"),
        client: file(config.ssl_certificate_file.as_deref(), "kafka.ssl_certificate_file")
            .zip(file(config.ssl_key_file.as_deref(), "kafka.ssl_key_file")),
        // The name is sent as SNI and verified by the connection itself (`server_name_for`).
        verify_name: None,
    };
    let client = crate::tls::client_config(&files)?;
    let server_name = match &config.ssl_server_name {
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            Error::config("kafka.ssl_server_name", format!("{name:?} is not a DNS name or IP"))
        })?),
        None => None,
    };
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
        ca_file: config.ssl_ca_file.is_some(),
    })
}

fn load_sasl(config: &KafkaConfig) -> Result<Sasl> {
    let missing = |key: &str| Error::config(format!("kafka.{key}"), "required for SASL");
    let mechanism = config.sasl_mechanism.ok_or_else(|| missing("sasl_mechanism"))?;
    let username = config.sasl_username.clone().ok_or_else(|| missing("sasl_username"))?;
    let password = match (&config.sasl_password, &config.sasl_password_file) {
        (Some(secret), _) => secret.resolve()?,
        (None, Some(path)) => crate::secret::read_secret_file(path).map_err(|e| {
            Error::config(
                "kafka.sasl_password_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
        (None, None) => return Err(missing("sasl_password")),
    };
    Ok(Sasl { mechanism, username, password })
}

/// The name to verify `addr`'s certificate against: `ssl_server_name`, else the host of
/// `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn server_name_for(tls: &Tls, addr: &str) -> Result<ServerName<'static>> {
    if let Some(name) = &tls.server_name {
        return Ok(name.clone());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| {
        Error::fatal(format!(
            "Kafka broker address {addr} has no host name TLS can verify; set kafka.ssl_server_name"
        ))
    })
}

/// The error for a failed TLS handshake with `addr`. A certificate problem or a TLS alert is
/// fatal (a retry meets the same certificate); a dropped connection is retriable.
pub(crate) fn tls_handshake_error(e: std::io::Error, addr: &str, tls: &Tls) -> Error {
    let Some(tls_error) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Error::retriable(format!(
            "TLS handshake with Kafka broker {addr} failed (does its listener speak TLS?)"
        ))
        .with_source(e);
    };
    let hint = match tls_error {
        rustls::Error::InvalidCertificate(_) if tls.ca_file => {
            "; check that kafka.ssl_ca_file holds the CA that signed the broker's certificate and \
             that the certificate names the broker (or set kafka.ssl_server_name)"
        }
        rustls::Error::InvalidCertificate(_) => {
            "; the system's root certificates do not verify the broker's certificate: set \
             kafka.ssl_ca_file to the CA that signed it"
        }
        rustls::Error::AlertReceived(_) => {
            "; the broker rejected the connection (does it require a client certificate? see \
             kafka.ssl_certificate_file and kafka.ssl_key_file)"
        }
        _ => "",
    };
    // The message quotes the TLS error; no source, so reports do not repeat it.
    Error::fatal(format!("TLS handshake with Kafka broker {addr} failed: {tls_error}{hint}"))
}

/// The rustls error somewhere in `e`'s chain of causes, if any: a TLS alert that arrives after
/// the handshake (TLS 1.3 servers reject client certificates then).
pub(crate) fn find_tls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(found) = crate::tls::rustls_error_of(err) {
            return Some(found);
        }
        // A poisoned connection carries the error that poisoned it, but not as its source.
        next = match err.downcast_ref::<RequestError>() {
            Some(RequestError::Poisoned(cause)) => Some(cause.as_ref()),
            _ => err.source(),
        };
    }
    None
}

/// The error for a failed SASL login to `addr`. A refused login or an unsupported mechanism is
/// fatal; a dropped connection is retriable. Never contains the password.
pub(crate) fn sasl_error(e: SaslError, addr: &str, sasl: &Sasl) -> Error {
    let mechanism = sasl.mechanism;
    let user = &sasl.username;
    match e {
        SaslError::RequestError(e) => {
            if let Some(tls_error) = find_tls_error(&e) {
                return Error::fatal(format!(
                    "TLS connection to Kafka broker {addr} failed during the SASL {mechanism} login: \
                     {tls_error}"
                ));
            }
            Error::retriable(format!(
                "connection to Kafka broker {addr} failed during the SASL {mechanism} login (some \
                 brokers close the connection when they do not offer the mechanism)"
            ))
            .with_source(e)
        }
        SaslError::ApiError(ApiError::SaslAuthenticationFailed) => Error::fatal(format!(
            "Kafka broker {addr} refused the SASL {mechanism} login of user {user:?}: \
             authentication failed (check kafka.sasl_username and the password)"
        )),
        SaslError::ApiError(ApiError::UnsupportedSaslMechanism)
        | SaslError::UnsupportedSaslMechanism => Error::fatal(format!(
            "Kafka broker {addr} does not offer SASL mechanism {mechanism} (kafka.sasl_mechanism); \
             is SASL enabled on its listener?"
        )),
        SaslError::ApiError(code) => Error::fatal(format!(
            "SASL {mechanism} login of user {user:?} to Kafka broker {addr} failed: broker \
             answered {code:?}"
        )),
        // SCRAM: the broker's final message rejects the proof ("e=invalid-proof").
        SaslError::SaslSessionError(e) => Error::fatal(format!(
            "Kafka broker {addr} refused the SASL {mechanism} login of user {user:?}: {e} (check \
             kafka.sasl_username and the password)"
        )),
        other => Error::fatal(format!(
            "SASL {mechanism} login of user {user:?} to Kafka broker {addr} failed"
        ))
        .with_source(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::SecurityProtocol;
    use crate::Secret;

    fn sasl_config(password: &str) -> KafkaConfig {
        let mut c = KafkaConfig::new(["broker:9092"]);
        c.security_protocol = SecurityProtocol::SaslPlaintext;
        c.sasl_mechanism = Some(SaslMechanism::ScramSha256);
        c.sasl_username = Some("alice".into());
        c.sasl_password = Some(Secret::new(password));
        c
    }

    #[test]
    fn credentials_never_show_the_password() {
        let security = Security::load(&sasl_config("hunter2-secret")).unwrap();
        let sasl = security.sasl.as_ref().unwrap();
        assert_eq!(sasl.password, "hunter2-secret");
        let shown = format!("{security:?}");
        assert!(shown.contains("alice") && !shown.contains("hunter2"), "{shown}");
        let refused = sasl_error(
            SaslError::ApiError(ApiError::SaslAuthenticationFailed),
            "broker:9092",
            sasl,
        );
        assert!(!refused.is_retriable());
        let msg = refused.report();
        assert!(msg.contains("broker:9092") && msg.contains("SCRAM-SHA-256"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn the_password_is_read_from_a_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut c = sasl_config("unused");
        c.sasl_password = None;
        c.sasl_password_file = Some(file);
        assert_eq!(Security::load(&c).unwrap().sasl.unwrap().password, "from-file");
        c.sasl_password_file = Some(dir.path().join("missing"));
        match Security::load(&c).unwrap_err() {
            Error::Config { path, .. } => assert_eq!(path, "kafka.sasl_password_file"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_or_empty_tls_files_are_config_errors_at_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let mut c = KafkaConfig::new(["broker:9092"]);
        c.security_protocol = SecurityProtocol::Ssl;
        c.ssl_ca_file = Some(empty.clone());
        let path_of = |c: &KafkaConfig| match Security::load(c).unwrap_err() {
            Error::Config { path, .. } => path,
            other => panic!("{other:?}"),
        };
        assert_eq!(path_of(&c), "kafka.ssl_ca_file");
        c.ssl_ca_file = Some(dir.path().join("missing.pem"));
        assert_eq!(path_of(&c), "kafka.ssl_ca_file");
        c.ssl_ca_file = None;
        c.ssl_certificate_file = Some(empty.clone());
        c.ssl_key_file = Some(empty);
        assert_eq!(path_of(&c), "kafka.ssl_certificate_file");
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_overridden() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = Tls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name: None,
            ca_file: true,
        };
        assert_eq!(
            server_name_for(&tls, "kafka-1.example:9093").unwrap().to_str(),
            "kafka-1.example"
        );
        assert_eq!(server_name_for(&tls, "[::1]:9093").unwrap().to_str(), "::1");
        let tls = Tls { server_name: Some(ServerName::try_from("kafka.internal").unwrap()), ..tls };
        assert_eq!(server_name_for(&tls, "10.0.0.1:9093").unwrap().to_str(), "kafka.internal");
    }
}
