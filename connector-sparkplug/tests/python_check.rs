//! An independent decoder agrees with our encoder: scripts/sparkplug-check.py compiles
//! proto/sparkplug_b.proto with protoc (grpcio-tools), decodes with Google's protobuf runtime and
//! its own value decoding, and prints what it found; we compare names, aliases, datatypes and
//! values with what we encoded. With CI=true a missing python3/protobuf fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;

use connector_sparkplug::encode::{command_payload, encode_metric, encode_payload, EdgeNode};
use connector_sparkplug::host::{HostConfig, HostState};
use connector_sparkplug::json::{command_from_json, property_set_json, value_json};
use connector_sparkplug::proto::Payload;
use connector_sparkplug::{DataType, DeviceKey, Metric, NodeKey, Value};
use serde_json::{json, Value as Json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/sparkplug-check.py");

/// `None` (skip) when python3 with protobuf and grpcio-tools is missing outside CI.
fn python_ready() -> Option<()> {
    let ok = Command::new("python3")
        .args(["-c", "import google.protobuf, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: python3 with protobuf and grpcio-tools is required (scripts/install-brokers)"
    );
    eprintln!("SKIPPED: python3 with protobuf and grpcio-tools not found (pip install protobuf grpcio-tools)");
    None
}

fn decode_with_python(files: &[&Path]) -> Vec<Json> {
    let out = Command::new("python3").arg(SCRIPT).arg("decode").args(files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sparkplug-check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Compares one metric the script printed with the one we encoded.
fn same_metric(py: &Json, ours: &Metric) {
    let what = &ours.name;
    let name = if ours.name.is_empty() { Json::Null } else { json!(ours.name) };
    assert_eq!(py["name"], name, "{what}: name");
    assert_eq!(py["alias"], json!(ours.alias), "{what}: alias");
    assert_eq!(py["datatype"], json!(ours.datatype.number()), "{what}: datatype");
    match &ours.value {
        Value::Template(t) => {
            let v = &py["value"];
            assert_eq!(v["version"], json!(t.version), "{what}");
            assert_eq!(v["template_ref"], json!(t.template_ref), "{what}");
            assert_eq!(v["is_definition"], json!(t.is_definition), "{what}");
            let metrics = v["metrics"].as_array().unwrap();
            assert_eq!(metrics.len(), t.metrics.len(), "{what}");
            for (p, o) in metrics.iter().zip(&t.metrics) {
                same_metric(p, o);
            }
            let parameters: Vec<Json> = t
                .parameters
                .iter()
                .map(|p| json!({"name": p.name, "datatype": p.datatype.name(), "value": value_json(&p.value)}))
                .collect();
            assert_eq!(v["parameters"], json!(parameters), "{what}");
        }
        other => assert_eq!(py["value"], value_json(other), "{what}: value"),
    }
    if let Some(props) = &ours.properties {
        assert_eq!(py["properties"], property_set_json(props), "{what}: properties");
    }
}

#[test]
fn the_python_decoder_agrees_on_every_datatype_and_on_commands() {
    if python_ready().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // A birth with one metric of every datatype.
    let every = connector_sparkplug::fuzzing::every_datatype();
    let metrics = every.iter().map(|m| encode_metric(m).unwrap()).collect();
    let birth = encode_payload(&Payload {
        timestamp: Some(5),
        metrics,
        seq: Some(0),
        ..Payload::default()
    });
    let birth_path = dir.path().join("birth");
    std::fs::write(&birth_path, birth).unwrap();

    // NCMD without a known birth (datatypes given or inferred), DCMD resolved from a DBIRTH.
    let node = NodeKey::new("plant1", "line4");
    let ncmd = command_from_json(&json!({"metrics": [
        {"name": "Node Control/Rebirth", "value": true},
        {"name": "Setpoint", "value": -3, "datatype": "Int8"},
        {"name": "Limit", "value": 2.5},
        {"name": "Mode", "value": "auto"},
    ]}))
    .unwrap();
    let ncmd_bytes = command_payload(None, &DeviceKey::node(node.clone()), &ncmd, 1_000).unwrap();
    let mut host = HostState::new(HostConfig::default());
    let mut edge = EdgeNode::new("plant1", "line4");
    let (t, p) = edge.nbirth(&[], 0).unwrap();
    host.handle(&t, &p, 0);
    let (t, p) = edge
        .dbirth(
            "press2",
            &[
                ("Pressure", Some(7), Value::Int(0), DataType::Int16),
                ("Flags", Some(8), Value::BooleanArray(vec![]), DataType::BooleanArray),
            ],
            0,
        )
        .unwrap();
    host.handle(&t, &p, 0);
    let press = DeviceKey::device(node, "press2");
    let dcmd = command_from_json(&json!({"metrics": [
        {"name": "Pressure", "value": -12},
        {"name": "Flags", "value": [true, false, true]},
    ]}))
    .unwrap();
    let dcmd_bytes = command_payload(Some(&host), &press, &dcmd, 2_000).unwrap();
    let (ncmd_path, dcmd_path) = (dir.path().join("ncmd"), dir.path().join("dcmd"));
    std::fs::write(&ncmd_path, &ncmd_bytes).unwrap();
    std::fs::write(&dcmd_path, &dcmd_bytes).unwrap();

    let decoded = decode_with_python(&[&birth_path, &ncmd_path, &dcmd_path]);
    assert_eq!(decoded.len(), 3);

    let py_birth = decoded[0]["metrics"].as_array().unwrap();
    assert_eq!(py_birth.len(), every.len());
    for (py, ours) in py_birth.iter().zip(&every) {
        same_metric(py, ours);
    }
    assert_eq!((decoded[0]["timestamp"].clone(), decoded[0]["seq"].clone()), (json!(5), json!(0)));

    let summary = |line: &Json| -> Vec<Json> {
        line["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| json!([m["name"], m["alias"], m["datatype"], m["value"]]))
            .collect()
    };
    assert_eq!(
        summary(&decoded[1]),
        vec![
            json!(["Node Control/Rebirth", null, 11, true]),
            json!(["Setpoint", null, 1, -3]),
            json!(["Limit", null, 10, 2.5]),
            json!(["Mode", null, 12, "auto"]),
        ]
    );
    assert_eq!(decoded[1]["timestamp"], 1_000);
    assert_eq!(
        summary(&decoded[2]),
        vec![json!(["Pressure", 7, 2, -12]), json!(["Flags", 8, 32, [true, false, true]])]
    );
    eprintln!(
        "sparkplug-check decoded {} metrics of {} payloads",
        py_birth.len() + 6,
        decoded.len()
    );
}
