//! The Elasticsearch backend at scale; prints figures, asserts nothing.
//!
//! Loads N spans and N logs in the reference shapes (10 spans per trace, 6 span
//! attributes of which 3 of low cardinality and 1 unique per trace, a 5-attribute resource,
//! 30 services, 300 operations; logs with a 60-100-byte body and 3 attributes), spread over
//! 7 days, through `Store::write` (so trace summaries and dependency edges are written as in
//! production). Then prints the ingest rate, bytes per span and per log from `_cat/indices`,
//! and p50/p99 over randomized parameters of: trace by id, traces by service, by duration, by
//! attribute, log text search (common and rare term), dependencies over a day.
//!
//! Run: `cargo bench -p dlog-storage --bench elastic_scale` against osmem (or the cluster in
//! `ELASTICSEARCH_URL`). `BENCH_SPANS` sets N (default 100000).

use dlog_storage::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dlog_core::model::{LogEntry, ServiceInfo, SpanKind, SpanRecord, StatusCode};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::{Document, LogQuery, StoreConfig, TimeRange, TraceQuery};
use rand::{Rng, SeedableRng};
use serde_json::json;

const BATCH: usize = 1000;
const SPANS_PER_TRACE: usize = 10;
const SERVICES: usize = 30;
const OPERATIONS: usize = 300;
const DAYS: u64 = 7;
const DAY: u64 = 86_400_000_000_000;
const QUERIES: usize = 40;

fn service(i: usize) -> ServiceInfo {
    let name = format!("svc-{:02}", i % SERVICES);
    ServiceInfo {
        instance_id: Some(format!("{name}-{}", i % 3)),
        version: Some("2.3.1".into()),
        dependencies: vec![],
        attributes: BTreeMap::from([
            ("host.name".to_string(), json!(format!("node-{}", i % 17))),
            ("cloud.region".to_string(), json!("eu-west-1")),
            ("deployment.environment".to_string(), json!("prod")),
        ]),
        name,
    }
}

/// Trace `t`: a chain of 10 spans over 2-4 services, starting at `start`.
fn trace(t: usize, start: u64, rng: &mut rand::rngs::StdRng) -> Vec<SpanRecord> {
    let trace_id = format!("{:032x}", t as u128 * 0x9e37_79b9_7f4a_7c15 + 1);
    let first = rng.random_range(0..SERVICES);
    let duration = rng.random_range(1..2000u64) * 1_000_000;
    (0..SPANS_PER_TRACE)
        .map(|k| {
            let svc = service(first + k / 3);
            let op = (first * 10 + k) % OPERATIONS;
            let s = start + k as u64 * duration / 20;
            SpanRecord {
                trace_id: trace_id.clone(),
                span_id: format!("{:016x}", (t * SPANS_PER_TRACE + k + 1) as u64),
                parent_span_id: (k > 0)
                    .then(|| format!("{:016x}", (t * SPANS_PER_TRACE + k) as u64)),
                name: format!("op-{op:03}"),
                kind: if k % 3 == 0 {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                },
                start_unix_nano: s,
                end_unix_nano: s + duration / (k as u64 + 1),
                status: if rng.random_ratio(1, 50) {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                },
                status_message: String::new(),
                service: svc,
                scope: "bench".into(),
                attributes: BTreeMap::from([
                    (
                        "http.method".to_string(),
                        json!(["GET", "POST", "PUT"][k % 3]),
                    ),
                    (
                        "http.status_code".to_string(),
                        json!([200, 201, 404, 500][t % 4]),
                    ),
                    ("net.peer.port".to_string(), json!(8080 + (k % 4) as i64)),
                    ("request.id".to_string(), json!(format!("req-{t}"))),
                    ("user.id".to_string(), json!(format!("user-{}", t % 5000))),
                    (
                        "payload.bytes".to_string(),
                        json!(rng.random_range(0..100_000)),
                    ),
                ]),
                events: vec![],
                links: vec![],
            }
        })
        .collect()
}

const WORDS: [&str; 12] = [
    "request",
    "handled",
    "cache",
    "miss",
    "retrying",
    "upstream",
    "slow",
    "query",
    "user",
    "session",
    "timeout",
    "completed",
];

fn log(i: usize, time: u64, rng: &mut rand::rngs::StdRng) -> LogEntry {
    let mut body = String::new();
    while body.len() < rng.random_range(60..90) {
        body.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        body.push(' ');
    }
    // One log in 10,000 carries a rare word.
    if i.is_multiple_of(10_000) {
        body.push_str(&format!("quasar{}", i / 10_000));
    }
    LogEntry {
        time_unix_nano: time,
        severity_number: 9,
        level: "INFO".into(),
        body,
        trace_id: None,
        span_id: None,
        event_name: None,
        service: service(i),
        attributes: BTreeMap::from([
            ("code.function".to_string(), json!("handle")),
            ("thread.id".to_string(), json!(i % 64)),
            ("user.id".to_string(), json!(format!("user-{}", i % 5000))),
        ]),
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

async fn timed<F, Fut>(name: &str, mut run: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut samples = Vec::with_capacity(QUERIES);
    let mut results = 0;
    for i in 0..QUERIES {
        let t = Instant::now();
        results += run(i).await;
        samples.push(t.elapsed());
    }
    let (p50, p99) = percentiles(samples);
    println!(
        "{name:<34} p50 {p50:>8.1} ms   p99 {p99:>8.1} ms   ({:.1} results/query)",
        results as f64 / QUERIES as f64
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let elastic = dlog_testkit::Elastic::start().expect("osmem");
    let prefix = dlog_testkit::unique_name("scale");
    let mut config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(&prefix);
    config.partition_max_age_secs = 30 * 86_400;
    let store = ElasticStore::connect(&config).await.expect("connect");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let now = dlog_storage::now_unix_nano();
    let start = now / DAY * DAY - (DAYS - 1) * DAY;
    let span_of_time = (now - start).max(1);
    let traces = n / SPANS_PER_TRACE;

    // Spans: traces in time order over the 7 days, written in batches.
    let t = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut written = 0;
    for i in 0..traces {
        let at = start + (i as u128 * span_of_time as u128 / traces as u128) as u64;
        batch.extend(trace(i, at, &mut rng).into_iter().map(Document::Span));
        if batch.len() >= BATCH || i + 1 == traces {
            let outcomes = store.write(&batch).await.expect("write");
            written += outcomes
                .iter()
                .filter(|o| **o == dlog_storage::WriteOutcome::Written)
                .count();
            batch.clear();
        }
    }
    let span_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|&i| {
                let at = start + (i as u128 * span_of_time as u128 / n as u128) as u64;
                Document::Log(log(i, at, &mut rng))
            })
            .collect();
        store.write(&docs).await.expect("write logs");
    }
    let log_secs = t.elapsed().as_secs_f64();
    store.refresh().await.expect("refresh");
    println!("Elasticsearch scale bench: {n} spans ({traces} traces) and {n} logs over {DAYS} days, server {}", elastic.url);
    println!(
        "ingest (Store::write, batches of {BATCH}, summaries and edges included): {:.0} spans/s ({written} written), {:.0} logs/s",
        n as f64 / span_secs,
        n as f64 / log_secs
    );

    // Bytes per document, from the server's own index sizes.
    #[derive(serde::Deserialize)]
    struct Row {
        index: String,
        #[serde(rename = "store.size")]
        size: Option<String>,
    }
    let rows: Vec<Row> = reqwest::get(format!(
        "{}/_cat/indices/{prefix}-*?format=json&bytes=b",
        elastic.url
    ))
    .await
    .expect("_cat/indices")
    .json()
    .await
    .expect("_cat/indices json");
    let bytes_of = |families: &[&str]| -> u64 {
        rows.iter()
            .filter(|r| families.iter().any(|f| r.index.contains(f)))
            .map(|r| {
                r.size
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0u64)
            })
            .sum()
    };
    let span_bytes = bytes_of(&["jaeger-span-"]);
    let search_bytes = bytes_of(&["jaeger-service-", "trace-summaries-", "dependencies-"]);
    let log_bytes = bytes_of(&["service-logs-"]);
    println!(
        "bytes per span: {:.0} (span documents) + {:.0} (summaries, edges, service index) = {:.0}; bytes per log: {:.0}",
        span_bytes as f64 / n as f64,
        search_bytes as f64 / n as f64,
        (span_bytes + search_bytes) as f64 / n as f64,
        log_bytes as f64 / n as f64
    );

    let trace_id = |i: usize| format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15 + 1);
    let mut q = rand::rngs::StdRng::seed_from_u64(11);
    let picks: Vec<usize> = (0..QUERIES).map(|_| q.random_range(0..traces)).collect();
    let store = &store;
    timed("trace by id (10 spans)", |i| {
        let id = trace_id(picks[i]);
        async move { store.get_trace(&id).await.expect("get_trace").len() }
    })
    .await;
    timed("traces by service (limit 20)", |i| async move {
        store
            .find_traces(&TraceQuery {
                service: Some(format!("svc-{:02}", i % SERVICES)),
                limit: 20,
                ..Default::default()
            })
            .await
            .expect("by service")
            .len()
    })
    .await;
    timed("traces by min duration (limit 20)", |i| async move {
        store
            .find_traces(&TraceQuery {
                min_duration: Some(Duration::from_millis(500 + (i as u64 * 37) % 1400)),
                limit: 20,
                ..Default::default()
            })
            .await
            .expect("by duration")
            .len()
    })
    .await;
    timed("traces by attribute (unique/trace)", |i| {
        let value = format!("req-{}", picks[i]);
        async move {
            store
                .find_traces(&TraceQuery {
                    attributes: BTreeMap::from([("request.id".to_string(), value)]),
                    limit: 20,
                    ..Default::default()
                })
                .await
                .expect("by attribute")
                .len()
        }
    })
    .await;
    timed("traces by attribute (no match)", |i| async move {
        store
            .find_traces(&TraceQuery {
                attributes: BTreeMap::from([("request.id".to_string(), format!("absent-{i}"))]),
                limit: 20,
                ..Default::default()
            })
            .await
            .expect("by attribute")
            .len()
    })
    .await;
    timed("logs, common term (limit 50)", |i| async move {
        store
            .search_logs(&LogQuery {
                text: Some(WORDS[i % WORDS.len()].to_string()),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("logs")
            .len()
    })
    .await;
    timed("logs, rare term (limit 50)", |i| async move {
        store
            .search_logs(&LogQuery {
                text: Some(format!("quasar{}", i % (n / 10_000).max(1))),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("logs")
            .len()
    })
    .await;
    timed("dependencies over one day", |i| async move {
        let day = start + (i as u64 % DAYS) * DAY;
        store
            .dependencies(TimeRange::between(day, day + DAY - 1))
            .await
            .expect("deps")
            .observed
            .len()
    })
    .await;
    store.delete_indices().await.expect("cleanup");
}
