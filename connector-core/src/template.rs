//! [`Template`]: strings with `{placeholder}`s, as used for topic and key templates
//! (`"plant.{1}"`, `"cars/{key}/cmd"`). Parsing is shared; each connector decides which
//! placeholders exist and what they render to.

use std::borrow::Cow;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Literal(String),
    /// A `{name}` to substitute.
    Placeholder(String),
}

/// A parsed template. `{{` and `}}` stand for literal braces.
///
/// ```
/// use connector_core::template::Template;
///
/// let t = Template::parse("plant.{1}.{topic}").unwrap();
/// assert_eq!(t.placeholders().collect::<Vec<_>>(), ["1", "topic"]);
/// let out = t
///     .render(|name| match name {
///         "1" => Ok("line1".into()),
///         "topic" => Ok("plant/line1/temp".into()),
///         other => Err(format!("unknown placeholder {other}")),
///     })
///     .unwrap();
/// assert_eq!(out, "plant.line1.plant/line1/temp");
/// assert!(Template::parse("oops{").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`.
    ///
    /// # Errors
    /// A message for an unclosed `{`, a lone `}`, or an empty `{}`.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        if c == '{' {
                            return Err(format!("nested '{{' in placeholder at position {i}"));
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("unclosed '{{' at position {i}"));
                    }
                    let name = name.trim().to_owned();
                    if name.is_empty() {
                        return Err(format!("empty placeholder '{{}}' at position {i}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name));
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' at position {i} (write '}}}}' for a brace)"
                    ))
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { source: source.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Its pieces.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Names of its placeholders, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// True for the empty template.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The text, when the template has no placeholders.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders the template, asking `value` for each placeholder.
    ///
    /// # Errors
    /// The first error `value` returns.
    pub fn render<'a, F>(&self, mut value: F) -> Result<String, String>
    where
        F: FnMut(&str) -> Result<Cow<'a, str>, String>,
    {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Placeholder(n) => out.push_str(&value(n)?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_errors() {
        let t = Template::parse("a{{b}}c{x}").unwrap();
        assert_eq!(t.parts(), [Part::Literal("a{b}c".into()), Part::Placeholder("x".into())]);
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{a{b}}").is_err());
        assert_eq!(Template::parse("").unwrap().as_literal(), Some(""));
        assert_eq!(Template::parse("fixed/topic").unwrap().as_literal(), Some("fixed/topic"));
        assert_eq!(Template::parse("{ key }").unwrap().placeholders().collect::<Vec<_>>(), ["key"]);
    }
}
