//! The packed array datatypes of Sparkplug 3.0, carried in a metric's `bytes_value`:
//!
//! - Int8Array ... Int64Array, UInt8Array ... UInt64Array: the elements packed little-endian,
//!   each in its own width (signed ones as two's complement);
//! - FloatArray, DoubleArray: IEEE 754 single/double, little-endian;
//! - BooleanArray: a 4-byte little-endian count of booleans, then the booleans packed 8 to a
//!   byte, the first one in the most significant bit, the last byte padded with zero bits
//!   (the spec's example: `[false, false, true, true, false, true, false, false, true, true,
//!   false, true]` is `[0x0C, 0x00, 0x00, 0x00, 0x34, 0xD0]`);
//! - StringArray: UTF-8 strings, each terminated by a NUL byte;
//! - DateTimeArray: milliseconds since the Unix epoch as 8-byte little-endian integers.
//!
//! Decoding allocates in proportion to the bytes present, once: at most 8 bytes per input byte
//! (an Int8Array element becomes an `i64`), 8 booleans per byte of a BooleanArray. A count
//! that claims more booleans than the bytes hold is an error, not an allocation.
//!
//! ```
//! use connector_sparkplug::value::arrays;
//! use connector_sparkplug::{DataType, Value};
//! let bytes = arrays::encode(DataType::Int16Array, &Value::IntArray(vec![-1, 256])).unwrap();
//! assert_eq!(bytes, [0xff, 0xff, 0x00, 0x01]);
//! assert_eq!(arrays::decode(DataType::Int16Array, &bytes).unwrap(), Value::IntArray(vec![-1, 256]));
//! ```

use super::{int_bits_of, EncodeError};
use crate::{DataType, DecodeError, Value};

fn array_error(datatype: DataType, reason: impl Into<String>) -> DecodeError {
    DecodeError::Array { datatype: datatype.name(), reason: reason.into() }
}

/// The `width`-byte little-endian words of `bytes`, each mapped by `f`, or an error when they do
/// not divide. The output is allocated once, for exactly the elements present.
fn words<T>(
    datatype: DataType,
    bytes: &[u8],
    width: usize,
    f: impl Fn(u64) -> T,
) -> Result<Vec<T>, DecodeError> {
    if bytes.len() % width != 0 {
        return Err(array_error(
            datatype,
            format!("{} bytes are not a whole number of {width}-byte elements", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(width)
        .map(|chunk| {
            let mut word = [0u8; 8];
            for (slot, byte) in word.iter_mut().zip(chunk) {
                *slot = *byte;
            }
            f(u64::from_le_bytes(word))
        })
        .collect())
}

/// Decodes the bytes of an array datatype.
pub fn decode(datatype: DataType, bytes: &[u8]) -> Result<Value, DecodeError> {
    use DataType as T;
    if let Some((signed, bits)) = datatype.int_bits() {
        let width = (bits / 8) as usize;
        return Ok(if signed {
            Value::IntArray(words(datatype, bytes, width, |w| match bits {
                8 => i64::from(w as u8 as i8),
                16 => i64::from(w as u16 as i16),
                32 => i64::from(w as u32 as i32),
                _ => w as i64,
            })?)
        } else {
            Value::UIntArray(words(datatype, bytes, width, |w| w)?)
        });
    }
    match datatype {
        T::FloatArray => {
            Ok(Value::FloatArray(words(datatype, bytes, 4, |w| f32::from_bits(w as u32))?))
        }
        T::DoubleArray => Ok(Value::DoubleArray(words(datatype, bytes, 8, f64::from_bits)?)),
        T::DateTimeArray => Ok(Value::DateTimeArray(words(datatype, bytes, 8, |w| w)?)),
        T::BooleanArray => decode_booleans(bytes),
        T::StringArray => decode_strings(bytes),
        other => Err(array_error(other, "not an array datatype")),
    }
}

fn decode_booleans(bytes: &[u8]) -> Result<Value, DecodeError> {
    let (Some(count), Some(bits)) = (bytes.get(..4), bytes.get(4..)) else {
        return Err(array_error(DataType::BooleanArray, "shorter than its 4-byte count"));
    };
    let mut le = [0u8; 4];
    le.copy_from_slice(count);
    let count = u32::from_le_bytes(le) as usize;
    let needed = count.div_ceil(8);
    // Fewer bytes than the count needs is an error (checked before allocating); bytes after
    // the last needed one are ignored (lenient to other encoders' padding).
    if bits.len() < needed {
        return Err(array_error(
            DataType::BooleanArray,
            format!("count {count} needs {needed} bytes of bits, {} present", bits.len()),
        ));
    }
    Ok(Value::BooleanArray(
        (0..count)
            .map(|i| bits.get(i / 8).is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0))
            .collect(),
    ))
}

fn decode_strings(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (text, after) = match rest.iter().position(|b| *b == 0) {
            Some(nul) => {
                (rest.get(..nul).unwrap_or_default(), rest.get(nul + 1..).unwrap_or_default())
            }
            // A last string without its NUL is taken as it is (lenient to other encoders).
            None => (rest, &[][..]),
        };
        let text = std::str::from_utf8(text)
            .map_err(|e| array_error(DataType::StringArray, format!("not UTF-8: {e}")))?;
        out.push(text.to_owned());
        rest = after;
    }
    Ok(Value::StringArray(out))
}

/// Encodes an array value as the bytes of `datatype`. The value's variant must match the
/// datatype (IntArray for Int8Array ... Int64Array, etc.), and every integer must fit the
/// element width; a string with a NUL byte cannot be encoded in a StringArray.
pub fn encode(datatype: DataType, value: &Value) -> Result<Vec<u8>, EncodeError> {
    use DataType as T;
    let mismatch = |found: String| EncodeError::Mismatch { datatype: datatype.name(), found };
    if let (Some((signed, bits)), true) = (datatype.int_bits(), datatype.is_array()) {
        let wide: Vec<i128> = match value {
            Value::IntArray(v) => v.iter().map(|i| i128::from(*i)).collect(),
            Value::UIntArray(v) => v.iter().map(|u| i128::from(*u)).collect(),
            other => return Err(mismatch(other.kind().to_owned())),
        };
        let width = (bits / 8) as usize;
        let mut out = Vec::with_capacity(wide.len() * width);
        for w in wide {
            let raw = int_bits_of(signed, bits, w)
                .ok_or_else(|| mismatch(format!("element {w} (out of range)")))?;
            out.extend_from_slice(raw.to_le_bytes().get(..width).unwrap_or_default());
        }
        return Ok(out);
    }
    match (datatype, value) {
        (T::FloatArray, Value::FloatArray(v)) => {
            Ok(v.iter().flat_map(|f| f.to_le_bytes()).collect())
        }
        (T::DoubleArray, Value::DoubleArray(v)) => {
            Ok(v.iter().flat_map(|d| d.to_le_bytes()).collect())
        }
        (T::DateTimeArray, Value::DateTimeArray(v) | Value::UIntArray(v)) => {
            Ok(v.iter().flat_map(|d| d.to_le_bytes()).collect())
        }
        (T::BooleanArray, Value::BooleanArray(v)) => {
            let count = u32::try_from(v.len())
                .map_err(|_| mismatch(format!("{} booleans (more than 2^32)", v.len())))?;
            let mut out = count.to_le_bytes().to_vec();
            out.resize(4 + v.len().div_ceil(8), 0);
            for (i, b) in v.iter().enumerate() {
                if *b {
                    if let Some(byte) = out.get_mut(4 + i / 8) {
                        *byte |= 0x80 >> (i % 8);
                    }
                }
            }
            Ok(out)
        }
        (T::StringArray, Value::StringArray(v)) => {
            let mut out = Vec::new();
            for s in v {
                if s.contains('\0') {
                    return Err(mismatch("a string with a NUL byte".to_owned()));
                }
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Ok(out)
        }
        _ => Err(mismatch(value.kind().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_examples_decode() {
        // Sparkplug 3.0, 6.4.17 (datatype details): the BooleanArray example.
        let bools = [false, false, true, true, false, true, false, false, true, true, false, true];
        let bytes = [0x0C, 0x00, 0x00, 0x00, 0x34, 0xD0];
        assert_eq!(
            decode(DataType::BooleanArray, &bytes).unwrap(),
            Value::BooleanArray(bools.to_vec())
        );
        assert_eq!(
            encode(DataType::BooleanArray, &Value::BooleanArray(bools.to_vec())).unwrap(),
            bytes
        );
        let strings = decode(DataType::StringArray, b"ABC\0hello\0").unwrap();
        assert_eq!(strings, Value::StringArray(vec!["ABC".into(), "hello".into()]));
        assert_eq!(
            decode(DataType::Int8Array, &[0xff, 0x17]).unwrap(),
            Value::IntArray(vec![-1, 23])
        );
        // The spec's DateTimeArray example: 2009-10-21T05:27:55.335Z and 2022-06-24T21:57:55Z.
        let times = [
            0xC7, 0xD0, 0x90, 0x75, 0x24, 0x01, 0x00, 0x00, 0xB8, 0xBA, 0xB8, 0x97, 0x81, 0x01,
            0x00, 0x00,
        ];
        assert_eq!(
            decode(DataType::DateTimeArray, &times).unwrap(),
            Value::DateTimeArray(vec![1_256_102_875_335, 1_656_107_875_000])
        );
    }

    #[test]
    fn length_claims_beyond_the_bytes_are_errors() {
        assert!(decode(DataType::BooleanArray, &[0xff, 0xff, 0xff, 0xff, 0x00]).is_err());
        assert!(decode(DataType::BooleanArray, &[1, 0, 0]).is_err());
        // Extra bytes after the bits the count needs are padding.
        assert_eq!(
            decode(DataType::BooleanArray, &[2, 0, 0, 0, 0x80, 0]).unwrap(),
            Value::BooleanArray(vec![true, false])
        );
        assert!(decode(DataType::Int32Array, &[1, 2, 3]).is_err());
        assert!(decode(DataType::StringArray, &[0xff, 0]).is_err());
        assert_eq!(decode(DataType::StringArray, b"").unwrap(), Value::StringArray(vec![]));
        assert_eq!(
            decode(DataType::StringArray, b"\0").unwrap(),
            Value::StringArray(vec![String::new()])
        );
    }
}
