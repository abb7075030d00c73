//! The exactly-once source driver (issue 17): every batch of polled records is written in one
//! Kafka transaction together with the records of their source offsets in the offsets topic, and
//! the task hears of the records (`commit_records`, where the MQTT source sends PUBREC or
//! PUBCOMP) only after the commit.
//!
//! ```text
//!  TransactionalProducer::init("{connector}-{task}")   fences an older instance, aborts its txn
//!  offsets.load (read_committed)  ─► task.start
//!  loop: poll until transaction_max_records or transaction_interval_ms
//!        ─► send(records + offset records) ─► commit ─► KafkaOffsetStore::committed
//!        ─► task.commit_records ─► task.commit
//! ```
//!
//! A record Kafka rejects aborts the transaction; it goes to the error policy and the rest of
//! the batch is written again in a new transaction. Any other failure (fenced, a commit whose
//! outcome is unknown, Kafka unreachable past the client's timeouts) fails the task: what is in
//! Kafka is then exactly what the offsets say, and the restarted task resumes from there.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::crash_point;
use crate::error_policy::{ErrorHandler, FailedRecord, Handled, Stage};
use crate::kafka::{KafkaClient, ProducerRecord, TransactionalProducer};
use crate::offset::{KafkaOffsetStore, OffsetMap, OffsetStore};
use crate::record::{RecordMetadata, SourceRecord};
use crate::runtime::stats::TaskCounters;
use crate::runtime::task::PauseSwitch;
use crate::source::SourceTask;
use crate::{Error, ErrorKind, Result};

use super::config::SourceRuntimeConfig;
use super::driver::{poll_retry_at, prepare};
use crate::runtime::pipeline::TopicCache;

/// Pause before polling again after `poll` returned nothing.
const IDLE_POLL_PAUSE: Duration = Duration::from_millis(10);

/// How long the coordinator lets a transaction of ours stay open before aborting it (a crashed
/// task's open transaction is aborted sooner, by the restarted task's init).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The transactional id of task `task_id` of connector `name`: stable across restarts and
/// workers, so that a new instance fences the old one.
pub(crate) fn transactional_id(name: &str, task_id: usize) -> String {
    format!("{name}-{task_id}")
}

/// What becomes of one record of a batch.
enum Item {
    /// Goes to Kafka in the transaction.
    Write(ProducerRecord),
    /// Not written: offset-only, or dropped by a transform.
    Skip { dropped: bool },
    /// Failed at `Stage`: the error policy decides, before the commit.
    Failed(Stage, Error),
}

/// The exactly-once loop of one task; returns on shutdown (after committing the open batch) or
/// on a fatal error.
pub(super) struct TransactionalDriver<'a> {
    pub(super) name: &'a Arc<str>,
    pub(super) config: &'a SourceRuntimeConfig,
    pub(super) stats: &'a TaskCounters,
    pub(super) handler: &'a ErrorHandler,
    pub(super) store: &'a KafkaOffsetStore,
    pub(super) producer: TransactionalProducer,
}

/// Starts the producer (fencing any older instance) before anything is read.
pub(super) async fn init_producer(
    client: KafkaClient,
    offsets: &dyn OffsetStore,
    name: &str,
    task_id: usize,
    config: &SourceRuntimeConfig,
) -> Result<TransactionalProducer> {
    if offsets.as_kafka().is_none() {
        return Err(Error::config(
            "offsets.store",
            "exactly_once needs the Kafka offset store (store = \"kafka\"): the source offsets are written in the same transaction as the records",
        ));
    }
    let id = transactional_id(name, task_id);
    let _ = config;
    let timeout = TRANSACTION_TIMEOUT;
    let producer = TransactionalProducer::init(client, id.clone(), timeout).await?;
    info!(connector = name, task = task_id, transactional_id = %id, producer_id = producer.producer_id(), epoch = producer.epoch(), "transactional producer ready");
    crash_point("source.after_init");
    Ok(producer)
}

impl TransactionalDriver<'_> {
    pub(super) async fn run(
        mut self,
        task: &mut dyn SourceTask,
        pause: &mut PauseSwitch,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let max =
            self.config.transaction_max_records.clamp(1, self.config.max_in_flight_records.max(1));
        let interval = Duration::from_millis(self.config.transaction_interval_ms.max(1));
        let mut backoff = Backoff::new(self.config.pipeline.task_backoff());
        let mut failing_since: Option<Instant> = None;
        // Polled records past the size of the transaction they were polled for: the next one's.
        let mut carry: std::collections::VecDeque<SourceRecord> = Default::default();
        loop {
            let take = carry.len().min(max);
            let mut batch: Vec<SourceRecord> = carry.drain(..take).collect();
            let mut deadline: Option<Instant> =
                (!batch.is_empty()).then(|| Instant::now() + interval);
            let mut stopping = false;
            let mut retry_at: Option<Instant> = None;
            while batch.len() < max && carry.is_empty() {
                let paused = pause.is_paused();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => { stopping = true; break }
                    () = sleep_until(deadline) => break,
                    () = pause.changed() => {
                        info!(connector = %self.name, paused = pause.is_paused(), "source task pause switched");
                    }
                    () = sleep_until(retry_at) => retry_at = None,
                    polled = task.poll(), if !paused && retry_at.is_none() => match polled {
                        Ok(records) if records.is_empty() => {
                            backoff.reset();
                            failing_since = None;
                            retry_at = Some(Instant::now() + IDLE_POLL_PAUSE);
                        }
                        Ok(records) => {
                            backoff.reset();
                            failing_since = None;
                            self.stats.add_in(records.len() as u64);
                            deadline.get_or_insert_with(|| Instant::now() + interval);
                            let room = max - batch.len();
                            let mut records = records.into_iter();
                            batch.extend(records.by_ref().take(room));
                            carry.extend(records);
                        }
                        Err(e) => {
                            // Not retriable: what was polled before is not committed, and the
                            // source delivers it again after the restart.
                            let (name, config, stats) = (self.name, self.config, self.stats);
                            retry_at = Some(poll_retry_at(
                                name,
                                config,
                                stats,
                                &mut failing_since,
                                &mut backoff,
                                e,
                            )?);
                        }
                    },
                }
            }
            if !batch.is_empty() {
                if stopping {
                    let timeout = Duration::from_millis(self.config.shutdown_timeout_ms);
                    match tokio::time::timeout(timeout, self.transact(task, batch)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            warn!(connector = %self.name, ?timeout, "shutdown timeout: the last transaction did not commit; its records are delivered again after the restart")
                        }
                    }
                } else {
                    self.transact(task, batch).await?;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Writes one batch and its offsets in a transaction (again without the records Kafka
    /// rejected, which go to the error policy), commits it, then tells the task.
    async fn transact(
        &mut self,
        task: &mut dyn SourceTask,
        mut batch: Vec<SourceRecord>,
    ) -> Result<()> {
        let mut items: Vec<Item> = Vec::with_capacity(batch.len());
        let mut offsets = OffsetMap::new();
        let mut topics = TopicCache::default();
        for record in &mut batch {
            let item = if record.is_offset_only() {
                Item::Skip { dropped: false }
            } else {
                match prepare(&self.config.pipeline, record, &mut topics) {
                    Ok(Some(out)) => Item::Write(out),
                    Ok(None) => Item::Skip { dropped: true },
                    Err((stage, why)) => Item::Failed(stage, Error::rejected(why)),
                }
            };
            items.push(item);
            // Every record of the batch is final once the transaction commits (the failed ones
            // through the error policy), so the batch's last offset per partition is the truth.
            if let Some(offset) = &record.source_offset {
                offsets.insert(record.source_partition.clone(), offset.clone());
            }
        }
        let offset_records = if offsets.is_empty() {
            Vec::new()
        } else {
            self.store.offset_records(self.name, &offsets)
        };
        let metadata = loop {
            let writes: Vec<usize> =
                (0..items.len()).filter(|i| matches!(items[*i], Item::Write(_))).collect();
            if writes.is_empty() && offset_records.is_empty() {
                break Vec::new();
            }
            let mut records: Vec<ProducerRecord> = writes
                .iter()
                .filter_map(|i| match &items[*i] {
                    Item::Write(r) => Some(r.clone()),
                    _ => None,
                })
                .collect();
            records.extend(offset_records.iter().cloned());
            crash_point("source.before_send");
            let results = self.producer.send(records).await?;
            let mut rejected = false;
            let mut metadata: Vec<(usize, RecordMetadata)> = Vec::with_capacity(writes.len());
            for (pos, result) in results.into_iter().enumerate() {
                match (writes.get(pos), result) {
                    (Some(i), Ok(m)) => metadata.push((*i, m)),
                    (Some(i), Err(e)) if e.kind() == ErrorKind::RecordRejected => {
                        items[*i] = Item::Failed(Stage::KafkaProduce, e);
                        rejected = true;
                    }
                    (_, Ok(_)) => {}
                    (_, Err(e)) => {
                        // Not about one record (or about the offsets): nothing of this
                        // transaction may count.
                        let _ = self.producer.abort().await;
                        return Err(e);
                    }
                }
            }
            if rejected {
                // Only an abort can follow a failed record; the rest is written again.
                self.producer.abort().await?;
                debug!(connector = %self.name, "a record was rejected: transaction aborted, writing the rest again");
                continue;
            }
            break metadata;
        };
        // The error policy deals with failed records before the commit: with tolerance "none"
        // the task fails and nothing of the batch counts.
        for (i, item) in items.iter().enumerate() {
            let Item::Failed(stage, e) = item else { continue };
            let record = &batch[i];
            if e.kind() != ErrorKind::RecordRejected {
                let _ = self.producer.abort().await;
                self.stats.add_error();
                return Err(e.clone().with_topic(record.topic.clone()));
            }
            let handled = self
                .handler
                .handle(FailedRecord {
                    stage: *stage,
                    error: e,
                    topic: &record.topic,
                    partition: record.partition,
                    offset: None,
                    key: record.key.as_ref(),
                    value: record.value.as_ref(),
                    headers: &record.headers,
                })
                .await;
            match handled {
                Ok(Handled::DeadLettered) => self.stats.add_dead_lettered(1),
                Ok(Handled::Skipped) => self.stats.add_skipped(1),
                Err(e) => {
                    let _ = self.producer.abort().await;
                    self.stats.add_abandoned(1);
                    return Err(e);
                }
            }
        }
        crash_point("source.before_commit");
        self.commit().await?;
        crash_point("source.after_commit");
        self.stats.add_offset_commits(1);
        self.store.committed(self.name, &offsets).await;
        let mut by_index: Vec<Option<RecordMetadata>> = vec![None; batch.len()];
        let written = metadata.len() as u64;
        for (i, m) in metadata {
            by_index[i] = Some(m);
        }
        let dropped = items.iter().filter(|i| matches!(i, Item::Skip { dropped: true })).count();
        self.stats.add_out(written);
        self.stats.add_written(written);
        self.stats.add_dropped(dropped as u64);
        self.stats.add_committed(batch.len() as u64);
        let ready: Vec<(SourceRecord, Option<RecordMetadata>)> =
            batch.into_iter().zip(by_index).collect();
        match task.commit_records(ready).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Fatal => return Err(e),
            Err(e) => {
                warn!(connector = %self.name, error = %e.report(), "commit_record failed; continuing")
            }
        }
        if let Err(e) = task.commit().await {
            warn!(connector = %self.name, error = %e.report(), "source task commit failed");
        }
        Ok(())
    }
}

impl TransactionalDriver<'_> {
    /// EndTxn(commit), again while the coordinator does not answer in time (a repeated commit
    /// of a committed transaction succeeds), within the client's request timeout a few times.
    async fn commit(&mut self) -> Result<()> {
        let mut attempts = 0;
        loop {
            match self.producer.commit().await {
                Err(e) if e.is_retriable() && attempts < COMMIT_ATTEMPTS => {
                    attempts += 1;
                    warn!(connector = %self.name, error = %e.report(), attempt = attempts, "transaction commit not answered; committing again");
                }
                r => return r,
            }
        }
    }
}

/// How often an unanswered commit is tried again before the task fails.
const COMMIT_ATTEMPTS: u32 = 5;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
