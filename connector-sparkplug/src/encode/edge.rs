//! [`EdgeNode`]: a simulated Sparkplug edge node that writes the topics and payloads of its
//! messages, numbered as the spec says. The MQTT connection is the caller's.

use std::collections::HashMap;

use super::{encode_payload, metric, EncodeError};
use crate::proto::payload as pb;
use crate::proto::Payload;
use crate::topic::message_topic;
use crate::{DataType, DeviceKey, MessageType, NodeKey, Value, BD_SEQ, REBIRTH};

/// A simulated edge node: `seq` numbers every message but NDEATH (0 to 255, wrapping; NBIRTH
/// restarts it at 0), `bd_seq` is the birth/death sequence number of the current MQTT session,
/// carried by NBIRTH and by the NDEATH that is the session's will. Connect with [`ndeath`] as
/// the will; call [`next_session`] before each reconnect.
///
/// DATA messages send a metric by alias only (no name, no datatype) when its BIRTH gave it an
/// alias, as the spec recommends, so a host must resolve them from the BIRTH.
///
/// [`ndeath`]: EdgeNode::ndeath
/// [`next_session`]: EdgeNode::next_session
///
/// ```
/// use connector_sparkplug::encode::EdgeNode;
/// use connector_sparkplug::{decode_payload, DataType, Value};
/// let mut edge = EdgeNode::new("plant1", "line4");
/// let (will_topic, _will) = edge.ndeath(0);
/// assert_eq!(will_topic, "spBv1.0/plant1/NDEATH/line4");
/// let (_, birth) = edge.nbirth(&[("Speed", Some(1), Value::Float(1.5), DataType::Float)], 0).unwrap();
/// assert_eq!(decode_payload(&birth).unwrap().seq, Some(0));
/// // No DBIRTH of press2 yet: its metrics have no datatype.
/// assert!(edge.ddata("press2", &[("Pressure", Value::Double(2.0))], 0).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct EdgeNode {
    /// The group id.
    pub group: String,
    /// The edge node id.
    pub node: String,
    /// The bdSeq of the current session (0 to 255).
    pub bd_seq: u64,
    /// The seq of the next message (0 to 255).
    pub seq: u64,
    /// Name -> (alias, datatype) from the last birth of the node (`None`) and of each device.
    births: HashMap<Option<String>, BirthTable>,
}

/// Name -> (alias, datatype) of one birth.
type BirthTable = HashMap<String, (Option<u64>, DataType)>;

/// A metric of a birth: name, alias, value, datatype.
pub type BirthMetric<'a> = (&'a str, Option<u64>, Value, DataType);

impl EdgeNode {
    /// An edge node of `group` with bdSeq 0 and seq 0.
    pub fn new(group: impl Into<String>, node: impl Into<String>) -> Self {
        EdgeNode {
            group: group.into(),
            node: node.into(),
            bd_seq: 0,
            seq: 0,
            births: HashMap::new(),
        }
    }

    /// The node's key.
    pub fn key(&self) -> NodeKey {
        NodeKey::new(self.group.clone(), self.node.clone())
    }

    fn device_key(&self, device: Option<&str>) -> DeviceKey {
        DeviceKey { node: self.key(), device: device.map(str::to_owned) }
    }

    /// Starts a new MQTT session: the next bdSeq (wrapping at 256). Build the will
    /// ([`ndeath`](EdgeNode::ndeath)) after this, then publish NBIRTH.
    pub fn next_session(&mut self) {
        self.bd_seq = (self.bd_seq + 1) % 256;
    }

    /// Takes the seq of the next message and advances it (wrapping at 256).
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = (self.seq + 1) % 256;
        seq
    }

    fn message(
        &mut self,
        kind: MessageType,
        device: Option<&str>,
        metrics: Vec<pb::Metric>,
        now_ms: u64,
    ) -> (String, Vec<u8>) {
        let seq = (kind != MessageType::NDeath).then(|| self.next_seq());
        let payload = Payload { timestamp: Some(now_ms), metrics, seq, ..Payload::default() };
        (message_topic(kind, &self.device_key(device)), encode_payload(&payload))
    }

    fn birth_metrics(
        &mut self,
        device: Option<&str>,
        metrics: &[BirthMetric<'_>],
        now_ms: u64,
    ) -> Result<Vec<pb::Metric>, EncodeError> {
        let mut table = HashMap::with_capacity(metrics.len());
        let mut out = Vec::with_capacity(metrics.len() + 2);
        for (name, alias, value, datatype) in metrics {
            out.push(metric(name, *alias, value, *datatype, Some(now_ms))?);
            table.insert((*name).to_owned(), (*alias, *datatype));
        }
        self.births.insert(device.map(str::to_owned), table);
        Ok(out)
    }

    /// NBIRTH: seq restarts at 0; the metrics are preceded by `bdSeq` (Int64, the session's
    /// bdSeq) and, unless given, `Node Control/Rebirth` = false. Forgets the devices' births.
    pub fn nbirth(
        &mut self,
        metrics: &[BirthMetric<'_>],
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        self.seq = 0;
        self.births.clear();
        let mut out = vec![metric(
            BD_SEQ,
            None,
            &Value::Int(self.bd_seq as i64),
            DataType::Int64,
            Some(now_ms),
        )?];
        if !metrics.iter().any(|(name, ..)| *name == REBIRTH) {
            out.push(metric(
                REBIRTH,
                None,
                &Value::Boolean(false),
                DataType::Boolean,
                Some(now_ms),
            )?);
        }
        out.extend(self.birth_metrics(None, metrics, now_ms)?);
        Ok(self.message(MessageType::NBirth, None, out, now_ms))
    }

    /// DBIRTH of `device` (the node must have sent its NBIRTH).
    pub fn dbirth(
        &mut self,
        device: &str,
        metrics: &[BirthMetric<'_>],
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        let out = self.birth_metrics(Some(device), metrics, now_ms)?;
        Ok(self.message(MessageType::DBirth, Some(device), out, now_ms))
    }

    fn data_metrics(
        &self,
        device: Option<&str>,
        metrics: &[(&str, Value)],
        now_ms: u64,
    ) -> Result<Vec<pb::Metric>, EncodeError> {
        let table = self.births.get(&device.map(str::to_owned));
        metrics
            .iter()
            .map(|(name, value)| {
                let Some(&(alias, datatype)) = table.and_then(|t| t.get(*name)) else {
                    return Err(EncodeError::NotInBirth((*name).to_owned()));
                };
                let mut m = metric(name, alias, value, datatype, Some(now_ms))?;
                if alias.is_some() {
                    m.name = None;
                    m.datatype = None;
                }
                Ok(m)
            })
            .collect()
    }

    /// NDATA with metrics of the NBIRTH (by alias where it gave one).
    pub fn ndata(
        &mut self,
        metrics: &[(&str, Value)],
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        let out = self.data_metrics(None, metrics, now_ms)?;
        Ok(self.message(MessageType::NData, None, out, now_ms))
    }

    /// DDATA of `device` with metrics of its DBIRTH (by alias where it gave one).
    pub fn ddata(
        &mut self,
        device: &str,
        metrics: &[(&str, Value)],
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        let out = self.data_metrics(Some(device), metrics, now_ms)?;
        Ok(self.message(MessageType::DData, Some(device), out, now_ms))
    }

    /// DDEATH of `device` (it has a seq, no metrics).
    pub fn ddeath(&mut self, device: &str, now_ms: u64) -> (String, Vec<u8>) {
        self.message(MessageType::DDeath, Some(device), Vec::new(), now_ms)
    }

    /// NDEATH of the current session: the `bdSeq` metric only, no seq. This is the will to
    /// register when connecting (and what a node publishes itself before a clean disconnect).
    pub fn ndeath(&self, now_ms: u64) -> (String, Vec<u8>) {
        let bd_seq = pb::Metric {
            name: Some(BD_SEQ.to_owned()),
            timestamp: Some(now_ms),
            datatype: Some(DataType::Int64.number()),
            value: Some(pb::metric::Value::LongValue(self.bd_seq)),
            ..pb::Metric::default()
        };
        let payload =
            Payload { timestamp: Some(now_ms), metrics: vec![bd_seq], ..Payload::default() };
        (message_topic(MessageType::NDeath, &self.device_key(None)), encode_payload(&payload))
    }

    /// A message of any type with metrics built by the caller, numbered like the others (for
    /// tests of what a well-behaved node would not send).
    pub fn raw(
        &mut self,
        kind: MessageType,
        device: Option<&str>,
        metrics: Vec<pb::Metric>,
        now_ms: u64,
    ) -> (String, Vec<u8>) {
        self.message(kind, device, metrics, now_ms)
    }
}
