//! Transforms (Kafka Connect's single message transforms): small per-record rewrites applied in a
//! configured order, each optionally guarded by a predicate. Built-ins: [`InsertHeader`],
//! [`DropHeaders`], [`HeaderFrom`], [`ValueToKey`], [`ExtractField`], [`RegexRouter`],
//! [`TimestampRouter`], [`Filter`]; predicates [`TopicNameMatches`], [`HasHeaderKey`],
//! [`RecordIsTombstone`]. Your own implement [`Transform`] or [`Predicate`].
//!
//! Sources transform a record after `poll` and before conversion; sinks after conversion and
//! before `put`. A transform error is a record error, handled by the error policy; a transform
//! returning `None` drops the record (it still counts as handled: a source acknowledges it
//! upstream, a sink commits past it).

mod builtin;
mod predicate;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use builtin::{
    DropHeaders, ExtractField, Filter, HeaderFrom, HeaderFromOperation, InsertHeader, Part,
    RegexRouter, RegexRouterConfig, TimestampRouter, ValueToKey,
};
pub use predicate::{HasHeaderKey, RecordIsTombstone, TopicNameMatches, TopicNameMatchesConfig};

use crate::record::{Headers, Timestamp};

/// A record as transforms see it, on either side.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformRecord {
    /// Kafka topic (to write to, for a source; read from, for a sink).
    pub topic: String,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (`None` = tombstone).
    pub value: Option<Bytes>,
    /// Ordered headers.
    pub headers: Headers,
    /// Timestamp, if known.
    pub timestamp: Option<Timestamp>,
}

/// Why a transform could not rewrite a record. The record then goes to the error policy.
///
/// Made from a message: `TransformError::new(..)`, or `?` on a `String` or `&str` error.
///
/// ```
/// use connector_core::transform::TransformError;
///
/// let e = TransformError::new(format!("field {:?} is not present", "t"));
/// assert_eq!(e.to_string(), "field \"t\" is not present");
/// assert_eq!(TransformError::from("the record has no value").message(), "the record has no value");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    message: String,
}

impl TransformError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for TransformError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for TransformError {
    fn from(message: &str) -> Self {
        Self { message: message.to_owned() }
    }
}

/// The step of a [`TransformChain`] that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transform {step}: {error}")]
pub struct TransformChainError {
    /// The failed step's name.
    pub step: String,
    /// Its error.
    #[source]
    pub error: TransformError,
}

/// A per-record rewrite.
///
/// ```
/// use connector_core::transform::{Transform, TransformError, TransformRecord};
///
/// /// Upper-cases text values.
/// #[derive(Debug)]
/// struct Shout;
///
/// impl Transform for Shout {
///     fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
///         if let Some(v) = &r.value {
///             let text = std::str::from_utf8(v).map_err(|_| "value is not text")?;
///             r.value = Some(text.to_uppercase().into());
///         }
///         Ok(Some(r))
///     }
/// }
/// ```
pub trait Transform: Send + Sync + fmt::Debug + 'static {
    /// The rewritten record, or `None` to drop it.
    ///
    /// # Errors
    /// Why the record cannot be transformed; it then goes to the error policy.
    fn apply(&self, record: TransformRecord) -> Result<Option<TransformRecord>, TransformError>;
}

/// A condition on a record, guarding a transform.
pub trait Predicate: Send + Sync + fmt::Debug + 'static {
    /// True when the record matches.
    fn test(&self, record: &TransformRecord) -> bool;
}

#[derive(Debug)]
struct Step {
    name: String,
    transform: Box<dyn Transform>,
    guard: Option<(Box<dyn Predicate>, bool)>,
}

/// Transforms in order, each applied only when its predicate holds (or fails, when negated).
///
/// ```
/// use connector_core::transform::*;
/// use connector_core::Headers;
///
/// let mut chain = TransformChain::new();
/// chain.push("tag", Box::new(InsertHeader::new("site", "plant-7")), None, false);
/// chain.push(
///     "drop-tombstones",
///     Box::new(Filter {}),
///     Some(Box::new(RecordIsTombstone {})),
///     false,
/// );
/// let r = TransformRecord { topic: "t".into(), key: None, value: Some("v".into()), headers: Headers::new(), timestamp: None };
/// let out = chain.apply(r).unwrap().unwrap();
/// assert_eq!(out.headers.last("site").map(|v| &v[..]), Some(&b"plant-7"[..]));
/// let tombstone = TransformRecord { topic: "t".into(), key: None, value: None, headers: Headers::new(), timestamp: None };
/// assert_eq!(chain.apply(tombstone).unwrap(), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TransformChain {
    steps: Vec<Arc<Step>>,
}

impl PartialEq for TransformChain {
    fn eq(&self, other: &Self) -> bool {
        self.steps.len() == other.steps.len()
            && self.steps.iter().zip(&other.steps).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl TransformChain {
    /// No transforms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a step named `name`, applied when `predicate` holds (or does not, with `negate`;
    /// always, without a predicate).
    pub fn push(
        &mut self,
        name: impl Into<String>,
        transform: Box<dyn Transform>,
        predicate: Option<Box<dyn Predicate>>,
        negate: bool,
    ) {
        let step = Step { name: name.into(), transform, guard: predicate.map(|p| (p, negate)) };
        self.steps.push(Arc::new(step));
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Applies every step in order.
    ///
    /// # Errors
    /// The first step that failed, with its error.
    pub fn apply(
        &self,
        mut record: TransformRecord,
    ) -> Result<Option<TransformRecord>, TransformChainError> {
        for step in self.steps.iter() {
            if let Some((predicate, negate)) = &step.guard {
                if predicate.test(&record) == *negate {
                    continue;
                }
            }
            match step.transform.apply(record) {
                Ok(Some(r)) => record = r,
                Ok(None) => return Ok(None),
                Err(error) => return Err(TransformChainError { step: step.name.clone(), error }),
            }
        }
        Ok(Some(record))
    }
}
