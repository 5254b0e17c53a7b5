//! `dlog up --kafka` passes its librdkafka properties (`--kafka-properties-file`, then `-X`)
//! to the Kafka clients it makes, starting with the admin client that creates the topics. A
//! TLS listener stands in for a SASL_SSL broker: the handshake completes only when the client
//! was told to trust the listener's CA, and the client's first Kafka request names its
//! `client.id`. Settings a piece would refuse stop the start before any client connects.

mod support;

use std::io::Read;
use std::time::Duration;

use dlog_testkit::tls_probe::{Handshake, TlsProbe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlog_up_passes_its_kafka_properties_to_the_topic_creation() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let ca = probe.write_ca(dir.path()).unwrap();
    // The secrets and the TLS settings come from the file, out of `ps`'s sight; `-X` adds
    // to it and wins over it (`client.id`).
    let properties = dir.path().join("kafka.properties");
    std::fs::write(
        &properties,
        format!(
            "# SASL_SSL with SCRAM\n\
             security.protocol=SASL_SSL\n\
             sasl.mechanisms=SCRAM-SHA-256\n\
             sasl.username=dlog\n\
             sasl.password=s3cret-for-tests\n\
             ssl.ca.location={}\n\
             client.id=from-the-file\n",
            ca.display()
        ),
    )
    .unwrap();
    let brokers = probe.brokers();
    let mut child = support::spawn_dlog_up_with(
        &dir.path().join("data"),
        "warn",
        &[
            "--kafka",
            &brokers,
            "--topic-replication",
            "3",
            "--kafka-properties-file",
            properties.to_str().unwrap(),
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

/// Regression: `dlog up --kafka` created the topics before the pieces checked their Kafka
/// settings: a reserved `-X` key (`acks`, `enable.auto.commit`) or a replication factor
/// below 1 was refused only once the topics existed (or the broker refused the request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_dlog_up_refuses_bad_kafka_settings_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let probe = TlsProbe::start().await.unwrap();
    let brokers = probe.brokers();

    // The library: every piece's check runs before a client is made.
    for (properties, replication, named) in [
        (vec![("acks", "1")], 1, "acks"),
        (
            vec![("enable.auto.commit", "true")],
            1,
            "enable.auto.commit",
        ),
        (vec![], 0, "topic_replication"),
        (vec![], -1, "topic_replication"),
    ] {
        let config = dlog::Config {
            kafka_brokers: Some(brokers.clone()),
            kafka_properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            topic_replication: replication,
            ..support::config(&dir.path().join("lib"))
        };
        let result = tokio::time::timeout(Duration::from_secs(30), dlog::start(config))
            .await
            .expect("dlog::start returned");
        let err = match result {
            Ok(running) => {
                let _ = running.shutdown().await;
                panic!("started with {properties:?}, replication {replication}");
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains(named), "{named}: {err}");
    }

    // The command line: a replication factor below 1 is refused by the flag, a reserved
    // `-X` key before anything connects.
    for flags in [
        &["--topic-replication", "0"][..],
        &["--topic-replication=-1"],
        &["-X", "acks=1"],
    ] {
        let mut args = vec!["--kafka", brokers.as_str()];
        args.extend_from_slice(flags);
        let mut child = support::spawn_dlog_up_with(&dir.path().join("cli"), "warn", &args);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("dlog up {flags:?} kept running");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success(), "{flags:?}: {stderr}");
        let named = if flags[0] == "-X" {
            "acks"
        } else {
            "topic-replication"
        };
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
    assert_eq!(
        probe.handshakes(),
        vec![],
        "a Kafka client connected despite settings that are refused"
    );
}
