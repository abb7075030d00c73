//! The host's rules, one test each.

use super::*;
use crate::encode::EdgeNode;
use crate::{DataType, Value};

fn birth(edge: &mut EdgeNode, host: &mut HostState, now: u64) {
    let (t, p) =
        edge.nbirth(&[("Temp", Some(1), Value::Double(1.0), DataType::Double)], now).unwrap();
    assert!(matches!(host.handle(&t, &p, now).event, Event::Birth { .. }));
}

#[test]
fn a_gap_yields_exactly_one_rebirth() {
    let mut host = HostState::new(HostConfig::default());
    let mut edge = EdgeNode::new("g", "n");
    birth(&mut edge, &mut host, 0);
    edge.next_seq();
    let (t, p) = edge.ndata(&[("Temp", Value::Double(2.0))], 10).unwrap();
    assert!(host.handle(&t, &p, 10).rebirth.is_none());
    assert!(host.tick(2_009).is_empty());
    assert_eq!(host.tick(2_010).len(), 1);
    assert!(host.tick(100_000).is_empty());
    assert_eq!(host.next_deadline(), None);
}
