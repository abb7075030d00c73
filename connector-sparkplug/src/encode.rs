//! Building Sparkplug B payloads: metrics of every datatype, the NCMD `Node Control/Rebirth`
//! request, NCMD/DCMD commands from JSON (names resolved to aliases and datatypes from the BIRTHs
//! a [`HostState`] saw), and [`EdgeNode`], an edge-node simulator for examples and tests that
//! numbers its messages (seq, bdSeq) as the spec says.
//!
//! ```
//! use connector_sparkplug::encode::{encode_payload, metric};
//! use connector_sparkplug::proto::Payload;
//! use connector_sparkplug::{decode_metrics, decode_payload, DataType, Value};
//! let m = metric("Offset", Some(4), &Value::Int(-3), DataType::Int32, Some(1_000)).unwrap();
//! let bytes = encode_payload(&Payload { metrics: vec![m], seq: Some(1), ..Payload::default() });
//! let decoded = decode_metrics(&decode_payload(&bytes).unwrap()).unwrap();
//! assert_eq!(decoded[0].value, Value::Int(-3));
//! ```

mod edge;

pub use edge::EdgeNode;

use crate::host::HostState;
use crate::json::{value_from_json, CommandMetric};
use crate::proto::payload::{
    self as pb, data_set, data_set::data_set_value, metric as pm, property_value,
    template::parameter as pp,
};
use crate::proto::Payload;
use crate::value::{encode_scalar, WireOut};
use crate::{
    DataSetValue, DataType, DeviceKey, Metric, PropertySetValue, TemplateValue, Value, REBIRTH,
};

pub use crate::value::EncodeError;

/// The protobuf bytes of a payload.
pub fn encode_payload(p: &Payload) -> Vec<u8> {
    prost::Message::encode_to_vec(p)
}

/// A protobuf metric of `datatype` with `value` (`Value::Null` sets `is_null`). An empty `name`
/// is left out (a DATA metric sent by alias only).
pub fn metric(
    name: &str,
    alias: Option<u64>,
    value: &Value,
    datatype: DataType,
    timestamp: Option<u64>,
) -> Result<pb::Metric, EncodeError> {
    let mut m = pb::Metric {
        name: (!name.is_empty()).then(|| name.to_owned()),
        alias,
        timestamp,
        datatype: Some(datatype.number()),
        ..pb::Metric::default()
    };
    match value {
        Value::Null => m.is_null = Some(true),
        Value::DataSet(ds) if datatype == DataType::DataSet => {
            m.value = Some(pm::Value::DatasetValue(data_set(ds)?));
        }
        Value::Template(t) if datatype == DataType::Template => {
            m.value = Some(pm::Value::TemplateValue(template(t)?));
        }
        other => {
            m.value = Some(match encode_scalar(datatype, other)? {
                WireOut::Int(i) => pm::Value::IntValue(i),
                WireOut::Long(l) => pm::Value::LongValue(l),
                WireOut::Float(f) => pm::Value::FloatValue(f),
                WireOut::Double(d) => pm::Value::DoubleValue(d),
                WireOut::Bool(b) => pm::Value::BooleanValue(b),
                WireOut::Str(s) => pm::Value::StringValue(s),
                WireOut::Bytes(b) => pm::Value::BytesValue(b),
            });
        }
    }
    Ok(m)
}

/// The protobuf form of a decoded [`Metric`], with its flags and properties: the inverse of
/// [`decode_metric`](crate::decode_metric). The `quality` field is not written on its own: it
/// is the `Quality` property.
pub fn encode_metric(m: &Metric) -> Result<pb::Metric, EncodeError> {
    let mut out = metric(&m.name, m.alias, &m.value, m.datatype, m.timestamp)?;
    out.is_historical = m.is_historical.then_some(true);
    out.is_transient = m.is_transient.then_some(true);
    out.properties = m.properties.as_ref().map(property_set).transpose()?;
    Ok(out)
}

fn data_set(ds: &DataSetValue) -> Result<pb::DataSet, EncodeError> {
    let bad = |found: String| EncodeError::Mismatch { datatype: "DataSet", found };
    if ds.types.len() != ds.columns.len() {
        return Err(bad(format!("{} columns but {} types", ds.columns.len(), ds.types.len())));
    }
    let mut rows = Vec::with_capacity(ds.rows.len());
    for row in &ds.rows {
        if row.len() != ds.types.len() {
            return Err(bad(format!(
                "a row of {} values for {} columns",
                row.len(),
                ds.types.len()
            )));
        }
        let elements = row
            .iter()
            .zip(&ds.types)
            .map(|(v, dt)| {
                if !dt.is_scalar() {
                    return Err(bad(format!("column type {dt}")));
                }
                let value = match v {
                    Value::Null => None,
                    v => Some(match encode_scalar(*dt, v)? {
                        WireOut::Int(i) => data_set_value::Value::IntValue(i),
                        WireOut::Long(l) => data_set_value::Value::LongValue(l),
                        WireOut::Float(f) => data_set_value::Value::FloatValue(f),
                        WireOut::Double(d) => data_set_value::Value::DoubleValue(d),
                        WireOut::Bool(b) => data_set_value::Value::BooleanValue(b),
                        WireOut::Str(s) => data_set_value::Value::StringValue(s),
                        WireOut::Bytes(_) => return Err(bad(format!("bytes in a {dt} column"))),
                    }),
                };
                Ok(data_set::DataSetValue { value })
            })
            .collect::<Result<_, _>>()?;
        rows.push(data_set::Row { elements });
    }
    Ok(pb::DataSet {
        num_of_columns: Some(ds.columns.len() as u64),
        columns: ds.columns.clone(),
        types: ds.types.iter().map(|t| t.number()).collect(),
        rows,
    })
}

fn template(t: &TemplateValue) -> Result<pb::Template, EncodeError> {
    let parameters = t
        .parameters
        .iter()
        .map(|p| {
            let value = match &p.value {
                Value::Null => None,
                v => Some(match encode_scalar(p.datatype, v)? {
                    WireOut::Int(i) => pp::Value::IntValue(i),
                    WireOut::Long(l) => pp::Value::LongValue(l),
                    WireOut::Float(f) => pp::Value::FloatValue(f),
                    WireOut::Double(d) => pp::Value::DoubleValue(d),
                    WireOut::Bool(b) => pp::Value::BooleanValue(b),
                    WireOut::Str(s) => pp::Value::StringValue(s),
                    WireOut::Bytes(_) => {
                        return Err(EncodeError::Mismatch {
                            datatype: p.datatype.name(),
                            found: "a template parameter of bytes".to_owned(),
                        })
                    }
                }),
            };
            Ok(pb::template::Parameter {
                name: Some(p.name.clone()),
                r#type: Some(p.datatype.number()),
                value,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(pb::Template {
        version: t.version.clone(),
        metrics: t.metrics.iter().map(encode_metric).collect::<Result<_, _>>()?,
        parameters,
        template_ref: t.template_ref.clone(),
        is_definition: Some(t.is_definition),
    })
}

/// The protobuf form of a property set (scalars, nested sets and lists of sets).
pub fn property_set(ps: &PropertySetValue) -> Result<pb::PropertySet, EncodeError> {
    use property_value::Value as V;
    let mut out = pb::PropertySet::default();
    for p in &ps.properties {
        let value = match (&p.value, p.datatype) {
            (Value::Null, _) => None,
            (Value::PropertySet(set), DataType::PropertySet) => {
                Some(V::PropertysetValue(property_set(set)?))
            }
            (Value::PropertySetList(list), DataType::PropertySetList) => {
                Some(V::PropertysetsValue(pb::PropertySetList {
                    propertyset: list.iter().map(property_set).collect::<Result<_, _>>()?,
                }))
            }
            (v, dt) => Some(match encode_scalar(dt, v)? {
                WireOut::Int(i) => V::IntValue(i),
                WireOut::Long(l) => V::LongValue(l),
                WireOut::Float(f) => V::FloatValue(f),
                WireOut::Double(d) => V::DoubleValue(d),
                WireOut::Bool(b) => V::BooleanValue(b),
                WireOut::Str(s) => V::StringValue(s),
                WireOut::Bytes(_) => {
                    return Err(EncodeError::Mismatch {
                        datatype: dt.name(),
                        found: "a property of bytes".to_owned(),
                    })
                }
            }),
        };
        out.keys.push(p.key.clone());
        out.values.push(pb::PropertyValue {
            r#type: Some(p.datatype.number()),
            is_null: matches!(p.value, Value::Null).then_some(true),
            value,
        });
    }
    Ok(out)
}

/// The NCMD payload that asks an edge node for its births again: the Boolean metric
/// `Node Control/Rebirth` = true, stamped `now_ms`. Publish it on `NodeKey::ncmd_topic`.
///
/// ```
/// let bytes = connector_sparkplug::encode::rebirth_payload(5);
/// let p = connector_sparkplug::decode_payload(&bytes).unwrap();
/// let m = connector_sparkplug::decode_metrics(&p).unwrap();
/// assert_eq!(m[0].name, "Node Control/Rebirth");
/// assert_eq!(m[0].value, connector_sparkplug::Value::Boolean(true));
/// ```
pub fn rebirth_payload(now_ms: u64) -> Vec<u8> {
    let m = pb::Metric {
        name: Some(REBIRTH.to_owned()),
        timestamp: Some(now_ms),
        datatype: Some(DataType::Boolean.number()),
        value: Some(pm::Value::BooleanValue(true)),
        ..pb::Metric::default()
    };
    encode_payload(&Payload { timestamp: Some(now_ms), metrics: vec![m], ..Payload::default() })
}

/// An NCMD/DCMD payload for `device`: each metric's name resolved to its alias and datatype via
/// `state.lookup` where known (the metric then carries both name and alias), else the given
/// datatype, else one inferred from the JSON value (bool -> Boolean, integer -> Int64, other
/// number -> Double, string -> String). A value that does not fit the datatype is an error.
///
/// ```
/// use connector_sparkplug::encode::command_payload;
/// use connector_sparkplug::json::command_from_json;
/// use connector_sparkplug::{decode_metrics, decode_payload, DeviceKey, Value};
/// let cmd = command_from_json(&serde_json::json!({"name": "Setpoint", "value": 42})).unwrap();
/// let device = DeviceKey::parse("plant1/line4/press2").unwrap();
/// let bytes = command_payload(None, &device, &cmd, 1_000).unwrap();
/// let metrics = decode_metrics(&decode_payload(&bytes).unwrap()).unwrap();
/// assert_eq!(metrics[0].value, Value::Int(42)); // inferred Int64
/// ```
pub fn command_payload(
    state: Option<&HostState>,
    device: &DeviceKey,
    metrics: &[CommandMetric],
    now_ms: u64,
) -> Result<Vec<u8>, EncodeError> {
    if metrics.is_empty() {
        return Err(EncodeError::Command("no metrics".to_owned()));
    }
    let mut out = Vec::with_capacity(metrics.len());
    for cm in metrics {
        let known = state.and_then(|s| s.lookup(device, &cm.name));
        let (alias, datatype) = match (known, cm.datatype) {
            (Some((alias, dt)), _) => (alias, dt),
            (None, Some(dt)) => (None, dt),
            (None, None) => (
                None,
                infer_datatype(&cm.value)
                    .ok_or_else(|| EncodeError::NoDatatype(cm.name.clone()))?,
            ),
        };
        let value = value_from_json(&cm.value, datatype)?;
        out.push(metric(&cm.name, alias, &value, datatype, Some(now_ms))?);
    }
    Ok(encode_payload(&Payload { timestamp: Some(now_ms), metrics: out, ..Payload::default() }))
}

/// The datatype a command value of unknown datatype gets from its JSON type.
fn infer_datatype(value: &serde_json::Value) -> Option<DataType> {
    match value {
        serde_json::Value::Bool(_) => Some(DataType::Boolean),
        serde_json::Value::Number(n) if n.is_i64() => Some(DataType::Int64),
        serde_json::Value::Number(n) if n.is_u64() => Some(DataType::UInt64),
        serde_json::Value::Number(_) => Some(DataType::Double),
        serde_json::Value::String(_) => Some(DataType::String),
        _ => None,
    }
}
