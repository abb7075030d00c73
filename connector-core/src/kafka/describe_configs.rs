//! The DescribeConfigs request (API key 32, versions 0-3), which rskafka 0.6's protocol module
//! does not have: encoded and decoded here with its primitives, following the layout of the
//! messages it does have. Only topics are described; we use it to check that the offsets topic
//! is compacted.
//!
//! Layout (non-flexible versions 0-3, from the Kafka protocol's message definitions):
//! ```text
//! request:  [resource_type int8, resource_name string, configuration_keys nullable [string]]
//!           include_synonyms bool (v1+), include_documentation bool (v3+)
//! response: throttle_time_ms int32,
//!           [error_code int16, error_message nullable string, resource_type int8,
//!            resource_name string,
//!            [name string, value nullable string, read_only bool, is_default bool (v0),
//!             config_source int8 (v1+), is_sensitive bool,
//!             [synonym name string, value nullable string, source int8] (v1+),
//!             config_type int8 (v3+), documentation nullable string (v3+)]]
//! ```

use std::io::{Read, Write};

use crate::kafka::group::codec::read_len;
use crate::kafka::wire::api_key::ApiKey;
use crate::kafka::wire::api_version::{ApiVersion, ApiVersionRange};
use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use crate::kafka::wire::primitives::{Boolean, Int16, Int32, Int8, NullableString, String_};
use crate::kafka::wire::traits::{ReadType, WriteType};

/// Resource type of a topic in DescribeConfigs.
pub(crate) const RESOURCE_TOPIC: i8 = 2;

/// DescribeConfigs for some topics.
#[derive(Debug)]
pub(crate) struct DescribeConfigsRequest {
    /// (resource type, resource name, keys to list or `None` for all).
    pub(crate) resources: Vec<(i8, String, Option<Vec<String>>)>,
}

/// One described resource.
#[derive(Debug)]
pub(crate) struct DescribeConfigsResult {
    pub(crate) error: Option<ApiError>,
    pub(crate) error_message: Option<String>,
    pub(crate) resource_name: String,
    /// (name, value) of every config the broker listed.
    pub(crate) configs: Vec<(String, Option<String>)>,
}

/// The answer to [`DescribeConfigsRequest`].
#[derive(Debug)]
pub(crate) struct DescribeConfigsResponse {
    pub(crate) results: Vec<DescribeConfigsResult>,
}

impl RequestBody for DescribeConfigsRequest {
    type ResponseBody = DescribeConfigsResponse;
    const API_KEY: ApiKey = ApiKey::DescribeConfigs;
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(3)));
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(4));
}

fn array_len(len: usize) -> Result<Int32, WriteVersionedError> {
    let n = i32::try_from(len).map_err(crate::kafka::wire::traits::WriteError::from)?;
    Ok(Int32(n))
}

impl<W: Write> WriteVersionedType<W> for DescribeConfigsRequest {
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0 .0;
        array_len(self.resources.len())?.write(writer)?;
        for (kind, name, keys) in &self.resources {
            Int8(*kind).write(writer)?;
            String_(name.clone()).write(writer)?;
            match keys {
                None => Int32(-1).write(writer)?,
                Some(keys) => {
                    array_len(keys.len())?.write(writer)?;
                    for k in keys {
                        String_(k.clone()).write(writer)?;
                    }
                }
            }
        }
        if v >= 1 {
            Boolean(false).write(writer)?;
        }
        if v >= 3 {
            Boolean(false).write(writer)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for DescribeConfigsResponse {
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        let _throttle_time_ms = Int32::read(reader)?;
        let n = read_len(reader)?;
        let mut results = Vec::with_capacity(n);
        for _ in 0..n {
            let error = ApiError::new(Int16::read(reader)?.0);
            let error_message = NullableString::read(reader)?.0;
            let _resource_type = Int8::read(reader)?;
            let resource_name = String_::read(reader)?.0;
            let m = read_len(reader)?;
            let mut configs = Vec::with_capacity(m);
            for _ in 0..m {
                let name = String_::read(reader)?.0;
                let value = NullableString::read(reader)?.0;
                let _read_only = Boolean::read(reader)?;
                if v == 0 {
                    let _is_default = Boolean::read(reader)?;
                } else {
                    let _config_source = Int8::read(reader)?;
                }
                let _is_sensitive = Boolean::read(reader)?;
                if v >= 1 {
                    for _ in 0..read_len(reader)? {
                        let _name = String_::read(reader)?;
                        let _value = NullableString::read(reader)?;
                        let _source = Int8::read(reader)?;
                    }
                }
                if v >= 3 {
                    let _config_type = Int8::read(reader)?;
                    let _documentation = NullableString::read(reader)?;
                }
                configs.push((name, value));
            }
            results.push(DescribeConfigsResult { error, error_message, resource_name, configs });
        }
        Ok(Self { results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn string(out: &mut Vec<u8>, s: &str) {
        String_(s.to_owned()).write(out).unwrap();
    }

    #[test]
    fn a_v1_request_is_laid_out_as_the_protocol_says() {
        let request = DescribeConfigsRequest {
            resources: vec![(RESOURCE_TOPIC, "t".to_owned(), Some(vec!["cleanup.policy".into()]))],
        };
        let mut got = Vec::new();
        request.write_versioned(&mut got, ApiVersion(Int16(1))).unwrap();
        let mut want = vec![0, 0, 0, 1, 2];
        string(&mut want, "t");
        want.extend_from_slice(&[0, 0, 0, 1]);
        string(&mut want, "cleanup.policy");
        want.push(0); // include_synonyms
        assert_eq!(got, want);
    }

    #[test]
    fn v1_and_v3_responses_decode_with_synonyms_and_documentation() {
        for v in [0i16, 1, 3] {
            let mut b = Vec::new();
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0]); // throttle, 1 result, no error
            Int16(-1).write(&mut b).unwrap(); // null error message
            b.push(2);
            string(&mut b, "offsets");
            b.extend_from_slice(&[0, 0, 0, 1]);
            string(&mut b, "cleanup.policy");
            NullableString(Some("compact".into())).write(&mut b).unwrap();
            b.push(0); // read_only
            b.push(if v == 0 { 0 } else { 5 }); // is_default / config_source
            b.push(0); // is_sensitive
            if v >= 1 {
                b.extend_from_slice(&[0, 0, 0, 1]);
                string(&mut b, "log.cleanup.policy");
                NullableString(Some("delete".into())).write(&mut b).unwrap();
                b.push(4);
            }
            if v >= 3 {
                b.push(7);
                NullableString(None).write(&mut b).unwrap();
            }
            let len = b.len() as u64;
            let mut cursor = Cursor::new(b);
            let r =
                DescribeConfigsResponse::read_versioned(&mut cursor, ApiVersion(Int16(v))).unwrap();
            assert_eq!(cursor.position(), len, "v{v} read to the end");
            assert_eq!(r.results.len(), 1);
            assert!(r.results[0].error.is_none());
            assert_eq!(r.results[0].resource_name, "offsets");
            assert_eq!(
                r.results[0].configs,
                vec![("cleanup.policy".to_owned(), Some("compact".to_owned()))]
            );
        }
    }
}
