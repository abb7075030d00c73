//! The JSON shapes of the Kafka records the source writes (one per metric, one per message, and
//! status records for BIRTH/DEATH) and of the command records the sink reads. Shared by the
//! source, the sink, the examples and `docs/sparkplug.md`.
//!
//! Values are typed JSON: integers as numbers, Float/Double as numbers (NaN and infinities as the
//! strings `"NaN"`, `"Infinity"`, `"-Infinity"`), DateTime as milliseconds, Bytes/File as base64
//! (standard alphabet, padded), arrays as arrays, a DataSet as `{"columns","types","rows"}`, a
//! Template as `{"version","template_ref","is_definition","metrics","parameters"}`, a property
//! set as `{"<key>": {"datatype","value"}}`. Fields without a value are left out.
//!
//! ```
//! use connector_sparkplug::json::{message_json, status_json, Status};
//! use connector_sparkplug::{DeviceKey, MessageType};
//! let device = DeviceKey::parse("plant1/line4").unwrap();
//! let status = status_json(&device, Status::Offline, Some(3), Some(1_000));
//! assert_eq!(
//!     status,
//!     serde_json::json!({"type": "status", "group": "plant1", "node": "line4",
//!                        "status": "offline", "bd_seq": 3, "timestamp": 1000})
//! );
//! let message = message_json(MessageType::NData, &device, Some(7), None, &[]);
//! assert_eq!(message["type"], "NDATA");
//! ```

mod base64;
mod command;

pub use base64::{base64_decode, base64_encode};
pub use command::{command_from_json, value_from_json, CommandError, CommandMetric};

use serde_json::{json, Map, Number, Value as Json};

use crate::{DeviceKey, MessageType, Metric, PropertySetValue, Value};

/// The status a BIRTH or DEATH turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// BIRTH: the node or device is online.
    Online,
    /// NDEATH with the current bdSeq, or DDEATH: offline.
    Offline,
    /// NDEATH with another bdSeq: a stale will, ignored for the node's state.
    Stale,
}

impl Status {
    /// `"online"`, `"offline"` or `"stale"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Stale => "stale",
        }
    }
}

fn float(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".to_owned()),
        None if f > 0.0 => Json::String("Infinity".to_owned()),
        None => Json::String("-Infinity".to_owned()),
    }
}

/// A Float as the JSON number with the fewest digits that reads back as the same `f32`
/// (`0.1f32` is `0.1`, not `0.10000000149011612`).
fn float32(f: f32) -> Json {
    if !f.is_finite() {
        return float(f64::from(f));
    }
    float(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
}

/// The typed JSON of a value (see the module documentation).
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => float32(*f),
        Value::Double(d) => float(*d),
        Value::Boolean(b) => json!(b),
        Value::String(s) => json!(s),
        Value::DateTime(ms) => json!(ms),
        Value::Bytes(b) => Json::String(base64_encode(b)),
        Value::DataSet(ds) => json!({
            "columns": ds.columns,
            "types": ds.types.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "rows": ds.rows.iter().map(|r| r.iter().map(value_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        }),
        Value::Template(t) => {
            let mut o = Map::new();
            if let Some(v) = &t.version {
                o.insert("version".into(), json!(v));
            }
            if let Some(r) = &t.template_ref {
                o.insert("template_ref".into(), json!(r));
            }
            o.insert("is_definition".into(), json!(t.is_definition));
            o.insert("metrics".into(), Json::Array(t.metrics.iter().map(metric_json).collect()));
            let parameters = t
                .parameters
                .iter()
                .map(|p| json!({"name": p.name, "datatype": p.datatype.name(), "value": value_json(&p.value)}))
                .collect();
            o.insert("parameters".into(), Json::Array(parameters));
            Json::Object(o)
        }
        Value::PropertySet(ps) => property_set_json(ps),
        Value::PropertySetList(list) => Json::Array(list.iter().map(property_set_json).collect()),
        Value::IntArray(v) => json!(v),
        Value::UIntArray(v) => json!(v),
        Value::FloatArray(v) => Json::Array(v.iter().map(|f| float32(*f)).collect()),
        Value::DoubleArray(v) => Json::Array(v.iter().map(|d| float(*d)).collect()),
        Value::BooleanArray(v) => json!(v),
        Value::StringArray(v) => json!(v),
        Value::DateTimeArray(v) => json!(v),
    }
}

/// A property set as `{"<key>": {"datatype": "Int32", "value": 192}, ...}`.
pub fn property_set_json(ps: &PropertySetValue) -> Json {
    let mut o = Map::new();
    for p in &ps.properties {
        o.insert(
            p.key.clone(),
            json!({"datatype": p.datatype.name(), "value": value_json(&p.value)}),
        );
    }
    Json::Object(o)
}

/// A metric: `{"name","alias","datatype","value","timestamp","quality","is_historical",
/// "is_transient","properties"}`; `alias`, `timestamp`, `quality` and `properties` only when
/// present, the two flags only when true.
///
/// ```
/// use connector_sparkplug::{json::metric_json, DataType, Metric, Value};
/// let m = Metric { name: "Temp".into(), alias: Some(1), datatype: DataType::Float,
///     value: Value::Float(0.1), timestamp: Some(5), is_historical: false,
///     is_transient: false, quality: None, properties: None };
/// assert_eq!(metric_json(&m), serde_json::json!(
///     {"name": "Temp", "alias": 1, "datatype": "Float", "value": 0.1, "timestamp": 5}));
/// ```
pub fn metric_json(m: &Metric) -> Json {
    let mut o = Map::new();
    o.insert("name".into(), json!(m.name));
    if let Some(a) = m.alias {
        o.insert("alias".into(), json!(a));
    }
    o.insert("datatype".into(), json!(m.datatype.name()));
    o.insert("value".into(), value_json(&m.value));
    if let Some(t) = m.timestamp {
        o.insert("timestamp".into(), json!(t));
    }
    if let Some(q) = m.quality {
        o.insert("quality".into(), json!(q));
    }
    if m.is_historical {
        o.insert("is_historical".into(), json!(true));
    }
    if m.is_transient {
        o.insert("is_transient".into(), json!(true));
    }
    if let Some(p) = &m.properties {
        o.insert("properties".into(), property_set_json(p));
    }
    Json::Object(o)
}

fn device_fields(o: &mut Map<String, Json>, device: &DeviceKey) {
    o.insert("group".into(), json!(device.node.group));
    o.insert("node".into(), json!(device.node.node));
    if let Some(d) = &device.device {
        o.insert("device".into(), json!(d));
    }
}

/// A whole message: `{"type":"NDATA","group","node","device","seq","timestamp","metrics":[...]}`
/// (`device`, `seq`, `timestamp` only when present).
pub fn message_json(
    kind: MessageType,
    device: &DeviceKey,
    seq: Option<u64>,
    timestamp: Option<u64>,
    metrics: &[Metric],
) -> Json {
    let mut o = Map::new();
    o.insert("type".into(), json!(kind.as_str()));
    device_fields(&mut o, device);
    if let Some(s) = seq {
        o.insert("seq".into(), json!(s));
    }
    if let Some(t) = timestamp {
        o.insert("timestamp".into(), json!(t));
    }
    o.insert("metrics".into(), Json::Array(metrics.iter().map(metric_json).collect()));
    Json::Object(o)
}

/// A status record: `{"type":"status","group","node","device","status","bd_seq","timestamp"}`
/// (`device`, `bd_seq`, `timestamp` only when present).
pub fn status_json(
    device: &DeviceKey,
    status: Status,
    bd_seq: Option<u64>,
    timestamp: Option<u64>,
) -> Json {
    let mut o = Map::new();
    o.insert("type".into(), json!("status"));
    device_fields(&mut o, device);
    o.insert("status".into(), json!(status.as_str()));
    if let Some(b) = bd_seq {
        o.insert("bd_seq".into(), json!(b));
    }
    if let Some(t) = timestamp {
        o.insert("timestamp".into(), json!(t));
    }
    Json::Object(o)
}
