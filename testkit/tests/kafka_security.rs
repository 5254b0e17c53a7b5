//! Kafka SSL/SASL: librdkafka is built with OpenSSL (rdkafka's `ssl` feature), so the
//! clients every stage shares accept `security.protocol=SASL_SSL` with SCRAM, and the
//! properties a stage is given reach each of them: its consumer, the admin client that
//! creates topics, the dead-letter producer and the producer the bridge and the alerter's
//! output are built on. No broker here speaks SASL/SSL, so a TLS listener stands in for one:
//! a client's handshake completes only when it was told to trust the listener's CA, and the
//! first Kafka request then arrives encrypted, named by the client's `client.id`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dlog_core::kafka::{
    ensure_topics, ConsumerSettings, DeadLetters, KafkaSource, ProducerConfig, TopicSettings,
};
use dlog_core::source::{RawRecord, Source};
use dlog_testkit::tls_probe::{Handshake, TlsProbe};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

const WIRE_WAIT: Duration = Duration::from_secs(20);

/// What a user sets for a SASL_SSL cluster with SCRAM, plus the client's name.
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

fn consumer_settings(brokers: &str, properties: BTreeMap<String, String>) -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(brokers, "dlog-indexer", vec!["trace_logs".into()]);
    settings.extra = properties;
    settings
}

fn record() -> RawRecord {
    RawRecord {
        topic: "trace_logs".into(),
        partition: 0,
        offset: 7,
        key: None,
        payload: b"poison".to_vec(),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// Without the feature, each creation below fails with librdkafka's `Unsupported value
/// "SASL_SSL" for configuration property "security.protocol": OpenSSL not available at build
/// time`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_is_accepted_by_every_client_the_stages_share() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let brokers = "127.0.0.1:1";
    let properties = sasl_ssl(&ca, "dlog-test");

    KafkaSource::new(&consumer_settings(brokers, properties.clone()))
        .map_err(|e| e.to_string())
        .expect("consumer");
    DeadLetters::new(brokers, &properties, "dead_letters", "dlog-indexer")
        .map_err(|e| e.to_string())
        .expect("dead-letter producer");
    let topics = TopicSettings {
        brokers,
        properties: &properties,
        partitions: 1,
        replication: 1,
    };
    topics
        .admin_config()
        .create::<AdminClient<DefaultClientContext>>()
        .map_err(|e| e.to_string())
        .expect("admin client");
    let mut producer = ProducerConfig::new(brokers, Duration::from_secs(5));
    producer.properties = properties.clone();
    let _producer: FutureProducer = producer
        .client_config()
        .create()
        .map_err(|e| e.to_string())
        .expect("producer (the bridge's sink, the alerter's output)");
}

/// Waits for `client_id`'s first Kafka request over a completed handshake.
async fn assert_reached_over_tls(probe: &TlsProbe, client_id: &str) {
    let request = probe
        .wait_for(
            WIRE_WAIT,
            |h| matches!(h, Handshake::Completed(Some(r)) if r.client_id == client_id),
        )
        .await;
    assert!(
        request.is_some(),
        "{client_id}: no Kafka request over a completed TLS handshake; saw {:?}",
        probe.handshakes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clients_security_settings_reach_the_wire() {
    let dir = tempfile::tempdir().unwrap();

    // The consumer.
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let mut source = KafkaSource::new(&consumer_settings(
        &probe.brokers(),
        sasl_ssl(&ca, "t-consumer"),
    ))
    .unwrap();
    let polling = tokio::spawn(async move {
        loop {
            let _ = source.next_batch(10, Duration::from_millis(200)).await;
        }
    });
    assert_reached_over_tls(&probe, "t-consumer").await;
    polling.abort();

    // Creating topics: the brokers are checked first, with the admin client's settings (the
    // admin client itself connects only once that check passed, which this listener never
    // lets happen).
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let brokers = probe.brokers();
    let properties = sasl_ssl(&ca, "t-admin");
    let creating = tokio::spawn(async move {
        let settings = TopicSettings {
            brokers: &brokers,
            properties: &properties,
            partitions: 1,
            replication: 3,
        };
        let _ = ensure_topics(&settings, &["trace_logs"]).await;
    });
    assert_reached_over_tls(&probe, "t-admin").await;
    creating.abort();

    // The dead-letter producer.
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let dead_letters = DeadLetters::new(
        &probe.brokers(),
        &sasl_ssl(&ca, "t-dead-letters"),
        "dead_letters",
        "dlog-indexer",
    )
    .unwrap();
    let sending = tokio::spawn(async move {
        let _ = dead_letters.send(&record(), "undecodable").await;
    });
    assert_reached_over_tls(&probe, "t-dead-letters").await;
    sending.abort();
}

/// The handshake really checks the CA: a client told to trust another CA refuses the
/// listener, and no request reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_refuses_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let other = TlsProbe::start().await.unwrap();
    let wrong_ca = other.write_ca(dir.path()).unwrap();
    let mut source = KafkaSource::new(&consumer_settings(
        &probe.brokers(),
        sasl_ssl(&wrong_ca, "t-untrusting"),
    ))
    .unwrap();
    let polling = tokio::spawn(async move {
        loop {
            let _ = source.next_batch(10, Duration::from_millis(200)).await;
        }
    });
    let refused = probe
        .wait_for(WIRE_WAIT, |h| matches!(h, Handshake::Failed(_)))
        .await;
    polling.abort();
    assert!(refused.is_some(), "{:?}", probe.handshakes());
    assert!(
        !probe
            .handshakes()
            .iter()
            .any(|h| matches!(h, Handshake::Completed(_))),
        "{:?}",
        probe.handshakes()
    );
}
