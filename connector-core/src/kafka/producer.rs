//! [`Producer`]: per-partition batching and delivery with acks=all.
//!
//! ```text
//!  send(record, tag) ──► partitioner ──► open batch per partition ──► (full | linger | flush)
//!                                                                      │
//!        one ProduceRequest per leader broker, one batch per partition ◄┘
//!                                                                      │
//!  Delivery { tag, Ok(offset) | Err } ◄── broker ack (acks = all) ◄────┘
//! ```
//!
//! Each partition has at most one request in flight, so a retried batch can never overtake a later
//! one: per-partition order is the order of `send`. Retriable failures (leader moved, broker down,
//! timeout) retry the same batch after a bounded backoff, forever unless `delivery_timeout_ms` is
//! set; a batch the broker finds too large is split in half and retried; a record that is too large
//! on its own, or any other non-retriable error, is reported as that record's delivery error.
//! Deliveries are reported in batches on a bounded channel.
//!
//! Per-topic state is bounded: a [`TopicBudget`] (shared by one connector's producers) caps the
//! distinct topics written to at once, rejecting a record for one topic more, and a topic left
//! idle for the budget's idle time is evicted with its partitions and its cached metadata.
//!
//! This file holds the handle and the actor's state and loop; the actor's two halves live in
//! `producer/accumulate.rs` (records in: topic metadata, partitioning, batching, idle eviction)
//! and `producer/send.rs` (batches out: Produce requests, their answers, retries and splits).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kafka::wire::messages::ProduceResponse;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::kafka::client::{KafkaClient, TopicMetadata};
use crate::kafka::records::{PendingRecord, ProducerRecord};
use crate::record::{RecordMetadata, TopicPartition};
use crate::{Error, Result};

mod accumulate;
mod send;
mod topic_budget;

/// The producer's maps looked up once or more per record: foldhash, randomly seeded.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use topic_budget::{TopicBudget, DEFAULT_TOPIC_IDLE};

/// The outcome of one record handed to [`Producer::send`].
#[derive(Debug)]
pub struct Delivery<T> {
    /// The tag given to `send`.
    pub tag: T,
    /// Where Kafka stored the record, or why it could not.
    pub result: Result<RecordMetadata>,
}

/// Sizes of a producer's per-topic and per-partition state, for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// Topics with state (metadata, records waiting for it).
    pub topics: usize,
    /// Partitions with state (batches, backoff).
    pub partitions: usize,
}

#[derive(Debug, Default)]
struct StateGauge {
    topics: AtomicUsize,
    partitions: AtomicUsize,
}

enum Command<T> {
    Send(Vec<(ProducerRecord, T)>),
    Flush,
}

/// A batching Kafka producer. Records are tagged by the caller; each tag comes back exactly once in
/// a [`Delivery`] on the receiver returned by [`Producer::new`].
///
/// Dropping the producer stops it; records not yet delivered then get no delivery.
///
/// ```no_run
/// use connector_core::kafka::{KafkaClient, KafkaConfig, Producer, ProducerRecord};
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let (producer, mut deliveries) = Producer::<u64>::new(client, 1000);
/// producer.send(ProducerRecord::new("telemetry", "21.5").with_key("sensor-1"), 1).await?;
/// producer.flush().await?;
/// while let Some(batch) = deliveries.recv().await {
///     for d in batch {
///         println!("record {} -> {:?}", d.tag, d.result.map(|m| m.offset));
///     }
/// #   break;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Producer<T> {
    commands: mpsc::Sender<Command<T>>,
    task: JoinHandle<()>,
    gauge: Arc<StateGauge>,
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Send + 'static> Producer<T> {
    /// Starts a producer on `client`, batching by the client's `linger_ms`, `batch_max_records`
    /// and `batch_max_bytes`. `max_pending` is the most records the caller will have sent and not
    /// yet seen delivered; it sizes the delivery channel so the producer never waits on it.
    pub fn new(
        client: KafkaClient,
        max_pending: usize,
    ) -> (Self, mpsc::Receiver<Vec<Delivery<T>>>) {
        Self::with_topic_budget(client, max_pending, TopicBudget::unlimited())
    }

    /// Like [`Producer::new`], writing to at most `budget`'s number of topics at once: a record
    /// for one topic more gets a [`RecordRejected`](crate::ErrorKind::RecordRejected) delivery
    /// naming `max_kafka_topics`. Topics idle for the budget's idle time are evicted.
    pub fn with_topic_budget(
        client: KafkaClient,
        max_pending: usize,
        budget: TopicBudget,
    ) -> (Self, mpsc::Receiver<Vec<Delivery<T>>>) {
        let (commands, rx) = mpsc::channel(64);
        let (acks_tx, acks_rx) = mpsc::channel(max_pending.max(1));
        let gauge = Arc::new(StateGauge::default());
        let actor = Actor::new(client, rx, acks_tx, budget, Arc::clone(&gauge));
        let task = tokio::spawn(actor.run());
        (Self { commands, task, gauge }, acks_rx)
    }

    /// How much per-topic and per-partition state the producer holds now.
    pub fn state(&self) -> ProducerState {
        ProducerState {
            topics: self.gauge.topics.load(Ordering::Relaxed),
            partitions: self.gauge.partitions.load(Ordering::Relaxed),
        }
    }

    /// Queues one record.
    ///
    /// # Errors
    /// Fatal when the producer has stopped.
    ///
    /// # Cancellation
    /// Cancel-safe: if cancelled, the record was not queued.
    pub async fn send(&self, record: ProducerRecord, tag: T) -> Result<()> {
        self.send_all(vec![(record, tag)]).await
    }

    /// Queues several records in order, in one message to the producer task.
    ///
    /// # Errors
    /// Fatal when the producer has stopped.
    pub async fn send_all(&self, records: Vec<(ProducerRecord, T)>) -> Result<()> {
        self.commands
            .send(Command::Send(records))
            .await
            .map_err(|_| Error::fatal("Kafka producer task has stopped"))
    }

    /// Sends every open batch now instead of waiting for linger.
    ///
    /// # Errors
    /// Fatal when the producer has stopped.
    pub async fn flush(&self) -> Result<()> {
        self.commands
            .send(Command::Flush)
            .await
            .map_err(|_| Error::fatal("Kafka producer task has stopped"))
    }
}
struct Batch<T> {
    records: Vec<PendingRecord>,
    tags: Vec<T>,
    bytes: usize,
    created: Instant,
    first_sent: Option<Instant>,
    flush: bool,
}

impl<T> Batch<T> {
    /// An empty batch with room for `n` records (the partition's last batch size, so that a
    /// steady stream fills it without growing it step by step).
    fn with_capacity(n: usize) -> Self {
        Self {
            records: Vec::with_capacity(n),
            tags: Vec::with_capacity(n),
            bytes: 0,
            created: Instant::now(),
            first_sent: None,
            flush: false,
        }
    }

    /// Splits in two halves (for a batch the broker found too large).
    fn split(mut self) -> (Self, Self) {
        let half = self.records.len() / 2;
        let records = self.records.split_off(half);
        let tags = self.tags.split_off(half);
        let bytes = records.iter().map(PendingRecord::size).sum();
        let second = Batch {
            records,
            tags,
            bytes,
            created: self.created,
            first_sent: self.first_sent,
            flush: true,
        };
        self.bytes -= second.bytes;
        self.flush = true;
        (self, second)
    }
}

struct PartitionState<T> {
    open: Option<Batch<T>>,
    queue: VecDeque<Batch<T>>,
    in_flight: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Records of the last batch closed, the capacity of the next.
    last_len: usize,
}

struct TopicState<T> {
    meta: Option<Arc<TopicMetadata>>,
    fetched: Instant,
    /// When a record for it was last sent.
    last_used: Instant,
    waiting: Vec<(ProducerRecord, T)>,
    /// A flush was asked for while records were waiting for metadata: send them at once.
    flush_waiting: bool,
    resolving: bool,
    sticky: Option<i32>,
}

enum Event<T> {
    Metadata {
        topic: Arc<str>,
        result: Result<Arc<TopicMetadata>>,
    },
    Produced {
        node: i32,
        batches: Vec<(TopicPartition, Batch<T>)>,
        result: Result<ProduceResponse>,
    },
}

struct Actor<T> {
    client: KafkaClient,
    linger: Duration,
    max_records: usize,
    max_bytes: usize,
    delivery_timeout: Option<Duration>,
    commands: mpsc::Receiver<Command<T>>,
    acks: mpsc::Sender<Vec<Delivery<T>>>,
    topics: FastMap<Arc<str>, TopicState<T>>,
    partitions: FastMap<TopicPartition, PartitionState<T>>,
    tasks: FuturesUnordered<BoxFuture<'static, Event<T>>>,
    budget: TopicBudget,
    gauge: Arc<StateGauge>,
}

impl<T: Send + 'static> Actor<T> {
    fn new(
        client: KafkaClient,
        commands: mpsc::Receiver<Command<T>>,
        acks: mpsc::Sender<Vec<Delivery<T>>>,
        budget: TopicBudget,
        gauge: Arc<StateGauge>,
    ) -> Self {
        let config = client.config();
        Self {
            linger: config.linger(),
            max_records: config.batch_max_records,
            max_bytes: config.batch_max_bytes,
            delivery_timeout: (config.delivery_timeout_ms > 0)
                .then(|| Duration::from_millis(config.delivery_timeout_ms)),
            client,
            commands,
            acks,
            topics: FastMap::default(),
            partitions: FastMap::default(),
            tasks: FuturesUnordered::new(),
            budget,
            gauge,
        }
    }

    async fn run(mut self) {
        let idle = self.budget.idle();
        let mut sweep = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                Some(event) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.on_event(event).await;
                }
                command = self.commands.recv() => match command {
                    Some(Command::Send(records)) => self.on_send(records).await,
                    Some(Command::Flush) => self.on_flush(),
                    None => return,
                },
                () = sleep_until(deadline), if deadline.is_some() => {}
                _ = sweep.tick() => self.evict_idle(idle),
            }
            self.dispatch();
            self.gauge.topics.store(self.topics.len(), Ordering::Relaxed);
            self.gauge.partitions.store(self.partitions.len(), Ordering::Relaxed);
        }
    }

    /// When the next open batch's linger expires or a backed-off partition may retry.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for ps in self.partitions.values() {
            if ps.in_flight {
                continue;
            }
            let candidate = if let Some(at) = ps.retry_at {
                Some(at)
            } else if !ps.queue.is_empty() {
                Some(Instant::now())
            } else {
                ps.open.as_ref().map(|b| b.created + self.linger)
            };
            if let Some(c) = candidate {
                next = Some(next.map_or(c, |n| n.min(c)));
            }
        }
        next
    }

    async fn on_event(&mut self, event: Event<T>) {
        match event {
            Event::Metadata { topic, result } => self.on_metadata(topic, result).await,
            Event::Produced { node, batches, result } => {
                self.on_produced(node, batches, result).await
            }
        }
    }

    async fn deliver(&mut self, deliveries: Vec<Delivery<T>>) {
        if deliveries.is_empty() {
            return;
        }
        // The receiver may be gone (caller shutting down); nothing else to do then.
        let _ = self.acks.send(deliveries).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}
