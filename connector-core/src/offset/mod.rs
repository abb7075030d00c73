//! Offsets: where each connector resumes after a restart.
//!
//! An [`OffsetStore`] keeps, per connector (its *namespace*), an [`OffsetMap`] from source
//! partition to source offset. Source tasks get their map back at start; the source runtime saves
//! only the offsets of the contiguous prefix of records Kafka acknowledged; the sink runtime saves
//! the next Kafka offset to read per topic-partition, as returned by `pre_commit`.
//!
//! Implementations: [`MemoryOffsetStore`] (tests), [`FileOffsetStore`] (a JSON file replaced
//! atomically: write temp, fsync, rename) and [`KafkaOffsetStore`] (a Kafka topic, Kafka Connect's
//! key/value format). A store that cannot read what it holds fails loudly; it never resets to zero.

mod file;
mod kafka;
mod map;
mod memory;

use async_trait::async_trait;

pub use file::FileOffsetStore;
pub use kafka::KafkaOffsetStore;
pub(crate) use map::write_canonical;
pub use map::OffsetMap;
pub use memory::MemoryOffsetStore;

use crate::Result;

/// Durable storage of connector offsets.
///
/// ```
/// use connector_core::{MemoryOffsetStore, OffsetMap, OffsetStore, TopicPartition};
///
/// # tokio_test(async {
/// let store = MemoryOffsetStore::new();
/// let mut offsets = OffsetMap::new();
/// offsets.insert_kafka(&TopicPartition::new("commands", 0), 42);
/// store.save("sink-a", &offsets).await?;
/// let loaded = store.load("sink-a").await?;
/// assert_eq!(loaded.kafka_offset(&TopicPartition::new("commands", 0)), Some(42));
/// # Ok::<(), connector_core::Error>(()) });
/// # fn tokio_test<F: std::future::Future<Output = connector_core::Result<()>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap();
/// # }
/// ```
#[async_trait]
pub trait OffsetStore: Send + Sync + std::fmt::Debug {
    /// Every offset stored for `namespace` (a connector name); empty when none were ever saved.
    ///
    /// # Errors
    /// When stored offsets exist but cannot be read (corrupt file, unreachable Kafka): the caller
    /// must not start from zero.
    async fn load(&self, namespace: &str) -> Result<OffsetMap>;

    /// Durably stores `offsets` for `namespace`, merged over what is stored (partitions not in
    /// `offsets` keep their stored offset). When it returns `Ok`, the offsets survive a crash.
    ///
    /// # Errors
    /// When the offsets could not be made durable; what was stored before is kept.
    ///
    /// # Cancellation
    /// The runtime saves at shutdown under its shutdown timeout, so the future may be dropped at
    /// any `.await`. An implementation must then leave either the old or the new offsets stored,
    /// never a mix or a torn write (write a temporary file and rename it, say; one Kafka produce):
    /// the next `load` must still read.
    async fn save(&self, namespace: &str, offsets: &OffsetMap) -> Result<()>;

    /// This store as a [`KafkaOffsetStore`], when it is one: exactly-once sources write their
    /// offsets inside their Kafka transactions ([`KafkaOffsetStore::offset_records`]), which only
    /// an offsets topic allows. Wrappers around a Kafka store pass it through.
    fn as_kafka(&self) -> Option<&KafkaOffsetStore> {
        None
    }
}
