//! The `[kafka]` table: where the brokers are and how we talk to them (security, timeouts,
//! backoff, batching, fetch sizes, topic auto-creation).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backoff::BackoffConfig;
use crate::config::{join_path, ConfigErrors};
use crate::Secret;

/// Compression applied to produced record batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression (default; fastest on a LAN).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// How connections to the brokers are secured: Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// Plain TCP, no login (default).
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS, no login (or a client certificate, with `ssl_certificate_file`).
    #[serde(alias = "SSL")]
    Ssl,
    /// SASL login over plain TCP. With `PLAIN` the password crosses the network unencrypted.
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL login over TLS.
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// True for `ssl` and `sasl_ssl`.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// True for `sasl_plaintext` and `sasl_ssl`.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SASL mechanism, by its Kafka name (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    /// `PLAIN`: user name and password sent as they are (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`: challenge-response; the password never crosses the network.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`: as `SCRAM-SHA-256`, with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name, as brokers and config spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach Kafka and how to batch, retry and fetch.
///
/// ```
/// use connector_core::kafka::KafkaConfig;
///
/// let config: KafkaConfig = serde_json::from_str(r#"{"bootstrap_servers": ["127.0.0.1:9092"]}"#)
///     .expect("valid");
/// assert_eq!(config.linger_ms, 5);
/// assert!(config.validate().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, as `host:port`. The rest of the cluster is discovered.
    pub bootstrap_servers: Vec<String>,
    /// Client id sent to the brokers (shows in broker logs and quotas).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// How connections are secured (Kafka's `security.protocol`): `plaintext` (default), `ssl`
    /// (TLS), `sasl_plaintext` (SASL login over plain TCP) or `sasl_ssl` (SASL login over TLS).
    /// Kafka's upper-case spellings (`SASL_SSL`) are accepted too.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CA certificates that sign the brokers' certificates, for `ssl` and
    /// `sasl_ssl`. Default: the operating system's root certificates.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM file of our client certificate (chain), for brokers that require client certificates
    /// (mutual TLS). Needs `ssl_key_file`.
    #[serde(default)]
    pub ssl_certificate_file: Option<PathBuf>,
    /// PEM file of the unencrypted private key (PKCS#8, PKCS#1 or SEC1) of
    /// `ssl_certificate_file`. Only its path is ever shown; its contents are never logged.
    #[serde(default)]
    pub ssl_key_file: Option<PathBuf>,
    /// Name to verify the brokers' certificates against (and to send as SNI) instead of the host
    /// of each broker's address: for brokers reached by IP address or through a tunnel.
    #[serde(default)]
    pub ssl_server_name: Option<String>,
    /// SASL mechanism for `sasl_plaintext` and `sasl_ssl`: `PLAIN`, `SCRAM-SHA-256` or
    /// `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password; `${VAR}` reads it from the environment. Set this or `sasl_password_file`.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// File holding the SASL password (one trailing newline is ignored), such as a mounted
    /// Kubernetes or Docker secret. Set this or `sasl_password`.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Largest time a broker may take to answer one request before we give up on it, drop the
    /// connection and retry.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest time to establish a TCP connection (and agree API versions) with a broker.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Cached topic metadata older than this is refreshed, so added partitions and moved leaders
    /// are picked up even when no error says so.
    #[serde(default = "default_metadata_max_age_ms")]
    pub metadata_max_age_ms: u64,
    /// Backoff between retries of failed broker calls.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: BackoffConfig,
    /// How long a partition's batch may wait for more records before it is sent. A batch is sent
    /// sooner when it is full, or when the task cannot deliver more until acknowledgements arrive.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Most records in one partition's batch.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most bytes (keys, values, headers) in one partition's batch.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Compression of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// Give up on a record that could not be delivered within this many milliseconds of its first
    /// attempt (default 120000, as the Java producer's `delivery.timeout.ms`; 0 = keep retrying
    /// while the task runs). A record given up on goes to the error policy; at-least-once holds
    /// either way, because an undelivered record is never acknowledged upstream. It also bounds
    /// how long an offset save to a Kafka offsets topic can take.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Create a topic that does not exist when a record is first written to it.
    #[serde(default = "default_true")]
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    #[serde(default = "default_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of an auto-created topic.
    #[serde(default = "default_topic_replication_factor")]
    pub topic_replication_factor: i16,
    /// Most bytes one fetch may return per partition (a larger first batch is still returned
    /// whole). Fetched records share the fetch's buffer, so a sink holds a few of these per
    /// partition: its prefetched batches, the one being put and those its unacknowledged
    /// publishes came from.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch waiting for new records.
    #[serde(default = "default_fetch_max_wait_ms")]
    pub fetch_max_wait_ms: u64,
    /// Largest response we accept from a broker, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

fn default_client_id() -> String {
    "iiot-connect".to_owned()
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_metadata_max_age_ms() -> u64 {
    300_000
}
fn default_retry_backoff() -> BackoffConfig {
    BackoffConfig::default()
}
fn default_linger_ms() -> u64 {
    5
}
fn default_batch_max_records() -> usize {
    10_000
}
fn default_batch_max_bytes() -> usize {
    1024 * 1024
}
fn default_delivery_timeout_ms() -> u64 {
    120_000
}
fn default_true() -> bool {
    true
}
fn default_topic_partitions() -> i32 {
    1
}
fn default_topic_replication_factor() -> i16 {
    1
}
fn default_fetch_max_bytes() -> i32 {
    // 256 KiB: the bench's sink rows ran as fast as with 1 MiB, with peak RSS 7 MiB lower.
    256 * 1024
}
fn default_fetch_max_wait_ms() -> u64 {
    500
}
fn default_max_message_size() -> usize {
    100 * 1024 * 1024
}

impl KafkaConfig {
    /// Defaults for everything but the bootstrap servers.
    pub fn new(bootstrap_servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into_iter().map(Into::into).collect(),
            client_id: default_client_id(),
            security_protocol: SecurityProtocol::Plaintext,
            ssl_ca_file: None,
            ssl_certificate_file: None,
            ssl_key_file: None,
            ssl_server_name: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            request_timeout_ms: default_request_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            metadata_max_age_ms: default_metadata_max_age_ms(),
            retry_backoff: default_retry_backoff(),
            linger_ms: default_linger_ms(),
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
            compression: Compression::None,
            delivery_timeout_ms: default_delivery_timeout_ms(),
            auto_create_topics: true,
            topic_partitions: default_topic_partitions(),
            topic_replication_factor: default_topic_replication_factor(),
            fetch_max_bytes: default_fetch_max_bytes(),
            fetch_max_wait_ms: default_fetch_max_wait_ms(),
            max_message_size: default_max_message_size(),
        }
    }

    /// Checks the values; paths are relative to the `[kafka]` table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.bootstrap_servers.is_empty() {
            e.push("bootstrap_servers", "at least one `host:port` is required");
        }
        for (i, s) in self.bootstrap_servers.iter().enumerate() {
            if let Err(msg) = check_host_port(s) {
                e.push(format!("bootstrap_servers[{i}]"), msg);
            }
        }
        if self.client_id.is_empty() {
            e.push("client_id", "must not be empty");
        }
        self.validate_tls(&mut e);
        self.validate_sasl(&mut e);
        for (key, v) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("metadata_max_age_ms", self.metadata_max_age_ms),
            ("fetch_max_wait_ms", self.fetch_max_wait_ms),
        ] {
            if v == 0 {
                e.push(key, "must be at least 1");
            }
        }
        if self.batch_max_records == 0 {
            e.push("batch_max_records", "must be at least 1");
        }
        if self.batch_max_bytes < 1024 {
            e.push("batch_max_bytes", "must be at least 1024");
        }
        if self.topic_partitions < 1 {
            e.push("topic_partitions", "must be at least 1");
        }
        if self.topic_replication_factor < 1 {
            e.push("topic_replication_factor", "must be at least 1");
        }
        if self.fetch_max_bytes < 1024 {
            e.push("fetch_max_bytes", "must be at least 1024");
        }
        if self.max_message_size < 1024 * 1024 {
            e.push("max_message_size", "must be at least 1048576");
        }
        for err in self.retry_backoff.validate() {
            e.push(join_path("retry_backoff", &err.path), err.message);
        }
        e
    }

    fn validate_tls(&self, e: &mut ConfigErrors) {
        let files = [
            ("ssl_ca_file", &self.ssl_ca_file),
            ("ssl_certificate_file", &self.ssl_certificate_file),
            ("ssl_key_file", &self.ssl_key_file),
        ];
        if !self.security_protocol.uses_tls() {
            let set = files.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k);
            for key in set.chain(self.ssl_server_name.is_some().then_some("ssl_server_name")) {
                e.push(
                    key,
                    format!(
                        "has no effect with security_protocol = \"{}\"; use \"ssl\" or \"sasl_ssl\"",
                        self.security_protocol
                    ),
                );
            }
            return;
        }
        for (key, path) in files {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                e.push(key, "must not be empty");
            }
        }
        match (&self.ssl_certificate_file, &self.ssl_key_file) {
            (Some(_), None) => e.push("ssl_key_file", "required with ssl_certificate_file"),
            (None, Some(_)) => e.push("ssl_certificate_file", "required with ssl_key_file"),
            _ => {}
        }
        if let Some(name) = &self.ssl_server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                e.push("ssl_server_name", format!("{name:?} is not a DNS name or IP address"));
            }
        }
    }

    fn validate_sasl(&self, e: &mut ConfigErrors) {
        if !self.security_protocol.uses_sasl() {
            let set = [
                ("sasl_mechanism", self.sasl_mechanism.is_some()),
                ("sasl_username", self.sasl_username.is_some()),
                ("sasl_password", self.sasl_password.is_some()),
                ("sasl_password_file", self.sasl_password_file.is_some()),
            ];
            for (key, _) in set.iter().filter(|(_, is_set)| *is_set) {
                e.push(
                    *key,
                    format!(
                        "has no effect with security_protocol = \"{}\"; use \"sasl_ssl\" or \"sasl_plaintext\"",
                        self.security_protocol
                    ),
                );
            }
            return;
        }
        let protocol = self.security_protocol;
        if self.sasl_mechanism.is_none() {
            e.push(
                "sasl_mechanism",
                format!(
                    "required with security_protocol = \"{protocol}\": PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                ),
            );
        }
        match &self.sasl_username {
            None => {
                e.push("sasl_username", format!("required with security_protocol = \"{protocol}\""))
            }
            Some(u) if u.is_empty() => e.push("sasl_username", "must not be empty"),
            Some(_) => {}
        }
        match (&self.sasl_password, &self.sasl_password_file) {
            (None, None) => e.push(
                "sasl_password",
                format!(
                    "required with security_protocol = \"{protocol}\" (or set sasl_password_file)"
                ),
            ),
            (Some(_), Some(_)) => {
                e.push("sasl_password_file", "set sasl_password or sasl_password_file, not both");
            }
            (Some(p), None) => {
                if let Err(msg) = p.validate() {
                    e.push("sasl_password", msg);
                }
            }
            (None, Some(f)) if f.as_os_str().is_empty() => {
                e.push("sasl_password_file", "must not be empty");
            }
            (None, Some(_)) => {}
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `request_timeout_ms` as the `timeout_ms` field of a request (an i32; longer is capped).
    pub(crate) fn request_timeout_field(&self) -> i32 {
        i32::try_from(self.request_timeout_ms).unwrap_or(i32::MAX)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

/// Checks a `host:port` string.
pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("expected host:port, got {s:?}"));
    };
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("invalid port in {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_reported_with_their_key_paths() {
        let mut c = KafkaConfig::new(["localhost:9092", "nohost", "h:0"]);
        c.linger_ms = 0; // allowed: send at once
        c.batch_max_records = 0;
        c.retry_backoff.jitter = 3.0;
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "bootstrap_servers[1]",
                "bootstrap_servers[2]",
                "batch_max_records",
                "retry_backoff.jitter"
            ]
        );
    }

    fn paths(c: &KafkaConfig) -> Vec<String> {
        c.validate().iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn security_keys_parse_with_kafka_names_and_default_to_plaintext() {
        let c: KafkaConfig = serde_json::from_str(r#"{"bootstrap_servers": ["a:1"]}"#).unwrap();
        assert_eq!(c.security_protocol, SecurityProtocol::Plaintext);
        let c: KafkaConfig = toml::from_str(
            r#"
            bootstrap_servers = ["kafka:9093"]
            security_protocol = "SASL_SSL"
            ssl_ca_file = "/etc/kafka/ca.pem"
            sasl_mechanism = "SCRAM-SHA-512"
            sasl_username = "connect"
            sasl_password = "${KAFKA_PASSWORD}"
            "#,
        )
        .unwrap();
        assert_eq!(c.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(c.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert!(c.validate().is_empty(), "{}", c.validate());
        let c: KafkaConfig =
            serde_json::from_str(r#"{"bootstrap_servers": ["a:1"], "security_protocol": "ssl"}"#)
                .unwrap();
        assert_eq!(c.security_protocol, SecurityProtocol::Ssl);
        assert!(serde_json::from_str::<KafkaConfig>(
            r#"{"bootstrap_servers": ["a:1"], "sasl_mechanism": "GSSAPI"}"#
        )
        .is_err());
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_one_password_source() {
        let mut c = KafkaConfig::new(["a:1"]);
        c.security_protocol = SecurityProtocol::SaslSsl;
        assert_eq!(paths(&c), ["sasl_mechanism", "sasl_username", "sasl_password"]);
        c.sasl_mechanism = Some(SaslMechanism::Plain);
        c.sasl_username = Some(String::new());
        c.sasl_password = Some(Secret::new("${NOT-A-VAR}"));
        assert_eq!(paths(&c), ["sasl_username", "sasl_password"]);
        c.sasl_username = Some("u".into());
        c.sasl_password = Some(Secret::new("p"));
        c.sasl_password_file = Some("/run/secrets/kafka".into());
        assert_eq!(paths(&c), ["sasl_password_file"]);
        c.sasl_password = None;
        assert!(c.validate().is_empty());
    }

    #[test]
    fn security_keys_that_the_protocol_would_ignore_are_reported() {
        let mut c = KafkaConfig::new(["a:1"]);
        c.ssl_ca_file = Some("/ca.pem".into());
        c.ssl_server_name = Some("kafka".into());
        c.sasl_username = Some("u".into());
        assert_eq!(paths(&c), ["ssl_ca_file", "ssl_server_name", "sasl_username"]);
        let msg = c.validate().iter().next().map(|e| e.message.clone()).unwrap();
        assert!(msg.contains("plaintext") && msg.contains("ssl"), "{msg}");
        c.security_protocol = SecurityProtocol::SaslPlaintext;
        assert!(paths(&c).contains(&"ssl_ca_file".to_owned()));
        assert!(!paths(&c).contains(&"sasl_username".to_owned()));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_server_name_must_be_valid() {
        let mut c = KafkaConfig::new(["a:1"]);
        c.security_protocol = SecurityProtocol::Ssl;
        c.ssl_certificate_file = Some("/client.pem".into());
        c.ssl_server_name = Some("not a name!".into());
        assert_eq!(paths(&c), ["ssl_key_file", "ssl_server_name"]);
        c.ssl_certificate_file = None;
        c.ssl_key_file = Some("/client.key".into());
        c.ssl_server_name = Some("127.0.0.1".into());
        assert_eq!(paths(&c), ["ssl_certificate_file"]);
    }

    #[test]
    fn debug_and_serialized_configs_do_not_show_the_password() {
        let mut c = KafkaConfig::new(["a:1"]);
        c.security_protocol = SecurityProtocol::SaslSsl;
        c.sasl_mechanism = Some(SaslMechanism::ScramSha256);
        c.sasl_username = Some("alice".into());
        c.sasl_password = Some(Secret::new("hunter2-very-secret"));
        c.ssl_key_file = Some("/etc/kafka/client.key".into());
        let debug = format!("{c:?}");
        assert!(debug.contains("alice") && debug.contains("client.key"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<KafkaConfig>(r#"{"bootstrap_servers": ["a:1"], "lingerms": 3}"#)
                .expect_err("unknown key");
        assert!(err.to_string().contains("lingerms"), "{err}");
    }
}
