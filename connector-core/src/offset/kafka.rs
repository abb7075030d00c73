//! [`KafkaOffsetStore`]: offsets in a single-partition Kafka topic, in Kafka Connect's format
//! (key = JSON `["<connector>", {partition}]`, value = JSON offset), so the latest record per key
//! is the current offset.
//!
//! Offsets written inside a transaction count once its commit marker is written; those of an
//! aborted transaction never count. The topic is read to the high watermark, not to the last
//! stable offset: a transaction left open (a zombie's, before its task restarts) or one Tansu
//! holds "prepared" must not hide the offsets written after it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::kafka::{FetchResult, KafkaClient, OffsetSpec, ProducerRecord};
use crate::offset::{OffsetMap, OffsetStore};
use crate::{Error, Result};

/// Topic config that makes the broker keep the latest record of every key.
const CLEANUP_POLICY: &str = "cleanup.policy";
/// The only acceptable value of [`CLEANUP_POLICY`] (as Kafka Connect's `offset.storage.topic`).
const COMPACT: &str = "compact";

/// Offsets in a Kafka topic (default name `connect-offsets`), read at first use up to the
/// high watermark (keeping the last value of each key, of records outside transactions and of
/// committed transactions), read on from there at every later load (so offsets another process
/// saved are seen) and appended to on every save. Each save is written as one batch to one
/// partition. Offsets can also be written inside a Kafka transaction
/// ([`offset_records`](Self::offset_records), then [`committed`](Self::committed)).
///
/// A transaction still open on the offsets topic is skipped (its offsets count once its commit
/// marker is there) and does not hold back what was written after it. The topic is created with `cleanup.policy=compact`, so
/// the broker keeps the latest offset of every key however long ago it was written; an existing
/// topic that is not compacted is refused at start (where the broker describes topic configs).
///
/// ```no_run
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::{KafkaOffsetStore, OffsetStore};
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let store = KafkaOffsetStore::new(client, "connect-offsets");
/// let offsets = store.load("telemetry").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct KafkaOffsetStore {
    client: KafkaClient,
    topic: String,
    /// What was read and written, once the topic was first read.
    cache: Mutex<Option<Cache>>,
}

/// The offsets a [`KafkaOffsetStore`] knows.
#[derive(Debug, Default)]
struct Cache {
    /// Whether the topic was read from its start.
    loaded: bool,
    /// Every connector's offsets as read from the topic (and written by this store).
    read: HashMap<String, OffsetMap>,
    /// Where the next read starts: where the last one ended, or the first record of a
    /// transaction it found open (re-read once decided; records after it are read again in
    /// order, which leaves the same last value of each key).
    position: i64,
}

impl Cache {
    fn get(&self, namespace: &str) -> OffsetMap {
        self.read.get(namespace).cloned().unwrap_or_default()
    }

    fn learn(&mut self, namespace: &str, offsets: &OffsetMap) {
        if self.loaded {
            self.read.entry(namespace.to_owned()).or_default().merge(offsets);
        }
    }
}

impl KafkaOffsetStore {
    /// A store in `topic` (created with one partition if missing).
    pub fn new(client: KafkaClient, topic: impl Into<String>) -> Self {
        Self { client, topic: topic.into(), cache: Mutex::new(None) }
    }

    /// The offsets topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The records [`save`](OffsetStore::save)`(namespace, offsets)` would write (same key and
    /// value format, partition 0), to be written inside a Kafka transaction; after it commits,
    /// tell the store with [`committed`](Self::committed).
    ///
    /// ```
    /// use connector_core::kafka::{KafkaClient, KafkaConfig};
    /// use connector_core::{KafkaOffsetStore, OffsetMap, TopicPartition};
    ///
    /// # async fn example(client: KafkaClient) {
    /// let store = KafkaOffsetStore::new(client, "connect-offsets");
    /// let mut offsets = OffsetMap::new();
    /// offsets.insert_kafka(&TopicPartition::new("commands", 0), 7);
    /// let records = store.offset_records("sink", &offsets);
    /// assert_eq!(records.len(), 1);
    /// assert_eq!(&*records[0].topic, "connect-offsets");
    /// # }
    /// ```
    pub fn offset_records(&self, namespace: &str, offsets: &OffsetMap) -> Vec<ProducerRecord> {
        offsets
            .iter()
            .map(|(p, o)| {
                let key = Value::Array(vec![
                    Value::String(namespace.to_owned()),
                    Value::Object(p.clone().into_map()),
                ]);
                ProducerRecord::new(
                    self.topic.as_str(),
                    Bytes::from(Value::Object(o.clone().into_map()).to_string()),
                )
                .with_key(Bytes::from(key.to_string()))
                .with_partition(0)
            })
            .collect()
    }

    /// After a transaction holding [`offset_records`](Self::offset_records)`(namespace,
    /// offsets)` committed: the store's cache learns them, as after a
    /// [`save`](OffsetStore::save).
    pub async fn committed(&self, namespace: &str, offsets: &OffsetMap) {
        let mut cache = self.cache.lock().await;
        cache.get_or_insert_with(Cache::default).learn(namespace, offsets);
    }

    /// Makes sure the topic exists and is compacted, and has been read once (call before writing
    /// [`offset_records`](Self::offset_records) into a transaction: a transaction cannot
    /// create the topic).
    ///
    /// # Errors
    /// As for [`load`](OffsetStore::load).
    pub async fn prepare(&self) -> Result<()> {
        self.prepare_locked(&mut *self.cache.lock().await, false).await.map(|_| ())
    }

    /// The cache, read from the topic's start if it was not yet, else (when `refresh`) brought
    /// up to date.
    async fn prepare_locked<'a>(
        &self,
        slot: &'a mut Option<Cache>,
        refresh: bool,
    ) -> Result<&'a mut Cache> {
        let cache = slot.get_or_insert_with(Cache::default);
        if !cache.loaded {
            *cache = self.read_all().await?;
        } else if refresh {
            // Not a stale copy: another worker may have saved since (its task moved here).
            self.catch_up(cache).await?;
        }
        Ok(cache)
    }

    async fn ensure_topic(&self) -> Result<()> {
        if self.client.topic_metadata(&self.topic).await?.is_none() {
            let rf = self.client.config().topic_replication_factor;
            self.client
                .create_topic_with_configs(&self.topic, 1, rf, &[(CLEANUP_POLICY, COMPACT)])
                .await?;
        }
        let meta = self.client.ensure_topic(&self.topic).await?;
        if meta.partition_count() != 1 {
            debug!(topic = %self.topic, partitions = meta.partition_count(), "offsets topic has several partitions; using partition 0");
        }
        self.check_compacted().await
    }

    /// Refuses an offsets topic that is not compacted: under `delete` retention the offsets of
    /// partitions that saw no traffic for `retention.ms` would be deleted, and their connectors
    /// would start over. A broker that does not answer DescribeConfigs cannot be checked.
    async fn check_compacted(&self) -> Result<()> {
        let Some(configs) = self.client.topic_configs(&self.topic).await? else {
            warn!(topic = %self.topic, "cannot check that the offsets topic has cleanup.policy=compact (the broker does not describe topic configs)");
            return Ok(());
        };
        let policy = configs.get(CLEANUP_POLICY).cloned().flatten();
        let compacted = policy.as_deref().is_some_and(|p| {
            let policies: Vec<&str> = p.split(',').map(str::trim).collect();
            policies == [COMPACT]
        });
        if compacted {
            return Ok(());
        }
        let found = match &policy {
            Some(p) => format!("{CLEANUP_POLICY}={p}"),
            None => format!("no {CLEANUP_POLICY} set (the broker default, delete)"),
        };
        Err(Error::fatal(format!(
            "offsets topic {topic} must have {CLEANUP_POLICY}={COMPACT}, but it has {found}: under \
             delete retention the offsets of idle partitions expire and their connectors start \
             over. Set it on the topic (kafka-configs --alter --entity-type topics --entity-name \
             {topic} --add-config {CLEANUP_POLICY}={COMPACT}) or use another offsets.topic",
            topic = self.topic
        ))
        .with_topic(&*self.topic))
    }

    /// Reads the topic from the start into a fresh cache.
    async fn read_all(&self) -> Result<Cache> {
        self.ensure_topic().await?;
        let start = self.client.list_offset(&self.topic, 0, OffsetSpec::Earliest).await?;
        let mut cache = Cache { loaded: true, position: start, ..Cache::default() };
        self.catch_up(&mut cache).await?;
        Ok(cache)
    }

    /// Reads what was appended since the cache was last brought up to date (by other processes
    /// too: in distributed mode a task that moved here resumes from the offsets its previous
    /// worker saved last).
    async fn catch_up(&self, cache: &mut Cache) -> Result<()> {
        let (out, offset) = (&mut cache.read, &mut cache.position);
        let end = self.client.end_offset(&self.topic, 0).await?;
        if *offset > end {
            // The topic was recreated: read it again from its start.
            out.clear();
            *offset = self.client.list_offset(&self.topic, 0, OffsetSpec::Earliest).await?;
        }
        // The high watermark is taken once: saves made while we read are not chased, so the
        // read ends. Only the last value of each key is kept, so memory follows the number of
        // keys, not the topic's history.
        let stall_limit = self.client.config().request_timeout();
        let mut first_open: Option<i64> = None;
        let mut last_progress = std::time::Instant::now();
        while *offset < end {
            if last_progress.elapsed() > stall_limit {
                return Err(Error::retriable(format!(
                    "offsets topic {} stopped returning records at offset {offset} of {end}",
                    self.topic
                )));
            }
            let (result, open) = self
                .client
                .fetch_decided(&self.topic, 0, *offset, Duration::from_millis(100))
                .await?;
            if let Some(at) = open {
                first_open.get_or_insert(at);
            }
            let fetched = match result {
                FetchResult::Records(f) => f,
                FetchResult::OffsetOutOfRange => {
                    return Err(Error::retriable(format!(
                        "offsets topic {} changed while being read",
                        self.topic
                    )))
                }
            };
            for r in &fetched.records {
                self.apply(out, r.key.as_deref(), r.value.as_deref(), r.offset)?;
            }
            if fetched.next_offset > *offset {
                last_progress = std::time::Instant::now();
            }
            *offset = fetched.next_offset.max(*offset);
        }
        if let Some(at) = first_open {
            // Read again from the open transaction next time, when it may be decided.
            debug!(topic = %self.topic, at, "offsets topic holds an open transaction");
            cache.position = at.min(cache.position);
        }
        Ok(())
    }

    fn apply(
        &self,
        out: &mut HashMap<String, OffsetMap>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        at: i64,
    ) -> Result<()> {
        let corrupt = |what: &str| {
            Error::fatal(format!(
                "offsets topic {} holds a record at offset {at} that is not a connector offset ({what}); refusing to guess",
                self.topic
            ))
        };
        let key: Value = serde_json::from_slice(key.ok_or_else(|| corrupt("no key"))?)
            .map_err(|_| corrupt("key is not JSON"))?;
        let Value::Array(parts) = key else {
            return Err(corrupt("key is not a JSON array"));
        };
        let [Value::String(ns), Value::Object(partition)] = parts.as_slice() else {
            return Err(corrupt("key is not [name, {partition}]"));
        };
        let Some(value) = value else {
            // A tombstone: Kafka Connect's way of forgetting a partition. We never write them, but
            // honour them so a reset done with other tools is respected.
            if let Some(m) = out.get_mut(ns) {
                m.remove(&crate::record::SourcePartition::from(partition.clone()));
            }
            return Ok(());
        };
        let offset: Value =
            serde_json::from_slice(value).map_err(|_| corrupt("value is not JSON"))?;
        let Value::Object(offset) = offset else {
            return Err(corrupt("value is not a JSON object"));
        };
        out.entry(ns.clone()).or_default().insert(partition.clone().into(), offset.into());
        Ok(())
    }
}

#[async_trait]
impl OffsetStore for KafkaOffsetStore {
    async fn load(&self, namespace: &str) -> Result<OffsetMap> {
        self.prepare_locked(&mut *self.cache.lock().await, true).await.map(|c| c.get(namespace))
    }

    async fn save(&self, namespace: &str, offsets: &OffsetMap) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut guard = self.cache.lock().await;
        let cache = self.prepare_locked(&mut guard, false).await?;
        self.client.produce(self.offset_records(namespace, offsets)).await?;
        cache.learn(namespace, offsets);
        Ok(())
    }

    fn as_kafka(&self) -> Option<&KafkaOffsetStore> {
        Some(self)
    }
}
