//! Turning connector settings into rumqttc client options, and deciding what a connection error
//! means (retry with backoff, or stop: a broker that refuses our credentials will not change its
//! mind).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connector_core::{Error, ErrorKind, Result, Secret};
use rumqttc::{
    ConnectReturnCode, ConnectionError, LastWill, MqttOptions, NetworkOptions, QoS,
    TlsConfiguration, Transport,
};

use crate::tls::{client_config, TlsFiles};
use crate::url::MqttUrl;
use crate::wire::{Message, MqttVersion};

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
    /// Protocol version.
    pub version: MqttVersion,
    /// CA file, client certificate and server name for `mqtts://`.
    pub tls: Option<TlsFiles>,
    /// MQTT 5 Receive Maximum announced in CONNECT: most unacknowledged QoS 1/2 messages the
    /// broker may send us at once (`None`: 65,535). A source sets it to its in-flight window.
    pub receive_maximum: Option<u16>,
    /// Status topic (`{client_id}` is replaced by the client id): `online` is published there,
    /// retained, on every connect, `offline` on a clean stop, and the broker publishes `offline`
    /// (the last will) when the connection dies without a DISCONNECT.
    pub status_topic: Option<String>,
}

/// Status payload while connected.
pub const STATUS_ONLINE: &[u8] = b"online";
/// Status payload after a clean stop or a lost connection (the last will).
pub const STATUS_OFFLINE: &[u8] = b"offline";

/// A last will: published by the broker for us when our connection dies without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retained, so that a client subscribing later still sees it.
    pub retain: bool,
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
        if let Some((user, pass)) = self.credentials()? {
            o.set_credentials(user, pass);
        }
        if let Some(w) = self.will() {
            o.set_last_will(LastWill::new(w.topic, w.payload, w.qos, w.retain));
        }
        if self.url.tls {
            let config = client_config(self.tls.as_ref())?;
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
        }
        Ok(o)
    }

    /// The status topic of this client, if it has one.
    pub fn status_topic(&self) -> Option<String> {
        self.status_topic.as_ref().map(|t| t.replace("{client_id}", &self.client_id))
    }

    /// The last will: `offline`, retained, QoS 1, on the status topic.
    pub fn will(&self) -> Option<Will> {
        self.status_topic().map(|topic| Will {
            topic,
            payload: Bytes::from_static(STATUS_OFFLINE),
            qos: QoS::AtLeastOnce,
            retain: true,
        })
    }

    /// The retained status messages `online` (sent on connect) and `offline` (sent before a
    /// clean DISCONNECT), at QoS 0: a connection that dies before one arrives triggers the will.
    pub fn status_messages(&self) -> (Option<Message>, Option<Message>) {
        let message = |payload: &'static [u8]| {
            self.status_topic().map(|topic| Message {
                topic,
                payload: Bytes::from_static(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                dup: false,
                pkid: 0,
                properties: None,
            })
        };
        (message(STATUS_ONLINE), message(STATUS_OFFLINE))
    }

    /// User name and password (read from the environment or file now), if set.
    ///
    /// # Errors
    /// Fatal when the password's variable or file cannot be read.
    pub fn credentials(&self) -> Result<Option<(String, String)>> {
        match (&self.username, &self.password) {
            (Some(user), Some(pass)) => Ok(Some((user.clone(), pass.resolve()?))),
            (Some(user), None) => Ok(Some((user.clone(), String::new()))),
            (None, Some(_)) => Err(Error::config("password", "a password needs a username")),
            (None, None) => Ok(None),
        }
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

/// What a connection error means: a refused login or client id, or a certificate the other side
/// does not accept, is fatal (retrying cannot help);
/// anything else (broker down, network cut, timeout) is retriable.
pub fn classify(err: &ConnectionError) -> ErrorKind {
    match err {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId
            | ConnectReturnCode::RefusedProtocolVersion,
        ) => ErrorKind::Fatal,
        other if connector_core::tls::is_certificate_problem(other) => ErrorKind::Fatal,
        _ => ErrorKind::Retriable,
    }
}

/// What to check when certificates do not match.
pub(crate) const TLS_HINT: &str = "check that tls.ca_file holds the CA that signed the broker's \
    certificate, and that tls.cert_file/tls.key_file hold a client certificate the broker trusts";

/// An [`Error`] for a connection failure to `url`.
pub fn connection_error(err: &ConnectionError, url: &MqttUrl) -> Error {
    let message = match err {
        ConnectionError::ConnectionRefused(code) => {
            format!("MQTT broker {url} refused the connection: {code:?}")
        }
        other if connector_core::tls::is_certificate_problem(other) => {
            format!("TLS with MQTT broker {url} failed: {other}; {TLS_HINT}")
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
            version: MqttVersion::V311,
            tls: None,
            status_topic: None,
            receive_maximum: None,
        };
        let e = s.options(true).unwrap_err().to_string();
        assert!(e.contains("CONNECTOR_TEST_NO_SUCH_PASSWORD"), "{e}");
    }
}
