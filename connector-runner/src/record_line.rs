//! The "record line" format of the file connectors: one JSON object per line carrying a record's
//! key, value, ordered headers and timestamp (and, when written by the sink, where it came from).
//!
//! ```text
//! {"key":"car-1","value":"21.5","headers":[["unit","C"],["tag","a"],["tag","b"]],"timestamp":1700000000000}
//! ```
//!
//! Keys, values and header values are UTF-8 strings; `null` key or value means none.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a file connector reads or writes lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// Each line is a record value (the source sets no key; the sink writes values only).
    #[default]
    Text,
    /// Each line is a JSON record line (see [`RecordLine`]).
    Json,
}

/// One record as a JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLine {
    /// Kafka topic the record was read from (written by the sink; ignored by the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka partition (written by the sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Kafka offset (written by the sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Record key.
    #[serde(default)]
    pub key: Option<String>,
    /// Record value.
    #[serde(default)]
    pub value: Option<String>,
    /// Headers in order; a key may repeat.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}
