//! [`ConnectionSettings`]: how a connector connects to its MQTT broker (URL, client id, session,
//! credentials, TLS files, status topic and last will), shared by the source and the sink.

use std::time::Duration;

use bytes::Bytes;
use connector_core::{Error, Result, Secret};
use rumqttc::QoS;

use crate::tls::MqttTlsConfig;
use crate::url::MqttUrl;
use crate::wire::{Message, MqttVersion};

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
    pub tls: Option<MqttTlsConfig>,
    /// MQTT 5 Receive Maximum announced in CONNECT: most unacknowledged QoS 1/2 messages the
    /// broker may send us at once (`None`: 65,535). A source sets it to its in-flight window.
    pub receive_maximum: Option<u16>,
    /// Status topic (`{client_id}` is replaced by the client id): `online` is published there,
    /// retained, on every connect, `offline` on a clean stop, and the broker publishes `offline`
    /// (the last will) when the connection dies without a DISCONNECT.
    pub status_topic: Option<String>,
    /// A last will the connector sets itself, used instead of the status topic's `offline` (a
    /// Sparkplug primary host's STATE death certificate; changed between connects with
    /// [`Session::set_will`](crate::Session::set_will)).
    pub will: Option<Will>,
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
    /// The status topic of this client, if it has one.
    pub fn status_topic(&self) -> Option<String> {
        self.status_topic.as_ref().map(|t| t.replace("{client_id}", &self.client_id))
    }

    /// The last will: the connector's own [`will`](Self::will) if set, else `offline`,
    /// retained, QoS 1, on the status topic.
    pub fn will(&self) -> Option<Will> {
        if let Some(will) = &self.will {
            return Some(will.clone());
        }
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
}

/// What to check when certificates do not match.
pub(crate) const TLS_HINT: &str = "check that tls.ca_file holds the CA that signed the broker's \
    certificate, and that tls.cert_file/tls.key_file hold a client certificate the broker trusts";

#[cfg(test)]
mod tests {
    use super::*;

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
            will: None,
        };
        let e = s.credentials().unwrap_err().to_string();
        assert!(e.contains("CONNECTOR_TEST_NO_SUCH_PASSWORD"), "{e}");
    }
}
