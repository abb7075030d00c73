//! [`ConnectionKeys`]: the connection keys every MQTT connector config has (`mqtt_url`,
//! `client_id`, credentials, timeouts, packet size, reconnect backoff), checked and turned into
//! [`ConnectionSettings`] in one place.

use std::time::Duration;

use connector_core::backoff::BackoffConfig;
use connector_core::{ConfigErrors, Error, Result, Secret};

use crate::connection::ConnectionSettings;
use crate::tls::TlsFiles;
use crate::topic::validate_topic;
use crate::url::MqttUrl;
use crate::wire::MqttVersion;

/// The default status topic: `online`/`offline` (retained) and the connector's last will.
pub const DEFAULT_STATUS_TOPIC: &str = "connect/{client_id}/status";

/// Largest MQTT packet the protocol allows.
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// A view of a connector config's connection keys.
///
/// ```
/// use connector_core::backoff::BackoffConfig;
/// use connector_mqtt_common::ConnectionKeys;
///
/// let backoff = BackoffConfig::default();
/// let keys = ConnectionKeys {
///     mqtt_url: "mqtt://broker:1883",
///     client_id: None,
///     clean_session: false,
///     keep_alive_secs: 30,
///     connect_timeout_secs: 10,
///     username: None,
///     password: None,
///     max_packet_size: 1 << 20,
///     reconnect_backoff: &backoff,
///     mqtt_version: Default::default(),
///     tls: None,
///     status_topic: "connect/{client_id}/status",
/// };
/// assert!(keys.validate().is_empty());
/// assert_eq!(keys.settings("telemetry").unwrap().client_id, "telemetry");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConnectionKeys<'a> {
    /// `mqtt_url`.
    pub mqtt_url: &'a str,
    /// `client_id` (the connector name when `None`).
    pub client_id: Option<&'a str>,
    /// `clean_session`.
    pub clean_session: bool,
    /// `keep_alive_secs`.
    pub keep_alive_secs: u64,
    /// `connect_timeout_secs`.
    pub connect_timeout_secs: u64,
    /// `username`.
    pub username: Option<&'a str>,
    /// `password`.
    pub password: Option<&'a Secret>,
    /// `max_packet_size`.
    pub max_packet_size: usize,
    /// `reconnect_backoff`.
    pub reconnect_backoff: &'a BackoffConfig,
    /// `mqtt_version`.
    pub mqtt_version: MqttVersion,
    /// `tls`.
    pub tls: Option<&'a TlsFiles>,
    /// `status_topic` (`""`: none).
    pub status_topic: &'a str,
}

impl ConnectionKeys<'_> {
    /// Every problem with these keys, at their key paths.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if let Err(msg) = MqttUrl::parse(self.mqtt_url) {
            e.push("mqtt_url", msg);
        }
        if self.client_id.is_some_and(str::is_empty) {
            e.push("client_id", "must not be empty (leave it out to use the connector name)");
        }
        if !(1..=65_535).contains(&self.keep_alive_secs) {
            e.push("keep_alive_secs", "expected 1 to 65535");
        }
        if self.connect_timeout_secs == 0 {
            e.push("connect_timeout_secs", "must be at least 1");
        }
        if let Some(p) = self.password {
            if self.username.is_none() {
                e.push("password", "a password needs a username");
            }
            if let Err(msg) = p.validate() {
                e.push("password", msg);
            }
        }
        if !(1024..=MQTT_MAX_PACKET).contains(&self.max_packet_size) {
            e.push("max_packet_size", format!("expected 1024 to {MQTT_MAX_PACKET} bytes"));
        }
        e.extend(self.reconnect_backoff.validate().prefixed("reconnect_backoff"));
        if let Some(tls) = self.tls {
            if MqttUrl::parse(self.mqtt_url).is_ok_and(|u| !u.tls) {
                e.push("tls", "TLS settings need an mqtts:// URL");
            }
            e.extend(tls.validate().prefixed("tls"));
        }
        if !self.status_topic.is_empty() {
            let sample = self.status_topic.replace("{client_id}", "client");
            if let Err(msg) = validate_topic(&sample) {
                e.push("status_topic", msg);
            }
        }
        e
    }

    /// The connection settings, with `default_client_id` (the connector name) when no
    /// `client_id` is set.
    ///
    /// # Errors
    /// [`Error::Config`] for an unparsable URL.
    pub fn settings(&self, default_client_id: &str) -> Result<ConnectionSettings> {
        Ok(ConnectionSettings {
            url: MqttUrl::parse(self.mqtt_url).map_err(|m| Error::config("mqtt_url", m))?,
            client_id: self.client_id.unwrap_or(default_client_id).to_owned(),
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            clean_session: self.clean_session,
            username: self.username.map(str::to_owned),
            password: self.password.cloned(),
            max_packet_size: self.max_packet_size,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            version: self.mqtt_version,
            tls: self.tls.cloned(),
            status_topic: (!self.status_topic.is_empty()).then(|| self.status_topic.to_owned()),
            receive_maximum: None,
        })
    }
}
