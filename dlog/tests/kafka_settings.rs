//! `dlog up --kafka` passes its `-X` librdkafka properties to the Kafka clients it makes,
//! starting with the admin client that creates the topics. A TLS listener stands in for a
//! SASL_SSL broker: the handshake completes only when the client was told to trust the
//! listener's CA, and the client's first Kafka request names its `client.id`.

mod support;

use std::time::Duration;

use dlog_testkit::tls_probe::{Handshake, TlsProbe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlog_up_passes_its_kafka_properties_to_the_topic_creation() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    let ca_location = format!("ssl.ca.location={}", ca.display());
    let brokers = probe.brokers();
    let mut child = support::spawn_dlog_up_with(
        &dir.path().join("data"),
        "warn",
        &[
            "--kafka",
            &brokers,
            "--topic-replication",
            "3",
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanisms=SCRAM-SHA-256",
            "-X",
            "sasl.username=dlog",
            "--kafka-property",
            "sasl.password=s3cret-for-tests",
            "-X",
            &ca_location,
            "-X",
            "client.id=t-dlog-up",
        ],
    );
    let reached = probe
        .wait_for(
            Duration::from_secs(30),
            |h| matches!(h, Handshake::Completed(Some(r)) if r.client_id == "t-dlog-up"),
        )
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        reached.is_some(),
        "no Kafka request over a completed TLS handshake; saw {:?}",
        probe.handshakes()
    );
}
