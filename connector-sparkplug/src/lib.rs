//! Sparkplug B (Sparkplug 3.0) for the MQTT connectors: the payload codec for every datatype of
//! the spec (signed integers from their unsigned wire form, packed arrays, DataSet, Template,
//! PropertySets), topic parsing, the host-application state machine (alias tables from BIRTH,
//! seq checking with a reorder window, bdSeq of NDEATH, rebirth requests, snapshot/restore) and
//! the JSON shapes of the Kafka records. No I/O: the MQTT source and sink drive it, and time is
//! passed in as milliseconds.
//!
//! See `docs/sparkplug.md` for the record shapes and the host's rules.
//!
//! ```
//! use connector_sparkplug::encode::EdgeNode;
//! use connector_sparkplug::host::{Event, HostConfig, HostState};
//! use connector_sparkplug::{DataType, Value};
//!
//! let mut edge = EdgeNode::new("plant1", "line4");
//! let mut host = HostState::new(HostConfig::default());
//! let (topic, payload) = edge
//!     .nbirth(&[("Temperature", Some(1), Value::Double(21.5), DataType::Double)], 1_000)
//!     .unwrap();
//! host.handle(&topic, &payload, 1_000);
//! let (topic, payload) = edge.ndata(&[("Temperature", Value::Double(22.0))], 2_000).unwrap();
//! let handled = host.handle(&topic, &payload, 2_000);
//! let Event::Data { metrics, .. } = handled.event else { panic!("{:?}", handled.event) };
//! assert_eq!(metrics[0].name, "Temperature");
//! assert_eq!(metrics[0].value, Value::Double(22.0));
//! ```

use std::fmt;

pub mod encode;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod json;
mod metric;
pub mod proto;
pub mod topic;
pub mod value;

pub use metric::{decode_metric, decode_metrics, Metric};
pub use topic::{MessageType, SparkplugTopic, TopicError};
pub use value::{
    DataSetValue, DataType, Property, PropertySetValue, TemplateParameter, TemplateValue, Value,
};

/// The Sparkplug B topic namespace, the first level of every Sparkplug topic.
pub const NAMESPACE: &str = "spBv1.0";

/// The name of the metric that carries the birth/death sequence number in NBIRTH and NDEATH.
pub const BD_SEQ: &str = "bdSeq";

/// The name of the NCMD metric that asks an edge node to publish its births again.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// Identity of an edge node; `Display` is `group/node`.
///
/// ```
/// let node = connector_sparkplug::NodeKey::new("plant1", "line4");
/// assert_eq!(node.to_string(), "plant1/line4");
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeKey {
    /// The group id (second topic level).
    pub group: String,
    /// The edge node id.
    pub node: String,
}

impl NodeKey {
    /// A node key from its group and node ids.
    pub fn new(group: impl Into<String>, node: impl Into<String>) -> Self {
        NodeKey { group: group.into(), node: node.into() }
    }

    /// The topic of this node's NCMD messages: `spBv1.0/<group>/NCMD/<node>`.
    pub fn ncmd_topic(&self) -> String {
        format!("{NAMESPACE}/{}/NCMD/{}", self.group, self.node)
    }

    /// Parses `group/node` (the `Display` form). `None` unless there are exactly two non-empty
    /// parts.
    pub fn parse(text: &str) -> Option<Self> {
        let (group, node) = text.split_once('/')?;
        if group.is_empty() || node.is_empty() || node.contains('/') {
            return None;
        }
        Some(NodeKey::new(group, node))
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.node)
    }
}

/// Identity of an edge node (`device: None`) or of one of its devices; `Display` is
/// `group/node` or `group/node/device` (the default record key of the source).
///
/// ```
/// use connector_sparkplug::DeviceKey;
/// let key = DeviceKey::parse("plant1/line4/press2").unwrap();
/// assert_eq!(key.to_string(), "plant1/line4/press2");
/// assert_eq!(key.command_topic(), "spBv1.0/plant1/DCMD/line4/press2");
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DeviceKey {
    /// The edge node.
    pub node: NodeKey,
    /// The device id, `None` for the edge node itself.
    pub device: Option<String>,
}

impl DeviceKey {
    /// The key of the edge node itself.
    pub fn node(node: NodeKey) -> Self {
        DeviceKey { node, device: None }
    }

    /// The key of a device of `node`.
    pub fn device(node: NodeKey, device: impl Into<String>) -> Self {
        DeviceKey { node, device: Some(device.into()) }
    }

    /// Parses `group/node` or `group/node/device` (the `Display` form, the source's record key).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let group = parts.next().filter(|p| !p.is_empty())?;
        let node = parts.next().filter(|p| !p.is_empty())?;
        let device = match parts.next() {
            None => None,
            Some(d) if !d.is_empty() => Some(d.to_owned()),
            Some(_) => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(DeviceKey { node: NodeKey::new(group, node), device })
    }

    /// The topic of commands to this node or device: `spBv1.0/<group>/NCMD/<node>` or
    /// `spBv1.0/<group>/DCMD/<node>/<device>`.
    pub fn command_topic(&self) -> String {
        match &self.device {
            None => self.node.ncmd_topic(),
            Some(d) => format!("{NAMESPACE}/{}/DCMD/{}/{d}", self.node.group, self.node.node),
        }
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            None => self.node.fmt(f),
            Some(d) => write!(f, "{}/{d}", self.node),
        }
    }
}

/// Why a payload or a metric could not be decoded. Decoding never panics, on any input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf `Payload`.
    #[error("not a Sparkplug B payload: {0}")]
    Protobuf(String),
    /// A datatype number the spec does not define.
    #[error("unknown datatype {0}")]
    UnknownDatatype(u32),
    /// A metric (or cell, parameter, property) without a datatype where one is needed.
    #[error("metric {name:?} has no datatype")]
    MissingDatatype {
        /// The metric's name (or alias, as `alias N`).
        name: String,
    },
    /// The value field does not fit the datatype (e.g. a string for an Int32).
    #[error("{datatype} value expected, found {found}")]
    WrongValue {
        /// The datatype announced.
        datatype: &'static str,
        /// What the value field held.
        found: &'static str,
    },
    /// An array's bytes do not hold a whole number of elements, or fewer than its count says.
    #[error("{datatype}: {reason}")]
    Array {
        /// The array datatype.
        datatype: &'static str,
        /// What is wrong with its bytes.
        reason: String,
    },
    /// A DataSet whose rows or types do not match its columns.
    #[error("data set: {0}")]
    DataSet(String),
    /// A property set whose keys and values differ in number.
    #[error("property set: {0}")]
    PropertySet(String),
}

/// Decodes a Sparkplug B payload (protobuf) without interpreting its metrics.
///
/// ```
/// let bytes = connector_sparkplug::encode::rebirth_payload(1_000);
/// let payload = connector_sparkplug::decode_payload(&bytes).unwrap();
/// assert_eq!(payload.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
/// assert!(connector_sparkplug::decode_payload(&[0xff]).is_err());
/// ```
pub fn decode_payload(bytes: &[u8]) -> Result<proto::Payload, DecodeError> {
    <proto::Payload as prost::Message>::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))
}
