//! [`MqttSinkTask`]: publishes each record, many in flight at once, and reports from
//! `pre_commit` only the offsets whose publishes the broker acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use connector_core::backoff::BackoffConfig;
use connector_core::template::Template;
use connector_core::{Error, Result, SinkRecord, SinkTask, SinkTaskContext, TopicPartition};
use connector_mqtt_common::{publish_size, wait_connected, ConnectionSettings, Session, Status};
use rumqttc::QoS;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{SinkSparkplugConfig, Tombstones};
use crate::event_loop::{self, LoopSettings, Shared};
use crate::exactly_once::Stored;
use crate::properties::{self, Outcome, PropertyRules};
use crate::render;
use crate::sparkplug::{self, Births};
use crate::tracker::{Publication, Tracker};

/// Everything one sink task needs.
#[derive(Debug, Clone)]
pub struct MqttSinkTaskConfig {
    /// Connection settings, with this task's client id.
    pub connection: ConnectionSettings,
    /// MQTT topic template; `None` only with `sparkplug` (the topic comes from the record key).
    pub mqtt_topic: Option<Template>,
    /// `format = "sparkplug_b"`: records are JSON commands, published as NCMD/DCMD; `None`:
    /// `format = "raw"`.
    pub sparkplug: Option<SinkSparkplugConfig>,
    /// Publish QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Header that overrides the retain flag.
    pub retain_header: Option<String>,
    /// What to do with tombstones.
    pub tombstones: Tombstones,
    /// Most publishes in flight.
    pub inflight: usize,
    /// `exactly_once = true`: the QoS 2 packet-id state is kept in the task's state store.
    pub exactly_once: bool,
    /// Reconnect backoff.
    pub reconnect_backoff: BackoffConfig,
    /// MQTT 5 properties and expiry.
    pub properties: PropertyRules,
}

/// Counters of one MQTT sink task.
#[derive(Debug, Default)]
pub struct MqttSinkCounters {
    /// Records not published because their message expiry interval had passed.
    pub expired: AtomicU64,
}

/// Publishes records of its partitions to MQTT. See the crate docs for the delivery contract.
pub struct MqttSinkTask {
    config: MqttSinkTaskConfig,
    ctx: Option<SinkTaskContext>,
    /// The error policy did not tolerate a refused publish: the task has failed.
    report_failed: Option<Error>,
    shared: Option<Arc<Shared>>,
    event_loop: Option<JoinHandle<()>>,
    stop: CancellationToken,
    counters: Arc<MqttSinkCounters>,
}

impl std::fmt::Debug for MqttSinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSinkTask")
            .field("client_id", &self.config.connection.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for MqttSinkTask {
    fn drop(&mut self) {
        if let Some(h) = &self.event_loop {
            h.abort();
        }
    }
}

impl MqttSinkTask {
    /// A task for `config`; it connects in `start`.
    pub fn new(config: MqttSinkTaskConfig) -> Self {
        Self {
            config,
            ctx: None,
            report_failed: None,
            shared: None,
            event_loop: None,
            stop: CancellationToken::new(),
            counters: Arc::default(),
        }
    }

    /// The task's counters.
    pub fn counters(&self) -> Arc<MqttSinkCounters> {
        Arc::clone(&self.counters)
    }

    fn shared(&self) -> Result<&Arc<Shared>> {
        self.shared.as_ref().ok_or_else(|| Error::fatal("MQTT sink task used before start"))
    }

    fn retain(&self, r: &SinkRecord) -> Result<bool> {
        let Some(h) = &self.config.retain_header else { return Ok(self.config.retain) };
        match r.headers.last(h).map(|v| v.as_ref()) {
            None => Ok(self.config.retain),
            Some(b"true" | b"1") => Ok(true),
            Some(b"false" | b"0") => Ok(false),
            Some(other) => Err(Error::rejected(format!(
                "header {h:?} is {:?}; retain_header expects true/false/1/0",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Hands every refused publish to the error policy (through the context's errant-record
    /// reporter), marking each done once the policy took it. The first one the policy does not
    /// tolerate fails the task; its offset is never committed.
    async fn settle_refused(&mut self) -> Result<()> {
        if let Some(e) = &self.report_failed {
            return Err(e.clone());
        }
        let shared = Arc::clone(self.shared()?);
        let ctx =
            self.ctx.as_ref().ok_or_else(|| Error::fatal("MQTT sink task used before start"))?;
        loop {
            let Some(r) = shared.tracker.lock().take_refused() else { return Ok(()) };
            let p = &r.publication;
            warn!(topic = %p.tp.topic, partition = p.tp.partition, offset = p.offset, error = %r.error, "publish refused; handing the record to the error policy");
            match ctx.report(&p.record, &r.error, &r.context).await {
                Ok(()) => {
                    shared.tracker.lock().settled(p);
                    shared.changed.notify_waiters();
                }
                Err(e) => {
                    // Fatal: this record was accepted by an earlier `put`, so it must never be
                    // taken for a record of the batch being put now.
                    let e = e.into_fatal();
                    self.report_failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// Waits until `done` holds for the tracker, handing refused publishes to the error policy
    /// meanwhile.
    async fn wait_settling(&mut self, mut done: impl FnMut(&Tracker) -> bool) -> Result<()> {
        loop {
            self.settle_refused().await?;
            let shared = Arc::clone(self.shared()?);
            Self::wait_until(&shared, |t| t.has_refused() || done(t)).await?;
            if !shared.tracker.lock().has_refused() {
                return Ok(());
            }
        }
    }

    /// Waits until `done` holds for the tracker, or the connection failed for good.
    async fn wait_until(shared: &Shared, mut done: impl FnMut(&Tracker) -> bool) -> Result<()> {
        loop {
            let notified = shared.changed.notified();
            {
                let t = shared.tracker.lock();
                if let Some(e) = &t.failed {
                    return Err(e.clone());
                }
                if done(&t) {
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

#[async_trait]
impl SinkTask for MqttSinkTask {
    async fn start(&mut self, ctx: SinkTaskContext) -> Result<()> {
        let c = &self.config;
        let session = Session::new(c.connection.clone())?;
        let learning = c.sparkplug.as_ref().filter(|s| s.learn_births);
        let shared = Arc::new(Shared {
            births: learning.map(|s| Births::new(s.max_nodes)),
            ..Shared::default()
        });
        let state = if c.exactly_once {
            // Before the first connection: its PUBRELs and DUP publishes come from this state.
            let client_id = &c.connection.client_id;
            let stored = Stored::from_map(&ctx.state().load().await?, client_id)?;
            info!(
                client_id = %client_id,
                namespace = ctx.state().namespace(),
                sent = stored.sent.len(),
                released = stored.released.len(),
                partitions = stored.done.len(),
                "exactly once: resuming the QoS 2 state of the MQTT session"
            );
            shared.tracker.lock().exactly_once(stored);
            Some(ctx.state().clone())
        } else {
            None
        };
        let (status_tx, mut status) = watch::channel(Status::default());
        let settings = LoopSettings {
            url: c.connection.url.clone(),
            client_id: c.connection.client_id.clone(),
            backoff: c.reconnect_backoff,
            write_timeout: c.connection.connect_timeout.max(Duration::from_secs(1)),
            window: c.inflight.max(1),
            max_packet: c.connection.max_packet_size,
            commit: ctx.commit_requester(),
            counters: ctx.counters().clone(),
            subscribe: learning.map(|s| sparkplug::birth_filters(&s.groups)).unwrap_or_default(),
            state,
        };
        shared.tracker.lock().max_packet = c.connection.max_packet_size;
        self.event_loop = Some(tokio::spawn(event_loop::run(
            session,
            Arc::clone(&shared),
            status_tx,
            settings,
            self.stop.clone(),
        )));
        self.shared = Some(shared);

        let limit = c.connection.connect_timeout * 3;
        wait_connected(&mut status, limit, &c.connection.url).await?;
        info!(connector = ctx.connector(), task = ctx.task_id(), client_id = %c.connection.client_id, "MQTT sink task started");
        self.ctx = Some(ctx);
        Ok(())
    }

    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        self.settle_refused().await?;
        let shared = Arc::clone(self.shared()?);
        let window = self.config.inflight.max(1);
        let version = self.config.connection.version;
        let now = connector_core::Timestamp::now();
        for r in records {
            {
                let mut t = shared.tracker.lock();
                t.offering(&r.topic_partition(), r.offset);
                if t.handled(&r.topic_partition(), r.offset) {
                    // Exactly once: the broker has it already, or it is in flight.
                    continue;
                }
            }
            let context = |e: Error| {
                // Exactly once: a record sent before a crash and refused now releases its id.
                shared.tracker.lock().not_published(&r.topic_partition(), r.offset);
                shared.work.notify_one();
                e.with_topic(&*r.topic).with_partition(r.partition).with_offset(r.offset)
            };
            let (topic, payload) = match (&self.config.sparkplug, &self.config.mqtt_topic) {
                (Some(_), template) => {
                    // `validate` refuses tombstones = "publish" here: an empty payload is no command.
                    let Some(v) = &r.value else {
                        shared.tracker.lock().skipped(&r.topic_partition(), r.offset);
                        continue;
                    };
                    let (topic, target) = sparkplug::route(template.as_ref(), r)
                        .map_err(|m| context(Error::rejected(m)))?;
                    let now_ms = u64::try_from(now.as_millis()).unwrap_or(0);
                    let payload = sparkplug::encode(shared.births.as_ref(), &target, v, now_ms)
                        .map_err(|m| {
                            context(Error::rejected(format!(
                                "cannot encode the record as a Sparkplug command to {topic}: {m}; not published"
                            )))
                        })?;
                    (topic, payload)
                }
                (None, Some(template)) => {
                    let payload = match (&r.value, self.config.tombstones) {
                        (Some(v), _) => v.clone(),
                        (None, Tombstones::Publish) => Bytes::new(),
                        (None, Tombstones::Skip) => {
                            shared.tracker.lock().skipped(&r.topic_partition(), r.offset);
                            continue;
                        }
                    };
                    let topic =
                        render::mqtt_topic(template, r).map_err(|m| context(Error::rejected(m)))?;
                    (topic, payload)
                }
                (None, None) => {
                    return Err(Error::fatal(
                        "MQTT sink task without mqtt_topic (format = \"raw\")",
                    ))
                }
            };
            let retain = self.retain(r).map_err(context)?;
            let properties = match properties::outcome(r, &self.config.properties, now) {
                Ok(Outcome::Publish(p)) => p,
                Ok(Outcome::Expired) => {
                    shared.tracker.lock().skipped(&r.topic_partition(), r.offset);
                    self.counters.expired.fetch_add(1, Ordering::Relaxed);
                    debug!(topic = %r.topic, partition = r.partition, offset = r.offset, "not publishing an expired record");
                    continue;
                }
                Err(e) => return Err(context(e)),
            };
            let qos = self.config.qos;
            let size = publish_size(version, &topic, payload.len(), qos, properties.as_deref());
            let max_packet = shared.tracker.lock().max_packet;
            if size > max_packet {
                return Err(context(Error::rejected(format!(
                    "its PUBLISH of {size} bytes to MQTT topic {topic} exceeds the maximum packet size of {max_packet} bytes (the broker's or max_packet_size); not published"
                ))));
            }
            if shared.tracker.lock().pending() >= window {
                // Let the event loop send what is queued, and wait for room.
                shared.work.notify_one();
                self.wait_settling(|t| t.pending() < window).await?;
            }
            let publication = Publication {
                seq: 0,
                tp: r.topic_partition(),
                offset: r.offset,
                topic,
                payload,
                qos,
                retain,
                properties,
                size,
                record: r.clone(),
                suspect: false,
                strikes: 0,
            };
            shared.tracker.lock().add(publication);
        }
        shared.work.notify_one();
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        // After a refusal the policy did not tolerate, the offsets before it are still safe.
        if self.report_failed.is_none() {
            self.settle_refused().await?;
        }
        let shared = self.shared()?;
        let mut t = shared.tracker.lock();
        if let Some(e) = &t.failed {
            return Err(e.clone());
        }
        // Exactly once: records sent before a crash below the offered offsets will not come.
        for (tp, next) in offsets {
            t.offering(tp, *next);
        }
        shared.work.notify_one();
        Ok(t.safe_offsets(offsets))
    }

    /// Waits until every publish handed over so far is acknowledged, or refused and handled by
    /// the error policy.
    async fn flush(&mut self, _offsets: &HashMap<TopicPartition, i64>) -> Result<()> {
        self.wait_settling(|t| t.pending() == 0).await
    }

    async fn stop(&mut self) -> Result<()> {
        let Some(shared) = self.shared.take() else { return Ok(()) };
        let (pending, saves) = {
            let t = shared.tracker.lock();
            (t.pending(), t.saves())
        };
        if self.config.exactly_once {
            info!(client_id = %self.config.connection.client_id, saves, "exactly once: QoS 2 state saves made by this task");
        }
        if pending > 0 {
            debug!(
                pending,
                "stopping with unacknowledged publishes; their offsets were not committed"
            );
        }
        // The event loop sends DISCONNECT and ends.
        self.stop.cancel();
        if let Some(h) = self.event_loop.as_mut() {
            if tokio::time::timeout(Duration::from_secs(5), &mut *h).await.is_err() {
                // Aborted: a loop stuck in a save or a write must not go on after the task
                // stopped (with exactly once, a newer instance may be running already).
                warn!(client_id = %self.config.connection.client_id, "MQTT event loop did not stop in time; aborting it");
                h.abort();
                let _ = h.await;
            }
        }
        Ok(())
    }
}
