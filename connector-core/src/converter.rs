//! [`Converter`]: how a connector's keys and values are checked on their way through (`bytes`,
//! `string`, `json`), like Kafka Connect's key and value converters. A value that does not convert
//! is a record error, handled by the error policy.

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How keys or values are checked (and optionally normalized).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Converter {
    /// Any bytes, passed through unchanged (default).
    #[default]
    Bytes,
    /// UTF-8 text, passed through unchanged.
    String,
    /// A JSON document; with `json_reserialize`, rewritten compactly.
    Json,
}

impl Converter {
    /// Checks (and for JSON with `reserialize`, rewrites) `data`. A null key or value (a tombstone)
    /// always passes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use connector_core::Converter;
    ///
    /// let ok = Converter::Json.convert(Some(Bytes::from(r#"{ "t": 21.5 }"#)), true).unwrap();
    /// assert_eq!(ok.as_deref(), Some(&br#"{"t":21.5}"#[..]));
    /// assert!(Converter::Json.convert(Some(Bytes::from("{oops")), false).is_err());
    /// assert!(Converter::String.convert(Some(Bytes::from_static(b"\xff")), false).is_err());
    /// assert_eq!(Converter::Json.convert(None, false).unwrap(), None);
    /// ```
    ///
    /// # Errors
    /// Why the data does not convert.
    pub fn convert(self, data: Option<Bytes>, reserialize: bool) -> Result<Option<Bytes>, String> {
        let Some(data) = data else { return Ok(None) };
        match self {
            Converter::Bytes => Ok(Some(data)),
            Converter::String => match std::str::from_utf8(&data) {
                Ok(_) => Ok(Some(data)),
                Err(e) => Err(format!("not valid UTF-8 (at byte {})", e.valid_up_to())),
            },
            Converter::Json => match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(v) if reserialize => serde_json::to_vec(&v)
                    .map(|b| Some(Bytes::from(b)))
                    .map_err(|e| format!("cannot write JSON: {e}")),
                Ok(_) => Ok(Some(data)),
                Err(e) => Err(format!("not valid JSON: {e}")),
            },
        }
    }
}
