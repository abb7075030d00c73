//! The built-in predicates that guard transforms.

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::transform::{Predicate, TransformRecord};

/// True when the whole topic matches a regular expression (`type = "topic_name_matches"`).
#[derive(Debug, Clone)]
pub struct TopicNameMatches {
    regex: Regex,
}

/// Configuration of [`TopicNameMatches`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicNameMatchesConfig {
    /// Regular expression the whole topic must match.
    pub pattern: String,
}

impl TopicNameMatches {
    /// A predicate from its configuration.
    ///
    /// # Errors
    /// At key `pattern`, when the regular expression does not compile.
    pub fn new(config: TopicNameMatchesConfig) -> Result<Self, ConfigError> {
        Regex::new(&format!("^(?:{})$", config.pattern))
            .map(|regex| Self { regex })
            .map_err(|e| ConfigError::new("pattern", e.to_string()))
    }
}

impl Predicate for TopicNameMatches {
    fn test(&self, r: &TransformRecord) -> bool {
        self.regex.is_match(&r.topic)
    }
}

/// True when the record has a header with this key (`type = "has_header_key"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HasHeaderKey {
    /// Header key.
    pub name: String,
}

impl Predicate for HasHeaderKey {
    fn test(&self, r: &TransformRecord) -> bool {
        r.headers.first(&self.name).is_some()
    }
}

/// True for a tombstone: a record with a null value (`type = "record_is_tombstone"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordIsTombstone {}

impl Predicate for RecordIsTombstone {
    fn test(&self, r: &TransformRecord) -> bool {
        r.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Headers;

    fn rec(topic: &str, value: Option<&str>) -> TransformRecord {
        let mut headers = Headers::new();
        headers.push("origin", "plc");
        TransformRecord {
            topic: topic.into(),
            key: None,
            value: value.map(|v| v.to_owned().into()),
            headers,
            timestamp: None,
        }
    }

    #[test]
    fn topic_name_matches_the_whole_name() {
        let p =
            TopicNameMatches::new(TopicNameMatchesConfig { pattern: r"plant\..*".into() }).unwrap();
        assert!(p.test(&rec("plant.line1", Some("v"))));
        assert!(!p.test(&rec("xplant.line1", Some("v"))));
        assert!(TopicNameMatches::new(TopicNameMatchesConfig { pattern: "[".into() }).is_err());
    }

    #[test]
    fn has_header_key_and_tombstone() {
        assert!(HasHeaderKey { name: "origin".into() }.test(&rec("t", Some("v"))));
        assert!(!HasHeaderKey { name: "other".into() }.test(&rec("t", Some("v"))));
        assert!(RecordIsTombstone {}.test(&rec("t", None)));
        assert!(!RecordIsTombstone {}.test(&rec("t", Some(""))));
    }
}
