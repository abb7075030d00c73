//! The JSON Schema of a `connect` configuration file, built from the registry (so application
//! types are described too), and the Markdown reference generated from it
//! (`docs/configuration.md`).

use std::fmt::Write as _;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::converter::Converter;
use crate::error_policy::ErrorPolicyConfig;
use crate::kafka::KafkaConfig;
use crate::runner::file::{OffsetsConfig, ProgressConfig, RestConfig};
use crate::runner::registry::{ConnectorKind, Registry};
use crate::runtime::cluster::ClusterConfig;
use crate::runtime::{SinkRuntimeConfig, SourceRuntimeConfig};

/// The schema of `T`, every subschema inlined (no `$ref`s), for deserialization.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut schema = generator.root_schema_for::<T>().to_value();
    strip_code_blocks(&mut schema);
    schema
}

/// Rustdoc examples belong in rustdoc, not in a configuration schema: drops fenced code blocks
/// from every description.
fn strip_code_blocks(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map.iter_mut() {
                if k == "description" {
                    if let Value::String(text) = inner {
                        *text = without_code_blocks(text);
                    }
                } else {
                    strip_code_blocks(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_code_blocks),
        _ => {}
    }
}

fn without_code_blocks(text: &str) -> String {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            out.push(line);
        }
    }
    out.join("\n").trim().to_owned()
}

/// The JSON Schema of a whole configuration file for the types in `registry`.
///
/// ```
/// use connector_core::runner::{file_schema, Registry};
///
/// let schema = file_schema(&Registry::new());
/// assert_eq!(schema["required"], serde_json::json!(["kafka"]));
/// assert!(schema["properties"]["kafka"]["properties"]["bootstrap_servers"].is_object());
/// ```
pub fn file_schema(registry: &Registry) -> Value {
    let transforms = transform_variants(registry);
    let variants: Vec<Value> = registry
        .type_names()
        .filter_map(|t| {
            registry.schema(t).map(|s| connector_variant(t, registry.kind(t), s, &transforms))
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "connect configuration file",
        "description": "The TOML file read by `connect run` and `connect validate`.",
        "type": "object",
        "additionalProperties": false,
        "required": ["kafka"],
        "properties": {
            "kafka": untitled(schema_of::<KafkaConfig>()),
            "offsets": untitled(schema_of::<OffsetsConfig>()),
            "progress": untitled(schema_of::<ProgressConfig>()),
            "cluster": untitled(schema_of::<ClusterConfig>()),
            "rest": untitled(schema_of::<RestConfig>()),
            "connector": {
                "description": "The connectors to run, one `[[connector]]` table each (at least one, unless `[rest]` is set).",
                "type": "array",
                "items": { "oneOf": variants }
            }
        }
    })
}

fn untitled(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
    }
    v
}

/// One schema per registered transform type, each with the common keys (`type`, `name`,
/// `predicate`, `negate`).
fn transform_variants(registry: &Registry) -> Vec<Value> {
    let predicates: Vec<Value> = registry
        .predicate_types()
        .filter_map(|t| registry.predicate_schema(t).map(|s| with_type(t, s, Map::new())))
        .collect();
    registry
        .transform_types()
        .filter_map(|t| {
            registry.transform_schema(t).map(|s| {
                let mut common = Map::new();
                common.insert("name".into(), json!({"type": "string", "description": "Name used in error messages (default: the type)."}));
                common.insert(
                    "predicate".into(),
                    json!({"description": "Apply only to records this predicate matches.", "oneOf": predicates}),
                );
                common.insert(
                    "negate".into(),
                    json!({"type": "boolean", "default": false, "description": "Apply only to records the predicate does not match."}),
                );
                with_type(t, s, common)
            })
        })
        .collect()
}

/// `schema` (an object's) with a `type` constant and `common` keys added.
fn with_type(type_name: &str, schema: Value, common: Map<String, Value>) -> Value {
    let mut schema = untitled(schema);
    let Some(obj) = schema.as_object_mut() else { return schema };
    let mut properties = Map::new();
    properties.insert(
        "type".into(),
        json!({"const": type_name, "description": format!("`{type_name}`.")}),
    );
    properties.extend(common);
    if let Some(Value::Object(own)) = obj.remove("properties") {
        properties.extend(own);
    }
    let mut required = vec![json!("type")];
    if let Some(Value::Array(own)) = obj.remove("required") {
        required.extend(own);
    }
    obj.insert("title".into(), json!(format!("type = \"{type_name}\"")));
    obj.insert("type".into(), json!("object"));
    obj.insert("properties".into(), Value::Object(properties));
    obj.insert("required".into(), Value::Array(required));
    obj.insert("additionalProperties".into(), json!(false));
    schema
}

/// A connector type's schema with the runner's common keys added.
fn connector_variant(
    type_name: &str,
    kind: Option<ConnectorKind>,
    schema: Value,
    transforms: &[Value],
) -> Value {
    let mut schema = untitled(schema);
    let runtime = match kind {
        Some(ConnectorKind::Sink) => untitled(schema_of::<SinkRuntimeConfig>()),
        _ => untitled(schema_of::<SourceRuntimeConfig>()),
    };
    let description = schema.get("description").cloned().unwrap_or(Value::Null);
    let Some(obj) = schema.as_object_mut() else { return schema };
    let mut properties = Map::new();
    properties.insert(
        "name".into(),
        json!({"type": "string", "description": "Unique name of the connector; it names its offsets and is the default MQTT client id."}),
    );
    properties.insert(
        "type".into(),
        json!({"const": type_name, "description": format!("`{type_name}`.")}),
    );
    properties.insert(
        "runtime".into(),
        json!({"description": "Runtime tuning for this connector (in-flight limits, commit intervals).", "allOf": [runtime]}),
    );
    properties.insert(
        "errors".into(),
        json!({"description": "What happens to records that fail (the error policy).", "allOf": [untitled(schema_of::<ErrorPolicyConfig>())]}),
    );
    let converter = untitled(schema_of::<Converter>());
    properties.insert(
        "key_converter".into(),
        json!({"description": "How keys are checked: `bytes` (default), `string` (UTF-8) or `json`.", "default": "bytes", "allOf": [converter.clone()]}),
    );
    properties.insert(
        "value_converter".into(),
        json!({"description": "How values are checked: `bytes` (default), `string` (UTF-8) or `json`.", "default": "bytes", "allOf": [converter]}),
    );
    properties.insert(
        "json_reserialize".into(),
        json!({"type": "boolean", "default": false, "description": "With a `json` converter, rewrite keys and values compactly."}),
    );
    properties.insert(
        "transforms".into(),
        json!({"type": "array", "description": "Transforms applied in order (`[[connector.transforms]]`); see Transforms below.", "items": {"oneOf": transforms}}),
    );
    if let Some(Value::Object(own)) = obj.remove("properties") {
        properties.extend(own);
    }
    let mut required = vec![json!("name"), json!("type")];
    if let Some(Value::Array(own)) = obj.remove("required") {
        required.extend(own);
    }
    obj.insert("title".into(), json!(format!("type = \"{type_name}\"")));
    obj.insert("description".into(), description);
    obj.insert("type".into(), json!("object"));
    obj.insert("properties".into(), Value::Object(properties));
    obj.insert("required".into(), Value::Array(required));
    obj.insert("additionalProperties".into(), json!(false));
    schema
}

/// The configuration reference in Markdown, generated from [`file_schema`].
pub fn markdown(registry: &Registry) -> String {
    let schema = file_schema(registry);
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "Generated from the JSON Schema that `connect schema` prints; do not edit by hand. \
         Regenerate with:\n\n```sh\ncargo run -p connector-runner --bin connect -- schema --markdown > docs/configuration.md\n```\n\n\
         A `connect` configuration is a TOML file with a `[kafka]` table, an optional `[offsets]`, \
         `[progress]`, `[cluster]` and `[rest]` table, and one `[[connector]]` table per connector (none is needed when `[rest]` is set: connectors are then created through the REST API). Unknown keys are \
         errors. With a `[cluster]` `group_id` (or `connect run --group`) the process is one worker \
         of a worker group (see distributed.md), and `offsets.store` must be `\"kafka\"`. Values written `${VAR}` in secret fields (passwords) are read from the environment.\n",
    );
    let props = &schema["properties"];
    let mut predicates: Vec<Value> = Vec::new();
    section(&mut out, "[kafka]", &props["kafka"], 2);
    section(&mut out, "[offsets]", &props["offsets"], 2);
    section(&mut out, "[progress]", &props["progress"], 2);
    section(&mut out, "[cluster]", &props["cluster"], 2);
    section(&mut out, "[rest]", &props["rest"], 2);
    if let Some(variants) = props["connector"]["items"]["oneOf"].as_array() {
        for v in variants {
            let title = v["title"].as_str().unwrap_or("connector");
            section(&mut out, &format!("[[connector]] {title}"), v, 2);
        }
        if let Some(first) = variants.first() {
            out.push_str("\n## Transforms\n\nEach `[[connector.transforms]]` table has a `type` and that type's keys, and optionally `name`, `predicate` and `negate`.\n");
            if let Some(ts) = first["properties"]["transforms"]["items"]["oneOf"].as_array() {
                for t in ts {
                    let title = t["title"].as_str().unwrap_or("transform");
                    section(&mut out, &format!("[[connector.transforms]] {title}"), t, 3);
                    if let Some(ps) = t["properties"]["predicate"]["oneOf"].as_array() {
                        predicates = ps.clone();
                    }
                }
            }
            out.push_str("\n## Predicates\n\nWritten inline: `predicate = { type = \"topic_name_matches\", pattern = \"plant\\\\..*\" }`.\n");
            for p in &predicates {
                let title = p["title"].as_str().unwrap_or("predicate");
                section(&mut out, &format!("predicate {title}"), p, 3);
            }
        }
    }
    out
}

fn section(out: &mut String, title: &str, schema: &Value, level: usize) {
    let _ = write!(out, "\n{} `{title}`\n\n", "#".repeat(level));
    if let Some(d) = schema["description"].as_str() {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    let Some(props) = schema["properties"].as_object() else { return };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    let mut nested = Vec::new();
    for (key, p) in props {
        let resolved = resolve(p);
        let p = &resolved;
        let default = match p.get("default") {
            Some(Value::Null) => "—".to_owned(),
            Some(d) => format!("`{}`", compact(d)),
            None if required.contains(&key.as_str()) => "required".to_owned(),
            None => "—".to_owned(),
        };
        let description =
            p["description"].as_str().unwrap_or("").replace('\n', " ").replace('|', "\\|");
        let _ = writeln!(out, "| `{key}` | {} | {default} | {description} |", type_of(p));
        if p["properties"].is_object() {
            nested.push((key.clone(), p.clone()));
        }
    }
    for (key, p) in nested {
        // `[kafka]` → `[kafka.retry_backoff]`; connector sections → `type = "x" → runtime → ...`.
        if key == "predicate" || key == "transforms" {
            continue;
        }
        let sub = if title.starts_with('[') && !title.starts_with("[[") {
            format!("{}.{key}]", title.trim_end_matches(']'))
        } else {
            format!("{} → {key}", title.trim_start_matches("[[connector]] "))
        };
        section(out, &sub, &p, level + 1);
    }
}

/// Looks through `allOf: [one]` wrappers (used to attach a description to an inlined schema),
/// keeping the wrapper's description.
fn resolve(p: &Value) -> Value {
    match p["allOf"].as_array() {
        Some(all) if all.len() == 1 && p.get("properties").is_none() => {
            let mut inner = all[0].clone();
            if let Some(obj) = inner.as_object_mut() {
                for key in ["description", "default"] {
                    if let Some(v) = p.get(key) {
                        obj.insert(key.into(), v.clone());
                    }
                }
            }
            inner
        }
        _ => p.clone(),
    }
}

fn type_of(p: &Value) -> String {
    if let Some(c) = p.get("const") {
        return format!("`{}`", compact(c));
    }
    if let Some(values) = p["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("`{}`", compact(v)))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(options) = p["oneOf"].as_array().or_else(|| p["anyOf"].as_array()) {
        // An `Option<T>`: T or null. Show T (a missing key is the null).
        let mut not_null = options.iter().filter(|o| o["type"] != "null");
        if let (Some(only), None, true) = (not_null.next(), not_null.next(), options.len() == 2) {
            return type_of(only);
        }
        let consts: Vec<String> = options
            .iter()
            .filter_map(|o| o.get("const"))
            .map(|c| format!("`{}`", compact(c)))
            .collect();
        if !options.is_empty() && consts.len() == options.len() {
            return consts.join(" \\| ");
        }
        if !options.is_empty() && options.iter().all(|o| o["type"] == "object") {
            return "table".to_owned();
        }
    }
    if let Some(all) = p["allOf"].as_array() {
        if let Some(first) = all.first() {
            return type_of(first);
        }
    }
    let types: Vec<String> = match &p["type"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => {
            a.iter().filter_map(Value::as_str).filter(|t| *t != "null").map(str::to_owned).collect()
        }
        _ => vec![],
    };
    let name = |t: &str| -> String {
        match t {
            "object" => "table".to_owned(),
            "array" => format!("array of {}", type_of(&p["items"])),
            other => other.to_owned(),
        }
    };
    match types.as_slice() {
        [] => "any".to_owned(),
        [one] => name(one),
        many => many.iter().map(|t| name(t)).collect::<Vec<_>>().join(" or "),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}
