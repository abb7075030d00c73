//! TLS and SASL against a real broker (Tansu 0.6.0): round trips over TLS, mutual TLS, SCRAM
//! logins, SASL over TLS; and the failures a user meets (untrusted certificate, missing
//! client certificate, wrong password) are fatal, fast and clear, and never show the password.
//!
//! Tansu 0.6.0 cannot serve TLS itself, so the test kit terminates TLS in a proxy in front of it
//! (see `connector_testkit::TlsProxy`); SASL is Tansu's own.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, KafkaConfig, ProducerRecord, SaslMechanism};
use connector_core::{Error, ErrorKind, Secret};
use connector_testkit::{
    init_tracing, kafka, SaslUser, Tansu, TansuOptions, TansuStorage, TansuTls, TestPki,
};

const PASSWORD: &str = "alice-Secret-7f3a";

async fn round_trip(config: KafkaConfig, topic: &str) {
    let client = KafkaClient::connect(config).await.unwrap();
    let records: Vec<_> = (0..20)
        .map(|i| ProducerRecord::new(topic, format!("v{i}")).with_key(format!("k{i}")))
        .collect();
    client.produce(records).await.unwrap();
    let got = kafka::consume_all(&client, topic).await.unwrap();
    let values: Vec<_> = got.iter().map(|r| r.value.clone().unwrap()).collect();
    let expected: Vec<_> = (0..20).map(|i| bytes::Bytes::from(format!("v{i}"))).collect();
    assert_eq!(values, expected);
}

/// Connects with `config` and returns the error, checking it came well within the request
/// timeout (no retry loop, no hang).
async fn refused(config: KafkaConfig) -> Error {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), KafkaClient::connect(config))
        .await
        .expect("connect hung");
    let err = result.expect_err("connect succeeded");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}: {err}", started.elapsed());
    err
}

async fn sasl_broker(tls: Option<TansuTls>) -> Tansu {
    Tansu::start_with_options(TansuOptions {
        storage: TansuStorage::Sqlite,
        tls,
        sasl_users: vec![SaslUser::new("alice", PASSWORD)],
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_over_tls() {
    init_tracing();
    let tansu = Tansu::start_with_options(TansuOptions {
        tls: Some(TansuTls::default()),
        ..TansuOptions::default()
    })
    .await
    .unwrap();
    round_trip(tansu.kafka_config(), "over-tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_brokers_certificate_gets_a_fatal_error_at_once() {
    init_tracing();
    let tansu = Tansu::start_with_options(TansuOptions {
        tls: Some(TansuTls::default()),
        ..TansuOptions::default()
    })
    .await
    .unwrap();

    let other_ca = TestPki::generate().unwrap();
    let mut config = tansu.kafka_config();
    config.ssl_ca_file = Some(other_ca.ca_file());
    let err = refused(config).await;
    let msg = err.report();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{msg}");
    assert!(msg.contains("TLS handshake"), "{msg}");
    assert!(msg.contains(&tansu.bootstrap()), "{msg}");
    assert!(msg.contains("kafka.ssl_ca_file"), "{msg}");

    // The certificate names 127.0.0.1 and localhost, not this.
    let mut config = tansu.kafka_config();
    config.ssl_server_name = Some("kafka.example.com".into());
    let err = refused(config).await;
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.report());
    assert!(err.report().contains("kafka.ssl_server_name"), "{}", err.report());

    // Overriding the name with one the certificate holds works.
    let mut config = tansu.kafka_config();
    config.ssl_server_name = Some("localhost".into());
    round_trip(config, "by-name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_round_trips_with_a_client_certificate_and_refuses_a_client_without_one() {
    init_tracing();
    let tansu = Tansu::start_with_options(TansuOptions {
        tls: Some(TansuTls { require_client_certificate: true }),
        ..TansuOptions::default()
    })
    .await
    .unwrap();
    round_trip(tansu.kafka_config(), "mtls").await;

    let mut config = tansu.kafka_config();
    config.ssl_certificate_file = None;
    config.ssl_key_file = None;
    let err = refused(config).await;
    let msg = err.report();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{msg}");
    assert!(msg.contains("client certificate"), "{msg}");
}

// PLAIN is not tested against a broker: Tansu 0.6.0 is built without rsasl's `plain` feature
// (tansu-auth 0.6.0 Cargo.toml), so its handshake fails with `NoSharedMechanism` and it closes the
// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_and_scram_sha_512_logins_round_trip() {
    init_tracing();
    let tansu = sasl_broker(None).await;
    let config = tansu.kafka_config();
    assert_eq!(config.sasl_mechanism, Some(SaslMechanism::ScramSha256));
    round_trip(config, "scram-256").await;
    let mut config = tansu.kafka_config();
    config.sasl_mechanism = Some(SaslMechanism::ScramSha512);
    round_trip(config, "scram-512").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_fatal_names_broker_and_mechanism_and_never_shows_the_password() {
    init_tracing();
    let tansu = sasl_broker(None).await;
    for (mechanism, user, password) in [
        (SaslMechanism::ScramSha256, "alice", "wrong-password-1234"),
        (SaslMechanism::ScramSha512, "alice", "wrong-password-1234"),
        (SaslMechanism::ScramSha256, "mallory", PASSWORD),
    ] {
        let mut config = tansu.kafka_config();
        config.sasl_mechanism = Some(mechanism);
        config.sasl_username = Some(user.into());
        config.sasl_password = Some(Secret::new(password));
        let err = refused(config).await;
        let msg = format!("{} / {err:?}", err.report());
        assert_eq!(err.kind(), ErrorKind::Fatal, "{msg}");
        assert!(msg.contains(&tansu.bootstrap()), "{msg}");
        assert!(msg.contains(mechanism.as_str()), "{msg}");
        assert!(msg.contains("refused"), "{msg}");
        assert!(!msg.contains(password), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_over_tls_round_trips_with_the_password_read_from_a_file() {
    init_tracing();
    let tansu = sasl_broker(Some(TansuTls::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kafka-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let mut config = tansu.kafka_config();
    assert_eq!(config.security_protocol, connector_core::kafka::SecurityProtocol::SaslSsl);
    config.sasl_password = None;
    config.sasl_password_file = Some(file);
    round_trip(config, "sasl-ssl").await;
}
