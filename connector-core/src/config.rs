//! Configuration contracts shared by every connector: the [`ConnectorConfig`] trait (serde +
//! JSON Schema + a pure `validate()`), and [`ConfigErrors`], a list of problems each naming the key
//! path it is about, so the runner can print `connector[0].qos: expected 0, 1 or 2`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// One configuration problem: the key path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, relative to where the config was read from (e.g. `qos`, `topics[2]`).
    pub path: String,
    /// What is wrong with the value.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    ///
    /// ```
    /// use connector_core::ConfigError;
    ///
    /// assert_eq!(ConfigError::new("qos", "expected 0, 1 or 2").to_string(), "qos: expected 0, 1 or 2");
    /// ```
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self { path: path.into(), message: message.to_string() }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration.
///
/// ```
/// use connector_core::ConfigErrors;
///
/// let mut errors = ConfigErrors::new();
/// errors.push("qos", "expected 0, 1 or 2");
/// let errors = errors.prefixed("connector[0]");
/// assert_eq!(errors.to_string(), "connector[0].qos: expected 0, 1 or 2");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// No errors.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Records a problem at `path`: a message, or any error (its `Display` text is kept).
    pub fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError::new(path, message));
    }

    /// Adds all of `other`'s problems (another [`ConfigErrors`], or single [`ConfigError`]s).
    pub fn extend(&mut self, other: impl IntoIterator<Item = ConfigError>) {
        self.0.extend(other);
    }

    /// Prefixes every path with `prefix` (joined by `.`, or directly for `[i]` paths).
    pub fn prefixed(self, prefix: &str) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|e| ConfigError { path: join_path(prefix, &e.path), message: e.message })
                .collect(),
        )
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// `Ok(())` when empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), ConfigErrors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Joins a key path prefix and a relative path: `connector[0]` + `qos` = `connector[0].qos`.
pub(crate) fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<ConfigErrors> for crate::Error {
    fn from(errors: ConfigErrors) -> Self {
        match errors.0.first() {
            Some(first) if errors.0.len() == 1 => crate::Error::config(&first.path, &first.message),
            _ => crate::Error::config("", errors.to_string()),
        }
    }
}

/// A connector's configuration: deserialized with unknown keys denied, described by JSON Schema,
/// and checked by a pure [`validate`](ConnectorConfig::validate).
///
/// ```
/// use connector_core::{ConfigErrors, ConnectorConfig};
/// use schemars::JsonSchema;
/// use serde::Deserialize;
///
/// /// Tails a file.
/// #[derive(Debug, Deserialize, JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct TailConfig {
///     /// File to read.
///     path: String,
///     /// Lines per poll, 1..=10000.
///     #[serde(default = "default_batch")]
///     batch: usize,
/// }
/// fn default_batch() -> usize { 100 }
///
/// impl ConnectorConfig for TailConfig {
///     fn validate(&self) -> ConfigErrors {
///         let mut e = ConfigErrors::new();
///         if !(1..=10_000).contains(&self.batch) {
///             e.push("batch", "expected 1..=10000");
///         }
///         e
///     }
/// }
/// ```
pub trait ConnectorConfig:
    DeserializeOwned + JsonSchema + fmt::Debug + Send + Sync + 'static
{
    /// Checks what serde cannot (ranges, templates, URLs, cross-field rules). Must be pure: no I/O,
    /// no `await`. Paths are relative to the connector's own table. The default finds nothing wrong.
    fn validate(&self) -> ConfigErrors {
        ConfigErrors::new()
    }

    /// Checks the config together with the connector entry's error policy (its `[errors]`
    /// table), for rules that depend on both, e.g. a format whose routine input would stop the
    /// connector with `tolerance = "none"`. Pure, like [`validate`](Self::validate); paths are
    /// relative to the connector's own table, so the policy's keys are `errors.<key>`. Called by
    /// the runner (`connect validate`, `connect run`, the REST API) when the `[errors]` table
    /// itself is valid; the default finds nothing wrong.
    ///
    /// ```
    /// use connector_core::{ConfigErrors, ConnectorConfig, ErrorPolicyConfig, Tolerance};
    /// # use schemars::JsonSchema;
    /// # use serde::Deserialize;
    /// /// Config.
    /// #[derive(Debug, Deserialize, JsonSchema)]
    /// struct Lenient {}
    /// impl ConnectorConfig for Lenient {
    ///     fn validate_error_policy(&self, policy: &ErrorPolicyConfig) -> ConfigErrors {
    ///         let mut e = ConfigErrors::new();
    ///         if policy.tolerance == Tolerance::None {
    ///             e.push("errors.tolerance", "set tolerance = \"all\"");
    ///         }
    ///         e
    ///     }
    /// }
    /// let errors = Lenient {}.validate_error_policy(&ErrorPolicyConfig::default());
    /// assert!(errors.to_string().starts_with("errors.tolerance: "), "{errors}");
    /// ```
    fn validate_error_policy(&self, policy: &crate::ErrorPolicyConfig) -> ConfigErrors {
        let _ = policy;
        ConfigErrors::new()
    }
}
