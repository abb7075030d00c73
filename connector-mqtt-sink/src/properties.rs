//! What a record's headers say about its MQTT publish: MQTT 5 properties (user properties, content
//! type, response topic, correlation data, payload format, message expiry), and whether the
//! record is too old to publish at all.
//!
//! The header names are the ones the MQTT source writes ([`connector_mqtt_common::headers`]), so
//! a message that crosses MQTT 5 -> Kafka -> MQTT 5 keeps its properties. Headers starting with
//! `mqtt.` are the connector's bookkeeping and never become user properties.

use connector_core::{Error, Result, SinkRecord, Timestamp};
use connector_mqtt_common::{headers, PublishProperties};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which record headers become MQTT 5 user properties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserProperties {
    /// Every header except the connector's own `mqtt.*` ones (default).
    #[default]
    All,
    /// Only headers starting with `user_property_prefix`, with the prefix taken off.
    Prefix,
    /// None.
    None,
}

/// How a sink task turns headers into properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyRules {
    /// Speak MQTT 5 (else only the expiry check applies).
    pub v5: bool,
    /// Which headers become user properties.
    pub user_properties: UserProperties,
    /// The prefix for [`UserProperties::Prefix`].
    pub prefix: String,
    /// Expiry, in seconds, of records without an `mqtt.message_expiry_interval` header.
    pub default_expiry_secs: Option<u32>,
}

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its expiry interval passed (counted from the record's timestamp): do not publish.
    Expired,
    /// Publish, with these MQTT 5 properties.
    Publish(Option<Box<PublishProperties>>),
}

fn text(r: &SinkRecord, name: &str) -> Result<Option<String>> {
    r.headers
        .last(name)
        .map(|v| {
            String::from_utf8(v.to_vec())
                .map_err(|_| Error::rejected(format!("header {name:?} is not UTF-8")))
        })
        .transpose()
}

/// The outcome for `r` at time `now`.
///
/// # Errors
/// Record rejected for a malformed `mqtt.*` header or a header that is not UTF-8 where MQTT needs
/// text.
pub(crate) fn outcome(r: &SinkRecord, rules: &PropertyRules, now: Timestamp) -> Result<Outcome> {
    let interval = match text(r, headers::MESSAGE_EXPIRY)? {
        Some(v) => Some(v.trim().parse::<u32>().map_err(|_| {
            Error::rejected(format!(
                "header {:?} is {v:?}; expected whole seconds",
                headers::MESSAGE_EXPIRY
            ))
        })?),
        None => rules.default_expiry_secs,
    };
    // Seconds left, counted from the record's timestamp (when the message was produced).
    let remaining = match (interval, r.timestamp) {
        // A record without a timestamp (-1) cannot be aged: the interval applies as it is.
        (Some(secs), ts) if ts.as_millis() >= 0 => {
            let left_ms = i64::from(secs) * 1000 - (now.as_millis() - ts.as_millis());
            if left_ms <= 0 {
                return Ok(Outcome::Expired);
            }
            Some(u32::try_from((left_ms + 999) / 1000).unwrap_or(secs))
        }
        (interval, _) => interval,
    };
    if !rules.v5 {
        return Ok(Outcome::Publish(None));
    }
    let mut p = PublishProperties { message_expiry_interval: remaining, ..Default::default() };
    p.content_type = text(r, headers::CONTENT_TYPE)?;
    p.response_topic = text(r, headers::RESPONSE_TOPIC)?;
    p.correlation_data = r.headers.last(headers::CORRELATION_DATA).cloned();
    p.payload_format_indicator = match text(r, headers::PAYLOAD_FORMAT)?.as_deref() {
        None => None,
        Some("0") => Some(0),
        Some("1") => Some(1),
        Some(other) => {
            return Err(Error::rejected(format!(
                "header {:?} is {other:?}; expected 0 or 1",
                headers::PAYLOAD_FORMAT
            )))
        }
    };
    for h in r.headers.iter() {
        let name = match rules.user_properties {
            UserProperties::None => continue,
            UserProperties::All if h.key.starts_with(headers::PREFIX) => continue,
            UserProperties::All => &*h.key,
            UserProperties::Prefix => match h.key.strip_prefix(rules.prefix.as_str()) {
                Some(name) if !name.is_empty() => name,
                _ => continue,
            },
        };
        let value = String::from_utf8(h.value.to_vec()).map_err(|_| {
            Error::rejected(format!("header {:?} is not UTF-8, as user properties must be", h.key))
        })?;
        p.user_properties.push((name.to_owned(), value));
    }
    if p == PublishProperties::default() {
        return Ok(Outcome::Publish(None));
    }
    Ok(Outcome::Publish(Some(Box::new(p))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use connector_core::Headers;

    fn record(headers: &[(&str, &str)], age_ms: i64, now: Timestamp) -> SinkRecord {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.push(k.to_string(), Bytes::copy_from_slice(v.as_bytes()));
        }
        SinkRecord {
            topic: "t".into(),
            original_topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: None,
            headers: h,
            timestamp: Timestamp::from_millis(now.as_millis() - age_ms),
        }
    }

    fn v5() -> PropertyRules {
        PropertyRules { v5: true, ..PropertyRules::default() }
    }

    #[test]
    fn user_properties_keep_order_and_duplicates_and_skip_bookkeeping() {
        let now = Timestamp::now();
        let r = record(
            &[
                ("mqtt.topic", "a/b"),
                ("b", "1"),
                ("a", "2"),
                ("b", "3"),
                ("mqtt.content_type", "text/plain"),
            ],
            0,
            now,
        );
        let Outcome::Publish(Some(p)) = outcome(&r, &v5(), now).unwrap() else { panic!() };
        assert_eq!(
            p.user_properties,
            [("b".into(), "1".into()), ("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        let prefixed =
            PropertyRules { user_properties: UserProperties::Prefix, prefix: "b".into(), ..v5() };
        let r = record(&[("bx", "1"), ("a", "2")], 0, now);
        let Outcome::Publish(Some(p)) = outcome(&r, &prefixed, now).unwrap() else { panic!() };
        assert_eq!(p.user_properties, [("x".into(), "1".into())]);
    }

    #[test]
    fn expiry_counts_from_the_record_timestamp() {
        let now = Timestamp::now();
        let r = record(&[("mqtt.message_expiry_interval", "10")], 4_500, now);
        let Outcome::Publish(Some(p)) = outcome(&r, &v5(), now).unwrap() else { panic!() };
        assert_eq!(p.message_expiry_interval, Some(6));
        let stale = record(&[("mqtt.message_expiry_interval", "10")], 10_000, now);
        assert_eq!(outcome(&stale, &v5(), now).unwrap(), Outcome::Expired);
        // On 3.1.1 a stale command is not published either; a fresh one has no properties.
        let v3 = PropertyRules { default_expiry_secs: Some(60), ..PropertyRules::default() };
        assert_eq!(outcome(&record(&[], 61_000, now), &v3, now).unwrap(), Outcome::Expired);
        assert_eq!(outcome(&record(&[], 1_000, now), &v3, now).unwrap(), Outcome::Publish(None));
        let bad = record(&[("mqtt.message_expiry_interval", "soon")], 0, now);
        assert!(outcome(&bad, &v5(), now).is_err());
    }
}
