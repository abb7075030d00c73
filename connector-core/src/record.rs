//! Records that flow through connectors: [`SourceRecord`] (from a source task to Kafka),
//! [`SinkRecord`] (from Kafka to a sink task), their ordered [`Headers`], [`Timestamp`]s, and the
//! [`RecordMetadata`] Kafka returns for a written record.
//!
//! Source partitions and offsets are opaque JSON maps, as in Kafka Connect: the framework stores and
//! returns them but never looks inside.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The JSON-object newtypes [`SourcePartition`] and [`SourceOffset`]: built from pairs or from any
/// `Serialize` struct, read back with typed getters or into a struct, and a `serde_json::Map`
/// underneath (`Deref`), so map methods work as they are.
macro_rules! json_object_newtype {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Empty.
            pub fn new() -> Self {
                Self(Map::new())
            }

            #[doc = concat!("The ", $what, " from a struct or map that serializes to a JSON object.")]
            ///
            /// # Errors
            /// Fatal when `value` does not serialize to a JSON object.
            pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> crate::Result<Self> {
                match serde_json::to_value(value) {
                    Ok(Value::Object(map)) => Ok(Self(map)),
                    Ok(other) => Err(crate::Error::fatal(format!(
                        concat!("a ", $what, " must be a JSON object, not {}"),
                        other
                    ))),
                    Err(e) => Err(crate::Error::fatal(concat!("cannot serialize a ", $what))
                        .with_source(e)),
                }
            }

            #[doc = concat!("The ", $what, " read into `T` (the reverse of [`from_serialize`](Self::from_serialize)).")]
            ///
            /// # Errors
            /// Fatal when it does not deserialize into `T`.
            pub fn deserialize_into<T: DeserializeOwned>(&self) -> crate::Result<T> {
                T::deserialize(&Value::Object(self.0.clone())).map_err(|e| {
                    crate::Error::fatal(concat!("cannot read a stored ", $what)).with_source(e)
                })
            }

            /// The value of `key` as an unsigned integer.
            pub fn get_u64(&self, key: &str) -> Option<u64> {
                self.0.get(key).and_then(Value::as_u64)
            }

            /// The value of `key` as a signed integer.
            pub fn get_i64(&self, key: &str) -> Option<i64> {
                self.0.get(key).and_then(Value::as_i64)
            }

            /// The value of `key` as text.
            pub fn get_str(&self, key: &str) -> Option<&str> {
                self.0.get(key).and_then(Value::as_str)
            }

            /// The underlying map.
            pub fn into_map(self) -> Map<String, Value> {
                self.0
            }
        }

        impl Deref for $name {
            type Target = Map<String, Value>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        impl From<Map<String, Value>> for $name {
            fn from(map: Map<String, Value>) -> Self {
                Self(map)
            }
        }

        impl From<$name> for Map<String, Value> {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl<K: Into<String>, V: Into<Value>, const N: usize> From<[(K, V); N]> for $name {
            fn from(pairs: [(K, V); N]) -> Self {
                pairs.into_iter().collect()
            }
        }

        impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for $name {
            fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
                Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            }
        }
    };
}

/// Identifies where a source record came from (e.g. `{"file": "/var/log/a.log"}`). Opaque to the
/// framework; an empty map means "no partition".
///
/// ```
/// use connector_core::SourcePartition;
///
/// #[derive(serde::Serialize)]
/// struct File<'a> { file: &'a str }
///
/// let p = SourcePartition::from_serialize(&File { file: "/var/log/a.log" }).unwrap();
/// assert_eq!(p, SourcePartition::from([("file", "/var/log/a.log")]));
/// assert_eq!(p.get_str("file"), Some("/var/log/a.log"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourcePartition(Map<String, Value>);

json_object_newtype!(SourcePartition, "source partition");

/// A position within a [`SourcePartition`] (e.g. `{"position": 4096}`). Opaque to the framework.
///
/// ```
/// use connector_core::SourceOffset;
///
/// let offset = SourceOffset::from([("pos", 42)]);
/// assert_eq!(offset.get_u64("pos"), Some(42));
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Position { pos: u64, line: u32 }
/// let offset = SourceOffset::from_serialize(&Position { pos: 42, line: 3 }).unwrap();
/// assert_eq!(offset.deserialize_into::<Position>().unwrap(), Position { pos: 42, line: 3 });
/// assert!(SourceOffset::from_serialize(&42).is_err(), "not an object");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceOffset(Map<String, Value>);

json_object_newtype!(SourceOffset, "source offset");

/// The builder methods the record types share: `with_key` and `with_header` for every record
/// type, and with `optional`, `with_timestamp` and `with_partition` for those whose timestamp and
/// partition are optional ([`SourceRecord`], `ProducerRecord`).
macro_rules! record_builders {
    ($t:ty) => {
        impl $t {
            /// Sets the key.
            pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
                self.key = Some(key.into());
                self
            }

            /// Appends a header.
            pub fn with_header(
                mut self,
                key: impl Into<std::borrow::Cow<'static, str>>,
                value: impl Into<Bytes>,
            ) -> Self {
                self.headers.push(key, value);
                self
            }
        }
    };
    ($t:ty, optional) => {
        $crate::record::record_builders!($t);

        impl $t {
            /// Sets the timestamp.
            pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
                self.timestamp = Some(ts);
                self
            }

            /// Sets an explicit partition (`None` lets the partitioner choose).
            pub fn with_partition(mut self, partition: i32) -> Self {
                self.partition = Some(partition);
                self
            }
        }
    };
}
pub(crate) use record_builders;

record_builders!(SourceRecord, optional);
record_builders!(SinkRecord);

/// Key + value + header bytes: how records are counted against byte limits.
pub(crate) fn record_size(key: Option<&Bytes>, value: Option<&Bytes>, headers: &Headers) -> usize {
    key.map_or(0, Bytes::len) + value.map_or(0, Bytes::len) + headers.encoded_len()
}

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
///
/// The key is a [`Cow`]: a fixed name (`"mqtt.topic"`) is borrowed for the life of the program
/// and costs no allocation to create or to clone, which matters when every record carries a few.
///
/// ```
/// use connector_core::Header;
///
/// let h = Header { key: "unit".into(), value: "C".into() };
/// assert_eq!(h.key, "unit");
/// let owned = Header { key: format!("tag-{}", 1).into(), value: "a".into() };
/// assert_eq!(&*owned.key, "tag-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Header key (Kafka requires UTF-8): borrowed when it is a fixed name, else owned.
    pub key: Cow<'static, str>,
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

    /// Appends a header, keeping any earlier one with the same key. A `&'static str` key is kept
    /// borrowed (no allocation); a `String` is moved in.
    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) {
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

impl<K: Into<Cow<'static, str>>, V: Into<Bytes>> FromIterator<(K, V)> for Headers {
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
///
/// let record = SourceRecord::new("plant.line1", "21.5")
///     .with_key("plant/line1/temp")
///     .with_header("unit", "C")
///     .with_timestamp(Timestamp::from_millis(1_700_000_000_000))
///     .with_source([("file", "/var/log/a")], [("position", 42)]);
/// assert_eq!(record.topic, "plant.line1");
/// assert_eq!(record.source_offset.and_then(|o| o.get_u64("position")), Some(42));
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

    /// Sets the source partition and offset (anything that converts: the types themselves, a
    /// `serde_json::Map`, or `[(key, value); N]` pairs).
    pub fn with_source(
        mut self,
        partition: impl Into<SourcePartition>,
        offset: impl Into<SourceOffset>,
    ) -> Self {
        self.source_partition = partition.into();
        self.source_offset = Some(offset.into());
        self
    }

    /// A record that is never written to Kafka: only its source offset counts. The runtime
    /// commits `offset` for `partition` like a written record's (in order with the others; with
    /// exactly-once, in the same transaction) and passes the record back through
    /// `commit_records`. The MQTT source uses it to record a QoS 2 PUBREL.
    ///
    /// It is a record with an empty topic and neither key nor value (see
    /// [`is_offset_only`](Self::is_offset_only)).
    ///
    /// ```
    /// use connector_core::SourceRecord;
    ///
    /// let r = SourceRecord::offset_only([("session", "s1")], [("position", 7)]);
    /// assert!(r.is_offset_only());
    /// assert!(!SourceRecord::new("t", "v").is_offset_only());
    /// ```
    pub fn offset_only(
        partition: impl Into<SourcePartition>,
        offset: impl Into<SourceOffset>,
    ) -> Self {
        Self {
            topic: String::new(),
            partition: None,
            key: None,
            value: None,
            headers: Headers::new(),
            timestamp: None,
            source_partition: partition.into(),
            source_offset: Some(offset.into()),
            rejected: None,
        }
    }

    /// Whether this is an [`offset_only`](Self::offset_only) record: empty topic, no key, no
    /// value, no headers, a source offset, not rejected.
    pub fn is_offset_only(&self) -> bool {
        self.topic.is_empty()
            && self.key.is_none()
            && self.value.is_none()
            && self.headers.is_empty()
            && self.source_offset.is_some()
            && self.rejected.is_none()
    }

    /// Marks the record as one that cannot be written, with the reason (see
    /// [`rejected`](Self::rejected)).
    pub fn reject(mut self, reason: impl Into<String>) -> Self {
        self.rejected = Some(reason.into());
        self
    }

    /// Approximate size in bytes (key + value + headers), used for in-flight byte limits.
    pub fn size(&self) -> usize {
        record_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
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
    /// A record read from `topic` (also its original topic), `partition` and `offset`, with
    /// `value`, no key or headers, and the current time as its timestamp; for tests of sink tasks.
    ///
    /// ```
    /// use connector_core::{SinkRecord, Timestamp};
    ///
    /// let r = SinkRecord::new("commands", 0, 41, "open")
    ///     .with_key("valve-7")
    ///     .with_header("unit", "%")
    ///     .with_timestamp(Timestamp::from_millis(1_700_000_000_000));
    /// assert_eq!((&*r.topic, r.partition, r.offset), ("commands", 0, 41));
    /// assert_eq!(r.key.as_deref(), Some(&b"valve-7"[..]));
    /// assert_eq!(r.size(), 4 + 7 + 5);
    /// ```
    pub fn new(
        topic: impl Into<Arc<str>>,
        partition: i32,
        offset: i64,
        value: impl Into<Bytes>,
    ) -> Self {
        let topic = topic.into();
        Self {
            original_topic: Arc::clone(&topic),
            topic,
            partition,
            offset,
            key: None,
            value: Some(value.into()),
            headers: Headers::new(),
            timestamp: Timestamp::now(),
        }
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: impl Into<Headers>) -> Self {
        self.headers = headers.into();
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = ts;
        self
    }

    /// The topic and partition it was read from (where its offset is committed).
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition { topic: Arc::clone(&self.original_topic), partition: self.partition }
    }

    /// Approximate size in bytes (key + value + headers).
    pub fn size(&self) -> usize {
        record_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
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
        let keys: Vec<_> = h.iter().map(|h| &*h.key).collect();
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
