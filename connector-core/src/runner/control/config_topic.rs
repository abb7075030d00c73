//! The Kafka config topic of a worker group (Kafka Connect's `config.storage.topic`): where the
//! REST API's changes are kept in distributed mode, so that every worker sees them and a restart
//! keeps them. One partition (one order for every change), compacted (the latest record of each
//! key is kept however old), created if missing; an existing topic that is not compacted is
//! refused, as the Kafka offsets store refuses one.
//!
//! Records (key -> JSON value):
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `connector-<name>` | `{"config":{...},"target_state":"RUNNING"\|"PAUSED"\|"STOPPED"}` | the connector's `[[connector]]` table as written (`name`, `type` included) and what it should be |
//! | `connector-<name>` | `{"deleted":true}` | deleted through the API although the configuration file defines it (a tombstone would be compacted away and the file's connector would come back) |
//! | `connector-<name>` | tombstone (no value) | deleted |
//! | `restart-connector-<name>` / `restart-task-<name>-<task>` | `{"connector":..,"task":N?,"include_tasks":..,"only_failed":..}` | a restart request: every worker restarts what it runs of it when it reads the record (records older than a worker's start are not replayed) |
//!
//! [`ConfigTopic::follow`] reads the topic to its end, then follows it in the background: the
//! latest [`ConfigSnapshot`] (with the topic offset it reflects) is in a watch channel (one value:
//! bounded), and only the newest [`MAX_RESTARTS`] restart requests are kept in it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::TargetState;
use crate::kafka::{FetchResult, KafkaClient, OffsetSpec, ProducerRecord};
use crate::{Error, Result};

/// The default config topic (Kafka Connect's default `config.storage.topic` is `connect-configs`).
pub const DEFAULT_CONFIG_TOPIC: &str = "connect-configs";
/// How many restart requests a [`ConfigSnapshot`] keeps (the newest).
pub const MAX_RESTARTS: usize = 64;
const CONNECTOR_PREFIX: &str = "connector-";
const RESTART_PREFIX: &str = "restart-";
const CLEANUP_POLICY: &str = "cleanup.policy";
const COMPACT: &str = "compact";

/// One connector as the config topic keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConnector {
    /// The `[[connector]]` table as written (`name` and `type` included, `${VAR}`s not expanded).
    pub config: Map<String, Value>,
    /// What it should be.
    #[serde(default)]
    pub target_state: TargetState,
}

/// A restart request (written by the worker that answered the REST call, applied by every worker
/// to what it runs of the connector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// The connector.
    pub connector: String,
    /// One task (`POST /connectors/{c}/tasks/{t}/restart`), or `None` for the connector.
    #[serde(default)]
    pub task: Option<usize>,
    /// With the connector: restart its tasks too.
    #[serde(default)]
    pub include_tasks: bool,
    /// With the connector: only the tasks that failed.
    #[serde(default)]
    pub only_failed: bool,
}

impl RestartRecord {
    fn key(&self) -> String {
        match self.task {
            Some(t) => format!("{RESTART_PREFIX}task-{}-{t}", self.connector),
            None => format!("{RESTART_PREFIX}connector-{}", self.connector),
        }
    }
}

/// What the config topic says, as of a topic offset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSnapshot {
    /// The next offset to read: every record below it is reflected here.
    pub offset: i64,
    /// The connectors the topic defines, by name.
    pub connectors: BTreeMap<String, StoredConnector>,
    /// Names deleted with a `{"deleted":true}` marker (they override the file's connectors).
    pub deleted: BTreeSet<String>,
    /// The topic offset of each connector's newest record (config and target state, or a
    /// `{"deleted":true}` marker), by name.
    pub written: BTreeMap<String, i64>,
    /// The newest restart requests with their topic offsets, oldest first (at most
    /// [`MAX_RESTARTS`]).
    pub restarts: VecDeque<(i64, RestartRecord)>,
}

impl ConfigSnapshot {
    fn apply(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>, at: i64) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            warn!(topic, offset = at, "config topic record without a UTF-8 key; ignored");
            return;
        };
        if let Some(name) = key.strip_prefix(CONNECTOR_PREFIX) {
            let Some(value) = value else {
                self.connectors.remove(name);
                self.deleted.remove(name);
                self.written.remove(name);
                return;
            };
            self.written.insert(name.to_owned(), at);
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Stored {
                Deleted { deleted: bool },
                Connector(StoredConnector),
            }
            match serde_json::from_slice::<Stored>(value) {
                Ok(Stored::Deleted { deleted: true }) => {
                    self.connectors.remove(name);
                    self.deleted.insert(name.to_owned());
                }
                Ok(Stored::Connector(c)) => {
                    self.deleted.remove(name);
                    self.connectors.insert(name.to_owned(), c);
                }
                Ok(Stored::Deleted { deleted: false }) | Err(_) => {
                    warn!(
                        topic,
                        offset = at,
                        key,
                        "config topic record is not a connector config; ignored"
                    );
                }
            }
        } else if key.starts_with(RESTART_PREFIX) {
            match value.map(serde_json::from_slice::<RestartRecord>) {
                Some(Ok(r)) => {
                    if self.restarts.len() >= MAX_RESTARTS {
                        self.restarts.pop_front();
                    }
                    self.restarts.push_back((at, r));
                }
                // A tombstone of a restart request: nothing to do.
                None => {}
                Some(Err(_)) => {
                    warn!(
                        topic,
                        offset = at,
                        key,
                        "config topic record is not a restart request; ignored"
                    )
                }
            }
        } else {
            debug!(topic, offset = at, key, "config topic record of another kind; ignored");
        }
    }
}

/// A worker group's config topic: reads, writes, follows.
///
/// ```no_run
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runner::control::config_topic::{ConfigTopic, StoredConnector};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let topic = ConfigTopic::new(client, "connect-configs");
/// let follower = topic.follow(CancellationToken::new()).await?;
/// let mut config = serde_json::Map::new();
/// config.insert("name".into(), "beat".into());
/// config.insert("type".into(), "heartbeat".into());
/// let at = topic.put("beat", &StoredConnector { config, target_state: Default::default() }).await?;
/// follower.wait_past(at, std::time::Duration::from_secs(5)).await;
/// assert!(follower.latest().connectors.contains_key("beat"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConfigTopic {
    client: KafkaClient,
    topic: String,
}

impl ConfigTopic {
    /// The config topic `topic`, through `client`.
    pub fn new(client: KafkaClient, topic: impl Into<String>) -> Self {
        Self { client, topic: topic.into() }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic (1 partition, compacted) if missing; refuses an existing one that is
    /// not compacted.
    ///
    /// # Errors
    /// Kafka unreachable, or (fatal) a topic with another `cleanup.policy`.
    pub async fn ensure(&self) -> Result<()> {
        if self.client.topic_metadata(&self.topic).await?.is_none() {
            let rf = self.client.config().topic_replication_factor;
            self.client
                .create_topic_with_configs(&self.topic, 1, rf, &[(CLEANUP_POLICY, COMPACT)])
                .await?;
        }
        self.client.ensure_topic(&self.topic).await?;
        let Some(configs) = self.client.topic_configs(&self.topic).await? else {
            warn!(topic = %self.topic, "cannot check that the config topic has cleanup.policy=compact (the broker does not describe topic configs)");
            return Ok(());
        };
        let policy = configs.get(CLEANUP_POLICY).cloned().flatten();
        if policy.as_deref().is_some_and(|p| p.split(',').map(str::trim).eq([COMPACT])) {
            return Ok(());
        }
        let found = match &policy {
            Some(p) => format!("{CLEANUP_POLICY}={p}"),
            None => format!("no {CLEANUP_POLICY} set (the broker default, delete)"),
        };
        Err(Error::fatal(format!(
            "config topic {topic} must have {CLEANUP_POLICY}={COMPACT}, but it has {found}: under \
             delete retention the connectors created through the REST API would disappear after \
             retention.ms. Set it on the topic (kafka-configs --alter --entity-type topics \
             --entity-name {topic} --add-config {CLEANUP_POLICY}={COMPACT}) or use another \
             cluster.config_topic",
            topic = self.topic
        ))
        .with_topic(&*self.topic))
    }

    /// Reads the whole topic (after [`ensure`](Self::ensure)) up to its end as of the call.
    ///
    /// # Errors
    /// As [`ensure`](Self::ensure); a read that stops making progress for the request timeout.
    pub async fn read_to_end(&self) -> Result<ConfigSnapshot> {
        self.ensure().await?;
        let mut snapshot = ConfigSnapshot {
            offset: self.client.list_offset(&self.topic, 0, OffsetSpec::Earliest).await?,
            ..ConfigSnapshot::default()
        };
        self.catch_up(&mut snapshot).await?;
        Ok(snapshot)
    }

    /// Reads what was appended since `snapshot.offset`, up to the end as of the call. `true`
    /// when anything was read.
    async fn catch_up(&self, snapshot: &mut ConfigSnapshot) -> Result<bool> {
        let end = self.client.end_offset(&self.topic, 0).await?;
        if snapshot.offset > end {
            warn!(topic = %self.topic, offset = snapshot.offset, end, "the config topic is shorter than what was read (recreated?); reading it again from its start");
            *snapshot = ConfigSnapshot {
                offset: self.client.list_offset(&self.topic, 0, OffsetSpec::Earliest).await?,
                ..ConfigSnapshot::default()
            };
        }
        let stall_limit = self.client.config().request_timeout();
        let mut last_progress = Instant::now();
        let mut read = false;
        while snapshot.offset < end {
            if last_progress.elapsed() > stall_limit {
                return Err(Error::retriable(format!(
                    "config topic {} stopped returning records at offset {} of {end}",
                    self.topic, snapshot.offset
                )));
            }
            let fetched = match self
                .client
                .fetch(&self.topic, 0, snapshot.offset, Duration::from_millis(100))
                .await?
            {
                FetchResult::Records(f) => f,
                FetchResult::OffsetOutOfRange => {
                    return Err(Error::retriable(format!(
                        "config topic {} changed while being read",
                        self.topic
                    )))
                }
            };
            for r in &fetched.records {
                if r.offset >= snapshot.offset {
                    snapshot.apply(&self.topic, r.key.as_deref(), r.value.as_deref(), r.offset);
                }
            }
            if fetched.next_offset > snapshot.offset {
                last_progress = Instant::now();
                snapshot.offset = fetched.next_offset;
                read = true;
            }
        }
        Ok(read)
    }

    async fn write(&self, key: String, value: Option<Vec<u8>>) -> Result<i64> {
        let mut record = ProducerRecord::new(self.topic.as_str(), Bytes::new())
            .with_key(Bytes::from(key))
            .with_partition(0);
        record.value = value.map(Bytes::from);
        let written = self.client.produce(vec![record]).await?;
        written.first().map(|m| m.offset).ok_or_else(|| {
            Error::fatal(format!("config topic {}: the write was not acknowledged", self.topic))
        })
    }

    /// Writes connector `name`'s config and target state; returns the record's offset once
    /// Kafka acknowledged it.
    ///
    /// # Errors
    /// Kafka unreachable or refusing the write.
    pub async fn put(&self, name: &str, connector: &StoredConnector) -> Result<i64> {
        let value = serde_json::to_vec(connector)
            .map_err(|e| Error::fatal("a connector config that is not JSON").with_source(e))?;
        self.write(format!("{CONNECTOR_PREFIX}{name}"), Some(value)).await
    }

    /// Deletes connector `name`: a tombstone, or with `marker` (a connector the configuration
    /// file defines) a `{"deleted":true}` record that compaction keeps. Returns its offset.
    ///
    /// # Errors
    /// Kafka unreachable or refusing the write.
    pub async fn delete(&self, name: &str, marker: bool) -> Result<i64> {
        let value = marker.then(|| br#"{"deleted":true}"#.to_vec());
        self.write(format!("{CONNECTOR_PREFIX}{name}"), value).await
    }

    /// Writes a restart request; returns its offset.
    ///
    /// # Errors
    /// Kafka unreachable or refusing the write.
    pub async fn restart(&self, request: &RestartRecord) -> Result<i64> {
        let value = serde_json::to_vec(request)
            .map_err(|e| Error::fatal("a restart request that is not JSON").with_source(e))?;
        self.write(request.key(), Some(value)).await
    }

    /// Reads the topic to its end ([`read_to_end`](Self::read_to_end)), then follows it in
    /// the background (polling every 200 ms) until `stop` is cancelled.
    ///
    /// # Errors
    /// As [`read_to_end`](Self::read_to_end), for the first read.
    pub async fn follow(&self, stop: CancellationToken) -> Result<ConfigFollower> {
        let first = self.read_to_end().await?;
        info!(topic = %self.topic, offset = first.offset, connectors = first.connectors.len(), "config topic read");
        let start = first.offset;
        let (tx, rx) = watch::channel(Arc::new(first));
        let this = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(200);
            let mut current = (**tx.borrow()).clone();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match this.catch_up(&mut current).await {
                    Ok(true) => {
                        debug!(topic = %this.topic, offset = current.offset, "config topic changed");
                        tx.send_replace(Arc::new(current.clone()));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(topic = %this.topic, error = %e, "reading the config topic failed; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(ConfigFollower { rx, start })
    }
}

/// The latest view of a followed config topic ([`ConfigTopic::follow`]).
#[derive(Debug, Clone)]
pub struct ConfigFollower {
    rx: watch::Receiver<Arc<ConfigSnapshot>>,
    start: i64,
}

impl ConfigFollower {
    /// The latest snapshot.
    pub fn latest(&self) -> Arc<ConfigSnapshot> {
        Arc::clone(&self.rx.borrow())
    }

    /// A receiver of every new snapshot (a watch channel: only the latest is kept).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.rx.clone()
    }

    /// The topic's end when following started: restart requests below it are history.
    pub fn start_offset(&self) -> i64 {
        self.start
    }

    /// Waits until the view reflects the record at `offset` (bounded by `timeout`); `false` when
    /// it did not in time.
    pub async fn wait_past(&self, offset: i64, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        let seen = async move { rx.wait_for(|s| s.offset > offset).await.is_ok() };
        tokio::time::timeout(timeout, seen).await.unwrap_or(false)
    }
}
