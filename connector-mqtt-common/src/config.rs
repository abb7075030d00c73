//! [`MqttConnectionConfig`]: the connection keys every MQTT connector config has (`mqtt_url`,
//! `client_id`, credentials, timeouts, packet size, version, TLS, reconnect backoff, status
//! topic), documented, checked and turned into [`ConnectionSettings`] in one place; and
//! [`mqtt_connector_config!`](crate::mqtt_connector_config), which embeds it in a connector's
//! config with its keys at the connector's level.
//!
//! serde's `flatten` cannot be combined with `deny_unknown_fields`, and it buffers the flattened
//! values, so an error inside one loses its key path. The macro instead reads the table once: each
//! connection key goes straight into its field (serde_path_to_error still sees the key), every
//! other key to the connector's own derived deserializer, and a key neither knows is refused with
//! serde's own "unknown field `x`, expected one of ..." message listing both.

use std::fmt;
use std::time::Duration;

use connector_core::backoff::BackoffConfig;
use connector_core::{ConfigErrors, Error, Result, Secret};
use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::connection::ConnectionSettings;
use crate::tls::MqttTlsConfig;
use crate::topic::validate_topic;
use crate::url::MqttUrl;
use crate::wire::MqttVersion;

/// The default status topic: `online`/`offline` (retained) and the connector's last will.
pub const DEFAULT_STATUS_TOPIC: &str = "connect/{client_id}/status";

/// Largest MQTT packet the protocol allows.
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// How an MQTT connector reaches its broker: the keys the MQTT source and sink share. In a
/// connector config made with [`mqtt_connector_config!`](crate::mqtt_connector_config) these keys
/// sit at the connector's level (`mqtt_url = "..."` next to `topics`), not in a table of their
/// own. `clean_session` is not here: its default differs between the source and the sink.
///
/// ```
/// use connector_mqtt_common::MqttConnectionConfig;
///
/// let c: MqttConnectionConfig = toml::from_str(r#"
///     mqtt_url = "mqtts://broker:8883"
///     username = "bridge"
///     password = "${MQTT_PASSWORD}"
///     tls.ca_file = "/etc/iiot/ca.pem"
/// "#).unwrap();
/// assert!(c.validate().is_empty());
/// assert_eq!(c.keep_alive_secs, 30);
/// let settings = c.settings("telemetry", false).unwrap();
/// assert_eq!(settings.client_id, "telemetry");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConnectionConfig {
    /// Broker URL: `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (TLS, 8883).
    pub mqtt_url: String,
    /// MQTT client id. Defaults to the connector name. Keep it stable: the broker keeps the
    /// persistent session under it (for the sink, its unacknowledged publishes across a
    /// reconnect). With an MQTT source's `tasks` > 1, task i uses `<client_id>-<i>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Seconds between keep-alive pings when nothing else is sent.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Seconds to wait for the broker to accept a connection.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// User name, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; write `${ENV_VAR}` to read it from the environment or `${file:/path}` to read it
    /// from a file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Largest MQTT packet read whole or sent, in bytes (default 1 MiB). The source reads a
    /// larger message past without its payload and sends it to the error policy (dead letter
    /// without a value, with its size in the `mqtt.packet_size` header); it never breaks the
    /// connection. The sink sends a record whose PUBLISH would be larger, or larger than the
    /// Maximum Packet Size an MQTT 5 broker announces, to the error policy unsent.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
    /// Backoff between reconnect attempts.
    #[serde(default = "default_reconnect_backoff")]
    pub reconnect_backoff: BackoffConfig,
    /// MQTT protocol version: "3.1.1" (default) or "5". With 5, the source turns user properties
    /// into Kafka headers (same names, order and duplicates kept), and content type, response
    /// topic, correlation data, payload format indicator and message expiry interval into the
    /// `mqtt.content_type`, `mqtt.response_topic`, `mqtt.correlation_data`,
    /// `mqtt.payload_format_indicator` and `mqtt.message_expiry_interval` headers; the sink turns
    /// record headers into user properties (see `user_properties`) and those `mqtt.*` headers
    /// back into the matching MQTT 5 properties.
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// TLS settings for an `mqtts://` URL: CA file, client certificate and key, server name.
    /// Without them the system's roots are trusted and no client certificate is sent.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// Status topic of the connector's MQTT client (`{client_id}` is replaced): `online` is
    /// published there (retained) on connect, `offline` on a clean stop, and the broker publishes
    /// `offline` (the last will) when the connector dies or loses its network. `""` turns it off.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
}

fn default_keep_alive_secs() -> u64 {
    30
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_max_packet_size() -> usize {
    1024 * 1024
}
fn default_reconnect_backoff() -> BackoffConfig {
    BackoffConfig::default()
}
fn default_status_topic() -> String {
    DEFAULT_STATUS_TOPIC.to_owned()
}

impl MqttConnectionConfig {
    /// The keys of this struct, in declaration order.
    pub const KEYS: &'static [&'static str] = &[
        "mqtt_url",
        "client_id",
        "keep_alive_secs",
        "connect_timeout_secs",
        "username",
        "password",
        "max_packet_size",
        "reconnect_backoff",
        "mqtt_version",
        "tls",
        "status_topic",
    ];

    /// A connection to `mqtt_url` with every other key at its default.
    pub fn new(mqtt_url: impl Into<String>) -> Self {
        Self {
            mqtt_url: mqtt_url.into(),
            client_id: None,
            keep_alive_secs: default_keep_alive_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            username: None,
            password: None,
            max_packet_size: default_max_packet_size(),
            reconnect_backoff: default_reconnect_backoff(),
            mqtt_version: MqttVersion::default(),
            tls: None,
            status_topic: default_status_topic(),
        }
    }

    /// Every problem with these keys, at their key paths (pure: nothing is read or resolved).
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        let url = MqttUrl::parse(&self.mqtt_url);
        if let Err(msg) = &url {
            e.push("mqtt_url", msg.to_string());
        }
        if self.client_id.as_deref().is_some_and(str::is_empty) {
            e.push("client_id", "must not be empty (leave it out to use the connector name)");
        }
        if !(1..=65_535).contains(&self.keep_alive_secs) {
            e.push("keep_alive_secs", "expected 1 to 65535");
        }
        if self.connect_timeout_secs == 0 {
            e.push("connect_timeout_secs", "must be at least 1");
        }
        if let Some(p) = &self.password {
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
        if let Some(tls) = &self.tls {
            if url.is_ok_and(|u| !u.tls) {
                e.push("tls", "TLS settings need an mqtts:// URL");
            }
            e.extend(tls.validate().prefixed("tls"));
        }
        if !self.status_topic.is_empty() {
            let sample = self.status_topic.replace("{client_id}", "client");
            if let Err(msg) = validate_topic(&sample) {
                e.push("status_topic", msg.to_string());
            }
        }
        e
    }

    /// The connection settings, with `default_client_id` (the connector name) when no
    /// `client_id` is set, and the connector's `clean_session`.
    ///
    /// # Errors
    /// [`Error::Config`] for an unparsable URL.
    pub fn settings(
        &self,
        default_client_id: &str,
        clean_session: bool,
    ) -> Result<ConnectionSettings> {
        Ok(ConnectionSettings {
            url: MqttUrl::parse(&self.mqtt_url)
                .map_err(|m| Error::config("mqtt_url", m.to_string()))?,
            client_id: self.client_id.as_deref().unwrap_or(default_client_id).to_owned(),
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            clean_session,
            username: self.username.clone(),
            password: self.password.clone(),
            max_packet_size: self.max_packet_size,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            version: self.mqtt_version,
            tls: self.tls.clone(),
            status_topic: (!self.status_topic.is_empty()).then(|| self.status_topic.clone()),
            receive_maximum: None,
            will: None,
        })
    }
}

/// Declares an MQTT connector's config struct: the struct as written plus a first field
/// `pub connection: MqttConnectionConfig` whose keys sit at the struct's own level, with
/// `Serialize`, `Deserialize` (unknown keys refused, naming every key the struct accepts) and
/// `JsonSchema` (every key, with its doc) derived. Write field attributes as for serde (`#[serde(default
/// = "...")]`); the crate using it needs `serde` and `schemars` as dependencies.
///
/// ```
/// use connector_mqtt_common::mqtt_connector_config;
///
/// mqtt_connector_config! {
///     /// A connector that only counts messages.
///     #[derive(Debug, Clone, PartialEq)]
///     pub struct CounterConfig {
///         /// Topic filter to count.
///         pub topic: String,
///         /// Start a clean session on every connect.
///         #[serde(default)]
///         pub clean_session: bool,
///     }
/// }
///
/// let c: CounterConfig =
///     toml::from_str("mqtt_url = \"mqtt://broker\"\ntopic = \"plant/#\"\nkeep_alive_secs = 5").unwrap();
/// assert_eq!((c.connection.keep_alive_secs, c.topic.as_str()), (5, "plant/#"));
/// let e = toml::from_str::<CounterConfig>("mqtt_url = \"mqtt://b\"\ntopic = \"t\"\ntopik = 1")
///     .unwrap_err();
/// assert!(e.to_string().contains("unknown field `topik`, expected one of `mqtt_url`"), "{e}");
/// ```
#[macro_export]
macro_rules! mqtt_connector_config {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(::serde::Serialize, ::schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        $vis struct $name {
            /// The MQTT connection keys (`mqtt_url`, `client_id`, credentials, TLS, ...), written
            /// at the connector's level.
            #[serde(flatten)]
            pub connection: $crate::MqttConnectionConfig,
            $(
                $(#[$fmeta])*
                $fvis $field: $ty,
            )*
        }

        const _: () = {
            #[derive(::serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Own {
                $(
                    $(#[$fmeta])*
                    $field: $ty,
                )*
            }

            impl<'de> ::serde::Deserialize<'de> for $name {
                fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
                where
                    D: ::serde::Deserializer<'de>,
                {
                    let (connection, own) = $crate::__deserialize_flat::<D, Own>(
                        deserializer,
                        ::core::stringify!($name),
                    )?;
                    ::core::result::Result::Ok(Self { connection, $($field: own.$field,)* })
                }
            }
        };
    };
}

/// Deserializes a connector config whose [`MqttConnectionConfig`] keys sit at its own level:
/// `T` (the connector's own keys, derived with `deny_unknown_fields`) reads the table, the
/// connection keys are taken out on the way. Used by [`mqtt_connector_config!`](crate::mqtt_connector_config).
#[doc(hidden)]
pub fn deserialize_flat<'de, D, T>(
    deserializer: D,
    name: &'static str,
) -> std::result::Result<(MqttConnectionConfig, T), D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let mut slot = Slot::default();
    let own = T::deserialize(Flat { inner: deserializer, slot: &mut slot, name })?;
    Ok((slot.finish()?, own))
}

/// The connection keys read so far.
#[derive(Default)]
struct Slot {
    mqtt_url: Option<String>,
    client_id: Option<Option<String>>,
    keep_alive_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    username: Option<Option<String>>,
    password: Option<Option<Secret>>,
    max_packet_size: Option<usize>,
    reconnect_backoff: Option<BackoffConfig>,
    mqtt_version: Option<MqttVersion>,
    tls: Option<Option<MqttTlsConfig>>,
    status_topic: Option<String>,
}

impl Slot {
    /// Reads `key`'s value from `map` if it is a connection key; `false` if it is not.
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> std::result::Result<bool, A::Error> {
        macro_rules! take {
            ($field:ident) => {{
                if self.$field.is_some() {
                    return Err(de::Error::duplicate_field(stringify!($field)));
                }
                self.$field = Some(map.next_value()?);
            }};
        }
        match key {
            "mqtt_url" => take!(mqtt_url),
            "client_id" => take!(client_id),
            "keep_alive_secs" => take!(keep_alive_secs),
            "connect_timeout_secs" => take!(connect_timeout_secs),
            "username" => take!(username),
            "password" => take!(password),
            "max_packet_size" => take!(max_packet_size),
            "reconnect_backoff" => take!(reconnect_backoff),
            "mqtt_version" => take!(mqtt_version),
            "tls" => take!(tls),
            "status_topic" => take!(status_topic),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish<E: de::Error>(self) -> std::result::Result<MqttConnectionConfig, E> {
        Ok(MqttConnectionConfig {
            mqtt_url: self.mqtt_url.ok_or_else(|| E::missing_field("mqtt_url"))?,
            client_id: self.client_id.flatten(),
            keep_alive_secs: self.keep_alive_secs.unwrap_or_else(default_keep_alive_secs),
            connect_timeout_secs: self
                .connect_timeout_secs
                .unwrap_or_else(default_connect_timeout_secs),
            username: self.username.flatten(),
            password: self.password.flatten(),
            max_packet_size: self.max_packet_size.unwrap_or_else(default_max_packet_size),
            reconnect_backoff: self.reconnect_backoff.unwrap_or_else(default_reconnect_backoff),
            mqtt_version: self.mqtt_version.unwrap_or_default(),
            tls: self.tls.flatten(),
            status_topic: self.status_topic.unwrap_or_else(default_status_topic),
        })
    }
}

/// The deserializer handed to the connector's own keys: passes the table through [`FlatMap`].
struct Flat<'s, D> {
    inner: D,
    slot: &'s mut Slot,
    name: &'static str,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Flat<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.inner.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        let visitor = FlatVisitor { inner: visitor, slot: self.slot, own: fields, name: self.name };
        self.inner.deserialize_struct(self.name, fields, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct FlatVisitor<'s, V> {
    inner: V,
    slot: &'s mut Slot,
    own: &'static [&'static str],
    name: &'static str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FlatVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "struct {}", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<V::Value, A::Error> {
        self.inner.visit_map(FlatMap { map, slot: self.slot, own: self.own })
    }
}

/// The table as the connector's own keys see it: connection keys are read into the [`Slot`] and
/// skipped; a key neither side knows is an error naming every key.
struct FlatMap<'s, A> {
    map: A,
    slot: &'s mut Slot,
    own: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FlatMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> std::result::Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                if self.slot.mqtt_url.is_none() {
                    return Err(de::Error::missing_field("mqtt_url"));
                }
                return Ok(None);
            };
            if self.slot.read(&key, &mut self.map)? {
                continue;
            }
            if !self.own.contains(&key.as_str()) {
                return Err(de::Error::custom(format_args!(
                    "unknown field `{key}`, expected {}",
                    OneOf(MqttConnectionConfig::KEYS.iter().chain(self.own))
                )));
            }
            let key: de::value::StringDeserializer<A::Error> = key.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> std::result::Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// serde's wording for the expected keys: "one of `a`, `b`, `c`".
struct OneOf<I>(I);

impl<'a, I: Iterator<Item = &'a &'static str> + Clone> fmt::Display for OneOf<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of ")?;
        for (i, name) in self.0.clone().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}`")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::mqtt_connector_config! {
        /// A config with the connection keys and two of its own.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Probe {
            /// Required.
            pub topics: Vec<String>,
            /// Defaulted.
            #[serde(default = "seven")]
            pub qos: u8,
        }
    }

    fn seven() -> u8 {
        7
    }

    fn parse(v: serde_json::Value) -> std::result::Result<Probe, (String, String)> {
        serde_path_to_error::deserialize::<_, Probe>(v)
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
    }

    #[test]
    fn the_keys_list_matches_the_struct() {
        let schema = serde_json::to_value(schemars::schema_for!(MqttConnectionConfig)).unwrap();
        let mut props: Vec<&str> =
            schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = MqttConnectionConfig::KEYS.to_vec();
        props.sort_unstable();
        keys.sort_unstable();
        assert_eq!(props, keys);
    }

    #[test]
    fn flat_keys_land_in_their_struct_with_defaults() {
        let p = parse(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["a"], "keep_alive_secs": 5,
            "tls": {"ca_file": "/ca.pem"}
        }))
        .unwrap();
        assert_eq!(p.connection.keep_alive_secs, 5);
        assert_eq!(p.connection.connect_timeout_secs, 10);
        assert!(p.connection.tls.is_some());
        assert_eq!((p.topics, p.qos), (vec!["a".to_owned()], 7));
        let mut expected = MqttConnectionConfig::new("mqtt://h");
        expected.keep_alive_secs = 5;
        expected.tls = p.connection.tls.clone();
        assert_eq!(p.connection, expected);
    }

    #[test]
    fn errors_keep_their_key_paths_and_serde_wording() {
        let (path, msg) = parse(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["a"], "keep_alive_secs": "x"
        }))
        .unwrap_err();
        assert_eq!(path, "keep_alive_secs");
        assert!(msg.contains("invalid type"), "{msg}");

        let (path, _) = parse(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["a"], "tls": {"ca_flie": "x"}
        }))
        .unwrap_err();
        assert_eq!(path, "tls.ca_flie");

        let (path, _) =
            parse(serde_json::json!({"mqtt_url": "mqtt://h", "topics": [1]})).unwrap_err();
        assert_eq!(path, "topics[0]");

        let (_, msg) =
            parse(serde_json::json!({"mqtt_url": "mqtt://h", "topics": ["a"], "qso": 1}))
                .unwrap_err();
        assert_eq!(
            msg,
            "unknown field `qso`, expected one of `mqtt_url`, `client_id`, `keep_alive_secs`, \
             `connect_timeout_secs`, `username`, `password`, `max_packet_size`, \
             `reconnect_backoff`, `mqtt_version`, `tls`, `status_topic`, `topics`, `qos`"
        );

        let (_, msg) = parse(serde_json::json!({"topics": ["a"]})).unwrap_err();
        assert_eq!(msg, "missing field `mqtt_url`");
        let (_, msg) = parse(serde_json::json!({"mqtt_url": "mqtt://h"})).unwrap_err();
        assert_eq!(msg, "missing field `topics`");
        let (_, msg) = parse(serde_json::json!("mqtt://h")).unwrap_err();
        assert!(msg.contains("expected struct Probe"), "{msg}");
    }

    #[test]
    fn it_serializes_flat_and_reads_back() {
        let p = parse(serde_json::json!({"mqtt_url": "mqtt://h", "topics": ["a"]})).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["mqtt_url"], "mqtt://h");
        assert_eq!(v["qos"], 7);
        assert_eq!(parse(v).unwrap(), p);
        let back: Probe = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn the_schema_lists_every_key_with_its_doc_and_no_others() {
        let schema = serde_json::to_value(schemars::schema_for!(Probe)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for key in MqttConnectionConfig::KEYS.iter().chain(&["topics", "qos"]) {
            assert!(props[*key]["description"].is_string(), "{key}: {schema}");
        }
        assert_eq!(props.len(), MqttConnectionConfig::KEYS.len() + 2);
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        let required: Vec<&str> =
            schema["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["mqtt_url", "topics"]);
    }

    #[test]
    fn a_connection_checks_its_keys_at_their_paths() {
        let mut c = MqttConnectionConfig::new("mqtt://h");
        assert!(c.validate().is_empty());
        c.client_id = Some(String::new());
        c.keep_alive_secs = 0;
        c.password = Some(Secret::new("p"));
        c.tls = Some(MqttTlsConfig::default());
        c.status_topic = "a/+".into();
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["client_id", "keep_alive_secs", "password", "tls", "status_topic"]);
        c.mqtt_url = "tcp://h".into();
        assert!(c.settings("x", true).is_err());
    }
}
