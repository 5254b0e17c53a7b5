//! The bridge's `[kafka]` properties (its `-X`) reach the Kafka clients it makes: the admin
//! client that creates the topics (`create_topics`) and the producer. A TLS listener stands in
//! for a SASL_SSL broker: the handshake completes only when the client was told to trust the
//! listener's CA, and the client's first Kafka request names its `client.id`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use collector_bridge::{Bridge, Config};
use dlog_testkit::tls_probe::{Handshake, TlsProbe};

fn sasl_ssl(ca: &Path, client_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("security.protocol".into(), "SASL_SSL".into()),
        ("sasl.mechanisms".into(), "SCRAM-SHA-256".into()),
        ("sasl.username".into(), "dlog".into()),
        ("sasl.password".into(), "s3cret-for-tests".into()),
        ("ssl.ca.location".into(), ca.display().to_string()),
        ("client.id".into(), client_id.into()),
    ])
}

/// Starts the bridge (in the background) on the probe, and waits for `client_id`'s first
/// request over a completed handshake.
async fn reaches_the_probe_over_tls(create_topics: bool, client_id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let config = Config {
        kafka_brokers: probe.brokers(),
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        create_topics,
        topic_replication: 3,
        kafka: sasl_ssl(&ca, client_id),
        ..Config::default()
    };
    let starting = tokio::spawn(async move {
        // Kept running (it never gets a broker) until the task is aborted.
        let running = Bridge::builder(config).start().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(running);
    });
    let reached = probe
        .wait_for(
            Duration::from_secs(30),
            |h| matches!(h, Handshake::Completed(Some(r)) if r.client_id == client_id),
        )
        .await;
    starting.abort();
    assert!(
        reached.is_some(),
        "{client_id}: no Kafka request over a completed TLS handshake; saw {:?}",
        probe.handshakes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_creation_carries_the_bridges_security_properties() {
    reaches_the_probe_over_tls(true, "t-bridge-admin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_and_the_topic_check_carry_the_bridges_security_properties() {
    reaches_the_probe_over_tls(false, "t-bridge").await;
}
