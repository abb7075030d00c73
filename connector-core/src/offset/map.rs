//! [`OffsetMap`]: source partition -> source offset, with helpers for Kafka topic-partitions.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::record::{SourceOffset, SourcePartition, TopicPartition};

/// Offsets by source partition. Source partitions are compared by their canonical JSON (keys
/// sorted), so `{"a":1,"b":2}` and `{"b":2,"a":1}` are the same partition.
///
/// ```
/// use connector_core::{OffsetMap, SourceOffset, SourcePartition};
///
/// let mut m = OffsetMap::new();
/// m.insert(SourcePartition::from([("file", "a"), ("host", "x")]), SourceOffset::from([("position", 10)]));
/// m.insert(SourcePartition::from([("host", "x"), ("file", "a")]), SourceOffset::from([("position", 20)]));
/// assert_eq!(m.len(), 1);
/// let a = SourcePartition::from([("file", "a"), ("host", "x")]);
/// assert_eq!(m.get(&a).and_then(|o| o.get_u64("position")), Some(20));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffsetMap {
    entries: BTreeMap<String, (SourcePartition, SourceOffset)>,
}

/// Key of a Kafka topic-partition's entry, for sink offsets.
const SINK_TOPIC: &str = "kafka_topic";
const SINK_PARTITION: &str = "kafka_partition";
const SINK_OFFSET: &str = "kafka_offset";

impl OffsetMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the offset of `partition`.
    pub fn insert(&mut self, partition: SourcePartition, offset: SourceOffset) {
        self.entries.insert(canonical_key(&partition), (partition, offset));
    }

    /// The offset of `partition`.
    pub fn get(&self, partition: &SourcePartition) -> Option<&SourceOffset> {
        self.entries.get(&canonical_key(partition)).map(|(_, o)| o)
    }

    /// Forgets `partition`; returns its offset if it had one.
    pub fn remove(&mut self, partition: &SourcePartition) -> Option<SourceOffset> {
        self.entries.remove(&canonical_key(partition)).map(|(_, o)| o)
    }

    /// Every (partition, offset), ordered by the partition's canonical JSON.
    pub fn iter(&self) -> impl Iterator<Item = (&SourcePartition, &SourceOffset)> {
        self.entries.values().map(|(p, o)| (p, o))
    }

    /// Number of partitions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no offsets.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Overwrites this map's entries with `other`'s.
    pub fn merge(&mut self, other: &OffsetMap) {
        for (k, v) in &other.entries {
            self.entries.insert(k.clone(), v.clone());
        }
    }

    /// Sets the next offset to read from a Kafka topic-partition (sink offsets).
    pub fn insert_kafka(&mut self, tp: &TopicPartition, next_offset: i64) {
        self.insert(kafka_partition(tp), kafka_offset(next_offset));
    }

    /// The next offset to read from a Kafka topic-partition, if stored.
    pub fn kafka_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.get(&kafka_partition(tp)).and_then(|o| o.get(SINK_OFFSET)).and_then(Value::as_i64)
    }
}

fn kafka_partition(tp: &TopicPartition) -> SourcePartition {
    let mut m = Map::new();
    m.insert(SINK_TOPIC.to_owned(), Value::from(&*tp.topic));
    m.insert(SINK_PARTITION.to_owned(), Value::from(tp.partition));
    m.into()
}

fn kafka_offset(next: i64) -> SourceOffset {
    let mut m = Map::new();
    m.insert(SINK_OFFSET.to_owned(), Value::from(next));
    m.into()
}

/// JSON with object keys sorted at every level, independent of how the map was built.
pub(crate) fn canonical_key(partition: &SourcePartition) -> String {
    let mut out = String::new();
    write_canonical(&Value::Object(partition.clone().into_map()), &mut out);
    out
}

/// Appends `v` as JSON with object keys sorted at every level (the same value gives the same
/// text however it was built): offset keys, and the worker group's config hash.
pub(crate) fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(inner) = m.get(k) {
                    write_canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, inner) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(inner, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_keys_ignore_insertion_order_at_every_level() {
        let a = json!({"b": {"y": 1, "x": [1, {"q": 2, "p": 3}]}, "a": "s"});
        let b = json!({"a": "s", "b": {"x": [1, {"p": 3, "q": 2}], "y": 1}});
        let (Value::Object(a), Value::Object(b)) = (a, b) else { panic!() };
        let (a, b) = (SourcePartition::from(a), SourcePartition::from(b));
        assert_eq!(canonical_key(&a), canonical_key(&b));
        assert_eq!(canonical_key(&a), r#"{"a":"s","b":{"x":[1,{"p":3,"q":2}],"y":1}}"#);
    }

    #[test]
    fn kafka_offsets_are_stored_per_topic_partition() {
        let mut m = OffsetMap::new();
        m.insert_kafka(&TopicPartition::new("t", 0), 5);
        m.insert_kafka(&TopicPartition::new("t", 1), 9);
        m.insert_kafka(&TopicPartition::new("t", 0), 6);
        assert_eq!(m.len(), 2);
        assert_eq!(m.kafka_offset(&TopicPartition::new("t", 0)), Some(6));
        assert_eq!(m.kafka_offset(&TopicPartition::new("u", 0)), None);
    }
}
