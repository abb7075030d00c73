//! The MQTT packets the connectors exchange, the same for MQTT 3.1.1 and MQTT 5 ([`Inbound`],
//! [`Outbound`], [`Message`]), and their conversions to and from rumqttc's packets of each
//! version. A message's MQTT 5 properties travel with it; on 3.1.1 they are absent.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// The MQTT protocol version a connector speaks.
///
/// ```
/// use connector_mqtt_common::MqttVersion;
///
/// let v: MqttVersion = serde_json::from_str(r#""5""#).unwrap();
/// assert_eq!(v, MqttVersion::V5);
/// assert_eq!(MqttVersion::default(), MqttVersion::V311);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: properties (user properties, content type, expiry, ...) and reason codes.
    #[serde(rename = "5")]
    V5,
}

/// A PUBLISH, received or to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Duplicate flag (a redelivery).
    pub dup: bool,
    /// Packet identifier (0 for QoS 0).
    pub pkid: u16,
    /// MQTT 5 properties; always `None` on MQTT 3.1.1.
    pub properties: Option<Box<PublishProperties>>,
}

/// Bytes of an MQTT variable-length integer holding `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

impl Message {
    /// The size in bytes of this message's PUBLISH packet in `version`, fixed header included:
    /// what a broker's Maximum Packet Size (and our `max_packet_size`) is compared with. The
    /// packet identifier of a QoS 1/2 message is counted even while `pkid` is still 0.
    ///
    /// ```
    /// use connector_mqtt_common::{Message, MqttVersion};
    ///
    /// let m = Message {
    ///     topic: "a/b".into(),
    ///     payload: bytes::Bytes::from_static(b"hello"),
    ///     qos: rumqttc::QoS::AtLeastOnce,
    ///     retain: false,
    ///     dup: false,
    ///     pkid: 0,
    ///     properties: None,
    /// };
    /// // 1 (type) + 1 (length) + 2 + 3 (topic) + 2 (packet id) + 5 (payload)
    /// assert_eq!(m.packet_size(MqttVersion::V311), 14);
    /// // + 1 (empty property length)
    /// assert_eq!(m.packet_size(MqttVersion::V5), 15);
    /// ```
    pub fn packet_size(&self, version: MqttVersion) -> usize {
        publish_size(version, &self.topic, self.payload.len(), self.qos, self.properties.as_deref())
    }
}

/// The size in bytes of a PUBLISH packet with this topic, payload length, QoS and MQTT 5
/// properties, in `version`, fixed header included (see [`Message::packet_size`]).
pub fn publish_size(
    version: MqttVersion,
    topic: &str,
    payload_len: usize,
    qos: QoS,
    properties: Option<&PublishProperties>,
) -> usize {
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let properties_len = match (version, properties) {
        (MqttVersion::V311, _) => 0,
        (MqttVersion::V5, None) => 1,
        (MqttVersion::V5, Some(p)) => {
            // rumqttc keeps the property length private: measure an otherwise empty QoS 0
            // PUBLISH (1 type byte, remaining length, 2 bytes of empty topic, properties).
            let size = p5::Publish { properties: Some(p.clone()), ..p5::Publish::default() }.size();
            let remaining = (1..=4)
                .map(|v| size.saturating_sub(1 + v))
                .find(|len| 1 + varint_len(*len) + len == size)
                .unwrap_or(size);
            remaining.saturating_sub(2)
        }
    };
    let len = 2 + topic.len() + pkid + properties_len + payload_len;
    1 + varint_len(len) + len
}

/// A packet from the broker, as the connectors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message.
    Publish(Message),
    /// QoS 1 publish acknowledged.
    PubAck(u16),
    /// QoS 2 publish received by the broker (answer with PUBREL).
    PubRec(u16),
    /// QoS 2 release of a message we received (answer with PUBCOMP).
    PubRel(u16),
    /// QoS 2 publish complete.
    PubComp(u16),
    /// MQTT 5: the broker answered one of our publishes with a failure reason code (>= 0x80).
    /// A refused PUBACK or PUBREC means the broker did not take the message; the flow ends there
    /// (no PUBREL follows a refused PUBREC).
    Refused(Refusal),
    /// Subscription result: the refused filters.
    SubAck {
        /// Packet identifier of the SUBSCRIBE.
        pkid: u16,
        /// Indexes (in the SUBSCRIBE's order) of the filters the broker refused, each with the
        /// broker's reason (`0x80` in MQTT 3.1.1; the reason code and reason string in MQTT 5).
        refused: Vec<(usize, String)>,
    },
    /// A PUBLISH over `max_packet_size`, read past without its payload: `message` has the
    /// topic, QoS, flags and packet id and an empty payload; `size` is the packet's size.
    Oversize {
        /// The message without its payload (nor MQTT 5 properties).
        message: Message,
        /// Size of the whole PUBLISH packet in bytes.
        size: usize,
    },
    /// Answer to our ping.
    PingResp,
    /// The broker closes the connection (MQTT 5), with its reason.
    Disconnect(String),
    /// Anything else (ignored).
    Other,
}

/// Which acknowledgement carried a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPacket {
    /// The answer to a QoS 1 PUBLISH.
    PubAck,
    /// The first answer to a QoS 2 PUBLISH.
    PubRec,
    /// The answer to our PUBREL (QoS 2).
    PubComp,
}

impl std::fmt::Display for AckPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AckPacket::PubAck => "PUBACK",
            AckPacket::PubRec => "PUBREC",
            AckPacket::PubComp => "PUBCOMP",
        })
    }
}

/// An MQTT 5 acknowledgement with a failure reason code: the broker refused the publish.
///
/// ```
/// use connector_mqtt_common::{AckPacket, Refusal};
///
/// let r = Refusal { pkid: 3, packet: AckPacket::PubAck, code: 0x87, name: "NotAuthorized".into(), reason: None };
/// assert_eq!(r.to_string(), "PUBACK reason code 0x87 (NotAuthorized)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Packet identifier of the publish.
    pub pkid: u16,
    /// The acknowledgement that carried it.
    pub packet: AckPacket,
    /// The reason code (>= 0x80).
    pub code: u8,
    /// The reason code's name (`NotAuthorized`, `QuotaExceeded`, ...).
    pub name: String,
    /// The broker's reason string, if it sent one.
    pub reason: Option<String>,
}

impl Refusal {
    /// The reason code as a bounded label value (the `reason` of `mqtt_publish_refused_total`):
    /// MQTT 5's names for the codes a PUBACK or PUBREC may carry, `other` for the rest.
    ///
    /// ```
    /// use connector_mqtt_common::{AckPacket, Refusal};
    ///
    /// let r = Refusal { pkid: 3, packet: AckPacket::PubAck, code: 0x97, name: "QuotaExceeded".into(), reason: None };
    /// assert_eq!(r.reason_label(), "quota_exceeded");
    /// ```
    pub fn reason_label(&self) -> &'static str {
        match self.code {
            0x80 => "unspecified_error",
            0x83 => "implementation_specific_error",
            0x87 => "not_authorized",
            0x90 => "topic_name_invalid",
            0x91 => "packet_identifier_in_use",
            0x92 => "packet_identifier_not_found",
            0x97 => "quota_exceeded",
            0x99 => "payload_format_invalid",
            _ => "other",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} reason code {:#04x} ({})", self.packet, self.code, self.name)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// The number of an MQTT 5 PUBACK or PUBREC reason (rumqttc keeps its own mapping private; the
/// two enums have the same variants).
macro_rules! publish_reason_code {
    ($reason:expr, $enum:ident) => {{
        use p5::$enum as R;
        match $reason {
            R::Success => 0x00,
            R::NoMatchingSubscribers => 0x10,
            R::UnspecifiedError => 0x80,
            R::ImplementationSpecificError => 0x83,
            R::NotAuthorized => 0x87,
            R::TopicNameInvalid => 0x90,
            R::PacketIdentifierInUse => 0x91,
            R::QuotaExceeded => 0x97,
            R::PayloadFormatInvalid => 0x99,
        }
    }};
}

fn ack_code(r: &p5::PubAckReason) -> u8 {
    publish_reason_code!(r, PubAckReason)
}

fn rec_code(r: &p5::PubRecReason) -> u8 {
    publish_reason_code!(r, PubRecReason)
}

/// `ok` when `code` is a success (< 0x80), else the refusal.
fn acked(
    pkid: u16,
    packet: AckPacket,
    code: u8,
    name: impl std::fmt::Debug,
    reason: Option<String>,
    ok: Inbound,
) -> Inbound {
    if code < 0x80 {
        return ok;
    }
    Inbound::Refused(Refusal { pkid, packet, code, name: format!("{name:?}"), reason })
}

/// A packet to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A message.
    Publish(Message),
    /// Acknowledge a QoS 1 message.
    PubAck(u16),
    /// Acknowledge receipt of a QoS 2 message.
    PubRec(u16),
    /// Release a QoS 2 publish the broker received.
    PubRel(u16),
    /// Complete a QoS 2 message we received.
    PubComp(u16),
    /// Subscribe to filters.
    Subscribe {
        /// Packet identifier.
        pkid: u16,
        /// Filters and their QoS.
        filters: Vec<(String, QoS)>,
    },
    /// Keep-alive ping.
    PingReq,
    /// Normal disconnect (the session stays; the last will is discarded).
    Disconnect,
}

pub(crate) fn qos_to_v5(q: QoS) -> QoS5 {
    match q {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn qos_from_v5(q: QoS5) -> QoS {
    match q {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl From<rumqttc::Packet> for Inbound {
    fn from(p: rumqttc::Packet) -> Self {
        use rumqttc::Packet as P;
        match p {
            P::Publish(p) => Inbound::Publish(Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                properties: None,
            }),
            P::PubAck(a) => Inbound::PubAck(a.pkid),
            P::PubRec(a) => Inbound::PubRec(a.pkid),
            P::PubRel(a) => Inbound::PubRel(a.pkid),
            P::PubComp(a) => Inbound::PubComp(a.pkid),
            P::SubAck(a) => Inbound::SubAck {
                pkid: a.pkid,
                refused: a
                    .return_codes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .map(|(i, _)| (i, "return code 0x80 (failure)".to_owned()))
                    .collect(),
            },
            P::PingResp => Inbound::PingResp,
            _ => Inbound::Other,
        }
    }
}

impl From<Outbound> for rumqttc::Packet {
    fn from(o: Outbound) -> Self {
        use rumqttc::Packet as P;
        match o {
            Outbound::Publish(m) => {
                let mut p = rumqttc::Publish::from_bytes(m.topic, m.qos, m.payload);
                p.retain = m.retain;
                p.dup = m.dup;
                p.pkid = m.pkid;
                P::Publish(p)
            }
            Outbound::PubAck(id) => P::PubAck(rumqttc::PubAck::new(id)),
            Outbound::PubRec(id) => P::PubRec(rumqttc::PubRec::new(id)),
            Outbound::PubRel(id) => P::PubRel(rumqttc::PubRel::new(id)),
            Outbound::PubComp(id) => P::PubComp(rumqttc::PubComp::new(id)),
            Outbound::Subscribe { pkid, filters } => {
                let mut s = rumqttc::Subscribe::new_many(
                    filters.into_iter().map(|(f, q)| rumqttc::SubscribeFilter::new(f, q)),
                );
                s.pkid = pkid;
                P::Subscribe(s)
            }
            Outbound::PingReq => P::PingReq,
            Outbound::Disconnect => P::Disconnect,
        }
    }
}

impl Inbound {
    /// The connector's view of an MQTT 5 packet. A topic that is not UTF-8 (which a broker must
    /// not send) is an error.
    pub(crate) fn from_v5(p: p5::Packet) -> Result<Self, String> {
        use p5::Packet as P;
        Ok(match p {
            P::Publish(p) => Inbound::Publish(Message {
                topic: String::from_utf8(p.topic.to_vec())
                    .map_err(|_| "the broker sent a topic that is not UTF-8".to_owned())?,
                payload: p.payload,
                qos: qos_from_v5(p.qos),
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                properties: p.properties.map(Box::new),
            }),
            P::PubAck(a) => acked(
                a.pkid,
                AckPacket::PubAck,
                ack_code(&a.reason),
                a.reason,
                a.properties.and_then(|p| p.reason_string),
                Inbound::PubAck(a.pkid),
            ),
            P::PubRec(a) => acked(
                a.pkid,
                AckPacket::PubRec,
                rec_code(&a.reason),
                a.reason,
                a.properties.and_then(|p| p.reason_string),
                Inbound::PubRec(a.pkid),
            ),
            P::PubRel(a) => Inbound::PubRel(a.pkid),
            // PUBCOMP only follows a successful PUBREC: the broker already owns the message, so
            // even "packet identifier not found" (0x92: it lost the flow's state, e.g. across a
            // restart) completes the flow; it is not a refusal of the message.
            P::PubComp(a) => {
                if a.reason == p5::PubCompReason::PacketIdentifierNotFound {
                    tracing::warn!(pkid = a.pkid, "PUBCOMP with reason 0x92 (packet identifier not found): the broker had taken the message with its PUBREC; completing the flow");
                }
                Inbound::PubComp(a.pkid)
            }
            P::SubAck(a) => {
                let why = a
                    .properties
                    .and_then(|p| p.reason_string)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                Inbound::SubAck {
                    pkid: a.pkid,
                    refused: a
                        .return_codes
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                        .map(|(i, c)| (i, format!("reason code {c:?}{why}")))
                        .collect(),
                }
            }
            P::PingResp(_) => Inbound::PingResp,
            P::Disconnect(d) => Inbound::Disconnect(format!(
                "{:?}{}",
                d.reason_code,
                d.properties
                    .and_then(|p| p.reason_string)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            _ => Inbound::Other,
        })
    }
}

impl From<Outbound> for p5::Packet {
    fn from(o: Outbound) -> Self {
        use p5::Packet as P;
        match o {
            Outbound::Publish(m) => P::Publish(p5::Publish {
                dup: m.dup,
                qos: qos_to_v5(m.qos),
                retain: m.retain,
                topic: Bytes::from(m.topic),
                pkid: m.pkid,
                payload: m.payload,
                properties: m.properties.map(|p| *p),
            }),
            Outbound::PubAck(id) => P::PubAck(p5::PubAck::new(id, None)),
            Outbound::PubRec(id) => P::PubRec(p5::PubRec::new(id, None)),
            Outbound::PubRel(id) => P::PubRel(p5::PubRel::new(id, None)),
            Outbound::PubComp(id) => P::PubComp(p5::PubComp::new(id, None)),
            Outbound::Subscribe { pkid, filters } => {
                let mut s = p5::Subscribe::new_many(
                    filters.into_iter().map(|(f, q)| p5::Filter::new(f, qos_to_v5(q))),
                    None,
                );
                s.pkid = pkid;
                P::Subscribe(s)
            }
            Outbound::PingReq => P::PingReq(p5::PingReq),
            Outbound::Disconnect => {
                P::Disconnect(p5::Disconnect::new(p5::DisconnectReasonCode::NormalDisconnection))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v5_publish_keeps_its_properties_through_the_codec() {
        let props = PublishProperties {
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            content_type: Some("application/json".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            ..PublishProperties::default()
        };
        let out = Outbound::Publish(Message {
            topic: "t/1".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 7,
            properties: Some(Box::new(props.clone())),
        });
        let mut buf = bytes::BytesMut::new();
        p5::Packet::from(out).write(&mut buf, None).unwrap();
        let back = Inbound::from_v5(p5::Packet::read(&mut buf, None).unwrap()).unwrap();
        let Inbound::Publish(m) = back else { panic!("{back:?}") };
        assert_eq!((m.topic.as_str(), m.pkid), ("t/1", 7));
        assert_eq!(*m.properties.unwrap(), props);
    }

    #[test]
    fn packet_size_is_what_the_codec_writes() {
        let mut m = Message {
            topic: "cars/car-1/cmd".into(),
            payload: Bytes::from(vec![b'x'; 20_000]),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 9,
            properties: None,
        };
        let mut buf = bytes::BytesMut::new();
        rumqttc::Packet::from(Outbound::Publish(m.clone())).write(&mut buf, usize::MAX).unwrap();
        assert_eq!(m.packet_size(MqttVersion::V311), buf.len());
        m.properties = Some(Box::new(PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        }));
        let mut buf = bytes::BytesMut::new();
        p5::Packet::from(Outbound::Publish(m.clone())).write(&mut buf, None).unwrap();
        assert_eq!(m.packet_size(MqttVersion::V5), buf.len());
    }

    #[test]
    fn failure_reason_codes_are_refusals_and_successes_acknowledgements() {
        let roundtrip = |p: p5::Packet| {
            let mut buf = bytes::BytesMut::new();
            p.write(&mut buf, None).unwrap();
            Inbound::from_v5(p5::Packet::read(&mut buf, None).unwrap()).unwrap()
        };
        let mut denied = p5::PubAck::new(4, None);
        denied.reason = p5::PubAckReason::NotAuthorized;
        denied.properties = Some(p5::PubAckProperties {
            reason_string: Some("acl".into()),
            user_properties: Vec::new(),
        });
        let Inbound::Refused(r) = roundtrip(p5::Packet::PubAck(denied)) else { panic!() };
        assert_eq!(
            (r.pkid, r.packet, r.code, r.name.as_str()),
            (4, AckPacket::PubAck, 0x87, "NotAuthorized")
        );
        assert_eq!(r.to_string(), "PUBACK reason code 0x87 (NotAuthorized): acl");
        let mut no_subscribers = p5::PubAck::new(5, None);
        no_subscribers.reason = p5::PubAckReason::NoMatchingSubscribers;
        assert_eq!(roundtrip(p5::Packet::PubAck(no_subscribers)), Inbound::PubAck(5));
        let mut quota = p5::PubRec::new(6, None);
        quota.reason = p5::PubRecReason::QuotaExceeded;
        let Inbound::Refused(r) = roundtrip(p5::Packet::PubRec(quota)) else { panic!() };
        assert_eq!((r.packet, r.code), (AckPacket::PubRec, 0x97));
        assert_eq!(roundtrip(p5::Packet::PubRec(p5::PubRec::new(7, None))), Inbound::PubRec(7));
    }
}
