//! Kafka's rules for topic names: 1 to 249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`.

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks `name` against Kafka's topic name rules; the error says which rule it breaks.
///
/// ```
/// use connector_core::kafka::validate_topic_name;
///
/// assert!(validate_topic_name("plant.line-1_temp").is_ok());
/// assert!(validate_topic_name("plant/line1").is_err());
/// assert!(validate_topic_name("..").is_err());
/// ```
///
/// # Errors
/// A message naming the rule that `name` breaks.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a Kafka topic name cannot be empty".to_owned());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal Kafka topic name"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!(
            "Kafka topic name is {} characters long; at most {MAX_TOPIC_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Kafka topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_and_illegal_names() {
        assert!(validate_topic_name("a").is_ok());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("...").is_ok());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name("caf\u{e9}").is_err());
        assert!(validate_topic_name("").is_err());
    }
}
