//! The indexer's `[consumer]` properties (its `-X`) reach the Kafka clients it makes: the
//! admin client of `create_topics` and the consumer. A TLS listener stands in for a SASL_SSL
//! broker: a client's handshake completes only when it was told to trust the listener's CA,
//! and its first Kafka request names its `client.id`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dlog_core::stage::ConsumerConfig;
use dlog_indexer::{Indexer, IndexerConfig};
use dlog_storage::StoreConfig;
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

/// Starts the indexer (in the background) on the probe with `create_topics`, and waits for
/// `client_id`'s first request over a completed handshake.
async fn reaches_the_probe_over_tls(create_topics: bool, client_id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let config = IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: probe.brokers(),
            create_topics,
            topic_replication: 3,
            consumer: sasl_ssl(&ca, client_id),
            ..Default::default()
        },
        admin: "127.0.0.1:0".parse().unwrap(),
        store: StoreConfig::embedded(dir.path().join("store")),
        ..Default::default()
    };
    let starting = tokio::spawn(async move {
        // Kept running (it never gets a broker) until the task is aborted.
        let running = Indexer::builder(config).start().await;
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
async fn topic_creation_carries_the_stages_security_properties() {
    reaches_the_probe_over_tls(true, "t-indexer-admin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_carries_the_stages_security_properties() {
    reaches_the_probe_over_tls(false, "t-indexer-consumer").await;
}
