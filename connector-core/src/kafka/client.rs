//! [`KafkaClient`]: the broker pool and metadata cache everything else in `kafka` goes through.
//!
//! It bootstraps from the configured servers, learns brokers, topics, partitions and leaders from
//! Metadata responses, keeps pipelined connections per broker in separate *lanes* (see [`Lane`]),
//! refreshes metadata when it is
//! older than `metadata_max_age_ms` or when a broker says a leader moved, creates missing topics,
//! and puts every broker call under the request timeout. A connection that fails or times out is
//! dropped and re-established on next use.

use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rskafka::messenger::RequestError;
use rskafka::protocol::error::Error as ApiError;
use rskafka::protocol::messages::{
    CreateTopicConfig, CreateTopicRequest, CreateTopicsRequest, DeleteTopicsRequest,
    ListOffsetsRequest, ListOffsetsRequestPartition, ListOffsetsRequestTopic, MetadataRequest,
    MetadataRequestTopic, MetadataResponse, ReadVersionedType, RequestBody, WriteVersionedError,
    WriteVersionedType, NORMAL_CONSUMER,
};
use rskafka::protocol::primitives::{Array, Boolean, Int16, Int32, Int64, NullableString, String_};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::kafka::config::KafkaConfig;
use crate::kafka::connection::{connect, Connection};
use crate::kafka::describe_configs::{DescribeConfigsRequest, RESOURCE_TOPIC};
use crate::kafka::errors::{api_error, invalidates_metadata, request_error};
use crate::kafka::security::Security;
use crate::{Error, Result};

/// A topic's partitions and their leaders, as last seen in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: Arc<str>,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    /// Number of partitions.
    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    /// Leader of `partition`, if it has one.
    pub fn leader(&self, partition: i32) -> Option<i32> {
        usize::try_from(partition).ok().and_then(|p| self.partitions.get(p)).and_then(|p| p.leader)
    }
}

/// One partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub partition: i32,
    /// Broker id of the leader; `None` while the partition has no leader.
    pub leader: Option<i32>,
}

/// Which end of a partition to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored.
    Earliest,
    /// The offset the next written record will get (the high watermark).
    Latest,
}

/// A cheap-to-clone handle to a Kafka cluster.
///
/// ```no_run
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let topic = client.ensure_topic("telemetry").await?;
/// println!("{} has {} partitions", topic.name, topic.partition_count());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KafkaClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaClient")
            .field("bootstrap_servers", &self.inner.config.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

/// Serializes connection attempts to one broker lane.
type ConnectLock = Arc<tokio::sync::Mutex<()>>;

struct Inner {
    config: KafkaConfig,
    /// TLS configuration and SASL credentials, loaded once.
    security: Security,
    state: Mutex<State>,
    /// One connection attempt per broker and lane at a time.
    connect_locks: Mutex<HashMap<(i32, Lane), ConnectLock>>,
    /// Metadata v4+ can say "do not auto-create"; older brokers cannot, and we stop asking.
    metadata_can_refuse_auto_create: AtomicBool,
}

#[derive(Default)]
struct State {
    brokers: HashMap<i32, String>,
    conns: HashMap<(i32, Lane), Arc<Connection>>,
    bootstrap: Option<(String, Arc<Connection>)>,
    topics: HashMap<Arc<str>, CachedTopic>,
    controller: Option<i32>,
}

struct CachedTopic {
    meta: Arc<TopicMetadata>,
    fetched: Instant,
    stale: bool,
}

/// Which connection to a broker a request travels on.
///
/// A broker answers the requests of one connection in order, so a fetch that waits up to
/// `fetch_max_wait_ms` for data would hold up every produce request queued behind it on the same
/// connection. Produce requests, control requests (metadata, offsets, topic creation) and the
/// fetches of each partition therefore use separate connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Metadata, list offsets, create topics.
    Control,
    /// Produce requests.
    Produce,
    /// Fetches of one partition (keyed by a hash of topic and partition).
    Fetch(u64),
}

/// Where a request goes: a known broker id on a lane, or whatever connection metadata uses.
#[derive(Debug, Clone, Copy)]
enum Target {
    Node(i32, Lane),
    Any,
}

impl KafkaClient {
    /// Connects to the cluster: validates the config, reads its TLS and SASL files and secrets,
    /// then fetches cluster metadata from the first bootstrap server that answers, retrying with
    /// backoff for up to the request timeout.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config or an unreadable certificate, key or password
    /// file; fatal when a broker's certificate does not verify or it refuses the SASL login;
    /// retriable when no bootstrap server answered.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        if let Some(first) = config.validate().iter().next() {
            return Err(Error::config(format!("kafka.{}", first.path), &first.message));
        }
        let security = Security::load(&config)?;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                security,
                state: Mutex::new(State::default()),
                connect_locks: Mutex::new(HashMap::new()),
                metadata_can_refuse_auto_create: AtomicBool::new(true),
            }),
        };
        let deadline = Instant::now() + client.inner.config.request_timeout();
        let mut backoff = Backoff::new(client.inner.config.retry_backoff);
        loop {
            match client.fetch_metadata(Some(&[])).await {
                Ok(_) => return Ok(client),
                Err(e)
                    if e.is_retriable() && Instant::now() + backoff_peek(&backoff) < deadline =>
                {
                    warn!(error = %e.report(), "Kafka not reachable yet; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                // A refused login or an untrusted certificate: retrying cannot help.
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => {
                    return Err(Error::retriable(format!(
                        "cannot reach Kafka at {}: {}",
                        client.inner.config.bootstrap_servers.join(", "),
                        e.report()
                    )))
                }
            }
        }
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Metadata for `topic`, from cache when fresh. `Ok(None)` when the topic does not exist.
    ///
    /// # Errors
    /// Retriable when no broker answered.
    pub async fn topic_metadata(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        if let Some(meta) = self.cached_topic(topic) {
            return Ok(Some(meta));
        }
        self.refresh_topic(topic).await
    }

    /// Fetches fresh metadata for `topic`, ignoring the cache.
    ///
    /// # Errors
    /// Retriable when no broker answered.
    pub async fn refresh_topic(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        let response = self.fetch_metadata(Some(&[topic])).await?;
        let mut found = None;
        for t in response.topics {
            if t.name.0 != topic {
                continue;
            }
            match t.error {
                None | Some(ApiError::LeaderNotAvailable) => {}
                Some(ApiError::UnknownTopicOrPartition) => return Ok(None),
                Some(ApiError::InvalidTopicException) => {
                    return Err(Error::rejected(format!(
                        "{topic:?} is not a valid Kafka topic name"
                    ))
                    .with_topic(topic))
                }
                Some(e) => return Err(api_error(e, format!("metadata for topic {topic}"))),
            }
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index.0,
                    leader: (p.leader_id.0 >= 0
                        && p.error.is_none_or(|e| !invalidates_metadata(e)))
                    .then_some(p.leader_id.0),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let contiguous = partitions
                .iter()
                .enumerate()
                .all(|(i, p)| usize::try_from(p.partition).is_ok_and(|n| n == i));
            if !contiguous || partitions.is_empty() {
                // A topic being created can briefly report no or some partitions.
                return Err(Error::retriable(format!(
                    "metadata for topic {topic} is incomplete ({} partitions listed)",
                    partitions.len()
                )));
            }
            let meta = Arc::new(TopicMetadata { name: Arc::from(topic), partitions });
            self.inner.state.lock().topics.insert(
                Arc::clone(&meta.name),
                CachedTopic { meta: Arc::clone(&meta), fetched: Instant::now(), stale: false },
            );
            found = Some(meta);
        }
        Ok(found)
    }

    /// Metadata for `topic`, creating it first (with the configured partitions and replication
    /// factor) when it does not exist and `auto_create_topics` is on. Waits until every partition
    /// has a leader.
    ///
    /// # Errors
    /// Fatal when the topic does not exist and auto-creation is off; retriable when the cluster did
    /// not answer or the new topic did not get leaders within the request timeout.
    pub async fn ensure_topic(&self, topic: &str) -> Result<Arc<TopicMetadata>> {
        if let Some(meta) = self.cached_topic(topic) {
            if meta.partitions.iter().all(|p| p.leader.is_some()) {
                return Ok(meta);
            }
        }
        let deadline = Instant::now() + self.inner.config.request_timeout();
        let mut backoff = Backoff::new(self.inner.config.retry_backoff);
        let mut created = false;
        loop {
            let result = match self.refresh_topic(topic).await {
                Ok(Some(meta)) if meta.partitions.iter().all(|p| p.leader.is_some()) => {
                    return Ok(meta)
                }
                Ok(Some(_)) => {
                    Err(Error::retriable(format!("topic {topic} has partitions without a leader")))
                }
                Ok(None) if !self.inner.config.auto_create_topics => {
                    return Err(Error::fatal(format!(
                        "Kafka topic {topic} does not exist and kafka.auto_create_topics is false"
                    ))
                    .with_topic(topic))
                }
                Ok(None) if !created => {
                    let config = &self.inner.config;
                    self.create_topic(
                        topic,
                        config.topic_partitions,
                        config.topic_replication_factor,
                    )
                    .await
                    .map(|()| created = true)
                }
                Ok(None) => {
                    Err(Error::retriable(format!("created topic {topic} is not visible yet")))
                }
                Err(e) => Err(e),
            };
            match result {
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::retriable(format!(
                        "topic {topic} not ready: {}",
                        e.report()
                    )))
                }
                Err(e) => debug!(topic, error = %e.report(), "topic not ready yet"),
                Ok(()) => {}
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Creates `topic`. An existing topic is not an error.
    ///
    /// # Errors
    /// Fatal when the broker refuses (invalid name, too many partitions, policy); retriable when no
    /// broker answered.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i16) -> Result<()> {
        self.create_topic_with_configs(topic, partitions, replication, &[]).await
    }

    /// Creates `topic` with topic-level `configs` (such as `("cleanup.policy", "compact")`). An
    /// existing topic is not an error, and its configs are left as they are.
    ///
    /// # Errors
    /// As for [`create_topic`](Self::create_topic); also fatal when the broker refuses a config.
    pub async fn create_topic_with_configs(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: vec![CreateTopicRequest {
                name: String_(topic.to_owned()),
                num_partitions: Int32(partitions),
                replication_factor: Int16(replication),
                assignments: vec![],
                configs: configs
                    .iter()
                    .map(|(name, value)| CreateTopicConfig {
                        name: String_((*name).to_owned()),
                        value: NullableString(Some((*value).to_owned())),
                        tagged_fields: None,
                    })
                    .collect(),
                tagged_fields: None,
            }],
            timeout_ms: Int32(
                i32::try_from(self.inner.config.request_timeout_ms).unwrap_or(i32::MAX),
            ),
            validate_only: None,
            tagged_fields: None,
        };
        let controller = self.inner.state.lock().controller;
        let target = controller.map_or(Target::Any, |c| Target::Node(c, Lane::Control));
        let response = self.request(target, &request).await?;
        for t in response.topics {
            match t.error {
                None => {
                    info!(topic, partitions, replication, ?configs, "created Kafka topic");
                }
                Some(ApiError::TopicAlreadyExists) => {}
                Some(ApiError::NotController) => {
                    self.inner.state.lock().controller = None;
                    return Err(Error::retriable(format!(
                        "create topic {topic}: not the controller"
                    )));
                }
                Some(e) => {
                    let detail = t.error_message.and_then(|m| m.0).unwrap_or_default();
                    return Err(
                        api_error(e, format!("create topic {topic} ({detail})")).with_topic(topic)
                    );
                }
            }
        }
        self.invalidate_topic(topic);
        Ok(())
    }

    /// Deletes `topic`. A topic that does not exist is not an error.
    ///
    /// # Errors
    /// Fatal when the broker refuses (not allowed); retriable when no broker answered.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            topic_names: Array(Some(vec![String_(topic.to_owned())])),
            timeout_ms: Int32(
                i32::try_from(self.inner.config.request_timeout_ms).unwrap_or(i32::MAX),
            ),
            tagged_fields: None,
        };
        let controller = self.inner.state.lock().controller;
        let target = controller.map_or(Target::Any, |c| Target::Node(c, Lane::Control));
        let response = self.request(target, &request).await?;
        for t in response.responses {
            match t.error {
                None => info!(topic, "deleted Kafka topic"),
                Some(ApiError::UnknownTopicOrPartition) => {}
                Some(e) => {
                    return Err(api_error(e, format!("delete topic {topic}")).with_topic(topic))
                }
            }
        }
        self.invalidate_topic(topic);
        Ok(())
    }

    /// The topic-level configs of `topic` the broker lists (DescribeConfigs), as name -> value.
    /// Kafka lists every config, defaults included; some brokers (Tansu 0.6) list only the ones
    /// set when the topic was created. `Ok(None)` when the broker does not answer DescribeConfigs
    /// (it does not support it, or refuses us the describe permission), so the caller cannot check.
    ///
    /// # Errors
    /// Retriable when no broker answered; fatal for any other error the broker names.
    pub async fn topic_configs(
        &self,
        topic: &str,
    ) -> Result<Option<HashMap<String, Option<String>>>> {
        let request =
            DescribeConfigsRequest { resources: vec![(RESOURCE_TOPIC, topic.to_owned(), None)] };
        let response = match self.request(Target::Any, &request).await {
            Ok(r) => r,
            Err(e) if e.to_string().contains("supports no version of") => {
                debug!(topic, "broker does not support DescribeConfigs");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(result) = response.results.into_iter().find(|r| r.resource_name == topic) else {
            return Err(Error::retriable(format!("describe configs: no answer for topic {topic}")));
        };
        match result.error {
            None => Ok(Some(result.configs.into_iter().collect())),
            Some(ApiError::TopicAuthorizationFailed | ApiError::ClusterAuthorizationFailed) => {
                warn!(topic, "not allowed to describe the topic's configs; cannot check them");
                Ok(None)
            }
            Some(e) => {
                let detail = result.error_message.unwrap_or_default();
                Err(api_error(e, format!("describe configs of topic {topic} ({detail})"))
                    .with_topic(topic))
            }
        }
    }

    /// The earliest or latest offset of a partition.
    ///
    /// # Errors
    /// Retriable when the leader did not answer or moved.
    pub async fn list_offset(&self, topic: &str, partition: i32, spec: OffsetSpec) -> Result<i64> {
        let leader = self.leader_for(topic, partition).await?;
        let request = ListOffsetsRequest {
            replica_id: NORMAL_CONSUMER,
            isolation_level: None,
            topics: vec![ListOffsetsRequestTopic {
                name: String_(topic.to_owned()),
                partitions: vec![ListOffsetsRequestPartition {
                    partition_index: Int32(partition),
                    timestamp: Int64(match spec {
                        OffsetSpec::Earliest => -2,
                        OffsetSpec::Latest => -1,
                    }),
                    max_num_offsets: Some(Int32(1)),
                }],
            }],
        };
        let response = self.request(Target::Node(leader, Lane::Control), &request).await?;
        let found = response
            .topics
            .into_iter()
            .filter(|t| t.name.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index.0 == partition);
        let Some(p) = found else {
            return Err(Error::retriable(format!(
                "list offsets: no answer for {topic}-{partition}"
            )));
        };
        if let Some(e) = p.error_code {
            if invalidates_metadata(e) {
                self.invalidate_topic(topic);
            }
            return Err(api_error(e, format!("list offsets of {topic}-{partition}"))
                .with_topic(topic)
                .with_partition(partition));
        }
        p.offset
            .map(|o| o.0)
            .or_else(|| p.old_style_offsets.and_then(|a| a.0).and_then(|v| v.first().map(|o| o.0)))
            .ok_or_else(|| {
                Error::retriable(format!("list offsets of {topic}-{partition}: no offset"))
            })
    }

    /// Leader of `topic`/`partition`, from cache or a metadata refresh.
    pub(crate) async fn leader_for(&self, topic: &str, partition: i32) -> Result<i32> {
        let meta = match self.topic_metadata(topic).await? {
            Some(m) => m,
            None => {
                return Err(
                    Error::retriable(format!("topic {topic} does not exist")).with_topic(topic)
                )
            }
        };
        if partition < 0 || partition >= meta.partition_count() {
            return Err(Error::fatal(format!(
                "partition {partition} does not exist (topic {topic} has {})",
                meta.partition_count()
            )));
        }
        match meta.leader(partition) {
            Some(l) => Ok(l),
            None => {
                self.invalidate_topic(topic);
                Err(Error::retriable(format!("{topic}-{partition} has no leader")))
            }
        }
    }

    /// Cached metadata for `topic` if present and fresh.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Arc<TopicMetadata>> {
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms);
        let state = self.inner.state.lock();
        state
            .topics
            .get(topic)
            .filter(|c| !c.stale && c.fetched.elapsed() < max_age)
            .map(|c| Arc::clone(&c.meta))
    }

    /// Marks `topic`'s metadata stale, so the next lookup refreshes it.
    pub(crate) fn invalidate_topic(&self, topic: &str) {
        if let Some(c) = self.inner.state.lock().topics.get_mut(topic) {
            c.stale = true;
        }
    }

    /// Drops `topic` from the metadata cache (a producer evicted it as idle), so the cache holds
    /// no more topics than are in use.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.inner.state.lock().topics.remove(topic);
    }

    /// Sends `request` to broker `node` on `lane`, under the request timeout.
    pub(crate) async fn request_node<R>(
        &self,
        node: i32,
        lane: Lane,
        request: R,
    ) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        self.request(Target::Node(node, lane), request).await
    }

    async fn request<R>(&self, target: Target, request: R) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        let (key, addr, conn) = match target {
            Target::Node(node, lane) => {
                let (addr, conn) = self.node_connection(node, lane).await?;
                (Some((node, lane)), addr, conn)
            }
            Target::Any => self.any_connection().await?,
        };
        let timeout = self.inner.config.request_timeout();
        let outcome = tokio::time::timeout(timeout, conn.request(request)).await;
        let err = match outcome {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(RequestError::WriteError(WriteVersionedError::FieldNotAvailable {
                field,
                version,
            }))) => {
                // Nothing was sent; the connection is fine.
                return Err(Error::fatal(format!(
                    "request field {field} not available in version {version:?} on broker {addr}"
                )));
            }
            Ok(Err(e)) => request_error(e, &addr),
            Err(_) => Error::retriable(format!(
                "Kafka broker {addr} did not answer within {timeout:?}; reconnecting"
            )),
        };
        if err.is_retriable() {
            self.drop_connection(key, &conn);
        }
        Err(err)
    }

    /// Fetches metadata (`None` = all topics, `Some(&[])` = brokers only) and updates the broker map.
    async fn fetch_metadata(&self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let names = topics.map(|ts| {
            ts.iter().map(|t| MetadataRequestTopic { name: String_((*t).to_owned()) }).collect()
        });
        let refuse = self.inner.metadata_can_refuse_auto_create.load(Ordering::Relaxed);
        let request = MetadataRequest {
            topics: names,
            allow_auto_topic_creation: refuse.then_some(Boolean(false)),
        };
        let response = match self.request(Target::Any, &request).await {
            Err(Error::Fatal { message, .. })
                if refuse && message.contains("allow_auto_topic_creation") =>
            {
                // The broker speaks Metadata < v4, which has no such field (and never auto-creates
                // on our behalf unless configured to).
                self.inner.metadata_can_refuse_auto_create.store(false, Ordering::Relaxed);
                let request =
                    MetadataRequest { topics: request.topics, allow_auto_topic_creation: None };
                self.request(Target::Any, &request).await?
            }
            other => other?,
        };
        let mut state = self.inner.state.lock();
        let brokers: HashMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.0, b.port.0)))
            .collect();
        if !brokers.is_empty() {
            // Drop connections to brokers that left or moved.
            let State { conns, brokers: known, .. } = &mut *state;
            conns.retain(|(id, _), _| brokers.get(id).is_some_and(|a| known.get(id) == Some(a)));
            *known = brokers;
        }
        if let Some(c) = response.controller_id {
            state.controller = (c.0 >= 0).then_some(c.0);
        }
        Ok(response)
    }

    /// The connection to broker `node` on `lane`, established if needed.
    async fn node_connection(&self, node: i32, lane: Lane) -> Result<(String, Arc<Connection>)> {
        let lookup = |state: &State| -> Option<(String, Option<Arc<Connection>>)> {
            let addr = state.brokers.get(&node)?.clone();
            Some((addr, state.conns.get(&(node, lane)).cloned()))
        };
        let known = lookup(&self.inner.state.lock());
        let addr = match known {
            Some((addr, Some(conn))) => return Ok((addr, conn)),
            Some((addr, None)) => addr,
            None => {
                // The id came from stale metadata; refresh so the caller's retry finds it.
                Box::pin(self.fetch_metadata(Some(&[]))).await?;
                return Err(Error::retriable(format!("unknown Kafka broker id {node}")));
            }
        };
        let lock = Arc::clone(self.inner.connect_locks.lock().entry((node, lane)).or_default());
        let _guard = lock.lock().await;
        if let Some((addr, Some(conn))) = lookup(&self.inner.state.lock()) {
            return Ok((addr, conn));
        }
        debug!(node, addr, ?lane, "connecting to Kafka broker");
        let conn = connect(&addr, &self.inner.config, &self.inner.security).await?;
        self.inner.state.lock().conns.insert((node, lane), Arc::clone(&conn));
        Ok((addr, conn))
    }

    /// Some live connection, for metadata and requests any broker can answer: an open broker
    /// connection, else a known broker, else the bootstrap servers in order.
    async fn any_connection(&self) -> Result<(Option<(i32, Lane)>, String, Arc<Connection>)> {
        let (open, mut known, bootstrap) = {
            let state = self.inner.state.lock();
            let open = state.conns.iter().find(|((_, lane), _)| *lane == Lane::Control).and_then(
                |((id, lane), c)| {
                    state.brokers.get(id).map(|a| (Some((*id, *lane)), a.clone(), Arc::clone(c)))
                },
            );
            let known: Vec<i32> = state.brokers.keys().copied().collect();
            let bootstrap = state.bootstrap.as_ref().map(|(a, c)| (None, a.clone(), Arc::clone(c)));
            (open, known, bootstrap)
        };
        if let Some(found) = open.or(bootstrap) {
            return Ok(found);
        }
        fastrand::shuffle(&mut known);
        let mut last_error = None;
        for node in known {
            match self.node_connection(node, Lane::Control).await {
                Ok((addr, conn)) => return Ok((Some((node, Lane::Control)), addr, conn)),
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        for addr in &self.inner.config.bootstrap_servers {
            match connect(addr, &self.inner.config, &self.inner.security).await {
                Ok(conn) => {
                    self.inner.state.lock().bootstrap = Some((addr.clone(), Arc::clone(&conn)));
                    return Ok((None, addr.clone(), conn));
                }
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => {
                    debug!(addr, error = %e.report(), "bootstrap server not reachable");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::fatal("no Kafka bootstrap servers configured")))
    }

    fn drop_connection(&self, key: Option<(i32, Lane)>, conn: &Arc<Connection>) {
        let mut state = self.inner.state.lock();
        match key {
            Some(key) => {
                if state.conns.get(&key).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                    state.conns.remove(&key);
                }
            }
            None => {
                if state.bootstrap.as_ref().is_some_and(|(_, c)| Arc::ptr_eq(c, conn)) {
                    state.bootstrap = None;
                }
            }
        }
        // A broker that stopped answering may have lost leadership too.
        for c in state.topics.values_mut() {
            c.stale = true;
        }
    }
}

/// The delay the backoff would hand out next, without advancing it.
fn backoff_peek(b: &Backoff) -> Duration {
    let mut copy = b.clone();
    copy.next_delay()
}
