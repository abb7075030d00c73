//! MQTT's rules for topic names (what is published to) and topic filters (what is subscribed to).

/// Largest MQTT topic, in bytes (a UTF-8 string with a 16-bit length).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Checks a topic *filter*: levels separated by `/`; `+` matches one level and must fill it;
/// `#` matches the rest and must be the last level and fill it.
///
/// ```
/// use connector_mqtt_common::validate_filter;
///
/// assert!(validate_filter("plant/+/sensors/#").is_ok());
/// assert!(validate_filter("plant/line+/x").is_err());
/// assert!(validate_filter("plant/#/x").is_err());
/// ```
///
/// # Errors
/// A message naming the rule broken.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("{filter:?}: '#' must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Checks a topic *name* to publish to: no wildcards.
///
/// ```
/// use connector_mqtt_common::validate_topic;
///
/// assert!(validate_topic("cars/car-1/cmd").is_ok());
/// assert!(validate_topic("cars/+/cmd").is_err());
/// ```
///
/// # Errors
/// A message naming the rule broken.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(format!("{topic:?}: a topic to publish to cannot contain '+' or '#'"));
    }
    Ok(())
}

fn common(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an MQTT topic cannot be empty".to_owned());
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "MQTT topic is {} bytes; at most {MAX_TOPIC_LEN} are allowed",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{s:?}: an MQTT topic cannot contain NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rules() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "/a", "a//b", "$SYS/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a/b+", "++", "a\0b"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic("a/b").is_ok());
        assert!(validate_topic("a/#").is_err());
        assert!(validate_topic("").is_err());
    }
}
