//! Entry points for the fuzz targets (the `fuzz/` crate) and the property tests: each takes
//! arbitrary input, runs one of the parsers or decoders the connectors apply to text or bytes they
//! do not control (topic templates, configuration files, converters, Kafka record batches), and
//! panics only when the code breaks a property it promises. Not a stable API.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::converter::{Converter, JsonOutput};
use crate::kafka::{validate_topic_name, validate_topic_template};
use crate::runner::{ConnectFile, Registry};
use crate::template::{Part, Template};

/// Parses `source` as a template; when it parses, checks that the parts written back (braces
/// doubled) parse to the same parts, that rendering with `values` is the literals and values in
/// order, and that a template whose fixed parts [`validate_topic_template`] refuses never renders
/// to a legal Kafka topic name, whatever legal text its placeholders get.
pub fn template(source: &str, values: &[&str]) {
    let Ok(t) = Template::parse(source) else { return };
    let written: String = t
        .parts()
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.replace('{', "{{").replace('}', "}}"),
            Part::Placeholder(n) => format!("{{{n}}}"),
        })
        .collect();
    let again = Template::parse(&written)
        .unwrap_or_else(|e| panic!("{written:?} (from {source:?}) does not parse: {e}"));
    assert_eq!(again.parts(), t.parts(), "{source:?} -> {written:?}");
    assert!(
        t.parts().windows(2).all(|w| !matches!(w, [Part::Literal(_), Part::Literal(_)])),
        "adjacent literals in {source:?}"
    );

    let mut i = 0;
    let rendered = t
        .render(|_| {
            let v = values.get(i % values.len().max(1)).copied().unwrap_or("x");
            i += 1;
            Ok::<_, std::convert::Infallible>(Cow::Owned(v.to_owned()))
        })
        .unwrap_or_else(|never| match never {});
    let mut expected = String::new();
    let mut j = 0;
    for p in t.parts() {
        match p {
            Part::Literal(l) => expected.push_str(l),
            Part::Placeholder(_) => {
                expected.push_str(values.get(j % values.len().max(1)).copied().unwrap_or("x"));
                j += 1;
            }
        }
    }
    assert_eq!(rendered, expected);
    assert_eq!(t.as_literal().is_some(), t.placeholders().next().is_none());

    for slash_as_dot in [false, true] {
        if validate_topic_template(&t, slash_as_dot).is_err() {
            // Legal text for every placeholder: the result must still be illegal.
            let legal = t
                .render(|_| Ok::<_, std::convert::Infallible>(Cow::Borrowed("a")))
                .unwrap_or_default();
            let name = if slash_as_dot { legal.replace('/', ".") } else { legal };
            assert!(
                validate_topic_name(&name).is_err(),
                "{source:?} was refused, but renders to the legal topic {name:?}"
            );
        }
    }
}

/// Checks `data` with each converter: `bytes` passes anything, `string` exactly UTF-8, `json`
/// exactly what `serde_json` reads, and JSON written back compactly reads as the same document.
pub fn converters(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    assert_eq!(
        Converter::Bytes.convert(Some(bytes.clone()), JsonOutput::Compact).ok(),
        Some(Some(bytes.clone()))
    );
    assert_eq!(
        Converter::String.convert(Some(bytes.clone()), JsonOutput::AsReceived).is_ok(),
        std::str::from_utf8(data).is_ok()
    );
    let parsed = serde_json::from_slice::<serde_json::Value>(data);
    assert_eq!(
        Converter::Json.convert(Some(bytes.clone()), JsonOutput::AsReceived).is_ok(),
        parsed.is_ok()
    );
    match Converter::Json.convert(Some(bytes), JsonOutput::Compact) {
        Ok(Some(out)) => {
            let before = parsed.unwrap_or_else(|e| panic!("converted, yet not JSON: {e}"));
            let after: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("rewritten JSON does not read back: {e}"));
            assert_eq!(before, after);
        }
        Ok(None) => panic!("a value became a tombstone"),
        Err(_) => assert!(parsed.is_err(), "valid JSON refused"),
    }
}

/// Reads `text` as a `connect` configuration file and validates it: it must not panic, and every
/// problem it reports has a message and a key path (an error that is about the file as a whole,
/// not valid TOML, has the empty path).
pub fn config(text: &str, registry: &Registry) {
    let Err(errors) = ConnectFile::parse(text, registry) else { return };
    assert!(!errors.is_empty(), "refused with no error");
    for e in errors.iter() {
        assert!(!e.message.is_empty(), "an error without a message at {:?}", e.path);
        assert!(
            !e.path.is_empty() || e.message.starts_with("not valid TOML"),
            "an error without a key path: {}",
            e.message
        );
    }
}

/// Reads `data` as the record batches of a fetched partition (`Records`: a 32-bit length, then
/// v2 batches, as in a Fetch response) with the fetch's own reader and turns them into sink
/// records from the offset in the first 8 bytes: offsets must come out strictly increasing and
/// at or after that offset.
pub fn record_batches(data: &[u8]) {
    let (from, rest) = match data.split_first_chunk::<8>() {
        Some((head, rest)) => (i64::from_be_bytes(*head), rest),
        None => (0, data),
    };
    let Some(batches) = fetched_batches(rest) else { return };
    let topic: Arc<str> = Arc::from("fuzz");
    let Ok(records) = crate::kafka::records::decode_batches(&topic, 0, batches, from) else {
        return;
    };
    let mut last: Option<i64> = None;
    for r in &records {
        assert!(r.offset >= from, "record at {} before {from}", r.offset);
        assert!(
            last.is_none_or(|l| r.offset > l),
            "offsets not increasing: {last:?} then {}",
            r.offset
        );
        last = Some(r.offset);
    }
}

/// The batches of a records section (`data`: its 32-bit length, then the batches), as a fetch
/// reads them; `None` when it is not one.
fn fetched_batches(data: &[u8]) -> Option<Vec<crate::kafka::fetch_response::Batch>> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
    let section = Bytes::copy_from_slice(rest.get(..len)?);
    crate::kafka::fetch_response::read_batches(&section).ok()
}

/// A valid input for [`record_batches`]: from-offset 0, then two uncompressed batches of three
/// records (keys, values, a tombstone, duplicate headers) at base offsets 0 and 3. A seed for the
/// fuzzer and the property tests, which mutate it.
pub fn sample_record_batches() -> Vec<u8> {
    use crate::kafka::records::{encode_batch, PendingRecord};
    use crate::kafka::Compression;
    use crate::record::Headers;

    let mut headers = Headers::new();
    headers.push("h", "1");
    headers.push("h", "2");
    let records: Vec<PendingRecord> = (0..3)
        .map(|i| PendingRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: (i != 1).then(|| Bytes::from(format!("v{i}"))),
            headers: headers.clone(),
            timestamp: 1_700_000_000_000 + i,
        })
        .collect();
    let mut batches = Vec::new();
    for base in [0i64, 3] {
        let mut one = Vec::new();
        if encode_batch(&records, Compression::None, &mut one).is_ok() {
            // The base offset is the batch's first 8 bytes.
            if let Some(head) = one.get_mut(..8) {
                head.copy_from_slice(&base.to_be_bytes());
            }
            batches.extend_from_slice(&one);
        }
    }
    let mut out = 0i64.to_be_bytes().to_vec();
    out.extend_from_slice(&i32::try_from(batches.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(&batches);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_sample_batches_decode_to_six_records() {
        let data = sample_record_batches();
        let batches = fetched_batches(&data[8..]).unwrap();
        let topic: Arc<str> = Arc::from("t");
        let records = crate::kafka::records::decode_batches(&topic, 0, batches, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(records[1].value, None);
        record_batches(&data);
    }

    /// Writes the seed inputs of the fuzz targets that live here to `fuzz/seeds/` (run by hand:
    /// `cargo test -p connector-core --lib fuzzing -- --ignored`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        };
        write("kafka_records", "two-batches", &sample_record_batches());
        write("converters", "json", br#"{"t":21.5,"tags":["a","b"],"ok":true,"n":null}"#);
        write("template", "source", b"plant.{1}.{topic}\nplant/line1/temp\ncar-1\ndev");
        write("template", "sink", b"cars/{key}/cmd/{header.h}\ncommands\ncar-1\ndev");
        let config = r#"[kafka]
bootstrap_servers = ["127.0.0.1:9092"]
[offsets]
store = "memory"

[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "mqtt://127.0.0.1:1883"
topics = ["plant/+/sensors/#"]
kafka_topic = "plant.{1}"
runtime = { max_kafka_topics = 100 }
errors = { tolerance = "all", dead_letter_topic = "dlq" }

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "mqtt://127.0.0.1:1883"
topics = ["commands"]
mqtt_topic = "cars/{key}/cmd"
mqtt_version = "5"
"#;
        write("config", "two-connectors", config.as_bytes());
    }

    /// Fuzz find (config target): an empty top-level key was reported with an empty key path.
    #[test]
    fn an_empty_top_level_key_is_reported_at_a_path() {
        config("''= ''", &Registry::new());
        let errors = ConnectFile::parse("''= ''", &Registry::new()).unwrap_err();
        assert!(errors.to_string().starts_with("\"\": unknown key"), "{errors}");
    }

    /// Fuzz find (converters target): without serde_json's `float_roundtrip`, this number read
    /// back after `json_reserialize` as a different one.
    #[test]
    fn a_reserialized_json_number_keeps_its_value() {
        converters(b"4444445444444444443444");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn templates(source in "[a-z./{} +#:-]{0,40}", values in proptest::collection::vec("[a-z./+ -]{0,6}", 0..4)) {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            template(&source, &values);
        }

        #[test]
        fn converters_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            converters(&data);
        }

        #[test]
        fn converters_on_json_like_text(text in r#"[\[\]{}",:0-9a-z. e+-]{0,40}"#) {
            converters(text.as_bytes());
        }

        #[test]
        fn record_batches_mutated(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), from in 0i64..8) {
            let mut data = sample_record_batches();
            data[..8].copy_from_slice(&from.to_be_bytes());
            for (at, byte) in edits {
                let n = data.len();
                data[8 + at % (n - 8)] = byte;
            }
            record_batches(&data);
        }

        #[test]
        fn record_batches_on_bytes(from in any::<i64>(), batch in proptest::collection::vec(any::<u8>(), 0..256)) {
            // A length prefix that fits: a random one mostly asks rskafka for a 10 MB block
            // (bounded, but slow in a debug build) and tests nothing more.
            let mut data = from.to_be_bytes().to_vec();
            data.extend_from_slice(&i32::try_from(batch.len()).unwrap().to_be_bytes());
            data.extend_from_slice(&batch);
            record_batches(&data);
        }

        #[test]
        fn config_text(text in r#"[\[\]a-z_.="{} 0-9\n]{0,120}"#) {
            config(&text, &Registry::new());
        }
    }
}
