//! Sparkplug datatypes and typed values: the spec's datatype numbers, and the conversion of each
//! datatype from and to its wire form. Signed integers travel as unsigned protobuf fields (Int8,
//! Int16 and Int32 in `int_value` as two's complement of their own width, Int64 in `long_value`
//! as two's complement of 64 bits; the decoder also accepts a negative value sign-extended to
//! 32 or 64 bits, as Eclipse Tahu writes Int8 and Int16, and refuses any other wider value);
//! arrays travel packed little-endian in `bytes_value`
//! (see [`arrays`] for the exact layouts).
//!
//! ```
//! use connector_sparkplug::{DataType, Value};
//! assert_eq!(DataType::from_u32(3), Some(DataType::Int32));
//! assert_eq!(DataType::from_name("DateTimeArray"), Some(DataType::DateTimeArray));
//! assert_eq!(DataType::Int8.name(), "Int8");
//! let bytes = connector_sparkplug::value::arrays::encode(
//!     DataType::BooleanArray,
//!     &Value::BooleanArray(vec![false, false, true, true, false, true, false, false, true]),
//! ).unwrap();
//! assert_eq!(bytes, [9, 0, 0, 0, 0x34, 0x80]);
//! ```

pub mod arrays;

use serde::Serialize;

use crate::DecodeError;

macro_rules! datatypes {
    ($($name:ident = $n:literal),* $(,)?) => {
        /// All Sparkplug 3.0 datatypes with their spec numbers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
        #[repr(u32)]
        pub enum DataType {
            $(
                #[doc = concat!("`", stringify!($name), "` (", stringify!($n), ").")]
                $name = $n,
            )*
        }

        impl DataType {
            /// Every datatype, in the order of their numbers.
            pub const ALL: &'static [DataType] = &[$(DataType::$name),*];

            /// The datatype with the spec's number `n` (`None` for numbers the spec does not define).
            pub fn from_u32(n: u32) -> Option<Self> {
                match n {
                    $($n => Some(DataType::$name),)*
                    _ => None,
                }
            }

            /// The spec's name of the datatype: `"Int8"`, `"DateTimeArray"`, `"UUID"` ...
            pub fn name(self) -> &'static str {
                match self {
                    $(DataType::$name => stringify!($name),)*
                }
            }

            /// The datatype of a spec name (exact, case-sensitive; `"UUID"`, not `"Uuid"`).
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(DataType::$name),)*
                    _ => None,
                }
            }
        }
    };
}

datatypes! {
    Unknown = 0, Int8 = 1, Int16 = 2, Int32 = 3, Int64 = 4, UInt8 = 5, UInt16 = 6, UInt32 = 7,
    UInt64 = 8, Float = 9, Double = 10, Boolean = 11, String = 12, DateTime = 13, Text = 14,
    UUID = 15, DataSet = 16, Bytes = 17, File = 18, Template = 19, PropertySet = 20,
    PropertySetList = 21, Int8Array = 22, Int16Array = 23, Int32Array = 24, Int64Array = 25,
    UInt8Array = 26, UInt16Array = 27, UInt32Array = 28, UInt64Array = 29, FloatArray = 30,
    DoubleArray = 31, BooleanArray = 32, StringArray = 33, DateTimeArray = 34,
}

impl DataType {
    /// The spec's number of the datatype.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The datatype of a number, or [`DecodeError::UnknownDatatype`].
    pub fn try_from_u32(n: u32) -> Result<Self, DecodeError> {
        DataType::from_u32(n).ok_or(DecodeError::UnknownDatatype(n))
    }

    /// True for the array datatypes (Int8Array ... DateTimeArray), which travel in `bytes_value`.
    pub fn is_array(self) -> bool {
        (22..=34).contains(&self.number())
    }

    /// True for the datatypes a DataSet column, a template parameter or a plain property may
    /// have: the integers, Float, Double, Boolean, String, DateTime, Text (and UUID).
    pub fn is_scalar(self) -> bool {
        (1..=15).contains(&self.number())
    }

    /// The bit width of an integer datatype or of the elements of an integer array.
    pub(crate) fn int_bits(self) -> Option<(bool, u32)> {
        use DataType as T;
        match self {
            T::Int8 | T::Int8Array => Some((true, 8)),
            T::Int16 | T::Int16Array => Some((true, 16)),
            T::Int32 | T::Int32Array => Some((true, 32)),
            T::Int64 | T::Int64Array => Some((true, 64)),
            T::UInt8 | T::UInt8Array => Some((false, 8)),
            T::UInt16 | T::UInt16Array => Some((false, 16)),
            T::UInt32 | T::UInt32Array => Some((false, 32)),
            T::UInt64 | T::UInt64Array => Some((false, 64)),
            _ => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded, typed value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    /// No value (`is_null`, or no value field).
    Null,
    /// Int8, Int16, Int32, Int64.
    Int(i64),
    /// UInt8, UInt16, UInt32, UInt64.
    UInt(u64),
    /// Float.
    Float(f32),
    /// Double.
    Double(f64),
    /// Boolean.
    Boolean(bool),
    /// String, Text, UUID.
    String(String),
    /// DateTime: milliseconds since the Unix epoch (UTC).
    DateTime(u64),
    /// Bytes, File.
    Bytes(Vec<u8>),
    /// DataSet.
    DataSet(DataSetValue),
    /// Template.
    Template(TemplateValue),
    /// PropertySet (only as a property value).
    PropertySet(PropertySetValue),
    /// PropertySetList (only as a property value).
    PropertySetList(Vec<PropertySetValue>),
    /// Int8Array, Int16Array, Int32Array, Int64Array.
    IntArray(Vec<i64>),
    /// UInt8Array, UInt16Array, UInt32Array, UInt64Array.
    UIntArray(Vec<u64>),
    /// FloatArray.
    FloatArray(Vec<f32>),
    /// DoubleArray.
    DoubleArray(Vec<f64>),
    /// BooleanArray.
    BooleanArray(Vec<bool>),
    /// StringArray.
    StringArray(Vec<String>),
    /// DateTimeArray: milliseconds since the Unix epoch (UTC).
    DateTimeArray(Vec<u64>),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "signed integer",
            Value::UInt(_) => "unsigned integer",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::Boolean(_) => "boolean",
            Value::String(_) => "string",
            Value::DateTime(_) => "date-time",
            Value::Bytes(_) => "bytes",
            Value::DataSet(_) => "data set",
            Value::Template(_) => "template",
            Value::PropertySet(_) => "property set",
            Value::PropertySetList(_) => "property set list",
            Value::IntArray(_) => "signed integer array",
            Value::UIntArray(_) => "unsigned integer array",
            Value::FloatArray(_) => "float array",
            Value::DoubleArray(_) => "double array",
            Value::BooleanArray(_) => "boolean array",
            Value::StringArray(_) => "string array",
            Value::DateTimeArray(_) => "date-time array",
        }
    }
}

/// A DataSet: named, typed columns and rows of scalar values.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DataSetValue {
    /// The column names.
    pub columns: Vec<String>,
    /// The column datatypes, one per column.
    pub types: Vec<DataType>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// A Template: a definition (in BIRTH) or an instance of one.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TemplateValue {
    /// The template's version.
    pub version: Option<String>,
    /// For an instance: the name of its definition.
    pub template_ref: Option<String>,
    /// True for a definition.
    pub is_definition: bool,
    /// The template's metrics (recursively decoded).
    pub metrics: Vec<crate::Metric>,
    /// The template's parameters.
    pub parameters: Vec<TemplateParameter>,
}

/// A parameter of a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateParameter {
    /// The parameter's name.
    pub name: String,
    /// The parameter's datatype (a scalar datatype).
    pub datatype: DataType,
    /// The parameter's value.
    pub value: Value,
}

/// A property set, in wire order (keys are not required to be unique by the wire format).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PropertySetValue {
    /// The properties.
    pub properties: Vec<Property>,
}

impl PropertySetValue {
    /// The first property named `key`.
    pub fn get(&self, key: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.key == key)
    }
}

/// One property: a key, a datatype and a value (a scalar, a PropertySet or a PropertySetList).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Property {
    /// The property's name (e.g. `Quality`, `engUnit`).
    pub key: String,
    /// The property's datatype.
    pub datatype: DataType,
    /// The property's value.
    pub value: Value,
}

/// The scalar value fields shared by Metric, DataSetValue, Parameter and PropertyValue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Wire<'a> {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
    Other(&'static str),
}

impl Wire<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Wire::Int(_) => "int_value",
            Wire::Long(_) => "long_value",
            Wire::Float(_) => "float_value",
            Wire::Double(_) => "double_value",
            Wire::Bool(_) => "boolean_value",
            Wire::Str(_) => "string_value",
            Wire::Bytes(_) => "bytes_value",
            Wire::Other(kind) => kind,
        }
    }
}

/// The wire form of a scalar, owned (what the encoder writes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireOut {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

/// Decodes a scalar, a Bytes/File or an array value of `datatype` from its wire field.
/// DataSet, Template and property sets are decoded by the callers that know their messages.
pub(crate) fn decode_scalar(datatype: DataType, wire: Wire<'_>) -> Result<Value, DecodeError> {
    use DataType as T;
    let wrong = || DecodeError::WrongValue { datatype: datatype.name(), found: wire.kind() };
    if let Some((signed, bits)) = datatype.int_bits() {
        if datatype.is_array() {
            return match wire {
                Wire::Bytes(b) => arrays::decode(datatype, b),
                _ => Err(wrong()),
            };
        }
        let (raw, carrier_bits) = match wire {
            Wire::Int(v) => (u64::from(v), 32),
            Wire::Long(v) => (v, 64),
            _ => return Err(wrong()),
        };
        let out_of_range = || DecodeError::WrongValue {
            datatype: datatype.name(),
            found: "a number out of range",
        };
        if bits < 64 && raw >> bits != 0 {
            // Wider than the type: only a negative number sign-extended to the carrier's width
            // is valid (Eclipse Tahu writes Int8 -1 as 0xFFFFFFFF; the spec leaves both open).
            let extended =
                if carrier_bits == 32 { i64::from(raw as u32 as i32) } else { raw as i64 };
            if !signed || extended >= 0 || extended < -(1i64 << (bits - 1)) {
                return Err(out_of_range());
            }
            return Ok(Value::Int(extended));
        }
        return Ok(if signed {
            // Two's complement of the type's own width.
            Value::Int(match bits {
                8 => i64::from(raw as u8 as i8),
                16 => i64::from(raw as u16 as i16),
                32 => i64::from(raw as u32 as i32),
                _ => raw as i64,
            })
        } else {
            Value::UInt(raw)
        });
    }
    match (datatype, wire) {
        (T::Float, Wire::Float(f)) => Ok(Value::Float(f)),
        (T::Double, Wire::Double(d)) => Ok(Value::Double(d)),
        (T::Boolean, Wire::Bool(b)) => Ok(Value::Boolean(b)),
        (T::String | T::Text | T::UUID, Wire::Str(s)) => Ok(Value::String(s.to_owned())),
        (T::DateTime, Wire::Long(v)) => Ok(Value::DateTime(v)),
        (T::DateTime, Wire::Int(v)) => Ok(Value::DateTime(u64::from(v))),
        (T::Bytes | T::File, Wire::Bytes(b)) => Ok(Value::Bytes(b.to_vec())),
        (dt, Wire::Bytes(b)) if dt.is_array() => arrays::decode(dt, b),
        (T::Unknown, _) => Err(DecodeError::UnknownDatatype(0)),
        _ => Err(wrong()),
    }
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The value does not fit the datatype (wrong kind, or a number out of its range).
    #[error("{datatype}: cannot encode {found}")]
    Mismatch {
        /// The datatype asked for.
        datatype: &'static str,
        /// What was given instead.
        found: String,
    },
    /// A command names a metric whose datatype is neither known from BIRTH, nor given, nor
    /// inferable from its JSON value.
    #[error("metric {0:?}: no datatype known, given or inferable")]
    NoDatatype(String),
    /// A DATA metric of a simulated edge node that its BIRTH did not announce.
    #[error("metric {0:?} was not in the birth")]
    NotInBirth(String),
    /// A command record without metrics, or not of the documented shape.
    #[error("command: {0}")]
    Command(String),
}

fn int_in_range(datatype: DataType, value: &Value) -> Result<u64, EncodeError> {
    let mismatch = |found: String| EncodeError::Mismatch { datatype: datatype.name(), found };
    let Some((signed, bits)) = datatype.int_bits() else {
        return Err(mismatch(value.kind().to_owned()));
    };
    let wide: i128 = match value {
        Value::Int(i) => i128::from(*i),
        Value::UInt(u) => i128::from(*u),
        other => return Err(mismatch(other.kind().to_owned())),
    };
    int_bits_of(signed, bits, wide).ok_or_else(|| mismatch(format!("{wide} (out of range)")))
}

/// The wire bits of `wide` as an integer of the given signedness and width (two's complement of
/// that width for signed types), `None` when it does not fit.
pub(crate) fn int_bits_of(signed: bool, bits: u32, wide: i128) -> Option<u64> {
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    if wide < min || wide > max {
        return None;
    }
    let mask: u128 = if bits == 64 { u128::from(u64::MAX) } else { (1u128 << bits) - 1 };
    u64::try_from((wide as u128) & mask).ok()
}

/// Encodes a scalar, Bytes/File or array value as its wire field.
pub(crate) fn encode_scalar(datatype: DataType, value: &Value) -> Result<WireOut, EncodeError> {
    use DataType as T;
    let mismatch =
        || EncodeError::Mismatch { datatype: datatype.name(), found: value.kind().to_owned() };
    if datatype.is_array() {
        return arrays::encode(datatype, value).map(WireOut::Bytes);
    }
    if let Some((_, bits)) = datatype.int_bits() {
        let raw = int_in_range(datatype, value)?;
        return Ok(if bits == 64 {
            WireOut::Long(raw)
        } else {
            WireOut::Int(u32::try_from(raw).map_err(|_| mismatch())?)
        });
    }
    match (datatype, value) {
        (T::Float, Value::Float(f)) => Ok(WireOut::Float(*f)),
        (T::Double, Value::Double(d)) => Ok(WireOut::Double(*d)),
        (T::Boolean, Value::Boolean(b)) => Ok(WireOut::Bool(*b)),
        (T::String | T::Text | T::UUID, Value::String(s)) => Ok(WireOut::Str(s.clone())),
        (T::DateTime, Value::DateTime(ms) | Value::UInt(ms)) => Ok(WireOut::Long(*ms)),
        (T::Bytes | T::File, Value::Bytes(b)) => Ok(WireOut::Bytes(b.clone())),
        _ => Err(mismatch()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_number_and_name_round_trips() {
        assert_eq!(DataType::ALL.len(), 35);
        for (i, dt) in DataType::ALL.iter().enumerate() {
            assert_eq!(dt.number() as usize, i);
            assert_eq!(DataType::from_u32(dt.number()), Some(*dt));
            assert_eq!(DataType::from_name(dt.name()), Some(*dt));
        }
        assert_eq!(DataType::from_u32(35), None);
        assert_eq!(DataType::UUID.name(), "UUID");
    }

    #[test]
    fn signed_integers_decode_from_their_unsigned_wire_form() {
        let int = |dt, w| decode_scalar(dt, w).unwrap();
        assert_eq!(int(DataType::Int8, Wire::Int(0xff)), Value::Int(-1));
        assert_eq!(int(DataType::Int8, Wire::Int(0xffff_ffff)), Value::Int(-1));
        assert_eq!(int(DataType::Int16, Wire::Int(0x8000)), Value::Int(-32768));
        assert_eq!(int(DataType::Int32, Wire::Int(0xffff_fffe)), Value::Int(-2));
        assert_eq!(int(DataType::Int64, Wire::Long(u64::MAX)), Value::Int(-1));
        assert_eq!(int(DataType::UInt32, Wire::Int(u32::MAX)), Value::UInt(4_294_967_295));
        assert!(decode_scalar(DataType::UInt8, Wire::Int(256)).is_err());
        // Wider than the type and not a sign extension: an error, not a truncation.
        assert!(decode_scalar(DataType::Int8, Wire::Int(0x100)).is_err());
        assert!(decode_scalar(DataType::Int8, Wire::Int(0xffff_ff7f)).is_err());
        assert_eq!(int(DataType::Int16, Wire::Long(u64::MAX - 1)), Value::Int(-2));
        assert_eq!(int(DataType::Int32, Wire::Long(u64::MAX)), Value::Int(-1));
        assert!(decode_scalar(DataType::Int32, Wire::Long(1 << 40)).is_err());
        assert!(decode_scalar(DataType::Int32, Wire::Str("1")).is_err());
        assert_eq!(encode_scalar(DataType::Int8, &Value::Int(-1)).unwrap(), WireOut::Int(0xff));
        assert_eq!(
            encode_scalar(DataType::Int64, &Value::Int(-1)).unwrap(),
            WireOut::Long(u64::MAX)
        );
        assert!(encode_scalar(DataType::Int8, &Value::Int(128)).is_err());
        assert!(encode_scalar(DataType::UInt16, &Value::Int(-1)).is_err());
    }
}
