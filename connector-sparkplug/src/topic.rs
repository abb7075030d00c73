//! Sparkplug topics: `spBv1.0/<group>/<TYPE>/<node>[/<device>]` for the eight message types and
//! `spBv1.0/STATE/<host_id>` for host applications. Parsing borrows from the topic string.
//!
//! ```
//! use connector_sparkplug::{MessageType, SparkplugTopic};
//! let topic = SparkplugTopic::parse("spBv1.0/plant1/DDATA/line4/press2").unwrap();
//! assert_eq!(
//!     topic,
//!     SparkplugTopic::Message {
//!         group: "plant1",
//!         kind: MessageType::DData,
//!         node: "line4",
//!         device: Some("press2"),
//!     }
//! );
//! assert_eq!(
//!     SparkplugTopic::parse("spBv1.0/STATE/scada").unwrap(),
//!     SparkplugTopic::State { host_id: "scada" }
//! );
//! ```

use crate::{DeviceKey, NodeKey, NAMESPACE};

/// Sparkplug message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MessageType {
    /// Edge node birth certificate.
    NBirth,
    /// Edge node death certificate (the MQTT will).
    NDeath,
    /// Edge node data.
    NData,
    /// Command to an edge node.
    NCmd,
    /// Device birth certificate.
    DBirth,
    /// Device death certificate.
    DDeath,
    /// Device data.
    DData,
    /// Command to a device.
    DCmd,
}

impl MessageType {
    /// Every message type.
    pub const ALL: [MessageType; 8] = [
        MessageType::NBirth,
        MessageType::NDeath,
        MessageType::NData,
        MessageType::NCmd,
        MessageType::DBirth,
        MessageType::DDeath,
        MessageType::DData,
        MessageType::DCmd,
    ];

    /// The topic level: `"NBIRTH"`, `"NDEATH"`, `"NDATA"`, `"NCMD"`, `"DBIRTH"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::NData => "NDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::DData => "DDATA",
            MessageType::DCmd => "DCMD",
        }
    }

    /// The message type of a topic level (`"NDATA"` ...), `None` for anything else.
    pub fn from_level(level: &str) -> Option<Self> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == level)
    }

    /// True for the device message types (DBIRTH, DDEATH, DDATA, DCMD).
    pub fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparkplugTopic<'a> {
    /// `spBv1.0/<group>/<TYPE>/<node>[/<device>]`.
    Message {
        /// The group id.
        group: &'a str,
        /// The message type.
        kind: MessageType,
        /// The edge node id.
        node: &'a str,
        /// The device id (set exactly for the device message types).
        device: Option<&'a str>,
    },
    /// `spBv1.0/STATE/<host_id>`: a host application's online/offline state.
    State {
        /// The host application id.
        host_id: &'a str,
    },
}

/// Why a topic is not a Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The first level is not `spBv1.0`.
    #[error("topic {0:?} is not under the Sparkplug namespace spBv1.0")]
    Namespace(String),
    /// The third level is not one of NBIRTH, NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA, DCMD.
    #[error("topic {0:?}: unknown Sparkplug message type")]
    MessageType(String),
    /// Too few or too many levels for the message type, an empty level, or a wildcard.
    #[error(
        "topic {0:?}: not a Sparkplug topic (wrong number of levels, empty level or wildcard)"
    )]
    Shape(String),
}

impl<'a> SparkplugTopic<'a> {
    /// Parses a topic. Node message types take exactly 4 levels, device message types 5,
    /// STATE 3; no level may be empty or hold `+` or `#`.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let shape = || TopicError::Shape(topic.to_owned());
        let mut levels = topic.split('/');
        if levels.next() != Some(NAMESPACE) {
            return Err(TopicError::Namespace(topic.to_owned()));
        }
        let rest: Vec<&'a str> = levels.take(5).collect();
        if rest.iter().any(|l| l.is_empty() || l.contains(['+', '#'])) {
            return Err(shape());
        }
        match rest.as_slice() {
            ["STATE", host_id] => Ok(SparkplugTopic::State { host_id }),
            [group, kind, node, more @ ..] => {
                let kind = MessageType::from_level(kind)
                    .ok_or_else(|| TopicError::MessageType(topic.to_owned()))?;
                let device = match (kind.is_device(), more) {
                    (false, []) => None,
                    (true, [device]) => Some(*device),
                    _ => return Err(shape()),
                };
                Ok(SparkplugTopic::Message { group, kind, node, device })
            }
            _ => Err(shape()),
        }
    }

    /// The node or device a message topic names (`None` for STATE).
    pub fn device_key(&self) -> Option<DeviceKey> {
        match *self {
            SparkplugTopic::Message { group, node, device, .. } => Some(DeviceKey {
                node: NodeKey::new(group, node),
                device: device.map(str::to_owned),
            }),
            SparkplugTopic::State { .. } => None,
        }
    }
}

/// The topic of a message of `kind` for `device` (`spBv1.0/<group>/<TYPE>/<node>[/<device>]`).
/// A device id given with a node message type is left out (and the reverse cannot be expressed).
pub fn message_topic(kind: MessageType, device: &DeviceKey) -> String {
    let node = &device.node;
    match (&device.device, kind.is_device()) {
        (Some(d), true) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", node.group, node.node),
        _ => format!("{NAMESPACE}/{}/{kind}/{}", node.group, node.node),
    }
}

/// The topic of a host application's STATE messages: `spBv1.0/STATE/<host_id>`.
pub fn state_topic(host_id: &str) -> String {
    format!("{NAMESPACE}/STATE/{host_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_type_parses_and_bad_shapes_do_not() {
        for kind in MessageType::ALL {
            let topic = if kind.is_device() {
                format!("spBv1.0/g/{kind}/n/d")
            } else {
                format!("spBv1.0/g/{kind}/n")
            };
            let parsed = SparkplugTopic::parse(&topic).unwrap();
            assert_eq!(
                parsed,
                SparkplugTopic::Message {
                    group: "g",
                    kind,
                    node: "n",
                    device: kind.is_device().then_some("d")
                }
            );
            let key = parsed.device_key().unwrap();
            assert_eq!(message_topic(kind, &key), topic);
        }
        for bad in [
            "spBv1.0/g/NDATA/n/d",
            "spBv1.0/g/DDATA/n",
            "spBv1.0/g/NDATA",
            "spBv1.0//NDATA/n",
            "spBv1.0/g/NDATA/+",
            "spBv1.0/g/DDATA/n/d/e",
            "spBv1.0/STATE",
        ] {
            assert!(matches!(SparkplugTopic::parse(bad), Err(TopicError::Shape(_))), "{bad}");
        }
        assert!(matches!(
            SparkplugTopic::parse("spBv1.0/g/NFOO/n"),
            Err(TopicError::MessageType(_))
        ));
        assert!(matches!(
            SparkplugTopic::parse("spAv1.0/g/NDATA/n"),
            Err(TopicError::Namespace(_))
        ));
        assert_eq!(state_topic("h"), "spBv1.0/STATE/h");
    }
}
