//! The indexer's `[consumer]` properties (its `-X`) reach the Kafka clients it makes: the
//! admin client of `create_topics`, the consumer and the dead-letter producer. A TLS listener
//! stands in for a SASL_SSL broker: a client's handshake completes only when it was told to
//! trust the listener's CA, and its first Kafka request names its `client.id`. The clients
//! share the properties, `client.id` included, so each test leaves only one client to reach
//! the probe.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::source::ChannelSource;
use dlog_core::stage::ConsumerConfig;
use dlog_indexer::{Indexer, IndexerConfig, LogDeadLetters};
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

/// The one Kafka client a test lets the indexer make.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// `create_topics`' admin client (the consumer and dead-letter producer follow it).
    Admin,
    /// The consumer alone: no `create_topics`, dead letters to a stub.
    Consumer,
    /// The dead-letter producer alone: records from a channel, not Kafka.
    DeadLetters,
}

/// Starts the indexer (in the background) on the probe with only `client` among its Kafka
/// clients, and waits for `client_id`'s first request over a completed handshake.
async fn reaches_the_probe_over_tls(client: Client, client_id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let config = IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: probe.brokers(),
            create_topics: matches!(client, Client::Admin),
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
        let builder = Indexer::builder(config);
        let (running, _records) = match client {
            Client::Admin => (builder.start().await, None),
            Client::Consumer => (
                builder
                    .with_dead_letters(Arc::new(LogDeadLetters))
                    .start()
                    .await,
                None,
            ),
            Client::DeadLetters => {
                let (records, source) = ChannelSource::new(4);
                (builder.with_source(source).start().await, Some(records))
            }
        };
        assert!(running.is_ok(), "{client:?}: {:?}", running.err());
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
    reaches_the_probe_over_tls(Client::Admin, "t-indexer-admin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_carries_the_stages_security_properties() {
    reaches_the_probe_over_tls(Client::Consumer, "t-indexer-consumer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_producer_carries_the_stages_security_properties() {
    reaches_the_probe_over_tls(Client::DeadLetters, "t-indexer-dead-letters").await;
}
