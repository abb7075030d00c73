//! `format = "sparkplug_b"`: the source as a Sparkplug B host application. Every message goes
//! through a [`HostState`] (alias tables, seq and bdSeq checks), and becomes 0..n JSON records:
//! BIRTH and DEATH a status record (`online`/`offline`/`stale`), BIRTH and DATA their metrics
//! (one record per metric or per message), an unusable message one rejected record for the error
//! policy. Rebirth requests go back to the event loop to be published. The BIRTH/DEATH state of
//! each edge node rides on its records as source offset (`{"sparkplug_node": "group/node"}`), so
//! a restart rebuilds it from the offset store instead of asking every node for a rebirth.

use std::collections::HashMap;

use bytes::Bytes;
use connector_core::template::Template;
use connector_core::{Headers, OffsetMap, SourceOffset, SourcePartition, SourceRecord, Timestamp};
use connector_mqtt_common::Message;
use connector_sparkplug::host::{Event, HostConfig, HostState, Rebirth};
use connector_sparkplug::json::{self, Status};
use connector_sparkplug::{DeviceKey, MessageType, Metric, NodeKey, SparkplugTopic};
use rumqttc::QoS;
use serde_json::Map;
use tracing::{debug, warn};

use crate::config::{check_sparkplug_key, SparkplugOutput, SparkplugSourceConfig};
use crate::render;

/// Source-partition key under which a node's state is kept in the offset store.
pub(crate) const NODE_PARTITION: &str = "sparkplug_node";

/// Largest node state (JSON) kept in the offset store.
pub(crate) const MAX_STATE_BYTES: usize = 256 * 1024;

/// The offset of a node whose state was too large to keep.
const TOO_LARGE: &str = "too_large";

/// Record headers naming the Sparkplug topic parts.
pub(crate) const GROUP_HEADER: &str = "sparkplug.group";
/// See [`GROUP_HEADER`].
pub(crate) const NODE_HEADER: &str = "sparkplug.node";
/// See [`GROUP_HEADER`].
pub(crate) const DEVICE_HEADER: &str = "sparkplug.device";
/// See [`GROUP_HEADER`]: `NBIRTH`, `DDATA`, ...
pub(crate) const TYPE_HEADER: &str = "sparkplug.type";

/// The host application of one source task.
pub(crate) struct Sparkplug {
    host: HostState,
    output: SparkplugOutput,
    /// `None`: `group/node[/device]`.
    key: Option<Template>,
    forward_commands: bool,
    /// The last state handed out (or restored) per node: a BIRTH or DEATH that does not change
    /// it (a rebirth with the same metrics) carries no offset, so its acknowledgement does not
    /// wait for the offset store. Cleared when over `max_nodes` (bounded; only an optimisation).
    last: HashMap<NodeKey, Map<String, serde_json::Value>>,
    /// The MQTT connection of the last message: after a reconnect the seqs missed meanwhile
    /// (or redelivered) are no reason for a rebirth storm.
    generation: Option<u64>,
}

impl std::fmt::Debug for Sparkplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sparkplug").field("output", &self.output).finish_non_exhaustive()
    }
}

/// What the task passes in for each message: the parts of a raw record that stay the same.
pub(crate) struct Base<'a> {
    pub(crate) message: &'a Message,
    /// The Kafka topic (or why it cannot be rendered).
    pub(crate) topic: Result<String, String>,
    /// The usual `mqtt.*` headers (and MQTT 5 properties).
    pub(crate) headers: Headers,
    pub(crate) received: Timestamp,
    /// The MQTT connection it arrived on (see the event loop's `Acks`).
    pub(crate) generation: u64,
}

/// The records of one message, and the Rebirth it calls for.
pub(crate) struct Output {
    pub(crate) records: Vec<SourceRecord>,
    pub(crate) rebirth: Option<Rebirth>,
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millis()).unwrap_or(0)
}

fn ms_of(at: Timestamp) -> Option<u64> {
    u64::try_from(at.as_millis()).ok()
}

fn ts(ms: Option<u64>, fallback: Timestamp) -> Timestamp {
    ms.and_then(|m| i64::try_from(m).ok()).map_or(fallback, Timestamp::from_millis)
}

impl Sparkplug {
    pub(crate) fn new(config: &SparkplugSourceConfig) -> Self {
        let host = HostState::new(HostConfig {
            reorder_timeout_ms: config.reorder_timeout_ms,
            rebirth_interval_ms: config.rebirth_interval_ms,
            ..HostConfig::default()
        });
        // Checked by `validate`; an unparsable template falls back to the default key.
        let key = config.key.as_deref().and_then(|k| check_sparkplug_key(k).ok());
        Self {
            host,
            output: config.output,
            key,
            forward_commands: config.forward_commands,
            last: HashMap::new(),
            generation: None,
        }
    }

    /// Rebuilds every edge node whose state a previous run committed.
    pub(crate) fn restore(&mut self, offsets: &OffsetMap) -> usize {
        let mut restored = 0;
        for (partition, offset) in offsets.iter() {
            let Some(name) = partition.get_str(NODE_PARTITION) else { continue };
            let Some((group, node)) = name.split_once('/') else { continue };
            if offset.contains_key(TOO_LARGE) {
                continue;
            }
            let key = NodeKey { group: group.to_owned(), node: node.to_owned() };
            match self.host.restore(key.clone(), offset) {
                Ok(()) => {
                    restored += 1;
                    if let Some(snapshot) = self.host.snapshot(&key) {
                        self.last.insert(key, snapshot);
                    }
                }
                Err(e) => {
                    warn!(node = name, error = %e, "cannot restore the Sparkplug state of an edge node; it is asked for a rebirth when it sends data")
                }
            }
        }
        restored
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.host.next_deadline()
    }

    pub(crate) fn tick(&mut self, now_ms: u64) -> Vec<Rebirth> {
        self.host.tick(now_ms)
    }

    /// `rebirth` could not be queued: the node's rate limit is given back, `tick` asks again.
    pub(crate) fn rebirth_not_sent(&mut self, rebirth: &Rebirth, now_ms: u64) {
        self.host.rebirth_not_sent(rebirth, now_ms);
    }

    /// A primary host lost its MQTT connection: one `"status":"stale"` record for each edge
    /// node and device the host knows online (at most `max_nodes` nodes and their devices), so
    /// Kafka consumers see that their data stopped; the rebirths after the reconnect bring them
    /// online again. `kafka_topic` renders as for the node's NDEATH (or the device's DDEATH);
    /// the records carry no state and answer no MQTT message.
    pub(crate) fn connection_lost(
        &self,
        kafka_topic: &Template,
        at: Timestamp,
        generation: u64,
    ) -> Vec<SourceRecord> {
        let mut online: Vec<DeviceKey> = Vec::new();
        for node in self.host.nodes().take(self.host.config().max_nodes) {
            let key = DeviceKey { node: node.clone(), device: None };
            if self.host.is_online(&key) != Some(true) {
                continue;
            }
            online.push(key);
            online.extend(self.host.devices(node).into_iter().filter(|d| d.1).map(|d| d.0));
        }
        let mut records = Vec::with_capacity(online.len());
        for device in online {
            let kind =
                if device.device.is_some() { MessageType::DDeath } else { MessageType::NDeath };
            let message = Message {
                topic: connector_sparkplug::topic::message_topic(kind, &device),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                dup: false,
                pkid: 0,
                properties: None,
            };
            let base = Base {
                message: &message,
                topic: render::kafka_topic(kafka_topic, &message.topic),
                headers: Headers::new(),
                received: at,
                generation,
            };
            let mut headers = Headers::with_capacity(4);
            headers.push(GROUP_HEADER, Bytes::from(device.node.group.clone()));
            headers.push(NODE_HEADER, Bytes::from(device.node.node.clone()));
            if let Some(d) = &device.device {
                headers.push(DEVICE_HEADER, Bytes::from(d.clone()));
            }
            headers.push(TYPE_HEADER, Bytes::from_static(b"CONNECTION_LOST"));
            let mut out = Records {
                base: &base,
                headers,
                key: self.key.as_ref(),
                state: None,
                records: Vec::new(),
            };
            let status = json::status_json(&device, Status::Stale, None, ms_of(at));
            out.push(&device, &status, at);
            records.append(&mut out.records);
        }
        records
    }

    /// The records of one message.
    pub(crate) fn records(&mut self, mut base: Base<'_>, now_ms: u64) -> Output {
        let m = base.message;
        if self.generation.is_some_and(|g| g != base.generation) {
            self.host.reset_sequences();
        }
        self.generation = Some(base.generation);
        let handled = self.host.handle(&m.topic, &m.payload, now_ms);
        let mut headers = std::mem::take(&mut base.headers);
        let parsed = SparkplugTopic::parse(&m.topic).ok();
        if let Some(SparkplugTopic::Message { group, kind, node, device }) = &parsed {
            headers.push(GROUP_HEADER, Bytes::copy_from_slice(group.as_bytes()));
            headers.push(NODE_HEADER, Bytes::copy_from_slice(node.as_bytes()));
            if let Some(d) = device {
                headers.push(DEVICE_HEADER, Bytes::copy_from_slice(d.as_bytes()));
            }
            headers.push(TYPE_HEADER, Bytes::from_static(kind.as_str().as_bytes()));
        }
        let kind = match &parsed {
            Some(SparkplugTopic::Message { kind, .. }) => Some(*kind),
            _ => None,
        };
        let state = handled.state_changed.as_ref().and_then(|node| {
            let snapshot = self.host.snapshot(node)?;
            if self.last.get(node) == Some(&snapshot) {
                return None;
            }
            if self.last.len() >= self.host.config().max_nodes {
                self.last.clear();
            }
            self.last.insert(node.clone(), snapshot.clone());
            // One offset-store record per node: a huge alias table would make every save fail
            // (Kafka's message.max.bytes). Over the bound it is not persisted; after a restart
            // the node is asked for a rebirth instead.
            let size = serde_json::to_vec(&snapshot).map_or(usize::MAX, |v| v.len());
            if size > MAX_STATE_BYTES {
                warn!(node = %format!("{}/{}", node.group, node.node), size, max = MAX_STATE_BYTES, "Sparkplug state of an edge node too large for the offset store; not persisted (a restart asks it for a rebirth)");
                // A marker replaces an older, smaller state, which must not be restored.
                let partition = SourcePartition::from([(
                    NODE_PARTITION,
                    format!("{}/{}", node.group, node.node),
                )]);
                return Some((partition, SourceOffset::from([(TOO_LARGE, true)])));
            }
            let partition =
                SourcePartition::from([(NODE_PARTITION, format!("{}/{}", node.group, node.node))]);
            Some((partition, SourceOffset::from(snapshot)))
        });
        let mut out =
            Records { base: &base, headers, key: self.key.as_ref(), state, records: Vec::new() };
        match handled.event {
            Event::Birth { device, bd_seq, seq, timestamp, metrics } => {
                let status = json::status_json(&device, Status::Online, bd_seq, timestamp);
                out.push(&device, &status, ts(timestamp, base.received));
                let kind = kind.unwrap_or(if device.device.is_some() {
                    MessageType::DBirth
                } else {
                    MessageType::NBirth
                });
                self.metrics(&mut out, kind, &device, seq, timestamp, &metrics);
            }
            Event::Data { device, seq, timestamp, metrics } => {
                let kind = kind.unwrap_or(if device.device.is_some() {
                    MessageType::DData
                } else {
                    MessageType::NData
                });
                self.metrics(&mut out, kind, &device, seq, timestamp, &metrics);
            }
            Event::Death { device, bd_seq, timestamp } => {
                let status = json::status_json(&device, Status::Offline, bd_seq, timestamp);
                out.push(&device, &status, ts(timestamp, base.received));
            }
            Event::StaleDeath { device, bd_seq, current_bd_seq } => {
                debug!(topic = %m.topic, ?bd_seq, ?current_bd_seq, "stale NDEATH ignored");
                let status = json::status_json(&device, Status::Stale, bd_seq, None);
                out.push(&device, &status, base.received);
            }
            Event::Command { device, kind, metrics } => {
                if self.forward_commands {
                    self.metrics(&mut out, kind, &device, None, None, &metrics);
                }
            }
            Event::State { .. } => {}
            Event::Invalid { device, reason } => {
                let mut r = out.record(device.as_ref(), Some(m.payload.clone()), base.received);
                r.rejected =
                    Some(format!("Sparkplug message on {:?} cannot be used: {reason}", m.topic));
                out.records.push(r);
            }
        }
        // Devices that went offline with this message besides the one it names.
        for device in &handled.also_offline {
            let status = json::status_json(device, Status::Offline, None, None);
            out.push(device, &status, base.received);
        }
        // The state rides on the message's last record only: the runtime keeps the last offset
        // per partition, and the message is acknowledged only after all its records.
        if let (Some((partition, offset)), Some(last)) = (out.state.take(), out.records.last_mut())
        {
            last.source_partition = partition;
            last.source_offset = Some(offset);
        }
        Output { records: out.records, rebirth: handled.rebirth }
    }

    fn metrics(
        &self,
        out: &mut Records<'_>,
        kind: MessageType,
        device: &DeviceKey,
        seq: Option<u64>,
        timestamp: Option<u64>,
        metrics: &[Metric],
    ) {
        match self.output {
            SparkplugOutput::Message => {
                let value = json::message_json(kind, device, seq, timestamp, metrics);
                out.push(device, &value, ts(timestamp, out.base.received));
            }
            SparkplugOutput::Metric => {
                for metric in metrics {
                    let at = ts(metric.timestamp.or(timestamp), out.base.received);
                    out.push(device, &json::metric_json(metric), at);
                }
            }
        }
    }
}

/// The records of one message being built.
struct Records<'a> {
    base: &'a Base<'a>,
    headers: Headers,
    key: Option<&'a Template>,
    state: Option<(SourcePartition, SourceOffset)>,
    records: Vec<SourceRecord>,
}

impl Records<'_> {
    fn push(&mut self, device: &DeviceKey, value: &serde_json::Value, at: Timestamp) {
        let value = Bytes::from(value.to_string());
        let r = self.record(Some(device), Some(value), at);
        self.records.push(r);
    }

    fn record(
        &self,
        device: Option<&DeviceKey>,
        value: Option<Bytes>,
        at: Timestamp,
    ) -> SourceRecord {
        let mqtt_topic = &self.base.message.topic;
        let mut rejected = None;
        let topic = match &self.base.topic {
            Ok(t) => t.clone(),
            Err(why) => {
                rejected = Some(why.clone());
                mqtt_topic.replace('/', ".")
            }
        };
        let key = match (self.key, device) {
            (Some(t), _) => match render_key(t, mqtt_topic, device) {
                Ok(k) => k,
                Err(why) => {
                    rejected.get_or_insert(why);
                    None
                }
            },
            (None, Some(d)) => Some(Bytes::from(default_key(d))),
            (None, None) => None,
        };
        SourceRecord {
            topic,
            partition: None,
            key,
            value,
            headers: self.headers.clone(),
            timestamp: Some(at),
            source_partition: SourcePartition::default(),
            source_offset: None,
            rejected,
        }
    }
}

/// `group/node` or `group/node/device`.
pub(crate) fn default_key(d: &DeviceKey) -> String {
    match &d.device {
        Some(device) => format!("{}/{}/{device}", d.node.group, d.node.node),
        None => format!("{}/{}", d.node.group, d.node.node),
    }
}

fn render_key(
    t: &Template,
    mqtt_topic: &str,
    device: Option<&DeviceKey>,
) -> Result<Option<Bytes>, String> {
    if t.parts().is_empty() {
        return Ok(None);
    }
    t.render(|name| -> Result<std::borrow::Cow<'_, str>, String> {
        let part = match (name, device) {
            ("group", Some(d)) => d.node.group.clone(),
            ("node", Some(d)) => d.node.node.clone(),
            ("device", Some(d)) => d.device.clone().unwrap_or_default(),
            ("group" | "node" | "device", None) => String::new(),
            _ => {
                return render::substitute(mqtt_topic, name)
                    .map(|c| std::borrow::Cow::Owned(c.into_owned()))
            }
        };
        Ok(std::borrow::Cow::Owned(part))
    })
    .map(|k| Some(Bytes::from(k)))
    .map_err(|e| format!("sparkplug.key {:?} for MQTT topic {mqtt_topic:?}: {e}", t.as_str()))
}

/// A Rebirth request as the event loop publishes it: QoS 0, not retained (Sparkplug's NCMD).
pub(crate) fn rebirth_message(r: Rebirth) -> Message {
    Message {
        topic: r.topic,
        payload: Bytes::from(r.payload),
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        pkid: 0,
        properties: None,
    }
}
