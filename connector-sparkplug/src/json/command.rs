//! Command records (what the sink turns into NCMD/DCMD) and typed values from JSON.

use serde_json::Value as Json;

use super::base64_decode;
use crate::value::EncodeError;
use crate::{DataSetValue, DataType, Value};

/// One metric of a command record.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandMetric {
    /// The metric's name (resolved to an alias from BIRTH when known).
    pub name: String,
    /// The value, as JSON (made typed by the datatype).
    pub value: Json,
    /// The datatype the record gives (BIRTH's datatype wins when known).
    pub datatype: Option<DataType>,
}

/// Why a command record is not of the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Neither `{"metrics": [...]}` nor `{"name", "value"}`, or a metric without a name or value.
    #[error("command record: {0}")]
    Shape(String),
    /// A `datatype` that is not a Sparkplug datatype name or number.
    #[error("command record: unknown datatype {0}")]
    Datatype(String),
}

fn metric_from_json(value: &Json) -> Result<CommandMetric, CommandError> {
    let shape = |m: &str| CommandError::Shape(m.to_owned());
    let Json::Object(o) = value else {
        return Err(shape("a metric must be an object {\"name\", \"value\", \"datatype\"?}"));
    };
    let name = match o.get("name") {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(shape("a metric needs a non-empty string \"name\"")),
    };
    let value = o.get("value").cloned().ok_or_else(|| shape("a metric needs a \"value\""))?;
    let datatype = match o.get("datatype") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => {
            Some(DataType::from_name(s).ok_or_else(|| CommandError::Datatype(s.clone()))?)
        }
        Some(Json::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .and_then(DataType::from_u32)
                .ok_or_else(|| CommandError::Datatype(n.to_string()))?,
        ),
        Some(other) => return Err(CommandError::Datatype(other.to_string())),
    };
    Ok(CommandMetric { name, value, datatype })
}

/// Reads a command record's value: `{"metrics": [{"name", "value", "datatype"?}, ...]}` or a
/// single `{"name", "value", "datatype"?}`. `datatype` is a spec name (`"Int32"`) or number;
/// other keys (a metric record's `alias`, `timestamp`, ...) are ignored.
///
/// ```
/// use connector_sparkplug::json::command_from_json;
/// use connector_sparkplug::DataType;
/// let cmd = command_from_json(&serde_json::json!(
///     {"metrics": [{"name": "Setpoint", "value": 4.5, "datatype": "Float"}]})).unwrap();
/// assert_eq!(cmd[0].datatype, Some(DataType::Float));
/// assert!(command_from_json(&serde_json::json!({"value": 1})).is_err());
/// ```
pub fn command_from_json(value: &Json) -> Result<Vec<CommandMetric>, CommandError> {
    match value.get("metrics") {
        Some(Json::Array(metrics)) if !metrics.is_empty() => {
            metrics.iter().map(metric_from_json).collect()
        }
        Some(_) => Err(CommandError::Shape("\"metrics\" must be a non-empty array".to_owned())),
        None => metric_from_json(value).map(|m| vec![m]),
    }
}

fn mismatch(datatype: DataType, json: &Json) -> EncodeError {
    let found = json.to_string();
    let found = if found.len() > 64 {
        format!("{}...", found.chars().take(60).collect::<String>())
    } else {
        found
    };
    EncodeError::Mismatch { datatype: datatype.name(), found }
}

fn number(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) if s == "NaN" => Some(f64::NAN),
        Json::String(s) if s == "Infinity" => Some(f64::INFINITY),
        Json::String(s) if s == "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// An integer from JSON: an integer number, or a float with no fractional part.
fn integer(json: &Json) -> Option<i128> {
    let Json::Number(n) = json else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 1.8e19).then_some(f as i128)
}

/// The elements of a JSON array, each converted by `f`; `None` if it is not an array or one
/// element does not convert.
fn items<T>(json: &Json, f: impl Fn(&Json) -> Option<T>) -> Option<Vec<T>> {
    json.as_array()?.iter().map(f).collect()
}

/// The typed value of `json` for `datatype`: the inverse of [`value_json`](super::value_json)
/// for everything but Template (not accepted in commands). `null` is `Value::Null`; an integer
/// out of the datatype's range is an error (when encoding).
///
/// ```
/// use connector_sparkplug::json::value_from_json;
/// use connector_sparkplug::{DataType, Value};
/// assert_eq!(value_from_json(&serde_json::json!(-3), DataType::Int8).unwrap(), Value::Int(-3));
/// assert!(value_from_json(&serde_json::json!("x"), DataType::Boolean).is_err());
/// ```
pub fn value_from_json(json: &Json, datatype: DataType) -> Result<Value, EncodeError> {
    use DataType as T;
    let bad = || mismatch(datatype, json);
    if json.is_null() {
        return Ok(Value::Null);
    }
    let int = |j: &Json| integer(j).and_then(|i| i64::try_from(i).ok());
    let uint = |j: &Json| integer(j).and_then(|i| u64::try_from(i).ok());
    let v = match datatype {
        T::Int8 | T::Int16 | T::Int32 | T::Int64 => Value::Int(int(json).ok_or_else(bad)?),
        T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => Value::UInt(uint(json).ok_or_else(bad)?),
        T::Float => Value::Float(number(json).ok_or_else(bad)? as f32),
        T::Double => Value::Double(number(json).ok_or_else(bad)?),
        T::Boolean => Value::Boolean(json.as_bool().ok_or_else(bad)?),
        T::String | T::Text | T::UUID => Value::String(json.as_str().ok_or_else(bad)?.to_owned()),
        T::DateTime => Value::DateTime(json.as_u64().ok_or_else(bad)?),
        T::Bytes | T::File => Value::Bytes(json.as_str().and_then(base64_decode).ok_or_else(bad)?),
        T::Int8Array | T::Int16Array | T::Int32Array | T::Int64Array => {
            Value::IntArray(items(json, int).ok_or_else(bad)?)
        }
        T::UInt8Array | T::UInt16Array | T::UInt32Array | T::UInt64Array => {
            Value::UIntArray(items(json, uint).ok_or_else(bad)?)
        }
        T::FloatArray => {
            Value::FloatArray(items(json, |j| number(j).map(|f| f as f32)).ok_or_else(bad)?)
        }
        T::DoubleArray => Value::DoubleArray(items(json, number).ok_or_else(bad)?),
        T::BooleanArray => Value::BooleanArray(items(json, Json::as_bool).ok_or_else(bad)?),
        T::StringArray => {
            Value::StringArray(items(json, |j| j.as_str().map(str::to_owned)).ok_or_else(bad)?)
        }
        T::DateTimeArray => Value::DateTimeArray(items(json, Json::as_u64).ok_or_else(bad)?),
        T::DataSet => Value::DataSet(data_set_from_json(json).ok_or_else(bad)?),
        T::Unknown | T::Template | T::PropertySet | T::PropertySetList => return Err(bad()),
    };
    Ok(v)
}

fn data_set_from_json(json: &Json) -> Option<DataSetValue> {
    let columns: Vec<String> = json
        .get("columns")?
        .as_array()?
        .iter()
        .map(|c| c.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let types: Vec<DataType> = json
        .get("types")?
        .as_array()?
        .iter()
        .map(|t| t.as_str().and_then(DataType::from_name).filter(|t| t.is_scalar()))
        .collect::<Option<_>>()?;
    if types.len() != columns.len() {
        return None;
    }
    let rows = json
        .get("rows")?
        .as_array()?
        .iter()
        .map(|row| {
            let cells = row.as_array()?;
            if cells.len() != types.len() {
                return None;
            }
            cells.iter().zip(&types).map(|(c, t)| value_from_json(c, *t).ok()).collect()
        })
        .collect::<Option<_>>()?;
    Some(DataSetValue { columns, types, rows })
}
