//! Example applications built on the connector crates: the quickstart and the in-process brokers
//! it runs on ([`embedded`]), connected cars (`src/bin/connected-cars.rs`: a fleet, commands with
//! MQTT 5 message expiry), the smart factory (`src/bin/smart-factory.rs`: Sparkplug B edge nodes,
//! decoded into Kafka, commands back as DCMD), and an application that embeds connectors on its own Tokio runtime
//! without the runner (`src/bin/embedded-app.rs`: the MQTT source and sink, a connector and a
//! transform of its own).
//!
//! This is the only crate that links the embedded brokers (rumqttd, Tansu); the runner itself is
//! in `connector-runner`.

pub mod embedded;
