//! The webhook output against a real HTTP server in the test: JSON bodies, the idempotency
//! key, retry after a 503, and the severity filter.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stage = tokio::spawn(run_with(config, source, Arc::new(clock), async move {
        let _ = stopped.await;
    }));

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

    let deadline = Instant::now() + Duration::from_secs(40);
    while hook.accepted.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = hook.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(
        hook.requests.load(Ordering::SeqCst),
        2,
        "one 503, one retry"
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
        vec!["Bearer test-token".to_string()]
    );

    let _ = stop.send(());
    stage.await.unwrap().unwrap();
    server.abort();
}
