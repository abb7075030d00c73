//! Entry point for the fuzz targets (the `fuzz/` crate) and the property tests: an `mqtt_topic`
//! template checked as `validate()` checks it, then rendered for a record with arbitrary key and
//! header bytes. Not a stable API.

use std::sync::Arc;

use connector_core::template::Part;
use connector_core::{Headers, SinkRecord, Timestamp};

use crate::config::check_template;
use crate::render;

/// Checks `template` as the config does and renders it for a record on Kafka topic `topic` with
/// `key` and a header `h` of `header`: a rendered MQTT topic never holds a wildcard or NUL and has
/// exactly the levels the template's fixed parts give it (a value cannot add one).
pub fn mqtt_topic(template: &str, topic: &str, key: &[u8], header: &[u8]) {
    let Ok(t) = check_template(template) else { return };
    let mut headers = Headers::new();
    headers.push("h", bytes::Bytes::copy_from_slice(header));
    let record = SinkRecord {
        topic: Arc::from(topic),
        original_topic: Arc::from(topic),
        partition: 0,
        offset: 0,
        key: Some(bytes::Bytes::copy_from_slice(key)),
        value: None,
        headers,
        timestamp: Timestamp::from_millis(0),
    };
    let Ok(rendered) = render::mqtt_topic(&t, &record) else { return };
    assert!(!rendered.contains(['+', '#', '\0']), "{template:?} rendered {rendered:?}");
    let fixed_levels: usize = t
        .parts()
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.matches('/').count(),
            Part::Placeholder(_) => 0,
        })
        .sum();
    assert_eq!(rendered.matches('/').count(), fixed_levels, "{template:?} rendered {rendered:?}");
}

/// Turns a record with arbitrary key and value bytes into a Sparkplug command as
/// `format = "sparkplug_b"` does (no BIRTH known): never panics; a command that encodes goes to
/// the NCMD/DCMD topic of a key with two or three levels.
pub fn sparkplug_command(key: &[u8], value: &[u8]) {
    let Ok(target) = crate::sparkplug::key_target(Some(key)) else { return };
    let topic = target.command_topic();
    assert!(topic.starts_with("spBv1.0/") && !topic.contains(['+', '#', '\0']), "{topic:?}");
    let _ = crate::sparkplug::encode(None, &target, value, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn rendered_topics_keep_their_levels(
            template in "[a-z/+#]{0,6}(\\{key\\}|\\{topic\\}|\\{partition\\}|\\{header\\.h\\})?[a-z/]{0,6}",
            topic in "[a-z./+#]{1,8}",
            key in proptest::collection::vec(any::<u8>(), 0..8),
            header in "[a-z/+#\0]{0,6}",
        ) {
            mqtt_topic(&template, &topic, &key, header.as_bytes());
        }

        #[test]
        fn any_record_is_a_command_or_a_reason(
            key in "[a-z/+#]{0,10}",
            value in prop_oneof![
                "[ -~]{0,40}",
                Just(r#"{"name":"x","value":1}"#.to_owned()),
                "\\{\"name\":\"[a-z]{1,3}\",\"value\":(-?[0-9]{1,25}|\"[a-z]*\"|true|null|\\[1,2\\]),\"datatype\":\"(Int8|UInt64|Double|Boolean|String|Int32Array|DataSet|Template)\"\\}",
            ],
        ) {
            sparkplug_command(key.as_bytes(), value.as_bytes());
        }
    }
}
