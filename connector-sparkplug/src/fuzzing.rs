//! Entry points for the fuzz target `sparkplug_payload` (the `fuzz/` crate) and the property
//! tests: the payload decoder and the host state machine on bytes we do not control. Not a
//! stable API.

use crate::encode::{encode_metric, encode_payload, rebirth_payload, EdgeNode};
use crate::host::{HostConfig, HostState};
use crate::proto::Payload;
use crate::{
    decode_metrics, decode_payload, DataSetValue, DataType, MessageType, Metric, Property,
    PropertySetValue, TemplateParameter, TemplateValue, Value,
};

/// Decodes `data` as a payload (and its metrics on their own), then feeds it to a host state
/// under every message type, after a valid NBIRTH of the same node so that DATA reaches alias
/// resolution. Must never panic.
pub fn payload(data: &[u8]) {
    if let Ok(p) = decode_payload(data) {
        let _ = decode_metrics(&p);
    }
    let mut host =
        HostState::new(HostConfig { max_nodes: 4, max_metrics: 64, ..HostConfig::default() });
    let mut edge = EdgeNode::new("g", "n");
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

fn plain(name: &str, alias: u64, datatype: DataType, value: Value) -> Metric {
    Metric {
        name: name.to_owned(),
        alias: Some(alias),
        datatype,
        value,
        timestamp: Some(1_700_000_000_000),
        is_historical: false,
        is_transient: false,
        quality: None,
        properties: None,
    }
}

/// One metric of every datatype a metric can have (all but PropertySet and PropertySetList,
/// which appear as properties of the last one), with values at the edges of their ranges.
pub fn every_datatype() -> Vec<Metric> {
    use DataType as T;
    use Value as V;
    let scalars = [
        (T::Int8, V::Int(-128)),
        (T::Int16, V::Int(-2)),
        (T::Int32, V::Int(i64::from(i32::MIN))),
        (T::Int64, V::Int(-1)),
        (T::UInt8, V::UInt(255)),
        (T::UInt16, V::UInt(65_535)),
        (T::UInt32, V::UInt(u64::from(u32::MAX))),
        (T::UInt64, V::UInt(u64::MAX)),
        (T::Float, V::Float(1.5)),
        (T::Double, V::Double(-2.25)),
        (T::Boolean, V::Boolean(true)),
        (T::String, V::String("Grüße".into())),
        (T::DateTime, V::DateTime(1_700_000_000_123)),
        (T::Text, V::String("line 1\nline 2".into())),
        (T::UUID, V::String("0b0e6b4e-0c0a-4c4d-9a51-5f0a3c1f2a11".into())),
        (T::Bytes, V::Bytes(vec![0, 1, 254, 255])),
        (T::File, V::Bytes(b"file".to_vec())),
        (T::Int8Array, V::IntArray(vec![-128, 0, 127])),
        (T::Int16Array, V::IntArray(vec![-32_768, 32_767])),
        (T::Int32Array, V::IntArray(vec![-1, 1])),
        (T::Int64Array, V::IntArray(vec![i64::MIN, i64::MAX])),
        (T::UInt8Array, V::UIntArray(vec![0, 255])),
        (T::UInt16Array, V::UIntArray(vec![65_535])),
        (T::UInt32Array, V::UIntArray(vec![u64::from(u32::MAX)])),
        (T::UInt64Array, V::UIntArray(vec![u64::MAX, 0])),
        (T::FloatArray, V::FloatArray(vec![1.5, -0.25])),
        (T::DoubleArray, V::DoubleArray(vec![1e300, -2.5])),
        (
            T::BooleanArray,
            V::BooleanArray(vec![false, false, true, true, false, true, false, false, true]),
        ),
        (T::StringArray, V::StringArray(vec!["ABC".into(), String::new(), "hello".into()])),
        (T::DateTimeArray, V::DateTimeArray(vec![1_256_102_875_335, 1_656_107_875_000])),
    ];
    let mut out: Vec<Metric> = scalars
        .into_iter()
        .enumerate()
        .map(|(i, (dt, v))| plain(&format!("m/{}", dt.name()), i as u64 + 10, dt, v))
        .collect();
    out.push(plain(
        "m/DataSet",
        100,
        T::DataSet,
        V::DataSet(DataSetValue {
            columns: vec!["id".into(), "label".into(), "ok".into()],
            types: vec![T::Int16, T::String, T::Boolean],
            rows: vec![
                vec![V::Int(-5), V::String("a".into()), V::Boolean(true)],
                vec![V::Int(7), V::String("b".into()), V::Boolean(false)],
            ],
        }),
    ));
    out.push(plain(
        "m/Template",
        101,
        T::Template,
        V::Template(TemplateValue {
            version: Some("1.0".into()),
            template_ref: Some("Motor".into()),
            is_definition: false,
            metrics: vec![plain("rpm", 1, T::Int32, V::Int(-1_500))],
            parameters: vec![TemplateParameter {
                name: "max".into(),
                datatype: T::Int8,
                value: V::Int(-1),
            }],
        }),
    ));
    let mut with_props = plain("m/Properties", 102, T::Double, V::Double(20.5));
    with_props.quality = Some(192);
    with_props.properties = Some(PropertySetValue {
        properties: vec![
            Property { key: "Quality".into(), datatype: T::Int32, value: V::Int(192) },
            Property { key: "engUnit".into(), datatype: T::String, value: V::String("C".into()) },
            Property {
                key: "limits".into(),
                datatype: T::PropertySet,
                value: V::PropertySet(PropertySetValue {
                    properties: vec![Property {
                        key: "low".into(),
                        datatype: T::Int16,
                        value: V::Int(-40),
                    }],
                }),
            },
            Property {
                key: "history".into(),
                datatype: T::PropertySetList,
                value: V::PropertySetList(vec![PropertySetValue {
                    properties: vec![Property {
                        key: "n".into(),
                        datatype: T::UInt8,
                        value: V::UInt(3),
                    }],
                }]),
            },
        ],
    });
    out.push(with_props);
    out.push(plain("m/Null", 103, T::Int32, V::Null));
    out
}

/// Valid payloads, seeds for the fuzzer and the property tests: a birth with every datatype,
/// NDATA by alias, an NCMD Rebirth, an NDEATH.
pub fn sample_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let metrics: Vec<_> = every_datatype().iter().filter_map(|m| encode_metric(m).ok()).collect();
    let birth = encode_payload(&Payload {
        timestamp: Some(1),
        metrics,
        seq: Some(0),
        ..Payload::default()
    });
    let mut edge = EdgeNode::new("g", "n");
    let mut out = vec![("birth-every-datatype", birth)];
    if let Ok((_, nbirth)) = edge.nbirth(&sample_birth(), 0) {
        out.push(("nbirth", nbirth));
    }
    if let Ok((_, ndata)) =
        edge.ndata(&[("i8", Value::Int(-3)), ("sa", Value::StringArray(vec!["x".into()]))], 1)
    {
        out.push(("ndata-by-alias", ndata));
    }
    out.push(("ncmd-rebirth", rebirth_payload(2)));
    out.push(("ndeath", edge.ndeath(3).1));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_samples_decode() {
        for (name, bytes) in sample_payloads() {
            let p = decode_payload(&bytes).unwrap();
            if name != "ndata-by-alias" {
                decode_metrics(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            payload(&bytes);
        }
        let birth = &sample_payloads()[0].1;
        assert_eq!(decode_metrics(&decode_payload(birth).unwrap()).unwrap(), every_datatype());
    }

    /// Writes the seed inputs to `fuzz/seeds/sparkplug_payload/` (run by hand with `--ignored`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/sparkplug_payload");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in sample_payloads() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn mutate(mut data: Vec<u8>, edits: Vec<(usize, u8)>, cut: usize) -> Vec<u8> {
        for (at, byte) in edits {
            let n = data.len();
            if let Some(b) = data.get_mut(at % n) {
                *b = byte;
            }
        }
        let keep = data.len() - cut % data.len();
        data.truncate(keep);
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn payload_on_mutated_samples(which in 0usize..5, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
            let samples = sample_payloads();
            let (_, bytes) = &samples[which % samples.len()];
            payload(&mutate(bytes.clone(), edits, cut));
        }

        #[test]
        fn payload_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            payload(&data);
        }
    }
}
