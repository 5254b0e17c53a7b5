//! Log reads through the viewer's API over the embedded store, no browser. Prints figures,
//! asserts nothing:
//! - a span's records in a busy trace (`/api/v1/logs?trace_id=&span_id=`), which the store
//!   filters by span, next to reading the trace's newest 10,000 records (what the viewer read
//!   before it could ask for a span);
//! - a live tail catching up with a burst: records written as fast as the store takes them,
//!   from the first write to the last record received, and the records per second delivered.
//!
//! `cargo bench -p dlog-viewer --bench logs`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dlog_storage::{Document, LogQuery};
use dlog_viewer::ViewerConfig;
use serde_json::Value;

const TRACE: &str = "7b000000000000000000000000000c01";
const QUIET: &str = "c0000000000000aa";
const BUSY: &str = "c0000000000000bb";
const BUSY_RECORDS: u64 = 50_000;
const BURST: u64 = 20_000;

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (store, _dir) = embedded().await;
    let svc = service("busy", &[]);
    let start = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let mut docs = Vec::new();
    for i in 0..20u64 {
        docs.push(Document::Log(log(
            &svc,
            start + i * MS,
            "INFO",
            &format!("quiet {i}"),
            Some((TRACE, QUIET)),
        )));
    }
    for i in 0..BUSY_RECORDS {
        docs.push(Document::Log(log(
            &svc,
            start + (100 + i) * MS / 10,
            "INFO",
            &format!("busy {i}"),
            Some((TRACE, BUSY)),
        )));
    }
    for chunk in docs.chunks(5_000) {
        store.write(chunk).await.unwrap();
    }
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    let client = reqwest::Client::new();

    let mut by_span = Vec::new();
    let mut by_trace = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let body: Value = client
            .get(format!(
                "{base}/api/v1/logs?trace_id={TRACE}&span_id={QUIET}&limit=200"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        by_span.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(body["logs"].as_array().map(Vec::len), Some(20));
        let t = Instant::now();
        let read = store
            .search_logs(&LogQuery {
                trace_id: Some(TRACE.into()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        by_trace.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(read.len(), 10_000);
    }
    let (by_span, by_trace) = (sorted(by_span), sorted(by_trace));
    println!(
        "span logs in a trace of {} records, API call: p50 {:.1} ms, p99 {:.1} ms (30 calls)",
        BUSY_RECORDS + 20,
        pct(&by_span, 0.5),
        pct(&by_span, 0.99)
    );
    println!(
        "the trace's newest 10,000 records from the store (the former way): p50 {:.1} ms, p99 {:.1} ms (30 reads)",
        pct(&by_trace, 0.5),
        pct(&by_trace, 0.99)
    );

    let svc = service("burst", &[]);
    for run in 0..3u64 {
        let service_name = format!("burst-{run}");
        let mut tail = client
            .get(format!("{base}/api/v1/logs/tail?service={service_name}"))
            .send()
            .await
            .unwrap();
        let mut svc = svc.clone();
        svc.name = service_name.clone();
        // Let the tail take its position before the burst.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        // Each batch stamped as it is written, as a sender's records are: the tail takes
        // records stored up to its grace (2 s) after their time.
        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for batch in 0..BURST / 2_000 {
                    let stamp = dlog_storage::now_unix_nano();
                    let chunk: Vec<Document> = (0..2_000u64)
                        .map(|i| {
                            Document::Log(log(
                                &svc,
                                stamp + i * 1_000,
                                "INFO",
                                &format!("burst {}", batch * 2_000 + i),
                                None,
                            ))
                        })
                        .collect();
                    store.write(&chunk).await.unwrap();
                }
                t.elapsed()
            })
        };
        let mut received = 0u64;
        let mut buffer = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while received < BURST {
            let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, tail.chunk()).await else {
                break;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if event.lines().any(|l| l == "event: log") {
                    received += 1;
                }
            }
        }
        let total = t.elapsed();
        let written = writer.await.unwrap();
        println!(
            "live tail, burst of {BURST} records written in {:.0} ms: all {received} received after {:.0} ms, {:.0} records/s delivered (poll 100 ms)",
            written.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0,
            received as f64 / total.as_secs_f64()
        );
    }
    viewer.shutdown().await;
}
