//! [`Converter`]: how a connector's keys and values are checked on their way through (`bytes`,
//! `string`, `json`), like Kafka Connect's key and value converters. A value that does not convert
//! is a record error, handled by the error policy.

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why data does not convert.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// `string`: the bytes are not UTF-8; valid up to this byte.
    #[error("not valid UTF-8 (at byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// `json`: the bytes are not a JSON document.
    #[error("not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// `json` with reserialization: the document could not be written back.
    #[error("cannot write JSON: {0}")]
    Write(#[source] serde_json::Error),
}

/// What the `json` converter writes for a document that parses (the `json_reserialize` key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonOutput {
    /// The bytes as received (default).
    #[default]
    AsReceived,
    /// The document written back compactly (insignificant whitespace removed).
    Compact,
}

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
    /// Checks (and for JSON with [`JsonOutput::Compact`], rewrites) `data`. A null key or value
    /// (a tombstone) always passes. `json` only reads `output`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use connector_core::converter::{Converter, JsonOutput};
    ///
    /// let json = Some(Bytes::from(r#"{ "t": 21.5 }"#));
    /// let ok = Converter::Json.convert(json.clone(), JsonOutput::Compact).unwrap();
    /// assert_eq!(ok.as_deref(), Some(&br#"{"t":21.5}"#[..]));
    /// assert_eq!(Converter::Json.convert(json.clone(), JsonOutput::AsReceived).unwrap(), json);
    /// assert!(Converter::Json.convert(Some(Bytes::from("{oops")), JsonOutput::AsReceived).is_err());
    /// let e = Converter::String.convert(Some(Bytes::from_static(b"ok\xff")), JsonOutput::AsReceived);
    /// assert_eq!(e.unwrap_err().to_string(), "not valid UTF-8 (at byte 2)");
    /// assert_eq!(Converter::Json.convert(None, JsonOutput::AsReceived).unwrap(), None);
    /// ```
    ///
    /// # Errors
    /// Why the data does not convert.
    pub fn convert(
        self,
        data: Option<Bytes>,
        output: JsonOutput,
    ) -> Result<Option<Bytes>, ConvertError> {
        let Some(data) = data else { return Ok(None) };
        match self {
            Converter::Bytes => Ok(Some(data)),
            Converter::String => match std::str::from_utf8(&data) {
                Ok(_) => Ok(Some(data)),
                Err(e) => Err(ConvertError::NotUtf8 { valid_up_to: e.valid_up_to() }),
            },
            Converter::Json => match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(v) if output == JsonOutput::Compact => serde_json::to_vec(&v)
                    .map(|b| Some(Bytes::from(b)))
                    .map_err(ConvertError::Write),
                Ok(_) => Ok(Some(data)),
                Err(e) => Err(ConvertError::NotJson(e)),
            },
        }
    }
}
