//! [`Registry`]: connector types by name (`type = "mqtt-source"`), so the runner can build a
//! connector from its TOML table and describe its configuration. Applications register their own
//! types next to the built-in ones.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ConfigErrors, ConnectorConfig};
use crate::sink::{DynSinkConnector, SinkConnector};
use crate::source::{DynSourceConnector, SourceConnector};

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

type BuildFn = dyn Fn(&str, toml::Table) -> Result<BuiltConnector, ConfigErrors> + Send + Sync;
type SchemaFn = dyn Fn() -> Value + Send + Sync;

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
/// let table: toml::Table = toml::from_str(r#"topic = "greetings""#).unwrap();
/// assert!(registry.build("hello", "greeter", table).is_ok());
/// let bad: toml::Table = toml::from_str(r#"topik = "greetings""#).unwrap();
/// let errors = registry.build("hello", "greeter", bad).unwrap_err();
/// assert!(errors.to_string().starts_with("topik: unknown key"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k, v.kind))).finish()
    }
}

impl Registry {
    /// No types.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source connector type under `type_name`.
    pub fn register_source<C: SourceConnector>(&mut self, type_name: &str) -> &mut Self {
        let build = move |name: &str, table: toml::Table| -> Result<BuiltConnector, ConfigErrors> {
            let config: C::Config = parse_config(table)?;
            let connector = C::create(name, config).map_err(single_error)?;
            Ok(BuiltConnector::Source(Box::new(connector)))
        };
        self.insert::<C::Config>(type_name, ConnectorKind::Source, Arc::new(build));
        self
    }

    /// Registers a sink connector type under `type_name`.
    pub fn register_sink<C: SinkConnector>(&mut self, type_name: &str) -> &mut Self {
        let build = move |name: &str, table: toml::Table| -> Result<BuiltConnector, ConfigErrors> {
            let config: C::Config = parse_config(table)?;
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

    /// Deserializes `table` (unknown keys are errors), validates it and builds connector `name`.
    ///
    /// # Errors
    /// Every problem found, each with its key path relative to `table`.
    pub fn build(
        &self,
        type_name: &str,
        name: &str,
        table: toml::Table,
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
        (entry.build)(name, table)
    }
}

/// Deserializes and validates a connector config, reporting key paths.
pub(crate) fn parse_config<T: ConnectorConfig>(table: toml::Table) -> Result<T, ConfigErrors> {
    let config: T = deserialize_table(table)?;
    config.validate().into_result()?;
    Ok(config)
}

/// Deserializes a TOML table into `T`, turning a serde error into a key-path error.
pub(crate) fn deserialize_table<T: DeserializeOwned>(
    table: toml::Table,
) -> Result<T, ConfigErrors> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.into_inner().to_string();
        let (path, message) = tidy(path, message);
        let mut errors = ConfigErrors::new();
        errors.push(path, message);
        errors
    })
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
        let path = if path.ends_with(&key) { path } else { crate::config::join_path(&path, &key) };
        let hint =
            if expected.is_empty() { String::new() } else { format!(" (expected {expected})") };
        return (path, format!("unknown key{hint}"));
    }
    if let Some(key) = quoted(&message, "missing field `") {
        return (crate::config::join_path(&path, &key), "is required".to_owned());
    }
    (path, message.trim().to_owned())
}

fn single_error(e: crate::Error) -> ConfigErrors {
    let mut errors = ConfigErrors::new();
    match e {
        crate::Error::Config { path, message } => errors.push(path, message),
        other => errors.push("", other.to_string()),
    }
    errors
}
