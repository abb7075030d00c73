//! [`Template`]: strings with `{placeholder}`s, as used for topic and key templates
//! (`"plant.{1}"`, `"cars/{key}/cmd"`). Parsing is shared; each connector decides which
//! placeholders exist and what they render to.

use std::borrow::Cow;

/// Why a template does not parse. Positions are byte offsets into the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `{` inside a placeholder.
    #[error("nested '{{' in placeholder at position {0}")]
    Nested(usize),
    /// A `{` that is never closed.
    #[error("unclosed '{{' at position {0}")]
    Unclosed(usize),
    /// `{}` with no name inside.
    #[error("empty placeholder '{{}}' at position {0}")]
    Empty(usize),
    /// A `}` that closes nothing.
    #[error("unmatched '}}' at position {0} (write '}}}}' for a brace)")]
    Unmatched(usize),
}

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
    /// An unclosed `{`, a lone `}`, a nested `{` or an empty `{}`, with its position.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
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
                            return Err(TemplateError::Nested(i));
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(i));
                    }
                    let name = name.trim().to_owned();
                    if name.is_empty() {
                        return Err(TemplateError::Empty(i));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name));
                }
                '}' => return Err(TemplateError::Unmatched(i)),
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

    /// Renders the template, asking `value` for each placeholder. The error type is the
    /// caller's: whatever `value` can fail with.
    ///
    /// # Errors
    /// The first error `value` returns.
    pub fn render<'a, F, E>(&self, mut value: F) -> Result<String, E>
    where
        F: FnMut(&str) -> Result<Cow<'a, str>, E>,
    {
        // The literals' length plus room for a few values: one allocation in the common case.
        let literal: usize =
            self.parts.iter().map(|p| if let Part::Literal(s) = p { s.len() } else { 16 }).sum();
        let mut out = String::with_capacity(literal);
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
        assert_eq!(Template::parse("{}"), Err(TemplateError::Empty(0)));
        assert_eq!(
            Template::parse("ab}").unwrap_err().to_string(),
            "unmatched '}' at position 2 (write '}}' for a brace)"
        );
        assert_eq!(Template::parse("x{").unwrap_err().to_string(), "unclosed '{' at position 1");
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{a{b}}").is_err());
        assert_eq!(Template::parse("").unwrap().as_literal(), Some(""));
        assert_eq!(Template::parse("fixed/topic").unwrap().as_literal(), Some("fixed/topic"));
        assert_eq!(Template::parse("{ key }").unwrap().placeholders().collect::<Vec<_>>(), ["key"]);
    }
}
