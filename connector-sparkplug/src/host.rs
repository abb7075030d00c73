//! The host-application state machine: alias -> (name, datatype) tables per edge node and device
//! from BIRTH, DATA resolved to names, seq checked per edge node (wrapping, with a redelivery
//! window and a reorder timeout), NDEATH honoured only with the current bdSeq, rebirth requests
//! (rate-limited per node), and snapshot/restore of a node's state across restarts. No I/O:
//! the caller passes each MQTT message and the time in ms, and publishes the rebirth requests.
//!
//! ```
//! use connector_sparkplug::encode::EdgeNode;
//! use connector_sparkplug::host::{Event, HostConfig, HostState};
//! use connector_sparkplug::{DataType, Value};
//!
//! let mut host = HostState::new(HostConfig::default());
//! let mut edge = EdgeNode::new("g", "n");
//! let (t, p) = edge.nbirth(&[("T", Some(1), Value::Int(5), DataType::Int8)], 0).unwrap();
//! assert!(matches!(host.handle(&t, &p, 0).event, Event::Birth { .. }));
//! edge.next_seq(); // a lost message: seq 1 never arrives
//! let (t, p) = edge.ndata(&[("T", Value::Int(-1))], 10).unwrap();
//! let handled = host.handle(&t, &p, 10);
//! assert!(matches!(handled.event, Event::Data { .. }) && handled.rebirth.is_none());
//! assert_eq!(host.next_deadline(), Some(2_010)); // the reorder timeout
//! let rebirths = host.tick(2_010);
//! assert_eq!(rebirths.len(), 1);
//! assert_eq!(rebirths[0].topic, "spBv1.0/g/NCMD/n");
//! ```

mod capacity;
mod pacing;
mod resolve;
mod seq;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_review;

pub use snapshot::RestoreError;

use std::collections::{BTreeSet, HashMap};

use crate::{DeviceKey, MessageType, Metric, NodeKey, SparkplugTopic};
use state::NodeState;

/// Limits and timings of a [`HostState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// How long a seq gap waits for the missing seqs before a rebirth is requested, in ms.
    pub reorder_timeout_ms: u64,
    /// At most one rebirth request per node per this interval, in ms.
    pub rebirth_interval_ms: u64,
    /// At most this many edge nodes are tracked; a message of one more is `Event::Invalid`.
    pub max_nodes: usize,
    /// At most this many metrics (and devices) per edge node; a bigger BIRTH is `Event::Invalid`.
    pub max_metrics: usize,
    /// At most this many metrics (and devices) over all edge nodes; a BIRTH that would exceed it
    /// is `Event::Invalid`.
    pub max_total_metrics: usize,
    /// At most this many rebirth requests per second over all nodes (0: no limit); the ones
    /// held back by [`tick`](HostState::tick) come in the next seconds, in deadline order.
    pub max_rebirths_per_sec: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            reorder_timeout_ms: 2_000,
            rebirth_interval_ms: 10_000,
            max_nodes: 100_000,
            max_metrics: 100_000,
            max_total_metrics: 2_000_000,
            max_rebirths_per_sec: 100,
        }
    }
}

/// A rebirth request to publish: NCMD `Node Control/Rebirth` = true (QoS 0, per the spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebirth {
    /// The edge node asked.
    pub node: NodeKey,
    /// `spBv1.0/<group>/NCMD/<node>`.
    pub topic: String,
    /// The NCMD payload ([`rebirth_payload`](crate::encode::rebirth_payload)).
    pub payload: Vec<u8>,
    /// Why the rebirth is requested (for logs).
    pub reason: String,
}

/// What one MQTT message meant.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The event.
    pub event: Event,
    /// Set when this message calls for a rebirth request (unknown alias, DATA before BIRTH,
    /// undecodable payload on a node's topic, ...), already rate-limited.
    pub rebirth: Option<Rebirth>,
    /// The node whose persistent state changed (BIRTH, DEATH): persist
    /// [`HostState::snapshot`] of it with the record(s) of this message.
    pub state_changed: Option<NodeKey>,
    /// Devices that went offline with this message besides the one its event names: the
    /// online devices of a node at its NDEATH, and at a new (or rejected) NBIRTH, after which
    /// they are offline until their DBIRTH. One `offline` status record each.
    pub also_offline: Vec<DeviceKey>,
}

/// The meaning of one MQTT message.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// NBIRTH/DBIRTH: the node or device is online with these metrics.
    Birth {
        /// The node (`device: None`) or device.
        device: DeviceKey,
        /// The bdSeq of an NBIRTH (`None` for DBIRTH).
        bd_seq: Option<u64>,
        /// The payload's seq.
        seq: Option<u64>,
        /// The payload's timestamp.
        timestamp: Option<u64>,
        /// The metrics of the birth.
        metrics: Vec<Metric>,
    },
    /// NDATA/DDATA, aliases resolved.
    Data {
        /// The node or device.
        device: DeviceKey,
        /// The payload's seq.
        seq: Option<u64>,
        /// The payload's timestamp.
        timestamp: Option<u64>,
        /// The metrics, with names and datatypes from BIRTH.
        metrics: Vec<Metric>,
    },
    /// NDEATH with the current bdSeq (node and all its devices offline), or DDEATH.
    Death {
        /// The node or device.
        device: DeviceKey,
        /// The NDEATH's bdSeq (`None` for DDEATH).
        bd_seq: Option<u64>,
        /// The payload's timestamp.
        timestamp: Option<u64>,
    },
    /// NDEATH whose bdSeq does not match the current NBIRTH's: a stale will, ignored.
    StaleDeath {
        /// The node.
        device: DeviceKey,
        /// The NDEATH's bdSeq.
        bd_seq: Option<u64>,
        /// The current NBIRTH's bdSeq (`None` when no NBIRTH of the node is known).
        current_bd_seq: Option<u64>,
    },
    /// NCMD/DCMD seen on the broker (a host normally does not forward these).
    Command {
        /// The node or device commanded.
        device: DeviceKey,
        /// NCMD or DCMD.
        kind: MessageType,
        /// The metrics (aliases resolved where a BIRTH is known).
        metrics: Vec<Metric>,
    },
    /// `spBv1.0/STATE/<host_id>`: `{"online": bool, "timestamp": ms}`.
    State {
        /// The host application.
        host_id: String,
        /// Online or offline.
        online: bool,
        /// The STATE message's timestamp.
        timestamp: Option<u64>,
    },
    /// Cannot be used (undecodable, DATA before BIRTH, unknown alias, bad topic): to the error
    /// policy with this reason.
    Invalid {
        /// The node or device, when the topic named one.
        device: Option<DeviceKey>,
        /// Why.
        reason: String,
    },
}

/// The state of a Sparkplug host application. Bounded by [`HostConfig`]; never panics on input.
#[derive(Debug, Clone)]
pub struct HostState {
    config: HostConfig,
    nodes: HashMap<NodeKey, NodeState>,
    /// The open gaps' deadlines, to find the next one without a scan.
    deadlines: BTreeSet<(u64, NodeKey)>,
    /// Messages refused for want of room for their edge node.
    refused: u64,
    /// The current one-second window of the global rebirth budget: its start and its count.
    budget: (u64, u32),
    /// Metrics and devices over all nodes (each node's share is its `counted`).
    total: usize,
}

impl HostState {
    /// An empty state.
    pub fn new(config: HostConfig) -> Self {
        HostState {
            config,
            nodes: HashMap::new(),
            deadlines: BTreeSet::new(),
            refused: 0,
            budget: (0, 0),
            total: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// One MQTT message (any topic under `spBv1.0/`). Never panics.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Handled {
        let handled = state::handle(self, topic, payload, now_ms);
        if let Ok(SparkplugTopic::Message { group, node, .. }) = SparkplugTopic::parse(topic) {
            self.recount(&NodeKey::new(group, node));
        }
        handled
    }

    /// Brings the node's share of the total metrics up to date.
    pub(crate) fn recount(&mut self, node: &NodeKey) {
        if let Some(state) = self.nodes.get_mut(node) {
            let size = state.size();
            self.total = self.total.saturating_sub(state.counted).saturating_add(size);
            state.counted = size;
        }
    }

    /// Metrics and devices over all nodes (against `max_total_metrics`).
    pub fn total_metrics(&self) -> usize {
        self.total
    }

    /// When [`tick`](Self::tick) has something to do next (the earliest open gap's deadline).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Known alias and datatype of a metric of a node or device (from its last BIRTH).
    pub fn lookup(&self, device: &DeviceKey, name: &str) -> Option<(Option<u64>, crate::DataType)> {
        let node = self.nodes.get(&device.node)?;
        let table = match &device.device {
            None => &node.table,
            Some(d) => &node.devices.get(d)?.table,
        };
        table.by_name.get(name).copied()
    }

    /// The devices of a node known from DBIRTH, with whether each is online.
    pub fn devices(&self, node: &NodeKey) -> Vec<(DeviceKey, bool)> {
        let Some(n) = self.nodes.get(node) else { return Vec::new() };
        n.devices
            .iter()
            .map(|(id, d)| (DeviceKey::device(node.clone(), id.clone()), d.online && n.online))
            .collect()
    }

    /// Whether a node or device is online: `None` when no BIRTH of it is known.
    pub fn is_online(&self, device: &DeviceKey) -> Option<bool> {
        let node = self.nodes.get(&device.node).filter(|n| n.born)?;
        match &device.device {
            None => Some(node.online),
            Some(d) => node.devices.get(d).map(|d| d.online && node.online),
        }
    }

    /// The nodes with a known BIRTH.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeKey> + '_ {
        self.nodes.iter().filter(|(_, n)| n.born).map(|(k, _)| k)
    }
}

/// The rebirth request for `node`.
fn rebirth(node: NodeKey, now_ms: u64, reason: String) -> Rebirth {
    Rebirth {
        topic: node.ncmd_topic(),
        payload: crate::encode::rebirth_payload(now_ms),
        node,
        reason,
    }
}
