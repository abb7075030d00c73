//! MQTT's rules for topic names (what is published to) and topic filters (what is subscribed to).

/// Largest MQTT topic, in bytes (a UTF-8 string with a 16-bit length).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The MQTT rule a topic name or filter breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// `""`.
    #[error("an MQTT topic cannot be empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("MQTT topic is {len} bytes; at most {MAX_TOPIC_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Contains NUL.
    #[error("{topic:?}: an MQTT topic cannot contain NUL")]
    Nul {
        /// The topic.
        topic: String,
    },
    /// A filter's `#` is not a whole, last level.
    #[error("{filter:?}: '#' must be a whole level and the last one")]
    MisplacedHash {
        /// The filter.
        filter: String,
    },
    /// A filter's `+` does not fill its level.
    #[error("{filter:?}: '+' must be a whole level")]
    PartialPlus {
        /// The filter.
        filter: String,
    },
    /// A topic to publish to with `+` or `#`.
    #[error("{topic:?}: a topic to publish to cannot contain '+' or '#'")]
    Wildcard {
        /// The topic.
        topic: String,
    },
}

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
/// The [`TopicError`] naming the rule broken.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(TopicError::MisplacedHash { filter: filter.to_owned() });
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::PartialPlus { filter: filter.to_owned() });
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
/// The [`TopicError`] naming the rule broken.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard { topic: topic.to_owned() });
    }
    Ok(())
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if s.contains('\0') {
        return Err(TopicError::Nul { topic: s.to_owned() });
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
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(
            validate_filter("a/#/b").unwrap_err().to_string(),
            r#""a/#/b": '#' must be a whole level and the last one"#
        );
    }
}
