//! Topic templates: parse, write back, render; the MQTT source's `kafka_topic` and the MQTT
//! sink's `mqtt_topic` checked as `validate()` checks them and rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // template \n value-or-topic \n key \n header
    let mut parts = text.splitn(4, '\n');
    let template = parts.next().unwrap_or_default();
    let a = parts.next().unwrap_or("plant/line1/temp");
    let b = parts.next().unwrap_or("car-1");
    let c = parts.next().unwrap_or("dev");
    connector_core::fuzzing::template(template, &[a, b, c]);
    connector_mqtt_source::fuzzing::kafka_topic(template, a);
    connector_mqtt_sink::fuzzing::mqtt_topic(template, a, b.as_bytes(), c.as_bytes());
});
