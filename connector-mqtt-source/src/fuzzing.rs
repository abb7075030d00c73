//! Entry point for the fuzz targets (the `fuzz/` crate) and the property tests: a `kafka_topic`
//! and `key` template checked as `validate()` checks it, then rendered for an MQTT topic. Not a
//! stable API.

use connector_core::kafka::{validate_topic_name, validate_topic_template};

use crate::config::check_template;
use crate::render;

/// Checks `template` as the config does and renders it for `mqtt_topic`: a rendered Kafka topic
/// is always a legal name, and a template `connect validate` refuses never renders to one.
pub fn kafka_topic(template: &str, mqtt_topic: &str) {
    let Ok(t) = check_template(template) else { return };
    let refused = validate_topic_template(&t, true).is_err();
    match render::kafka_topic(&t, mqtt_topic) {
        Ok(name) => {
            assert!(validate_topic_name(&name).is_ok(), "{template:?} rendered {name:?}");
            assert!(!refused, "{template:?} is refused by validate but rendered {name:?}");
        }
        // Errors quote the MQTT topic as Rust does (`{:?}`: a NUL shows as `\0`).
        Err(e) => assert!(
            e.contains(&format!("{mqtt_topic:?}")),
            "the error does not name the MQTT topic: {e}"
        ),
    }
    let _ = render::key(&t, mqtt_topic);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fuzzer's first find (the harness's, not the connector's): an MQTT topic with NULs is
    /// quoted with escapes in the error, so the check looks for it quoted the same way.
    #[test]
    fn a_topic_with_nul_bytes_is_named_quoted_in_the_error() {
        kafka_topic("plant.{1}.{topic}", "plant/line1/tem\0\0\0\0\0\0\0\0dev");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn templates_render_legal_names_or_errors(
            template in "[a-z./{} :_-]{0,12}(\\{topic\\}|\\{[0-3]\\})?[a-z./ ]{0,6}",
            mqtt_topic in "[a-z/ +.]{1,16}",
        ) {
            kafka_topic(&template, &mqtt_topic);
        }
    }
}
