//! Rendering a message's Kafka topic and key from the MQTT topic.

use std::borrow::Cow;

use bytes::Bytes;
use connector_core::template::{Part, Template};

/// Level `n` (0-based) of an MQTT topic.
fn level(topic: &str, n: usize) -> Option<&str> {
    topic.split('/').nth(n)
}

pub(crate) fn substitute<'a>(topic: &'a str, name: &str) -> Result<Cow<'a, str>, String> {
    if name == "topic" {
        return Ok(Cow::Borrowed(topic));
    }
    let n: usize = name.parse().map_err(|_| format!("unknown placeholder {{{name}}}"))?;
    level(topic, n).map(Cow::Borrowed).ok_or_else(|| {
        format!("{{{name}}}: MQTT topic {topic:?} has only {} levels", topic.split('/').count())
    })
}

/// The Kafka topic for a message on `mqtt_topic`: the template rendered, `/` turned into `.`, and
/// checked against Kafka's naming rules.
///
/// # Errors
/// A message naming the MQTT topic when a level is missing or the result is not a legal Kafka
/// topic name.
pub(crate) fn kafka_topic(template: &Template, mqtt_topic: &str) -> Result<String, String> {
    let rendered = template.render(|name| substitute(mqtt_topic, name)).map_err(|e| {
        format!("kafka_topic {:?} for MQTT topic {mqtt_topic:?}: {e}", template.as_str())
    })?;
    // Most names have no '/' (a fixed topic): keep the rendered string rather than copy it.
    let name = if rendered.contains('/') { rendered.replace('/', ".") } else { rendered };
    connector_core::kafka::validate_topic_name(&name).map_err(|why| {
        format!(
            "MQTT topic {mqtt_topic:?} maps to Kafka topic {name:?} through kafka_topic {:?}, which is not legal: {why}",
            template.as_str()
        )
    })?;
    Ok(name)
}

/// The record key for a message on `mqtt_topic` (`None` for the empty template).
///
/// # Errors
/// A message naming the MQTT topic when a level is missing.
pub(crate) fn key(template: &Template, mqtt_topic: &str) -> Result<Option<Bytes>, String> {
    key_with(template, mqtt_topic, &Bytes::copy_from_slice(mqtt_topic.as_bytes()))
}

/// [`key`] with the topic's bytes already made (a `{topic}` key shares them).
pub(crate) fn key_with(
    template: &Template,
    mqtt_topic: &str,
    topic_bytes: &Bytes,
) -> Result<Option<Bytes>, String> {
    match template.parts() {
        [] => Ok(None),
        [Part::Placeholder(p)] if p == "topic" => Ok(Some(topic_bytes.clone())),
        _ => template
            .render(|name| substitute(mqtt_topic, name))
            .map(|k| Some(Bytes::from(k)))
            .map_err(|e| format!("key {:?} for MQTT topic {mqtt_topic:?}: {e}", template.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn levels_and_slashes() {
        assert_eq!(kafka_topic(&t("plant.{1}"), "plant/line1/temp").unwrap(), "plant.line1");
        assert_eq!(kafka_topic(&t("{topic}"), "plant/line1/temp").unwrap(), "plant.line1.temp");
        assert_eq!(kafka_topic(&t("raw"), "x").unwrap(), "raw");
        let e = kafka_topic(&t("plant.{5}"), "plant/line1").unwrap_err();
        assert!(e.contains("\"plant/line1\""), "{e}");
        let e = kafka_topic(&t("{topic}"), "bad topic/x").unwrap_err();
        assert!(e.contains("MQTT topic \"bad topic/x\""), "{e}");
    }

    #[test]
    fn keys() {
        assert_eq!(key(&t("{topic}"), "a/b").unwrap().as_deref(), Some(&b"a/b"[..]));
        assert_eq!(key(&t(""), "a/b").unwrap(), None);
        assert_eq!(key(&t("dev-{1}"), "a/b").unwrap().as_deref(), Some(&b"dev-b"[..]));
        assert!(key(&t("{2}"), "a/b").is_err());
    }
}
