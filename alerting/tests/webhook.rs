//! The webhook output against a real HTTP server in the test: JSON bodies, the idempotency
//! key, retry after a 503, `Retry-After`, and the severity filter.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Json;
use common::*;
use dlog_alerting::{alert_id, kafka_source, run_with, ManualClock, Severity};
use dlog_testkit::Kafka;
use serde_json::{json, Value};

#[derive(Default)]
struct Hook {
    requests: AtomicU32,
    accepted: Mutex<Vec<(String, Value)>>,
    authorization: Mutex<Vec<String>>,
}

async fn receive(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    // The first delivery fails as an overloaded receiver would; the sender must retry.
    if hook.requests.fetch_add(1, Ordering::SeqCst) == 0 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    hook.authorization.lock().unwrap().push(auth.to_string());
    hook.accepted.lock().unwrap().push((key, body));
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receives_each_alert_once_as_json_after_a_retry() {
    let hook = Arc::new(Hook::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/alerts", post(receive))
        .with_state(hook.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let state_dir = tempfile::tempdir().unwrap();
    let mut config = config(&kafka, &topics, state_dir.path());
    config.outputs.kafka.enabled = false;
    config.outputs.webhook.enabled = true;
    config.outputs.webhook.url = url;
    config.outputs.webhook.backoff_initial_ms = 20;
    config.outputs.webhook.min_severity = Severity::Warning;
    config
        .outputs
        .webhook
        .headers
        .insert("authorization".into(), "Bearer test-token".into());
    let clock = ManualClock::new(T0);
    let source = kafka_source(&config).await.unwrap();
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(config, source, Arc::new(clock), stop.clone()));

    let p = Producer::new(&kafka);
    let a = resource("svc-a", "a-1", &["svc-b"]);
    let trace = [0x5a; 16];
    let key = dlog_core::encoding::hex_id(&trace);
    // Drift is info: below the webhook's min_severity, so never sent.
    p.logs(
        &topics.logs,
        &key,
        &logs(
            a.clone(),
            vec![service_call("svc-a", "svc-z", true, trace, T0)],
        ),
    )
    .await;
    p.logs(
        &topics.logs,
        &key,
        &logs(
            a.clone(),
            vec![error_log(
                "checkout failed",
                "E500",
                "database timeout",
                trace,
                T0,
            )],
        ),
    )
    .await;

    // A sentinel after them: once it is in, every delivery of what came before is too, so
    // the counts below would see a late duplicate.
    let sentinel_trace = [0x5b; 16];
    p.logs(
        &topics.logs,
        &dlog_core::encoding::hex_id(&sentinel_trace),
        &logs(
            a.clone(),
            vec![error_log(
                "sentinel",
                "E999",
                "sentinel",
                sentinel_trace,
                T0,
            )],
        ),
    )
    .await;
    let is_sentinel = |body: &Value| body["labels"]["error_code"] == "E999";
    let deadline = Instant::now() + Duration::from_secs(40);
    while !hook
        .accepted
        .lock()
        .unwrap()
        .iter()
        .any(|(_, body)| is_sentinel(body))
    {
        assert!(Instant::now() < deadline, "the sentinel never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted: Vec<(String, Value)> = hook
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| !is_sentinel(body))
        .cloned()
        .collect();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(
        hook.requests.load(Ordering::SeqCst),
        3,
        "one 503, one retry, then the sentinel"
    );
    let (idempotency_key, body) = &accepted[0];
    let id = alert_id("error_log", "svc-a|E500");
    assert_eq!(idempotency_key, &format!("{id}-{}", body["revision"]));
    assert_eq!(
        body,
        &json!({
            "event": "fired",
            "id": id,
            "rule": "error_log",
            "key": "svc-a|E500",
            "severity": "critical",
            "state": "firing",
            "service": "svc-a",
            "instance": "a-1",
            "summary": "svc-a ERROR E500: database timeout",
            "first_seen_unix_nano": T0,
            "last_seen_unix_nano": T0,
            "first_seen": "2025-06-15T15:06:40.000Z",
            "last_seen": "2025-06-15T15:06:40.000Z",
            "occurrences": 1,
            "example_trace_ids": [key],
            "root_cause": null,
            "incident_id": null,
            "labels": {
                "error_code": "E500",
                "error_message": "database timeout",
                "level": "ERROR",
                "message": "checkout failed"
            },
            "revision": body["revision"],
        })
    );
    assert_eq!(body["revision"], 2, "the drift alert took revision 1");
    assert_eq!(
        *hook.authorization.lock().unwrap(),
        vec!["Bearer test-token".to_string(); 2]
    );

    stop.cancel();
    stage.await.unwrap().unwrap();
    server.abort();
}

/// A 503 with `Retry-After: 0` is retried at once, not after the configured backoff (here ten
/// minutes, so a sender that ignored the header would not retry within the test's bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_honours_retry_after() {
    let requests = Arc::new(AtomicU32::new(0));
    let seen = requests.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/alerts",
        post(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response()
                } else {
                    StatusCode::NO_CONTENT.into_response()
                }
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let state_dir = tempfile::tempdir().unwrap();
    let mut config = webhook_only_config(state_dir.path(), url);
    config.outputs.webhook.max_attempts = 2;
    config.outputs.webhook.backoff_initial_ms = 600_000;
    config.outputs.webhook.backoff_max_ms = 600_000;
    let (tx, source) = dlog_core::source::ChannelSource::new(4);
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        stop.clone(),
    ));
    let trace = [0x7a; 16];
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![error_log("checkout failed", "E500", "boom", trace, T0)],
    );
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(dlog_core::source::InProcessBatch {
        records: vec![dlog_core::source::RawRecord {
            topic: dlog_core::names::SERVICE_LOGS_TOPIC.into(),
            partition: 0,
            offset: 0,
            key: Some(dlog_core::encoding::hex_id(&trace).into_bytes()),
            payload: dlog_core::encoding::encode_logs(
                dlog_core::encoding::Encoding::OtlpProto,
                &request,
            )
            .unwrap(),
            headers: vec![(
                dlog_core::names::ENCODING_HEADER.into(),
                b"otlp_proto".to_vec(),
            )],
            timestamp_ms: None,
        }],
        ack,
    })
    .await
    .unwrap();
    // Acknowledged only once the webhook took it: after the 503, the immediate retry.
    tokio::time::timeout(Duration::from_secs(60), acked)
        .await
        .expect("the retry waited for the backoff, not for Retry-After")
        .unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    stop.cancel();
    drop(tx);
    stage.await.unwrap().unwrap();
    server.abort();
}
