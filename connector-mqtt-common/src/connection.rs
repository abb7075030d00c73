//! Turning connector settings into rumqttc client options, and deciding what a connection error
//! means (retry with backoff, or stop: a broker that refuses our credentials will not change its
//! mind).

use std::sync::Arc;
use std::time::Duration;

use connector_core::{Error, ErrorKind, Result, Secret};
use rumqttc::{
    ConnectReturnCode, ConnectionError, MqttOptions, NetworkOptions, TlsConfiguration, Transport,
};

use crate::url::MqttUrl;

/// The largest number of packet identifiers MQTT has; acknowledgements can never outnumber it,
/// so a request channel this large never makes an acknowledgement wait.
pub const MAX_PACKET_IDS: usize = 65_535;

/// How to connect to an MQTT broker.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Broker URL.
    pub url: MqttUrl,
    /// Client identifier (must be non-empty for a persistent session).
    pub client_id: String,
    /// Keep-alive interval (whole seconds, at least 1).
    pub keep_alive: Duration,
    /// Start a clean session (forgetting subscriptions and queued messages) on connect.
    pub clean_session: bool,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<Secret>,
    /// Largest packet we send or accept, in bytes.
    pub max_packet_size: usize,
    /// Connect timeout (whole seconds).
    pub connect_timeout: Duration,
}

impl ConnectionSettings {
    /// rumqttc options for these settings, with manual acknowledgements when `manual_acks`.
    ///
    /// # Errors
    /// Fatal when the password's environment variable is not set, or TLS cannot be set up.
    pub fn options(&self, manual_acks: bool) -> Result<MqttOptions> {
        let mut o = MqttOptions::new(self.client_id.clone(), self.url.host.clone(), self.url.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive.as_secs().max(1)));
        if !self.client_id.is_empty() {
            o.set_clean_session(self.clean_session);
        }
        o.set_max_packet_size(self.max_packet_size, self.max_packet_size);
        o.set_manual_acks(manual_acks);
        // Acknowledgements and publishes never wait for room in the request channel.
        o.set_request_channel_capacity(MAX_PACKET_IDS + 64);
        match (&self.username, &self.password) {
            (Some(user), Some(pass)) => {
                o.set_credentials(user.clone(), pass.resolve()?);
            }
            (Some(user), None) => {
                o.set_credentials(user.clone(), String::new());
            }
            (None, Some(_)) => {
                return Err(Error::config("password", "a password needs a username"))
            }
            (None, None) => {}
        }
        if self.url.tls {
            o.set_transport(Transport::Tls(tls_config()?));
        }
        Ok(o)
    }

    /// Socket options: `TCP_NODELAY` (acknowledgements are small and latency matters) and the
    /// connect timeout.
    pub fn network_options(&self) -> NetworkOptions {
        let mut n = NetworkOptions::new();
        n.set_tcp_nodelay(true);
        n.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        n
    }
}

/// TLS with the operating system's root certificates, over rustls with the ring provider.
///
/// # Errors
/// Fatal when no root certificate can be loaded.
pub fn tls_config() -> Result<TlsConfiguration> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // An unparsable system certificate is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(Error::fatal(format!(
            "mqtts: no usable root certificates in the system store ({} errors)",
            found.errors.len()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal("mqtts: TLS setup failed").with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// What a connection error means: a refused login or client id is fatal (retrying cannot help);
/// anything else (broker down, network cut, timeout) is retriable.
pub fn classify(err: &ConnectionError) -> ErrorKind {
    match err {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId
            | ConnectReturnCode::RefusedProtocolVersion,
        ) => ErrorKind::Fatal,
        _ => ErrorKind::Retriable,
    }
}

/// An [`Error`] for a connection failure to `url`.
pub fn connection_error(err: &ConnectionError, url: &MqttUrl) -> Error {
    let message = match err {
        ConnectionError::ConnectionRefused(code) => {
            format!("MQTT broker {url} refused the connection: {code:?}")
        }
        other => format!("MQTT connection to {url} failed: {other}"),
    };
    match classify(err) {
        ErrorKind::Fatal => Error::fatal(message),
        _ => Error::retriable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_logins_are_fatal_and_network_errors_retriable() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(classify(&refused), ErrorKind::Fatal);
        let busy = ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable);
        assert_eq!(classify(&busy), ErrorKind::Retriable);
        let io = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), ErrorKind::Retriable);
        let url = MqttUrl::parse("mqtt://h:1").unwrap();
        assert!(connection_error(&refused, &url).to_string().contains("mqtt://h:1"));
    }

    #[test]
    fn a_missing_password_variable_is_a_clear_error() {
        let s = ConnectionSettings {
            url: MqttUrl::parse("mqtt://h").unwrap(),
            client_id: "c".into(),
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            username: Some("u".into()),
            password: Some(Secret::new("${CONNECTOR_TEST_NO_SUCH_PASSWORD}")),
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(5),
        };
        let e = s.options(true).unwrap_err().to_string();
        assert!(e.contains("CONNECTOR_TEST_NO_SUCH_PASSWORD"), "{e}");
    }
}
