//! [`MqttSourceTask`]: turns received MQTT messages into source records and acknowledges each one
//! (PUBACK for QoS 1, PUBREC for QoS 2) only from `commit_record`, after Kafka has it, in the
//! order the messages arrived.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use connector_core::backoff::BackoffConfig;
use connector_core::template::Template;
use connector_core::{
    Error, Headers, RecordMetadata, Result, SourceRecord, SourceTask, SourceTaskContext,
};
use connector_mqtt_common::{wait_connected, ConnectionSettings, Status};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::event_loop::{self, Incoming, LoopSettings, Received, Session};
use crate::render;

/// Most records returned by one poll.
const MAX_BATCH: usize = 1000;

/// Everything one task needs: its own client id and filters, and the connector's templates.
#[derive(Debug, Clone)]
pub struct MqttSourceTaskConfig {
    /// Connection settings, with this task's client id.
    pub connection: ConnectionSettings,
    /// Filters to subscribe to (already `$share/`-prefixed for several tasks).
    pub filters: Vec<String>,
    /// Subscription QoS.
    pub qos: QoS,
    /// Kafka topic template.
    pub kafka_topic: Template,
    /// Key template.
    pub key: Template,
    /// Forward retained messages or not.
    pub skip_retained: bool,
    /// Most unacknowledged messages held (size of the hand-over channel).
    pub inflight: usize,
    /// Reconnect backoff.
    pub reconnect_backoff: BackoffConfig,
}

/// One received message not yet acknowledged to the broker.
#[derive(Debug)]
struct Unacked {
    pkid: u16,
    qos: QoS,
    generation: u64,
    /// Handed to the runtime as a record (else skipped: acknowledged once all before it are).
    forwarded: bool,
}

struct Running {
    client: AsyncClient,
    rx: mpsc::Receiver<Incoming>,
    session: Arc<Session>,
    event_loop: JoinHandle<()>,
    unacked: VecDeque<Unacked>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A dropped task (a crash, from the broker's point of view) must not keep the connection.
        self.event_loop.abort();
    }
}

/// Counters of one MQTT source task.
#[derive(Debug, Default)]
pub struct MqttSourceCounters {
    /// Retained messages not forwarded (`skip_retained`).
    pub skipped_retained: AtomicU64,
    /// Messages not acknowledged because their connection was lost before Kafka had them (the
    /// broker redelivers them).
    pub stale_acks: AtomicU64,
}

/// Reads one MQTT client's messages. See the crate docs for the delivery contract.
pub struct MqttSourceTask {
    config: MqttSourceTaskConfig,
    running: Option<Running>,
    pending_error: Option<Error>,
    counters: Arc<MqttSourceCounters>,
}

impl std::fmt::Debug for MqttSourceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSourceTask")
            .field("client_id", &self.config.connection.client_id)
            .field("filters", &self.config.filters)
            .finish_non_exhaustive()
    }
}

impl MqttSourceTask {
    /// A task for `config`; it connects in `start`.
    pub fn new(config: MqttSourceTaskConfig) -> Self {
        Self { config, running: None, pending_error: None, counters: Arc::default() }
    }

    /// The task's counters.
    pub fn counters(&self) -> Arc<MqttSourceCounters> {
        Arc::clone(&self.counters)
    }

    fn record(&self, msg: Received) -> SourceRecord {
        let Received { publish, received, .. } = msg;
        let mut headers = Headers::with_capacity(4);
        headers.push("mqtt.topic", Bytes::copy_from_slice(publish.topic.as_bytes()));
        headers.push("mqtt.qos", Bytes::from_static(qos_name(publish.qos)));
        headers.push("mqtt.retain", Bytes::from_static(bool_name(publish.retain)));
        headers.push("mqtt.dup", Bytes::from_static(bool_name(publish.dup)));
        let mut rejected = None;
        let topic = match render::kafka_topic(&self.config.kafka_topic, &publish.topic) {
            Ok(t) => t,
            Err(why) => {
                rejected = Some(why);
                publish.topic.replace('/', ".")
            }
        };
        let key = match render::key(&self.config.key, &publish.topic) {
            Ok(k) => k,
            Err(why) => {
                rejected.get_or_insert(why);
                None
            }
        };
        SourceRecord {
            topic,
            partition: None,
            key,
            value: Some(publish.payload),
            headers,
            timestamp: Some(received),
            source_partition: Default::default(),
            source_offset: None,
            rejected,
        }
    }
}

fn qos_name(q: QoS) -> &'static [u8] {
    match q {
        QoS::AtMostOnce => b"0",
        QoS::AtLeastOnce => b"1",
        QoS::ExactlyOnce => b"2",
    }
}

fn bool_name(b: bool) -> &'static [u8] {
    if b {
        b"true"
    } else {
        b"false"
    }
}

/// Acknowledges one message, if it arrived on the current connection.
fn ack(running: &Running, u: &Unacked, counters: &MqttSourceCounters) -> Result<()> {
    if u.qos == QoS::AtMostOnce {
        return Ok(());
    }
    let generation = running.session.generation.lock();
    if *generation != u.generation {
        counters.stale_acks.fetch_add(1, Ordering::Relaxed);
        debug!(pkid = u.pkid, "message arrived on an earlier connection; the broker redelivers it");
        return Ok(());
    }
    let mut publish = Publish::new("", u.qos, Vec::new());
    publish.pkid = u.pkid;
    running.client.try_ack(&publish).map_err(|e| {
        Error::retriable(format!("cannot queue the acknowledgement of packet {}", u.pkid))
            .with_source(e)
    })
}

/// Acknowledges skipped messages at the front: nothing before them is waiting any more.
fn ack_skipped_prefix(running: &mut Running, counters: &MqttSourceCounters) -> Result<()> {
    while running.unacked.front().is_some_and(|u| !u.forwarded) {
        if let Some(u) = running.unacked.pop_front() {
            ack(running, &u, counters)?;
        }
    }
    Ok(())
}

#[async_trait]
impl SourceTask for MqttSourceTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        let c = &self.config;
        let options = c.connection.options(true)?;
        let (client, mut eventloop) =
            AsyncClient::new(options, connector_mqtt_common::MAX_PACKET_IDS + 64);
        eventloop.set_network_options(c.connection.network_options());
        let (tx, rx) = mpsc::channel(c.inflight.max(1));
        let session = Arc::new(Session::default());
        let (status_tx, mut status) = watch::channel(Status::default());
        let settings = LoopSettings {
            url: c.connection.url.clone(),
            client_id: c.connection.client_id.clone(),
            filters: c.filters.iter().map(|f| (f.clone(), c.qos)).collect(),
            backoff: c.reconnect_backoff,
        };
        let event_loop = tokio::spawn(event_loop::run(
            eventloop,
            client.clone(),
            tx,
            Arc::clone(&session),
            status_tx,
            settings,
        ));
        let running = Running { client, rx, session, event_loop, unacked: VecDeque::new() };

        // Wait (bounded) for the first connection, so a wrong URL or credentials fail the start
        // instead of retrying silently forever. Only the status is watched: messages stay queued.
        let limit = c.connection.connect_timeout * 3;
        wait_connected(&mut status, limit, &c.connection.url).await?;
        info!(connector = ctx.connector(), task = ctx.task_id(), client_id = %c.connection.client_id, "MQTT source task started");
        self.running = Some(running);
        Ok(())
    }

    /// Cancel-safe: waits on the channel (cancel-safe), then only does synchronous work.
    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let Some(running) = self.running.as_mut() else {
            return Err(Error::fatal("MQTT source task polled before start"));
        };
        let Some(first) = running.rx.recv().await else {
            return Err(Error::fatal("the MQTT event loop stopped"));
        };
        let mut incoming = Vec::with_capacity(16);
        incoming.push(first);
        while incoming.len() < MAX_BATCH {
            match running.rx.try_recv() {
                Ok(i) => incoming.push(i),
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(incoming.len());
        let mut unacked = Vec::with_capacity(incoming.len());
        for i in incoming {
            match i {
                Incoming::Failed(e) => {
                    self.pending_error = Some(e);
                    break;
                }
                Incoming::Message(m) => {
                    let p = &m.publish;
                    let forwarded = !(self.config.skip_retained && p.retain);
                    unacked.push(Unacked {
                        pkid: p.pkid,
                        qos: p.qos,
                        generation: m.generation,
                        forwarded,
                    });
                    if forwarded {
                        records.push(self.record(m));
                    } else {
                        self.counters.skipped_retained.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let counters = Arc::clone(&self.counters);
        if let Some(running) = self.running.as_mut() {
            running.unacked.extend(unacked);
            ack_skipped_prefix(running, &counters)?;
        }
        if records.is_empty() {
            if let Some(e) = self.pending_error.take() {
                return Err(e);
            }
        }
        Ok(records)
    }

    async fn commit_record(
        &mut self,
        _record: SourceRecord,
        _metadata: Option<RecordMetadata>,
    ) -> Result<()> {
        let counters = Arc::clone(&self.counters);
        let Some(running) = self.running.as_mut() else {
            return Err(Error::fatal("commit_record before start"));
        };
        // Records are committed in poll order, which is receive order: this record's message is
        // the first forwarded one still waiting. Skipped ones before it are acknowledged first.
        loop {
            let Some(u) = running.unacked.pop_front() else {
                return Err(Error::fatal("commit_record for a record this task did not hand out"));
            };
            ack(running, &u, &counters)?;
            if u.forwarded {
                break;
            }
        }
        ack_skipped_prefix(running, &counters)
    }

    async fn stop(&mut self) -> Result<()> {
        let Some(mut running) = self.running.take() else { return Ok(()) };
        // Queued acknowledgements go out before the DISCONNECT (same queue); the session stays.
        if running.client.try_disconnect().is_ok() {
            let wait = tokio::time::timeout(Duration::from_secs(5), &mut running.event_loop).await;
            if wait.is_err() {
                warn!(client_id = %self.config.connection.client_id, "MQTT event loop did not stop in time");
            }
        }
        let pending = running.unacked.len();
        if pending > 0 {
            debug!(pending, "messages left unacknowledged; the broker redelivers them");
        }
        Ok(())
    }
}
