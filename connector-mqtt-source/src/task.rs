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
use connector_core::runtime::{CommitRequester, Counter};
use connector_core::template::Template;
use connector_core::{
    Error, Headers, RecordMetadata, Result, SourceRecord, SourceTask, SourceTaskContext,
};
use connector_mqtt_common::{
    headers, wait_connected, ConnectionSettings, Message, Session, Status,
};
use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{state_topic, ExpiredMessages, SparkplugMode, SparkplugSourceConfig};
use crate::event_loop::{
    self, Ack, Acks, Incoming, LoopChannels, LoopSettings, Received, MAX_BATCH,
};
use crate::qos2::{Qos2Publish, Qos2State};
use crate::render;
use crate::sparkplug::{self, Base, Sparkplug};

/// Most records returned by one poll (a little more when a batch straddles it).
const MAX_POLL: usize = 1000;

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
    /// What to do with an MQTT 5 message whose expiry interval has passed.
    pub expired_messages: ExpiredMessages,
    /// Sparkplug B decoding (`format = "sparkplug_b"`); `None`: payloads as they are.
    pub sparkplug: Option<SparkplugSourceConfig>,
    /// Exactly once (QoS 2 receiver state kept with the records; docs/delivery-guarantees.md).
    pub exactly_once: bool,
}

/// Most Rebirth requests waiting for the event loop; more are dropped (they are QoS 0 anyway,
/// and asked again after `rebirth_interval_ms`).
const PUBLISH_QUEUE: usize = 1024;

/// One received message not yet acknowledged to the broker.
#[derive(Debug)]
struct Unacked {
    pkid: u16,
    qos: QoS,
    generation: u64,
    /// Records of this message handed to the runtime and not committed yet. A message with none
    /// (skipped, or a Sparkplug message that makes no record) is acknowledged once every message
    /// before it is; one with several once the last of them is committed.
    records: usize,
    /// Its records carry Sparkplug state (a BIRTH or DEATH) as source offsets: it is
    /// acknowledged only once the offset store has them (`commit`), or a crash right after the
    /// acknowledgement would lose the state the broker no longer redelivers.
    durable: bool,
    /// Exactly once: a PUBREL, answered with PUBCOMP once its offset-only record is committed.
    pubcomp: bool,
}

struct Running {
    rx: mpsc::Receiver<Incoming>,
    acks: Arc<Acks>,
    stop: CancellationToken,
    event_loop: JoinHandle<()>,
    unacked: VecDeque<Unacked>,
    /// Acknowledgements collected by `commit_records`, released together.
    releasing: Vec<(Ack, u64)>,
    /// Acknowledgements from the first `durable` message on, waiting for the offset store
    /// (acknowledgements go out in receive order, so everything after it waits too).
    held: Vec<(Ack, u64)>,
    /// Asks the runtime to save the offsets soon while acknowledgements are held for them,
    /// rather than at the next `offset_flush_interval_ms`.
    flush: CommitRequester,
    /// Messages for the event loop to publish (Sparkplug Rebirth requests).
    publish: mpsc::Sender<Message>,
    /// `sparkplug_rebirth_requests_total`, exported with the runtime's metrics.
    rebirth_metric: Counter,
    /// `sparkplug_invalid_messages_total`.
    invalid_metric: Counter,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A dropped task (a crash, from the broker's point of view) must not keep the connection.
        self.event_loop.abort();
    }
}

impl Running {
    /// Counts one committed record against the message at the front of the queue, and takes the
    /// acknowledgement of that message once all its records are committed (and of skipped ones
    /// after it). Records are committed in poll order, which is receive order.
    fn next_forwarded(&mut self) -> Result<()> {
        self.skipped_prefix();
        let Some(front) = self.unacked.front_mut() else {
            return Err(Error::fatal("commit_record for a record this task did not hand out"));
        };
        front.records -= 1;
        if front.records == 0 {
            if let Some(u) = self.unacked.pop_front() {
                self.take(&u);
            }
        }
        self.skipped_prefix();
        Ok(())
    }

    /// Takes messages without records at the front: nothing before them is waiting any more.
    fn skipped_prefix(&mut self) {
        while self.unacked.front().is_some_and(|u| u.records == 0) {
            if let Some(u) = self.unacked.pop_front() {
                self.take(&u);
            }
        }
    }

    /// Queues the acknowledgement of a message whose records are all committed: released with
    /// the run, or held for the offset store (see [`Unacked::durable`]).
    fn take(&mut self, u: &Unacked) {
        let ack = if u.pubcomp { Some(Ack::PubComp(u.pkid)) } else { Ack::of(u.pkid, u.qos) };
        // QoS 0: nothing to send, nothing to keep in order (and `held` stays bounded by the
        // broker's QoS 1/2 window).
        let Some(ack) = ack else { return };
        let ack = (ack, u.generation);
        if u.durable || !self.held.is_empty() {
            self.held.push(ack);
            self.flush.request();
        } else {
            self.releasing.push(ack);
        }
    }

    /// The offset store has every committed record's offsets: the held acknowledgements go.
    fn durable(&mut self) {
        self.releasing.append(&mut self.held);
    }

    /// Hands the collected acknowledgements to the event loop.
    fn release(&mut self, counters: &MqttSourceCounters) {
        if self.releasing.is_empty() {
            return;
        }
        let stale = self.acks.release(self.releasing.drain(..));
        if stale > 0 {
            counters.stale_acks.fetch_add(stale, Ordering::Relaxed);
            debug!(stale, "messages arrived on an earlier connection; the broker redelivers them");
        }
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
    /// MQTT 5 messages dropped because their expiry interval had passed
    /// (`expired_messages = "drop"`).
    pub expired_dropped: AtomicU64,
    /// Sparkplug Rebirth requests (NCMD `Node Control/Rebirth`) handed to the event loop.
    pub rebirths_requested: AtomicU64,
    /// Sparkplug Rebirth requests not published: the event loop's queue was full, or
    /// `request_rebirths = false`.
    pub rebirths_dropped: AtomicU64,
    /// Sparkplug messages that could not be used (sent to the error policy).
    pub sparkplug_invalid: AtomicU64,
    /// Exactly once: redelivered QoS 2 messages whose packet id was recorded (Kafka has them),
    /// acknowledged without being written again.
    pub qos2_duplicates: AtomicU64,
}

/// Reads one MQTT client's messages. See the crate docs for the delivery contract.
pub struct MqttSourceTask {
    config: MqttSourceTaskConfig,
    running: Option<Running>,
    sparkplug: Option<Sparkplug>,
    pending_error: Option<Error>,
    counters: Arc<MqttSourceCounters>,
    /// Exactly once: the QoS 2 receiver state (restored in `start`).
    qos2: Option<Qos2State>,
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
        let sparkplug = config.sparkplug.as_ref().map(Sparkplug::new);
        Self {
            config,
            running: None,
            sparkplug,
            pending_error: None,
            counters: Arc::default(),
            qos2: None,
        }
    }

    /// The task's counters.
    pub fn counters(&self) -> Arc<MqttSourceCounters> {
        Arc::clone(&self.counters)
    }

    /// The records of one message: one as it is (raw, or too large to read), or what Sparkplug
    /// makes of it.
    /// Returns how many records it made, and whether they carry state for the offset store.
    fn records(&mut self, msg: Received, out: &mut Vec<SourceRecord>) -> (usize, bool) {
        let qos = msg.publish.qos;
        let Some(sparkplug) = self.sparkplug.as_mut().filter(|_| msg.oversize.is_none()) else {
            out.push(self.record(msg));
            return (1, false);
        };
        let base = Base {
            message: &msg.publish,
            topic: render::kafka_topic(&self.config.kafka_topic, &msg.publish.topic),
            headers: mqtt_headers(&msg.publish),
            received: msg.received,
            generation: msg.generation,
        };
        let output = sparkplug.records(base, sparkplug::now_ms());
        if output.records.iter().any(|r| r.rejected.is_some()) {
            self.counters.sparkplug_invalid.fetch_add(1, Ordering::Relaxed);
            if let Some(running) = &self.running {
                running.invalid_metric.inc();
            }
        }
        if let Some(rebirth) = output.rebirth {
            self.request_rebirth(rebirth);
        }
        let n = output.records.len();
        // Holding the acknowledgement helps only where the broker would redeliver the message:
        // a persistent session and QoS 1/2 (a primary host's clean session redelivers nothing).
        let persistent = self.config.sparkplug.as_ref().is_some_and(|s| {
            s.mode == SparkplugMode::Persistent && !self.config.connection.clean_session
        });
        let durable = persistent
            && qos != QoS::AtMostOnce
            && output.records.iter().any(|r| r.source_offset.is_some());
        out.extend(output.records);
        (n, durable)
    }

    /// Hands a Rebirth request to the event loop, never waiting for it.
    fn request_rebirth(&mut self, rebirth: connector_sparkplug::host::Rebirth) {
        let Some(running) = &self.running else { return };
        if self.config.sparkplug.as_ref().is_some_and(|s| !s.request_rebirths) {
            self.counters.rebirths_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %rebirth.topic, reason = %rebirth.reason, "a rebirth would be asked for (request_rebirths = false)");
            return;
        }
        info!(topic = %rebirth.topic, reason = %rebirth.reason, "requesting a Sparkplug rebirth");
        match running.publish.try_send(sparkplug::rebirth_message(rebirth.clone())) {
            Ok(()) => {
                self.counters.rebirths_requested.fetch_add(1, Ordering::Relaxed);
                running.rebirth_metric.inc();
            }
            Err(_) => {
                self.counters.rebirths_dropped.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %rebirth.topic, "Rebirth request not sent: the MQTT event loop's queue is full; asked again later");
                // The node's rate limit is given back; tick() asks again.
                if let Some(sp) = self.sparkplug.as_mut() {
                    sp.rebirth_not_sent(&rebirth, sparkplug::now_ms());
                }
            }
        }
    }

    fn record(&self, msg: Received) -> SourceRecord {
        let Received { publish, received, oversize, .. } = msg;
        // One copy of the MQTT topic serves the `mqtt.topic` header and a `{topic}` key.
        let topic_bytes = Bytes::copy_from_slice(publish.topic.as_bytes());
        let mut record_headers = mqtt_headers_with(&publish, topic_bytes.clone());
        let mut rejected = None;
        if let Some(size) = oversize {
            record_headers.push(headers::PACKET_SIZE, Bytes::from(size.to_string()));
            rejected = Some(format!(
                "MQTT message on {:?} is {size} bytes, over max_packet_size ({} bytes); its payload was dropped",
                publish.topic, self.config.connection.max_packet_size
            ));
        }
        let topic = match render::kafka_topic(&self.config.kafka_topic, &publish.topic) {
            Ok(t) => t,
            Err(why) => {
                rejected = Some(why);
                publish.topic.replace('/', ".")
            }
        };
        let key = match render::key_with(&self.config.key, &publish.topic, &topic_bytes) {
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
            value: oversize.is_none().then_some(publish.payload),
            headers: record_headers,
            timestamp: Some(received),
            source_partition: Default::default(),
            source_offset: None,
            rejected,
        }
    }
}

/// The `mqtt.*` headers of a message, and its MQTT 5 properties.
fn mqtt_headers(publish: &Message) -> Headers {
    mqtt_headers_with(publish, Bytes::copy_from_slice(publish.topic.as_bytes()))
}

/// [`mqtt_headers`] with the topic's bytes already made.
fn mqtt_headers_with(publish: &Message, topic: Bytes) -> Headers {
    let mut h = Headers::with_capacity(4);
    h.push(headers::TOPIC, topic);
    h.push(headers::QOS, Bytes::from_static(qos_name(publish.qos)));
    h.push(headers::RETAIN, Bytes::from_static(bool_name(publish.retain)));
    h.push(headers::DUP, Bytes::from_static(bool_name(publish.dup)));
    if let Some(p) = &publish.properties {
        v5_headers(p, &mut h);
    }
    h
}

/// MQTT 5 properties as headers: user properties under their own names (order and duplicates
/// kept), the others under `mqtt.*` names the MQTT sink reads back.
fn v5_headers(p: &connector_mqtt_common::PublishProperties, out: &mut Headers) {
    for (name, value) in &p.user_properties {
        out.push(name.clone(), Bytes::copy_from_slice(value.as_bytes()));
    }
    if let Some(ct) = &p.content_type {
        out.push(headers::CONTENT_TYPE, Bytes::copy_from_slice(ct.as_bytes()));
    }
    if let Some(rt) = &p.response_topic {
        out.push(headers::RESPONSE_TOPIC, Bytes::copy_from_slice(rt.as_bytes()));
    }
    if let Some(cd) = &p.correlation_data {
        out.push(headers::CORRELATION_DATA, cd.clone());
    }
    if let Some(pf) = p.payload_format_indicator {
        out.push(headers::PAYLOAD_FORMAT, Bytes::from(pf.to_string()));
    }
    if let Some(e) = p.message_expiry_interval {
        out.push(headers::MESSAGE_EXPIRY, Bytes::from(e.to_string()));
    }
}

/// Whether an MQTT 5 message's expiry interval (counted from when it was received) has passed.
fn expired(m: &Received, now: connector_core::Timestamp) -> bool {
    let Some(secs) = m.publish.properties.as_ref().and_then(|p| p.message_expiry_interval) else {
        return false;
    };
    now.as_millis() - m.received.as_millis() >= i64::from(secs) * 1000
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

#[async_trait]
impl SourceTask for MqttSourceTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        let c = &self.config;
        let session = Session::new(c.connection.clone())?;
        // Batches of up to MAX_BATCH messages: room for `inflight` messages in all.
        let (tx, rx) = mpsc::channel(c.inflight.div_ceil(MAX_BATCH).max(1));
        let acks = Arc::new(Acks::default());
        let (status_tx, mut status) = watch::channel(Status::default());
        let stop = CancellationToken::new();
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        if c.exactly_once {
            let state = Qos2State::restore(&c.connection.client_id, ctx.offsets())?;
            info!(connector = ctx.connector(), client_id = %c.connection.client_id, recorded = state.len(), "exactly once: QoS 2 packet ids restored from the offset store");
            self.qos2 = Some(state);
        }
        if let Some(sparkplug) = self.sparkplug.as_mut() {
            let restored = sparkplug.restore(ctx.offsets());
            info!(
                connector = ctx.connector(),
                restored, "Sparkplug edge-node state restored from the offset store"
            );
        }
        let state_topic = c
            .sparkplug
            .as_ref()
            .filter(|s| s.mode == SparkplugMode::PrimaryHost)
            .and_then(|s| s.host_id.as_deref())
            .map(state_topic);
        let settings = LoopSettings {
            url: c.connection.url.clone(),
            client_id: c.connection.client_id.clone(),
            filters: c.filters.iter().map(|f| (f.clone(), c.qos)).collect(),
            backoff: c.reconnect_backoff,
            write_timeout: c.connection.connect_timeout.max(Duration::from_secs(1)),
            buffer: c.inflight,
            max_packet_size: c.connection.max_packet_size,
            counters: ctx.counters().clone(),
            state_topic,
            exactly_once: c.exactly_once,
        };
        let channels = LoopChannels {
            tx,
            acks: Arc::clone(&acks),
            status: status_tx,
            stop: stop.clone(),
            publish: publish_rx,
        };
        let event_loop = tokio::spawn(event_loop::run(session, channels, settings));
        let running = Running {
            rx,
            acks,
            stop,
            event_loop,
            unacked: VecDeque::new(),
            releasing: Vec::new(),
            held: Vec::new(),
            flush: ctx.commit_requester(),
            publish,
            rebirth_metric: ctx.counters().counter(
                "sparkplug_rebirth_requests",
                "Sparkplug Rebirth requests (NCMD Node Control/Rebirth) handed to the MQTT connection",
                None,
            ),
            invalid_metric: ctx.counters().counter(
                "sparkplug_invalid_messages",
                "Sparkplug messages that could not be used (sent to the error policy)",
                None,
            ),
        };

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
        // Sparkplug: a seq gap's reorder deadline (epoch ms) wakes the poll to ask for a rebirth.
        let deadline = self.sparkplug.as_ref().and_then(Sparkplug::next_deadline);
        let first = tokio::select! {
            first = running.rx.recv() => Some(first),
            () = sleep_until_ms(deadline) => None,
        };
        let Some(first) = first else {
            let now = sparkplug::now_ms();
            let rebirths = self.sparkplug.as_mut().map(|s| s.tick(now)).unwrap_or_default();
            for r in rebirths {
                self.request_rebirth(r);
            }
            return Ok(Vec::new());
        };
        let Some(first) = first else {
            return Err(Error::fatal("the MQTT event loop stopped"));
        };
        let Some(running) = self.running.as_mut() else {
            return Err(Error::fatal("MQTT source task polled before start"));
        };
        let mut incoming = vec![first];
        let mut messages = incoming_len(&incoming[0]);
        while messages < MAX_POLL {
            match running.rx.try_recv() {
                Ok(i) => {
                    messages += incoming_len(&i);
                    incoming.push(i);
                }
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(messages);
        let mut unacked = Vec::with_capacity(messages);
        let now = connector_core::Timestamp::now();
        'batches: for i in incoming {
            match i {
                Incoming::Failed(e) => {
                    self.pending_error = Some(e);
                    break 'batches;
                }
                Incoming::ConnectionLost { at, generation } => {
                    let Some(sparkplug) = self.sparkplug.as_ref() else { continue };
                    let stale = sparkplug.connection_lost(&self.config.kafka_topic, at, generation);
                    info!(
                        nodes_and_devices = stale.len(),
                        "MQTT connection lost: their Sparkplug data is stale"
                    );
                    // Records of no MQTT message: nothing to acknowledge (QoS 0), kept in order.
                    let n = stale.len();
                    records.extend(stale);
                    unacked.push(Unacked {
                        pkid: 0,
                        qos: QoS::AtMostOnce,
                        generation,
                        records: n,
                        durable: false,
                        pubcomp: false,
                    });
                }
                Incoming::NewSession => {
                    let Some(state) = self.qos2.as_mut() else { continue };
                    info!(recorded = state.len(), "the MQTT broker did not keep the session: the recorded QoS 2 packet ids are void");
                    // Committed in order before any message of the new session counts.
                    records.push(state.new_session());
                    unacked.push(Unacked {
                        pkid: 0,
                        qos: QoS::AtMostOnce,
                        generation: 0,
                        records: 1,
                        durable: false,
                        pubcomp: false,
                    });
                }
                Incoming::Messages(batch) => {
                    for m in batch {
                        if m.released {
                            // Exactly once: PUBREL. The id is cleared in Kafka, then PUBCOMP.
                            let Some(state) = self.qos2.as_mut() else { continue };
                            records.push(state.release(m.publish.pkid));
                            unacked.push(Unacked {
                                pkid: m.publish.pkid,
                                qos: QoS::ExactlyOnce,
                                generation: m.generation,
                                records: 1,
                                durable: false,
                                pubcomp: true,
                            });
                            continue;
                        }
                        let mut offset = None;
                        if let Some(state) =
                            self.qos2.as_mut().filter(|_| m.publish.qos == QoS::ExactlyOnce)
                        {
                            match state.publish(m.publish.pkid, m.publish.dup) {
                                Qos2Publish::New(o) => {
                                    offset = Some((state.partition().clone(), o))
                                }
                                Qos2Publish::Duplicate => {
                                    // Kafka has it: PUBREC (in order) without writing the
                                    // message, after the commit of an offset-only record, so
                                    // an instance fenced by a newer one (whose transaction is
                                    // refused) never acknowledges it.
                                    self.counters.qos2_duplicates.fetch_add(1, Ordering::Relaxed);
                                    records.push(SourceRecord::offset_only(
                                        state.partition().clone(),
                                        state.offset(),
                                    ));
                                    unacked.push(Unacked {
                                        pkid: m.publish.pkid,
                                        qos: QoS::ExactlyOnce,
                                        generation: m.generation,
                                        records: 1,
                                        durable: false,
                                        pubcomp: false,
                                    });
                                    continue;
                                }
                            }
                        }
                        let p = &m.publish;
                        let retained = self.config.skip_retained && p.retain;
                        let drop_expired = !retained
                            && self.config.expired_messages == ExpiredMessages::Drop
                            && expired(&m, now);
                        let forwarded = !retained && !drop_expired;
                        let (pkid, qos, generation) = (p.pkid, p.qos, m.generation);
                        if forwarded {
                            let first = records.len();
                            let (n, durable) = self.records(m, &mut records);
                            if let Some((partition, o)) = offset {
                                // Raw format: one record per message, carrying the set.
                                for r in &mut records[first..] {
                                    r.source_partition = partition.clone();
                                    r.source_offset = Some(o.clone());
                                }
                            }
                            unacked.push(Unacked {
                                pkid,
                                qos,
                                generation,
                                records: n,
                                durable,
                                pubcomp: false,
                            });
                        } else if retained {
                            unacked.push(Unacked {
                                pkid,
                                qos,
                                generation,
                                records: 0,
                                durable: false,
                                pubcomp: false,
                            });
                            self.counters.skipped_retained.fetch_add(1, Ordering::Relaxed);
                        } else {
                            unacked.push(Unacked {
                                pkid,
                                qos,
                                generation,
                                records: 0,
                                durable: false,
                                pubcomp: false,
                            });
                            self.counters.expired_dropped.fetch_add(1, Ordering::Relaxed);
                            debug!(topic = %p.topic, "dropped an MQTT message whose expiry interval had passed");
                        }
                    }
                }
            }
        }
        let counters = Arc::clone(&self.counters);
        if let Some(running) = self.running.as_mut() {
            running.unacked.extend(unacked);
            running.skipped_prefix();
            running.release(&counters);
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
        let Some(running) = self.running.as_mut() else {
            return Err(Error::fatal("commit_record before start"));
        };
        let result = running.next_forwarded();
        running.release(&self.counters);
        result
    }

    /// All the run's acknowledgements go to the event loop together, to be written at once.
    async fn commit_records(
        &mut self,
        records: Vec<(SourceRecord, Option<RecordMetadata>)>,
    ) -> Result<()> {
        let Some(running) = self.running.as_mut() else {
            return Err(Error::fatal("commit_record before start"));
        };
        let mut result = Ok(());
        for _ in &records {
            if let Err(e) = running.next_forwarded() {
                result = Err(e);
                break;
            }
        }
        running.release(&self.counters);
        result
    }

    /// The offset store has the state of every committed record: acknowledgements held for it
    /// (from a Sparkplug BIRTH or DEATH on) go out now.
    async fn commit(&mut self) -> Result<()> {
        if let Some(running) = self.running.as_mut() {
            running.durable();
            running.release(&self.counters);
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        let Some(mut running) = self.running.take() else { return Ok(()) };
        // The event loop writes the queued acknowledgements, then DISCONNECT; the session stays.
        running.stop.cancel();
        let wait = tokio::time::timeout(Duration::from_secs(5), &mut running.event_loop).await;
        if wait.is_err() {
            warn!(client_id = %self.config.connection.client_id, "MQTT event loop did not stop in time");
        }
        let pending = running.unacked.len();
        if pending > 0 {
            debug!(pending, "messages left unacknowledged; the broker redelivers them");
        }
        Ok(())
    }
}

/// Sleeps until `deadline` (ms since the epoch), or forever without one.
async fn sleep_until_ms(deadline: Option<u64>) {
    match deadline {
        Some(d) => {
            let wait = d.saturating_sub(sparkplug::now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

fn incoming_len(i: &Incoming) -> usize {
    match i {
        Incoming::Messages(m) => m.len(),
        Incoming::Failed(_) | Incoming::ConnectionLost { .. } | Incoming::NewSession => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::Timestamp;
    use connector_mqtt_common::{Message, PublishProperties};

    fn received(properties: Option<PublishProperties>, received: Timestamp) -> Received {
        Received {
            publish: Message {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                pkid: 1,
                properties: properties.map(Box::new),
            },
            generation: 0,
            received,
            oversize: None,
            released: false,
        }
    }

    /// A message with several records is acknowledged after its last one, one with none after
    /// the message before it, and one carrying Sparkplug state (and all after it) only once the
    /// offset store has it.
    #[tokio::test]
    async fn acknowledgements_wait_for_every_record_and_state_for_the_offset_store() {
        let (_tx, rx) = mpsc::channel(1);
        let (publish, _published) = mpsc::channel(1);
        let mut r = Running {
            rx,
            acks: Arc::new(Acks::default()),
            stop: CancellationToken::new(),
            event_loop: tokio::spawn(async {}),
            unacked: VecDeque::new(),
            releasing: Vec::new(),
            held: Vec::new(),
            flush: CommitRequester::new(),
            publish,
            rebirth_metric: Counter::default(),
            invalid_metric: Counter::default(),
        };
        let u = |pkid, records, durable| Unacked {
            pkid,
            qos: QoS::AtLeastOnce,
            generation: 0,
            records,
            durable,
            pubcomp: false,
        };
        let pkids = |v: &[(Ack, u64)]| v.iter().map(|a| a.0.pkid()).collect::<Vec<_>>();
        r.unacked.extend([u(1, 2, false), u(2, 0, false), u(3, 1, true), u(4, 1, false)]);
        r.skipped_prefix();
        r.next_forwarded().unwrap();
        assert!(r.releasing.is_empty(), "one of its two records committed");
        r.next_forwarded().unwrap();
        assert_eq!(pkids(&r.releasing), [1, 2]);
        r.next_forwarded().unwrap();
        r.next_forwarded().unwrap();
        assert_eq!(pkids(&r.releasing), [1, 2]);
        assert_eq!(pkids(&r.held), [3, 4], "held for the offset store, in order");
        r.durable();
        assert_eq!(pkids(&r.releasing), [1, 2, 3, 4]);
        assert!(r.next_forwarded().is_err(), "no record left to commit");
    }

    #[test]
    fn expiry_counts_from_receipt_and_only_mqtt5_messages_expire() {
        let now = Timestamp::from_millis(100_000);
        let with = |secs| PublishProperties {
            message_expiry_interval: Some(secs),
            ..PublishProperties::default()
        };
        assert!(expired(&received(Some(with(5)), Timestamp::from_millis(95_000)), now));
        assert!(!expired(&received(Some(with(5)), Timestamp::from_millis(95_001)), now));
        assert!(!expired(&received(None, Timestamp::from_millis(0)), now));
    }

    #[test]
    fn v5_properties_become_headers_in_order_with_duplicates() {
        let p = PublishProperties {
            user_properties: vec![
                ("k".into(), "1".into()),
                ("j".into(), "2".into()),
                ("k".into(), "3".into()),
            ],
            content_type: Some("application/json".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\xff")),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(30),
            response_topic: Some("r".into()),
            ..PublishProperties::default()
        };
        let mut h = Headers::new();
        v5_headers(&p, &mut h);
        let got: Vec<(&str, &[u8])> = h.iter().map(|h| (&*h.key, h.value.as_ref())).collect();
        assert_eq!(
            got,
            [
                ("k", &b"1"[..]),
                ("j", b"2"),
                ("k", b"3"),
                ("mqtt.content_type", b"application/json"),
                ("mqtt.response_topic", b"r"),
                ("mqtt.correlation_data", b"\x00\xff"),
                ("mqtt.payload_format_indicator", b"1"),
                ("mqtt.message_expiry_interval", b"30"),
            ]
        );
    }
}
