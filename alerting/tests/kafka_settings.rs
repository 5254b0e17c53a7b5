//! The alerter's Kafka clients beyond its consumer get the stage's settings: the lease topic
//! is created with `topic_replication` by an admin client carrying the stage's `[consumer]`
//! properties (security), and the alerts producer on the stage's brokers carries them too.
//! A TLS listener stands in for a SASL_SSL broker: a client's handshake completes only when it
//! was told to trust the listener's CA, and its first Kafka request names its `client.id`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dlog_alerting::alert::{Alert, AlertState, Severity, Transition, TransitionKind};
use dlog_alerting::lease;
use dlog_alerting::output::kafka;
use dlog_alerting::{Alerter, AlerterConfig};
use dlog_core::source::ChannelSource;
use dlog_testkit::tls_probe::{Handshake, TlsProbe};
use dlog_testkit::{unique_name, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

const WIRE_WAIT: Duration = Duration::from_secs(20);

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
async fn the_lease_topic_is_created_with_the_stages_security_properties() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let mut config = AlerterConfig::default();
    config.input.kafka_brokers = probe.brokers();
    config.input.consumer = sasl_ssl(&ca, "t-lease");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let acquiring =
        tokio::spawn(async move { lease::acquire(&config, "127.0.0.1:1".into(), &stop).await });
    assert_reached_over_tls(&probe, "t-lease").await;
    shutdown.cancel();
    acquiring.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_producer_on_the_stages_brokers_carries_its_properties_under_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let mut output = kafka::config::KafkaOutputConfig {
        enabled: true,
        ..Default::default()
    };
    // The output's own table wins over the stage's.
    output
        .producer
        .insert("client.id".into(), "t-alerts".into());
    let stage = sasl_ssl(&ca, "t-stage");
    let properties = kafka::producer_properties(&output, &stage);
    assert_eq!(properties["client.id"], "t-alerts");
    assert_eq!(properties["security.protocol"], "SASL_SSL");
    let built = kafka::build(&output, &probe.brokers(), &stage)
        .unwrap()
        .expect("enabled");
    let sending = tokio::spawn(async move {
        let transition = Transition {
            kind: TransitionKind::Fired,
            alert: Alert {
                id: "error_log/svc".into(),
                rule: "error_log".into(),
                key: "svc".into(),
                severity: Severity::Critical,
                state: AlertState::Firing,
                service: "svc".into(),
                instance: None,
                summary: "boom".into(),
                first_seen_unix_nano: 1,
                last_seen_unix_nano: 1,
                occurrences: 1,
                example_trace_ids: vec![],
                root_cause: None,
                incident_id: None,
                labels: Default::default(),
                revision: 1,
            },
        };
        let _ = built.sink.send(&[transition]).await;
    });
    assert_reached_over_tls(&probe, "t-alerts").await;
    sending.abort();

    // On brokers of its own, the output does not take the stage's properties.
    output.brokers = Some("elsewhere:9092".into());
    let properties = kafka::producer_properties(&output, &stage);
    assert_eq!(
        properties,
        BTreeMap::from([("client.id".to_string(), "t-alerts".to_string())])
    );
}

/// The alerts producer the stage itself builds (not the output alone) gets the stage's
/// properties: the stage reads a channel, so the producer is its only Kafka client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_builds_its_alerts_producer_with_the_stages_properties() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let mut config = AlerterConfig {
        admin: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().join("state"),
        ..Default::default()
    };
    config.input.kafka_brokers = probe.brokers();
    config.input.consumer = sasl_ssl(&ca, "t-alerts-stage");
    config.outputs.kafka.enabled = true;
    let (_records, source) = ChannelSource::new(4);
    let running = Alerter::builder(config)
        .with_source(source)
        .start()
        .await
        .expect("the stage starts on a channel");
    assert_reached_over_tls(&probe, "t-alerts-stage").await;
    drop(running);
}

/// The lease topic is created with the stage's replication factor and the lease is then taken
/// on it. tansu reports the replication factor a topic was created with (3 when asked for 3,
/// even on its one broker), so asking for 3, not the default 1, shows the setting reaching
/// CreateTopics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_topic_is_created_with_the_configured_replication() {
    let kafka = Kafka::start().unwrap();
    let mut config = AlerterConfig::default();
    config.input.kafka_brokers = kafka.brokers.clone();
    config.input.group_id = unique_name("alerters");
    config.lease_topic = unique_name("lease");
    config.input.topic_replication = 3;
    let shutdown = CancellationToken::new();
    let held = lease::acquire(&config, "127.0.0.1:1".into(), &shutdown)
        .await
        .expect("the lease on a topic with replication 3");
    assert!(!held.lost().is_cancelled());

    let consumer: BaseConsumer = dlog_core::kafka::client_config(&kafka.brokers, &BTreeMap::new())
        .create()
        .unwrap();
    let topic = config.lease_topic.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    let topic = &metadata.topics()[0];
    assert_eq!(topic.name(), config.lease_topic);
    assert_eq!(topic.partitions().len(), 1);
    assert_eq!(topic.partitions()[0].replicas().len(), 3);
    drop(held);
}
