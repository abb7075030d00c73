//! What the host keeps per edge node and device, and the handling of each message type.

use std::collections::BTreeMap;

use super::resolve::{decode_birth, resolve, Table, Unresolved};
use super::seq::{SeqOutcome, SeqState};
use super::{rebirth, Event, Handled, HostState, Rebirth};
use crate::metric::TemplateDefs;
use crate::proto::payload as pb;
use crate::proto::Payload;
use crate::{decode_payload, DeviceKey, MessageType, NodeKey, SparkplugTopic, BD_SEQ};

/// A device of an edge node.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceState {
    pub(crate) online: bool,
    pub(crate) table: Table,
    /// Its last DBIRTH was rejected: no rebirth requests for its DDATA (they would repeat it).
    pub(crate) birth_rejected: bool,
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
    /// The one before (given back by `rebirth_not_sent`).
    pub(crate) prev_rebirth: Option<u64>,
    /// The node's share of `HostState::total` (its `size()` when last counted).
    pub(crate) counted: usize,
    /// When a message of the node last came, in ms (eviction picks the oldest offline node).
    pub(crate) last_seen: u64,
    /// Why its last NBIRTH was rejected: until a good one comes, its DATA is invalid without a
    /// rebirth request (the node would answer with the same NBIRTH).
    pub(crate) birth_rejected: Option<String>,
}

impl NodeState {
    /// Metrics and devices of the node, against `max_metrics`.
    pub(crate) fn size(&self) -> usize {
        self.table.len() + self.devices.values().map(|d| 1 + d.table.len()).sum::<usize>()
    }
}

/// The devices of a node that are online now (they go offline with the node).
fn online_devices(node: &NodeKey, state: &NodeState) -> Vec<DeviceKey> {
    if !state.online {
        return Vec::new();
    }
    state
        .devices
        .iter()
        .filter(|(_, d)| d.online)
        .map(|(id, _)| DeviceKey::device(node.clone(), id.clone()))
        .collect()
}

fn invalid(device: Option<DeviceKey>, reason: impl Into<String>) -> Handled {
    Handled {
        event: Event::Invalid { device, reason: reason.into() },
        rebirth: None,
        state_changed: None,
        also_offline: Vec::new(),
    }
}

pub(super) fn plain(event: Event) -> Handled {
    Handled { event, rebirth: None, state_changed: None, also_offline: Vec::new() }
}

impl HostState {
    /// A rebirth request for `node`, unless one was requested within the interval or its last
    /// NBIRTH was rejected.
    fn request_rebirth(&mut self, node: &NodeKey, now_ms: u64, reason: &str) -> Option<Rebirth> {
        let state = self.entry(node, now_ms, false)?;
        let (rejected, last) = (state.birth_rejected.is_some(), state.last_rebirth);
        if rejected || self.rate_limited(last, now_ms) || !self.take_budget(now_ms) {
            return None;
        }
        let state = self.nodes.get_mut(node)?;
        state.prev_rebirth = state.last_rebirth;
        state.last_rebirth = Some(now_ms);
        tracing::debug!(node = %node, reason, "sparkplug: rebirth requested");
        Some(rebirth(node.clone(), now_ms, reason.to_owned()))
    }

    /// Ends the node's session at a rejected NBIRTH: offline, no aliases, no devices, no seq
    /// expectation, so the new session's DATA is never read with the old session's aliases.
    fn reject_birth(
        &mut self,
        device: DeviceKey,
        reason: String,
        bd_seq: Option<u64>,
        now_ms: u64,
    ) -> Handled {
        let node = device.node.clone();
        let before = self.nodes.get(&node).and_then(|n| n.seq.deadline);
        let mut also_offline = Vec::new();
        let changed = match self.entry(&node, now_ms, true) {
            Some(state) => {
                let was_born = state.born;
                also_offline = online_devices(&node, state);
                state.online = false;
                state.table = Table::default();
                state.devices.clear();
                state.seq.reset(None);
                state.birth_rejected = Some(reason.clone());
                // The new session's bdSeq (when readable): its NDEATH is then honoured.
                state.bd_seq = bd_seq;
                was_born.then(|| node.clone())
            }
            None => None,
        };
        self.sync_deadline(&node, before);
        tracing::warn!(node = %node, reason, "sparkplug: NBIRTH rejected; the node's data is invalid until its next NBIRTH");
        Handled {
            event: Event::Invalid { device: Some(device), reason },
            rebirth: None,
            state_changed: changed,
            also_offline,
        }
    }

    /// Invalid, with a rate-limited rebirth request.
    fn invalid_rebirth(&mut self, device: DeviceKey, reason: String, now_ms: u64) -> Handled {
        let rebirth = self.request_rebirth(&device.node, now_ms, &reason);
        Handled {
            event: Event::Invalid { device: Some(device), reason },
            rebirth,
            state_changed: None,
            also_offline: Vec::new(),
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
        Err(e) if kind == MessageType::NBirth => {
            return host.reject_birth(device, format!("{kind}: {e}"), None, now_ms);
        }
        Err(e) if kind == MessageType::DBirth => {
            // A rebirth would bring the same DBIRTH: the device stays unborn, quietly.
            if let (Some(n), Some(id)) = (host.nodes.get_mut(&device.node), &device.device) {
                let rejected =
                    DeviceState { online: false, table: Table::default(), birth_rejected: true };
                n.devices.insert(id.clone(), rejected);
            }
            return invalid(Some(device), format!("{kind}: {e}"));
        }
        Err(e) if from_node => {
            return host.invalid_rebirth(device, format!("{kind}: {e}"), now_ms);
        }
        Err(e) if matches!(kind, MessageType::NCmd | MessageType::DCmd) => {
            tracing::debug!(device = %device, error = %e, "sparkplug: undecodable {kind}");
            return plain(Event::Command { device, kind, metrics: Vec::new() });
        }
        Err(e) => return invalid(Some(device), format!("{kind}: {e}")),
    };
    if payload.metrics.len() > host.config.max_metrics {
        let reason = format!("{kind}: more than {} metrics", host.config.max_metrics);
        if kind == MessageType::NBirth {
            return host.reject_birth(device, reason, bd_seq(&payload), now_ms);
        }
        return invalid(Some(device), reason);
    }
    match kind {
        MessageType::NBirth => nbirth(host, device, &payload, now_ms),
        MessageType::NDeath => ndeath(host, device, &payload),
        MessageType::NCmd | MessageType::DCmd => {
            super::resolve::command(host, device, kind, &payload)
        }
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

fn nbirth(host: &mut HostState, device: DeviceKey, payload: &Payload, now_ms: u64) -> Handled {
    let node = device.node.clone();
    let checked = seq_of(payload).and_then(|seq| {
        let (metrics, table) = decode_birth(payload, &TemplateDefs::new())?;
        if table.len() > host.config.max_metrics {
            return Err(format!("more than {} metrics", host.config.max_metrics));
        }
        let counted = host.nodes.get(&node).map_or(0, |n| n.counted);
        if host.total.saturating_sub(counted).saturating_add(table.len())
            > host.config.max_total_metrics
        {
            return Err(format!(
                "more than {} metrics over all edge nodes (max_total_metrics)",
                host.config.max_total_metrics
            ));
        }
        Ok((seq, metrics, table))
    });
    let (seq, metrics, table) = match checked {
        Ok(b) => b,
        Err(reason) => {
            let bd_seq = bd_seq(payload);
            return host.reject_birth(device, format!("NBIRTH: {reason}"), bd_seq, now_ms);
        }
    };
    let bd_seq = bd_seq(payload);
    let before = host.nodes.get(&node).and_then(|n| n.seq.deadline);
    let Some(state) = host.entry(&node, now_ms, true) else {
        return invalid(Some(device), format!("more than {} edge nodes", host.config.max_nodes));
    };
    let also_offline = online_devices(&node, state);
    state.bd_seq = bd_seq;
    state.born = true;
    state.online = true;
    state.birth_rejected = None;
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
        also_offline,
    }
}

fn ndeath(host: &mut HostState, device: DeviceKey, payload: &Payload) -> Handled {
    let node = device.node.clone();
    let bd_seq = bd_seq(payload);
    let before = host.nodes.get(&node).and_then(|n| n.seq.deadline);
    // Stale only when a different current bdSeq is known: a node whose NBIRTH we never saw
    // (first deployment, failed restore) dies for real.
    let current_bd_seq = host.nodes.get(&node).filter(|n| n.born).and_then(|n| n.bd_seq);
    if current_bd_seq.is_some() && current_bd_seq != bd_seq {
        return plain(Event::StaleDeath { device, bd_seq, current_bd_seq });
    }
    let Some(state) = host.nodes.get_mut(&node).filter(|n| n.born) else {
        return plain(Event::Death { device, bd_seq, timestamp: payload.timestamp });
    };
    let also_offline = online_devices(&node, state);
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
        also_offline,
    }
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
    let (total, max_total) = (host.total, host.config.max_total_metrics);
    let Some(state) = host.nodes.get_mut(&node).filter(|n| n.born && n.online) else {
        if let (MessageType::DBirth, Some(id)) = (kind, &device.device) {
            super::resolve::learn_device(host, &node, id, payload, now_ms);
        }
        let reason = match host.nodes.get(&node) {
            Some(n) if n.birth_rejected.is_some() => format!(
                "{kind} after a rejected NBIRTH ({})",
                n.birth_rejected.as_deref().unwrap_or_default()
            ),
            Some(n) if n.born => {
                format!("{kind} from an edge node that is offline (after its NDEATH)")
            }
            _ => format!("{kind} before the edge node's NBIRTH"),
        };
        return host.invalid_rebirth(device, reason, now_ms);
    };
    state.last_seen = now_ms;
    let before = state.seq.deadline;
    match seq {
        Some(s) => {
            if let SeqOutcome::Gap { missing } = state.seq.observe(s, now_ms, timeout) {
                tracing::debug!(node = %node, seq = s, missing, "sparkplug: seq gap");
            }
        }
        None => tracing::debug!(node = %node, "sparkplug: {kind} without a seq (not checked)"),
    }
    // Err: the reason, and whether a rebirth can help.
    let unresolved = |u: Unresolved| (u.reason, u.rebirth);
    let result: Result<Handled, (String, bool)> = (|| match (kind, &device.device) {
        (MessageType::NData, _) => {
            let metrics = resolve(&state.table, &payload.metrics, &state.table.templates)
                .map_err(unresolved)?;
            Ok(plain(Event::Data {
                device: device.clone(),
                seq: payload.seq,
                timestamp: payload.timestamp,
                metrics,
            }))
        }
        (MessageType::DBirth, Some(id)) => {
            let others = state.size() - state.devices.get(id).map_or(0, |d| 1 + d.table.len());
            let checked =
                decode_birth(payload, &state.table.templates).and_then(|(metrics, table)| {
                    if others + 1 + table.len() > max_metrics {
                        return Err(format!(
                            "more than {max_metrics} metrics and devices on the edge node"
                        ));
                    }
                    let elsewhere = total.saturating_sub(state.counted);
                    if elsewhere.saturating_add(others + 1 + table.len()) > max_total {
                        return Err(format!(
                            "more than {max_total} metrics over all edge nodes (max_total_metrics)"
                        ));
                    }
                    Ok((metrics, table))
                });
            let (metrics, table) = match checked {
                Ok(b) => b,
                Err(reason) => {
                    // A rebirth would bring the same DBIRTH: the device stays unborn, quietly.
                    let rejected = DeviceState {
                        online: false,
                        table: Table::default(),
                        birth_rejected: true,
                    };
                    state.devices.insert(id.clone(), rejected);
                    tracing::warn!(node = %node, device = %id, reason, "sparkplug: DBIRTH rejected");
                    return Err((reason, false));
                }
            };
            state
                .devices
                .insert(id.clone(), DeviceState { online: true, table, birth_rejected: false });
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
                also_offline: Vec::new(),
            })
        }
        (MessageType::DData, Some(id)) => match state.devices.get(id) {
            Some(d) if d.online => {
                let metrics = resolve(&d.table, &payload.metrics, &state.table.templates)
                    .map_err(unresolved)?;
                Ok(plain(Event::Data {
                    device: device.clone(),
                    seq: payload.seq,
                    timestamp: payload.timestamp,
                    metrics,
                }))
            }
            Some(d) if d.birth_rejected => {
                Err(("DDATA after the device's rejected DBIRTH".to_owned(), false))
            }
            _ => Err(("DDATA before the device's DBIRTH (or after its DDEATH)".to_owned(), true)),
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
                also_offline: Vec::new(),
            })
        }
        _ => Err((format!("{kind} without a device"), false)),
    })();
    host.sync_deadline(&node, before);
    match result {
        Ok(handled) => handled,
        Err((reason, true)) => host.invalid_rebirth(device, format!("{kind}: {reason}"), now_ms),
        Err((reason, false)) => invalid(Some(device), format!("{kind}: {reason}")),
    }
}
