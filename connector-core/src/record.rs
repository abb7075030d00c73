//! Records that flow through connectors: [`SourceRecord`] (from a source task to Kafka),
//! [`SinkRecord`] (from Kafka to a sink task), their ordered [`Headers`], [`Timestamp`]s, and the
//! [`RecordMetadata`] Kafka returns for a written record.
//!
//! Source partitions and offsets are opaque JSON maps, as in Kafka Connect: the framework stores and
//! returns them but never looks inside.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies where a source record came from (e.g. `{"file": "/var/log/a.log"}`). Opaque to the
/// framework; an empty map means "no partition".
pub type SourcePartition = serde_json::Map<String, serde_json::Value>;

/// A position within a [`SourcePartition`] (e.g. `{"position": 4096}`). Opaque to the framework.
pub type SourceOffset = serde_json::Map<String, serde_json::Value>;

/// Milliseconds since the Unix epoch, Kafka's timestamp unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(t.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(t.0.unsigned_abs())
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// One record header: a UTF-8 key and a byte value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Header key (Kafka requires UTF-8).
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// Record headers in their original order. The same key may appear more than once (MQTT v5 user
/// properties and Kafka both allow it).
///
/// ```
/// use connector_core::Headers;
///
/// let mut h = Headers::new();
/// h.push("unit", "C");
/// h.push("tag", "a");
/// h.push("tag", "b");
/// assert_eq!(h.len(), 3);
/// assert_eq!(h.last("tag").map(|v| &v[..]), Some(&b"b"[..]));
/// let tags: Vec<_> = h.get_all("tag").map(|v| v.to_vec()).collect();
/// assert_eq!(tags, vec![b"a".to_vec(), b"b".to_vec()]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Room for `n` headers without reallocating.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Appends a header, keeping any earlier one with the same key.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push(Header { key: key.into(), value: value.into() });
    }

    /// The first value for `key`.
    pub fn first(&self, key: &str) -> Option<&Bytes> {
        self.0.iter().find(|h| h.key == key).map(|h| &h.value)
    }

    /// The last value for `key` (Kafka's `lastHeader`).
    pub fn last(&self, key: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|h| h.key == key).map(|h| &h.value)
    }

    /// Every value for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.0.iter().filter(move |h| h.key == key).map(|h| &h.value)
    }

    /// Removes every header with `key`; returns how many were removed.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.0.len();
        self.0.retain(|h| h.key != key);
        before - self.0.len()
    }

    /// Keeps only the headers for which `f` returns true.
    pub fn retain(&mut self, f: impl FnMut(&Header) -> bool) {
        self.0.retain(f);
    }

    /// All headers in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    /// Number of headers (duplicates counted).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of key and value lengths, for buffer accounting.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|h| h.key.len() + h.value.len()).sum()
    }
}

impl From<Vec<Header>> for Headers {
    fn from(v: Vec<Header>) -> Self {
        Self(v)
    }
}

impl From<Headers> for Vec<Header> {
    fn from(h: Headers) -> Self {
        h.0
    }
}

impl IntoIterator for Headers {
    type Item = Header;
    type IntoIter = std::vec::IntoIter<Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| Header { key: k.into(), value: v.into() }).collect())
    }
}

/// A Kafka topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic-partition pair.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A record produced by a source task, on its way to Kafka.
///
/// ```
/// use connector_core::{SourceRecord, Timestamp};
/// use serde_json::json;
///
/// let record = SourceRecord::new("plant.line1", "21.5")
///     .with_key("plant/line1/temp")
///     .with_header("unit", "C")
///     .with_timestamp(Timestamp::from_millis(1_700_000_000_000))
///     .with_source(
///         json!({"file": "/var/log/a"}).as_object().cloned().unwrap_or_default(),
///         json!({"position": 42}).as_object().cloned().unwrap_or_default(),
///     );
/// assert_eq!(record.topic, "plant.line1");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Kafka topic to write to.
    pub topic: String,
    /// Explicit partition; `None` lets the partitioner choose (murmur2 of the key, or sticky when
    /// there is no key).
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Ordered headers; duplicates allowed.
    pub headers: Headers,
    /// Record timestamp; `None` means "now" when the record is produced.
    pub timestamp: Option<Timestamp>,
    /// Where the record came from (opaque). Empty when the source has no partitions.
    pub source_partition: SourcePartition,
    /// Position after this record within `source_partition` (opaque). `None` when the source has
    /// nothing to resume from (e.g. MQTT, whose resume point is the broker session).
    pub source_offset: Option<SourceOffset>,
    /// Set when the source already knows this record cannot be written (say, its topic renders
    /// to an illegal Kafka topic name). The runtime does not write it; it hands it to the error
    /// policy with this message, and calls `commit_record` once the policy has dealt with it.
    pub rejected: Option<String>,
}

impl SourceRecord {
    /// A record for `topic` with `value`, no key, headers or source offset.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Headers::new(),
            timestamp: None,
            source_partition: SourcePartition::new(),
            source_offset: None,
            rejected: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(key, value);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the source partition and offset.
    pub fn with_source(mut self, partition: SourcePartition, offset: SourceOffset) -> Self {
        self.source_partition = partition;
        self.source_offset = Some(offset);
        self
    }

    /// Marks the record as one that cannot be written, with the reason (see
    /// [`rejected`](Self::rejected)).
    pub fn reject(mut self, reason: impl Into<String>) -> Self {
        self.rejected = Some(reason.into());
        self
    }

    /// Approximate size in bytes (key + value + headers), used for in-flight byte limits.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.encoded_len()
    }
}

/// A record read from Kafka, delivered to a sink task.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// Topic, as the sink should see it: the topic it was read from, unless a transform renamed it.
    pub topic: Arc<str>,
    /// The topic it was read from; with `partition` and `offset`, where its offset is committed.
    pub original_topic: Arc<str>,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Ordered headers; duplicates allowed.
    pub headers: Headers,
    /// Record timestamp.
    pub timestamp: Timestamp,
}

impl SinkRecord {
    /// The topic and partition it was read from (where its offset is committed).
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition { topic: Arc::clone(&self.original_topic), partition: self.partition }
    }

    /// Approximate size in bytes (key + value + headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.encoded_len()
    }
}

/// Where Kafka stored a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic written to.
    pub topic: Arc<str>,
    /// Partition written to.
    pub partition: i32,
    /// Offset assigned by the broker.
    pub offset: i64,
    /// Timestamp the record was written with.
    pub timestamp: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_duplicates() {
        let h: Headers = vec![("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        let keys: Vec<_> = h.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(h.first("a").map(|b| &b[..]), Some(&b"1"[..]));
        assert_eq!(h.last("a").map(|b| &b[..]), Some(&b"3"[..]));
        let mut h = h;
        assert_eq!(h.remove("a"), 2);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn timestamps_round_trip_through_system_time() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        let before = Timestamp::from_millis(-5);
        assert_eq!(Timestamp::from(SystemTime::from(before)), before);
    }

    #[test]
    fn source_record_size_counts_key_value_and_headers() {
        let r = SourceRecord::new("t", "12345").with_key("ab").with_header("k", "vv");
        assert_eq!(r.size(), 5 + 2 + 3);
    }
}
