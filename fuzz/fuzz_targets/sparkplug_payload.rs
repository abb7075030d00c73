//! Sparkplug B payloads as they come off MQTT: the protobuf decoder and every datatype's value
//! decoding, then the host state machine under every message type (after a valid NBIRTH, so
//! DATA reaches alias resolution). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    connector_sparkplug::fuzzing::payload(data);
});
