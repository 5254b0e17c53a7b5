//! Storage benchmarks; prints figures, asserts nothing.
//!
//! * embedded store ingest, spans/s, one writer (`Store::write` in batches of 1000);
//! * Elasticsearch (osmem, or `ELASTICSEARCH_URL`) indexing through `Store::write`, next to a
//!   raw `_bulk` loop sending the very same pre-built bodies to the same server;
//! * `get_trace` of a 10,000-span trace on each backend, and rendering its tree.
//!
//! Run: `cargo bench -p dlog-storage --bench storage` (release). `BENCH_SPANS` sets the
//! number of spans (default 100000).

use dlog_storage::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dlog_core::model::{ServiceInfo, SpanKind, SpanRecord, StatusCode};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::{Document, Store, StoreConfig};
use serde_json::json;

const BATCH: usize = 1000;

fn spans(n: usize, traces: usize, seed: u64) -> Vec<SpanRecord> {
    let service = |i: usize| ServiceInfo {
        name: format!("service-{}", i % 4),
        version: Some("1.4.2".into()),
        instance_id: Some(format!("service-{}-{}", i % 4, i % 3)),
        dependencies: vec!["db".into()],
        attributes: BTreeMap::from([("host.name".to_string(), json!("vm1"))]),
    };
    let t0 = 1_736_935_200_000_000_000u64;
    (0..n)
        .map(|i| {
            let trace = i % traces;
            let per_trace = n / traces;
            let pos = i / traces;
            SpanRecord {
                trace_id: format!("{seed:08x}{trace:024x}"),
                span_id: format!("{:016x}", pos + 1),
                // A binary tree: span k's parent is span k/2.
                parent_span_id: (pos > 0).then(|| format!("{:016x}", pos.div_ceil(2))),
                name: format!("operation-{}", i % 20),
                kind: if i % 3 == 0 {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                },
                start_unix_nano: t0 + (trace as u64) * 1_000_000 + pos as u64 * 1000,
                end_unix_nano: t0
                    + (trace as u64) * 1_000_000
                    + pos as u64 * 1000
                    + ((per_trace - pos) as u64) * 1000,
                status: if i % 50 == 0 {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                },
                status_message: String::new(),
                service: service(i),
                scope: "bench".into(),
                attributes: BTreeMap::from([
                    ("http.request.method".to_string(), json!("GET")),
                    (
                        "http.route".to_string(),
                        json!(format!("/api/v1/items/{}", i % 100)),
                    ),
                    ("http.response.status_code".to_string(), json!(200)),
                    ("net.peer.port".to_string(), json!(5432)),
                    ("user.id".to_string(), json!(format!("u-{}", i % 1000))),
                    ("cache.hit".to_string(), json!(i % 2 == 0)),
                ]),
                events: vec![],
                links: vec![],
            }
        })
        .collect()
}

async fn write_all(store: &dyn Store, docs: &[Document]) -> Duration {
    let started = Instant::now();
    for chunk in docs.chunks(BATCH) {
        let outcomes = store.write(chunk).await.expect("write");
        assert!(
            outcomes
                .iter()
                .all(|o| *o == dlog_storage::WriteOutcome::Written),
            "{:?}",
            outcomes
                .iter()
                .find(|o| **o != dlog_storage::WriteOutcome::Written)
        );
    }
    started.elapsed()
}

async fn time_get_trace(store: &dyn Store, trace_id: &str, expect: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let spans = store.get_trace(trace_id).await.expect("get_trace");
        times.push(started.elapsed());
        assert_eq!(spans.len(), expect);
    }
    times.sort();
    times[times.len() / 2]
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>10.0}/s  ({n} in {:.2}s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

/// The bodies `ElasticStore` sends for these spans, pre-built for the raw loop: the same
/// action lines and Jaeger documents, cut the same way.
fn raw_bodies(prefix: &str, spans: &[SpanRecord]) -> Vec<Vec<u8>> {
    let names = dlog_storage::elastic::templates::IndexNames::new(prefix);
    spans
        .chunks(BATCH)
        .map(|chunk| {
            let mut body = Vec::new();
            for s in chunk {
                serde_json::to_writer(
                    &mut body,
                    &json!({"index": {"_index": names.span(s.start_unix_nano), "_id": s.doc_id()}}),
                )
                .unwrap();
                body.push(b'\n');
                serde_json::to_writer(&mut body, &dlog_storage::elastic::model::span_to_doc(s, 64))
                    .unwrap();
                body.push(b'\n');
            }
            body
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        println!("dlog-storage benchmarks ({n} spans, batches of {BATCH})");

        // Embedded ingest.
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(dir.path()).unwrap();
        let docs: Vec<Document> = spans(n, n / 10, 1)
            .into_iter()
            .map(Document::Span)
            .collect();
        let took = write_all(&embedded, &docs).await;
        println!(
            "embedded ingest (synchronous=FULL, WAL):      {} spans",
            rate(n, took)
        );
        let took = write_all(&embedded, &docs).await;
        println!(
            "embedded re-ingest of the same spans (replay): {} spans",
            rate(n, took)
        );

        // get_trace of 10,000 spans, embedded.
        let big: Vec<Document> = spans(10_000, 1, 2)
            .into_iter()
            .map(Document::Span)
            .collect();
        let big_id = match &big[0] {
            Document::Span(s) => s.trace_id.clone(),
            _ => unreachable!(),
        };
        write_all(&embedded, &big).await;
        let t = time_get_trace(&embedded, &big_id, 10_000).await;
        println!(
            "embedded get_trace(10,000 spans):             {:>8.1} ms (median of 5)",
            t.as_secs_f64() * 1e3
        );
        let trace = embedded.get_trace(&big_id).await.unwrap();
        let started = Instant::now();
        let out = dlog_storage::tree::render_trace(&trace, &[], &Default::default());
        println!(
            "render tree of 10,000 spans:                  {:>8.1} ms ({} lines)",
            started.elapsed().as_secs_f64() * 1e3,
            out.lines().count()
        );

        // Elasticsearch: Store::write vs a raw _bulk loop of the same documents.
        let elastic = dlog_testkit::Elastic::start()
            .expect("osmem (pip install osmem-server) or ELASTICSEARCH_URL");
        let es_n = n.min(30_000);
        let es_spans = spans(es_n, es_n / 10, 3);
        // Each side runs three times into fresh indices, interleaved; the better run counts, so
        // neither pays alone for the server's warm-up.
        let client = reqwest::Client::new();
        let es_docs: Vec<Document> = es_spans.iter().cloned().map(Document::Span).collect();
        let mut raw_best = Duration::MAX;
        let mut ours_best = Duration::MAX;
        let mut cleanup = Vec::new();
        for _ in 0..3 {
            let raw_prefix = dlog_testkit::unique_name("raw");
            let raw_store = ElasticStore::connect(
                &StoreConfig::elasticsearch(&elastic.url).with_index_prefix(raw_prefix.clone()),
            )
            .await
            .unwrap(); // templates, so the raw loop meets the same mappings
            let bodies = raw_bodies(&raw_prefix, &es_spans);
            let started = Instant::now();
            for body in bodies {
                let r = client
                    .post(format!("{}/_bulk", elastic.url))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let text = r.text().await.unwrap();
                assert!(
                    text.contains("\"errors\":false"),
                    "{}",
                    &text[..text.len().min(300)]
                );
            }
            raw_best = raw_best.min(started.elapsed());
            let config = StoreConfig::elasticsearch(&elastic.url)
                .with_index_prefix(dlog_testkit::unique_name("bench"));
            let es = ElasticStore::connect(&config).await.unwrap();
            ours_best = ours_best.min(write_all(&es, &es_docs).await);
            cleanup.push(raw_store);
            cleanup.push(es);
        }
        let started = Instant::now();
        let built = raw_bodies("cpu", &es_spans);
        let cpu = started.elapsed();
        println!(
            "Jaeger conversion + JSON only (no server):    {} docs ({} MB)",
            rate(es_n, cpu),
            built.iter().map(Vec::len).sum::<usize>() / 1_000_000
        );
        println!(
            "raw _bulk loop (pre-built bodies, reqwest):   {} docs",
            rate(es_n, raw_best)
        );
        println!(
            "ElasticStore::write (convert + bulk + items): {} docs  = {:.2}x raw",
            rate(es_n, ours_best),
            raw_best.as_secs_f64() / ours_best.as_secs_f64()
        );
        for store in &cleanup {
            let _ = store.delete_indices().await;
        }
        let es = ElasticStore::connect(
            &StoreConfig::elasticsearch(&elastic.url)
                .with_index_prefix(dlog_testkit::unique_name("big")),
        )
        .await
        .unwrap();

        let big_es: Vec<Document> = spans(10_000, 1, 4)
            .into_iter()
            .map(Document::Span)
            .collect();
        let big_es_id = match &big_es[0] {
            Document::Span(s) => s.trace_id.clone(),
            _ => unreachable!(),
        };
        write_all(&es, &big_es).await;
        es.refresh().await.unwrap();
        let t = time_get_trace(&es, &big_es_id, 10_000).await;
        println!(
            "elasticsearch get_trace(10,000 spans):        {:>8.1} ms (median of 5)",
            t.as_secs_f64() * 1e3
        );
        // The server's share: the same search, answer read as bytes and not parsed.
        let mut raw_times = Vec::new();
        let url = format!(
            "{}/{}/_search?filter_path=hits.hits._source,hits.hits.sort",
            elastic.url,
            es.names().span_pattern()
        );
        let body = json!({"size": 10_000, "query": {"bool": {"filter": [{"term": {"traceID": big_es_id}}]}},
            "sort": [{"startTime": "asc"}, {"spanID": "asc"}], "track_total_hits": false});
        for _ in 0..5 {
            let started = Instant::now();
            let bytes = client.post(&url).json(&body).send().await.unwrap().bytes().await.unwrap();
            raw_times.push((started.elapsed(), bytes.len()));
        }
        raw_times.sort();
        println!(
            "  of which the server's answer (raw _search): {:>8.1} ms, {} MB",
            raw_times[2].0.as_secs_f64() * 1e3,
            raw_times[2].1 / 1_000_000
        );
        let _ = es.delete_indices().await;
    });
}
