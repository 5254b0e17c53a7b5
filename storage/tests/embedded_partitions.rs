//! The embedded store's day partitions seen from a search: a trace whose spans sit in two
//! days' files is searched and summarized as one trace.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::conformance::{service, span};
use dlog_core::model::SpanKind;
use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::prelude::*;
use dlog_storage::{Document, TimeRange, TraceQuery};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

fn ids(found: &[dlog_storage::TraceSummary]) -> Vec<String> {
    found.iter().map(|t| t.trace_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_trace_split_over_two_days_is_filtered_and_summarized_whole() {
    let dir = tempfile::tempdir().unwrap();
    let today = dlog_storage::now_unix_nano() / DAY;
    let d = today - 3;
    let front = service("front", "fr-1", &[]);
    let back = service("back", "bk-1", &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    // The root starts at 23:59:59.5 of day d and lasts 200 ms; its child (whose spans came
    // late, after a restart) starts at 00:00:00.5 two days on and lasts 500 ms: the parts
    // last under a second each, the whole trace a day and 1.5 s.
    let root_start = (d + 1) * DAY - 500 * MS;
    let child_start = (d + 2) * DAY + 500 * MS;
    let mut root = span(
        trace,
        "00000000000000a1",
        None,
        &front,
        "GET /report",
        SpanKind::Server,
        root_start,
        200,
    );
    root.attributes = BTreeMap::from([("tenant".to_string(), json!("acme"))]);
    let mut child = span(
        trace,
        "00000000000000a2",
        Some("00000000000000a1"),
        &back,
        "render",
        SpanKind::Server,
        child_start,
        500,
    );
    child.attributes = BTreeMap::from([("format".to_string(), json!("pdf"))]);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.write(&[Document::Span(root)]).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.write(&[Document::Span(child)]).await.unwrap();
    let files = std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sqlite3")
        })
        .count();
    assert_eq!(files, 2, "the trace's parts are in two day files");

    let search = |q: TraceQuery| {
        let store = &store;
        async move { store.find_traces(&q).await.unwrap() }
    };
    // The summary shown is the whole trace's.
    let all = search(TraceQuery::default()).await;
    assert_eq!(all.len(), 1);
    let t = &all[0];
    assert_eq!(t.trace_id, trace);
    assert_eq!(t.start_unix_nano, root_start);
    assert_eq!(t.duration_nanos, DAY + 1500 * MS);
    assert_eq!(t.span_count, 2);
    assert_eq!(
        (t.root_service.as_str(), t.root_operation.as_str()),
        ("front", "GET /report")
    );
    assert_eq!(t.services, vec!["back".to_string(), "front".to_string()]);

    // Durations apply to the whole trace: at least 1 s only as a whole, at most 1 h in
    // each part but not as a whole.
    let long = search(TraceQuery {
        min_duration: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&long), vec![trace.to_string()]);
    assert_eq!(long[0].duration_nanos, DAY + 1500 * MS);
    let short = search(TraceQuery {
        max_duration: Some(Duration::from_secs(3600)),
        ..Default::default()
    })
    .await;
    assert!(short.is_empty(), "{short:?}");
    // With a span condition matched in the later part only.
    let long_pdf = search(TraceQuery {
        min_duration: Some(Duration::from_secs(1)),
        attributes: BTreeMap::from([("format".into(), "pdf".into())]),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&long_pdf), vec![trace.to_string()]);
    let short_pdf = search(TraceQuery {
        max_duration: Some(Duration::from_secs(3600)),
        service: Some("back".into()),
        ..Default::default()
    })
    .await;
    assert!(short_pdf.is_empty(), "{short_pdf:?}");

    // The trace started at 23:59:59.5 of day d: a range around that finds it through the
    // later part's span; a range starting after it does not.
    let around_start = TimeRange::between(root_start - 1000 * MS, root_start + 1000 * MS);
    let found = search(TraceQuery {
        service: Some("back".into()),
        time: around_start,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&found), vec![trace.to_string()]);
    assert_eq!(found[0].span_count, 2);
    let later = search(TraceQuery {
        time: TimeRange::between((d + 2) * DAY, (d + 3) * DAY),
        ..Default::default()
    })
    .await;
    assert!(later.is_empty(), "the trace started on day d: {later:?}");

    // Conditions on one span: each attribute matches in its own part, both together match
    // no single span.
    for (k, v) in [("tenant", "acme"), ("format", "pdf")] {
        let found = search(TraceQuery {
            attributes: BTreeMap::from([(k.into(), v.into())]),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&found), vec![trace.to_string()], "{k}={v}");
        assert_eq!(found[0].duration_nanos, DAY + 1500 * MS, "{k}={v}");
    }
    let both = search(TraceQuery {
        attributes: BTreeMap::from([
            ("tenant".into(), "acme".into()),
            ("format".into(), "pdf".into()),
        ]),
        ..Default::default()
    })
    .await;
    assert!(both.is_empty(), "{both:?}");
}
