//! The `connect` configuration file: `[kafka]`, `[offsets]`, `[progress]`, `[cluster]`, `[rest]`
//! and `[[connector]]` tables, read with every problem reported at its key path (`connector[0].qos: expected 0, 1 or
//! 2`), all at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ConfigErrors;
use crate::error_policy::ErrorPolicyConfig;
use crate::kafka::KafkaConfig;
use crate::runner::registry::{deserialize_lenient, BuiltConnector, ConnectorKind, Registry};
use crate::runtime::cluster::ClusterConfig;
use crate::runtime::{Pipeline, SinkRuntimeConfig, SourceRuntimeConfig};
use crate::secret::Secret;
use crate::transform::TransformChain;

/// Where connector offsets are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffsetStoreKind {
    /// A JSON file, replaced atomically on every save (default).
    #[default]
    File,
    /// A Kafka topic (Kafka Connect's format).
    Kafka,
    /// Memory only: lost when the process ends (tests, or connectors that keep no offsets).
    Memory,
}

/// The `[offsets]` table: where offsets are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetsConfig {
    /// `file` (default), `kafka` or `memory`.
    #[serde(default)]
    pub store: OffsetStoreKind,
    /// The offsets file, for `store = "file"` (relative to the working directory).
    #[serde(default = "default_offsets_path")]
    pub path: PathBuf,
    /// The offsets topic, for `store = "kafka"`.
    #[serde(default = "default_offsets_topic")]
    pub topic: String,
}

fn default_offsets_path() -> PathBuf {
    PathBuf::from("connect-offsets.json")
}
fn default_offsets_topic() -> String {
    "connect-offsets".to_owned()
}

impl Default for OffsetsConfig {
    fn default() -> Self {
        Self {
            store: OffsetStoreKind::File,
            path: default_offsets_path(),
            topic: default_offsets_topic(),
        }
    }
}

/// The `[progress]` table: the periodic one-line summary per connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressConfig {
    /// Seconds between summaries (0 = none).
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
}

fn default_interval_secs() -> u64 {
    10
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self { interval_secs: default_interval_secs() }
    }
}

/// The `[rest]` table: the REST API (Kafka Connect's), off when the table is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// Address and port the API listens on, e.g. `"127.0.0.1:8083"` (port 0: any free port).
    pub listen: String,
    /// Bearer token every request but `GET /health` must carry (`Authorization: Bearer ...`);
    /// write it `${CONNECT_TOKEN}` or `${file:/run/secrets/connect-token}`. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Serve HTTPS with this certificate and key (PEM files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RestTlsConfig>,
    /// Standalone mode: the directory where connectors created, changed or deleted through the
    /// API are kept (one `<name>.json` each, written atomically) and read back at start, over the
    /// file's `[[connector]]`s. Relative to the working directory.
    #[serde(default = "default_rest_config_dir")]
    pub config_dir: PathBuf,
}

/// `[rest].tls`: the REST API's certificate and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestTlsConfig {
    /// The server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

fn default_rest_config_dir() -> PathBuf {
    PathBuf::from("connect-rest.d")
}

impl RestConfig {
    /// The table's problems (pure: nothing is read or bound).
    ///
    /// ```
    /// use connector_core::runner::RestConfig;
    /// let rest: RestConfig = serde_json::from_str(r#"{"listen": "localhost"}"#).unwrap();
    /// assert_eq!(rest.validate().to_string(), "listen: expected address:port (e.g. 127.0.0.1:8083)");
    /// ```
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            e.push("listen", "expected address:port (e.g. 127.0.0.1:8083)");
        }
        if let Some(token) = &self.token {
            if let Err(why) = token.validate() {
                e.push("token", why);
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.as_os_str().is_empty() {
                e.push("tls.cert_file", "must not be empty");
            }
            if tls.key_file.as_os_str().is_empty() {
                e.push("tls.key_file", "must not be empty");
            }
        }
        if self.config_dir.as_os_str().is_empty() {
            e.push("config_dir", "must not be empty");
        }
        e
    }
}

/// One `[[connector]]`, built.
#[derive(Debug)]
pub struct ConnectorEntry {
    /// Unique name.
    pub name: String,
    /// Registered type name.
    pub type_name: String,
    /// The connector.
    pub connector: BuiltConnector,
    /// Runtime settings for a source.
    pub source_runtime: SourceRuntimeConfig,
    /// Runtime settings for a sink.
    pub sink_runtime: SinkRuntimeConfig,
    /// The table as written (`name` and `type` included, `${VAR}`s not expanded): what the REST
    /// API shows as the connector's config.
    pub raw: Map<String, Value>,
}

/// A whole configuration file, validated and built.
#[derive(Debug)]
pub struct ConnectFile {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[offsets]`.
    pub offsets: OffsetsConfig,
    /// `[progress]`.
    pub progress: ProgressConfig,
    /// `[cluster]` (its `group_id` possibly set by `connect run --group`).
    pub cluster: ClusterConfig,
    /// The hash every worker of a group must share: of the parsed file (`${VAR}`s expanded) in a
    /// canonical form (keys sorted), without the per-worker keys (`[cluster].worker_id`, `[rest]`). 16 hex
    /// digits (FNV-1a, 64 bits: it tells configurations apart, it is not a signature).
    pub config_hash: String,
    /// `[rest]`: the REST API, when set.
    pub rest: Option<RestConfig>,
    /// The `[[connector]]`s, in file order (none is allowed when `[rest]` is set).
    pub connectors: Vec<ConnectorEntry>,
}

const TOP_LEVEL: [&str; 6] = ["kafka", "offsets", "progress", "cluster", "rest", "connector"];
/// Keys of a `[[connector]]` table the runner handles; the rest belongs to the connector type.
const COMMON: [&str; 8] = [
    "name",
    "type",
    "runtime",
    "errors",
    "key_converter",
    "value_converter",
    "json_reserialize",
    "transforms",
];

impl ConnectFile {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// Every problem, each with its key path; an unreadable file is one error naming it.
    pub fn load(path: &Path, registry: &Registry) -> Result<Self, ConfigErrors> {
        Self::load_with_group(path, registry, None)
    }

    /// [`load`](Self::load), with the worker group set to `group` (`connect run --group`)
    /// whatever `[cluster].group_id` says; checked with the rest (a group needs
    /// `offsets.store = "kafka"`).
    ///
    /// # Errors
    /// Every problem, each with its key path; an unreadable file is one error naming it.
    pub fn load_with_group(
        path: &Path,
        registry: &Registry,
        group: Option<&str>,
    ) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut errors = ConfigErrors::new();
            errors.push("", format!("cannot read {}: {e}", path.display()));
            errors
        })?;
        Self::parse_with_group(&text, registry, group)
    }

    /// Parses and validates configuration text.
    ///
    /// ```
    /// use connector_core::runner::{ConnectFile, Registry};
    ///
    /// let errors = ConnectFile::parse("[kafka]\nbootstrap_servers = []\nlinger = 5\n", &Registry::new())
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(errors.contains("kafka.linger: unknown key"), "{errors}");
    /// assert!(errors.contains("connector: at least one [[connector]]"), "{errors}");
    ///
    /// let errors = ConnectFile::parse("[kafka]\nbootstrap_servers = []\n", &Registry::new())
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(errors.contains("kafka.bootstrap_servers: at least one"), "{errors}");
    /// ```
    ///
    /// # Errors
    /// Every problem, each with its key path.
    pub fn parse(text: &str, registry: &Registry) -> Result<Self, ConfigErrors> {
        Self::parse_with_group(text, registry, None)
    }

    /// [`parse`](Self::parse), with the worker group set to `group` (see
    /// [`load_with_group`](Self::load_with_group)).
    ///
    /// ```
    /// use connector_core::runner::{ConnectFile, Registry};
    /// let text = "[kafka]\nbootstrap_servers = [\"k:9092\"]\n";
    /// let errors = ConnectFile::parse_with_group(text, &Registry::new(), Some("workers"))
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(errors.contains("offsets.store: distributed mode needs store = \"kafka\""), "{errors}");
    /// ```
    ///
    /// # Errors
    /// Every problem, each with its key path.
    pub fn parse_with_group(
        text: &str,
        registry: &Registry,
        group: Option<&str>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let root: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                errors.push(
                    "",
                    format!("not valid TOML: {}", e.message().trim()).replace('\n', " ")
                        + &e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default(),
                );
                return Err(errors);
            }
        };
        // From here on the configuration is format-neutral: a JSON object (what the registry takes).
        let mut root = match serde_json::to_value(root) {
            Ok(Value::Object(m)) => m,
            Ok(_) | Err(_) => {
                errors.push("", "the file does not convert to a JSON object");
                return Err(errors);
            }
        };
        for key in root.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                // The empty key (`'' = 1`) is written `""` so that the error still has a path.
                let path = if key.is_empty() { "\"\"".to_owned() } else { key.clone() };
                errors.push(
                    path,
                    "unknown key (expected kafka, offsets, progress, cluster, rest, connector)",
                );
            }
        }
        let config_hash = config_hash(&root);
        // Known even when [cluster] has other problems, so that this one is reported with them.
        let grouped = group.is_some()
            || root.get("cluster").and_then(|c| c.get("group_id")).is_some_and(Value::is_string);

        let kafka = match root.remove("kafka") {
            Some(Value::Object(t)) => {
                section::<KafkaConfig>(t, "kafka", &mut errors, |k| k.validate())
            }
            Some(_) => {
                errors.push("kafka", "expected a table");
                None
            }
            None => {
                errors.push("kafka", "is required (at least bootstrap_servers)");
                None
            }
        };
        let offsets = match root.remove("offsets") {
            Some(Value::Object(t)) => {
                section::<OffsetsConfig>(t, "offsets", &mut errors, validate_offsets)
            }
            Some(_) => {
                errors.push("offsets", "expected a table");
                None
            }
            None => Some(OffsetsConfig::default()),
        };
        let progress = match root.remove("progress") {
            Some(Value::Object(t)) => {
                section::<ProgressConfig>(t, "progress", &mut errors, |_| ConfigErrors::new())
            }
            Some(_) => {
                errors.push("progress", "expected a table");
                None
            }
            None => Some(ProgressConfig::default()),
        };

        let cluster = match root.remove("cluster") {
            Some(Value::Object(t)) => {
                section::<ClusterConfig>(t, "cluster", &mut errors, ClusterConfig::validate)
            }
            Some(_) => {
                errors.push("cluster", "expected a table");
                None
            }
            None => Some(ClusterConfig::default()),
        };
        let cluster = cluster.map(|mut c| {
            if let Some(g) = group {
                c.group_id = Some(g.to_owned());
            }
            c
        });
        if let Some(o) = &offsets {
            if grouped && o.store != OffsetStoreKind::Kafka {
                errors.push(
                    "offsets.store",
                    "distributed mode needs store = \"kafka\" (every worker of the group reads and writes source offsets there; a [cluster] group_id or --group is set)",
                );
            }
        }

        let rest = match root.remove("rest") {
            Some(Value::Object(t)) => {
                section::<RestConfig>(t, "rest", &mut errors, RestConfig::validate).map(Some)
            }
            Some(_) => {
                errors.push("rest", "expected a table");
                None
            }
            None => Some(None),
        };
        let has_rest = matches!(rest, Some(Some(_)));

        let mut connectors = Vec::new();
        match root.remove("connector") {
            Some(Value::Array(items)) if !items.is_empty() => {
                let mut names: HashMap<String, usize> = HashMap::new();
                for (i, item) in items.into_iter().enumerate() {
                    let prefix = format!("connector[{i}]");
                    let Value::Object(table) = item else {
                        errors.push(prefix, "expected a table ([[connector]])");
                        continue;
                    };
                    if let Some(Value::String(n)) = table.get("name") {
                        check_unique(n, &prefix, i, &mut names, &mut errors);
                    }
                    if let Some(entry) = connector(&prefix, table, registry, &mut errors) {
                        connectors.push(entry);
                    }
                }
            }
            Some(Value::Array(_)) | None if has_rest => {}
            Some(Value::Array(_)) | None => errors.push(
                "connector",
                "at least one [[connector]] is required (or a [rest] table, to create them through the API)",
            ),
            Some(_) => errors.push("connector", "expected [[connector]] tables"),
        }

        // Exactly-once sources write their offsets in the same Kafka transaction as the records.
        if offsets.as_ref().is_some_and(|o| o.store != OffsetStoreKind::Kafka) {
            for c in &connectors {
                if matches!(&c.connector, BuiltConnector::Source(s) if s.exactly_once()) {
                    errors.push(
                        "offsets.store",
                        format!("connector {:?} has exactly_once = true, which needs store = \"kafka\" (its source offsets are written in the same Kafka transaction as its records)", c.name),
                    );
                }
            }
        }

        if offsets.as_ref().is_some_and(|o| o.store == OffsetStoreKind::Memory) {
            // An exactly-once sink keeps its QoS 2 packet-id state in the offset store: the
            // memory store forgets it (and the offsets) with the process, so a restart would
            // publish commands again. The file store (fsync, rename, directory fsync) and the
            // Kafka store are durable.
            for c in &connectors {
                if matches!(c.connector, BuiltConnector::Sink(_))
                    && c.raw.get("exactly_once") == Some(&Value::Bool(true))
                {
                    errors.push(
                        "offsets.store",
                        format!(
                            "connector {}: exactly_once = true needs a durable offset store (store = \"kafka\" or \"file\"); \"memory\" loses its state with the process",
                            c.name
                        ),
                    );
                }
            }
        }

        match (kafka, offsets, progress, cluster, rest) {
            (Some(kafka), Some(offsets), Some(progress), Some(cluster), Some(rest))
                if errors.is_empty() =>
            {
                Ok(Self { kafka, offsets, progress, cluster, config_hash, rest, connectors })
            }
            _ => Err(errors),
        }
    }
}

/// The configuration's hash: the parsed file without `[cluster].worker_id` and `[rest]`, `${VAR}`s expanded,
/// written with sorted keys, hashed with 64-bit FNV-1a.
fn config_hash(root: &Map<String, Value>) -> String {
    let mut root = root.clone();
    if let Some(Value::Object(c)) = root.get_mut("cluster") {
        c.remove("worker_id");
    }
    // Each worker has its own listener (and maybe token); the API's changes are kept elsewhere.
    root.remove("rest");
    let mut text = String::new();
    crate::offset::write_canonical(&expanded(Value::Object(root)), &mut text);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `v` with `${VAR}`s in every string expanded.
fn expanded(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, expanded(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(expanded).collect()),
        Value::String(s) => Value::String(expand_env(&s)),
        other => other,
    }
}

/// `s` with each `${VAR}` whose variable is set replaced by its value.
fn expand_env(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else { break };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => out.push_str(&rest[start..start + 3 + len]),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

fn validate_offsets(o: &OffsetsConfig) -> ConfigErrors {
    let mut e = ConfigErrors::new();
    if o.store == OffsetStoreKind::File && o.path.as_os_str().is_empty() {
        e.push("path", "must not be empty");
    }
    if o.store == OffsetStoreKind::Kafka {
        if let Err(msg) = crate::kafka::validate_topic_name(&o.topic) {
            e.push("topic", msg);
        }
    }
    e
}

/// Deserializes and validates one table, recording errors under `prefix`: its unknown keys and
/// what `validate` finds, all at once.
fn section<T: serde::de::DeserializeOwned>(
    table: Map<String, Value>,
    prefix: &str,
    errors: &mut ConfigErrors,
    validate: impl Fn(&T) -> ConfigErrors,
) -> Option<T> {
    let (value, mut problems) = deserialize_lenient::<T>(Value::Object(table));
    if let Some(v) = &value {
        problems.extend(validate(v));
    }
    if problems.is_empty() {
        value
    } else {
        errors.extend(problems.prefixed(prefix));
        None
    }
}

/// A single TOML value as `T`, recording an error at `path`.
fn value_as<T: serde::de::DeserializeOwned>(
    v: Value,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<T> {
    match T::deserialize(v) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(path, e.to_string().trim().replace('`', ""));
            None
        }
    }
}

/// The connector's converters, transforms and error policy; the error policy also on its own
/// (`None` when its table is wrong), so that the connector's config can be checked against it
/// even when another part of the pipeline is wrong.
fn pipeline(
    table: &mut Map<String, Value>,
    prefix: &str,
    registry: &Registry,
    errors: &mut ConfigErrors,
) -> (Option<Pipeline>, Option<ErrorPolicyConfig>) {
    let before = errors.iter().count();
    let mut p = Pipeline::default();
    let mut policy = Some(ErrorPolicyConfig::default());
    match table.remove("errors") {
        Some(Value::Object(t)) => {
            policy = section::<ErrorPolicyConfig>(
                t,
                &at(prefix, "errors"),
                errors,
                ErrorPolicyConfig::validate,
            );
            if let Some(c) = &policy {
                p.errors = c.clone();
            }
        }
        Some(_) => {
            policy = None;
            errors.push(at(prefix, "errors"), "expected a table");
        }
        None => {}
    }
    if let Some(v) = table.remove("key_converter") {
        p.key_converter = value_as(v, &at(prefix, "key_converter"), errors).unwrap_or_default();
    }
    if let Some(v) = table.remove("value_converter") {
        p.value_converter = value_as(v, &at(prefix, "value_converter"), errors).unwrap_or_default();
    }
    if let Some(v) = table.remove("json_reserialize") {
        p.json_reserialize =
            value_as(v, &at(prefix, "json_reserialize"), errors).unwrap_or_default();
    }
    match table.remove("transforms") {
        Some(Value::Array(items)) => {
            let mut chain = TransformChain::new();
            for (j, item) in items.into_iter().enumerate() {
                let path = at(prefix, &format!("transforms[{j}]"));
                let Value::Object(mut t) = item else {
                    errors.push(path, "expected a table ([[connector.transforms]])");
                    continue;
                };
                let Some(Value::String(kind)) = t.remove("type") else {
                    let known: Vec<&str> = registry.transform_types().collect();
                    errors.push(
                        format!("{path}.type"),
                        format!("is required (one of: {})", known.join(", ")),
                    );
                    continue;
                };
                let name = match t.remove("name") {
                    Some(v) => {
                        value_as::<String>(v, &format!("{path}.name"), errors).unwrap_or_default()
                    }
                    None => kind.clone(),
                };
                let negate = match t.remove("negate") {
                    Some(v) => {
                        value_as::<bool>(v, &format!("{path}.negate"), errors).unwrap_or_default()
                    }
                    None => false,
                };
                let predicate = match t.remove("predicate") {
                    Some(Value::Object(mut pt)) => match pt.remove("type") {
                        Some(Value::String(ptype)) => {
                            match registry.build_predicate(&ptype, Value::Object(pt)) {
                                Ok(p) => Some(p),
                                Err(e) => {
                                    errors.extend(e.prefixed(&format!("{path}.predicate")));
                                    None
                                }
                            }
                        }
                        _ => {
                            let known: Vec<&str> = registry.predicate_types().collect();
                            errors.push(
                                format!("{path}.predicate.type"),
                                format!("is required (one of: {})", known.join(", ")),
                            );
                            None
                        }
                    },
                    Some(_) => {
                        errors.push(
                            format!("{path}.predicate"),
                            "expected a table, e.g. { type = \"record_is_tombstone\" }",
                        );
                        None
                    }
                    None => {
                        if negate {
                            errors.push(format!("{path}.negate"), "needs a predicate");
                        }
                        None
                    }
                };
                match registry.build_transform(&kind, Value::Object(t)) {
                    Ok(transform) => chain.push(name, transform, predicate, negate),
                    Err(e) => errors.extend(e.prefixed(&path)),
                }
            }
            p.transforms = chain;
        }
        Some(_) => {
            errors.push(at(prefix, "transforms"), "expected [[connector.transforms]] tables")
        }
        None => {}
    }
    ((errors.iter().count() == before).then_some(p), policy)
}

/// A connector config given as JSON (the REST API's): one `[[connector]]` table, `name` and
/// `type` included, built with `registry` and checked as `connect validate` checks a file's, every
/// problem at its key path relative to the table (`qos`, `transforms[0].type`, `runtime.max_in_flight`).
///
/// ```
/// use connector_core::runner::{connector_from_json, Registry};
///
/// let config = serde_json::json!({"name": "a", "type": "nope"});
/// let errors = connector_from_json(config.as_object().unwrap().clone(), &Registry::new())
///     .unwrap_err()
///     .to_string();
/// assert!(errors.starts_with("type: unknown connector type \"nope\""), "{errors}");
/// ```
///
/// # Errors
/// Every problem, each with its key path.
pub fn connector_from_json(
    config: Map<String, Value>,
    registry: &Registry,
) -> Result<ConnectorEntry, ConfigErrors> {
    let mut errors = ConfigErrors::new();
    match connector("", config, registry, &mut errors) {
        Some(entry) if errors.is_empty() => Ok(entry),
        _ => Err(errors),
    }
}

/// Records a duplicate connector name (`n` of `connector[i]`).
fn check_unique(
    n: &str,
    prefix: &str,
    i: usize,
    names: &mut HashMap<String, usize>,
    errors: &mut ConfigErrors,
) {
    if n.trim().is_empty() {
        return;
    }
    if let Some(first) = names.get(n) {
        errors.push(
            at(prefix, "name"),
            format!("duplicate connector name {n:?} (also connector[{first}])"),
        );
    } else {
        names.insert(n.to_owned(), i);
    }
}

/// `key` under `prefix` (`connector[0].qos`, or `qos` for an empty prefix).
fn at(prefix: &str, key: &str) -> String {
    crate::config::join_path(prefix, key)
}

/// One connector table, built; its problems recorded under `prefix` (empty: relative to it).
fn connector(
    prefix: &str,
    mut table: Map<String, Value>,
    registry: &Registry,
    errors: &mut ConfigErrors,
) -> Option<ConnectorEntry> {
    let raw = table.clone();
    let name = match table.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => Some(n),
        Some(_) => {
            errors.push(at(prefix, "name"), "expected a non-empty string");
            None
        }
        None => {
            errors.push(at(prefix, "name"), "is required");
            None
        }
    };
    let type_name = match table.remove("type") {
        Some(Value::String(t)) => Some(t),
        Some(_) => {
            errors.push(at(prefix, "type"), "expected a string");
            None
        }
        None => {
            let known: Vec<&str> = registry.type_names().collect();
            errors.push(at(prefix, "type"), format!("is required (one of: {})", known.join(", ")));
            None
        }
    };
    let kind = type_name.as_deref().and_then(|t| registry.kind(t));
    let runtime = table.remove("runtime");
    let (mut source_runtime, mut sink_runtime) =
        (Some(SourceRuntimeConfig::default()), Some(SinkRuntimeConfig::default()));
    if let Some(runtime) = runtime {
        let path = at(prefix, "runtime");
        match (runtime, kind) {
            (Value::Object(t), Some(ConnectorKind::Source)) => {
                source_runtime = section(t, &path, errors, SourceRuntimeConfig::validate);
            }
            (Value::Object(t), Some(ConnectorKind::Sink)) => {
                sink_runtime = section(t, &path, errors, SinkRuntimeConfig::validate);
            }
            (Value::Object(_), None) => {}
            _ => errors.push(path, "expected a table"),
        }
    }
    let (pipeline, policy) = pipeline(&mut table, prefix, registry, errors);
    debug_assert!(COMMON.iter().all(|k| !table.contains_key(*k)));
    // The connector's own keys are checked even when the common ones are wrong, so that every
    // problem is reported at once (a missing name does not hide them either).
    let type_name = type_name?;
    let name_or_type = name.as_deref().unwrap_or(&type_name);
    let built = match &policy {
        Some(policy) => {
            registry.build_with_error_policy(&type_name, name_or_type, Value::Object(table), policy)
        }
        None => registry.build(&type_name, name_or_type, Value::Object(table)),
    };
    let connector = match built {
        Ok(connector) => Some(connector),
        Err(e) => {
            errors.extend(e.prefixed(prefix));
            None
        }
    };
    let (
        Some(name),
        Some(connector),
        Some(pipeline),
        Some(mut source_runtime),
        Some(mut sink_runtime),
    ) = (name, connector, pipeline, source_runtime, sink_runtime)
    else {
        return None;
    };
    source_runtime.pipeline = pipeline.clone();
    sink_runtime.pipeline = pipeline;
    Some(ConnectorEntry { name, type_name, connector, source_runtime, sink_runtime, raw })
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use schemars::JsonSchema;
    use serde::Deserialize;

    use super::*;
    use crate::config::ConnectorConfig;
    use crate::record::SourceRecord;
    use crate::source::{SourceConnector, SourceTask, SourceTaskContext};

    /// Test config.
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct TickerConfig {
        /// Topic.
        topic: String,
        /// Records per poll.
        #[serde(default = "one")]
        batch: usize,
    }
    fn one() -> usize {
        1
    }

    impl ConnectorConfig for TickerConfig {
        fn validate(&self) -> ConfigErrors {
            let mut e = ConfigErrors::new();
            if let Err(why) = crate::kafka::validate_topic_name(&self.topic) {
                e.push("topic", why);
            }
            if !(1..=1000).contains(&self.batch) {
                e.push("batch", "expected 1..=1000");
            }
            e
        }
    }

    struct Ticker;
    struct TickerTask;

    #[async_trait]
    impl SourceTask for TickerTask {
        async fn start(&mut self, _: SourceTaskContext) -> crate::Result<()> {
            Ok(())
        }
        async fn poll(&mut self) -> crate::Result<Vec<SourceRecord>> {
            Ok(vec![])
        }
    }

    impl SourceConnector for Ticker {
        type Config = TickerConfig;
        type TaskConfig = ();
        type Task = TickerTask;
        fn create(_: &str, _: TickerConfig) -> crate::Result<Self> {
            Ok(Ticker)
        }
        fn task_configs(&self, _: usize) -> crate::Result<Vec<()>> {
            Ok(vec![()])
        }
        fn create_task(&self, _: ()) -> crate::Result<TickerTask> {
            Ok(TickerTask)
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register_source::<Ticker>("ticker");
        r
    }

    fn problems(text: &str) -> Vec<String> {
        let e = ConnectFile::parse(text, &registry()).unwrap_err();
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_unknown_key_does_not_hide_the_invalid_values() {
        let got = problems(
            r#"
            [kafka]
            bootstrap_servers = ["localhost:9092"]

            [[connector]]
            name = "ticks"
            type = "ticker"
            topic = "bad topic"
            batch = 0
            colour = "red"
            "#,
        );
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("connector[0].colour: unknown key"), "{got:#?}");
        assert_eq!(
            got[1],
            "connector[0].topic: Kafka topic name \"bad topic\" contains ' '; only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
        assert_eq!(got[2], "connector[0].batch: expected 1..=1000");
    }

    #[test]
    fn every_section_reports_its_unknown_keys_and_invalid_values_together() {
        let got = problems(
            r#"
            colour = "red"
            [kafka]
            bootstrap_servers = []
            linger = 5
            lingering = 6

            [[connector]]
            type = "ticker"
            topic = "ok"
            batch = 0
            shape = "round"
            [connector.errors]
            dead_letter_topic = "dlq"
            retries = 3
            "#,
        );
        for expected in [
            "colour: unknown key",
            "kafka.linger: unknown key",
            "kafka.lingering: unknown key",
            "kafka.bootstrap_servers: at least one",
            "connector[0].name: is required",
            "connector[0].errors.retries: unknown key",
            "connector[0].errors.dead_letter_topic: needs tolerance",
            "connector[0].shape: unknown key",
            "connector[0].batch: expected 1..=1000",
        ] {
            assert!(got.iter().any(|p| p.starts_with(expected)), "{expected:?} in {got:#?}");
        }
        assert_eq!(got.len(), 9, "{got:#?}");
    }

    #[test]
    fn the_config_hash_ignores_the_worker_id_key_order_and_formatting_but_not_values() {
        let base = "[kafka]\nbootstrap_servers = [\"localhost:9092\"]\n[offsets]\nstore = \"kafka\"\n[cluster]\ngroup_id = \"g\"\nworker_id = \"a\"\n[[connector]]\nname = \"t\"\ntype = \"ticker\"\ntopic = \"ok\"\n";
        let other_worker = "[cluster]\nworker_id = \"b\"\ngroup_id = \"g\"\n[offsets]\nstore = \"kafka\"\n[kafka]\nbootstrap_servers = [ \"localhost:9092\" ]\n[[connector]]\ntopic = \"ok\"\nname = \"t\"\ntype = \"ticker\"\n";
        let other_topic = base.replace("topic = \"ok\"", "topic = \"ko\"");
        let hash = |t: &str| ConnectFile::parse(t, &registry()).unwrap().config_hash;
        assert_eq!(hash(base), hash(other_worker));
        assert_ne!(hash(base), hash(&other_topic));
        assert_eq!(hash(base).len(), 16);
    }

    #[test]
    fn a_group_with_a_file_store_is_reported_with_the_other_errors() {
        let got = problems(
            "[kafka]\nbootstrap_servers = [\"localhost:9092\"]\n[cluster]\ngroup_id = \"g\"\nheartbeat_interval_ms = 20000\n[[connector]]\nname = \"t\"\ntype = \"ticker\"\ntopic = \"bad topic\"\n",
        );
        for expected in [
            "cluster.heartbeat_interval_ms: must be above 0 and below session_timeout_ms",
            "offsets.store: distributed mode needs store = \"kafka\"",
            "connector[0].topic:",
        ] {
            assert!(got.iter().any(|p| p.starts_with(expected)), "{expected:?} in {got:#?}");
        }
        let text = "[kafka]\nbootstrap_servers = [\"localhost:9092\"]\n[[connector]]\nname = \"t\"\ntype = \"ticker\"\ntopic = \"ok\"\n";
        let e = ConnectFile::parse_with_group(text, &registry(), Some("g")).unwrap_err();
        assert!(e.to_string().contains("offsets.store: distributed mode"), "{e}");
    }

    #[test]
    fn a_valid_file_builds() {
        let text = "[kafka]\nbootstrap_servers = [\"localhost:9092\"]\n[[connector]]\nname = \"t\"\ntype = \"ticker\"\ntopic = \"ok\"\n";
        let file = ConnectFile::parse(text, &registry()).unwrap();
        assert_eq!(file.connectors.len(), 1);
        assert_eq!(file.connectors[0].name, "t");
    }

    #[test]
    fn a_rest_table_allows_zero_connectors_and_its_problems_have_key_paths() {
        let ok = "[kafka]\nbootstrap_servers = [\"k:9092\"]\n[rest]\nlisten = \"127.0.0.1:0\"\n";
        let file = ConnectFile::parse(ok, &registry()).unwrap();
        assert!(file.connectors.is_empty());
        let rest = file.rest.unwrap();
        assert_eq!(rest.config_dir, PathBuf::from("connect-rest.d"));
        assert!(rest.token.is_none() && rest.tls.is_none());
        let got = problems(
            "[kafka]\nbootstrap_servers = [\"k:9092\"]\n[rest]\nlisten = \"nowhere\"\ntoken = \"${no such}\"\nport = 1\n",
        );
        for expected in ["rest.listen: expected address:port", "rest.port: unknown key"] {
            assert!(got.iter().any(|p| p.starts_with(expected)), "{expected:?} in {got:#?}");
        }
        // The [rest] table is per worker: it does not change a group's config hash.
        let hash = |t: &str| ConnectFile::parse(t, &registry()).unwrap().config_hash;
        let other = ok.replace("127.0.0.1:0", "127.0.0.1:8083");
        assert_eq!(hash(ok), hash(&other));
    }

    #[test]
    fn a_json_connector_config_is_built_with_key_paths_relative_to_it_and_kept_raw() {
        let bad = serde_json::json!({
            "name": "t", "type": "ticker", "topic": "ok", "batch": 0,
            "transforms": [{"type": "nope"}], "runtime": {"max_in_flight_records": 0},
        });
        let errors = connector_from_json(bad.as_object().unwrap().clone(), &registry())
            .unwrap_err()
            .to_string();
        for expected in
            ["batch: expected 1..=1000", "transforms[0]", "runtime.max_in_flight_records"]
        {
            assert!(errors.lines().any(|l| l.starts_with(expected)), "{expected:?} in {errors}");
        }
        assert!(!errors.contains("connector["), "{errors}");
        let good = serde_json::json!({"name": "t", "type": "ticker", "topic": "ok"});
        let entry = connector_from_json(good.as_object().unwrap().clone(), &registry()).unwrap();
        assert_eq!(entry.raw, *good.as_object().unwrap());
        assert_eq!((entry.name.as_str(), entry.type_name.as_str()), ("t", "ticker"));
    }
}
