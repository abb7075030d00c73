//! The built-in transforms. Their configuration structs double as their `[[connector.transforms]]`
//! keys (besides `type`, `predicate` and `negate`).

use bytes::Bytes;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ConfigError;
use crate::record::Timestamp;
use crate::transform::{Transform, TransformError, TransformRecord};

/// Which part of a record a transform reads from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The record key.
    Key,
    /// The record value (default).
    #[default]
    Value,
}

fn json_object(data: Option<&Bytes>, part: Part) -> Result<Map<String, Value>, TransformError> {
    let name = match part {
        Part::Key => "key",
        Part::Value => "value",
    };
    let data = data.ok_or_else(|| TransformError::new(format!("the record has no {name}")))?;
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("the {name} is JSON but not an object").into()),
        Err(e) => Err(format!("the {name} is not JSON: {e}").into()),
    }
}

fn part_of(r: &TransformRecord, part: Part) -> Option<&Bytes> {
    match part {
        Part::Key => r.key.as_ref(),
        Part::Value => r.value.as_ref(),
    }
}

/// Adds a header with a fixed value (`type = "insert_header"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InsertHeader {
    /// Header key.
    pub header: String,
    /// Header value (text).
    pub value: String,
}

impl InsertHeader {
    /// Adds `header` = `value`.
    pub fn new(header: impl Into<String>, value: impl Into<String>) -> Self {
        Self { header: header.into(), value: value.into() }
    }
}

impl Transform for InsertHeader {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        r.headers.push(self.header.clone(), Bytes::from(self.value.clone()));
        Ok(Some(r))
    }
}

/// Removes every header with one of the given keys (`type = "drop_headers"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropHeaders {
    /// Header keys to remove.
    pub headers: Vec<String>,
}

impl Transform for DropHeaders {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        r.headers.retain(|h| !self.headers.iter().any(|k| *k == h.key));
        Ok(Some(r))
    }
}

/// Copy or move: whether [`HeaderFrom`] leaves the fields in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFromOperation {
    /// Keep the field (default).
    #[default]
    Copy,
    /// Remove the field from the JSON object.
    Move,
}

/// Copies (or moves) fields of a JSON object key or value into headers (`type = "header_from"`).
/// A string field becomes its text; any other value its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderFrom {
    /// Fields to read.
    pub fields: Vec<String>,
    /// Header key for each field, in the same order.
    pub headers: Vec<String>,
    /// `copy` (default) or `move`.
    #[serde(default)]
    pub operation: HeaderFromOperation,
    /// Read from the `value` (default) or the `key`.
    #[serde(default)]
    pub from: Part,
}

fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Transform for HeaderFrom {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        if self.fields.len() != self.headers.len() {
            return Err("header_from needs as many headers as fields".into());
        }
        let mut obj = json_object(part_of(&r, self.from), self.from)?;
        for (field, header) in self.fields.iter().zip(&self.headers) {
            let value = match self.operation {
                HeaderFromOperation::Copy => obj.get(field).cloned(),
                HeaderFromOperation::Move => obj.remove(field),
            };
            let value = value
                .ok_or_else(|| TransformError::new(format!("field {field:?} is not present")))?;
            r.headers.push(header.clone(), Bytes::from(field_text(&value)));
        }
        if self.operation == HeaderFromOperation::Move {
            let bytes = Bytes::from(
                serde_json::to_vec(&Value::Object(obj))
                    .map_err(|e| TransformError::new(e.to_string()))?,
            );
            match self.from {
                Part::Key => r.key = Some(bytes),
                Part::Value => r.value = Some(bytes),
            }
        }
        Ok(Some(r))
    }
}

/// Replaces the key with a JSON object of some fields of the JSON value (`type = "value_to_key"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueToKey {
    /// Fields of the value that make up the key.
    pub fields: Vec<String>,
}

impl Transform for ValueToKey {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        let obj = json_object(r.value.as_ref(), Part::Value)?;
        let mut key = Map::new();
        for f in &self.fields {
            let v = obj.get(f).ok_or_else(|| {
                TransformError::new(format!("field {f:?} is not present in the value"))
            })?;
            key.insert(f.clone(), v.clone());
        }
        r.key = Some(Bytes::from(
            serde_json::to_vec(&Value::Object(key))
                .map_err(|e| TransformError::new(e.to_string()))?,
        ));
        Ok(Some(r))
    }
}

/// Replaces the JSON value (or key) with one of its fields, written as JSON (`type =
/// "extract_field"`). A missing field is an error, not a null: a null value would be a tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractField {
    /// The field to keep.
    pub field: String,
    /// Extract from the `value` (default) or the `key`.
    #[serde(default)]
    pub from: Part,
}

impl Transform for ExtractField {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        let obj = json_object(part_of(&r, self.from), self.from)?;
        let v = obj
            .get(&self.field)
            .ok_or_else(|| TransformError::new(format!("field {:?} is not present", self.field)))?;
        let bytes =
            Bytes::from(serde_json::to_vec(v).map_err(|e| TransformError::new(e.to_string()))?);
        match self.from {
            Part::Key => r.key = Some(bytes),
            Part::Value => r.value = Some(bytes),
        }
        Ok(Some(r))
    }
}

/// Renames topics that match a regular expression as a whole (`type = "regex_router"`);
/// `$1`, `${name}` in the replacement refer to groups.
#[derive(Debug, Clone)]
pub struct RegexRouter {
    regex: Regex,
    replacement: String,
}

/// Configuration of [`RegexRouter`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRouterConfig {
    /// Regular expression the whole topic must match.
    pub regex: String,
    /// The new topic; `$1` or `${name}` insert groups.
    pub replacement: String,
}

impl RegexRouter {
    /// A router from its configuration.
    ///
    /// # Errors
    /// At key `regex`, when the regular expression does not compile.
    pub fn new(config: RegexRouterConfig) -> Result<Self, ConfigError> {
        let regex = Regex::new(&format!("^(?:{})$", config.regex))
            .map_err(|e| ConfigError::new("regex", e.to_string()))?;
        Ok(Self { regex, replacement: config.replacement })
    }
}

impl Transform for RegexRouter {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        if self.regex.is_match(&r.topic) {
            r.topic = self.regex.replace(&r.topic, self.replacement.as_str()).into_owned();
        }
        Ok(Some(r))
    }
}

/// Appends the record's timestamp to its topic (`type = "timestamp_router"`), e.g. for daily
/// topics: `plant.line1` → `plant.line1-20260315`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampRouter {
    /// The new topic: `${topic}` and `${timestamp}` are replaced.
    #[serde(default = "default_topic_format")]
    pub topic_format: String,
    /// Timestamp pattern (UTC): `yyyy`, `MM`, `dd`, `HH`, `mm`, `ss`; other characters are copied.
    #[serde(default = "default_timestamp_format")]
    pub timestamp_format: String,
}

fn default_topic_format() -> String {
    "${topic}-${timestamp}".to_owned()
}
fn default_timestamp_format() -> String {
    "yyyyMMdd".to_owned()
}

impl TimestampRouter {
    fn format(&self, ts: Timestamp) -> Result<String, TransformError> {
        let t = chrono::DateTime::from_timestamp_millis(ts.as_millis())
            .ok_or_else(|| TransformError::new(format!("timestamp {ts} is out of range")))?;
        let mut out = String::new();
        let mut rest = self.timestamp_format.as_str();
        while !rest.is_empty() {
            let (piece, len) = [
                ("yyyy", "%Y"),
                ("MM", "%m"),
                ("dd", "%d"),
                ("HH", "%H"),
                ("mm", "%M"),
                ("ss", "%S"),
            ]
            .iter()
            .find(|(token, _)| rest.starts_with(token))
            .map_or_else(
                || {
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    (rest[..c].to_owned(), c)
                },
                |(token, spec)| (t.format(spec).to_string(), token.len()),
            );
            out.push_str(&piece);
            rest = &rest[len..];
        }
        Ok(out)
    }
}

impl Transform for TimestampRouter {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        let stamp = self.format(r.timestamp.unwrap_or_else(Timestamp::now))?;
        r.topic = self.topic_format.replace("${topic}", &r.topic).replace("${timestamp}", &stamp);
        Ok(Some(r))
    }
}

/// Drops every record it sees (`type = "filter"`); give it a predicate to drop some.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {}

impl Transform for Filter {
    fn apply(&self, _: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Headers;

    fn rec(value: &str) -> TransformRecord {
        TransformRecord {
            topic: "plant.line1".into(),
            key: Some(Bytes::from("k")),
            value: Some(Bytes::from(value.to_owned())),
            headers: Headers::new(),
            timestamp: Some(Timestamp::from_millis(1_773_532_800_000)), // 2026-03-15T00:00:00Z
        }
    }

    fn out(t: &dyn Transform, r: TransformRecord) -> TransformRecord {
        t.apply(r).unwrap().unwrap()
    }

    #[test]
    fn insert_header_appends() {
        let r = out(&InsertHeader::new("site", "p7"), rec("{}"));
        assert_eq!(r.headers.last("site").map(|v| &v[..]), Some(&b"p7"[..]));
    }

    #[test]
    fn drop_headers_removes_every_copy() {
        let mut r = rec("{}");
        r.headers.push("a", "1");
        r.headers.push("b", "2");
        r.headers.push("a", "3");
        let r = out(&DropHeaders { headers: vec!["a".into()] }, r);
        assert_eq!(r.headers.len(), 1);
        assert!(r.headers.first("b").is_some());
    }

    #[test]
    fn header_from_copies_or_moves_fields() {
        let t = HeaderFrom {
            fields: vec!["unit".into(), "n".into()],
            headers: vec!["unit".into(), "count".into()],
            operation: HeaderFromOperation::Move,
            from: Part::Value,
        };
        let r = out(&t, rec(r#"{"unit":"C","n":3,"t":21.5}"#));
        assert_eq!(r.headers.last("unit").map(|v| &v[..]), Some(&b"C"[..]));
        assert_eq!(r.headers.last("count").map(|v| &v[..]), Some(&b"3"[..]));
        assert_eq!(r.value.as_deref(), Some(&br#"{"t":21.5}"#[..]));
        let copy = HeaderFrom { operation: HeaderFromOperation::Copy, ..t.clone() };
        let r = out(&copy, rec(r#"{"unit":"C","n":3}"#));
        assert_eq!(r.value.as_deref(), Some(&br#"{"unit":"C","n":3}"#[..]));
        assert!(t
            .apply(rec(r#"{"unit":"C"}"#))
            .unwrap_err()
            .message()
            .contains("\"n\" is not present"));
        assert!(t.apply(rec("not json")).unwrap_err().message().contains("not JSON"));
    }

    #[test]
    fn value_to_key_builds_a_json_key() {
        let r = out(
            &ValueToKey { fields: vec!["line".into(), "dev".into()] },
            rec(r#"{"dev":"d1","line":2,"t":1}"#),
        );
        assert_eq!(r.key.as_deref(), Some(&br#"{"dev":"d1","line":2}"#[..]));
        assert!(ValueToKey { fields: vec!["x".into()] }.apply(rec("{}")).is_err());
    }

    #[test]
    fn extract_field_keeps_one_field_as_json() {
        let r = out(
            &ExtractField { field: "t".into(), from: Part::Value },
            rec(r#"{"t":21.5,"u":"C"}"#),
        );
        assert_eq!(r.value.as_deref(), Some(&b"21.5"[..]));
        let r = out(
            &ExtractField { field: "u".into(), from: Part::Value },
            rec(r#"{"t":21.5,"u":"C"}"#),
        );
        assert_eq!(r.value.as_deref(), Some(&br#""C""#[..]));
        let e = ExtractField { field: "x".into(), from: Part::Value }
            .apply(rec("{}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not present"), "{e}");
    }

    #[test]
    fn regex_router_renames_whole_matches_only() {
        let t = RegexRouter::new(RegexRouterConfig {
            regex: r"plant\.(.*)".into(),
            replacement: "site7.$1".into(),
        })
        .unwrap();
        assert_eq!(out(&t, rec("{}")).topic, "site7.line1");
        let mut other = rec("{}");
        other.topic = "xplant.line1x".into();
        let t2 =
            RegexRouter::new(RegexRouterConfig { regex: "plant".into(), replacement: "y".into() })
                .unwrap();
        assert_eq!(out(&t2, other).topic, "xplant.line1x", "not a whole match");
        assert!(RegexRouter::new(RegexRouterConfig {
            regex: "(".into(),
            replacement: String::new()
        })
        .is_err());
    }

    #[test]
    fn timestamp_router_formats_the_record_time() {
        let t = TimestampRouter {
            topic_format: default_topic_format(),
            timestamp_format: default_timestamp_format(),
        };
        assert_eq!(out(&t, rec("{}")).topic, "plant.line1-20260315");
        let hourly = TimestampRouter {
            topic_format: "${timestamp}.${topic}".into(),
            timestamp_format: "yyyy-MM-dd'T'HH".into(),
        };
        assert_eq!(out(&hourly, rec("{}")).topic, "2026-03-15'T'00.plant.line1");
    }

    #[test]
    fn filter_drops() {
        assert_eq!(Filter {}.apply(rec("{}")).unwrap(), None);
    }
}
