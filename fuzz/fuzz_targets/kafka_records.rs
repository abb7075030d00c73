//! Kafka record batches as a Fetch response carries them, decoded into sink records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| connector_core::fuzzing::record_batches(data));
