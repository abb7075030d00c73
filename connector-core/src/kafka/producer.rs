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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use rskafka::protocol::error::Error as ApiError;
use rskafka::protocol::messages::ProduceResponse;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::kafka::client::{KafkaClient, Lane, TopicMetadata};
use crate::kafka::errors::{api_error, invalidates_metadata, is_retriable_code};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::records::{
    encode_batch, EncodedBatch, EncodedProduceRequest, PendingRecord, ProducerRecord,
};
use crate::record::{RecordMetadata, Timestamp, TopicPartition};
use crate::{Error, Result};

/// The outcome of one record handed to [`Producer::send`].
#[derive(Debug)]
pub struct Delivery<T> {
    /// The tag given to `send`.
    pub tag: T,
    /// Where Kafka stored the record, or why it could not.
    pub result: Result<RecordMetadata>,
}

/// How long a topic may go without a record before its state is evicted, by default.
pub const DEFAULT_TOPIC_IDLE: Duration = Duration::from_secs(300);

/// A limit on the distinct Kafka topics written to at once, shared by the producers of one
/// connector (clones share the count). A topic counts from its first record until it has been
/// idle (no record sent to it) for the budget's idle time; then it is forgotten, and a new topic
/// may take its place.
///
/// ```
/// use std::time::Duration;
/// use connector_core::kafka::TopicBudget;
///
/// let budget = TopicBudget::new(2, Duration::from_secs(60));
/// assert!(budget.admit("a") && budget.admit("b") && budget.admit("a"));
/// assert!(!budget.admit("c"), "a third topic is over the limit");
/// assert_eq!(budget.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct TopicBudget {
    max_topics: usize,
    idle: Duration,
    state: Arc<Mutex<BudgetState>>,
}

/// Budgets are equal when they share one count.
impl PartialEq for TopicBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

impl Eq for TopicBudget {}

#[derive(Debug)]
struct BudgetState {
    last_used: HashMap<Arc<str>, Instant>,
    last_sweep: Instant,
}

impl TopicBudget {
    /// At most `max_topics` topics at once; a topic is forgotten after `idle` without a record.
    pub fn new(max_topics: usize, idle: Duration) -> Self {
        Self {
            max_topics,
            idle,
            state: Arc::new(Mutex::new(BudgetState {
                last_used: HashMap::new(),
                last_sweep: Instant::now(),
            })),
        }
    }

    /// No limit on the number of topics (idle topics are still evicted after
    /// [`DEFAULT_TOPIC_IDLE`]).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, DEFAULT_TOPIC_IDLE)
    }

    /// The limit.
    pub fn max_topics(&self) -> usize {
        self.max_topics
    }

    /// How long a topic may be idle before it is forgotten.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Topics counted now.
    pub fn len(&self) -> usize {
        self.state.lock().last_used.len()
    }

    /// True when no topic is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes a record for `topic`: true when it may be written (the topic is counted already, or
    /// there is room for it), false when it would be one topic over the limit.
    pub fn admit(&self, topic: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(at) = state.last_used.get_mut(topic) {
            *at = now;
            return true;
        }
        // Full: forget idle topics, at most once a second so that a flood of rejected records
        // does not scan the whole map for each one.
        if state.last_used.len() >= self.max_topics
            && now.duration_since(state.last_sweep) >= Duration::from_secs(1).min(self.idle)
        {
            let idle = self.idle;
            state.last_used.retain(|_, at| now.duration_since(*at) < idle);
            state.last_sweep = now;
        }
        if state.last_used.len() >= self.max_topics {
            return false;
        }
        state.last_used.insert(Arc::from(topic), now);
        true
    }
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

impl KafkaClient {
    /// Writes `records` and waits until Kafka acknowledged all of them (acks=all). For low-rate
    /// writes (offsets, dead letters, tests); streaming writers use a [`Producer`].
    ///
    /// # Errors
    /// The first delivery error, if any record could not be written.
    pub async fn produce(&self, records: Vec<ProducerRecord>) -> Result<Vec<RecordMetadata>> {
        let n = records.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (producer, mut deliveries) = Producer::<usize>::new(self.clone(), n);
        producer.send_all(records.into_iter().enumerate().map(|(i, r)| (r, i)).collect()).await?;
        producer.flush().await?;
        let mut out: Vec<Option<RecordMetadata>> = vec![None; n];
        let mut seen = 0;
        while seen < n {
            let Some(batch) = deliveries.recv().await else {
                return Err(Error::fatal(
                    "Kafka producer stopped before all records were delivered",
                ));
            };
            for d in batch {
                seen += 1;
                match d.result {
                    Ok(m) => {
                        if let Some(slot) = out.get_mut(d.tag) {
                            *slot = Some(m);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
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
    fn new() -> Self {
        Self {
            records: Vec::new(),
            tags: Vec::new(),
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
    topics: HashMap<Arc<str>, TopicState<T>>,
    partitions: HashMap<TopicPartition, PartitionState<T>>,
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
            topics: HashMap::new(),
            partitions: HashMap::new(),
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

    /// Drops the state of topics that got no record for `idle` and have nothing waiting, queued
    /// or in flight: their partitions, and their metadata in the client's cache.
    fn evict_idle(&mut self, idle: Duration) {
        let busy: HashSet<&Arc<str>> = self
            .partitions
            .iter()
            .filter(|(_, ps)| ps.in_flight || ps.open.is_some() || !ps.queue.is_empty())
            .map(|(tp, _)| &tp.topic)
            .collect();
        let evict: Vec<Arc<str>> = self
            .topics
            .iter()
            .filter(|(name, t)| {
                t.last_used.elapsed() >= idle
                    && t.waiting.is_empty()
                    && !t.resolving
                    && !busy.contains(name)
            })
            .map(|(name, _)| Arc::clone(name))
            .collect();
        if evict.is_empty() {
            return;
        }
        for topic in &evict {
            self.topics.remove(topic);
            self.client.forget_topic(topic);
        }
        let topics = &self.topics;
        self.partitions.retain(|tp, _| topics.contains_key(&tp.topic));
        debug!(evicted = evict.len(), topics = self.topics.len(), "evicted idle Kafka topics");
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

    async fn on_send(&mut self, records: Vec<(ProducerRecord, T)>) {
        let now = Timestamp::now();
        let mut failed = Vec::new();
        for (mut record, tag) in records {
            record.timestamp.get_or_insert(now);
            let topic = Arc::clone(&record.topic);
            if !self.budget.admit(&topic) {
                let max = self.budget.max_topics();
                failed.push(Delivery {
                    tag,
                    result: Err(Error::rejected(format!(
                        "Kafka topic {topic:?} would be one more than the {max} distinct topics this connector may write to at once (max_kafka_topics = {max}; a topic stops counting after kafka_topic_idle_ms = {} without records)",
                        self.budget.idle().as_millis()
                    ))
                    .with_topic(&*topic)),
                });
                continue;
            }
            let max_age = Duration::from_millis(self.client.config().metadata_max_age_ms);
            let state = self.topics.entry(Arc::clone(&topic)).or_insert_with(|| TopicState {
                meta: None,
                fetched: Instant::now(),
                last_used: Instant::now(),
                waiting: Vec::new(),
                flush_waiting: false,
                resolving: false,
                sticky: None,
            });
            state.last_used = Instant::now();
            let Some(meta) = state.meta.clone() else {
                state.waiting.push((record, tag));
                if !state.resolving {
                    state.resolving = true;
                    self.resolve(topic, Duration::ZERO, false);
                }
                continue;
            };
            if state.fetched.elapsed() > max_age && !state.resolving {
                state.resolving = true;
                self.resolve(Arc::clone(&topic), Duration::ZERO, true);
            }
            if let Err((tag, e)) = self.append(&meta, record, tag) {
                failed.push(Delivery { tag, result: Err(e) });
            }
        }
        if !failed.is_empty() {
            self.deliver(failed).await;
        }
    }

    /// Puts `record` into its partition's open batch.
    fn append(
        &mut self,
        meta: &TopicMetadata,
        record: ProducerRecord,
        tag: T,
    ) -> std::result::Result<(), (T, Error)> {
        let count = meta.partition_count();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < 0 || p >= count => {
                return Err((
                    tag,
                    Error::rejected(format!(
                        "partition {p} does not exist (topic {} has {count})",
                        meta.name
                    ))
                    .with_topic(&*meta.name),
                ));
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => match self.topics.get_mut(&meta.name) {
                Some(state) => match state.sticky {
                    Some(p) if p < count => p,
                    _ => {
                        let p = fastrand::i32(0..count.max(1));
                        state.sticky = Some(p);
                        p
                    }
                },
                None => 0,
            },
        };
        let tp = TopicPartition { topic: Arc::clone(&meta.name), partition };
        let backoff_config = self.client.config().retry_backoff;
        let ps = self.partitions.entry(tp).or_insert_with(|| PartitionState {
            open: None,
            queue: VecDeque::new(),
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(backoff_config),
        });
        let pending = PendingRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp.unwrap_or_else(Timestamp::now).as_millis(),
        };
        let size = pending.size();
        if let Some(open) = &ps.open {
            if open.records.len() >= self.max_records
                || (!open.records.is_empty() && open.bytes + size > self.max_bytes)
            {
                if let Some(full) = ps.open.take() {
                    ps.queue.push_back(full);
                }
            }
        }
        let open = ps.open.get_or_insert_with(Batch::new);
        open.records.push(pending);
        open.tags.push(tag);
        open.bytes += size;
        Ok(())
    }

    fn on_flush(&mut self) {
        for ps in self.partitions.values_mut() {
            if let Some(open) = &mut ps.open {
                open.flush = true;
            }
        }
        for t in self.topics.values_mut() {
            if !t.waiting.is_empty() {
                t.flush_waiting = true;
            }
        }
    }

    /// Looks up (and creates, if configured) `topic` in the background after `delay`; `fresh`
    /// bypasses the client's metadata cache.
    fn resolve(&self, topic: Arc<str>, delay: Duration, fresh: bool) {
        let client = self.client.clone();
        self.tasks.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fresh {
                client.invalidate_topic(&topic);
            }
            let result = client.ensure_topic(&topic).await;
            Event::Metadata { topic, result }
        }));
    }

    async fn on_event(&mut self, event: Event<T>) {
        match event {
            Event::Metadata { topic, result } => self.on_metadata(topic, result).await,
            Event::Produced { node, batches, result } => {
                self.on_produced(node, batches, result).await
            }
        }
    }

    async fn on_metadata(&mut self, topic: Arc<str>, result: Result<Arc<TopicMetadata>>) {
        let Some(state) = self.topics.get_mut(&topic) else {
            return;
        };
        match result {
            Ok(meta) => {
                state.resolving = false;
                state.fetched = Instant::now();
                if state
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.partition_count() != meta.partition_count())
                {
                    debug!(topic = %topic, partitions = meta.partition_count(), "partition count changed");
                    state.sticky = None;
                }
                state.meta = Some(Arc::clone(&meta));
                let waiting = std::mem::take(&mut state.waiting);
                let flush = std::mem::take(&mut state.flush_waiting);
                let mut failed = Vec::new();
                for (record, tag) in waiting {
                    if let Err((tag, e)) = self.append(&meta, record, tag) {
                        failed.push(Delivery { tag, result: Err(e) });
                    }
                }
                if flush {
                    for (tp, ps) in &mut self.partitions {
                        if tp.topic == topic {
                            if let Some(open) = &mut ps.open {
                                open.flush = true;
                            }
                        }
                    }
                }
                if !failed.is_empty() {
                    self.deliver(failed).await;
                }
            }
            Err(e) if e.is_retriable() => {
                warn!(topic = %topic, error = %e.report(), "Kafka topic metadata unavailable; retrying");
                let delay =
                    Duration::from_millis(self.client.config().retry_backoff.max_ms.min(1000));
                self.resolve(topic, delay, true);
            }
            Err(e) => {
                // The topic cannot be used (invalid name, auto-create off, not authorized):
                // every record waiting for it fails with that reason.
                state.resolving = false;
                let waiting = std::mem::take(&mut state.waiting);
                let e = e.with_topic(&*topic);
                let failed = waiting
                    .into_iter()
                    .map(|(_, tag)| Delivery { tag, result: Err(e.clone()) })
                    .collect();
                self.deliver(failed).await;
                if state_has_no_meta(&self.topics, &topic) {
                    self.topics.remove(&topic);
                }
            }
        }
    }

    /// Sends every batch that is ready, one request per leader broker.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let mut per_node: HashMap<i32, Vec<(TopicPartition, Batch<T>)>> = HashMap::new();
        let mut refresh = Vec::new();
        for (tp, ps) in &mut self.partitions {
            if ps.in_flight || ps.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            ps.retry_at = None;
            if ps.queue.is_empty() {
                let ready = ps.open.as_ref().is_some_and(|b| {
                    b.flush
                        || b.records.len() >= self.max_records
                        || b.bytes >= self.max_bytes
                        || now >= b.created + self.linger
                });
                if ready {
                    if let Some(b) = ps.open.take() {
                        ps.queue.push_back(b);
                        if let Some(t) = self.topics.get_mut(&tp.topic) {
                            if t.sticky == Some(tp.partition) {
                                t.sticky = None;
                            }
                        }
                    }
                }
            }
            if ps.queue.is_empty() {
                continue;
            }
            let leader = self
                .topics
                .get(&tp.topic)
                .and_then(|t| t.meta.as_ref())
                .and_then(|m| m.leader(tp.partition));
            let Some(leader) = leader else {
                refresh.push(Arc::clone(&tp.topic));
                ps.retry_at = Some(now + ps.backoff.next_delay());
                continue;
            };
            if let Some(mut batch) = ps.queue.pop_front() {
                batch.first_sent.get_or_insert(now);
                ps.in_flight = true;
                per_node.entry(leader).or_default().push((tp.clone(), batch));
            }
        }
        for topic in refresh {
            self.refresh_topic(topic);
        }
        for (node, batches) in per_node {
            self.send_request(node, batches);
        }
    }

    fn refresh_topic(&mut self, topic: Arc<str>) {
        if let Some(t) = self.topics.get_mut(&topic) {
            if !t.resolving {
                t.resolving = true;
                self.resolve(topic, Duration::ZERO, true);
            }
        }
    }

    fn send_request(&self, node: i32, batches: Vec<(TopicPartition, Batch<T>)>) {
        let config = self.client.config();
        let mut topics: Vec<(Arc<str>, Vec<EncodedBatch>)> = Vec::new();
        for (tp, batch) in &batches {
            // The batch's bytes plus room for each record's framing (varints, attributes).
            let mut encoded = Vec::with_capacity(64 + batch.bytes + 32 * batch.records.len());
            if let Err(e) = encode_batch(&batch.records, config.compression, &mut encoded) {
                // Not reachable within the batch size limits; fail the request's records rather
                // than send a broken batch.
                self.tasks.push(Box::pin(async move {
                    Event::Produced { node, batches, result: Err(e) }
                }));
                return;
            }
            match topics.iter_mut().find(|(name, _)| *name == tp.topic) {
                Some((_, partitions)) => partitions.push((tp.partition, encoded)),
                None => topics.push((Arc::clone(&tp.topic), vec![(tp.partition, encoded)])),
            }
        }
        let request = EncodedProduceRequest {
            acks: -1,
            timeout_ms: i32::try_from(config.request_timeout_ms).unwrap_or(i32::MAX),
            topics,
        };
        let client = self.client.clone();
        self.tasks.push(Box::pin(async move {
            let result = client.request_node(node, Lane::Produce, request).await;
            Event::Produced { node, batches, result }
        }));
    }

    async fn on_produced(
        &mut self,
        node: i32,
        batches: Vec<(TopicPartition, Batch<T>)>,
        result: Result<ProduceResponse>,
    ) {
        let mut deliveries = Vec::new();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                for (tp, batch) in batches {
                    self.retry_or_fail(tp, batch, e.clone(), &mut deliveries);
                }
                self.deliver(deliveries).await;
                return;
            }
        };
        let mut by_partition = HashMap::new();
        for t in response.responses {
            for p in t.partition_responses {
                by_partition.insert((t.name.0.clone(), p.index.0), p);
            }
        }
        for (tp, batch) in batches {
            let Some(p) = by_partition.remove(&(tp.topic.to_string(), tp.partition)) else {
                let e = Error::retriable(format!("broker {node} sent no answer for {tp}"));
                self.retry_or_fail(tp, batch, e, &mut deliveries);
                continue;
            };
            match p.error {
                None => {
                    let base = p.base_offset.0;
                    let append_time = p.log_append_time_ms.map(|t| t.0).filter(|t| *t >= 0);
                    for (i, (tag, record)) in batch.tags.into_iter().zip(batch.records).enumerate()
                    {
                        deliveries.push(Delivery {
                            tag,
                            result: Ok(RecordMetadata {
                                topic: Arc::clone(&tp.topic),
                                partition: tp.partition,
                                offset: base + i64::try_from(i).unwrap_or(i64::MAX),
                                timestamp: Timestamp::from_millis(
                                    append_time.unwrap_or(record.timestamp),
                                ),
                            }),
                        });
                    }
                    if let Some(ps) = self.partitions.get_mut(&tp) {
                        ps.in_flight = false;
                        ps.backoff.reset();
                    }
                }
                Some(code @ (ApiError::MessageTooLarge | ApiError::RecordListTooLarge))
                    if batch.records.len() > 1 =>
                {
                    debug!(%tp, records = batch.records.len(), ?code, "batch too large; splitting");
                    let (first, second) = batch.split();
                    if let Some(ps) = self.partitions.get_mut(&tp) {
                        ps.queue.push_front(second);
                        ps.queue.push_front(first);
                        ps.in_flight = false;
                    }
                }
                Some(code) => {
                    if invalidates_metadata(code) {
                        self.client.invalidate_topic(&tp.topic);
                        self.refresh_topic(Arc::clone(&tp.topic));
                    }
                    let e = match code {
                        ApiError::MessageTooLarge | ApiError::RecordListTooLarge => Error::rejected(format!(
                            "a record of {} bytes is larger than the broker accepts for {tp} ({code:?}); raise the topic's max.message.bytes or send smaller records",
                            batch.bytes
                        )),
                        _ => api_error(code, format!("produce to {tp}")),
                    }
                    .with_topic(&*tp.topic)
                    .with_partition(tp.partition);
                    if is_retriable_code(code) {
                        self.retry_or_fail(tp, batch, e, &mut deliveries);
                    } else {
                        if let Some(ps) = self.partitions.get_mut(&tp) {
                            ps.in_flight = false;
                        }
                        deliveries.extend(
                            batch
                                .tags
                                .into_iter()
                                .map(|tag| Delivery { tag, result: Err(e.clone()) }),
                        );
                    }
                }
            }
        }
        self.deliver(deliveries).await;
    }

    /// Puts a failed batch back at the front of its partition's queue after a backoff, or fails it
    /// when the error is not retriable or the delivery timeout has passed.
    fn retry_or_fail(
        &mut self,
        tp: TopicPartition,
        batch: Batch<T>,
        error: Error,
        deliveries: &mut Vec<Delivery<T>>,
    ) {
        let Some(ps) = self.partitions.get_mut(&tp) else {
            return;
        };
        ps.in_flight = false;
        let expired = match (self.delivery_timeout, batch.first_sent) {
            (Some(limit), Some(first)) => first.elapsed() >= limit,
            _ => false,
        };
        if !error.is_retriable() || expired {
            let error = if expired {
                Error::retriable(format!(
                    "delivery to {tp} timed out after {:?}: {}",
                    self.delivery_timeout.unwrap_or_default(),
                    error.report()
                ))
            } else {
                error
            };
            deliveries.extend(
                batch.tags.into_iter().map(|tag| Delivery { tag, result: Err(error.clone()) }),
            );
            return;
        }
        let delay = ps.backoff.next_delay();
        warn!(
            %tp,
            records = batch.records.len(),
            attempt = ps.backoff.attempts(),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error.report(),
            "produce failed; will retry"
        );
        ps.retry_at = Some(Instant::now() + delay);
        ps.queue.push_front(batch);
        self.client.invalidate_topic(&tp.topic);
        self.refresh_topic(Arc::clone(&tp.topic));
    }

    async fn deliver(&mut self, deliveries: Vec<Delivery<T>>) {
        if deliveries.is_empty() {
            return;
        }
        // The receiver may be gone (caller shutting down); nothing else to do then.
        let _ = self.acks.send(deliveries).await;
    }
}

fn state_has_no_meta<T>(topics: &HashMap<Arc<str>, TopicState<T>>, topic: &str) -> bool {
    topics.get(topic).is_some_and(|t| t.meta.is_none() && t.waiting.is_empty())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}
