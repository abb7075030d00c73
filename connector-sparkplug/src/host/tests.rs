//! The host's rules, one test each.

use super::*;
use crate::encode::EdgeNode;
use crate::proto::payload as pb;
use crate::{DataType, Value};

fn host() -> HostState {
    HostState::new(HostConfig::default())
}

fn birth(edge: &mut EdgeNode, host: &mut HostState, now: u64) {
    let (t, p) = edge
        .nbirth(
            &[
                ("Temp", Some(1), Value::Double(1.0), DataType::Double),
                ("Offset", Some(2), Value::Int(-1), DataType::Int8),
            ],
            now,
        )
        .unwrap();
    let handled = host.handle(&t, &p, now);
    assert!(matches!(handled.event, Event::Birth { .. }), "{handled:?}");
    assert_eq!(handled.state_changed, Some(edge.key()));
}

fn data(edge: &mut EdgeNode, host: &mut HostState, now: u64) -> Handled {
    let (t, p) = edge.ndata(&[("Temp", Value::Double(2.0))], now).unwrap();
    host.handle(&t, &p, now)
}

fn is_data(h: &Handled) -> bool {
    matches!(h.event, Event::Data { .. }) && h.rebirth.is_none()
}

#[test]
fn a_gap_yields_exactly_one_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    edge.next_seq();
    assert!(is_data(&data(&mut edge, &mut host, 10)));
    // A second gap before the deadline is covered by the same rebirth.
    edge.next_seq();
    assert!(is_data(&data(&mut edge, &mut host, 20)));
    assert!(host.tick(2_009).is_empty());
    let rebirths = host.tick(2_010);
    assert_eq!(rebirths.len(), 1);
    assert_eq!(rebirths[0].node, edge.key());
    assert!(host.tick(100_000).is_empty());
    assert_eq!(host.next_deadline(), None);
}

#[test]
fn a_filled_gap_yields_no_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    let (t1, p1) = edge.ndata(&[("Temp", Value::Double(2.0))], 1).unwrap();
    assert!(is_data(&data(&mut edge, &mut host, 2))); // seq 2 before seq 1
    assert_eq!(host.next_deadline(), Some(2_002));
    assert!(is_data(&host.handle(&t1, &p1, 3))); // seq 1 arrives late: forwarded
    assert_eq!(host.next_deadline(), None);
    assert!(host.tick(u64::MAX).is_empty());
}

#[test]
fn redeliveries_and_wrapping_seqs_are_accepted_without_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    let (t, p) = edge.ndata(&[("Temp", Value::Double(2.0))], 1).unwrap();
    assert!(is_data(&host.handle(&t, &p, 1)));
    assert!(is_data(&host.handle(&t, &p, 2))); // the same message again
    for i in 0..600 {
        assert!(is_data(&data(&mut edge, &mut host, 3 + i)));
    }
    assert_eq!(host.next_deadline(), None);
    assert!(host.tick(u64::MAX).is_empty());
}

#[test]
fn a_stale_ndeath_is_ignored_and_the_current_one_honoured() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let (_, old_will) = edge.ndeath(0);
    edge.next_session(); // reconnected: bdSeq 1
    birth(&mut edge, &mut host, 0);
    let (t, p) =
        edge.dbirth("d", &[("P", Some(9), Value::Float(1.0), DataType::Float)], 1).unwrap();
    assert!(matches!(host.handle(&t, &p, 1).event, Event::Birth { .. }));
    let (t, _) = edge.ndeath(2);
    let stale = host.handle(&t, &old_will, 2);
    assert_eq!(
        stale.event,
        Event::StaleDeath {
            device: DeviceKey::node(edge.key()),
            bd_seq: Some(0),
            current_bd_seq: Some(1)
        }
    );
    assert_eq!(stale.state_changed, None);
    assert!(is_data(&data(&mut edge, &mut host, 3)));
    let device = DeviceKey::device(edge.key(), "d");
    assert_eq!(host.is_online(&device), Some(true));

    let (t, will) = edge.ndeath(4);
    let death = host.handle(&t, &will, 4);
    assert!(matches!(death.event, Event::Death { bd_seq: Some(1), .. }), "{death:?}");
    assert_eq!(death.state_changed, Some(edge.key()));
    assert_eq!(host.is_online(&DeviceKey::node(edge.key())), Some(false));
    assert_eq!(host.is_online(&device), Some(false));
    // DATA after the death: the node must rebirth first.
    let after = data(&mut edge, &mut host, 5);
    assert!(matches!(after.event, Event::Invalid { .. }) && after.rebirth.is_some());
}

#[test]
fn restore_resolves_aliases_without_a_rebirth() {
    let mut first = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut first, 0);
    let (t, p) = edge.dbirth("d", &[("P", Some(9), Value::Int(-3), DataType::Int16)], 1).unwrap();
    first.handle(&t, &p, 1);
    let snapshot = first.snapshot(&edge.key()).unwrap();
    // Through JSON text, as the offset store keeps it.
    let text = serde_json::to_string(&snapshot).unwrap();
    let snapshot: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();

    let mut second = host();
    second.restore(edge.key(), &snapshot).unwrap();
    for _ in 0..5 {
        edge.next_seq(); // messages the connector missed while it was down
    }
    let (t, p) = edge.ndata(&[("Offset", Value::Int(-7))], 10).unwrap();
    let handled = second.handle(&t, &p, 10);
    assert!(is_data(&handled), "{handled:?}");
    let Event::Data { metrics, .. } = handled.event else { unreachable!() };
    assert_eq!((metrics[0].name.as_str(), &metrics[0].value), ("Offset", &Value::Int(-7)));
    let (t, p) = edge.ddata("d", &[("P", Value::Int(-4))], 11).unwrap();
    let handled = second.handle(&t, &p, 11);
    let Event::Data { metrics, .. } = handled.event else { panic!("{handled:?}") };
    assert_eq!(
        (metrics[0].name.as_str(), metrics[0].alias, &metrics[0].value),
        ("P", Some(9), &Value::Int(-4))
    );
    assert_eq!(second.next_deadline(), None);
    assert_eq!(
        second.lookup(&DeviceKey::device(edge.key(), "d"), "P"),
        Some((Some(9), DataType::Int16))
    );
    assert_eq!(second.snapshot(&edge.key()), Some(snapshot));
    assert!(second.restore(edge.key(), &serde_json::Map::new()).is_err());
}

#[test]
fn unknown_aliases_are_invalid_with_a_rate_limited_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    let unknown = pb::Metric {
        alias: Some(77),
        value: Some(pb::metric::Value::IntValue(1)),
        ..pb::Metric::default()
    };
    let (t, p) = edge.raw(MessageType::NData, None, vec![unknown.clone()], 1);
    let first = host.handle(&t, &p, 1);
    assert!(
        matches!(&first.event, Event::Invalid { reason, .. } if reason.contains("unknown alias 77"))
    );
    assert_eq!(first.rebirth.as_ref().map(|r| r.topic.as_str()), Some("spBv1.0/g/NCMD/n"));
    let (t, p) = edge.raw(MessageType::NData, None, vec![unknown.clone()], 2);
    let second = host.handle(&t, &p, 9_999);
    assert!(matches!(second.event, Event::Invalid { .. }) && second.rebirth.is_none());
    let (t, p) = edge.raw(MessageType::NData, None, vec![unknown], 3);
    assert!(host.handle(&t, &p, 10_001).rebirth.is_some());
}

#[test]
fn data_before_birth_and_undecodable_payloads_ask_for_a_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let (t, p) = edge.raw(MessageType::NData, None, vec![], 0);
    let before = host.handle(&t, &p, 0);
    assert!(matches!(&before.event, Event::Invalid { reason, .. } if reason.contains("before")));
    assert!(before.rebirth.is_some());
    let mut host = self::host();
    let garbage = host.handle("spBv1.0/g/NDATA/n", &[0xff, 0xff], 0);
    assert!(
        matches!(garbage.event, Event::Invalid { device: Some(_), .. })
            && garbage.rebirth.is_some()
    );
    // Not the node's fault: no rebirth for a bad command or will.
    let h = host.handle("spBv1.0/g/NDEATH/x", &[0xff, 0xff], 0);
    assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_none());
    // Commands are other hosts' traffic: never Invalid, never a rebirth.
    for topic in ["spBv1.0/g/NCMD/x", "spBv1.0/g/DCMD/x/d"] {
        let h = host.handle(topic, &[0xff, 0xff], 0);
        assert!(matches!(h.event, Event::Command { .. }) && h.rebirth.is_none(), "{topic}");
        let by_alias = pb::Metric {
            alias: Some(9),
            value: Some(pb::metric::Value::IntValue(1)),
            ..pb::Metric::default()
        };
        let p = crate::encode::encode_payload(&crate::proto::Payload {
            metrics: vec![by_alias],
            ..Default::default()
        });
        let h = host.handle(topic, &p, 0);
        assert!(matches!(&h.event, Event::Command { metrics, .. } if metrics.is_empty()), "{h:?}");
    }
    // An NDEATH of a node whose NBIRTH was never seen is a real death (offline), not stale.
    let (t, p) = EdgeNode::new("g", "unseen").ndeath(0);
    assert!(matches!(host.handle(&t, &p, 0).event, Event::Death { .. }));
    let bad_topic = host.handle("spBv1.0/g/NDATA", &[], 0);
    assert!(
        matches!(bad_topic.event, Event::Invalid { device: None, .. })
            && bad_topic.rebirth.is_none()
    );
}

#[test]
fn device_births_deaths_and_data() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    let early = edge.raw(MessageType::DData, Some("d"), vec![], 1);
    let h = host.handle(&early.0, &early.1, 1);
    assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_some());
    let (t, p) = edge.dbirth("d", &[("P", Some(1), Value::UInt(5), DataType::UInt8)], 2).unwrap();
    let h = host.handle(&t, &p, 2);
    assert!(
        matches!(&h.event, Event::Birth { device, .. } if device.device.as_deref() == Some("d"))
    );
    let (t, p) = edge.ddata("d", &[("P", Value::UInt(6))], 3).unwrap();
    assert!(is_data(&host.handle(&t, &p, 3)));
    let (t, p) = edge.ddeath("d", 4);
    let h = host.handle(&t, &p, 4);
    assert!(matches!(h.event, Event::Death { bd_seq: None, .. }) && h.state_changed.is_some());
    let (t, p) = edge.ddata("d", &[("P", Value::UInt(7))], 5).unwrap();
    assert!(matches!(host.handle(&t, &p, 20_000).event, Event::Invalid { .. }));
}

#[test]
fn state_messages_in_both_forms() {
    let mut host = host();
    let h = host.handle("spBv1.0/STATE/scada", br#"{"online":true,"timestamp":5}"#, 0);
    assert_eq!(h.event, Event::State { host_id: "scada".into(), online: true, timestamp: Some(5) });
    let h = host.handle("spBv1.0/STATE/scada", b"OFFLINE", 0);
    assert_eq!(h.event, Event::State { host_id: "scada".into(), online: false, timestamp: None });
    assert!(matches!(host.handle("spBv1.0/STATE/scada", b"{}", 0).event, Event::Invalid { .. }));
}

#[test]
fn nodes_and_metrics_are_bounded() {
    let mut host =
        HostState::new(HostConfig { max_nodes: 1, max_metrics: 4, ..HostConfig::default() });
    let mut a = EdgeNode::new("g", "a");
    birth(&mut a, &mut host, 0); // bdSeq, Node Control/Rebirth, Temp, Offset
    let (t, p) = a.dbirth("d", &[], 1).unwrap(); // one device more than the limit
    assert!(matches!(host.handle(&t, &p, 1).event, Event::Invalid { .. }));
    let metrics: Vec<_> =
        ["x", "y", "z"].map(|n| (n, None, Value::Boolean(true), DataType::Boolean)).into();
    let (t, p) = a.nbirth(&metrics, 2).unwrap(); // 5 metrics
    assert!(matches!(host.handle(&t, &p, 2).event, Event::Invalid { .. }));
    // The rejected NBIRTH left a offline: a new node's NBIRTH may take its place.
    let mut b = EdgeNode::new("g", "b");
    let (t, p) = b.nbirth(&[], 3).unwrap();
    assert!(matches!(host.handle(&t, &p, 3).event, Event::Birth { .. }));
    let h = host.handle("spBv1.0/g/NDATA/c", &[], 4);
    assert!(h.rebirth.is_none(), "no room for a third node's rate limit");
    assert_eq!(host.refused_nodes(), 1);

    // Nodes never born (known only from DATA) do not lock a real node out.
    let mut host = HostState::new(HostConfig { max_nodes: 1, ..HostConfig::default() });
    let h = host.handle("spBv1.0/g/NDATA/ghost", &[], 0);
    assert!(h.rebirth.is_some());
    birth(&mut a, &mut host, 1);
    assert_eq!(host.nodes().count(), 1);
}

#[test]
fn a_birth_closes_an_open_gap_and_a_recent_rebirth_covers_it() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    edge.next_seq();
    data(&mut edge, &mut host, 10);
    birth(&mut edge, &mut host, 20);
    assert_eq!(host.next_deadline(), None);
    assert!(host.tick(u64::MAX).is_empty());

    // A gap opened shortly after a rebirth request waits for the rate limit, then asks once.
    let mut host = self::host();
    let mut edge = EdgeNode::new("g", "n");
    host.handle("spBv1.0/g/NDATA/n", &[0xff], 0); // rebirth asked at 0
    birth(&mut edge, &mut host, 1);
    edge.next_seq();
    data(&mut edge, &mut host, 100);
    assert!(host.tick(2_100).is_empty());
    assert_eq!(host.next_deadline(), Some(10_000));
    assert_eq!(host.tick(10_000).len(), 1);
}

#[test]
fn commands_on_the_broker_decode_with_the_births_aliases() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    let cmd = pb::Metric {
        alias: Some(2),
        value: Some(pb::metric::Value::IntValue(0xfe)),
        ..pb::Metric::default()
    };
    let payload = crate::encode::encode_payload(&crate::proto::Payload {
        metrics: vec![cmd],
        ..Default::default()
    });
    let h = host.handle("spBv1.0/g/NCMD/n", &payload, 1);
    let Event::Command { metrics, kind: MessageType::NCmd, .. } = h.event else { panic!("{h:?}") };
    assert_eq!((metrics[0].name.as_str(), &metrics[0].value), ("Offset", &Value::Int(-2)));
}
