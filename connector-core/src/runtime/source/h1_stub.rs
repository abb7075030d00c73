//! TEMPORARY (until h1-kafka is merged): the contract's signatures of H1's
//! `TransactionalProducer` and `KafkaOffsetStore` additions (issue 17, /work/wt/EOS.md), so the
//! exactly-once driver builds. Every call fails.

use std::time::Duration;

use crate::kafka::{KafkaClient, ProducerRecord};
use crate::offset::{KafkaOffsetStore, OffsetMap, OffsetStore};
use crate::record::RecordMetadata;
use crate::{Error, Result};

pub(crate) struct TransactionalProducer;

impl TransactionalProducer {
    pub(crate) async fn init(
        _client: KafkaClient,
        _id: impl Into<String>,
        _timeout: Duration,
    ) -> Result<Self> {
        Err(Error::fatal("transactions are not built yet"))
    }
    pub(crate) fn producer_id(&self) -> i64 {
        -1
    }
    pub(crate) fn epoch(&self) -> i16 {
        -1
    }
    pub(crate) async fn send(
        &mut self,
        _records: Vec<ProducerRecord>,
    ) -> Result<Vec<Result<RecordMetadata>>> {
        Err(Error::fatal("transactions are not built yet"))
    }
    pub(crate) async fn commit(&mut self) -> Result<()> {
        Err(Error::fatal("transactions are not built yet"))
    }
    pub(crate) async fn abort(&mut self) -> Result<()> {
        Err(Error::fatal("transactions are not built yet"))
    }
}

impl KafkaOffsetStore {
    pub(crate) fn offset_records(&self, _ns: &str, _o: &OffsetMap) -> Vec<ProducerRecord> {
        Vec::new()
    }
    pub(crate) async fn committed(&self, _ns: &str, _o: &OffsetMap) {}
}

pub(crate) fn as_kafka(_o: &dyn OffsetStore) -> Option<&KafkaOffsetStore> {
    None
}
