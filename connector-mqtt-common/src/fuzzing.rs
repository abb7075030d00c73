//! Entry points for the fuzz targets (the `fuzz/` crate) and the property tests: the MQTT packet
//! decoding the connectors run on bytes from the network, in each protocol version. Not a stable
//! API.
//!
//! Both versions run on our own connection (`session::Connection`): a fixed header read by us,
//! a PUBLISH over the size limit read past by us without buffering its payload, everything else
//! through rumqttc's codec of that version and then our `Inbound` conversion. The entry points
//! feed arbitrary bytes to that same decoding, in chunks as socket reads would bring them.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::session::Connection;
use crate::wire::{Inbound, MqttVersion};

/// Decodes MQTT 5 packets from `data` until it runs out or a packet is malformed, with
/// `max_incoming` as the largest packet accepted. Returns what was decoded.
pub fn mqtt5(data: &[u8], max_incoming: u32) -> Vec<Inbound> {
    decode(MqttVersion::V5, data, usize::try_from(max_incoming).unwrap_or(usize::MAX))
}

/// Decodes MQTT 3.1.1 packets from `data` until it runs out or a packet is malformed, with
/// `max_incoming` as the largest packet accepted. Returns what was decoded.
pub fn mqtt311(data: &[u8], max_incoming: usize) -> Vec<Inbound> {
    decode(MqttVersion::V311, data, max_incoming)
}

/// Feeds `data` to a connection's decoding in chunks (their size taken from the data, so the
/// fuzzer explores splits too) and checks that the read buffer never holds more than one packet
/// under the limit: an oversize PUBLISH must be read past, never buffered.
fn decode(version: MqttVersion, data: &[u8], max_incoming: usize) -> Vec<Inbound> {
    let mut connection = Connection::detached(version, max_incoming);
    let chunk = 1 + data.first().map_or(0, |b| usize::from(*b)) * 16;
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        if connection.feed(piece, &mut out).is_err() {
            break;
        }
        let bound = max_incoming.saturating_add(5).saturating_add(chunk);
        assert!(connection.buffered() <= bound, "{} bytes buffered", connection.buffered());
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

    #[test]
    fn an_oversize_publish_whose_topic_claims_more_than_the_packet_decodes_to_nothing() {
        // Found by review, not by the fuzzer of then (it never reached our read-past code):
        // remaining length 2000 over a 1024 limit, topic length 60000. It used to underflow.
        let mut bytes = vec![0x32, 0xd0, 0x0f, 0xea, 0x60];
        bytes.resize(5 + 65_000, b'a');
        assert!(mqtt311(&bytes, 1024).is_empty());
        assert!(mqtt5(&bytes, 1024).is_empty());
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
        fn small_limits_read_past_oversize_publishes(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>(), limit in 0usize..64) {
            // The sample PUBLISH is over some of these limits: the read-past path, mutated.
            mqtt5(&mutate(sample_packets().1, edits.clone(), cut), limit as u32);
            mqtt311(&mutate(sample_packets().0, edits, cut), limit);
        }

        #[test]
        fn mqtt_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            mqtt5(&data, 1 << 16);
            mqtt311(&data, 1 << 16);
        }
    }
}
