//! Rendering a record's MQTT topic, with the injection guard: a substituted value may not add
//! levels or wildcards, so a record can only ever reach the topic its template allows.

use std::borrow::Cow;

use connector_core::template::Template;
use connector_core::SinkRecord;

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<Cow<'a, str>, String> {
    std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|_| format!("{what} is not UTF-8"))
}

fn value<'a>(r: &'a SinkRecord, name: &str) -> Result<Cow<'a, str>, String> {
    let v = match name {
        "key" => utf8(r.key.as_deref().ok_or("the record has no key")?, "the key")?,
        "topic" => Cow::Borrowed(&*r.topic),
        "partition" => Cow::Owned(r.partition.to_string()),
        other => match other.strip_prefix("header.") {
            Some(h) => {
                let bytes =
                    r.headers.last(h).ok_or_else(|| format!("the record has no header {h:?}"))?;
                utf8(bytes, &format!("header {h:?}"))?
            }
            None => return Err(format!("unknown placeholder {{{other}}}")),
        },
    };
    if v.is_empty() {
        return Err(format!("{{{name}}} is empty"));
    }
    // One pass over the bytes for the common, clean value; the details only for a bad one.
    if !v.bytes().any(|b| matches!(b, b'/' | b'+' | b'#' | 0)) {
        return Ok(v);
    }
    let bad: Vec<&str> = [("/", "'/'"), ("+", "'+'"), ("#", "'#'"), ("\0", "NUL")]
        .into_iter()
        .filter(|(c, _)| v.contains(c))
        .map(|(_, n)| n)
        .collect();
    if !bad.is_empty() {
        return Err(format!("{{{name}}} is {v:?}, which contains {}", bad.join(" and ")));
    }
    Ok(v)
}

/// The MQTT topic for `r`.
///
/// # Errors
/// Why the record cannot be published (missing key or header, a value that would change the
/// topic's levels or add a wildcard); the record then goes to the error policy.
pub(crate) fn mqtt_topic(t: &Template, r: &SinkRecord) -> Result<String, String> {
    if let Some(fixed) = t.as_literal() {
        return Ok(fixed.to_owned());
    }
    t.render(|name| value(r, name)).map_err(|e| {
        format!(
            "cannot publish to mqtt_topic {:?}: {e}; the record is not published anywhere",
            t.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::{Headers, Timestamp};
    use std::sync::Arc;

    fn record(key: Option<&str>) -> SinkRecord {
        let mut headers = Headers::new();
        headers.push("device", "car-9");
        SinkRecord {
            topic: Arc::from("commands"),
            original_topic: Arc::from("commands"),
            partition: 2,
            offset: 7,
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            value: None,
            headers,
            timestamp: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn placeholders_render() {
        let t = Template::parse("cars/{key}/{topic}/{partition}/{header.device}").unwrap();
        assert_eq!(mqtt_topic(&t, &record(Some("car-1"))).unwrap(), "cars/car-1/commands/2/car-9");
    }

    #[test]
    fn values_that_would_escape_the_topic_are_refused() {
        let t = Template::parse("cars/{key}/cmd").unwrap();
        for (key, expect) in
            [("x/#", "'/' and '#'"), ("a/b", "'/'"), ("+", "'+'"), ("", "empty"), ("a\0", "NUL")]
        {
            let e = mqtt_topic(&t, &record(Some(key))).unwrap_err();
            assert!(e.contains(expect), "{key:?}: {e}");
            assert!(e.contains("not published"), "{e}");
        }
        assert!(mqtt_topic(&t, &record(None)).unwrap_err().contains("no key"));
        let t = Template::parse("x/{header.missing}").unwrap();
        assert!(mqtt_topic(&t, &record(Some("k"))).unwrap_err().contains("no header"));
    }
}
