//! End to end: OTLP/HTTP → collector bridge → Kafka (tansu) → indexing stage → each backend.
//! `get_trace` and the CLI tree show the exact tree the two services produced, and
//! `search_logs` by trace id returns the request's logs.

mod common;

use dlog_core::stage::ConsumerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_indexer::IndexerConfig;
use dlog_storage::{LogQuery, Store, StoreConfig};
use prost::Message;

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: Vec<u8>) {
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("post OTLP");
    assert!(
        response.status().is_success(),
        "bridge answered {}",
        response.status()
    );
}

/// Runs the whole pipeline into `store_config` and checks what a user would see.
async fn otlp_reaches_the_store_as_the_exact_tree(
    store_config: StoreConfig,
    cli_store_flags: Vec<String>,
) {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let topic = |t: &str| dlog_testkit::unique_name(t);
    let (trace_topic, log_topic, hb_topic, dlq_topic) = (
        topic("trace_logs"),
        topic("service_logs"),
        topic("heartbeat_logs"),
        topic("dead_letters"),
    );

    let bridge = collector_bridge::start(collector_bridge::Config {
        kafka_brokers: kafka.brokers.clone(),
        otlp_grpc: loopback0(),
        otlp_http: loopback0(),
        admin: loopback0(),
        trace_logs_topic: trace_topic.clone(),
        service_logs_topic: log_topic.clone(),
        heartbeat_logs_topic: hb_topic.clone(),
        create_topics: true,
        ..Default::default()
    })
    .await
    .expect("bridge");

    let indexer = dlog_indexer::Indexer::builder(IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: dlog_testkit::unique_name("indexer"),
            create_topics: true,
            session_timeout_ms: 6000,
            ..Default::default()
        },
        trace_logs_topic: trace_topic,
        service_logs_topic: log_topic,
        heartbeat_logs_topic: hb_topic,
        dead_letters_topic: dlq_topic,
        admin: loopback0(),
        batch_linger_ms: 50,
        store: store_config,
        ..Default::default()
    })
    .start()
    .await
    .expect("indexer");
    let store: Arc<dyn Store> = indexer.store();

    let now = dlog_storage::store::now_unix_nano();
    let request = two_service_request(now - 5_000_000_000);
    let http = reqwest::Client::new();
    let base = format!("http://{}", bridge.http_addr());
    post(
        &http,
        format!("{base}/v1/traces"),
        request.frontend_spans.encode_to_vec(),
    )
    .await;
    post(
        &http,
        format!("{base}/v1/traces"),
        request.backend_spans.encode_to_vec(),
    )
    .await;
    post(
        &http,
        format!("{base}/v1/logs"),
        request.frontend_logs.encode_to_vec(),
    )
    .await;
    post(
        &http,
        format!("{base}/v1/logs"),
        request.backend_logs.encode_to_vec(),
    )
    .await;

    let trace_id = hex::encode(request.trace_id);
    let spans = wait_for(
        "the trace's 4 spans in the store",
        Duration::from_secs(45),
        || {
            let store = Arc::clone(&store);
            let trace_id = trace_id.clone();
            async move {
                store.refresh().await.ok()?;
                let spans = store.get_trace(&trace_id).await.ok()?;
                (spans.len() == 4).then_some(spans)
            }
        },
    )
    .await;

    // The exact tree: (service, operation, parent).
    let shape: Vec<(&str, &str, Option<String>)> = spans
        .iter()
        .map(|s| {
            (
                s.service.name.as_str(),
                s.name.as_str(),
                s.parent_span_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("frontend", "GET /checkout", None),
            ("frontend", "POST /charge", Some(hex_id(ROOT))),
            ("backend", "POST /charge", Some(hex_id(CLIENT))),
            ("backend", "db.query", Some(hex_id(SERVER))),
        ]
    );
    assert_eq!(
        spans.iter().map(|s| s.span_id.clone()).collect::<Vec<_>>(),
        vec![hex_id(ROOT), hex_id(CLIENT), hex_id(SERVER), hex_id(QUERY)]
    );
    assert!(spans.iter().all(|s| s.trace_id == trace_id));
    assert!(spans[3].is_error() && spans[3].status_message == "deadlock detected");
    assert_eq!(
        spans[0].attributes["http.response.status_code"],
        serde_json::json!(500)
    );
    assert_eq!(spans[2].service.instance_id.as_deref(), Some("backend-1"));

    // The request's logs, newest first, each under the right span.
    let logs = wait_for("the request's 3 logs", Duration::from_secs(30), || {
        let store = Arc::clone(&store);
        let trace_id = trace_id.clone();
        async move {
            store.refresh().await.ok()?;
            let logs = store
                .search_logs(&LogQuery {
                    trace_id: Some(trace_id),
                    ..Default::default()
                })
                .await
                .ok()?;
            (logs.len() == 3).then_some(logs)
        }
    })
    .await;
    let seen: Vec<(&str, &str, &str, Option<String>)> = logs
        .iter()
        .map(|l| {
            (
                l.service.name.as_str(),
                l.level.as_str(),
                l.body.as_str(),
                l.span_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("backend", "ERROR", "db deadlock", Some(hex_id(QUERY))),
            ("backend", "WARN", "charge slow", Some(hex_id(SERVER))),
            ("frontend", "INFO", "checkout started", Some(hex_id(ROOT))),
        ]
    );
    assert_eq!(
        logs[0].attr_str(dlog_core::names::ERROR_CODE),
        Some("DB_DEADLOCK")
    );
    assert_eq!(
        logs[1].attr_f64(dlog_core::names::RESPONSE_TIME_MS),
        Some(70.0)
    );

    // Registrations reached the registry through heartbeat_logs.
    let status = wait_for("both services registered", Duration::from_secs(30), || {
        let store = Arc::clone(&store);
        async move {
            store.refresh().await.ok()?;
            let s = store.service_status(&Default::default()).await.ok()?;
            (s.len() == 2).then_some(s)
        }
    })
    .await;
    assert_eq!(status[0].entry.service, "backend");
    assert_eq!(status[0].entry.dependencies, vec!["postgres".to_string()]);
    // Call edges are written after the trace summaries they come from (on Elasticsearch in
    // a later `_bulk` of the same batch), so they may become visible after the registry.
    let deps = wait_for("the call edge", Duration::from_secs(30), || {
        let store = Arc::clone(&store);
        async move {
            store.refresh().await.ok()?;
            let deps = store.dependencies(Default::default()).await.ok()?;
            (!deps.observed.is_empty()).then_some(deps)
        }
    })
    .await;
    assert_eq!(deps.observed.len(), 1);
    assert_eq!(
        (
            deps.observed[0].caller.as_str(),
            deps.observed[0].callee.as_str(),
            deps.observed[0].calls
        ),
        ("frontend", "backend", 1)
    );

    // The CLI, as a user runs it.
    let mut args = cli_store_flags;
    args.extend([
        "trace".to_string(),
        trace_id.clone(),
        "--width".to_string(),
        "20".to_string(),
    ]);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dlog-indexer"))
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .expect("run dlog-indexer trace");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "dlog-indexer trace failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "Trace {trace_id}  4 spans, 2 services (backend, frontend), 1 error"
        )),
        "{stdout}"
    );
    let expected = [
        "frontend: GET /checkout ",
        "│  · INFO checkout started ",
        "└─ frontend: POST /charge ",
        "   └─ backend: POST /charge ",
        "      │  · WARN charge slow ",
        "      └─ backend: db.query ",
        "         · ERROR db deadlock ",
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stdout}");
    for (line, start) in lines[1..].iter().zip(expected) {
        assert!(
            line.starts_with(start),
            "line `{line}` should start with `{start}`:\n{stdout}"
        );
    }
    assert!(
        lines[1].contains("+0ns")
            && lines[1].contains("100.000ms")
            && lines[1].contains("|████████████████████|"),
        "{stdout}"
    );
    assert!(
        lines[6].contains("+20.000ms")
            && lines[6].contains("30.000ms")
            && lines[6].contains("ERROR: deadlock detected"),
        "{stdout}"
    );

    indexer.shutdown().await.unwrap();
    bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_through_bridge_and_kafka_lands_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let flags = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    otlp_reaches_the_store_as_the_exact_tree(StoreConfig::embedded(dir.path()), flags).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_through_bridge_and_kafka_lands_in_elasticsearch() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("e2e");
    let flags = vec![
        "--elasticsearch-url".to_string(),
        elastic.url.clone(),
        "--index-prefix".to_string(),
        prefix.clone(),
    ];
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix.clone());
    otlp_reaches_the_store_as_the_exact_tree(config.clone(), flags).await;
    dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
}
