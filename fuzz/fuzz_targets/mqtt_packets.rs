//! MQTT 3.1.1 and MQTT 5 packets as they come off the network, decoded into what the connectors
//! see. The first byte picks the version and the packet size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let max = if first & 0x80 == 0 { 1 << 20 } else { usize::from(first & 0x7f) * 16 };
    if first & 1 == 0 {
        connector_mqtt_common::fuzzing::mqtt311(rest, max);
    } else {
        connector_mqtt_common::fuzzing::mqtt5(rest, u32::try_from(max).unwrap_or(u32::MAX));
    }
});
