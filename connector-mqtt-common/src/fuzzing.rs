//! Entry points for the fuzz targets (the `fuzz/` crate) and the property tests: the MQTT packet
//! decoding the connectors run on bytes from the network, in each protocol version. Not a stable
//! API.
//!
//! MQTT 5 connections are ours: bytes go through rumqttc's MQTT 5 codec (`Packet::read`)
//! and then `Inbound::from_v5`. MQTT 3.1.1 connections read through rumqttc's event loop, whose
//! codec is `rumqttc::Packet::read`, and then `Inbound::from`. Both are run here on arbitrary
//! bytes, packet after packet, as a connection's read buffer would be.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::wire::Inbound;

/// Decodes MQTT 5 packets from `data` until it runs out or a packet is malformed, with
/// `max_incoming` as the largest packet accepted. Returns what was decoded.
pub fn mqtt5(data: &[u8], max_incoming: u32) -> Vec<Inbound> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let before = buf.len();
        let Ok(packet) = p5::Packet::read(&mut buf, Some(max_incoming)) else { break };
        assert!(buf.len() < before, "a packet decoded from no bytes");
        match Inbound::from_v5(packet) {
            Ok(inbound) => out.push(inbound),
            Err(_) => break,
        }
    }
    out
}

/// Decodes MQTT 3.1.1 packets from `data` until it runs out or a packet is malformed, with
/// `max_incoming` as the largest packet accepted. Returns what was decoded.
pub fn mqtt311(data: &[u8], max_incoming: usize) -> Vec<Inbound> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let before = buf.len();
        let Ok(packet) = rumqttc::Packet::read(&mut buf, max_incoming) else { break };
        assert!(buf.len() < before, "a packet decoded from no bytes");
        out.push(Inbound::from(packet));
    }
    out
}

/// Valid packets of each version, seeds for the fuzzer and the property tests: a PUBLISH (QoS 1,
/// with MQTT 5 user properties), PUBACK, SUBACK with a refused filter, PINGRESP.
pub fn sample_packets() -> (Vec<u8>, Vec<u8>) {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let mut v5 = BytesMut::new();
    let mut publish = p5::Publish::new("plant/line1/temp", QoS5::AtLeastOnce, "21.5", None);
    publish.pkid = 7;
    publish.properties = Some(p5::PublishProperties {
        user_properties: vec![("unit".into(), "C".into())],
        content_type: Some("text/plain".into()),
        ..p5::PublishProperties::default()
    });
    let packets = [
        p5::Packet::Publish(publish),
        p5::Packet::PubAck(p5::PubAck::new(3, None)),
        p5::Packet::SubAck(p5::SubAck {
            pkid: 1,
            return_codes: vec![
                p5::SubscribeReasonCode::Success(QoS5::AtLeastOnce),
                p5::SubscribeReasonCode::NotAuthorized,
            ],
            properties: None,
        }),
        p5::Packet::PingResp(p5::PingResp),
    ];
    for p in packets {
        let _ = p.write(&mut v5, None);
    }
    let mut v4 = BytesMut::new();
    let mut publish = rumqttc::Publish::new("plant/line1/temp", rumqttc::QoS::AtLeastOnce, "21.5");
    publish.pkid = 7;
    let packets = [
        rumqttc::Packet::Publish(publish),
        rumqttc::Packet::PubAck(rumqttc::PubAck::new(3)),
        rumqttc::Packet::SubAck(rumqttc::SubAck::new(
            1,
            vec![
                rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
                rumqttc::SubscribeReasonCode::Failure,
            ],
        )),
        rumqttc::Packet::PingResp,
    ];
    for p in packets {
        let _ = p.write(&mut v4, usize::MAX);
    }
    (v4.to_vec(), v5.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_samples_decode() {
        let (v4, v5) = sample_packets();
        assert_eq!(mqtt311(&v4, 1 << 20).len(), 4);
        let got = mqtt5(&v5, 1 << 20);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            matches!(&got[2], Inbound::SubAck { refused, .. } if refused.len() == 1 && refused[0].0 == 1),
            "{got:?}"
        );
    }

    /// Writes the MQTT seed inputs to `fuzz/seeds/mqtt_packets/` (run by hand with `--ignored`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/mqtt_packets");
        std::fs::create_dir_all(&dir).unwrap();
        let (v4, v5) = sample_packets();
        // The first byte picks the version: even 3.1.1, odd 5 (and a 1 MiB limit below 0x80).
        std::fs::write(dir.join("v311"), [&[0u8][..], &v4].concat()).unwrap();
        std::fs::write(dir.join("v5"), [&[1u8][..], &v5].concat()).unwrap();
    }

    fn mutate(mut data: Vec<u8>, edits: Vec<(usize, u8)>, cut: usize) -> Vec<u8> {
        for (at, byte) in edits {
            let n = data.len();
            data[at % n] = byte;
        }
        data.truncate(data.len() - cut % data.len());
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn mqtt5_on_mutated_packets(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
            mqtt5(&mutate(sample_packets().1, edits, cut), 1 << 20);
        }

        #[test]
        fn mqtt311_on_mutated_packets(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
            mqtt311(&mutate(sample_packets().0, edits, cut), 1 << 20);
        }

        #[test]
        fn mqtt_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            mqtt5(&data, 1 << 16);
            mqtt311(&data, 1 << 16);
        }
    }
}
