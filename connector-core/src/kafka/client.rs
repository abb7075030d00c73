//! [`KafkaClient`]: the broker pool and metadata cache everything else in `kafka` goes through.
//!
//! It bootstraps from the configured servers, learns brokers, topics, partitions and leaders from
//! Metadata responses, keeps pipelined connections per broker in separate *lanes* (see [`Lane`]),
//! refreshes metadata when it is
//! older than `metadata_max_age_ms` or when a broker says a leader moved, creates missing topics,
//! and puts every broker call under the request timeout. A connection that fails or times out is
//! dropped and re-established on next use.
//!
//! This file holds the handle, its shared state and `connect`; the rest is split by concern:
//! `client/metadata.rs` (the metadata cache and Metadata requests), `client/lanes.rs` (connections
//! per broker and lane, the request path under the timeout) and `client/admin.rs` (creating,
//! deleting and describing topics, listing offsets). [`KafkaClient::produce`] is in `produce.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::backoff::Backoff;
use crate::kafka::config::KafkaConfig;
use crate::kafka::connection::Connection;
use crate::kafka::security::Security;
use crate::{Error, Result};

mod admin;
mod lanes;
mod metadata;

pub use admin::OffsetSpec;
pub(crate) use lanes::Lane;
pub use metadata::{PartitionMetadata, TopicMetadata};

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
    /// The next [`Lane::Group`] number.
    next_group_lane: AtomicU64,
    /// The client id each open [`Lane::Group`] puts in its request headers.
    group_lanes: Mutex<HashMap<u64, Arc<str>>>,
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
                next_group_lane: AtomicU64::new(0),
                group_lanes: Mutex::new(HashMap::new()),
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
}

/// The delay the backoff would hand out next, without advancing it.
fn backoff_peek(b: &Backoff) -> Duration {
    let mut copy = b.clone();
    copy.next_delay()
}
