//! [`Secret`]: a configuration value that must not leak (passwords, keys). Written in config as a
//! literal or, better, as `${VAR}` to read it from the environment. Its `Debug` output and its
//! serialized form never show a literal value.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

use crate::{Error, Result};

/// What is wrong with the form of a [`Secret`] reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// `${file:}` without a path.
    #[error("expected ${{file:/path/to/secret}}")]
    EmptyFile,
    /// `${...}` that is not a variable name.
    #[error("expected ${{VARIABLE_NAME}} (letters, digits, underscores)")]
    BadVariable,
}

/// A secret string. `"${MQTT_PASSWORD}"` reads the variable when resolved, `"${file:/run/secrets/mqtt}"`
/// reads the file; anything else is the secret itself.
///
/// ```
/// use connector_core::Secret;
///
/// let s: Secret = serde_json::from_str(r#""${HOME}""#).unwrap();
/// assert_eq!(s.env_var(), Some("HOME"));
/// assert_eq!(format!("{s:?}"), "Secret(${HOME})");
/// let literal: Secret = serde_json::from_str(r#""hunter2""#).unwrap();
/// assert_eq!(format!("{literal:?}"), "Secret(***)");
/// assert_eq!(serde_json::to_string(&literal).unwrap(), r#""***""#);
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(
    description = "A secret: `${ENV_VAR}` reads it from the environment, `${file:/path}` from a file (recommended); any other string is the secret itself."
)]
pub struct Secret(String);

impl Secret {
    /// A secret from its config form.
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The environment variable it names, for `${VAR}`.
    pub fn env_var(&self) -> Option<&str> {
        self.reference().filter(|r| !r.starts_with("file:"))
    }

    /// The file it names, for `${file:PATH}`.
    pub fn file(&self) -> Option<&str> {
        self.reference().and_then(|r| r.strip_prefix("file:"))
    }

    /// What is between `${` and `}`.
    fn reference(&self) -> Option<&str> {
        self.0.strip_prefix("${").and_then(|s| s.strip_suffix('}'))
    }

    /// Checks the form without reading anything (pure).
    ///
    /// # Errors
    /// A malformed `${...}` reference.
    pub fn validate(&self) -> Result<(), SecretError> {
        if let Some(path) = self.file() {
            if path.is_empty() {
                return Err(SecretError::EmptyFile);
            }
            return Ok(());
        }
        if self.0.starts_with("${") {
            match self.env_var() {
                Some(v)
                    if !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {}
                _ => return Err(SecretError::BadVariable),
            }
        }
        Ok(())
    }

    /// The secret's value, reading the environment for `${VAR}` and the file for
    /// `${file:PATH}` (one trailing newline dropped).
    ///
    /// # Errors
    /// Fatal when the variable is not set or the file cannot be read; the message names the
    /// variable or file, never a value.
    pub fn resolve(&self) -> Result<String> {
        if let Some(path) = self.file() {
            return read_secret_file(std::path::Path::new(path)).map_err(|e| {
                Error::fatal(format!("cannot read the secret file {path} (referenced by a secret)"))
                    .with_source(e)
            });
        }
        match self.env_var() {
            Some(var) => std::env::var(var).map_err(|_| {
                Error::fatal(format!(
                    "environment variable {var} (referenced by a secret) is not set"
                ))
            }),
            None => Ok(self.0.clone()),
        }
    }
}

/// A secret kept in a file (a mounted Kubernetes or Docker secret, say): its contents without
/// the one trailing newline editors and `echo` add.
pub(crate) fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reference() {
            Some(_) => write!(f, "Secret({})", self.0),
            None => f.write_str("Secret(***)"),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.reference() {
            Some(_) => s.serialize_str(&self.0),
            None => s.serialize_str("***"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_from_the_environment_and_malformed_ones_are_refused() {
        assert!(Secret::new("${}").validate().is_err());
        assert_eq!(Secret::new("${A-B}").validate(), Err(SecretError::BadVariable));
        assert_eq!(
            SecretError::BadVariable.to_string(),
            "expected ${VARIABLE_NAME} (letters, digits, underscores)"
        );
        assert!(Secret::new("${PATH}").validate().is_ok());
        assert!(Secret::new("${PATH}").resolve().is_ok());
        let missing = Secret::new("${CONNECTOR_TEST_SURELY_UNSET_VAR}").resolve().unwrap_err();
        assert!(missing.to_string().contains("CONNECTOR_TEST_SURELY_UNSET_VAR"));
        assert_eq!(Secret::new("plain").resolve().unwrap(), "plain");
    }

    #[test]
    fn file_references_read_the_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = Secret::new(format!("${{file:{}}}", path.display()));
        assert!(s.validate().is_ok());
        assert_eq!(s.env_var(), None);
        assert_eq!(s.resolve().unwrap(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        let missing = Secret::new("${file:/no/such/secret}").resolve().unwrap_err();
        assert!(missing.to_string().contains("/no/such/secret"), "{missing}");
        assert_eq!(Secret::new("${file:}").validate(), Err(SecretError::EmptyFile));
        assert_eq!(SecretError::EmptyFile.to_string(), "expected ${file:/path/to/secret}");
    }
}
