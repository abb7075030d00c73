//! The bytes, string and json converters on arbitrary keys and values.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| connector_core::fuzzing::converters(data));
