//! [`GroupOffsetStore`]: sink offsets kept as a consumer group's committed offsets, where Kafka
//! tooling (`kafka-consumer-groups.sh --describe`, librdkafka's `committed()`) shows them.

use async_trait::async_trait;

use super::{committed_offsets, GroupCommitter, GroupError};
use crate::kafka::KafkaClient;
use crate::offset::{OffsetMap, OffsetStore};
use crate::{Result, TopicPartition};

// The keys `OffsetMap::insert_kafka` writes (see offset/map.rs); checked by the test below.
const SINK_TOPIC: &str = "kafka_topic";
const SINK_PARTITION: &str = "kafka_partition";
const SINK_OFFSET: &str = "kafka_offset";

/// An [`OffsetStore`] over one consumer group: `load` reads the group's committed offsets into
/// [`OffsetMap::insert_kafka`] entries; `save` commits the map's Kafka entries with the
/// committer's generation (a source-partition entry is an error). The namespace is ignored: the
/// group is the namespace.
///
/// ```no_run
/// use connector_core::kafka::group::{GroupMember, GroupOffsetStore, GroupTimeouts};
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::{OffsetStore, TopicPartition};
///
/// # async fn example(mut member: GroupMember, client: KafkaClient) -> Result<(), Box<dyn std::error::Error>> {
/// let store = GroupOffsetStore::new(client, member.committer().expect("joined"));
/// let offsets = store.load("sink").await?;
/// let next = offsets.kafka_offset(&TopicPartition::new("commands", 0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GroupOffsetStore {
    client: KafkaClient,
    committer: GroupCommitter,
}

impl GroupOffsetStore {
    /// A store committing through `committer` (and reading its group through `client`).
    pub fn new(client: KafkaClient, committer: GroupCommitter) -> Self {
        Self { client, committer }
    }

    /// The committer it saves with.
    pub fn committer(&self) -> &GroupCommitter {
        &self.committer
    }
}

/// The Kafka entries of `offsets`, or the first entry that is not one.
pub(crate) fn kafka_entries(
    group: &str,
    offsets: &OffsetMap,
) -> std::result::Result<Vec<(TopicPartition, i64)>, GroupError> {
    offsets
        .iter()
        .map(|(p, o)| {
            let topic = p.get_str(SINK_TOPIC);
            let partition = p.get_i64(SINK_PARTITION).and_then(|n| i32::try_from(n).ok());
            let fields = p.clone().into_map().len();
            match (topic, partition, o.get_i64(SINK_OFFSET)) {
                (Some(t), Some(n), Some(next)) if fields == 2 => {
                    Ok((TopicPartition::new(t, n), next))
                }
                _ => Err(GroupError::NotKafkaOffset {
                    group: group.to_owned(),
                    entry: serde_json::Value::Object(p.clone().into_map()).to_string(),
                }),
            }
        })
        .collect()
}

#[async_trait]
impl OffsetStore for GroupOffsetStore {
    async fn load(&self, _namespace: &str) -> Result<OffsetMap> {
        let committed = committed_offsets(&self.client, self.committer.group_id()).await?;
        let mut map = OffsetMap::new();
        for (tp, next) in committed {
            map.insert_kafka(&tp, next);
        }
        Ok(map)
    }

    async fn save(&self, _namespace: &str, offsets: &OffsetMap) -> Result<()> {
        let entries = kafka_entries(self.committer.group_id(), offsets)?;
        self.committer.commit(&entries).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SourceOffset, SourcePartition};

    #[test]
    fn kafka_entries_round_trip_and_source_entries_are_refused() {
        let mut m = OffsetMap::new();
        m.insert_kafka(&TopicPartition::new("t", 3), 42);
        assert_eq!(kafka_entries("g", &m).unwrap(), vec![(TopicPartition::new("t", 3), 42)]);
        m.insert(SourcePartition::from([("file", "a")]), SourceOffset::from([("position", 1)]));
        let e = kafka_entries("g", &m).unwrap_err();
        assert!(e.to_string().contains("\"file\""), "{e}");
        assert!(!e.is_retriable());
    }
}
