//! Every TOML block of docs/use-cases.md is a configuration `connect validate` accepts: each is
//! parsed and validated with the runner's own parser and the built-in connector types.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use connector_core::runner::ConnectFile;

/// The fenced blocks whose info string starts with `toml`: (info string, first line number, text).
fn toml_blocks(doc: &str) -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```toml") {
                    current = Some((format!("toml{info}"), i + 2, String::new()));
                }
            }
            Some((_, _, text)) => {
                if line.starts_with("```") {
                    blocks.push(current.take().unwrap());
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```toml block");
    blocks
}

#[test]
fn every_toml_block_of_the_use_cases_doc_is_a_valid_configuration() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/use-cases.md"))
        .unwrap();
    let blocks = toml_blocks(&doc);
    assert!(blocks.len() >= 5, "expected a block per use case, found {}", blocks.len());
    let registry = connector_runner::builtin_registry();
    let mut failures = Vec::new();
    for (_info, line, text) in &blocks {
        if let Err(errors) = ConnectFile::parse(text, &registry) {
            failures.push(format!("docs/use-cases.md:{line}:\n{errors}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Each use case has its configuration.
    for heading in ["## Connected cars", "## Smart factory", "## Mobility", "## Smart city"] {
        let start = doc.find(heading).unwrap_or_else(|| panic!("no {heading:?}"));
        let rest = &doc[start + heading.len()..];
        let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
        assert!(section.contains("```toml"), "{heading} has no TOML block");
    }
}
