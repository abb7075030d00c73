//! Round trips of every datatype through our encoder and decoder (protobuf bytes in between),
//! as property tests, plus the JSON of each value back to the same value where JSON can say it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use connector_sparkplug::encode::{encode_metric, encode_payload};
use connector_sparkplug::json::{metric_json, value_from_json, value_json};
use connector_sparkplug::proto::Payload;
use connector_sparkplug::{
    decode_metric, decode_payload, DataSetValue, DataType, Metric, Property, PropertySetValue,
    TemplateParameter, TemplateValue, Value,
};
use proptest::prelude::*;

fn float32() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::num::f32::NORMAL | prop::num::f32::ZERO | prop::num::f32::SUBNORMAL,
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
    ]
}

fn float64() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL,
        Just(f64::NEG_INFINITY),
    ]
}

fn signed(bits: u32) -> impl Strategy<Value = i64> {
    let min = if bits == 64 { i64::MIN } else { -(1i64 << (bits - 1)) };
    let max = if bits == 64 { i64::MAX } else { (1i64 << (bits - 1)) - 1 };
    min..=max
}

fn unsigned(bits: u32) -> impl Strategy<Value = u64> {
    let max = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    0..=max
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 äöü€/._-]{0,12}"
}

/// A value of a scalar datatype (what DataSet cells, parameters and properties hold).
fn scalar(dt: DataType) -> BoxedStrategy<Value> {
    use DataType as T;
    match dt {
        T::Int8 => signed(8).prop_map(Value::Int).boxed(),
        T::Int16 => signed(16).prop_map(Value::Int).boxed(),
        T::Int32 => signed(32).prop_map(Value::Int).boxed(),
        T::Int64 => signed(64).prop_map(Value::Int).boxed(),
        T::UInt8 => unsigned(8).prop_map(Value::UInt).boxed(),
        T::UInt16 => unsigned(16).prop_map(Value::UInt).boxed(),
        T::UInt32 => unsigned(32).prop_map(Value::UInt).boxed(),
        T::UInt64 => unsigned(64).prop_map(Value::UInt).boxed(),
        T::Float => float32().prop_map(Value::Float).boxed(),
        T::Double => float64().prop_map(Value::Double).boxed(),
        T::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        T::String | T::Text | T::UUID => text().prop_map(Value::String).boxed(),
        T::DateTime => any::<u64>().prop_map(Value::DateTime).boxed(),
        _ => Just(Value::Null).boxed(),
    }
}

fn scalar_type() -> impl Strategy<Value = DataType> {
    (1u32..=15).prop_map(|n| DataType::from_u32(n).unwrap_or(DataType::Int32))
}

fn array(dt: DataType) -> BoxedStrategy<Value> {
    use DataType as T;
    let n = 0..6usize;
    match dt {
        T::Int8Array => prop::collection::vec(signed(8), n).prop_map(Value::IntArray).boxed(),
        T::Int16Array => prop::collection::vec(signed(16), n).prop_map(Value::IntArray).boxed(),
        T::Int32Array => prop::collection::vec(signed(32), n).prop_map(Value::IntArray).boxed(),
        T::Int64Array => prop::collection::vec(signed(64), n).prop_map(Value::IntArray).boxed(),
        T::UInt8Array => prop::collection::vec(unsigned(8), n).prop_map(Value::UIntArray).boxed(),
        T::UInt16Array => prop::collection::vec(unsigned(16), n).prop_map(Value::UIntArray).boxed(),
        T::UInt32Array => prop::collection::vec(unsigned(32), n).prop_map(Value::UIntArray).boxed(),
        T::UInt64Array => prop::collection::vec(unsigned(64), n).prop_map(Value::UIntArray).boxed(),
        T::FloatArray => prop::collection::vec(float32(), n).prop_map(Value::FloatArray).boxed(),
        T::DoubleArray => prop::collection::vec(float64(), n).prop_map(Value::DoubleArray).boxed(),
        T::BooleanArray => {
            prop::collection::vec(any::<bool>(), 0..40).prop_map(Value::BooleanArray).boxed()
        }
        T::StringArray => prop::collection::vec(text(), n).prop_map(Value::StringArray).boxed(),
        T::DateTimeArray => {
            prop::collection::vec(any::<u64>(), n).prop_map(Value::DateTimeArray).boxed()
        }
        _ => Just(Value::Null).boxed(),
    }
}

fn data_set() -> impl Strategy<Value = DataSetValue> {
    prop::collection::vec((text(), scalar_type()), 0..4).prop_flat_map(|cols| {
        let types: Vec<DataType> = cols.iter().map(|(_, t)| *t).collect();
        let columns: Vec<String> = cols.into_iter().map(|(c, _)| c).collect();
        let row: Vec<BoxedStrategy<Value>> = types.iter().map(|t| scalar(*t)).collect();
        prop::collection::vec(row, 0..4).prop_map(move |rows| DataSetValue {
            columns: columns.clone(),
            types: types.clone(),
            rows,
        })
    })
}

fn simple_metric() -> impl Strategy<Value = Metric> {
    (text(), prop::option::of(0u64..100), scalar_type()).prop_flat_map(|(name, alias, dt)| {
        scalar(dt).prop_map(move |value| plain(&name, alias, dt, value))
    })
}

fn template() -> impl Strategy<Value = TemplateValue> {
    let parameter = (text(), scalar_type()).prop_flat_map(|(name, datatype)| {
        scalar(datatype).prop_map(move |value| TemplateParameter {
            name: name.clone(),
            datatype,
            value,
        })
    });
    (
        prop::option::of(text()),
        prop::option::of(text()),
        any::<bool>(),
        prop::collection::vec(simple_metric(), 0..3),
        prop::collection::vec(parameter, 0..3),
    )
        .prop_map(|(version, template_ref, is_definition, metrics, parameters)| {
            TemplateValue { version, template_ref, is_definition, metrics, parameters }
        })
}

fn property_set() -> impl Strategy<Value = PropertySetValue> {
    let leaf = (text(), scalar_type())
        .prop_flat_map(|(key, datatype)| {
            scalar(datatype).prop_map(move |value| Property { key: key.clone(), datatype, value })
        })
        .boxed();
    let inner = prop::collection::vec(leaf.clone(), 0..3)
        .prop_map(|properties| PropertySetValue { properties })
        .boxed();
    let nested = (text(), inner.clone()).prop_map(|(key, set)| Property {
        key,
        datatype: DataType::PropertySet,
        value: Value::PropertySet(set),
    });
    let list = (text(), prop::collection::vec(inner, 0..3)).prop_map(|(key, sets)| Property {
        key,
        datatype: DataType::PropertySetList,
        value: Value::PropertySetList(sets),
    });
    prop::collection::vec(prop_oneof![leaf, nested, list], 0..4)
        .prop_map(|properties| PropertySetValue { properties })
}

fn plain(name: &str, alias: Option<u64>, datatype: DataType, value: Value) -> Metric {
    Metric {
        name: name.to_owned(),
        alias,
        datatype,
        value,
        timestamp: Some(1_700_000_000_000),
        is_historical: false,
        is_transient: false,
        quality: None,
        properties: None,
    }
}

/// Encodes a metric into a payload's bytes and decodes it again.
fn round_trip(m: &Metric) -> Metric {
    let pb = encode_metric(m).unwrap();
    let bytes = encode_payload(&Payload { metrics: vec![pb], seq: Some(0), ..Payload::default() });
    let payload = decode_payload(&bytes).unwrap();
    decode_metric(&payload.metrics[0], None).unwrap()
}

fn any_value() -> impl Strategy<Value = (DataType, Value)> {
    (1u32..=34).prop_filter("not a property-only type", |n| *n != 20 && *n != 21).prop_flat_map(
        |n| {
            let dt = DataType::from_u32(n).unwrap_or(DataType::Int32);
            let value = match dt {
                DataType::DataSet => data_set().prop_map(Value::DataSet).boxed(),
                DataType::Template => template().prop_map(Value::Template).boxed(),
                DataType::Bytes | DataType::File => {
                    prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes).boxed()
                }
                dt if dt.is_array() => array(dt),
                dt => scalar(dt),
            };
            (Just(dt), value)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_datatype_round_trips_through_protobuf((dt, value) in any_value(), name in text()) {
        let m = plain(&name, Some(3), dt, value);
        prop_assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn null_values_round_trip(n in 1u32..=34) {
        let dt = DataType::from_u32(n).unwrap_or(DataType::Int8);
        prop_assume!(n != 20 && n != 21);
        let m = plain("n", None, dt, Value::Null);
        prop_assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn properties_and_quality_round_trip(mut props in property_set(), quality in any::<i32>()) {
        props.properties.push(Property { key: "Quality".into(), datatype: DataType::Int32, value: Value::Int(quality.into()) });
        let mut m = plain("p", None, DataType::Boolean, Value::Boolean(true));
        m.properties = Some(props);
        m.is_historical = true;
        m.is_transient = true;
        let back = round_trip(&m);
        prop_assert_eq!(back.quality, Some(quality));
        m.quality = Some(quality);
        prop_assert_eq!(back, m);
    }

    /// The JSON of a scalar or array reads back as the same value (what the sink does with a
    /// record the source wrote).
    #[test]
    fn json_values_read_back((dt, value) in any_value()) {
        prop_assume!(dt != DataType::Template);
        let json = value_json(&value);
        let back = value_from_json(&json, dt).unwrap();
        prop_assert_eq!(back, value, "{}", json);
    }
}

#[test]
fn metric_json_has_the_documented_shape() {
    let mut m = plain("Temp", Some(1), DataType::Int16, Value::Int(-2));
    m.quality = Some(192);
    let json = metric_json(&m);
    assert_eq!(
        json,
        serde_json::json!({"name": "Temp", "alias": 1, "datatype": "Int16", "value": -2,
                           "timestamp": 1_700_000_000_000u64, "quality": 192})
    );
}
