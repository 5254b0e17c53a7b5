//! Log search by span and the live tail under bursts, against both backends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_storage::{Document, LogCursor, Store};
use dlog_viewer::ViewerConfig;
use serde_json::Value;

const BUSY_TRACE: &str = "7b000000000000000000000000000b05";
const QUIET_SPAN: &str = "a0000000000000aa";
const BUSY_SPAN: &str = "a0000000000000bb";

/// A span's records in a trace whose other spans logged far more: the store filters by span,
/// so the span's 20 records show however many newer ones the rest of the trace has.
async fn a_busy_traces_span_shows_its_own_records(base: &str, store: &Arc<dyn Store>) {
    let svc = service("busy", &[]);
    let start = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let mut docs = Vec::new();
    for i in 0..20u64 {
        docs.push(Document::Log(log(
            &svc,
            start + i * MS,
            "INFO",
            &format!("quiet span record {i}"),
            Some((BUSY_TRACE, QUIET_SPAN)),
        )));
    }
    for i in 0..10_050u64 {
        docs.push(Document::Log(log(
            &svc,
            start + (100 + i) * MS,
            "INFO",
            &format!("busy span record {i}"),
            Some((BUSY_TRACE, BUSY_SPAN)),
        )));
    }
    for chunk in docs.chunks(2_000) {
        store.write(chunk).await.unwrap();
    }
    store.refresh().await.unwrap();
    let (status, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={BUSY_TRACE}&span_id={QUIET_SPAN}&limit=50"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let bodies: Vec<&str> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20)
        .rev()
        .map(|i| format!("quiet span record {i}"))
        .collect();
    assert_eq!(
        bodies, expected,
        "the quiet span's own records, newest first"
    );
    // The limit applies to the span's records.
    let (_, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={BUSY_TRACE}&span_id={BUSY_SPAN}&limit=3"
    ))
    .await;
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3, "{body}");
    assert_eq!(logs[0]["body"], "busy span record 10049");
    assert!(logs.iter().all(|l| l["span_id"] == BUSY_SPAN));
}

/// Reads server-sent `log` events until `done` says so or the deadline passes; returns the
/// records' JSON in arrival order.
async fn read_tail(
    tail: &mut reqwest::Response,
    buffer: &mut String,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
    got: &mut Vec<Value>,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(got) {
        let chunk = tokio::time::timeout_at(deadline, tail.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.lines().any(|l| l == "event: log") {
                continue;
            }
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    got.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
}

/// 3,000 records written at once between two polls of a live tail: it delivers all of them,
/// each once, oldest first (by time, then document id).
async fn a_burst_reaches_the_tail_whole_once_and_in_order(base: &str, store: &Arc<dyn Store>) {
    let svc = service("burst", &[]);
    let mut tail = reqwest::get(format!("{base}/api/v1/logs/tail?service=burst"))
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let mut buffer = String::new();
    let mut got = Vec::new();
    // First one record, to know the tail is reading.
    let opening = log(
        &svc,
        dlog_storage::now_unix_nano(),
        "INFO",
        "tail open",
        None,
    );
    store
        .write(&[Document::Log(opening.clone())])
        .await
        .unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| !g.is_empty(),
        &mut got,
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "tail open");
    // Then the burst: pairs of records share a time, all after the first record.
    let burst: Vec<_> = (0..3_000u64)
        .map(|i| {
            log(
                &svc,
                opening.time_unix_nano + 1_000 + (i / 2) * 1_000,
                "INFO",
                &format!("burst record {i}"),
                None,
            )
        })
        .collect();
    store
        .write(&burst.iter().cloned().map(Document::Log).collect::<Vec<_>>())
        .await
        .unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(40),
        |g| g.len() > burst.len(),
        &mut got,
    )
    .await;
    // Nothing more than the burst arrives (no repeats).
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_millis(600),
        |_| false,
        &mut got,
    )
    .await;
    let mut expected = burst.clone();
    expected.sort_by_key(LogCursor::of);
    let expected: Vec<&str> = expected.iter().map(|l| l.body.as_str()).collect();
    let arrived: Vec<&str> = got[1..]
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        arrived.len(),
        expected.len(),
        "every burst record arrives exactly once"
    );
    assert!(arrived == expected, "the burst arrives oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_logs_and_tail_bursts_over_the_embedded_store() {
    let (store, _dir) = embedded().await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    a_busy_traces_span_shows_its_own_records(&base, &store).await;
    a_burst_reaches_the_tail_whole_once_and_in_order(&base, &store).await;
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_logs_and_tail_bursts_over_elasticsearch() {
    let (store, _es) = elastic().await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    a_busy_traces_span_shows_its_own_records(&base, &store).await;
    a_burst_reaches_the_tail_whole_once_and_in_order(&base, &store).await;
    viewer.shutdown().await;
}
