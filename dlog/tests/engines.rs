//! The all-in-one process on real engines: `--kafka` puts a Kafka-protocol broker (tansu)
//! between the bridge and the stages, `--elasticsearch` stores in an Elasticsearch-API server
//! (osmem, or `ELASTICSEARCH_URL`), each alone or both together. In every combination a
//! service instrumented with the SDK exports a trace and its logs, and they are found through
//! the store's queries (and, with Elasticsearch, through `dlog --elasticsearch URL traces`),
//! with the alert for its error; with Kafka, the records are on the topics the stages
//! consumed.

mod support;

use std::time::Duration;

use distributed_logger::Telemetry;
use dlog_storage::{AlertQuery, LogQuery, Store};
use dlog_testkit::{read_topic, unique_name, Elastic, Kafka};

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
    let data = tempfile::tempdir().unwrap();
    let prefix = unique_name("dlog-up");
    let config = dlog::Config {
        kafka_brokers: kafka.map(|k| k.brokers.clone()),
        elasticsearch_url: elastic.map(|e| e.url.clone()),
        elasticsearch_index_prefix: prefix.clone(),
        ..support::config(data.path())
    };
    let running = dlog::start(config).await.unwrap();
    match kafka {
        Some(k) => {
            assert_eq!(running.records_to(), format!("Kafka brokers {}", k.brokers));
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
        let brokers = kafka.brokers.clone();
        let key = trace_id.clone();
        let on_topics = tokio::task::spawn_blocking(move || {
            let has_key = |records: &[dlog_core::source::RawRecord]| {
                records
                    .iter()
                    .any(|r| r.key.as_deref() == Some(key.as_bytes()))
            };
            let spans = read_topic(&brokers, "trace_logs", Duration::from_secs(20), has_key)?;
            let logs = read_topic(&brokers, "service_logs", Duration::from_secs(20), has_key)?;
            let alerts = read_topic(&brokers, "alerts", Duration::from_secs(20), |r| {
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
