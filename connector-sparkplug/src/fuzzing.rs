//! Entry points for the fuzz target `sparkplug_payload` (the `fuzz/` crate) and the property
//! tests: the payload decoder and the host state machine on bytes we do not control. Not a
//! stable API.

use crate::host::{HostConfig, HostState};
use crate::{decode_metrics, decode_payload, MessageType};

/// Decodes `data` as a payload (and its metrics on their own), then feeds it to a host state
/// under every message type, after a valid NBIRTH of the same node so that DATA reaches alias
/// resolution. Must never panic.
pub fn payload(data: &[u8]) {
    if let Ok(p) = decode_payload(data) {
        let _ = decode_metrics(&p);
    }
    let mut host =
        HostState::new(HostConfig { max_nodes: 4, max_metrics: 64, ..HostConfig::default() });
    let mut edge = crate::encode::EdgeNode::new("g", "n");
    if let Ok((topic, birth)) = edge.nbirth(&sample_birth(), 0) {
        host.handle(&topic, &birth, 0);
    }
    for (i, kind) in MessageType::ALL.into_iter().enumerate() {
        let topic = if kind.is_device() {
            format!("spBv1.0/g/{kind}/n/d")
        } else {
            format!("spBv1.0/g/{kind}/n")
        };
        host.handle(&topic, data, i as u64 * 1_000);
    }
    host.handle("spBv1.0/STATE/h", data, 9_000);
    let _ = host.tick(u64::MAX);
}

/// The metrics of the NBIRTH the fuzz entry point starts from (one per scalar datatype).
fn sample_birth() -> Vec<(&'static str, Option<u64>, crate::Value, crate::DataType)> {
    use crate::{DataType as T, Value as V};
    vec![
        ("i8", Some(1), V::Int(-1), T::Int8),
        ("i64", Some(2), V::Int(-1), T::Int64),
        ("u32", Some(3), V::UInt(7), T::UInt32),
        ("f", Some(4), V::Float(1.5), T::Float),
        ("d", Some(5), V::Double(2.5), T::Double),
        ("b", Some(6), V::Boolean(true), T::Boolean),
        ("s", Some(7), V::String("x".into()), T::String),
        ("ba", Some(8), V::BooleanArray(vec![true, false]), T::BooleanArray),
        ("sa", Some(9), V::StringArray(vec!["a".into()]), T::StringArray),
    ]
}
