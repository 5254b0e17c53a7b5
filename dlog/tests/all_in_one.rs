//! The all-in-one process end to end: a service instrumented with the SDK exports to it, and
//! once the SDK's shutdown reports everything delivered (which the bridge only confirms after
//! both in-process stages acknowledged), the trace, the logs, the service's status and the
//! alert for its error are in the embedded store.

mod support;

use std::time::Duration;

use distributed_logger::Telemetry;
use dlog_storage::{AlertQuery, Liveness, LogQuery, StatusQuery};

#[tracing::instrument(skip(logger))]
fn checkout(logger: &distributed_logger::DistributedLogger, order: i64) -> String {
    tracing::info!(order, "checking out");
    payment(logger);
    // The trace id of the request, as the store keys it.
    use opentelemetry_trace_id::current_trace_id;
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

/// Reads the current trace id from the W3C `traceparent` the SDK would send downstream.
mod opentelemetry_trace_id {
    pub fn current_trace_id() -> String {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_stored_searchable_and_alerted_on() {
    let data = tempfile::tempdir().unwrap();
    let running = dlog::start(support::config(data.path())).await.unwrap();
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
    // Answers come once records are durable in the local log; the stages read behind it.
    assert!(
        running.processed(Duration::from_secs(60)).await,
        "the stages did not catch up with the log"
    );

    let store = running.store();
    let spans = store.get_trace(&trace_id).await.unwrap();
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["checkout", "payment"]);
    let checkout_span = spans.iter().find(|s| s.name == "checkout").unwrap();
    let payment_span = spans.iter().find(|s| s.name == "payment").unwrap();
    assert_eq!(
        payment_span.parent_span_id.as_deref(),
        Some(checkout_span.span_id.as_str())
    );

    let logs = store
        .search_logs(&LogQuery {
            trace_id: Some(trace_id.clone()),
            ..LogQuery::default()
        })
        .await
        .unwrap();
    let error = logs
        .iter()
        .find(|l| l.level == "ERROR")
        .expect("the error record is stored");
    assert_eq!(error.body, "payment failed");
    assert_eq!(error.attr_str("error.code"), Some("PAY-502"));
    assert_eq!(
        error.span_id.as_deref(),
        Some(payment_span.span_id.as_str())
    );
    assert!(logs.iter().any(|l| l.body == "checking out"));

    let status = store.service_status(&StatusQuery::default()).await.unwrap();
    let checkout_status = status
        .iter()
        .find(|s| s.entry.service == "checkout")
        .unwrap_or_else(|| panic!("no status for checkout: {status:?}"));
    // The SDK's shutdown sent the DOWN registration after the UP one.
    assert_eq!(checkout_status.status, Liveness::Down);
    assert_eq!(
        checkout_status.entry.dependencies,
        vec!["payments".to_string()]
    );

    let alerts = store
        .list_alerts(&AlertQuery {
            service: Some("checkout".into()),
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    let alert = alerts
        .iter()
        .find(|a| a.rule == "error_log")
        .unwrap_or_else(|| panic!("no error_log alert in {alerts:?}"));
    assert!(alert.summary.contains("PAY-502"), "{}", alert.summary);
    assert_eq!(alert.example_trace_ids, vec![trace_id.clone()]);

    // The same process serves the trace to Jaeger clients on its viewer port.
    let viewer = format!("http://{}", running.viewer_addr());
    let body: serde_json::Value = reqwest::get(format!("{viewer}/api/traces/{trace_id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations: Vec<&str> = body["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operationName"].as_str().unwrap())
        .collect();
    operations.sort();
    assert_eq!(operations, ["checkout", "payment"]);
    let page = reqwest::get(format!("{viewer}/trace/{trace_id}"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    running.shutdown().await.unwrap();
}

/// The viewer can have its own tokens: a sender's token, good for OTLP, does not open it,
/// and a person's token, good for the viewer, does not open OTLP's admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_takes_its_own_tokens_apart_from_the_senders() {
    let data = tempfile::tempdir().unwrap();
    let senders = data.path().join("sender-tokens");
    let people = data.path().join("viewer-tokens");
    std::fs::write(&senders, "sender-token\n").unwrap();
    std::fs::write(&people, "person-token\n").unwrap();
    let running = dlog::start(dlog::Config {
        auth_token_file: Some(senders),
        viewer_token_file: Some(people),
        ..support::config(data.path())
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let status = |url: String, token: &'static str| {
        let request = client.get(url).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let viewer = format!("http://{}/api/services", running.viewer_addr());
    let metrics = format!("http://{}/metrics", running.bridge_admin_addr());
    assert_eq!(status(viewer.clone(), "sender-token").await, 401);
    assert_eq!(status(viewer, "person-token").await, 200);
    assert_eq!(status(metrics.clone(), "person-token").await, 401);
    assert_eq!(status(metrics, "sender-token").await, 200);
    running.shutdown().await.unwrap();
}
