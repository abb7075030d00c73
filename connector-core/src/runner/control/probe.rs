//! Health's view of Kafka: a [`KafkaProbe`] asks the cluster for metadata on a fixed period and
//! keeps the outcome of the last try, and [`worker_health`] combines it with the worker's task
//! states into KIP-1017's answer (`GET /health`: starting, healthy, or unhealthy with a reason).
//!
//! The probe sends its own brokers-only Metadata request (no topics, so nothing is created or
//! fetched) over the client's control connection, each try bounded by the period, so a silent
//! network partition turns into "unhealthy" within about two periods rather than after the
//! client's request timeout.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Health;
use crate::kafka::wire::messages::MetadataRequest;
use crate::kafka::KafkaClient;
use crate::runtime::{TaskState, Worker};

/// At most this many failed tasks are named in an unhealthy reason (the rest are counted).
const MAX_NAMED_FAILURES: usize = 5;

/// Asks Kafka for metadata on a fixed period and remembers whether the last try succeeded.
///
/// Cheap to clone (the clones share the state); the background task ends when the
/// `stop` token given to [`spawn`](Self::spawn) is cancelled.
///
/// ```no_run
/// use std::time::Duration;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runner::control::probe::KafkaProbe;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example() -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let stop = CancellationToken::new();
/// let probe = KafkaProbe::spawn(client, Duration::from_secs(2), stop.clone());
/// // ... later, e.g. in GET /health:
/// if probe.is_started() {
///     match probe.state() {
///         Ok(()) => println!("Kafka answers"),
///         Err(reason) => println!("unhealthy: {reason}"),
///     }
/// }
/// stop.cancel();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KafkaProbe {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None` until the first try finished; then the last try's outcome.
    last: Mutex<Option<Result<(), String>>>,
    /// The cluster id the last successful answer carried (Metadata v2+).
    cluster_id: Mutex<Option<String>>,
}

impl KafkaProbe {
    /// Asks Kafka for metadata every `every` (each try bounded by `every`), until `stop` is
    /// cancelled. The first try starts at once. Must be called within a Tokio runtime.
    pub fn spawn(client: KafkaClient, every: Duration, stop: CancellationToken) -> Self {
        let every = every.max(Duration::from_millis(10));
        let shared = Arc::new(Shared { last: Mutex::new(None), cluster_id: Mutex::new(None) });
        let probe = Self { shared: Arc::clone(&shared) };
        tokio::spawn(async move {
            let brokers = client.config().bootstrap_servers.join(", ");
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let outcome = tokio::select! {
                    () = stop.cancelled() => break,
                    outcome = try_once(&client, every, &brokers) => outcome,
                };
                shared.record(outcome);
            }
            debug!("Kafka health probe stopped");
        });
        probe
    }

    /// Ok when the last try succeeded; Err(reason naming the brokers and the error) when the last
    /// try failed or timed out, or no try has finished yet ("starting": see
    /// [`is_started`](Self::is_started)).
    ///
    /// # Errors
    /// The reason Kafka is taken to be unreachable, as a sentence for an operator.
    pub fn state(&self) -> Result<(), String> {
        match &*self.shared.last.lock() {
            Some(outcome) => outcome.clone(),
            None => Err("starting: the first Kafka metadata request has not finished yet".into()),
        }
    }

    /// True once a first try has finished (success or failure).
    pub fn is_started(&self) -> bool {
        self.shared.last.lock().is_some()
    }

    /// The cluster id of the last successful answer (`None` before one, or from a broker too old
    /// to say), for `GET /`'s `kafka_cluster_id`.
    pub fn cluster_id(&self) -> Option<String> {
        self.shared.cluster_id.lock().clone()
    }
}

impl Shared {
    fn record(&self, outcome: Result<Option<String>, String>) {
        let mut last = self.last.lock();
        let was_ok = matches!(*last, Some(Ok(())));
        match outcome {
            Ok(cluster_id) => {
                if !was_ok {
                    info!("Kafka reachable again (health probe)");
                }
                if cluster_id.is_some() {
                    *self.cluster_id.lock() = cluster_id;
                }
                *last = Some(Ok(()));
            }
            Err(reason) => {
                if was_ok || last.is_none() {
                    warn!(reason = %reason, "Kafka unreachable (health probe)");
                }
                *last = Some(Err(reason));
            }
        }
    }
}

/// One brokers-only Metadata request, bounded by `within`; the cluster id on success.
async fn try_once(
    client: &KafkaClient,
    within: Duration,
    brokers: &str,
) -> Result<Option<String>, String> {
    let request = MetadataRequest { topics: Some(Vec::new()), allow_auto_topic_creation: None };
    match tokio::time::timeout(within, client.request_any(request)).await {
        Ok(Ok(response)) => Ok(response.cluster_id.and_then(|c| c.0)),
        Ok(Err(e)) => Err(format!("Kafka unreachable at {brokers}: {}", e.report())),
        Err(_) => Err(format!(
            "Kafka unreachable at {brokers}: no answer to a metadata request within {} ms",
            within.as_millis()
        )),
    }
}

/// KIP-1017-style health of one worker: Starting until the probe's first try; Unhealthy with the
/// reason when Kafka is unreachable or a task is FAILED (naming connector/task and the error);
/// Healthy otherwise (PAUSED and STOPPED are healthy).
///
/// ```no_run
/// use connector_core::runner::control::probe::{worker_health, KafkaProbe};
/// use connector_core::runner::control::Health;
///
/// # fn example(worker: &connector_core::runtime::Worker, probe: &KafkaProbe) {
/// match worker_health(worker, probe) {
///     Health::Healthy => println!("200"),
///     Health::Starting(why) | Health::Unhealthy(why) => println!("503: {why}"),
/// }
/// # }
/// ```
pub fn worker_health(worker: &Worker, probe: &KafkaProbe) -> Health {
    if !probe.is_started() {
        return Health::Starting(
            "the worker is starting: waiting for the first answer from Kafka".into(),
        );
    }
    if let Err(reason) = probe.state() {
        return Health::Unhealthy(reason);
    }
    let mut failed = Vec::new();
    for name in worker.connectors() {
        // A connector removed between the two calls is simply not there any more.
        let Ok(status) = worker.status(&name) else { continue };
        for task in status.tasks {
            if let TaskState::Failed(e) = task.state {
                failed.push(format!("connector {name} task {} FAILED: {}", task.id, e.report()));
            }
        }
    }
    if failed.is_empty() {
        return Health::Healthy;
    }
    let total = failed.len();
    let mut reason = failed.into_iter().take(MAX_NAMED_FAILURES).collect::<Vec<_>>().join("; ");
    if total > MAX_NAMED_FAILURES {
        reason.push_str(&format!("; and {} more failed tasks", total - MAX_NAMED_FAILURES));
    }
    Health::Unhealthy(reason)
}
