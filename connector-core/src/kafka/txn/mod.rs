//! [`TransactionalProducer`]: writes records to Kafka in transactions, so that a read_committed
//! consumer sees every record of a committed transaction and none of an aborted one.
//!
//! The protocol (KIP-98): FindCoordinator (key type transaction) names the broker that keeps the
//! transactional id's state; InitProducerId there gives a producer id and a new epoch, which
//! fences every earlier instance of the same transactional id (their requests are answered
//! PRODUCER_FENCED) and aborts the transaction one of them left open. A transaction begins with
//! the first send: AddPartitionsToTxn for each partition new to it, then Produce (acks=all) with
//! the producer id, epoch, per-partition sequence numbers and the transactional flag; EndTxn
//! commits or aborts it, and the broker writes a marker to every partition it touched.
//!
//! What Tansu 0.6 does with each request is in `docs/kafka-io.md` ("Transactions").

mod codec;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::kafka::client::{KafkaClient, Lane};
use crate::kafka::errors::{api_error, invalidates_metadata, is_record_error, is_retriable_code};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::records::{build_batch, PendingRecord, ProducerRecord};
use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    ProduceRequest, ProduceRequestPartitionData, ProduceRequestTopicData,
};
use crate::kafka::wire::primitives::{Int16, Int32, NullableString, Records, String_};
use crate::record::{RecordMetadata, Timestamp, TopicPartition};
use crate::{Error, Result};

use codec::{
    AddPartitionsToTxnRequest, EndTxnRequest, FindTxnCoordinatorRequest, InitProducerIdRequest,
};

/// The cause attached to the error of a fenced [`TransactionalProducer`]: a newer instance of the
/// same transactional id started (InitProducerId bumped the epoch). [`Error::is_fenced`]
/// recognises it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transactional id {transactional_id} is fenced: a newer instance of this task started")]
pub struct ProducerFenced {
    /// The transactional id that was fenced.
    pub transactional_id: String,
}

impl Error {
    /// Whether this error says a [`TransactionalProducer`] was fenced by a newer instance of its
    /// transactional id: it must stop and never write again.
    ///
    /// ```
    /// use connector_core::Error;
    ///
    /// assert!(!Error::fatal("broker gone").is_fenced());
    /// ```
    pub fn is_fenced(&self) -> bool {
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            if c.is::<ProducerFenced>() {
                return true;
            }
            cause = c.source();
        }
        false
    }
}

/// Error codes that mean a newer instance of the transactional id took over.
fn is_fenced_code(e: ApiError) -> bool {
    matches!(
        e,
        ApiError::ProducerFenced
            | ApiError::InvalidProducerEpoch
            | ApiError::TransactionCoordinatorFenced
    )
}

/// Error codes after which asking the coordinator again can succeed.
fn coordinator_retriable(e: ApiError) -> bool {
    matches!(
        e,
        ApiError::CoordinatorLoadInProgress
            | ApiError::CoordinatorNotAvailable
            | ApiError::NotCoordinator
            | ApiError::ConcurrentTransactions
            | ApiError::RequestTimedOut
    )
}

/// A producer whose records become visible to read_committed consumers only when the
/// transaction holding them commits.
///
/// One instance per transactional id at a time: [`init`](Self::init) fences the earlier one.
/// Transactions are begun implicitly by the first [`send`](Self::send) after
/// [`init`](Self::init), [`commit`](Self::commit) or [`abort`](Self::abort).
///
/// ```no_run
/// use std::time::Duration;
/// use connector_core::kafka::{KafkaClient, KafkaConfig, ProducerRecord, TransactionalProducer};
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let mut producer =
///     TransactionalProducer::init(client, "mqtt-source-0", Duration::from_secs(60)).await?;
/// let results = producer.send(vec![ProducerRecord::new("telemetry", "21.5")]).await?;
/// if results.iter().all(Result::is_ok) {
///     producer.commit().await?;
/// } else {
///     producer.abort().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TransactionalProducer {
    client: KafkaClient,
    transactional_id: String,
    transaction_timeout: Duration,
    coordinator: i32,
    producer_id: i64,
    epoch: i16,
    /// The next sequence number of every partition written in this epoch.
    sequences: HashMap<TopicPartition, i32>,
    /// Partitions added to the current transaction.
    in_txn: HashSet<TopicPartition>,
    /// A send of the current transaction failed: it can only be aborted.
    failed: bool,
    /// Fenced: nothing can be done any more.
    fenced: bool,
    /// Per topic, the partition records without key or partition go to (chosen at random once).
    sticky: HashMap<Arc<str>, i32>,
}

/// One batch of a send: its partition, records (index in the send, record) and sequence.
struct Chunk {
    tp: TopicPartition,
    records: Vec<(usize, PendingRecord)>,
}

impl TransactionalProducer {
    /// FindCoordinator (key type transaction) and InitProducerId for `transactional_id`, with
    /// `transaction_timeout` (how long the broker may let a transaction stay open). The epoch is
    /// bumped: an earlier instance of this id is fenced and the transaction it left open aborted.
    ///
    /// # Errors
    /// Retriable when the coordinator did not answer within the request timeout; fatal when the
    /// broker refuses (not authorized, transactions unsupported).
    pub async fn init(
        client: KafkaClient,
        transactional_id: impl Into<String>,
        transaction_timeout: Duration,
    ) -> Result<Self> {
        let transactional_id = transactional_id.into();
        let mut p = Self {
            client,
            transactional_id,
            transaction_timeout,
            coordinator: -1,
            producer_id: -1,
            epoch: -1,
            sequences: HashMap::new(),
            in_txn: HashSet::new(),
            failed: false,
            fenced: false,
            sticky: HashMap::new(),
        };
        p.find_coordinator().await?;
        let timeout_ms = i32::try_from(transaction_timeout.as_millis()).unwrap_or(i32::MAX);
        let response = p
            .coordinator_call("InitProducerId", |p| InitProducerIdRequest {
                transactional_id: Some(p.transactional_id.clone()),
                transaction_timeout_ms: timeout_ms,
                producer_id: -1,
                producer_epoch: -1,
            })
            .await?;
        p.producer_id = response.producer_id;
        p.epoch = response.producer_epoch;
        info!(
            transactional_id = %p.transactional_id,
            producer_id = p.producer_id,
            epoch = p.epoch,
            timeout = ?p.transaction_timeout,
            "transactional producer initialised"
        );
        Ok(p)
    }

    /// The producer id the broker assigned to the transactional id.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// This instance's epoch (one more than the instance it fenced).
    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Whether a transaction is open (a send happened since the last commit or abort).
    pub fn in_transaction(&self) -> bool {
        !self.in_txn.is_empty()
    }

    /// Writes `records` in the current transaction (begun by the first send after
    /// [`init`](Self::init), [`commit`](Self::commit) or [`abort`](Self::abort)):
    /// AddPartitionsToTxn for partitions new to it, then Produce (acks=all), one request per
    /// broker. One result per record, in order; a record Kafka refuses (too large, say) gets an
    /// [`Error::RecordRejected`]. After any per-record error the transaction can only be aborted.
    ///
    /// # Errors
    /// Fenced (see [`Error::is_fenced`]) when a newer instance of the transactional id started;
    /// fatal when the broker refuses the transaction; retriable when the coordinator or a leader
    /// did not answer in time (abort, then retry).
    pub async fn send(
        &mut self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<Result<RecordMetadata>>> {
        self.usable()?;
        let n = records.len();
        let mut results: Vec<Option<Result<RecordMetadata>>> = (0..n).map(|_| None).collect();
        // Partition every record.
        let mut per_partition: HashMap<TopicPartition, Vec<(usize, PendingRecord)>> =
            HashMap::new();
        let mut order: Vec<TopicPartition> = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            match self.partition_of(&r).await {
                Ok(tp) => {
                    let pending = PendingRecord {
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                        timestamp: r.timestamp.unwrap_or_else(Timestamp::now).as_millis(),
                    };
                    let list = per_partition.entry(tp.clone()).or_default();
                    if list.is_empty() {
                        order.push(tp);
                    }
                    list.push((i, pending));
                }
                Err(e) if e.kind() == crate::ErrorKind::RecordRejected => {
                    results[i] = Some(Err(e));
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        // Partitions new to the transaction.
        let new: Vec<TopicPartition> =
            order.iter().filter(|tp| !self.in_txn.contains(*tp)).cloned().collect();
        if !new.is_empty() {
            if let Err(e) = self.add_partitions(&new).await {
                self.failed = true;
                return Err(e);
            }
        }
        // Batches per partition, at most batch_max_records / batch_max_bytes each.
        let max_records = self.client.config().batch_max_records.max(1);
        let max_bytes = self.client.config().batch_max_bytes.max(1);
        let mut queues: HashMap<TopicPartition, VecDeque<Chunk>> = HashMap::new();
        for tp in &order {
            let Some(list) = per_partition.remove(tp) else { continue };
            let q = queues.entry(tp.clone()).or_default();
            let mut current: Vec<(usize, PendingRecord)> = Vec::new();
            let mut bytes = 0;
            for (i, r) in list {
                let size = r.size();
                if !current.is_empty() && (current.len() >= max_records || bytes + size > max_bytes)
                {
                    q.push_back(Chunk { tp: tp.clone(), records: std::mem::take(&mut current) });
                    bytes = 0;
                }
                bytes += size;
                current.push((i, r));
            }
            if !current.is_empty() {
                q.push_back(Chunk { tp: tp.clone(), records: current });
            }
        }
        if let Err(e) = self.produce_all(queues, &mut results).await {
            self.failed = true;
            return Err(e);
        }
        let out: Vec<Result<RecordMetadata>> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::fatal("record was not sent"))))
            .collect();
        if out.iter().any(Result::is_err) {
            self.failed = true;
        }
        Ok(out)
    }

    /// EndTxn(commit). `Ok` means read_committed consumers see every record of the transaction.
    /// Without an open transaction it does nothing.
    ///
    /// # Errors
    /// Fenced (see [`Error::is_fenced`]); fatal when a send of this transaction failed (abort
    /// it) or the broker refuses; retriable when the coordinator did not answer in time (commit
    /// again: a repeated commit of a committed transaction succeeds).
    pub async fn commit(&mut self) -> Result<()> {
        self.usable()?;
        if self.failed {
            return Err(Error::fatal(format!(
                "transaction of {} cannot commit: a send in it failed; abort it",
                self.transactional_id
            )));
        }
        self.end(true).await
    }

    /// EndTxn(abort): none of the transaction's records will be seen by read_committed consumers.
    /// Without an open transaction it does nothing.
    ///
    /// # Errors
    /// Fenced (see [`Error::is_fenced`]); retriable when the coordinator did not answer in time.
    pub async fn abort(&mut self) -> Result<()> {
        self.usable()?;
        self.end(false).await
    }

    async fn end(&mut self, committed: bool) -> Result<()> {
        if self.in_txn.is_empty() {
            self.failed = false;
            return Ok(());
        }
        let started = Instant::now();
        self.coordinator_call(if committed { "EndTxn(commit)" } else { "EndTxn(abort)" }, |p| {
            EndTxnRequest {
                transactional_id: p.transactional_id.clone(),
                producer_id: p.producer_id,
                producer_epoch: p.epoch,
                committed,
            }
        })
        .await?;
        debug!(
            transactional_id = %self.transactional_id,
            committed,
            partitions = self.in_txn.len(),
            took = ?started.elapsed(),
            "transaction ended"
        );
        self.in_txn.clear();
        self.failed = false;
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        if self.fenced {
            return Err(self.fenced_error("an earlier request"));
        }
        Ok(())
    }

    fn fenced_error(&self, what: &str) -> Error {
        Error::fatal(format!(
            "transactional producer {} is fenced: a newer instance of this task started \
             (the broker refused {what}); this instance must not write again",
            self.transactional_id
        ))
        .with_source(ProducerFenced { transactional_id: self.transactional_id.clone() })
    }

    /// The error for a coordinator's answer `code` to `what`; marks the producer fenced.
    fn coordinator_error(&mut self, e: ApiError, what: &str) -> Error {
        if is_fenced_code(e) {
            self.fenced = true;
            return self.fenced_error(&format!("{what}: {e:?}"));
        }
        if coordinator_retriable(e) {
            return Error::retriable(format!(
                "{what} for transactional id {}: coordinator answered {e:?}",
                self.transactional_id
            ));
        }
        Error::fatal(format!(
            "{what} for transactional id {}: broker answered {e:?}",
            self.transactional_id
        ))
    }

    async fn find_coordinator(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.client.config().request_timeout();
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        loop {
            let result = self
                .client
                .request_any(FindTxnCoordinatorRequest {
                    transactional_id: self.transactional_id.clone(),
                })
                .await;
            let err = match result {
                Ok(r) if r.error_code == 0 => {
                    self.coordinator = r.node_id;
                    debug!(transactional_id = %self.transactional_id, node = r.node_id, "transaction coordinator");
                    return Ok(());
                }
                Ok(r) => match ApiError::new(r.error_code) {
                    Some(e) => {
                        let mut err = self.coordinator_error(e, "FindCoordinator");
                        if let Some(m) = r.error_message {
                            err = err.with_source(std::io::Error::other(m));
                        }
                        err
                    }
                    None => Error::fatal(format!("FindCoordinator: error code {}", r.error_code)),
                },
                Err(e) => e,
            };
            if !err.is_retriable() || Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Sends the request `make` builds to the coordinator, retrying retriable answers (finding
    /// the coordinator again when it moved) until the request timeout.
    async fn coordinator_call<R, F>(&mut self, what: &str, make: F) -> Result<R::ResponseBody>
    where
        F: Fn(&Self) -> R,
        R: crate::kafka::wire::messages::RequestBody
            + Send
            + crate::kafka::wire::messages::WriteVersionedType<Vec<u8>>,
        R::ResponseBody: crate::kafka::wire::messages::ReadVersionedType<std::io::Cursor<Vec<u8>>>
            + HasErrorCode,
    {
        let deadline = Instant::now() + self.client.config().request_timeout();
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        loop {
            let result =
                self.client.request_node(self.coordinator, Lane::Control, make(self)).await;
            let err = match result {
                Ok(r) => match r.error_code().and_then(ApiError::new) {
                    None => return Ok(r),
                    Some(e) => {
                        if matches!(e, ApiError::NotCoordinator | ApiError::CoordinatorNotAvailable)
                        {
                            self.find_coordinator().await?;
                        }
                        self.coordinator_error(e, what)
                    }
                },
                Err(e) => e,
            };
            if !err.is_retriable() || Instant::now() >= deadline {
                return Err(err);
            }
            debug!(transactional_id = %self.transactional_id, what, error = %err.report(), "retrying");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn add_partitions(&mut self, new: &[TopicPartition]) -> Result<()> {
        let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
        for tp in new {
            match topics.iter_mut().find(|(t, _)| *t == *tp.topic) {
                Some((_, ps)) => ps.push(tp.partition),
                None => topics.push((tp.topic.to_string(), vec![tp.partition])),
            }
        }
        let deadline = Instant::now() + self.client.config().request_timeout();
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        loop {
            let response = self
                .coordinator_call("AddPartitionsToTxn", |p| AddPartitionsToTxnRequest {
                    transactional_id: p.transactional_id.clone(),
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    topics: topics.clone(),
                })
                .await?;
            let mut retry = None;
            for (topic, partition, code) in response.results {
                match ApiError::new(code) {
                    None => {
                        self.in_txn.insert(TopicPartition { topic: Arc::from(topic), partition });
                    }
                    Some(e) => {
                        let err = self.coordinator_error(e, "AddPartitionsToTxn");
                        if !err.is_retriable() {
                            return Err(err.with_topic(topic).with_partition(partition));
                        }
                        retry = Some(err);
                    }
                }
            }
            let missing = new.iter().any(|tp| !self.in_txn.contains(tp));
            match retry {
                None if !missing => return Ok(()),
                None => {
                    return Err(Error::retriable(format!(
                        "AddPartitionsToTxn for {}: broker did not answer for every partition",
                        self.transactional_id
                    )))
                }
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    async fn partition_of(&mut self, r: &ProducerRecord) -> Result<TopicPartition> {
        let meta = self.client.ensure_topic(&r.topic).await?;
        let count = meta.partition_count();
        let partition = match (r.partition, &r.key) {
            (Some(p), _) if p < 0 || p >= count => {
                return Err(Error::rejected(format!(
                    "partition {p} does not exist (topic {} has {count})",
                    meta.name
                ))
                .with_topic(&*meta.name))
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => *self
                .sticky
                .entry(Arc::clone(&meta.name))
                .or_insert_with(|| fastrand::i32(0..count.max(1))),
        };
        Ok(TopicPartition { topic: Arc::clone(&meta.name), partition })
    }

    /// Sends every chunk, one in flight per partition (so sequence numbers arrive in order), one
    /// request per leader broker per round, until all have an answer.
    async fn produce_all(
        &mut self,
        mut queues: HashMap<TopicPartition, VecDeque<Chunk>>,
        results: &mut [Option<Result<RecordMetadata>>],
    ) -> Result<()> {
        let deadline =
            Instant::now() + Duration::from_millis(self.client.config().delivery_timeout_ms);
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        // Chunks that were sent and may have been written (transport error): their retry may
        // be answered DUPLICATE_SEQUENCE_NUMBER.
        let mut maybe_written: HashSet<TopicPartition> = HashSet::new();
        while queues.values().any(|q| !q.is_empty()) {
            let mut per_node: HashMap<i32, Vec<Chunk>> = HashMap::new();
            for q in queues.values_mut() {
                if let Some(chunk) = q.pop_front() {
                    let leader = self.client.leader_for(&chunk.tp.topic, chunk.tp.partition).await;
                    match leader {
                        Ok(l) => per_node.entry(l).or_default().push(chunk),
                        Err(e) if e.is_retriable() && Instant::now() < deadline => {
                            q.push_front(chunk);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            let sends = per_node.into_iter().map(|(node, chunks)| {
                let request = self.produce_request(&chunks);
                let client = self.client.clone();
                async move {
                    let response = match request {
                        Ok(req) => client.request_node(node, Lane::Produce, req).await,
                        Err(e) => Err(e),
                    };
                    (chunks, response)
                }
            });
            let answers = futures::future::join_all(sends).await;
            let mut retry_soon = false;
            for (chunks, response) in answers {
                let response = match response {
                    Ok(r) => r,
                    Err(e) if e.is_retriable() && Instant::now() < deadline => {
                        warn!(transactional_id = %self.transactional_id, error = %e.report(), "produce failed; retrying");
                        for c in chunks.into_iter().rev() {
                            maybe_written.insert(c.tp.clone());
                            queues.entry(c.tp.clone()).or_default().push_front(c);
                        }
                        retry_soon = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for chunk in chunks {
                    let answer = response
                        .responses
                        .iter()
                        .filter(|t| *t.name.0 == *chunk.tp.topic)
                        .flat_map(|t| t.partition_responses.iter())
                        .find(|p| p.index.0 == chunk.tp.partition)
                        .map(|p| (p.error, p.base_offset.0));
                    let tp = chunk.tp.clone();
                    match answer {
                        Some((None, base)) => {
                            let n = i32::try_from(chunk.records.len()).unwrap_or(i32::MAX);
                            *self.sequences.entry(tp.clone()).or_insert(0) += n;
                            for (k, (i, r)) in chunk.records.into_iter().enumerate() {
                                results[i] = Some(Ok(RecordMetadata {
                                    topic: Arc::clone(&tp.topic),
                                    partition: tp.partition,
                                    offset: base + i64::try_from(k).unwrap_or(i64::MAX),
                                    timestamp: Timestamp::from_millis(r.timestamp),
                                }));
                            }
                        }
                        Some((Some(e), _)) if is_fenced_code(e) => {
                            self.fenced = true;
                            return Err(self.fenced_error(&format!("Produce to {tp}: {e:?}")));
                        }
                        Some((Some(e), _))
                            if maybe_written.contains(&tp)
                                && matches!(
                                    e,
                                    ApiError::DuplicateSequenceNumber
                                        | ApiError::OutOfOrderSequenceNumber
                                ) =>
                        {
                            // A retry of a batch the broker may have stored: we cannot know its
                            // offsets. The transaction must be aborted and done again.
                            return Err(Error::retriable(format!(
                                "produce to {tp} in transaction {}: a retried batch was answered \
                                 {e:?}; abort the transaction and retry it",
                                self.transactional_id
                            )));
                        }
                        Some((Some(e), _)) if is_record_error(e) && chunk.records.len() > 1 => {
                            // Find the record at fault: send them one by one.
                            let q = queues.entry(tp.clone()).or_default();
                            for (i, r) in chunk.records.into_iter().rev() {
                                q.push_front(Chunk { tp: tp.clone(), records: vec![(i, r)] });
                            }
                        }
                        Some((Some(e), _)) if is_record_error(e) => {
                            for (i, r) in chunk.records {
                                results[i] = Some(Err(Error::rejected(format!(
                                    "Kafka refused a record of {} bytes for {tp}: {e:?}",
                                    r.size()
                                ))
                                .with_topic(&*tp.topic)
                                .with_partition(tp.partition)));
                            }
                            // Refused records leave the sequence numbers where they were, and
                            // the rest of this partition's records follow them.
                        }
                        Some((Some(e), _)) if is_retriable_code(e) && Instant::now() < deadline => {
                            if invalidates_metadata(e) {
                                self.client.invalidate_topic(&tp.topic);
                            }
                            debug!(%tp, error = ?e, "produce answered a retriable error; retrying");
                            queues.entry(tp.clone()).or_default().push_front(chunk);
                            retry_soon = true;
                        }
                        Some((Some(e), _)) => {
                            return Err(api_error(
                                e,
                                format!("produce to {tp} in transaction {}", self.transactional_id),
                            )
                            .with_topic(&*tp.topic)
                            .with_partition(tp.partition))
                        }
                        None if Instant::now() < deadline => {
                            queues.entry(tp.clone()).or_default().push_front(chunk);
                            retry_soon = true;
                        }
                        None => {
                            return Err(Error::retriable(format!(
                                "produce: broker sent no answer for {tp}"
                            )))
                        }
                    }
                }
            }
            if retry_soon {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Ok(())
    }

    /// A transactional Produce request with one batch per chunk.
    fn produce_request(&self, chunks: &[Chunk]) -> Result<ProduceRequest> {
        let compression = self.client.config().compression;
        let mut topics: Vec<ProduceRequestTopicData> = Vec::new();
        for c in chunks {
            let records: Vec<PendingRecord> = c.records.iter().map(|(_, r)| r.clone()).collect();
            let mut batch = build_batch(&records, compression);
            batch.producer_id = self.producer_id;
            batch.producer_epoch = self.epoch;
            batch.base_sequence = self.sequences.get(&c.tp).copied().unwrap_or(0);
            batch.is_transactional = true;
            let data = ProduceRequestPartitionData {
                index: Int32(c.tp.partition),
                records: Records(vec![batch]),
            };
            match topics.iter_mut().find(|t| *t.name.0 == *c.tp.topic) {
                Some(t) => t.partition_data.push(data),
                None => topics.push(ProduceRequestTopicData {
                    name: String_(c.tp.topic.to_string()),
                    partition_data: vec![data],
                }),
            }
        }
        Ok(ProduceRequest {
            transactional_id: NullableString(Some(self.transactional_id.clone())),
            acks: Int16(-1),
            timeout_ms: Int32(self.client.config().request_timeout_field()),
            topic_data: topics,
        })
    }
}

/// A coordinator response's error code.
trait HasErrorCode {
    /// The top-level error code, `None` when the response has none (per-partition codes).
    fn error_code(&self) -> Option<i16>;
}

impl HasErrorCode for codec::InitProducerIdResponse {
    fn error_code(&self) -> Option<i16> {
        (self.error_code != 0).then_some(self.error_code)
    }
}

impl HasErrorCode for codec::EndTxnResponse {
    fn error_code(&self) -> Option<i16> {
        (self.error_code != 0).then_some(self.error_code)
    }
}

impl HasErrorCode for codec::AddPartitionsToTxnResponse {
    fn error_code(&self) -> Option<i16> {
        None
    }
}
