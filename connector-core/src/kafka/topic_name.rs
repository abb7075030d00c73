//! Kafka's rules for topic names: 1 to 249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`;
//! and the check of a topic *template* whose fixed parts alone already break them.

use crate::template::{Part, Template};

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Which of Kafka's topic name rules a name (or a topic template) breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// The empty name.
    #[error("a Kafka topic name cannot be empty")]
    Empty,
    /// `.` or `..`.
    #[error("{0:?} is not a legal Kafka topic name")]
    Reserved(String),
    /// Longer than [`MAX_TOPIC_NAME_LEN`]; the length in bytes.
    #[error("Kafka topic name is {0} characters long; at most {MAX_TOPIC_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[a-zA-Z0-9._-]`.
    #[error("Kafka topic name {name:?} contains {found:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    IllegalChar {
        /// The name.
        name: String,
        /// The first illegal character.
        found: char,
    },
    /// A topic template whose fixed text has a character outside `[a-zA-Z0-9._-]`.
    #[error("{template:?} contains {found:?} outside its placeholders, so no Kafka topic name can come of it; only ASCII letters, digits, '.', '_' and '-' are allowed{}", if *slash_as_dot { " ('/' becomes '.')" } else { "" })]
    TemplateIllegalChar {
        /// The template as written.
        template: String,
        /// The first illegal character (after mapping `/` to `.`, with `slash_as_dot`).
        found: char,
        /// Whether `/` counted as `.`.
        slash_as_dot: bool,
    },
    /// A topic template whose fixed text alone is longer than [`MAX_TOPIC_NAME_LEN`].
    #[error("{template:?} has {len} characters outside its placeholders; a Kafka topic name has at most {MAX_TOPIC_NAME_LEN}")]
    TemplateTooLong {
        /// The template as written.
        template: String,
        /// Characters outside its placeholders.
        len: usize,
    },
}

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
/// The rule that `name` breaks.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Reserved(name.to_owned()));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(TopicNameError::TooLong(name.len()));
    }
    // Byte by byte (every legal character is ASCII): this runs for every record a source makes.
    let legal = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if let Some(at) = name.bytes().position(|b| !legal(&b)) {
        let found = name.get(at..).and_then(|rest| rest.chars().next()).unwrap_or('\u{fffd}');
        return Err(TopicNameError::IllegalChar { name: name.to_owned(), found });
    }
    Ok(())
}

/// Checks what a Kafka topic template fixes in advance: every literal character must be legal
/// in a topic name and the literals alone may not exceed [`MAX_TOPIC_NAME_LEN`]; a template
/// without placeholders must be a legal name as a whole. With `slash_as_dot`, a `/` counts as the
/// `.` it becomes after rendering (the MQTT source's mapping). What the placeholders render to is
/// checked per record, at run time.
///
/// ```
/// use connector_core::kafka::validate_topic_template;
/// use connector_core::template::Template;
///
/// let t = |s: &str| Template::parse(s).unwrap();
/// assert!(validate_topic_template(&t("plant/{1}"), true).is_ok());
/// assert!(validate_topic_template(&t("plant {1}"), true).is_err());
/// assert!(validate_topic_template(&t("plant/{1}"), false).is_err());
/// ```
///
/// # Errors
/// The first illegal character, or the length of the literals; for a template without
/// placeholders, what [`validate_topic_name`] finds.
pub fn validate_topic_template(
    template: &Template,
    slash_as_dot: bool,
) -> Result<(), TopicNameError> {
    let map = |c: char| if slash_as_dot && c == '/' { '.' } else { c };
    if let Some(fixed) = template.as_literal() {
        let name: String = fixed.chars().map(map).collect();
        return validate_topic_name(&name);
    }
    let mut literal_len = 0usize;
    for part in template.parts() {
        let Part::Literal(text) = part else { continue };
        literal_len += text.chars().count();
        if let Some(c) = text
            .chars()
            .map(map)
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TopicNameError::TemplateIllegalChar {
                template: template.as_str().to_owned(),
                found: c,
                slash_as_dot,
            });
        }
    }
    if literal_len > MAX_TOPIC_NAME_LEN {
        return Err(TopicNameError::TemplateTooLong {
            template: template.as_str().to_owned(),
            len: literal_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_whose_literals_can_never_be_a_topic_name_are_refused() {
        let check = |s: &str| validate_topic_template(&Template::parse(s).unwrap(), true);
        assert!(check("plant.{1}").is_ok());
        assert!(check("plant/{1}/raw").is_ok(), "'/' becomes '.'");
        assert!(check("{topic}").is_ok());
        assert!(check("fixed/topic").is_ok());
        for bad in ["plant {1}", "plant.{1}:raw", "caf\u{e9}.{1}", "a b", "{1}+", "."] {
            let e = check(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = check("plant {1}").unwrap_err().to_string();
        assert!(e.contains("' '") && e.contains("\"plant {1}\""), "{e}");
        let long = format!("{}{{1}}", "x".repeat(249));
        assert!(
            check(&long).is_ok(),
            "249 literal characters can still be legal if {{1}} is empty"
        );
        let e = check(&format!("{}{{1}}", "x".repeat(250))).unwrap_err().to_string();
        assert!(e.contains("250 characters"), "{e}");
        let e = check(&format!("{}.{{1}}.{}", "x".repeat(125), "y".repeat(124))).unwrap_err();
        assert_eq!(
            e,
            TopicNameError::TemplateTooLong {
                template: format!("{}.{{1}}.{}", "x".repeat(125), "y".repeat(124)),
                len: 251
            }
        );
        let e = e.to_string();
        assert!(e.contains("251"), "{e}");
        assert!(validate_topic_template(&Template::parse("a/{1}").unwrap(), false).is_err());
    }

    #[test]
    fn legal_and_illegal_names() {
        assert!(validate_topic_name("a").is_ok());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert_eq!(validate_topic_name(&"x".repeat(250)), Err(TopicNameError::TooLong(250)));
        assert_eq!(
            validate_topic_name("a b").unwrap_err().to_string(),
            "Kafka topic name \"a b\" contains ' '; only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("...").is_ok());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name("caf\u{e9}").is_err());
        assert!(validate_topic_name("").is_err());
    }
}
