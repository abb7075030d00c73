//! A `connect` configuration file (TOML) through the runner's parse and every validate(): no
//! panic, and every problem named at a key path.
#![no_main]

use std::sync::OnceLock;

use connector_core::runner::Registry;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::new();
        r.register_source::<connector_mqtt_source::MqttSourceConnector>("mqtt-source")
            .register_sink::<connector_mqtt_sink::MqttSinkConnector>("mqtt-sink");
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    connector_core::fuzzing::config(text, registry());
});
