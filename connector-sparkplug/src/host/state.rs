//! What the host keeps per edge node and device, and the handling of each message type.

use std::collections::{BTreeMap, HashMap};

use super::seq::{SeqOutcome, SeqState};
use super::{rebirth, Event, Handled, HostState, Rebirth};
use crate::proto::payload as pb;
use crate::proto::Payload;
use crate::{
    decode_metric, decode_payload, DataType, DeviceKey, MessageType, Metric, NodeKey,
    SparkplugTopic, BD_SEQ,
};

/// Alias and name tables of one BIRTH.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) by_alias: HashMap<u64, (String, DataType)>,
    pub(crate) by_name: HashMap<String, (Option<u64>, DataType)>,
}

impl Table {
    /// The table of a birth's metrics; an error when two metrics share an alias.
    pub(crate) fn of(metrics: &[Metric]) -> Result<Self, String> {
        let mut table = Table::default();
        for m in metrics {
            if let Some(alias) = m.alias {
                if let Some((other, _)) = table.by_alias.insert(alias, (m.name.clone(), m.datatype))
                {
                    return Err(format!("alias {alias} given to both {other:?} and {:?}", m.name));
                }
            }
            table.by_name.insert(m.name.clone(), (m.alias, m.datatype));
        }
        Ok(table)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// A device of an edge node.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceState {
    pub(crate) online: bool,
    pub(crate) table: Table,
}

/// An edge node.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeState {
    /// The current NBIRTH's bdSeq.
    pub(crate) bd_seq: Option<u64>,
    /// An NBIRTH is known (seen, or restored).
    pub(crate) born: bool,
    pub(crate) online: bool,
    pub(crate) table: Table,
    pub(crate) devices: BTreeMap<String, DeviceState>,
    pub(crate) seq: SeqState,
    /// When the last rebirth was requested, in ms.
    pub(crate) last_rebirth: Option<u64>,
}

impl NodeState {
    /// Metrics and devices of the node, against `max_metrics`.
    pub(crate) fn size(&self) -> usize {
        self.table.len() + self.devices.values().map(|d| 1 + d.table.len()).sum::<usize>()
    }
}

fn invalid(device: Option<DeviceKey>, reason: impl Into<String>) -> Handled {
    Handled {
        event: Event::Invalid { device, reason: reason.into() },
        rebirth: None,
        state_changed: None,
    }
}

fn plain(event: Event) -> Handled {
    Handled { event, rebirth: None, state_changed: None }
}

impl HostState {
    /// The node's entry, created if there is room.
    fn entry(&mut self, node: &NodeKey) -> Option<&mut NodeState> {
        if !self.nodes.contains_key(node) && self.nodes.len() >= self.config.max_nodes {
            return None;
        }
        Some(self.nodes.entry(node.clone()).or_default())
    }

    /// A rebirth request for `node`, unless one was requested within the interval.
    fn request_rebirth(&mut self, node: &NodeKey, now_ms: u64, reason: &str) -> Option<Rebirth> {
        let interval = self.config.rebirth_interval_ms;
        let state = self.entry(node)?;
        if state.last_rebirth.is_some_and(|last| now_ms < last.saturating_add(interval)) {
            return None;
        }
        state.last_rebirth = Some(now_ms);
        tracing::debug!(node = %node, reason, "sparkplug: rebirth requested");
        Some(rebirth(node.clone(), now_ms, reason.to_owned()))
    }

    /// Invalid, with a rate-limited rebirth request.
    fn invalid_rebirth(&mut self, device: DeviceKey, reason: String, now_ms: u64) -> Handled {
        let rebirth = self.request_rebirth(&device.node, now_ms, &reason);
        Handled {
            event: Event::Invalid { device: Some(device), reason },
            rebirth,
            state_changed: None,
        }
    }

    /// Keeps the deadline index in step with a node's seq state.
    fn sync_deadline(&mut self, node: &NodeKey, before: Option<u64>) {
        let after = self.nodes.get(node).and_then(|n| n.seq.deadline);
        if before != after {
            if let Some(b) = before {
                self.deadlines.remove(&(b, node.clone()));
            }
            if let Some(a) = after {
                self.deadlines.insert((a, node.clone()));
            }
        }
    }
}

/// One MQTT message.
pub(crate) fn handle(host: &mut HostState, topic: &str, payload: &[u8], now_ms: u64) -> Handled {
    let parsed = match SparkplugTopic::parse(topic) {
        Ok(t) => t,
        Err(e) => return invalid(None, e.to_string()),
    };
    let (kind, device) = match parsed {
        SparkplugTopic::State { host_id } => return state_message(host_id, payload),
        SparkplugTopic::Message { kind, .. } => match parsed.device_key() {
            Some(device) => (kind, device),
            None => return invalid(None, "not a message topic"),
        },
    };
    let from_node = !matches!(kind, MessageType::NDeath | MessageType::NCmd | MessageType::DCmd);
    let payload = match decode_payload(payload) {
        Ok(p) => p,
        Err(e) if from_node => {
            return host.invalid_rebirth(device, format!("{kind}: {e}"), now_ms);
        }
        Err(e) => return invalid(Some(device), format!("{kind}: {e}")),
    };
    match kind {
        MessageType::NBirth => nbirth(host, device, &payload, now_ms),
        MessageType::NDeath => ndeath(host, device, &payload),
        MessageType::NCmd | MessageType::DCmd => command(host, device, kind, &payload),
        MessageType::NData | MessageType::DBirth | MessageType::DData | MessageType::DDeath => {
            sequenced(host, device, kind, &payload, now_ms)
        }
    }
}

fn state_message(host_id: &str, payload: &[u8]) -> Handled {
    let host_id = host_id.to_owned();
    // Sparkplug 2.2 hosts published the plain strings ONLINE / OFFLINE.
    match payload {
        b"ONLINE" => return plain(Event::State { host_id, online: true, timestamp: None }),
        b"OFFLINE" => return plain(Event::State { host_id, online: false, timestamp: None }),
        _ => {}
    }
    let json: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return invalid(None, format!("STATE of {host_id:?}: not JSON: {e}")),
    };
    let Some(online) = json.get("online").and_then(serde_json::Value::as_bool) else {
        return invalid(None, format!("STATE of {host_id:?}: no boolean \"online\""));
    };
    let timestamp = json.get("timestamp").and_then(serde_json::Value::as_u64);
    plain(Event::State { host_id, online, timestamp })
}

/// The bdSeq metric of an NBIRTH or NDEATH.
fn bd_seq(payload: &Payload) -> Option<u64> {
    let m = payload.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ))?;
    match &m.value {
        Some(pb::metric::Value::LongValue(v)) => Some(*v),
        Some(pb::metric::Value::IntValue(v)) => Some(u64::from(*v)),
        _ => None,
    }
}

fn seq_of(payload: &Payload) -> Result<Option<u8>, String> {
    match payload.seq {
        None => Ok(None),
        Some(s) => u8::try_from(s).map(Some).map_err(|_| format!("seq {s} is not 0 to 255")),
    }
}

fn decode_birth(payload: &Payload) -> Result<(Vec<Metric>, Table), String> {
    let metrics = payload
        .metrics
        .iter()
        .map(|m| decode_metric(m, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let table = Table::of(&metrics)?;
    Ok((metrics, table))
}

fn nbirth(host: &mut HostState, device: DeviceKey, payload: &Payload, now_ms: u64) -> Handled {
    let node = device.node.clone();
    let seq = match seq_of(payload) {
        Ok(s) => s,
        Err(reason) => return host.invalid_rebirth(device, format!("NBIRTH: {reason}"), now_ms),
    };
    let (metrics, table) = match decode_birth(payload) {
        Ok(b) => b,
        Err(reason) => return host.invalid_rebirth(device, format!("NBIRTH: {reason}"), now_ms),
    };
    if table.len() > host.config.max_metrics {
        return invalid(
            Some(device),
            format!("NBIRTH: more than {} metrics", host.config.max_metrics),
        );
    }
    let bd_seq = bd_seq(payload);
    let before = host.nodes.get(&node).and_then(|n| n.seq.deadline);
    if !host.nodes.contains_key(&node) && host.nodes.len() >= host.config.max_nodes {
        // Make room by forgetting a node never born (kept only for its rebirth rate limit), so
        // DATA from unknown nodes cannot lock real ones out.
        if let Some(unborn) = host.nodes.iter().find(|(_, n)| !n.born).map(|(k, _)| k.clone()) {
            let before = host.nodes.get(&unborn).and_then(|n| n.seq.deadline);
            host.nodes.remove(&unborn);
            if let Some(d) = before {
                host.deadlines.remove(&(d, unborn));
            }
        }
    }
    let Some(state) = host.entry(&node) else {
        return invalid(Some(device), format!("more than {} edge nodes", host.config.max_nodes));
    };
    state.bd_seq = bd_seq;
    state.born = true;
    state.online = true;
    state.table = table;
    state.devices.clear();
    state.seq.reset(seq);
    host.sync_deadline(&node, before);
    Handled {
        event: Event::Birth {
            device,
            bd_seq,
            seq: payload.seq,
            timestamp: payload.timestamp,
            metrics,
        },
        rebirth: None,
        state_changed: Some(node),
    }
}

fn ndeath(host: &mut HostState, device: DeviceKey, payload: &Payload) -> Handled {
    let node = device.node.clone();
    let bd_seq = bd_seq(payload);
    let before = host.nodes.get(&node).and_then(|n| n.seq.deadline);
    let Some(state) = host.nodes.get_mut(&node).filter(|n| n.born && n.bd_seq == bd_seq) else {
        let current_bd_seq = host.nodes.get(&node).filter(|n| n.born).and_then(|n| n.bd_seq);
        return plain(Event::StaleDeath { device, bd_seq, current_bd_seq });
    };
    state.online = false;
    for d in state.devices.values_mut() {
        d.online = false;
    }
    state.seq.reset(None);
    host.sync_deadline(&node, before);
    Handled {
        event: Event::Death { device, bd_seq, timestamp: payload.timestamp },
        rebirth: None,
        state_changed: Some(node),
    }
}

/// Resolves DATA metrics against a BIRTH table.
fn resolve(table: &Table, metrics: &[pb::Metric]) -> Result<Vec<Metric>, String> {
    metrics
        .iter()
        .map(|m| {
            let known = match (m.alias, &m.name) {
                (Some(alias), None) => match table.by_alias.get(&alias) {
                    Some((name, dt)) => Some((name.as_str(), *dt)),
                    None => return Err(format!("unknown alias {alias}")),
                },
                (alias, Some(name)) => {
                    let by_alias = alias.and_then(|a| table.by_alias.get(&a));
                    match (by_alias, table.by_name.get(name)) {
                        (Some((_, dt)), _) | (None, Some((_, dt))) => Some((name.as_str(), *dt)),
                        (None, None) if m.datatype.is_some() => None,
                        (None, None) => return Err(format!("unknown metric {name:?}")),
                    }
                }
                (None, None) => return Err("a metric with neither name nor alias".to_owned()),
            };
            let mut metric = decode_metric(m, known).map_err(|e| e.to_string())?;
            if metric.alias.is_none() {
                metric.alias = table.by_name.get(&metric.name).and_then(|(a, _)| *a);
            }
            Ok(metric)
        })
        .collect()
}

/// NDATA, DBIRTH, DDATA, DDEATH: the node must be born and online; the seq is checked.
fn sequenced(
    host: &mut HostState,
    device: DeviceKey,
    kind: MessageType,
    payload: &Payload,
    now_ms: u64,
) -> Handled {
    let node = device.node.clone();
    let seq = match seq_of(payload) {
        Ok(s) => s,
        Err(reason) => return host.invalid_rebirth(device, format!("{kind}: {reason}"), now_ms),
    };
    let timeout = host.config.reorder_timeout_ms;
    let max_metrics = host.config.max_metrics;
    let Some(state) = host.nodes.get_mut(&node).filter(|n| n.born && n.online) else {
        let reason = match host.nodes.get(&node) {
            Some(n) if n.born => {
                format!("{kind} from an edge node that is offline (after its NDEATH)")
            }
            _ => format!("{kind} before the edge node's NBIRTH"),
        };
        return host.invalid_rebirth(device, reason, now_ms);
    };
    let before = state.seq.deadline;
    if let Some(s) = seq {
        if let SeqOutcome::Gap { missing } = state.seq.observe(s, now_ms, timeout) {
            tracing::debug!(node = %node, seq = s, missing, "sparkplug: seq gap");
        }
    }
    let result: Result<Handled, String> = (|| match (kind, &device.device) {
        (MessageType::NData, _) => {
            let metrics = resolve(&state.table, &payload.metrics)?;
            Ok(plain(Event::Data {
                device: device.clone(),
                seq: payload.seq,
                timestamp: payload.timestamp,
                metrics,
            }))
        }
        (MessageType::DBirth, Some(id)) => {
            let (metrics, table) = decode_birth(payload)?;
            let others = state.size() - state.devices.get(id).map_or(0, |d| 1 + d.table.len());
            if others + 1 + table.len() > max_metrics {
                return Err(format!(
                    "more than {max_metrics} metrics and devices on the edge node"
                ));
            }
            state.devices.insert(id.clone(), DeviceState { online: true, table });
            Ok(Handled {
                event: Event::Birth {
                    device: device.clone(),
                    bd_seq: None,
                    seq: payload.seq,
                    timestamp: payload.timestamp,
                    metrics,
                },
                rebirth: None,
                state_changed: Some(node.clone()),
            })
        }
        (MessageType::DData, Some(id)) => match state.devices.get(id).filter(|d| d.online) {
            Some(d) => {
                let metrics = resolve(&d.table, &payload.metrics)?;
                Ok(plain(Event::Data {
                    device: device.clone(),
                    seq: payload.seq,
                    timestamp: payload.timestamp,
                    metrics,
                }))
            }
            None => Err("DDATA before the device's DBIRTH (or after its DDEATH)".to_owned()),
        },
        (MessageType::DDeath, Some(id)) => {
            let changed = match state.devices.get_mut(id) {
                Some(d) => {
                    d.online = false;
                    Some(node.clone())
                }
                None => None,
            };
            Ok(Handled {
                event: Event::Death {
                    device: device.clone(),
                    bd_seq: None,
                    timestamp: payload.timestamp,
                },
                rebirth: None,
                state_changed: changed,
            })
        }
        _ => Err(format!("{kind} without a device")),
    })();
    host.sync_deadline(&node, before);
    match result {
        Ok(handled) => handled,
        Err(reason) => host.invalid_rebirth(device, format!("{kind}: {reason}"), now_ms),
    }
}

/// NCMD/DCMD seen on the broker: decoded with the BIRTH's aliases where known.
fn command(host: &HostState, device: DeviceKey, kind: MessageType, payload: &Payload) -> Handled {
    let table = host.nodes.get(&device.node).and_then(|n| match &device.device {
        None => Some(&n.table),
        Some(d) => n.devices.get(d).map(|d| &d.table),
    });
    let empty = Table::default();
    let table = table.unwrap_or(&empty);
    match resolve(table, &payload.metrics) {
        Ok(metrics) => plain(Event::Command { device, kind, metrics }),
        Err(reason) => invalid(Some(device), format!("{kind}: {reason}")),
    }
}
