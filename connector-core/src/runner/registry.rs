//! [`Registry`]: connector types by name (`type = "mqtt-source"`), so the runner can build a
//! connector from its TOML table and describe its configuration. Applications register their own
//! types next to the built-in ones.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ConfigError, ConfigErrors, ConnectorConfig};
use crate::error_policy::ErrorPolicyConfig;
use crate::sink::{DynSinkConnector, SinkConnector};
use crate::source::{DynSourceConnector, SourceConnector};
use crate::transform::{
    DropHeaders, ExtractField, Filter, HasHeaderKey, HeaderFrom, InsertHeader, Predicate,
    RecordIsTombstone, RegexRouter, RegexRouterConfig, TimestampRouter, TopicNameMatches,
    TopicNameMatchesConfig, Transform, ValueToKey,
};

/// Whether a type reads into Kafka or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Writes into Kafka.
    Source,
    /// Reads from Kafka.
    Sink,
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
        })
    }
}

/// A connector built from its configuration.
pub enum BuiltConnector {
    /// A source connector.
    Source(Box<dyn DynSourceConnector>),
    /// A sink connector.
    Sink(Box<dyn DynSinkConnector>),
}

impl fmt::Debug for BuiltConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuiltConnector::Source(_) => f.write_str("BuiltConnector::Source"),
            BuiltConnector::Sink(_) => f.write_str("BuiltConnector::Sink"),
        }
    }
}

type BuildFn = dyn Fn(&str, Value, Option<&ErrorPolicyConfig>) -> Result<BuiltConnector, ConfigErrors>
    + Send
    + Sync;
type SchemaFn = dyn Fn() -> Value + Send + Sync;
type TransformFn = dyn Fn(Value) -> Result<Box<dyn Transform>, ConfigErrors> + Send + Sync;
type PredicateFn = dyn Fn(Value) -> Result<Box<dyn Predicate>, ConfigErrors> + Send + Sync;

struct Described<F: ?Sized> {
    build: Arc<F>,
    schema: Arc<SchemaFn>,
}

// Written out: a derived Clone would require `F: Clone`, which a `dyn Fn` is not.
impl<F: ?Sized> Clone for Described<F> {
    fn clone(&self) -> Self {
        Self { build: Arc::clone(&self.build), schema: Arc::clone(&self.schema) }
    }
}

#[derive(Clone)]
struct Entry {
    kind: ConnectorKind,
    build: Arc<BuildFn>,
    schema: Arc<SchemaFn>,
}

/// Connector types by name.
///
/// ```
/// use connector_core::runner::{ConnectorKind, Registry};
/// # use async_trait::async_trait;
/// # use connector_core::*;
/// # use schemars::JsonSchema;
/// # use serde::Deserialize;
/// # /// Config.
/// # #[derive(Debug, Deserialize, JsonSchema)]
/// # #[serde(deny_unknown_fields)]
/// # struct HelloConfig { /// Topic.
/// #     topic: String }
/// # impl ConnectorConfig for HelloConfig {}
/// # struct Hello;
/// # struct HelloTask;
/// # #[async_trait]
/// # impl SourceTask for HelloTask {
/// #     async fn start(&mut self, _: SourceTaskContext) -> Result<()> { Ok(()) }
/// #     async fn poll(&mut self) -> Result<Vec<SourceRecord>> { Ok(vec![]) }
/// # }
/// # impl SourceConnector for Hello {
/// #     type Config = HelloConfig; type TaskConfig = (); type Task = HelloTask;
/// #     fn create(_: &str, _: HelloConfig) -> Result<Self> { Ok(Hello) }
/// #     fn task_configs(&self, _: usize) -> Result<Vec<()>> { Ok(vec![()]) }
/// #     fn create_task(&self, _: ()) -> Result<HelloTask> { Ok(HelloTask) }
/// # }
/// let mut registry = Registry::new();
/// registry.register_source::<Hello>("hello");
/// assert_eq!(registry.kind("hello"), Some(ConnectorKind::Source));
/// let config = serde_json::json!({ "topic": "greetings" });
/// assert!(registry.build("hello", "greeter", config).is_ok());
/// // Any serde format converts: here a TOML table.
/// let bad: toml::Table = toml::from_str(r#"topik = "greetings""#).unwrap();
/// let bad = serde_json::to_value(bad).unwrap();
/// let errors = registry.build("hello", "greeter", bad).unwrap_err().to_string();
/// assert!(errors.starts_with("topik: unknown key"), "{errors}");
/// assert!(errors.contains("topic: is required"), "every problem at once: {errors}");
/// ```
#[derive(Clone)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
    transforms: BTreeMap<String, Described<TransformFn>>,
    predicates: BTreeMap<String, Described<PredicateFn>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("connectors", &self.entries.iter().map(|(k, v)| (k, v.kind)).collect::<Vec<_>>())
            .field("transforms", &self.transforms.keys().collect::<Vec<_>>())
            .field("predicates", &self.predicates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// No connector types; the built-in transforms and predicates.
    pub fn new() -> Self {
        let mut r = Self {
            entries: BTreeMap::new(),
            transforms: BTreeMap::new(),
            predicates: BTreeMap::new(),
        };
        r.register_transform("insert_header", |c: InsertHeader| {
            Ok(Box::new(c) as Box<dyn Transform>)
        })
        .register_transform("drop_headers", |c: DropHeaders| Ok(Box::new(c) as Box<dyn Transform>))
        .register_transform("header_from", |c: HeaderFrom| {
            if c.fields.len() == c.headers.len() {
                Ok(Box::new(c) as Box<dyn Transform>)
            } else {
                Err(ConfigError::new("headers", "give one header per field").into())
            }
        })
        .register_transform("value_to_key", |c: ValueToKey| Ok(Box::new(c) as Box<dyn Transform>))
        .register_transform(
            "extract_field",
            |c: ExtractField| Ok(Box::new(c) as Box<dyn Transform>),
        )
        .register_transform("regex_router", |c: RegexRouterConfig| {
            Ok(Box::new(RegexRouter::new(c)?) as Box<dyn Transform>)
        })
        .register_transform("timestamp_router", |c: TimestampRouter| {
            Ok(Box::new(c) as Box<dyn Transform>)
        })
        .register_transform("filter", |c: Filter| Ok(Box::new(c) as Box<dyn Transform>));
        r.register_predicate("topic_name_matches", |c: TopicNameMatchesConfig| {
            Ok(Box::new(TopicNameMatches::new(c)?) as Box<dyn Predicate>)
        })
        .register_predicate("has_header_key", |c: HasHeaderKey| {
            Ok(Box::new(c) as Box<dyn Predicate>)
        })
        .register_predicate("record_is_tombstone", |c: RecordIsTombstone| {
            Ok(Box::new(c) as Box<dyn Predicate>)
        });
        r
    }

    /// Registers a transform type for `[[connector.transforms]]` tables with `type = type_name`:
    /// the rest of the table deserializes into `C` (unknown keys are errors) and `build` makes the
    /// transform, or says which keys are wrong (paths relative to the transform's table; a
    /// [`ConfigError`] converts with `?` or `.into()`).
    pub fn register_transform<C, F>(&mut self, type_name: &str, build: F) -> &mut Self
    where
        C: DeserializeOwned + JsonSchema + 'static,
        F: Fn(C) -> Result<Box<dyn Transform>, ConfigErrors> + Send + Sync + 'static,
    {
        let f = move |table: Value| -> Result<Box<dyn Transform>, ConfigErrors> {
            let c: C = deserialize_value(table)?;
            build(c)
        };
        let schema = Arc::new(|| crate::runner::schema::schema_of::<C>());
        self.transforms.insert(type_name.to_owned(), Described { build: Arc::new(f), schema });
        self
    }

    /// Registers a predicate type for `predicate = { type = type_name, ... }`, like
    /// [`register_transform`](Self::register_transform).
    pub fn register_predicate<C, F>(&mut self, type_name: &str, build: F) -> &mut Self
    where
        C: DeserializeOwned + JsonSchema + 'static,
        F: Fn(C) -> Result<Box<dyn Predicate>, ConfigErrors> + Send + Sync + 'static,
    {
        let f = move |table: Value| -> Result<Box<dyn Predicate>, ConfigErrors> {
            let c: C = deserialize_value(table)?;
            build(c)
        };
        let schema = Arc::new(|| crate::runner::schema::schema_of::<C>());
        self.predicates.insert(type_name.to_owned(), Described { build: Arc::new(f), schema });
        self
    }

    /// Registered transform type names.
    pub fn transform_types(&self) -> impl Iterator<Item = &str> {
        self.transforms.keys().map(String::as_str)
    }

    /// Registered predicate type names.
    pub fn predicate_types(&self) -> impl Iterator<Item = &str> {
        self.predicates.keys().map(String::as_str)
    }

    /// JSON Schema of a transform type's keys.
    pub fn transform_schema(&self, type_name: &str) -> Option<Value> {
        self.transforms.get(type_name).map(|d| (d.schema)())
    }

    /// JSON Schema of a predicate type's keys.
    pub fn predicate_schema(&self, type_name: &str) -> Option<Value> {
        self.predicates.get(type_name).map(|d| (d.schema)())
    }

    /// Builds a transform of `type_name` from its keys (a JSON object; any serde format converts
    /// to one with `serde_json::to_value`).
    ///
    /// # Errors
    /// Every problem, with key paths relative to the table (`type` for an unknown type).
    pub fn build_transform(
        &self,
        type_name: &str,
        table: Value,
    ) -> Result<Box<dyn Transform>, ConfigErrors> {
        match self.transforms.get(type_name) {
            Some(d) => (d.build)(table),
            None => Err(unknown("transform", type_name, self.transform_types())),
        }
    }

    /// Builds a predicate of `type_name` from its keys.
    ///
    /// # Errors
    /// Every problem, with key paths relative to the table.
    pub fn build_predicate(
        &self,
        type_name: &str,
        table: Value,
    ) -> Result<Box<dyn Predicate>, ConfigErrors> {
        match self.predicates.get(type_name) {
            Some(d) => (d.build)(table),
            None => Err(unknown("predicate", type_name, self.predicate_types())),
        }
    }

    /// Registers a source connector type under `type_name`.
    pub fn register_source<C: SourceConnector>(&mut self, type_name: &str) -> &mut Self {
        let build = move |name: &str,
                          table: Value,
                          policy: Option<&ErrorPolicyConfig>|
              -> Result<BuiltConnector, ConfigErrors> {
            let config: C::Config = parse_config(table, policy)?;
            let connector = C::create(name, config).map_err(single_error)?;
            Ok(BuiltConnector::Source(Box::new(connector)))
        };
        self.insert::<C::Config>(type_name, ConnectorKind::Source, Arc::new(build));
        self
    }

    /// Registers a sink connector type under `type_name`.
    pub fn register_sink<C: SinkConnector>(&mut self, type_name: &str) -> &mut Self {
        let build = move |name: &str,
                          table: Value,
                          policy: Option<&ErrorPolicyConfig>|
              -> Result<BuiltConnector, ConfigErrors> {
            let config: C::Config = parse_config(table, policy)?;
            let connector = C::create(name, config).map_err(single_error)?;
            Ok(BuiltConnector::Sink(Box::new(connector)))
        };
        self.insert::<C::Config>(type_name, ConnectorKind::Sink, Arc::new(build));
        self
    }

    fn insert<T: JsonSchema>(&mut self, type_name: &str, kind: ConnectorKind, build: Arc<BuildFn>) {
        let schema = Arc::new(|| crate::runner::schema::schema_of::<T>());
        self.entries.insert(type_name.to_owned(), Entry { kind, build, schema });
    }

    /// Registered type names, in order.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The kind of `type_name`, if registered.
    pub fn kind(&self, type_name: &str) -> Option<ConnectorKind> {
        self.entries.get(type_name).map(|e| e.kind)
    }

    /// JSON Schema of `type_name`'s configuration (its own keys only).
    pub fn schema(&self, type_name: &str) -> Option<Value> {
        self.entries.get(type_name).map(|e| (e.schema)())
    }

    /// Deserializes `config` (the connector type's own keys, as a JSON object: any serde format
    /// converts to one with `serde_json::to_value`), validates it and builds connector `name`.
    /// Unknown keys are errors, reported together with what `validate()` finds.
    ///
    /// # Errors
    /// Every problem found, each with its key path relative to `config`.
    pub fn build(
        &self,
        type_name: &str,
        name: &str,
        config: Value,
    ) -> Result<BuiltConnector, ConfigErrors> {
        self.build_checked(type_name, name, config, None)
    }

    /// Like [`build`](Self::build), and also checks the config against the connector entry's
    /// error policy ([`ConnectorConfig::validate_error_policy`]), reporting those problems with
    /// the others (paths relative to `config`, the policy's as `errors.<key>`).
    ///
    /// # Errors
    /// Every problem found.
    pub fn build_with_error_policy(
        &self,
        type_name: &str,
        name: &str,
        config: Value,
        policy: &ErrorPolicyConfig,
    ) -> Result<BuiltConnector, ConfigErrors> {
        self.build_checked(type_name, name, config, Some(policy))
    }

    fn build_checked(
        &self,
        type_name: &str,
        name: &str,
        config: Value,
        policy: Option<&ErrorPolicyConfig>,
    ) -> Result<BuiltConnector, ConfigErrors> {
        let Some(entry) = self.entries.get(type_name) else {
            let mut e = ConfigErrors::new();
            let known: Vec<&str> = self.type_names().collect();
            e.push(
                "type",
                format!("unknown connector type {type_name:?}; known types: {}", known.join(", ")),
            );
            return Err(e);
        };
        (entry.build)(name, config, policy)
    }
}

/// Deserializes and validates a connector config, reporting key paths: unknown keys and what
/// `validate()` finds, all at once.
pub(crate) fn parse_config<T: ConnectorConfig>(
    value: Value,
    policy: Option<&ErrorPolicyConfig>,
) -> Result<T, ConfigErrors> {
    let (config, mut errors) = deserialize_lenient::<T>(value);
    if let Some(config) = &config {
        errors.extend(config.validate());
        if let Some(policy) = policy {
            errors.extend(config.validate_error_policy(policy));
        }
    }
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(errors),
    }
}

/// Deserializes `value` into `T`, turning serde errors into key-path errors; unknown keys and
/// the first other problem are all reported.
pub(crate) fn deserialize_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigErrors> {
    match deserialize_lenient(value) {
        (Some(v), errors) if errors.is_empty() => Ok(v),
        (_, errors) => Err(errors),
    }
}

/// How many unknown keys one table may have before the rest go unreported.
const MAX_UNKNOWN_KEYS: usize = 32;

/// Deserializes `value` into `T`, reporting every unknown key rather than only the first: serde
/// stops at the first error, so each unknown key is recorded, removed, and deserialization tried
/// again (up to [`MAX_UNKNOWN_KEYS`] times). The value is `Some` when only unknown keys were wrong,
/// so that the caller can still validate it and report those problems too. Any other error is
/// recorded and ends the attempt.
pub(crate) fn deserialize_lenient<T: DeserializeOwned>(
    mut value: Value,
) -> (Option<T>, ConfigErrors) {
    let mut errors = ConfigErrors::new();
    for _ in 0..=MAX_UNKNOWN_KEYS {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return (Some(v), errors),
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.into_inner().to_string();
        let unknown = unknown_field(&message).map(str::to_owned);
        let (path, message) = tidy(path, message);
        errors.push(path, message);
        match unknown {
            Some(key) if remove_key(&mut value, &segments, &key) => continue,
            _ => return (None, errors),
        }
    }
    (None, errors)
}

/// The key of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
}

/// Removes `key` from the object at `segments` (the path serde reported, which may or may not
/// end with the key itself). False when there is no such key.
fn remove_key(value: &mut Value, segments: &[serde_path_to_error::Segment], key: &str) -> bool {
    use serde_path_to_error::Segment;
    let parent = match segments.split_last() {
        Some((Segment::Map { key: last }, rest)) if last == key => rest,
        _ => segments,
    };
    let mut cur = value;
    for s in parent {
        let next = match (s, cur) {
            (Segment::Map { key }, Value::Object(m)) => m.get_mut(key),
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match cur {
        Value::Object(m) => m.remove(key).is_some(),
        _ => false,
    }
}

/// Makes serde's wording fit a config file: "unknown field `x`" is an unknown *key*, reported at
/// that key; "missing field `x`" likewise.
fn tidy(path: String, message: String) -> (String, String) {
    let quoted = |m: &str, prefix: &str| -> Option<String> {
        m.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_owned)
    };
    if let Some(key) = quoted(&message, "unknown field `") {
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', "").trim().to_owned())
            .unwrap_or_default();
        // serde reports an unknown key at its table, or (through our macro) at the key itself;
        // compare whole segments, so `tls = { ls = 1 }` is `tls.ls`, not `tls`.
        let at_key = path == key || path.ends_with(&format!(".{key}"));
        let path = if at_key { path } else { crate::config::join_path(&path, &key) };
        let hint =
            if expected.is_empty() { String::new() } else { format!(" (expected {expected})") };
        return (path, format!("unknown key{hint}"));
    }
    if let Some(key) = quoted(&message, "missing field `") {
        return (crate::config::join_path(&path, &key), "is required".to_owned());
    }
    (path, message.trim().to_owned())
}

fn unknown<'a>(what: &str, type_name: &str, known: impl Iterator<Item = &'a str>) -> ConfigErrors {
    let known: Vec<&str> = known.collect();
    let mut e = ConfigErrors::new();
    e.push("type", format!("unknown {what} type {type_name:?}; known types: {}", known.join(", ")));
    e
}

fn single_error(e: crate::Error) -> ConfigErrors {
    let mut errors = ConfigErrors::new();
    match e {
        crate::Error::Config { path, message } => errors.push(path, message),
        other => errors.push("", other.to_string()),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::tidy;

    #[test]
    fn an_unknown_key_is_reported_at_its_own_path_even_when_its_table_ends_with_the_same_letters() {
        let unknown = |key: &str| format!("unknown field `{key}`, expected `ca_file`");
        assert_eq!(tidy("tls".into(), unknown("ls")).0, "tls.ls");
        assert_eq!(tidy("status_topic".into(), unknown("topic")).0, "status_topic.topic");
        assert_eq!(tidy("tls.ls".into(), unknown("ls")).0, "tls.ls");
        assert_eq!(tidy("ls".into(), unknown("ls")).0, "ls");
        assert_eq!(tidy(String::new(), unknown("qso")).0, "qso");
    }
}
