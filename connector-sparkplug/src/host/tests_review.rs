//! The host's rules added after review: rejected births, pacing, bounds, templates.

use super::*;
use crate::encode::EdgeNode;
use crate::proto::payload as pb;
use crate::{DataType, Value};

pub(super) fn host() -> HostState {
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

fn metric_of_unknown_type(name: &str, alias: u64) -> pb::Metric {
    pb::Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(99),
        value: Some(pb::metric::Value::IntValue(1)),
        ..pb::Metric::default()
    }
}

#[test]
fn a_rejected_nbirth_ends_the_old_session_without_a_rebirth_loop() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    assert!(is_data(&data(&mut edge, &mut host, 1)));
    // A new NBIRTH whose aliases collide: rejected, and the old aliases are gone with it.
    let dup = |name: &str| {
        crate::encode::metric(name, Some(2), &Value::UInt(1), DataType::UInt32, None).unwrap()
    };
    let (t, p) = edge.raw(MessageType::NBirth, None, vec![dup("Count"), dup("Other")], 2);
    let rejected = host.handle(&t, &p, 2);
    assert!(
        matches!(&rejected.event, Event::Invalid { reason, .. } if reason.contains("alias 2")),
        "{rejected:?}"
    );
    assert!(rejected.rebirth.is_none());
    assert_eq!(rejected.state_changed, Some(edge.key()));
    let offset = pb::Metric {
        alias: Some(2),
        value: Some(pb::metric::Value::IntValue(200)),
        ..pb::Metric::default()
    };
    for now in (3..60_000).step_by(1_000) {
        let (t, p) = edge.raw(MessageType::NData, None, vec![offset.clone()], now);
        let h = host.handle(&t, &p, now);
        assert!(
            matches!(&h.event, Event::Invalid { reason, .. } if reason.contains("rejected NBIRTH")),
            "{h:?}"
        );
        assert!(h.rebirth.is_none());
        assert!(host.tick(now).is_empty());
    }
    // An undecodable NBIRTH is rejected the same way.
    birth(&mut edge, &mut host, 60_000);
    let h = host.handle(&t, &[0xff, 0xff], 60_001);
    assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_none());
    assert_eq!(host.is_online(&DeviceKey::node(edge.key())), Some(false));
    birth(&mut edge, &mut host, 60_002);
    assert!(is_data(&data(&mut edge, &mut host, 60_003)));
}

#[test]
fn a_birth_with_one_bad_metric_keeps_the_others_and_asks_for_no_rebirth() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let good = crate::encode::metric("Temp", Some(1), &Value::Double(1.0), DataType::Double, None)
        .unwrap();
    let (t, p) =
        edge.raw(MessageType::NBirth, None, vec![good, metric_of_unknown_type("Future", 2)], 0);
    let h = host.handle(&t, &p, 0);
    let Event::Birth { metrics, .. } = &h.event else { panic!("{h:?}") };
    assert_eq!(metrics.len(), 1);
    let temp = pb::Metric {
        alias: Some(1),
        value: Some(pb::metric::Value::DoubleValue(3.0)),
        ..pb::Metric::default()
    };
    let future = pb::Metric {
        alias: Some(2),
        value: Some(pb::metric::Value::IntValue(3)),
        ..pb::Metric::default()
    };
    for now in (1..60_000).step_by(1_000) {
        let (t, p) = edge.raw(MessageType::NData, None, vec![temp.clone()], now);
        assert!(is_data(&host.handle(&t, &p, now)));
        let (t, p) = edge.raw(MessageType::NData, None, vec![future.clone()], now);
        let h = host.handle(&t, &p, now);
        assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_none(), "{h:?}");
    }
    assert!(host.tick(u64::MAX).is_empty());
    // A rejected DBIRTH (a metric without a name): its DDATA is invalid, without rebirths.
    let nameless = pb::Metric { alias: Some(5), datatype: Some(3), ..pb::Metric::default() };
    let (t, p) = edge.raw(MessageType::DBirth, Some("d"), vec![nameless], 70_000);
    let h = host.handle(&t, &p, 70_000);
    assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_none(), "{h:?}");
    let (t, p) = edge.raw(MessageType::DData, Some("d"), vec![], 70_001);
    let h = host.handle(&t, &p, 70_001);
    assert!(matches!(h.event, Event::Invalid { .. }) && h.rebirth.is_none(), "{h:?}");
}

#[test]
fn a_full_host_forgets_offline_nodes_for_new_births_but_never_online_ones() {
    let mut host = HostState::new(HostConfig { max_nodes: 1, ..HostConfig::default() });
    let mut a = EdgeNode::new("g", "a");
    let mut b = EdgeNode::new("g", "b");
    birth(&mut a, &mut host, 0);
    let (t, p) = b.nbirth(&[], 1).unwrap();
    assert!(matches!(host.handle(&t, &p, 1).event, Event::Invalid { .. }), "a is online");
    assert_eq!(host.refused_nodes(), 1);
    let (t, p) = a.ndeath(2);
    host.handle(&t, &p, 2);
    birth(&mut b, &mut host, 3);
    assert_eq!(host.nodes().cloned().collect::<Vec<_>>(), vec![b.key()]);
}

#[test]
fn devices_go_offline_with_their_node() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    for d in ["d1", "d2"] {
        let (t, p) = edge.dbirth(d, &[], 1).unwrap();
        host.handle(&t, &p, 1);
    }
    let (t, p) = edge.ddeath("d2", 2);
    host.handle(&t, &p, 2);
    let (t, p) = edge.ndeath(3);
    let h = host.handle(&t, &p, 3);
    assert_eq!(h.also_offline, vec![DeviceKey::device(edge.key(), "d1")]);
    assert!(host.devices(&edge.key()).iter().all(|(_, online)| !online));
    // A new NBIRTH ends the devices of the session before it, too.
    birth(&mut edge, &mut host, 4);
    let (t, p) = edge.dbirth("d1", &[], 5).unwrap();
    host.handle(&t, &p, 5);
    let (t, p) = edge.nbirth(&[], 6).unwrap();
    assert_eq!(host.handle(&t, &p, 6).also_offline, vec![DeviceKey::device(edge.key(), "d1")]);
    assert!(host.devices(&edge.key()).is_empty());
}

#[test]
fn rebirths_are_paced_globally_and_a_dropped_one_comes_again() {
    let mut host = HostState::new(HostConfig { max_rebirths_per_sec: 10, ..HostConfig::default() });
    let mut edges: Vec<EdgeNode> = (0..100).map(|i| EdgeNode::new("g", format!("n{i}"))).collect();
    for edge in &mut edges {
        birth(edge, &mut host, 0);
        edge.next_seq();
        data(edge, &mut host, 10);
    }
    let mut per_second = Vec::new();
    for second in 0..12u64 {
        let now = 2_010 + second * 1_000;
        per_second.push(host.tick(now).len());
    }
    assert!(per_second.iter().all(|n| *n <= 10), "{per_second:?}");
    assert_eq!(per_second.iter().sum::<usize>(), 100, "{per_second:?}");

    // A request the caller could not send comes again after the reorder timeout.
    let mut host = self::host();
    let mut edge = EdgeNode::new("g", "n");
    let h = host.handle("spBv1.0/g/NDATA/n", &[], 0);
    let sent = h.rebirth.unwrap();
    host.rebirth_not_sent(&sent, 0);
    assert_eq!(host.next_deadline(), Some(2_000));
    assert_eq!(host.tick(2_000).len(), 1);
    // After the host's own reconnect, missed seqs are not gaps.
    birth(&mut edge, &mut host, 3_000);
    edge.next_seq();
    host.reset_sequences();
    assert!(is_data(&data(&mut edge, &mut host, 3_001)));
    assert_eq!(host.next_deadline(), None);
}

#[test]
fn a_snapshot_keeps_every_alias_of_a_shared_name() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let (t, p) = edge
        .nbirth(
            &[
                ("Temp", Some(1), Value::Double(1.0), DataType::Double),
                ("Temp", Some(2), Value::Double(2.0), DataType::Double),
            ],
            0,
        )
        .unwrap();
    host.handle(&t, &p, 0);
    let snapshot = host.snapshot(&edge.key()).unwrap();
    let mut restarted = self::host();
    restarted.restore(edge.key(), &snapshot).unwrap();
    for alias in [1, 2] {
        let m = pb::Metric {
            alias: Some(alias),
            value: Some(pb::metric::Value::DoubleValue(3.0)),
            ..pb::Metric::default()
        };
        let (t, p) = edge.raw(MessageType::NData, None, vec![m], 1);
        assert!(is_data(&restarted.handle(&t, &p, 1)), "alias {alias}");
    }
}

#[test]
fn a_dbirth_without_a_known_nbirth_still_teaches_its_aliases() {
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let (t, p) =
        edge.dbirth("d", &[("Setpoint", Some(4), Value::Int(0), DataType::Int8)], 0).unwrap();
    assert!(matches!(host.handle(&t, &p, 0).event, Event::Invalid { .. }));
    let device = DeviceKey::device(edge.key(), "d");
    assert_eq!(host.lookup(&device, "Setpoint"), Some((Some(4), DataType::Int8)));
    assert_eq!(host.is_online(&device), None);
}

#[test]
fn template_instances_in_data_take_member_datatypes_from_the_birth_definition() {
    use crate::{Metric, TemplateValue};
    let member = |value: Value| Metric {
        name: "rpm".into(),
        alias: None,
        datatype: DataType::Int32,
        value,
        timestamp: None,
        is_historical: false,
        is_transient: false,
        quality: None,
        properties: None,
    };
    let definition = Value::Template(TemplateValue {
        is_definition: true,
        metrics: vec![member(Value::Int(0))],
        ..TemplateValue::default()
    });
    let instance = Value::Template(TemplateValue {
        template_ref: Some("Motor".into()),
        metrics: vec![member(Value::Int(1))],
        ..TemplateValue::default()
    });
    let mut host = host();
    let mut edge = EdgeNode::new("g", "n");
    let (t, p) = edge
        .nbirth(
            &[
                ("Motor", None, definition, DataType::Template),
                ("Motor1", Some(5), instance, DataType::Template),
            ],
            0,
        )
        .unwrap();
    assert!(matches!(host.handle(&t, &p, 0).event, Event::Birth { .. }));
    // DATA: the instance by alias, its member by name only, no datatypes (as the spec asks).
    let rpm = pb::Metric {
        name: Some("rpm".into()),
        value: Some(pb::metric::Value::IntValue(0xFFFF_FA24)),
        ..pb::Metric::default()
    };
    let template = pb::Template {
        template_ref: Some("Motor".into()),
        metrics: vec![rpm],
        ..pb::Template::default()
    };
    let m = pb::Metric {
        alias: Some(5),
        value: Some(pb::metric::Value::TemplateValue(template)),
        ..pb::Metric::default()
    };
    let (t, p) = edge.raw(MessageType::NData, None, vec![m], 1);
    let expect = |h: Handled| {
        let Event::Data { metrics, .. } = h.event else { panic!("{h:?}") };
        let Value::Template(t) = &metrics[0].value else { panic!("{metrics:?}") };
        assert_eq!(t.metrics[0].value, Value::Int(-1_500));
    };
    expect(host.handle(&t, &p, 1));
    // The definitions survive a restart.
    let mut restarted = self::host();
    restarted.restore(edge.key(), &host.snapshot(&edge.key()).unwrap()).unwrap();
    expect(restarted.handle(&t, &p, 2));
}

#[test]
fn metrics_are_bounded_over_all_nodes() {
    let mut host = HostState::new(HostConfig { max_total_metrics: 9, ..HostConfig::default() });
    let mut a = EdgeNode::new("g", "a");
    birth(&mut a, &mut host, 0); // 4 metrics
    let mut b = EdgeNode::new("g", "b");
    birth(&mut b, &mut host, 0); // 8
    assert_eq!(host.total_metrics(), 8);
    let (t, p) = b.dbirth("d", &[("x", None, Value::Boolean(true), DataType::Boolean)], 1).unwrap();
    assert!(matches!(host.handle(&t, &p, 1).event, Event::Invalid { .. }), "8 + 2 > 9");
    let mut c = EdgeNode::new("g", "c");
    let (t, p) = c.nbirth(&[], 2).unwrap(); // bdSeq + Rebirth: 10 > 9
    assert!(matches!(host.handle(&t, &p, 2).event, Event::Invalid { .. }));
    // A node's new NBIRTH replaces its share rather than adding to it.
    birth(&mut a, &mut host, 3);
    assert_eq!(host.total_metrics(), 9, "8 and the rejected device of b");
}

#[test]
fn dbirths_of_nodes_never_born_are_bounded_over_all_nodes_too() {
    // A sink learns DBIRTHs of nodes whose NBIRTH it missed; those count against
    // max_total_metrics like any other (REVIEW-SINK 5).
    let mut host = HostState::new(HostConfig { max_total_metrics: 10, ..HostConfig::default() });
    let metrics: Vec<_> = (0..3)
        .map(|i| (format!("m{i}"), Some(i), Value::Boolean(true), DataType::Boolean))
        .collect();
    let metrics: Vec<_> =
        metrics.iter().map(|(n, a, v, d)| (n.as_str(), *a, v.clone(), *d)).collect();
    for n in 0..20 {
        let mut edge = EdgeNode::new("g", format!("n{n}"));
        let (t, p) = edge.dbirth("d", &metrics, n).unwrap();
        host.handle(&t, &p, n);
        assert!(host.total_metrics() <= 10, "node {n}: {} metrics", host.total_metrics());
    }
    let learned = (0..20)
        .filter(|n| {
            let device = DeviceKey::device(EdgeNode::new("g", format!("n{n}")).key(), "d");
            host.lookup(&device, "m0").is_some()
        })
        .count();
    assert!(learned >= 1, "the first devices are learned");
    assert!(learned < 20, "not every device fits in 10 metrics");
}
