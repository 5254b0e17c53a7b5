//! The all-in-one process on real engines: `--kafka` puts a Kafka-protocol broker (tansu)
//! between the bridge and the stages, `--elasticsearch` stores in an Elasticsearch-API server
//! (osmem, or `ELASTICSEARCH_URL`), each alone or both together. In every combination a
//! service instrumented with the SDK exports a trace and its logs, and they are found through
//! the store's queries (and, with Elasticsearch, through `dlog --elasticsearch URL traces`),
//! with the alert for its error; with Kafka, the records are on the topics the stages
//! consumed. Kafka is also reached over SASL_SSL with SCRAM on a broker that requires both.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use distributed_logger::Telemetry;
use dlog_storage::{AlertQuery, LogQuery, Store};
use dlog_testkit::tls::{Pki, TlsProxy};
use dlog_testkit::{free_port, read_topic_with, unique_name, Elastic, Kafka, KafkaOptions};

#[tracing::instrument(skip(logger))]
fn checkout(logger: &distributed_logger::DistributedLogger, order: i64) -> String {
    tracing::info!(order, "checking out");
    payment(logger);
    current_trace_id()
}

#[tracing::instrument(skip(logger))]
fn payment(logger: &distributed_logger::DistributedLogger) {
    logger.error(
        "payment failed",
        "PAY-502",
        "gateway timeout",
        Some("payments"),
    );
}

/// The current trace id, from the W3C `traceparent` the SDK would send downstream.
fn current_trace_id() -> String {
    let mut headers = http::HeaderMap::new();
    distributed_logger::propagation::inject_current_http(&mut headers);
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    traceparent
        .split('-')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Polls `check` until it returns Some or `within` passes.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(kafka: Option<&Kafka>, elastic: Option<&Elastic>) {
    run_with(kafka.map(|k| k.brokers.as_str()), &BTreeMap::new(), elastic).await
}

/// [`run`] on the Kafka `brokers`, with librdkafka `properties` for every Kafka client
/// (`dlog up -X`).
async fn run_with(
    kafka: Option<&str>,
    properties: &BTreeMap<String, String>,
    elastic: Option<&Elastic>,
) {
    let data = tempfile::tempdir().unwrap();
    let prefix = unique_name("dlog-up");
    let config = dlog::Config {
        kafka_brokers: kafka.map(str::to_string),
        kafka_properties: properties.clone(),
        elasticsearch_url: elastic.map(|e| e.url.clone()),
        elasticsearch_index_prefix: prefix.clone(),
        ..support::config(data.path())
    };
    let running = dlog::start(config).await.unwrap();
    match kafka {
        Some(k) => {
            assert_eq!(running.records_to(), format!("Kafka brokers {k}"));
            assert!(running.wal().is_none(), "no local log next to Kafka");
            assert!(!data.path().join(dlog::WAL_DIR).exists());
        }
        None => assert!(running.records_to().starts_with("local log ")),
    }
    match elastic {
        Some(e) => assert_eq!(
            running.store_description(),
            format!("Elasticsearch {}", e.url)
        ),
        None => assert!(running.store_description().starts_with("embedded store ")),
    }
    assert_eq!(
        running.store().backend(),
        if elastic.is_some() {
            "elasticsearch"
        } else {
            "embedded"
        }
    );

    let endpoint = format!("http://{}", running.grpc_addr());
    let (trace_id, report) = tokio::task::spawn_blocking(move || {
        let telemetry = Telemetry::builder("checkout")
            .with_endpoint(endpoint)
            .with_dependencies(["payments"])
            .with_stderr(false)
            .with_heartbeat_interval(Duration::from_secs(10))
            .build()
            .unwrap();
        let logger = telemetry.logger();
        let trace_id =
            tracing::dispatcher::with_default(telemetry.dispatch(), || checkout(&logger, 42));
        (trace_id, telemetry.shutdown())
    })
    .await
    .unwrap();
    assert!(report.is_complete(), "SDK could not deliver: {report}");
    assert_eq!(trace_id.len(), 32, "no trace id: {trace_id:?}");

    let store = running.store();
    let within = Duration::from_secs(45);
    let spans = eventually("both spans in the store", within, || {
        let (store, trace_id) = (store.clone(), trace_id.clone());
        async move {
            let spans = store.get_trace(&trace_id).await.ok()?;
            (spans.len() == 2).then_some(spans)
        }
    })
    .await;
    let checkout_span = spans.iter().find(|s| s.name == "checkout").unwrap();
    let payment_span = spans.iter().find(|s| s.name == "payment").unwrap();
    assert_eq!(
        payment_span.parent_span_id.as_deref(),
        Some(checkout_span.span_id.as_str())
    );

    let logs = eventually("the trace's logs in the store", within, || {
        let (store, trace_id) = (store.clone(), trace_id.clone());
        async move {
            let logs = store
                .search_logs(&LogQuery {
                    trace_id: Some(trace_id),
                    ..LogQuery::default()
                })
                .await
                .ok()?;
            (logs.len() >= 2).then_some(logs)
        }
    })
    .await;
    let error = logs.iter().find(|l| l.level == "ERROR").unwrap();
    assert_eq!(error.body, "payment failed");
    assert_eq!(error.attr_str("error.code"), Some("PAY-502"));
    assert!(logs.iter().any(|l| l.body == "checking out"));

    let alert = eventually("the error_log alert in the store", within, || {
        let store: std::sync::Arc<dyn Store> = store.clone();
        async move {
            let alerts = store
                .list_alerts(&AlertQuery {
                    service: Some("checkout".into()),
                    ..AlertQuery::default()
                })
                .await
                .ok()?;
            alerts.into_iter().find(|a| a.rule == "error_log")
        }
    })
    .await;
    assert!(alert.summary.contains("PAY-502"), "{}", alert.summary);
    assert_eq!(alert.example_trace_ids, vec![trace_id.clone()]);

    if let Some(elastic) = elastic {
        // The query commands read the same store with --elasticsearch.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dlog"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--elasticsearch", &elastic.url])
            .args(["--elasticsearch-index-prefix", &prefix])
            .args(["traces", "--service", "checkout"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listed.contains(&trace_id), "dlog traces: {listed}");
    }

    if let Some(kafka) = kafka {
        // The records went through the broker: the trace keyed by its id, the logs, and the
        // alert the alerter emitted.
        let brokers = kafka.to_string();
        let key = trace_id.clone();
        let properties = properties.clone();
        let read_topic =
            move |brokers: &str,
                  topic: &str,
                  within: Duration,
                  done: &dyn Fn(&[dlog_core::source::RawRecord]) -> bool| {
                read_topic_with(brokers, &properties, topic, within, done)
            };
        let on_topics = tokio::task::spawn_blocking(move || {
            let has_key = |records: &[dlog_core::source::RawRecord]| {
                records
                    .iter()
                    .any(|r| r.key.as_deref() == Some(key.as_bytes()))
            };
            let spans = read_topic(&brokers, "trace_logs", Duration::from_secs(20), &has_key)?;
            let logs = read_topic(&brokers, "service_logs", Duration::from_secs(20), &has_key)?;
            let alerts = read_topic(&brokers, "alerts", Duration::from_secs(20), &|r| {
                !r.is_empty()
            })?;
            anyhow::Ok((has_key(&spans), has_key(&logs), !alerts.is_empty()))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            on_topics,
            (true, true, true),
            "(trace on trace_logs, logs on service_logs, an alert on alerts)"
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_between_the_bridge_and_the_stages() {
    let kafka = Kafka::start().unwrap();
    run(Some(&kafka), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_as_the_store() {
    let elastic = Elastic::start().unwrap();
    run(None, Some(&elastic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_elasticsearch_together() {
    let kafka = Kafka::start().unwrap();
    let elastic = Elastic::start().unwrap();
    run(Some(&kafka), Some(&elastic)).await;
}

/// The password of the SCRAM user the broker knows.
const SCRAM_PASSWORD: &str = "s3cret-Pa55-for-tests";

/// A broker that requires SASL, reached over TLS, with a SCRAM-SHA-512 user: every Kafka
/// client of `dlog up` (the topic creation, the bridge's producer, the stages' consumers and
/// the alerts producer) goes through a TLS handshake it verifies and a real SCRAM exchange
/// with tansu, and the whole flow works. A wrong password stops the start, naming the
/// authentication failure. (tansu 0.6.0 cannot serve TLS itself, its `--cert` and `--key`
/// being refused together: a TLS proxy stands in front of it, and tansu names the proxy's
/// port to clients.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_sasl_ssl_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue("tansu").unwrap();
    let pem = pki.write(dir.path()).unwrap();
    let durable = Some(dir.path().join("tansu.db"));
    let port = free_port().unwrap();
    let proxy = TlsProxy::start(&format!("127.0.0.1:{port}"), &pki).unwrap();
    // tansu adds users through the broker, and refuses that once it requires authentication:
    // the user is added first, on durable storage, and the broker restarted with
    // authentication on the same storage.
    let kafka = Kafka::start_on(
        port,
        KafkaOptions {
            durable: durable.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    kafka
        .create_scram_user("dlog", SCRAM_PASSWORD, "scram512")
        .unwrap();
    kafka.kill().unwrap();
    kafka
        .start_again_with(KafkaOptions {
            durable,
            authentication: true,
            advertised_port: Some(proxy.addr.port()),
        })
        .unwrap();
    let brokers = proxy.addr.to_string();
    let properties = |password: &str| -> BTreeMap<String, String> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "dlog"),
            ("sasl.password", password),
            ("ssl.ca.location", pem.ca.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };

    let data = tempfile::tempdir().unwrap();
    let refused = dlog::start(dlog::Config {
        kafka_brokers: Some(brokers.clone()),
        kafka_properties: properties("not-the-password"),
        ..support::config(data.path())
    })
    .await;
    let Err(e) = refused else {
        panic!("dlog started with a wrong SCRAM password");
    };
    let message = format!("{e:#}");
    // Refused as such (librdkafka's authentication failure), not a check that timed out.
    assert!(
        message.contains("Authentication failure"),
        "the error does not name the authentication failure: {message}"
    );
    assert!(
        message.contains("invalid-proof"),
        "the error does not give the broker's reason: {message}"
    );
    assert!(
        !message.contains("not-the-password"),
        "the error shows the password: {message}"
    );
    let handshakes = proxy.handshakes();
    assert!(handshakes > 0, "no TLS handshake reached the broker");

    run_with(Some(&brokers), &properties(SCRAM_PASSWORD), None).await;
    assert!(proxy.handshakes() > handshakes);
}
