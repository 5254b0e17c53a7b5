//! The indexing stage's retention loop against Elasticsearch (osmem, or `ELASTICSEARCH_URL`)
//! fed from Kafka (tansu): over a small byte budget the oldest days go, the newest stay, the
//! figures reach `/metrics`, and ingest never stops.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{otlp_span, produce_traces, producer, resource, traces, wait_for};
use dlog_core::model::{ServiceInfo, SpanKind, SpanRecord, StatusCode};
use dlog_core::stage::ConsumerConfig;
use dlog_indexer::retention::{ByteBudget, RetentionConfig};
use dlog_indexer::IndexerConfig;
use dlog_storage::elastic::model::date_of_nanos;
use dlog_storage::elastic::ElasticStore;
use dlog_storage::{Document, Retention, SpanWriter, StoreConfig, TraceQuery};
use opentelemetry_proto::tonic::trace::v1::span;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn seeded_span(day: u64, n: u64, at: u64) -> SpanRecord {
    SpanRecord {
        trace_id: format!("{:016x}{:016x}", day + 1, n + 1),
        span_id: format!("{:016x}", n + 1),
        parent_span_id: None,
        name: "nightly job".into(),
        kind: SpanKind::Server,
        start_unix_nano: at + n * MS,
        end_unix_nano: at + n * MS + 5 * MS,
        status: StatusCode::Unset,
        status_message: String::new(),
        service: ServiceInfo {
            name: format!("batch-{day}"),
            ..Default::default()
        },
        scope: String::new(),
        attributes: [("job.id".to_string(), serde_json::json!(n))].into(),
        events: vec![],
        links: vec![],
    }
}

async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_byte_budget_the_oldest_days_go_and_ingest_goes_on() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let mut store_config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("retain"));
    store_config.partition_max_age_secs = 30 * 86_400;
    let seed = ElasticStore::connect(&store_config).await.unwrap();

    // Seven days of history, 30 spans a day, the newest being today.
    let now = dlog_storage::now_unix_nano();
    let today_start = now / DAY * DAY;
    let mut docs = Vec::new();
    for day in 0..7u64 {
        let at = (today_start - day * DAY + 60_000 * MS).min(now - 60_000 * MS);
        docs.extend((0..30).map(|n| Document::Span(seeded_span(day, n, at))));
    }
    let outcomes = seed.write(&docs).await.unwrap();
    assert!(outcomes
        .iter()
        .all(|o| *o == dlog_storage::WriteOutcome::Written));
    seed.refresh().await.unwrap();
    let before = seed.usage().await.unwrap();
    assert_eq!(before.partitions.len(), 7, "{before:?}");
    // Room for all but the two oldest days, with half a day to spare for what comes in.
    let oldest_two = before.partitions[0].bytes + before.partitions[1].bytes;
    let budget = before.bytes_used - oldest_two + before.partitions[2].bytes / 2;

    let trace_topic = dlog_testkit::unique_name("trace_logs");
    let indexer = dlog_indexer::Indexer::builder(IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: dlog_testkit::unique_name("indexer"),
            create_topics: true,
            session_timeout_ms: 6000,
            ..Default::default()
        },
        trace_logs_topic: trace_topic.clone(),
        service_logs_topic: dlog_testkit::unique_name("service_logs"),
        heartbeat_logs_topic: dlog_testkit::unique_name("heartbeat_logs"),
        dead_letters_topic: dlog_testkit::unique_name("dead_letters"),
        admin: loopback0(),
        batch_linger_ms: 50,
        store: store_config.clone(),
        retention: RetentionConfig {
            max_age_secs: 0,
            max_bytes: ByteBudget::Bytes(budget),
            interval_secs: 1,
        },
        ..Default::default()
    })
    .start()
    .await
    .expect("indexer");
    let admin = indexer.admin_addr();
    let store = indexer.store();

    // Spans keep arriving from Kafka while retention runs.
    let kafka_producer = producer(&kafka.brokers);
    let send = |i: u64| {
        let trace = [i as u8 + 1; 16];
        traces(
            resource("live", "live-1", &[]),
            vec![otlp_span(
                &trace,
                i + 1,
                None,
                "GET /live",
                span::SpanKind::Server,
                now - (10 - i) * 1000 * MS,
                3,
            )],
        )
    };
    produce_traces(&kafka_producer, &trace_topic, &send(0)).await;

    let dropped = wait_for(
        "two days dropped on /metrics",
        Duration::from_secs(45),
        || async {
            metric(admin, "dlog_store_partitions_dropped_total")
                .await
                .filter(|v| *v >= 2.0)
        },
    )
    .await;
    assert_eq!(dropped, 2.0);
    let day = |d: u64| date_of_nanos(today_start - d * DAY);
    let usage = store.usage().await.unwrap();
    let kept: Vec<String> = usage.partitions.iter().map(|p| p.name.clone()).collect();
    assert_eq!(kept, (0..5).rev().map(day).collect::<Vec<_>>());
    assert!(
        usage.bytes_used <= budget,
        "{} > {budget}",
        usage.bytes_used
    );
    let gauge = wait_for(
        "bytes used on /metrics",
        Duration::from_secs(10),
        || async {
            metric(admin, "dlog_store_bytes_used")
                .await
                .filter(|v| *v > 0.0)
        },
    )
    .await;
    assert!(gauge as u64 <= budget);
    let oldest = metric(admin, "dlog_store_oldest_timestamp_seconds")
        .await
        .unwrap();
    assert_eq!(oldest as u64, (today_start - 4 * DAY) / 1_000_000_000);

    // Ingest never stopped: the spans sent before and after the drop are all searchable.
    produce_traces(&kafka_producer, &trace_topic, &send(1)).await;
    let live = wait_for("both live traces", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            store.refresh().await.ok()?;
            let found = store
                .find_traces(&TraceQuery {
                    service: Some("live".into()),
                    ..Default::default()
                })
                .await
                .ok()?;
            (found.len() == 2).then_some(found)
        }
    })
    .await;
    assert_eq!(live[0].root_operation, "GET /live");
    assert_eq!(
        metric(admin, "dlog_store_retention_errors_total").await,
        Some(0.0)
    );
    // The two oldest days' spans are gone, the third oldest's are all there.
    let by_day = |d: u64| TraceQuery {
        service: Some(format!("batch-{d}")),
        ..Default::default()
    };
    assert!(store.find_traces(&by_day(6)).await.unwrap().is_empty());
    assert!(store.find_traces(&by_day(5)).await.unwrap().is_empty());
    assert_eq!(store.find_traces(&by_day(4)).await.unwrap().len(), 30);

    indexer.shutdown().await.unwrap();
    seed.delete_indices().await.unwrap();
}
