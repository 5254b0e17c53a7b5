//! The byte bound on Jaeger answers: a trace whose attributes total more than the bound is
//! cut with a warning, a search stays within it, and a trace whose first span alone passes
//! it is named in Jaeger's `errors`.

mod common;

use std::sync::Arc;

use common::*;
use dlog_core::model::{SpanKind, SpanRecord};
use dlog_storage::{Document, Store};
use dlog_viewer::{ViewerConfig, ViewerOptions};
use serde_json::{json, Value};

const BOUND: usize = 256 * 1024;
const HEAVY: &str = "00000000000000000000000000000e01";
const GIANT: &str = "00000000000000000000000000000e02";
const LIGHT: &str = "00000000000000000000000000000e03";

fn heavy_span(trace: &str, n: u64, start: u64, value_bytes: usize) -> SpanRecord {
    let svc = service("heavy", &[]);
    let mut s = span(
        trace,
        &format!("{:016x}", n + 1),
        None,
        &svc,
        "bulk upload",
        SpanKind::Server,
        start + n * MS,
        1,
    );
    s.attributes
        .insert("payload".into(), json!("x".repeat(value_bytes)));
    s
}

/// GET, returning the status, the body's size in bytes and its JSON.
async fn get_sized(url: &str) -> (u16, usize, Value) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    (status, bytes.len(), serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_answers_stay_within_their_byte_bound() {
    let (store, _dir) = embedded().await;
    let start = dlog_storage::now_unix_nano() - 60_000_000_000;
    // 40 spans of 20 KB attributes each (800 KB, over three times the bound), a trace whose
    // single span is larger than the bound, and a small trace.
    let mut docs: Vec<Document> = (0..40)
        .map(|n| Document::Span(heavy_span(HEAVY, n, start, 20_000)))
        .collect();
    docs.push(Document::Span(heavy_span(GIANT, 0, start, BOUND + 1)));
    docs.push(Document::Span(heavy_span(LIGHT, 0, start, 10)));
    store.write(&docs).await.unwrap();
    store.refresh().await.unwrap();
    let (viewer, base) = viewer(
        Arc::clone(&store) as Arc<dyn Store>,
        ViewerConfig {
            options: ViewerOptions {
                max_answer_bytes: BOUND,
                ..ViewerOptions::default()
            },
            ..ViewerConfig::default()
        },
    )
    .await;

    // One trace: cut at the bound, its first spans in start order, with Jaeger's warning.
    let (status, size, body) = get_sized(&format!("{base}/api/traces/{HEAVY}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "answer of {size} bytes");
    let trace = &body["data"][0];
    let spans = trace["spans"].as_array().unwrap();
    assert!(
        (5..40).contains(&spans.len()),
        "{} spans shown",
        spans.len()
    );
    let ids: Vec<String> = spans
        .iter()
        .map(|s| s["spanID"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..=spans.len() as u64)
        .map(|n| format!("{n:016x}"))
        .collect();
    assert_eq!(ids, expected, "the first spans, in start order");
    let warning = trace["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains(&BOUND.to_string()) && warning.contains("max-answer-bytes"),
        "{warning}"
    );
    // The spans shown are whole: their attribute is not cut.
    assert_eq!(
        spans[0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == "payload")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .len(),
        20_000
    );

    // A search holding all three: within the bound, the heavy trace cut with its warning.
    let (status, size, body) = get_sized(&format!("{base}/api/traces?service=heavy")).await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "answer of {size} bytes");
    let cut = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["warnings"].is_null())
        .count();
    assert!(cut >= 1, "a cut trace says so: {}", body["data"]);

    // A trace whose first span alone passes the bound: 413 naming the setting.
    let (status, _, body) = get_sized(&format!("{base}/api/traces/{GIANT}")).await;
    assert_eq!(status, 413, "{body}");
    let msg = body["errors"][0]["msg"].as_str().unwrap();
    assert!(
        msg.contains(GIANT) && msg.contains("max-answer-bytes"),
        "{msg}"
    );
    // ... and in a search by ids, an `errors` entry while the other trace comes whole.
    let (status, size, body) = get_sized(&format!(
        "{base}/api/traces?traceID={GIANT}&traceID={LIGHT}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "answer of {size} bytes");
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["traceID"], LIGHT);
    assert!(body["data"][0]["warnings"].is_null());
    assert_eq!(body["errors"][0]["traceID"], GIANT, "{body}");
    assert_eq!(body["errors"][0]["code"], 413);
    // The giant trace asked for after the light one is named too.
    let (status, size, body) = get_sized(&format!(
        "{base}/api/traces?traceID={LIGHT}&traceID={GIANT}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "answer of {size} bytes");
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["traceID"], LIGHT);
    assert_eq!(body["errors"][0]["traceID"], GIANT, "{body}");
    // A trace left out after one that filled the answer is named with the reason, and one
    // after it that fits is still not dropped silently.
    let (status, size, body) = get_sized(&format!(
        "{base}/api/traces?traceID={HEAVY}&traceID={GIANT}&traceID={LIGHT}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "answer of {size} bytes");
    let shown: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    let named: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["traceID"].as_str().unwrap())
        .collect();
    assert_eq!(shown, [HEAVY], "{body}");
    assert_eq!(named, [GIANT, LIGHT], "every trace left out is named");
    let msg = body["errors"][1]["msg"].as_str().unwrap();
    assert!(msg.contains("max-answer-bytes"), "{msg}");
    viewer.shutdown().await;
}

/// dlog's own trace windows keep to the same bound: a window ends early and its cursor goes
/// on from there, so paging still reaches every span, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_windows_end_early_at_the_byte_bound_and_page_on() {
    let (store, _dir) = embedded().await;
    let start = dlog_storage::now_unix_nano() - 60_000_000_000;
    let docs: Vec<Document> = (0..40)
        .map(|n| Document::Span(heavy_span(HEAVY, n, start, 20_000)))
        .collect();
    store.write(&docs).await.unwrap();
    store.refresh().await.unwrap();
    let (viewer, base) = viewer(
        Arc::clone(&store) as Arc<dyn Store>,
        ViewerConfig {
            options: ViewerOptions {
                max_answer_bytes: BOUND,
                ..ViewerOptions::default()
            },
            ..ViewerConfig::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    let mut windows = 0;
    let mut url = format!("{base}/api/v1/traces/{HEAVY}/spans?limit=1000");
    loop {
        let (status, size, body) = get_sized(&url).await;
        assert_eq!(status, 200, "{body}");
        assert!(size <= BOUND, "window of {size} bytes");
        windows += 1;
        for s in body["spans"].as_array().unwrap() {
            ids.push(s["span_id"].as_str().unwrap().to_string());
        }
        let next = &body["next"];
        if next.is_null() {
            break;
        }
        url = format!(
            "{base}/api/v1/traces/{HEAVY}/spans?limit=1000&after_start_ns={}&after_span={}",
            next["after_start_ns"].as_str().unwrap(),
            next["after_span"].as_str().unwrap()
        );
        assert!(windows < 40, "paging does not end");
    }
    let expected: Vec<String> = (1..=40u64).map(|n| format!("{n:016x}")).collect();
    assert_eq!(ids, expected, "every span once, in start order");
    assert!(windows >= 4, "{windows} windows for 800 KB of spans");
    // The window around a span deep in the trace keeps to the bound too, the span in it with
    // its neighbours on both sides.
    let target = format!("{:016x}", 21);
    let (status, size, body) = get_sized(&format!(
        "{base}/api/v1/traces/{HEAVY}/spans?limit=1000&around={target}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(size <= BOUND, "window of {size} bytes");
    let ids: Vec<u64> = body["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| u64::from_str_radix(s["span_id"].as_str().unwrap(), 16).unwrap())
        .collect();
    assert!(ids.contains(&21), "{ids:?}");
    assert!(ids[0] < 21 && *ids.last().unwrap() > 21, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    viewer.shutdown().await;
}
