//! The indexing stage's benchmark; prints figures, asserts nothing: the whole stage
//! (Kafka → decode → Elasticsearch → commit) on a pre-filled topic, timed from its first
//! written batch.
//!
//! Run: `cargo bench -p dlog-indexer --bench stage` (release). `BENCH_SPANS` sets the number
//! of spans (default 30000). Needs tansu and osmem (or `ELASTICSEARCH_URL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlog_core::stage::ConsumerConfig;
use dlog_storage::{Store, StoreConfig};

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>10.0}/s  ({n} in {:.2}s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn main() {
    let n: usize = std::env::var("BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let elastic = dlog_testkit::Elastic::start()
            .expect("osmem (pip install osmem-server) or ELASTICSEARCH_URL");
        stage_bench(&elastic.url, n).await;
    });
}

async fn stage_bench(url: &str, n: usize) {
    use dlog_core::encoding::{encode_traces, Encoding};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let Ok(kafka) = dlog_testkit::Kafka::start() else {
        println!("stage (Kafka → Elasticsearch): skipped, no tansu");
        return;
    };
    let topic = dlog_testkit::unique_name("trace_logs");
    let others = ["service_logs", "heartbeat_logs", "dead_letters"].map(dlog_testkit::unique_name);
    kafka
        .create_topics(&[&topic, &others[0], &others[1], &others[2]], 3)
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let per_record = 10;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let mut pending = Vec::new();
    for r in 0..n / per_record {
        let trace = *uuid::Uuid::new_v4().as_bytes();
        let spans = (0..per_record as u64)
            .map(|s| Span {
                trace_id: trace.to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    1u64.to_be_bytes().to_vec()
                },
                name: format!("operation-{}", s % 5),
                kind: 2,
                start_time_unix_nano: 1_736_935_200_000_000_000 + r as u64 * 1000,
                end_time_unix_nano: 1_736_935_200_000_000_000 + r as u64 * 1000 + 5000,
                attributes: vec![kv("http.route", "/api/items"), kv("user.id", "u-1")],
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "bench")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = encode_traces(Encoding::OtlpProto, &request).unwrap();
        let key = hex::encode(trace);
        let p = producer.clone();
        let t = topic.clone();
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&t).key(&key).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        }));
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let indexer = dlog_indexer::Indexer::builder(dlog_indexer::IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: dlog_testkit::unique_name("bench"),
            session_timeout_ms: 6000,
            ..Default::default()
        },
        trace_logs_topic: topic,
        service_logs_topic: others[0].clone(),
        heartbeat_logs_topic: others[1].clone(),
        dead_letters_topic: others[2].clone(),
        admin: "127.0.0.1:0".parse().unwrap(),
        store: StoreConfig::elasticsearch(url)
            .with_index_prefix(dlog_testkit::unique_name("stage")),
        ..Default::default()
    })
    .start()
    .await
    .unwrap();
    let metrics = indexer.metrics();
    // Timed from the first written batch (the group join is not indexing time).
    let deadline = Instant::now() + Duration::from_secs(300);
    while metrics.written("span") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = metrics.written("span") as usize;
    let started = Instant::now();
    while (metrics.written("span") as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    let written = metrics.written("span") as usize;
    println!(
        "stage Kafka → decode → ES → commit:           {} spans (after the first batch)",
        rate(written - first, took)
    );
    let store: Arc<dyn Store> = indexer.store();
    indexer.shutdown().await.unwrap();
    drop(store);
}
